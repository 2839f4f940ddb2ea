"""Registered clients (SPEC §4 "client authentication"; RFC 6749 §2, RFC 7591 metadata names).

``RegisteredClient`` is a plain, immutable view of a ``Client`` row that implements Authlib's ``ClientMixin``; a
worker keeps it for ``CLIENT_CACHE_TTL`` seconds so the token endpoint does not query the database per request.
Client secrets are 256-bit random values, so they are stored as SHA-256 (a slow hash would add nothing but
latency) and compared in constant time.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import ClientMixin, scope_to_list
from flask import current_app
from sqlalchemy import select

from ..extensions import db
from ..models import Client

AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
NETWORK_GRANT = "urn:selfcare:params:oauth:grant-type:network"
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials", NETWORK_GRANT)
SIGNING_ALGS = ("ES256", "RS256")


class ClientError(ValueError):
    """Invalid client registration data."""


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class RegisteredClient(ClientMixin):
    client_id: str
    name: str
    secret_hash: str | None
    meta: dict = field(hash=False)
    first_party: bool = False
    disabled: bool = False

    # metadata -------------------------------------------------------------------------------------------------
    @property
    def client_metadata(self) -> dict:  # read by Authlib's end-session endpoint
        return self.meta

    @property
    def redirect_uris(self) -> list[str]:
        return list(self.meta.get("redirect_uris", []))

    @property
    def post_logout_redirect_uris(self) -> list[str]:
        return list(self.meta.get("post_logout_redirect_uris", []))

    @property
    def grant_types(self) -> list[str]:
        return list(self.meta.get("grant_types", ["authorization_code"]))

    @property
    def token_endpoint_auth_method(self) -> str:
        return self.meta.get("token_endpoint_auth_method", "client_secret_basic")

    @property
    def is_public(self) -> bool:
        return self.token_endpoint_auth_method == "none"

    @property
    def scope(self) -> str:
        return self.meta.get("scope", "openid")

    @property
    def id_token_signed_response_alg(self) -> str:
        return self.meta.get("id_token_signed_response_alg") or current_app.config["DEFAULT_SIGNING_ALG"]

    @property
    def jwks(self) -> dict | None:
        return self.meta.get("jwks")

    @property
    def native_login(self) -> bool:
        """A first-party app allowed to log people in without a browser (authorization challenge endpoint)."""
        return self.first_party and bool(self.meta.get("native_login"))

    @property
    def may_introspect(self) -> bool:
        """Resource servers may introspect every token; other clients only their own."""
        return bool(self.meta.get("may_introspect"))

    # Authlib's ClientMixin -----------------------------------------------------------------------------------
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # Only an unambiguous registration may omit redirect_uri (RFC 6749 §3.1.2.3).
        uris = self.redirect_uris
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str) -> str:
        if not scope:
            return ""
        allowed = set(scope_to_list(self.scope))
        return " ".join(s for s in scope_to_list(scope) if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris  # exact string match (OAuth 2.0 Security BCP §4.1.3)

    def check_client_secret(self, client_secret: str) -> bool:
        if not self.secret_hash or not client_secret:
            return False
        return hmac.compare_digest(self.secret_hash, hash_secret(client_secret))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return not self.disabled and method == self.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return not self.disabled and grant_type in self.grant_types


def _view(row: Client) -> RegisteredClient:
    return RegisteredClient(client_id=row.client_id, name=row.name, secret_hash=row.secret_hash,
                            meta=dict(row.meta or {}), first_party=row.first_party, disabled=row.disabled)


class ClientCache:
    """Per-worker cache of client views; a disabled or unknown client is cached as None for the same TTL."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, RegisteredClient | None]] = {}

    def get(self, client_id: str, ttl: float) -> RegisteredClient | None:
        now = time.monotonic()
        entry = self._entries.get(client_id)
        if entry and now - entry[0] < ttl:
            return entry[1]
        row = db.session.scalar(select(Client).where(Client.client_id == client_id))
        view = _view(row) if row is not None and not row.disabled else None
        if ttl > 0:
            with self._lock:
                if len(self._entries) > 10000:
                    self._entries.clear()
                self._entries[client_id] = (now, view)
        return view

    def forget(self, client_id: str | None = None) -> None:
        with self._lock:
            if client_id is None:
                self._entries.clear()
            else:
                self._entries.pop(client_id, None)


def new_client_id() -> str:
    """144 random bits, URL-safe, never starting with "-" (a command line would read it as an option)."""
    while True:
        candidate = secrets.token_urlsafe(18)
        if candidate[0] != "-":
            return candidate


