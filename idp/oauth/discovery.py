"""The provider's metadata (OpenID Connect Discovery 1.0 §3, RFC 8414), built once per app and served as bytes."""
from __future__ import annotations

import json

from authlib.oidc.discovery import OpenIDProviderMetadata

from .clients import NETWORK_GRANT
from .exchange import GRANT as EXCHANGE_GRANT
from .grants import ALL_AUTH_METHODS
from .scopes import ACR_LEVELS, SCOPES


def metadata(issuer: str) -> dict:
    doc = {
        "issuer": issuer,
        "authorization_endpoint": issuer + "/authorize",
        "token_endpoint": issuer + "/token",
        "userinfo_endpoint": issuer + "/userinfo",
        "jwks_uri": issuer + "/jwks.json",
        "revocation_endpoint": issuer + "/revoke",
        "introspection_endpoint": issuer + "/introspect",
        "end_session_endpoint": issuer + "/logout",
        "authorization_challenge_endpoint": issuer + "/authorize-challenge",
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", NETWORK_GRANT,
                                  EXCHANGE_GRANT],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "RS256"],
        "token_endpoint_auth_methods_supported": ALL_AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "RS256"],
        "revocation_endpoint_auth_methods_supported": ALL_AUTH_METHODS,
        "introspection_endpoint_auth_methods_supported": [m for m in ALL_AUTH_METHODS if m != "none"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "sid",
                             "at_hash", "phone_number", "phone_number_verified", "email", "email_verified",
                             "role", "customer_code", "customer_name", "lines"],
        "acr_values_supported": list(ACR_LEVELS),
        "prompt_values_supported": ["none", "login"],
        "ui_locales_supported": ["it", "en"],
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "authorization_response_iss_parameter_supported": True,
        "frontchannel_logout_supported": False,
        "backchannel_logout_supported": False,
    }
    OpenIDProviderMetadata(doc).validate()
    return doc


def body(issuer: str) -> bytes:
    return json.dumps(metadata(issuer), separators=(",", ":")).encode()
