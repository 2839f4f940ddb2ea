"""The grants (SPEC §4; RFC 6749 §4.1, §4.4, §6; RFC 7636; OIDC Core §3.1, §12) on Authlib's classes.

What differs from Authlib's defaults (``shared/notes/authlib-1.9.md``): codes live in Redis and are redeemed
atomically; public clients authenticate with ``none`` and must use PKCE with S256 (``plain`` is refused);
refresh tokens rotate, a rotated one presented again revokes its family, and concurrent presentations yield
exactly one new pair; ``client_credentials`` scopes are narrowed to the client's registration; ID tokens carry
``kid``, a string ``aud``, the real ``auth_time``, ``acr``, ``amr`` and ``sid``, also when issued on refresh.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from authlib.oauth2.rfc6749 import (InvalidGrantError, InvalidRequestError, InvalidScopeError, UnauthorizedClientError,
                                    grants, scope_to_list)
from authlib.oauth2.rfc6749.hooks import hooked
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core.grants import OpenIDCode, OpenIDToken
from authlib.oidc.core.util import create_half_hash
from flask import current_app, request as flask_request

from .. import gateway, people, sessions, signals
from ..store import store
from . import tokens
from .clients import NETWORK_GRANT
from .scopes import ACR_NETWORK, AMR, SCOPES, account_claims

ALL_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
CONFIDENTIAL_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]


@dataclass
class AuthenticatedUser:
    """What /authorize hands Authlib as ``grant_user``: the account and the SSO session it logged in with."""
    account: object
    session: object
    request_hash: str

    def get_user_id(self) -> str:
        return self.account.public_id


@dataclass
class CodeRecord:
    """An authorization code taken out of Redis (Authlib's AuthorizationCodeMixin)."""
    client_id: str
    redirect_uri: str | None
    scope: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    account_id: int
    auth_time: int
    acr: str
    amr: list
    sid: str | None
    family_id: str
    family_expires_at: int
    expires_at: int

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_nonce(self):
        return self.nonce

    def get_auth_time(self):
        return self.auth_time

    def get_acr(self):
        return self.acr

    def get_amr(self):
        return self.amr

    def login_context(self) -> tokens.LoginContext:
        return tokens.LoginContext(auth_time=self.auth_time, acr=self.acr, amr=list(self.amr), sid=self.sid,
                                   family_id=self.family_id, family_expires_at=self.family_expires_at)


def _nonce_key(client_id: str, nonce: str) -> str:
    return f"nonce:{client_id}:{tokens.sha256(nonce)}"


class IssuingMixin:
    """Every grant issues through ``tokens.issue``; the row to save rides on the request."""

    def generate_token(self, user=None, scope=None, grant_type=None, expires_in=None, include_refresh_token=True):
        token, row = tokens.issue(self.request.client, grant_type or self.GRANT_TYPE, scope, account=user,
                                  login=getattr(self.request, "login_context", None),
                                  include_refresh=include_refresh_token)
        self.request.token_row = row
        return token


class AuthorizationCodeGrant(IssuingMixin, grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_AUTH_METHODS

    def generate_authorization_code(self):
        return secrets.token_urlsafe(32)

    def save_authorization_code(self, code, request):
        user: AuthenticatedUser = request.user
        sso = user.session
        login = tokens.new_family(sso.auth_time, sso.acr, sso.amr, sso.sid)
        data = request.payload.data
        nonce = data.get("nonce")
        record = {
            "client_id": request.client.client_id, "redirect_uri": request.payload.redirect_uri,
            "scope": request.scope or "", "nonce": nonce, "code_challenge": data.get("code_challenge"),
            "code_challenge_method": data.get("code_challenge_method"), "account_id": user.account.id,
            "auth_time": sso.auth_time, "acr": sso.acr, "amr": sso.amr, "sid": sso.sid,
            "family_id": login.family_id, "family_expires_at": login.family_expires_at,
            "expires_at": int(time.time()) + int(current_app.config["CODE_TTL"]),
        }
        tokens.save_code(code, record)
        if nonce:
            store().put(_nonce_key(request.client.client_id, nonce), 1, int(current_app.config["ID_TOKEN_TTL"]))
        sessions.use_fresh(sso, user.request_hash)

    def query_authorization_code(self, code, client):
        if not code or len(code) > 128:
            return None
        record = tokens.redeem_code(code, flask_request.environ)
        if record is None or record["client_id"] != client.client_id or record["expires_at"] <= time.time():
            return None
        return CodeRecord(**record)

    def delete_authorization_code(self, authorization_code):
        pass  # already taken out of Redis by query_authorization_code

    def authenticate_user(self, authorization_code: CodeRecord):
        self.request.login_context = authorization_code.login_context()
        return people.active(authorization_code.account_id)

    def create_token_response(self):
        result = super().create_token_response()
        tokens.confirm_family_alive(self.request.authorization_code.family_id)
        return result


class RefreshTokenGrant(IssuingMixin, grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token):
        row = tokens.find_refresh_token(refresh_token)
        if row is None:
            return None
        if row.refresh_used_at is not None and row.revoked_at is None:
            tokens.revoke_family(row.family_id)  # a rotated token came back: assume it was stolen
            signals.emit(signals.TOKEN_REUSE_DETECTED, "refused", account_id=row.account_id,
                         client_id=row.client_id, kind="refresh_token")
            return None
        return row if tokens.refresh_usable(row) else None

    def authenticate_user(self, refresh_token):
        self.request.login_context = tokens.context_of(refresh_token)
        person = refresh_token.person  # read with the token, in the same statement
        return person if person is not None and person.is_active else None

    def create_token_response(self):
        row = self.request.refresh_token
        if not tokens.claim_refresh(row):
            tokens.revoke_family(row.family_id)  # lost a race against another presentation of the same token
            raise InvalidGrantError("The refresh token has already been used.")
        return super().create_token_response()

    def revoke_old_credential(self, refresh_token):
        pass  # claim_refresh marked it used before the new pair was issued


def client_credentials_scope(client, requested: str | None) -> str:
    """The scope a ``client_credentials`` request gets (RFC 6749 §4.4.2, §3.3): what it asks for, when every scope
    is one we support and the client is registered for, never ``openid`` (no person); else InvalidScopeError.
    Also used by ``idp.fastpaths``."""
    wanted = scope_to_list(requested) or []
    allowed = scope_to_list(client.get_allowed_scope(" ".join(wanted))) or []
    if set(wanted) - set(SCOPES) or set(wanted) - set(allowed) or "openid" in wanted:
        raise InvalidScopeError()
    return requested or ""


class ClientCredentialsGrant(IssuingMixin, grants.ClientCredentialsGrant):
    """Also answered before Flask for ``client_secret_basic`` (``idp.fastpaths``), with the same functions."""
    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_AUTH_METHODS

    def validate_token_request(self):
        super().validate_token_request()
        client_credentials_scope(self.request.client, self.request.payload.scope)

    def create_token_response(self):
        token = self.generate_token(scope=self.request.payload.scope or "", include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class S256CodeChallenge(CodeChallenge):
    """PKCE with S256 only; required of public clients at the authorization endpoint already."""
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        if not data.get("code_challenge") and grant.request.client.is_public:
            raise InvalidRequestError("Missing 'code_challenge': public clients must use PKCE (S256).")
        if data.get("code_challenge") and data.get("code_challenge_method", "plain") != "S256":
            raise InvalidRequestError("Unsupported 'code_challenge_method': only S256 is accepted.")
        return super().validate_code_challenge(grant, redirect_uri)


def id_token(token: dict, client, login: tokens.LoginContext, person, nonce: str | None = None) -> str:
    """Our ID token for a token response: the client's algorithm, the active key's ``kid``, a string ``aud``, the
    real ``auth_time``, ``acr``, ``amr``, ``sid``, ``at_hash`` and the person's claims for the token's scope (also
    used by ``idp.fastpaths``)."""
    alg = client.id_token_signed_response_alg
    now = int(time.time())
    claims = {"iss": current_app.config["ISSUER"], "aud": client.client_id, "iat": now,
              "exp": now + int(current_app.config["ID_TOKEN_TTL"]), "auth_time": login.auth_time,
              "acr": login.acr, "amr": login.amr}
    if login.sid:
        claims["sid"] = login.sid
    if nonce:
        claims["nonce"] = nonce
    at_hash = create_half_hash(token["access_token"], alg)
    if at_hash is not None:
        claims["at_hash"] = at_hash.decode()
    claims.update(account_claims(person, set(scope_to_list(token.get("scope")) or [])))
    return tokens.sign(claims, alg, "JWT")


class IdTokenMixin:
    """Authlib's OpenID extensions, issuing ``id_token``."""

    def encode_id_token(self, token, request):
        code = getattr(request, "authorization_code", None)
        return id_token(token, request.client, request.login_context, request.user,
                        nonce=code.nonce if code is not None else None)


class OpenIDCodeExtension(IdTokenMixin, OpenIDCode):
    def exists_nonce(self, nonce, request):
        return store().exists(_nonce_key(request.payload.client_id, nonce))


class OpenIDTokenExtension(IdTokenMixin, OpenIDToken):
    """An ID token for grants without an authorization request: a refresh of an ``openid`` grant (with the original
    ``auth_time``, OIDC Core §12.2) and the network-autologin grant."""


def network_scope(client, scope: str | None) -> str:
    """The scope a network-autologin grant asks for, if every scope in it is one we support and the client may
    have (raise InvalidScopeError); also used by ``idp.fastpaths``."""
    requested = scope_to_list(scope) or []
    allowed = scope_to_list(client.get_allowed_scope(" ".join(requested))) or []
    if set(requested) - set(SCOPES) or set(requested) - set(allowed):
        raise InvalidScopeError()
    return " ".join(requested)


def network_login() -> tokens.LoginContext:
    """A new grant family at the network level (``acr`` network, ``amr`` mno), authenticated now."""
    return tokens.new_family(int(time.time()), ACR_NETWORK, AMR[ACR_NETWORK], None)


def announce_network_login(person, client) -> None:
    signals.emit(signals.LOGIN_SUCCEEDED, account_id=person.id, line=person.username, client_id=client.client_id,
                 acr=ACR_NETWORK, via="network_grant")


class NetworkAutologinGrant(IssuingMixin, grants.BaseGrant, grants.TokenEndpointMixin):
    """Network autologin for the operator's first-party native apps (SPEC §3 point 3, issue 5 point 5a).

    The app calls the token endpoint over the mobile network, through the enrichment gateway, which signs the
    line as for the browser; the same rules apply (``gateway.identify``, an active employee's line, limits). The
    tokens carry the network level (``acr`` network, ``amr`` mno); a refresh token only if the client is
    registered for the refresh grant.
    """
    GRANT_TYPE = NETWORK_GRANT
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_AUTH_METHODS

    def validate_token_request(self):
        client = self.authenticate_token_endpoint_client()
        if not client.first_party or not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError("The client may not use network autologin.")
        scope = network_scope(client, self.request.payload.scope)
        account = gateway.eligible_account(gateway.identify())
        if account is None:
            raise InvalidGrantError("The request did not come through the operator's network for an eligible line.")
        self.request.client = client
        self.request.user = account
        self.request.scope = scope

    @hooked  # the ID token extension hooks after_create_token_response
    def create_token_response(self):
        account, client = self.request.user, self.request.client
        self.request.login_context = network_login()
        token = self.generate_token(user=account, scope=self.request.scope,
                                    include_refresh_token=client.check_grant_type("refresh_token"))
        self.save_token(token)
        announce_network_login(account, client)
        return 200, token, self.TOKEN_RESPONSE_HEADER