def well_formed_id(client_id: str | None) -> bool:
    """RFC 6749 Appendix A: a client_id is visible ASCII; anything else is nobody (and never reaches the database)."""
    return bool(client_id) and len(client_id) <= 64 and all(" " <= ch <= "~" for ch in client_id)


def query_client(client_id: str) -> RegisteredClient | None:
    if not well_formed_id(client_id):
        return None
    cache: ClientCache = current_app.extensions["idp.clients"]
    return cache.get(client_id, float(current_app.config["CLIENT_CACHE_TTL"]))


# registration (CLI) ---------------------------------------------------------------------------------------------

def _check_uri(uri: str, what: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme not in ("https", "http") and not (parts.scheme and "." in parts.scheme):
        raise ClientError(f"{what} must be https, http on loopback, or a private-use scheme: {uri}")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ClientError(f"{what} over plain http is allowed on loopback only: {uri}")
    if parts.fragment:
        raise ClientError(f"{what} must not contain a fragment: {uri}")
    return uri


def create(name: str, *, redirect_uris=(), grant_types=("authorization_code", "refresh_token"),
           scope="openid", auth_method="client_secret_basic", post_logout_redirect_uris=(), first_party=False,
           jwks: dict | None = None, id_token_alg: str | None = None, may_introspect=False, native_login=False,
           client_id: str | None = None, secret: str | None = None) -> tuple[Client, str | None]:
    """Register a client; return the row and its secret (shown once; only its hash is kept)."""
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name):  # bidi overrides could disguise the name
        raise ClientError("the name must not contain control or invisible formatting characters")
    if auth_method not in AUTH_METHODS:
        raise ClientError(f"auth method must be one of {', '.join(AUTH_METHODS)}")
    for grant in grant_types:
        if grant not in GRANT_TYPES:
            raise ClientError(f"grant type must be one of {', '.join(GRANT_TYPES)}")
    if (NETWORK_GRANT in grant_types or native_login) and not first_party:
        raise ClientError("network autologin and native login are for the operator's first-party apps only")
    if native_login and "authorization_code" not in grant_types:
        raise ClientError("native login issues authorization codes: add the authorization_code grant")
    if "authorization_code" in grant_types and not redirect_uris and not native_login:
        raise ClientError("the authorization_code grant needs at least one redirect URI")
    if auth_method == "none" and "client_credentials" in grant_types:
        raise ClientError("a public client (auth method none) cannot use client_credentials")
    if auth_method == "private_key_jwt" and not jwks:
        raise ClientError("private_key_jwt needs the client's public keys (--jwks FILE)")
    if id_token_alg and id_token_alg not in SIGNING_ALGS:
        raise ClientError(f"ID token algorithm must be one of {', '.join(SIGNING_ALGS)}")
    from .scopes import SCOPES
    unknown = [s for s in scope_to_list(scope) or [] if s not in SCOPES]
    if unknown:
        raise ClientError(f"unknown scopes: {' '.join(unknown)}")
    client_id = client_id or new_client_id()
    if db.session.scalar(select(Client).where(Client.client_id == client_id)) is not None:
        raise ClientError(f"client {client_id} already exists")
    if auth_method in ("client_secret_basic", "client_secret_post"):
        secret = secret or secrets.token_urlsafe(32)
    else:
        secret = None
    meta = {
        "redirect_uris": [_check_uri(u, "redirect URI") for u in redirect_uris],
        "post_logout_redirect_uris": [_check_uri(u, "post-logout URI") for u in post_logout_redirect_uris],
        "grant_types": list(grant_types),
        "response_types": ["code"] if "authorization_code" in grant_types and redirect_uris else [],
        "scope": scope,
        "token_endpoint_auth_method": auth_method,
    }
    if jwks:
        meta["jwks"] = jwks
    if id_token_alg:
        meta["id_token_signed_response_alg"] = id_token_alg
    if may_introspect:
        meta["may_introspect"] = True
    if native_login:
        meta["native_login"] = True
    row = Client(client_id=client_id, secret_hash=hash_secret(secret) if secret else None, name=name, meta=meta,
                 first_party=first_party)
    db.session.add(row)
    db.session.commit()
    return row, secret


def all_clients() -> list[Client]:
    return list(db.session.scalars(select(Client).order_by(Client.id)))


def get(client_id: str) -> Client | None:
    return db.session.scalar(select(Client).where(Client.client_id == client_id))


def disable(client_id: str) -> Client:
    row = get(client_id)
    if row is None:
        raise ClientError(f"no client {client_id}")
    row.disabled = True
    from .tokens import revoke_client_tokens
    revoke_client_tokens(client_id)  # commits
    db.session.commit()
    current_app.extensions["idp.clients"].forget(client_id)
    return row
