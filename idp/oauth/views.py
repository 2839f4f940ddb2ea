"""The OpenID Connect endpoints (SPEC §4): authorize, token, userinfo, revoke, introspect, logout (discovery and
the JWKS are fixed documents served by ``idp.fastpaths``).

Views stay thin: Authlib validates, ``policy`` decides whether to log in, the login flow authenticates.
Every redirect back to a client carries ``iss`` (RFC 9207), also for errors; a request whose client or
redirect URI cannot be trusted gets an error page and is never redirected (RFC 6749 §4.1.2.1).
"""
from __future__ import annotations

from urllib.parse import urlencode

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from authlib.oidc.core.errors import LoginRequiredError
from flask import Blueprint, current_app, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext as _

from .. import accounts, people, sessions
from ..extensions import csrf
from ..flows import login
from . import policy, tokens
from .grants import AuthenticatedUser
from .scopes import account_claims
from .server import server

bp = Blueprint("oauth", __name__)


def _with_iss(response):
    location = response.headers.get("Location")
    if response.status_code in (302, 303) and location and "iss=" not in location.split("?", 1)[-1]:
        response.headers["Location"] = add_params_to_uri(location, {"iss": current_app.config["ISSUER"]})
    return response


def _authorization_error(error: OAuth2Error):
    if error.redirect_uri:
        if error.state is None and request.args.get("state"):
            error.state = request.args.get("state")
        return _with_iss(server.handle_error_response(request, error))
    return render_template("oauth/error.html", error=error.error, description=error.description), 400


# RFC 6749 Appendix A: these parameters are visible ASCII (VSCHAR/NQCHAR); anything else cannot be echoed back
# to a client safely, so it gets the error page instead of a redirect.
_ASCII_PARAMETERS = ("response_type", "client_id", "redirect_uri", "scope", "state", "nonce", "prompt", "max_age",
                     "code_challenge", "code_challenge_method", "response_mode", "acr_values", "ui_locales")


def _malformed(args) -> str | None:
    for name in _ASCII_PARAMETERS:
        for value in args.getlist(name):
            if len(value) > 2048 or any(not " " <= ch <= "~" for ch in value):
                return name
            if name in ("response_type", "redirect_uri") and ('"' in value or "\\" in value):
                return name  # no URI nor response type holds them; Authlib's error_description refuses them
    return None


@bp.route("/authorize", methods=["GET", "POST"])
@csrf.exempt
def authorize():
    if request.method == "POST":  # OIDC Core §3.1.2.1: POST is allowed; continue as GET so the request is one URL
        return redirect(url_for("oauth.authorize") + "?" + urlencode(list(request.form.items(multi=True))), 303)
    bad = _malformed(request.args)
    if bad:
        return render_template("oauth/error.html", error="invalid_request",
                               description=f"Malformed '{bad}' parameter."), 400
    sso = sessions.current()
    account = people.active(sso.account_id) if sso else None  # one statement, no ORM
    if sso is not None and account is None:
        sessions.end()
        sso = None
    try:
        grant = server.get_consent_grant(end_user=account)
        this_request = policy.request_hash(request.query_string)
        decision = policy.decide(request.args, sso, this_request, grant.redirect_uri)
        if decision.login and "none" in (request.args.get("prompt") or "").split():
            raise LoginRequiredError(redirect_uri=grant.redirect_uri)
    except OAuth2Error as error:
        return _authorization_error(error)
    if decision.login:
        return login.begin(request.query_string.decode(), grant.client, request.args.get("login_hint"),
                           request.args.get("ui_locales"), decision, sso)
    response = server.create_authorization_response(
        grant=grant, grant_user=AuthenticatedUser(account=account, session=sso, request_hash=this_request))
    return _with_iss(response)


@bp.post("/token")
@csrf.exempt
def token():
    return server.create_token_response()


@bp.post("/revoke")
@csrf.exempt
def revoke():
    return server.create_endpoint_response("revocation")


