"""Login without a browser for the operator's first-party apps (issue 5 point 5b), after the IETF draft
"OAuth 2.0 for First-Party Applications" (draft-ietf-oauth-first-party-apps): the Authorization Challenge Endpoint.

::

    POST /authorize-challenge  client_id, scope, code_challenge (S256), username, password [, acr_values]
        → 200 {"authorization_code"}                                   (password was enough)
        → 400 {"error": "insufficient_authorization", "auth_session", "challenge": {"type": "security_question"}}
    POST /authorize-challenge  client_id, auth_session, answer
        → 200 {"authorization_code"}
    anything this endpoint cannot do (a temporary password to change, a lock, no security question set, an
    unknown or expired step) → 400 {"error": "redirect_to_web"} or the draft's other codes

The code is redeemed at the token endpoint with the PKCE verifier (no redirect_uri). Only first-party clients
registered for it (``native_login``) may use the endpoint; the password and the answer go through the same
lockout, audit and equal-answer rules as the web login. ``auth_session`` is opaque, bound to the client, single-use
(each answer gets a new one) and short-lived.
"""
from __future__ import annotations

import secrets
import time

from authlib.oauth2.rfc6749 import scope_to_list
from flask import Blueprint, current_app, jsonify, request

from .. import accounts, lockout, msisdn, passwords, security_questions, signals
from ..extensions import csrf
from ..flows.base import client_address
from ..store import store
from . import tokens
from .policy import level
from .scopes import ACR_LEVELS, ACR_PASSWORD, ACR_PASSWORD_QUESTION, AMR, SCOPES

bp = Blueprint("native", __name__)
SESSION_TTL = 300


def _error(error: str, description: str, status: int = 400, **extra):
    response = jsonify({"error": error, "error_description": description, **extra})
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def _issue_code(client, account, scope: str, challenge: str, acr: str) -> str:
    now = int(time.time())
    login = tokens.new_family(now, acr, AMR[acr], None)
    code = secrets.token_urlsafe(32)
    tokens.save_code(code, {
        "client_id": client.client_id, "redirect_uri": None, "scope": scope, "nonce": None,
        "code_challenge": challenge, "code_challenge_method": "S256", "account_id": account.id, "auth_time": now,
        "acr": acr, "amr": AMR[acr], "sid": None, "family_id": login.family_id,
        "family_expires_at": login.family_expires_at, "expires_at": now + int(current_app.config["CODE_TTL"])})
    signals.emit(signals.LOGIN_SUCCEEDED, account_id=account.id, line=account.username, client_id=client.client_id,
                 acr=acr, via="authorization_challenge")
    return code


def _authenticate_client():
    """Public first-party apps send client_id; confidential ones authenticate as at the token endpoint."""
    from .server import server
    client = server.authenticate_client(server.create_oauth2_request(request),
                                        ["none", "client_secret_basic", "client_secret_post", "private_key_jwt"],
                                        "authorization_challenge")
    return client


@bp.post("/authorize-challenge")
@csrf.exempt
def authorize_challenge():
    from authlib.oauth2 import OAuth2Error
    try:
        client = _authenticate_client()
    except OAuth2Error:
        return _error("invalid_client", "Client authentication failed.", 401)
    if not client.native_login or not client.check_grant_type("authorization_code"):
        return _error("unauthorized_client", "The client may not log people in without a browser.")
    form = request.form
    if form.get("auth_session"):
        return _answer(client, form)
    return _password(client, form)


def _password(client, form):
    challenge, method = form.get("code_challenge", ""), form.get("code_challenge_method", "")
    if not challenge or method != "S256" or not 43 <= len(challenge) <= 128:
        return _error("invalid_request", "PKCE with S256 is required.")
    scope = form.get("scope", "")
    requested = scope_to_list(scope) or []
    if any(s not in SCOPES for s in requested) or set(requested) - set(scope_to_list(client.scope) or []):
        return _error("invalid_scope", "The requested scope is not allowed for this client.")
    username, password = form.get("username", ""), form.get("password", "")
    if not username or not password or len(username) > 32 or len(password) > 256:
        return _error("invalid_request", "username and password are required.")
    wanted = [v for v in (form.get("acr_values") or "").split() if v in ACR_LEVELS]
    required = min(wanted, key=level) if wanted else ACR_PASSWORD
    typed = msisdn.try_normalise(username) or username.strip()
    try:
        ticket = lockout.take(typed, client_address())
    except lockout.Locked:
        signals.emit(signals.LOGIN_FAILED, "locked", line=msisdn.try_normalise(typed), client_id=client.client_id)
        return _error("redirect_to_web", "Too many attempts: continue in the browser.")
    account = accounts.check_password(username, password)
    if account is None:
        lockout.failed(ticket)
        signals.emit(signals.LOGIN_FAILED, "refused", line=msisdn.try_normalise(typed), client_id=client.client_id,
                     via="authorization_challenge")
        return _error("insufficient_authorization", "The line or the password is not correct.")
    lockout.succeeded(ticket)
    if account.password_temporary:
        return _error("redirect_to_web", "The temporary password must be changed in the browser.")
    if level(required) < level(ACR_PASSWORD_QUESTION):
        return jsonify({"authorization_code": _issue_code(client, account, " ".join(requested), challenge,
                                                           ACR_PASSWORD)})
    if not account.security_answer_hash:
        return _error("redirect_to_web", "The security question must be set in the browser.")
    return _question_challenge(client, account, " ".join(requested), challenge)


def _question_challenge(client, account, scope: str, challenge: str):
    handle = secrets.token_urlsafe(32)
    store().put("challenge:" + tokens.sha256(handle), {"client_id": client.client_id, "account_id": account.id,
                                                       "scope": scope, "code_challenge": challenge}, SESSION_TTL)
    return _error("insufficient_authorization", "Answer the security question.", auth_session=handle,
                  challenge={"type": "security_question", "question_id": account.security_question,
                             "question": security_questions.text(account.security_question)})


def _answer(client, form):
    pending = store().consume("challenge:" + tokens.sha256(form["auth_session"][:128]))
    if pending is None or pending["client_id"] != client.client_id:
        return _error("invalid_session", "The auth_session is unknown, used or expired.")
    account = accounts.active_by_id(pending["account_id"])
    if account is None or not account.security_answer_hash:
        return _error("redirect_to_web", "Continue in the browser.")
    try:
        ticket = lockout.take(account.username, client_address())
    except lockout.Locked:
        signals.emit(signals.LOGIN_FAILED, "locked", account_id=account.id, line=account.username, factor="kba")
        return _error("redirect_to_web", "Too many attempts: continue in the browser.")
    if passwords.verify_secret(account.security_answer_hash, passwords.normalise_answer(form.get("answer", ""))):
        lockout.succeeded(ticket)
        return jsonify({"authorization_code": _issue_code(client, account, pending["scope"],
                                                           pending["code_challenge"], ACR_PASSWORD_QUESTION)})
    lockout.failed(ticket)
    signals.emit(signals.LOGIN_FAILED, "refused", account_id=account.id, line=account.username,
                 client_id=client.client_id, factor="kba", via="authorization_challenge")
    return _question_challenge(client, account, pending["scope"], pending["code_challenge"])
