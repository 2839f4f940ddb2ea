"""Revocation (RFC 7009), introspection (RFC 7662) and RP-initiated logout (OIDC RP-Initiated Logout 1.0).

Both token endpoints accept either kind of token we issue, each found by its hash with its person in one
statement (``tokens.find_access``, ``tokens.find_refresh_token``): a JWT access token or a refresh token. Public
clients may revoke their own tokens. Introspection answers about a client's own tokens, or about any token for clients registered as resource
servers (``may_introspect``); anything else is ``{"active": false}``.
"""
from __future__ import annotations

import time

from authlib.oauth2.rfc6749 import InvalidRequestError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.rpinitiated import EndSessionEndpoint
from flask import current_app

from .. import sessions, signals
from ..keystore import keyring
from . import tokens
from .grants import ALL_AUTH_METHODS


class TokenRef:
    """A token row seen as one kind of token (the same row holds an access and a refresh token)."""

    def __init__(self, row: tokens.FoundToken, kind: str):
        self.row, self.kind = row, kind

    def check_client(self, client) -> bool:
        return self.row.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.row.scope

    def is_revoked(self) -> bool:
        if self.row.revoked_at is not None:
            return True
        if self.kind == "access_token":
            return self.row.access_revoked_at is not None
        return self.row.refresh_used_at is not None

    def is_expired(self) -> bool:
        exp = self.row.expires_at if self.kind == "access_token" else self.row.refresh_expires_at
        return exp is None or exp <= time.time()


def find_token(value: str, hint: str | None) -> TokenRef | None:
    if not value or len(value) > 4096:
        return None
    if value.count(".") == 2:  # introspection and revocation need the token and its subject, not the person
        row = tokens.find_access(value, tokens.BRIEF)
        return TokenRef(row, "access_token") if row is not None else None
    row = tokens.find_refresh_token(value, tokens.BRIEF)
    return TokenRef(row, "refresh_token") if row is not None else None


class _HintTolerant:
    """``token_type_hint`` is only a hint: we always search both kinds (RFC 7009 §2.1, RFC 7662 §2.1)."""

    def check_params(self, request, client):
        if not request.form.get("token"):
            raise InvalidRequestError("Missing 'token'.")


def revoke(token: TokenRef) -> None:
    """RFC 7009 §2.1: a refresh token ends its grant; an access token alone leaves the refresh token usable (also
    used by ``idp.fastpaths``)."""
    tokens.revoke(token.row) if token.kind == "refresh_token" else tokens.revoke_access(token.row)


class Revocation(_HintTolerant, RevocationEndpoint):
    CLIENT_AUTH_METHODS = ALL_AUTH_METHODS

    def query_token(self, token_string, token_type_hint):
        return find_token(token_string, token_type_hint)

    def revoke_token(self, token: TokenRef, request):
        revoke(token)


def introspection(client, value: str) -> dict:
    """What introspection says of a token to an authenticated client (RFC 7662 §2.2), as ``Introspection`` does
    (also used by ``idp.fastpaths``): inactive unless it is ours, live, and the client may see it."""
    token = find_token(value, None)
    if token is None or token.is_expired() or token.is_revoked() or not may_introspect(client, token):
        return {"active": False}
    return introspection_claims(token)


def may_introspect(client, token: TokenRef) -> bool:
    return client.may_introspect or token.check_client(client)


def introspection_claims(token: TokenRef) -> dict:
    row = token.row
    body = {"active": True, "client_id": row.client_id, "token_type": "Bearer" if token.kind == "access_token"
            else "refresh_token", "scope": row.scope, "iat": row.issued_at, "iss": current_app.config["ISSUER"],
            "exp": row.expires_at if token.kind == "access_token" else row.refresh_expires_at}
    body["sub"] = row.public_id if row.public_id is not None else row.client_id
    if token.kind == "access_token":
        body["jti"], body["aud"] = row.jti, row.audience
    if row.auth_time is not None:
        body.update(auth_time=row.auth_time, acr=row.acr, amr=(row.amr or "").split())
    return body


class Introspection(_HintTolerant, IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]

    def query_token(self, token_string, token_type_hint):
        return find_token(token_string, token_type_hint)

    def check_permission(self, token: TokenRef, client, request):
        return may_introspect(client, token)

    def introspect_token(self, token: TokenRef):
        return introspection_claims(token)


class EndSession(EndSessionEndpoint):
    def get_server_jwks(self):
        return keyring().verification_keys()

    def get_algorithms(self):
        return tokens.VERIFY_ALGORITHMS

    def resolve_client_from_id_token_claims(self, id_token_claims):
        aud = id_token_claims.get("aud")
        if isinstance(aud, list) and len(aud) == 1:
            aud = aud[0]
        return self.server.query_client(aud) if isinstance(aud, str) else None

    def end_session(self, end_session_request):
        current = sessions.current()
        if current is not None:
            client = end_session_request.client
            signals.emit(signals.LOGOUT, account_id=current.account_id,
                         client_id=client.client_id if client else None)
        sessions.end()