@bp.post("/introspect")
@csrf.exempt
def introspect():
    return server.create_endpoint_response("introspection")


class UserinfoRefused(Exception):
    """Why an access token gets no claims (RFC 6750 §3.1): HTTP status, error code, description."""

    def __init__(self, status: int, error: str | None, description: str | None = None):
        super().__init__(error)
        self.status, self.error, self.description = status, error, description


def bearer_challenge(error: UserinfoRefused) -> tuple[dict, str]:
    """The JSON body and the WWW-Authenticate value of a refusal (also used by ``idp.fastpaths``)."""
    challenge, body = 'Bearer realm="selfcare"', {}
    if error.error:
        challenge += f', error="{error.error}"'
        body["error"] = error.error
        if error.description:
            challenge += f', error_description="{error.description}"'
            body["error_description"] = error.description
    return body, challenge


def userinfo_claims(value: str) -> dict:
    """The claims an access token grants (OIDC Core §5.3), or ``UserinfoRefused``."""
    found = tokens.find_access(value)
    if found is None or not found.access_active():
        raise UserinfoRefused(401, "invalid_token", "The access token is invalid, expired or revoked.")
    scopes = set(found.scope.split())
    if "openid" not in scopes:
        raise UserinfoRefused(403, "insufficient_scope", "The access token lacks the openid scope.")
    if found.person is None or not found.person.is_active:
        raise UserinfoRefused(401, "invalid_token", "The access token's account is not active.")
    return account_claims(found.person, scopes)


def _bearer_error(refused: UserinfoRefused):
    body, challenge = bearer_challenge(refused)
    response = jsonify(body)
    response.status_code = refused.status
    response.headers["WWW-Authenticate"] = challenge
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/userinfo", methods=["GET", "POST"])
@csrf.exempt
def userinfo():
    """Also answered before Flask for its common case (``idp.fastpaths``), with the same functions."""
    header = request.headers.get("Authorization", "")
    in_body = request.method == "POST" and request.mimetype == "application/x-www-form-urlencoded" \
        and "access_token" in request.form
    try:
        if header and in_body:
            raise UserinfoRefused(400, "invalid_request", "Use one way of sending the access token.")
        if header:
            scheme, _sep, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise UserinfoRefused(401, "invalid_request", "The Authorization header must be a Bearer token.")
            value = value.strip()
        elif in_body:
            value = request.form["access_token"]
        else:
            raise UserinfoRefused(401, None)
        claims = userinfo_claims(value)
    except UserinfoRefused as refused:
        return _bearer_error(refused)
    response = jsonify(claims)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/logout", methods=["GET", "POST"])
@csrf.exempt  # RPs may POST here; the confirmation form below checks its own CSRF token
def logout():
    try:
        end_request = server.validate_endpoint_request("end_session")
    except OAuth2Error as error:
        return render_template("oauth/error.html", error=error.error, description=error.description), 400
    sso = sessions.current()
    hint = end_request.id_token_claims
    hint_matches = sso is None or (hint is not None and hint.get("sid") == sso.sid)
    confirmed = request.method == "POST" and request.form.get("confirm") == "yes" and _csrf_ok()
    if hint_matches or confirmed:
        response = server.create_endpoint_response("end_session", end_request)
        if response is None:
            response = current_app.make_response(render_template("oauth/logged_out.html"))
        return response
    client = end_request.client
    return render_template("oauth/logout_confirm.html", client_name=client.name if client else None,
                           params=list(request.values.items(multi=True)))


def _csrf_ok() -> bool:
    from flask_wtf.csrf import ValidationError, validate_csrf
    try:
        validate_csrf(request.form.get("csrf_token"))
        return True
    except ValidationError:
        return False


@bp.get("/")
def home():
    sso = sessions.current()
    account = accounts.active_by_id(sso.account_id) if sso else None
    return render_template("home.html", account=account, demo_rp_url=current_app.config.get("DEMO_RP_URL"),
                           title=_("Selfcare Business"))
