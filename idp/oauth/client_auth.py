"""``private_key_jwt`` client authentication (OIDC Core §9, RFC 7523 §2.2) on Authlib's assertion class.

The assertion's audience is our issuer or our token endpoint; its ``jti`` is remembered in Redis until the
assertion expires, so a captured assertion cannot be replayed.
"""
from __future__ import annotations

import time

from authlib.oauth2.rfc6749 import InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from flask import current_app
from joserfc.jwk import KeySet

from ..store import store
from .tokens import sha256


class PrivateKeyJWT(JWTBearerClientAssertion):
    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self):
        super().__init__(validate_jti=True, leeway=30)

    def get_audiences(self):
        issuer = current_app.config["ISSUER"]
        return [issuer, issuer + "/token"]

    def validate_jti(self, claims, jti):
        exp = claims.get("exp")
        ttl = int(exp - time.time()) + 60 if isinstance(exp, (int, float)) else 600
        return store().add(f"assertion-jti:{claims.get('iss')}:{sha256(str(jti))}", 1, max(ttl, 60))

    def extract_assertion(self, assertion: str):
        try:
            return super().extract_assertion(assertion)
        except RecursionError:  # nested deeper than json can decode; Authlib catches only ValueError
            raise InvalidClientError(description="Invalid JWT payload.") from None

    def resolve_client_public_key(self, client):
        return KeySet.import_key_set(client.jwks or {"keys": []})
