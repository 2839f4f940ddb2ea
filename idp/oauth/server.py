"""Authlib's authorization server, wired for us (SPEC §4): grants, client authentication, endpoints."""
from __future__ import annotations

from authlib.integrations.flask_oauth2 import AuthorizationServer

from . import tokens
from .client_auth import PrivateKeyJWT
from .clients import ClientCache, query_client
from .endpoints import EndSession, Introspection, Revocation
from .exchange import RefreshTokenGrant as ExchangeAwareRefreshTokenGrant
from .exchange import TokenExchangeGrant
from .grants import (AuthorizationCodeGrant, ClientCredentialsGrant, NetworkAutologinGrant, OpenIDCodeExtension,
                     OpenIDTokenExtension, S256CodeChallenge)
from .scopes import SCOPES


def _save_token(token, request):
    tokens.save(request.token_row)  # the row built by IssuingMixin.generate_token


server = AuthorizationServer()


def init_app(app) -> None:
    app.extensions["idp.clients"] = ClientCache()
    app.config["OAUTH2_SCOPES_SUPPORTED"] = list(SCOPES)
    server.init_app(app, query_client=query_client, save_token=_save_token)
    if getattr(server, "_idp_wired", False):
        return
    server.register_client_auth_method(PrivateKeyJWT.CLIENT_AUTH_METHOD, PrivateKeyJWT())
    server.register_grant(AuthorizationCodeGrant, [OpenIDCodeExtension(require_nonce=False),
                                                   S256CodeChallenge(required=True)])
    server.register_grant(ExchangeAwareRefreshTokenGrant, [OpenIDTokenExtension()])  # keeps exchanged audiences
    server.register_grant(NetworkAutologinGrant, [OpenIDTokenExtension()])
    server.register_grant(ClientCredentialsGrant)
    server.register_grant(TokenExchangeGrant)  # RFC 8693 (issue 6)
    server.register_endpoint(Revocation)
    server.register_endpoint(Introspection)
    server.register_endpoint(EndSession)
    server._idp_wired = True
