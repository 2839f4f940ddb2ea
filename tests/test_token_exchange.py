"""Token exchange (RFC 8693; issue 6): the grant, the per-client policy, the external issuer, the example API.

Subject tokens are real: ours come through the real login pages (``Journey``) or the network grant; the external
issuer (the consumer-side Area Clienti 3 IdP) is a real JWKS-serving HTTP server on loopback whose private keys sign
the external JWTs; openid-client (node) performs an exchange against a live server; the example Selfcare API
validates what comes out, on its own, through the IdP's JWKS or its introspection endpoint.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey
from werkzeug.datastructures import MultiDict

from examples import selfcare_api
from idp import config as idp_config
from idp import signals
from idp.extensions import db
from idp.models import Account, AccountLine, AuditEvent, Line, Token
from idp.oauth import exchange, tokens

from .conftest import LiveServer, free_port
from .gateway import GATEWAY_SETTINGS, signed_headers
from .helpers import LINE, Factory, Journey, basic

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
IDT = "urn:ietf:params:oauth:token-type:id_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
NETWORK_GRANT = "urn:selfcare:params:oauth:grant-type:network"
ACR_NETWORK = "urn:selfcare:acr:network"
ACR_PASSWORD = "urn:selfcare:acr:password"
ACR_QUESTION = "urn:selfcare:acr:password+question"
LINES_API = "https://api.selfcare.example/lines"
BILLING_API = "selfcare-billing"
AC3 = "https://login.areaclienti3.example"  # the consumer-side IdP (its JWKS is served on loopback)
AC3_AUDIENCE = "my3-backend"
PARTNER = "https://partner.example"  # a partner issuer whose `sub` is our account's public id (inline JWKS)
SECOND_SIM = "+393937654321"
NODE_DIR = Path(__file__).parent / "oidc_client"


# the external issuer: a real JWKS server on loopback ------------------------------------------------------------

class JwksServer:
    """The Area Clienti 3 IdP's JWKS endpoint, served by http.server in a thread; counts its fetches."""

    def __init__(self):
        self.keys = [self._new_key()]
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - http.server's naming
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                server.fetches += 1
                body = json.dumps({"keys": [k.as_dict(private=False) for k in server.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/jwk-set+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.jwks_uri = f"http://127.0.0.1:{self._httpd.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @staticmethod
    def _new_key() -> ECKey:
        return ECKey.generate_key("P-256", parameters={"kid": "ac3-" + secrets.token_hex(4), "alg": "ES256",
                                                       "use": "sig"})

    @property
    def kid(self) -> str:
        return self.keys[0].kid

    def rotate(self) -> str:
        """The issuer replaces its key: the new kid is published, the old one withdrawn."""
        self.keys = [self._new_key()]
        return self.kid

    def sign(self, claims: dict, *, key=None, kid: str | None = None, alg: str = "ES256") -> str:
        key = key or self.keys[0]
        return jwt.encode({"alg": alg, "kid": kid or key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def ac3_claims(**overrides) -> dict:
    now = int(time.time())
    claims = {"iss": AC3, "sub": "ac3-consumer-77", "aud": AC3_AUDIENCE, "iat": now, "exp": now + 300,
              "jti": secrets.token_urlsafe(12), "phone_number": LINE, "phone_number_verified": True,
              "acr": "urn:ac3:loa:2", "amr": ["pwd", "sms"], "auth_time": now - 120}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


# the IdP with its clients ---------------------------------------------------------------------------------------

@dataclass
class Env:
    app: object
    client: object
    factory: Factory
    account_id: int
    sub: str
    my3: object  # the My3 app: public, first party (its tokens are the usual subject tokens)
    backend: object  # the My3 backend: confidential, with an exchange policy
    other: object  # a confidential client without a policy
    api: object  # the Selfcare API as a client that may introspect
    ext: JwksServer
    partner_key: ECKey

    def exchange(self, rp=None, **params):
        rp = rp or self.backend
        data = MultiDict([("grant_type", GRANT)])
        for name, value in params.items():
            for item in value if isinstance(value, list) else [value]:
                data.add(name, item)
        return self.client.post("/token", data=data, headers=basic(rp.client_id, rp.secret))

    def my3_tokens(self, scope="openid profile phone") -> dict:
        return Journey(self.app.test_client(), self.my3).tokens(scope=scope)

    def claims(self, token: str) -> jwt.Token:
        return jwt.decode(token, KeySet.import_key_set(self.client.get("/jwks.json").json))

    def set_policy(self, rp=None, **overrides):
        policy = dict(subject_token_types=["access_token", "id_token", "jwt"], issuers=["self", AC3, PARTNER],
                      audiences=[LINES_API, BILLING_API], scopes=["profile", "phone", "lines"],
                      actor_token_types=["access_token", "jwt"], subject_clients=[self.my3.client_id])
        policy.update(overrides)
        with self.app.app_context():
            return exchange.set_policy((rp or self.backend).client_id, **policy)

    def events(self, kind: str) -> list[AuditEvent]:
        with self.app.app_context():
            return [r for r in db.session.query(AuditEvent).order_by(AuditEvent.id) if r.type == kind]

    def row(self, jti: str) -> Token:
        with self.app.app_context():
            row = db.session.query(Token).filter_by(jti=jti).one()
            db.session.expunge(row)
            return row


def trusted_issuers(ext: JwksServer, partner_key: ECKey) -> list[dict]:
    return [
        {"issuer": AC3, "jwks_uri": ext.jwks_uri, "audience": AC3_AUDIENCE, "subject_claim": "phone_number",
         "scopes": ["profile", "phone", "lines"], "acr_map": {"urn:ac3:loa:2": ACR_PASSWORD},
         "algorithms": ["ES256"], "max_lifetime": 3600, "jwks_refetch_interval": 1},
        {"issuer": PARTNER, "jwks": {"keys": [partner_key.as_dict(private=False)]}, "audience": ["selfcare"],
         "subject_claim": "sub", "scopes": ["profile"]},
    ]


def build_env(app, ext, partner_key) -> Env:
    factory = Factory(app)
    account_id = factory.account()
    with app.app_context():
        sub = db.session.get(Account, account_id).public_id
    scope = "openid profile email phone lines"
    my3 = factory.rp(name="My3", redirect_uri="https://my3.example/cb", auth_method="none", first_party=True,
                     grant_types=("authorization_code", "refresh_token", NETWORK_GRANT), scope=scope)
    backend = factory.rp(name="My3 backend", client_id="my3-backend", redirect_uri="https://backend.example/cb",
                         grant_types=("authorization_code", "refresh_token", "client_credentials"), scope=scope)
    other = factory.rp(name="Portale X", client_id="portal-x", redirect_uri="https://x.example/cb", scope=scope,
                       grant_types=("authorization_code", "refresh_token", "client_credentials"))
    api = factory.rp(name="Selfcare API", client_id="selfcare-api", redirect_uri=None, grant_types=(),
                     may_introspect=True)
    env = Env(app, app.test_client(), factory, account_id, sub, my3, backend, other, api, ext, partner_key)
    env.set_policy()
    return env


@pytest.fixture
def ext():
    with JwksServer() as server:
        yield server


@pytest.fixture
def partner_key():
    return ECKey.generate_key("P-256", parameters={"kid": "partner-1", "alg": "ES256", "use": "sig"})


@pytest.fixture
def env(make_app, ext, partner_key) -> Env:
    app = make_app(EXCHANGE_TRUSTED_ISSUERS=trusted_issuers(ext, partner_key), **GATEWAY_SETTINGS)
    return build_env(app, ext, partner_key)


@contextmanager
def live(make_app, ext, partner_key):
    """The IdP on a real loopback port (its issuer that URL), with the trusted issuers and the clients."""
    port = free_port()
    app = make_app(ISSUER=f"http://127.0.0.1:{port}", EXCHANGE_TRUSTED_ISSUERS=trusted_issuers(ext, partner_key))
    server = LiveServer(app, port).start()
    try:
        yield server, build_env(app, ext, partner_key)
    finally:
        server.stop()


def error_of(response) -> str:
    assert response.status_code in (400, 401), (response.status_code, response.text)
    return response.json["error"]


# discovery ------------------------------------------------------------------------------------------------------

def test_discovery_advertises_the_exchange_grant(env):
    doc = env.client.get("/.well-known/openid-configuration").json
    assert GRANT in doc["grant_types_supported"]


# our own access tokens ------------------------------------------------------------------------------------------

def test_exchanging_our_access_token_is_answered_before_flask_as_the_grant_answers(env):
    """idp/fastpaths.py answers the common exchange (our access token, client_secret_basic) with the grant's own
    functions; an extra parameter sends the same exchange through Authlib, for comparison. A refusal goes to
    Flask, which answers and audits it once."""
    from flask import request_started
    subject = env.my3_tokens()
    reached = []
    with request_started.connected_to(lambda sender, **extra: reached.append(1), env.app):
        fast = env.exchange(subject_token=subject["access_token"], subject_token_type=AT, audience=LINES_API,
                            scope="phone")
        assert reached == []
        slow = env.exchange(subject_token=subject["access_token"], subject_token_type=AT, audience=LINES_API,
                            scope="phone", x="1")
        assert reached == [1]
        refused = env.exchange(subject_token=subject["access_token"], subject_token_type=AT, audience="elsewhere")
        assert reached == [1, 1]
    assert fast.status_code == slow.status_code == 200 and list(fast.json) == list(slow.json)
    for name in ("Content-Type", "Cache-Control", "Pragma"):
        assert fast.headers.get(name) == slow.headers.get(name), name
    fast_claims, slow_claims = env.claims(fast.json["access_token"]).claims, env.claims(slow.json["access_token"]).claims
    assert set(fast_claims) == set(slow_claims)
    assert {k: v for k, v in fast_claims.items() if k not in ("jti", "iat", "exp")} == \
        {k: v for k, v in slow_claims.items() if k not in ("jti", "iat", "exp")}
    assert refused.status_code == 400 and refused.json["error"] == "invalid_target"
    assert len(env.events("token.exchanged")) == 2 and len(env.events("token.exchange_refused")) == 1
    assert env.row(fast_claims["jti"]).grant_type == GRANT


def test_own_access_token_is_exchanged_for_an_api_token(env):
    subject = env.my3_tokens()
    original = env.claims(subject["access_token"]).claims
    response = env.exchange(subject_token=subject["access_token"], subject_token_type=AT, audience=LINES_API,
                            scope="phone")
    assert response.status_code == 200, response.text
    body = response.json
    assert body["issued_token_type"] == AT and body["token_type"] == "Bearer" and body["scope"] == "phone"
    assert 0 < body["expires_in"] <= 300 and "refresh_token" not in body
    assert response.headers["Cache-Control"] == "no-store"
    token = env.claims(body["access_token"])
    claims = token.claims
    assert token.header["typ"] == "at+jwt" and token.header["kid"]
    assert claims["aud"] == LINES_API and claims["client_id"] == "my3-backend" and claims["sub"] == env.sub
    assert claims["iss"] == original["iss"] and claims["scope"] == "phone" and "act" not in claims
    for name in ("auth_time", "acr", "amr", "sid"):
        assert claims[name] == original[name], name
    assert claims["exp"] - claims["iat"] == body["expires_in"] and claims["jti"] != original["jti"]

    row = env.row(claims["jti"])
    assert row.grant_type == GRANT and row.audience == LINES_API and row.client_id == "my3-backend"
    assert row.scope == "phone" and row.refresh_hash is None and row.acr == ACR_PASSWORD

    # the resource server's introspection sees it, with its audience; revoked, it is inactive
    introspected = env.client.post("/introspect", data={"token": body["access_token"]},
                                   headers=basic(env.api.client_id, env.api.secret)).json
    assert introspected["active"] is True and introspected["aud"] == LINES_API
    assert introspected["client_id"] == "my3-backend" and introspected["scope"] == "phone"
    assert introspected["acr"] == ACR_PASSWORD and introspected["sub"] == env.sub
    revoked = env.client.post("/revoke", data={"token": body["access_token"]},
                              headers=basic(env.backend.client_id, env.backend.secret))
    assert revoked.status_code == 200
    assert env.client.post("/introspect", data={"token": body["access_token"]},
                           headers=basic(env.api.client_id, env.api.secret)).json == {"active": False}

    # our access tokens may be exchanged again while they live (documented): each exchange is its own row
    again = env.exchange(subject_token=subject["access_token"], subject_token_type=AT, audience=BILLING_API)
    assert again.status_code == 200, again.text
    assert env.claims(again.json["access_token"]).claims["aud"] == BILLING_API
    assert again.json["scope"] == "profile phone"  # no scope asked: the subject's ∩ the policy

    [first, second] = env.events(signals.TOKEN_EXCHANGED)
    assert first.client_id == "my3-backend" and first.account_id == env.account_id and first.outcome == "success"
    assert first.masked_line == "+39 393 ***4567"
    assert first.details["audience"] == LINES_API and first.details["scope"] == "phone"
    assert first.details["subject_type"] == "access_token" and first.details["jti"] == claims["jti"]
    assert second.details["audience"] == BILLING_API
    assert subject["access_token"] not in json.dumps(first.details)


@pytest.mark.parametrize("requested,error", [
    ("phone", None),  # narrower: granted
    ("profile phone", None),  # the whole ceiling
    ("lines", "invalid_scope"),  # in the policy, not in the subject token
    ("email", "invalid_scope"),  # in the subject's client registration, in neither
    ("openid", "invalid_scope"),  # in the subject token, never in a policy
    ("phone admin", "invalid_scope"),  # unknown
])
def test_scopes_only_narrow(env, requested, error):
    subject = env.my3_tokens(scope="openid profile phone")
    response = env.exchange(subject_token=subject["access_token"], subject_token_type=AT, audience=LINES_API,
                            scope=requested)
    if error:
        assert error_of(response) == error
    else:
        assert response.status_code == 200, response.text
        assert response.json["scope"] == requested
        assert env.claims(response.json["access_token"]).claims["scope"] == requested


def test_no_scope_left_is_invalid_scope(env):
    env.set_policy(scopes=["lines"])
    subject = env.my3_tokens(scope="openid profile phone")
    assert error_of(env.exchange(subject_token=subject["access_token"], subject_token_type=AT,
                                 audience=LINES_API)) == "invalid_scope"


def test_assurance_is_carried_over_and_never_raised(env):
    """A network-level subject stays network-level: neither a stronger actor nor acr_values can raise it."""
    network = env.client.post("/token", data={"grant_type": NETWORK_GRANT, "client_id": env.my3.client_id,
                                              "scope": "openid phone"}, headers=signed_headers(LINE))
    assert network.status_code == 200, network.text
    subject = env.claims(network.json["access_token"]).claims
    assert subject["acr"] == ACR_NETWORK and subject["amr"] == ["mno"]
    # the actor: the same person logged in to the backend with a password (a higher level)
    actor = Journey(env.app.test_client(), env.backend).tokens()
    assert env.claims(actor["access_token"]).claims["acr"] == ACR_PASSWORD
    response = env.exchange(subject_token=network.json["access_token"], subject_token_type=AT,
                            actor_token=actor["access_token"], actor_token_type=AT, audience=LINES_API,
                            acr_values=ACR_QUESTION, max_age="0")
    assert response.status_code == 200, response.text
    claims = env.claims(response.json["access_token"]).claims
    assert claims["acr"] == ACR_NETWORK and claims["amr"] == ["mno"] and claims["auth_time"] == subject["auth_time"]
    assert claims["act"] == {"sub": env.sub} and claims["scope"] == "phone"
    with env.app.app_context():
        assert db.session.query(Token).filter_by(jti=claims["jti"]).one().acr == ACR_NETWORK


def test_revoked_and_expired_access_tokens_are_refused(env):
    subject = env.my3_tokens()
    revoked = env.client.post("/revoke", data={"token": subject["access_token"], "client_id": env.my3.client_id})
    assert revoked.status_code == 200
    response = env.exchange(subject_token=subject["access_token"], subject_token_type=AT, audience=LINES_API)
    assert error_of(response) == "invalid_request"
    assert "revoked" in response.json["error_description"]

    # an access token whose exp has passed (signed by our real key, for a live row)
    fresh = env.my3_tokens()
    claims = dict(env.claims(fresh["access_token"]).claims, exp=int(time.time()) - 1)
    with env.app.app_context():
        expired = tokens.sign(claims, env.app.config["DEFAULT_SIGNING_ALG"], "at+jwt")
    assert error_of(env.exchange(subject_token=expired, subject_token_type=AT, audience=LINES_API)) \
        == "invalid_request"
    # the account's grants end (password change revokes every token): its tokens cannot be exchanged either
    with env.app.app_context():
        tokens.revoke_account_tokens(env.account_id)
    assert error_of(env.exchange(subject_token=fresh["access_token"], subject_token_type=AT,
                                 audience=LINES_API)) == "invalid_request"


def test_exchanged_token_never_outlives_its_subject_and_ttl_is_configurable(make_app, ext, partner_key):
    app = make_app(EXCHANGE_TRUSTED_ISSUERS=trusted_issuers(ext, partner_key), EXCHANGE_TOKEN_TTL=120)
    env = build_env(app, ext, partner_key)
    subject = env.my3_tokens()
    response = env.exchange(subject_token=subject["access_token"], subject_token_type=AT, audience=LINES_API)
    assert response.status_code == 200 and response.json["expires_in"] == 120
    short = ext.sign(ac3_claims(exp=int(time.time()) + 20))
    response = env.exchange(subject_token=short, subject_token_type=JWT_TYPE, audience=LINES_API)
    assert response.status_code == 200, response.text
    assert response.json["expires_in"] <= 20
    claims = env.claims(response.json["access_token"]).claims
    assert claims["exp"] <= jwt.decode(short, KeySet(ext.keys)).claims["exp"]


# our own ID tokens ----------------------------------------------------------------------------------------------

def test_id_token_subject_is_single_use_and_its_scope_is_what_it_proves(env):
    subject = env.my3_tokens(scope="openid phone")
    response = env.exchange(subject_token=subject["id_token"], subject_token_type=IDT, audience=LINES_API)
    assert response.status_code == 200, response.text
    assert response.json["scope"] == "phone"  # the ID token proves phone (phone_number), nothing more
    claims = env.claims(response.json["access_token"]).claims
    id_claims = env.claims(subject["id_token"]).claims
    assert claims["sub"] == env.sub and claims["acr"] == id_claims["acr"] and claims["sid"] == id_claims["sid"]
    assert claims["auth_time"] == id_claims["auth_time"] and claims["exp"] <= id_claims["exp"]
    replay = env.exchange(subject_token=subject["id_token"], subject_token_type=IDT, audience=BILLING_API)
    assert error_of(replay) == "invalid_request" and "already" in replay.json["error_description"]
    [reuse] = env.events(signals.TOKEN_REUSE_DETECTED)
    assert reuse.details["kind"] == "exchange_subject_token"


def test_id_token_refusals(env):
    # issued to a client the policy does not name
    theirs = Journey(env.app.test_client(), env.other).tokens()
    assert error_of(env.exchange(subject_token=theirs["id_token"], subject_token_type=IDT,
                                 audience=LINES_API)) == "invalid_request"
    # expired (signed by our real key)
    subject = env.my3_tokens()
    claims = dict(env.claims(subject["id_token"]).claims, exp=int(time.time()) - 1)
    with env.app.app_context():
        expired = tokens.sign(claims, "ES256", "JWT")
    response = env.exchange(subject_token=expired, subject_token_type=IDT, audience=LINES_API)
    assert error_of(response) == "invalid_request" and "expired" in response.json["error_description"]
    # an access token presented as an ID token, and an ID token as an access token
    assert error_of(env.exchange(subject_token=subject["access_token"], subject_token_type=IDT,
                                 audience=LINES_API)) == "invalid_request"
    assert error_of(env.exchange(subject_token=subject["id_token"], subject_token_type=AT,
                                 audience=LINES_API)) == "invalid_request"


# subject token refusals and malformed requests ------------------------------------------------------------------

def test_subject_token_refusals(env):
    subject = env.my3_tokens()
    cc = env.client.post("/token", data={"grant_type": "client_credentials"},
                         headers=basic(env.backend.client_id, env.backend.secret))
    assert cc.status_code == 200
    other = Journey(env.app.test_client(), env.other).tokens()
    cases = [
        ({"subject_token": cc.json["access_token"], "subject_token_type": AT}, "client credentials"),
        ({"subject_token": other["access_token"], "subject_token_type": AT}, "not issued to this client"),
        ({"subject_token": subject["access_token"], "subject_token_type": JWT_TYPE}, "not as jwt"),
        ({"subject_token": subject["access_token"],
          "subject_token_type": "urn:ietf:params:oauth:token-type:saml2"}, "Unsupported"),
        ({"subject_token": subject["refresh_token"],
          "subject_token_type": "urn:ietf:params:oauth:token-type:refresh_token"}, "Unsupported"),
        ({"subject_token": "not-a-token", "subject_token_type": AT}, "not a signed JWT"),
        ({"subject_token_type": AT}, "Missing 'subject_token'"),
        ({"subject_token": subject["access_token"]}, "Missing 'subject_token_type'"),
        ({"subject_token": [subject["access_token"], subject["access_token"]], "subject_token_type": AT},
         "Repeated"),
        ({"subject_token": subject["access_token"], "subject_token_type": AT,
          "requested_token_type": "urn:ietf:params:oauth:token-type:id_token"}, "Only access tokens"),
    ]
    for params, words in cases:
        response = env.exchange(audience=LINES_API, **params)
        assert error_of(response) == "invalid_request", (params, response.json)
        assert words in response.json["error_description"], (words, response.json)
    # a type the policy does not allow
    env.set_policy(subject_token_types=["jwt"])
    response = env.exchange(subject_token=subject["access_token"], subject_token_type=AT, audience=LINES_API)
    assert error_of(response) == "invalid_request" and "may not present" in response.json["error_description"]
    # an issuer the policy does not allow (ours)
    env.set_policy(issuers=[AC3])
    response = env.exchange(subject_token=subject["access_token"], subject_token_type=AT, audience=LINES_API)
    assert error_of(response) == "invalid_request" and "issuer" in response.json["error_description"]
    refused = env.events(signals.TOKEN_EXCHANGE_REFUSED)
    assert len(refused) == len(cases) + 2
    assert all(e.outcome == "refused" and e.details["error"] == "invalid_request" for e in refused)
    assert refused[0].client_id == "my3-backend" and refused[0].details["subject_type"] == "access_token"
    assert not any(subject["access_token"] in json.dumps(e.details) for e in refused)


def test_client_errors(env):
    subject = env.my3_tokens()
    params = {"subject_token": subject["access_token"], "subject_token_type": AT, "audience": LINES_API}
    # a confidential client without a policy: deny by default
    assert error_of(env.exchange(rp=env.other, **params)) == "unauthorized_client"
    # wrong secret
    response = env.client.post("/token", data={"grant_type": GRANT, **params},
                               headers=basic(env.backend.client_id, "wrong"))
    assert response.status_code == 401 and response.json["error"] == "invalid_client"
    # a public client cannot exchange (nor be given a policy)
    response = env.client.post("/token", data={"grant_type": GRANT, "client_id": env.my3.client_id, **params})
    assert response.status_code == 401 and response.json["error"] == "invalid_client"
    with env.app.app_context(), pytest.raises(exchange.PolicyError):
        exchange.set_policy(env.my3.client_id, subject_token_types=["access_token"], issuers=["self"],
                            audiences=[LINES_API], scopes=["phone"])
    # an unknown grant type
    response = env.client.post("/token", data={**params, "grant_type": GRANT + "-v2"},
                               headers=basic(env.backend.client_id, env.backend.secret))
    assert error_of(response) == "unsupported_grant_type"
    # the policy cleared: unauthorized again
    with env.app.app_context():
        exchange.clear_policy("my3-backend")
    assert error_of(env.exchange(**params)) == "unauthorized_client"
    errors = [e.details["error"] for e in env.events(signals.TOKEN_EXCHANGE_REFUSED)]
    assert errors == ["unauthorized_client", "invalid_client", "invalid_client", "unauthorized_client"]


def test_targets(env):
    subject = env.my3_tokens()
    base = {"subject_token": subject["access_token"], "subject_token_type": AT}
    for params in ({"audience": "https://api.selfcare.example/admin"}, {"resource": "https://evil.example/"},
                   {"audience": [LINES_API, BILLING_API]}, {"audience": BILLING_API, "resource": LINES_API},
                   {"resource": "/lines"}, {"resource": LINES_API + "#x"}):
        response = env.exchange(**base, **params)
        assert error_of(response) == "invalid_target", (params, response.json)
    # a resource (RFC 8707) the policy allows; the same value as audience and resource is one target
    for params in ({"resource": LINES_API}, {"audience": LINES_API, "resource": LINES_API}):
        response = env.exchange(**base, **params)
        assert response.status_code == 200, response.text
        assert env.claims(response.json["access_token"]).claims["aud"] == LINES_API
    # no target: ambiguous with two audiences, the default with one
    assert error_of(env.exchange(**base)) == "invalid_request"
    env.set_policy(audiences=[BILLING_API])
    response = env.exchange(**base)
    assert response.status_code == 200 and env.claims(response.json["access_token"]).claims["aud"] == BILLING_API
    assert [e.details["error"] for e in env.events(signals.TOKEN_EXCHANGE_REFUSED)].count("invalid_target") == 6


# the external issuer (consumer-side Area Clienti 3 IdP) ---------------------------------------------------------

def test_external_token_maps_the_verified_phone_number_to_our_account(env):
    original = ac3_claims()
    token = env.ext.sign(original)
    response = env.exchange(subject_token=token, subject_token_type=JWT_TYPE, audience=LINES_API,
                            scope="lines phone")
    assert response.status_code == 200, response.text
    assert response.json["scope"] == "phone lines"
    claims = env.claims(response.json["access_token"]).claims
    assert claims["sub"] == env.sub and claims["client_id"] == "my3-backend" and claims["aud"] == LINES_API
    assert claims["acr"] == ACR_PASSWORD  # mapped by the issuer's acr_map
    assert claims["amr"] == ["pwd", "sms"] and claims["auth_time"] == original["auth_time"]
    [event] = env.events(signals.TOKEN_EXCHANGED)
    assert event.details["subject_issuer"] == AC3 and event.details["subject_type"] == "jwt"
    assert env.ext.fetches == 1

    # replayed: refused
    replay = env.exchange(subject_token=token, subject_token_type=JWT_TYPE, audience=BILLING_API)
    assert error_of(replay) == "invalid_request" and "already" in replay.json["error_description"]
    # a token without jti is single use too (by its hash)
    no_jti = env.ext.sign(ac3_claims(jti=None))
    assert env.exchange(subject_token=no_jti, subject_token_type=JWT_TYPE, audience=LINES_API).status_code == 200
    assert error_of(env.exchange(subject_token=no_jti, subject_token_type=JWT_TYPE,
                                 audience=LINES_API)) == "invalid_request"
    # an acr the issuer does not map is carried over as it is (never turned into one of ours)
    unmapped = env.ext.sign(ac3_claims(acr="urn:ac3:loa:1"))
    response = env.exchange(subject_token=unmapped, subject_token_type=JWT_TYPE, audience=LINES_API)
    assert env.claims(response.json["access_token"]).claims["acr"] == "urn:ac3:loa:1"
    assert env.ext.fetches == 1  # the cached JWKS served every token


def test_external_token_for_an_associated_sim(env):
    with env.app.app_context():
        customer_id = db.session.query(Line).filter_by(msisdn=LINE).one().customer_id
        line = Line(msisdn=SECOND_SIM, customer_id=customer_id, sim_type="voice", status="active")
        db.session.add(line)
        db.session.flush()
        db.session.add(AccountLine(account_id=env.account_id, line_id=line.id, slot=2))
        db.session.commit()
    response = env.exchange(subject_token=env.ext.sign(ac3_claims(phone_number=SECOND_SIM)),
                            subject_token_type=JWT_TYPE, audience=LINES_API)
    assert response.status_code == 200, response.text
    assert env.claims(response.json["access_token"]).claims["sub"] == env.sub
    # the same SIM suspended in the directory: no longer a way in
    with env.app.app_context():
        db.session.query(Line).filter_by(msisdn=SECOND_SIM).one().status = "suspended"
        db.session.commit()
    assert error_of(env.exchange(subject_token=env.ext.sign(ac3_claims(phone_number=SECOND_SIM)),
                                 subject_token_type=JWT_TYPE, audience=LINES_API)) == "invalid_request"


def test_external_token_refusals(env):
    now = int(time.time())
    stranger = ECKey.generate_key("P-256", parameters={"kid": env.ext.kid})
    secret = OctKey.generate_key(256)
    cases = [
        (env.ext.sign(ac3_claims(phone_number_verified=False)), "verified phone_number"),
        (env.ext.sign(ac3_claims(phone_number_verified="true")), "verified phone_number"),
        (env.ext.sign(ac3_claims(phone_number="+393930000999")), "no active account"),
        (env.ext.sign(ac3_claims(phone_number=None)), "verified phone_number"),
        (env.ext.sign(ac3_claims(aud="someone-else")), "audience"),
        (env.ext.sign(ac3_claims(exp=now - 120)), "expired"),
        (env.ext.sign(ac3_claims(exp=None)), "expired"),
        (env.ext.sign(ac3_claims(exp=now + 7200)), "longer"),
        (env.ext.sign(ac3_claims(nbf=now + 600)), "future"),
        (env.ext.sign(ac3_claims(iat=now + 600)), "future"),
        (env.ext.sign(ac3_claims(iss="https://login.evil.example")), "issuer"),
        (env.ext.sign(ac3_claims(), key=stranger), "signature"),
        (jwt.encode({"alg": "HS256", "kid": env.ext.kid}, ac3_claims(), secret, algorithms=["HS256"]),
         "algorithm"),
        (env.ext.sign(ac3_claims(), kid="made-up"), "does not publish"),
    ]
    for token, words in cases:
        response = env.exchange(subject_token=token, subject_token_type=JWT_TYPE, audience=LINES_API)
        assert error_of(response) == "invalid_request", (words, response.json)
        assert words in response.json["error_description"], (words, response.json)
    # the alg "none": not a signed JWT we accept
    header = json.dumps({"alg": "none", "kid": env.ext.kid}).encode()
    import base64

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    unsigned = f"{b64(header)}.{b64(json.dumps(ac3_claims()).encode())}."
    assert error_of(env.exchange(subject_token=unsigned, subject_token_type=JWT_TYPE,
                                 audience=LINES_API)) == "invalid_request"
    # a trusted issuer the client's policy does not list
    env.set_policy(issuers=["self"])
    response = env.exchange(subject_token=env.ext.sign(ac3_claims()), subject_token_type=JWT_TYPE,
                            audience=LINES_API)
    assert error_of(response) == "invalid_request" and "issuer" in response.json["error_description"]


def test_external_jwks_is_refetched_on_a_new_kid_at_a_bounded_rate(env):
    first = env.exchange(subject_token=env.ext.sign(ac3_claims()), subject_token_type=JWT_TYPE,
                         audience=LINES_API)
    assert first.status_code == 200 and env.ext.fetches == 1
    old_key = env.ext.keys[0]
    env.ext.rotate()
    # at once: the unknown kid triggers no second fetch within jwks_refetch_interval (1 s), so it is refused
    early = env.exchange(subject_token=env.ext.sign(ac3_claims()), subject_token_type=JWT_TYPE, audience=LINES_API)
    assert error_of(early) == "invalid_request" and env.ext.fetches == 1
    time.sleep(1.1)
    rotated = env.exchange(subject_token=env.ext.sign(ac3_claims()), subject_token_type=JWT_TYPE,
                           audience=LINES_API)
    assert rotated.status_code == 200, rotated.text
    assert env.ext.fetches == 2
    # the withdrawn key no longer works, and a burst of made-up kids costs at most one fetch
    for index in range(10):
        token = env.ext.sign(ac3_claims(), kid=f"made-up-{index}") if index else \
            env.ext.sign(ac3_claims(), key=old_key)
        assert error_of(env.exchange(subject_token=token, subject_token_type=JWT_TYPE,
                                     audience=LINES_API)) == "invalid_request"
    assert env.ext.fetches <= 3


def test_external_sub_is_mapped_as_our_account_id(env):
    now = int(time.time())

    def partner(**overrides):
        claims = {"iss": PARTNER, "sub": env.sub, "aud": "selfcare", "iat": now, "exp": now + 120,
                  "jti": secrets.token_hex(8)}
        claims.update(overrides)
        return jwt.encode({"alg": "ES256", "kid": "partner-1"}, claims, env.partner_key, algorithms=["ES256"])

    response = env.exchange(subject_token=partner(), subject_token_type=IDT, audience=BILLING_API)
    assert response.status_code == 200, response.text
    claims = env.claims(response.json["access_token"]).claims
    assert claims["sub"] == env.sub and response.json["scope"] == "profile"  # the issuer's ceiling
    assert "acr" not in claims and "auth_time" not in claims  # the partner said nothing: nothing is invented
    assert error_of(env.exchange(subject_token=partner(sub="someone-unknown"), subject_token_type=IDT,
                                 audience=BILLING_API)) == "invalid_request"
    assert error_of(env.exchange(subject_token=partner(scope="profile"), subject_token_type=JWT_TYPE,
                                 audience=BILLING_API, scope="phone")) == "invalid_scope"


# delegation -----------------------------------------------------------------------------------------------------

def test_delegation_with_an_actor_token_and_may_act(env):
    env.set_policy(refresh=True)
    own = env.client.post("/token", data={"grant_type": "client_credentials"},
                          headers=basic(env.backend.client_id, env.backend.secret)).json["access_token"]
    subject = env.my3_tokens()
    response = env.exchange(subject_token=subject["access_token"], subject_token_type=AT, actor_token=own,
                            actor_token_type=AT, audience=LINES_API)
    assert response.status_code == 200, response.text
    claims = env.claims(response.json["access_token"]).claims
    assert claims["act"] == {"sub": "my3-backend"} and claims["sub"] == env.sub
    assert "refresh_token" not in response.json  # delegated: no refresh token even with --refresh
    [event] = env.events(signals.TOKEN_EXCHANGED)
    assert event.details["actor"] == "my3-backend"

    # the subject token says who may act for it
    allowed = env.ext.sign(ac3_claims(may_act={"sub": "my3-backend"}))
    response = env.exchange(subject_token=allowed, subject_token_type=JWT_TYPE, actor_token=own,
                            actor_token_type=AT, audience=LINES_API)
    assert response.status_code == 200, response.text
    assert env.claims(response.json["access_token"]).claims["act"] == {"sub": "my3-backend"}
    mismatch = env.ext.sign(ac3_claims(may_act={"sub": "another-backend"}))
    response = env.exchange(subject_token=mismatch, subject_token_type=JWT_TYPE, actor_token=own,
                            actor_token_type=AT, audience=LINES_API)
    assert error_of(response) == "invalid_request" and "may_act" in response.json["error_description"]
    wrong_issuer = env.ext.sign(ac3_claims(may_act={"sub": "my3-backend", "iss": AC3}))
    assert error_of(env.exchange(subject_token=wrong_issuer, subject_token_type=JWT_TYPE, actor_token=own,
                                 actor_token_type=AT, audience=LINES_API)) == "invalid_request"
    alone = env.ext.sign(ac3_claims(may_act={"sub": "my3-backend"}))
    assert error_of(env.exchange(subject_token=alone, subject_token_type=JWT_TYPE,
                                 audience=LINES_API)) == "invalid_request"

    # an external actor: act names its issuer
    actor = env.ext.sign(ac3_claims(sub="ac3-operator-1", phone_number=None))
    response = env.exchange(subject_token=env.my3_tokens()["access_token"], subject_token_type=AT,
                            actor_token=actor, actor_token_type=JWT_TYPE, audience=LINES_API)
    assert response.status_code == 200, response.text
    assert env.claims(response.json["access_token"]).claims["act"] == {"sub": "ac3-operator-1", "iss": AC3}

    # a delegated token exchanged again keeps its actor; with a new actor the chain nests
    delegated = env.exchange(subject_token=env.my3_tokens()["access_token"], subject_token_type=AT,
                             actor_token=own, actor_token_type=AT, audience=LINES_API).json["access_token"]
    again = env.exchange(subject_token=delegated, subject_token_type=AT, audience=BILLING_API)
    assert env.claims(again.json["access_token"]).claims["act"] == {"sub": "my3-backend"}
    nested = env.exchange(subject_token=delegated, subject_token_type=AT, actor_token=actor,
                          actor_token_type=JWT_TYPE, audience=BILLING_API)
    assert env.claims(nested.json["access_token"]).claims["act"] == {
        "sub": "ac3-operator-1", "iss": AC3, "act": {"sub": "my3-backend"}}


def test_actor_token_refusals(env):
    subject = env.my3_tokens()["access_token"]
    base = {"subject_token": subject, "subject_token_type": AT, "audience": LINES_API}
    other_cc = env.client.post("/token", data={"grant_type": "client_credentials"},
                               headers=basic(env.other.client_id, env.other.secret))
    own = env.client.post("/token", data={"grant_type": "client_credentials"},
                          headers=basic(env.backend.client_id, env.backend.secret)).json["access_token"]
    cases = [
        ({"actor_token": own}, "Missing 'actor_token_type'"),
        ({"actor_token_type": AT}, "Missing 'actor_token'"),
        ({"actor_token": other_cc.json["access_token"], "actor_token_type": AT}, "not issued to this client"),
        ({"actor_token": own, "actor_token_type": IDT}, "may not present"),
        ({"actor_token": "garbage", "actor_token_type": AT}, "not a signed JWT"),
    ]
    for params, words in cases:
        response = env.exchange(**base, **params)
        assert error_of(response) == "invalid_request", (params, response.json)
        assert words in response.json["error_description"], (words, response.json)
    env.set_policy(actor_token_types=[])
    response = env.exchange(**base, actor_token=own, actor_token_type=AT)
    assert error_of(response) == "invalid_request" and "may not present" in response.json["error_description"]


# refresh tokens -------------------------------------------------------------------------------------------------

def test_refresh_tokens_only_when_the_policy_allows(env):
    subject = env.my3_tokens()
    response = env.exchange(subject_token=subject["access_token"], subject_token_type=AT, audience=LINES_API)
    assert "refresh_token" not in response.json
    env.set_policy(refresh=True)
    response = env.exchange(subject_token=subject["access_token"], subject_token_type=AT, audience=LINES_API,
                            scope="phone profile")
    assert response.status_code == 200 and response.json["refresh_token"]
    first = env.claims(response.json["access_token"]).claims

    refreshed = env.client.post("/token", data={"grant_type": "refresh_token",
                                                "refresh_token": response.json["refresh_token"], "scope": "phone"},
                                headers=basic(env.backend.client_id, env.backend.secret))
    assert refreshed.status_code == 200, refreshed.text
    assert "id_token" not in refreshed.json and refreshed.json["refresh_token"] != response.json["refresh_token"]
    claims = env.claims(refreshed.json["access_token"]).claims
    assert claims["aud"] == LINES_API and claims["scope"] == "phone" and claims["client_id"] == "my3-backend"
    assert claims["exp"] - claims["iat"] <= 300 and refreshed.json["expires_in"] <= 300
    for name in ("acr", "amr", "auth_time", "sid", "sub"):
        assert claims[name] == first[name], name
    assert env.row(claims["jti"]).grant_type == GRANT

    # the policy no longer allows refresh: the exchanged refresh token is refused
    env.set_policy(refresh=False)
    refused = env.client.post("/token", data={"grant_type": "refresh_token",
                                              "refresh_token": refreshed.json["refresh_token"]},
                              headers=basic(env.backend.client_id, env.backend.secret))
    assert error_of(refused) == "invalid_grant"
    # a policy refresh needs the client's refresh grant
    with env.app.app_context(), pytest.raises(exchange.PolicyError, match="refresh_token grant"):
        exchange.set_policy("selfcare-api", subject_token_types=["access_token"], issuers=["self"],
                            audiences=[LINES_API], scopes=["phone"], refresh=True)


# operators' CLI and configuration -------------------------------------------------------------------------------

def _cli(app, *args):
    return app.test_cli_runner().invoke(args=["idp", "clients", *args])


def test_cli_sets_shows_and_clears_the_policy(env):
    result = _cli(env.app, "exchange-policy", "portal-x", "--subject-token-type", "access_token",
                  "--subject-token-type", JWT_TYPE, "--issuer", "self", "--issuer", AC3,
                  "--audience", LINES_API, "--scope", "phone lines", "--refresh")
    assert result.exit_code == 0, result.output
    shown = json.loads(_cli(env.app, "show", "portal-x").output)
    assert shown["token_exchange"] == {
        "subject_token_types": [AT, JWT_TYPE], "issuers": ["self", AC3], "audiences": [LINES_API],
        "scopes": ["phone", "lines"], "actor_token_types": [], "subject_clients": [], "refresh": True}
    assert GRANT in shown["grant_types"]
    subject = Journey(env.app.test_client(), env.other).tokens()
    response = env.exchange(rp=env.other, subject_token=subject["access_token"], subject_token_type=AT,
                            scope="phone")
    assert response.status_code == 200 and response.json["refresh_token"]
    [change] = env.events(signals.EXCHANGE_POLICY_CHANGED)[-1:]
    assert change.client_id == "portal-x" and change.details["cleared"] is False

    for args, words in [
        (["my3-backend-x", "--subject-token-type", "jwt", "--issuer", "self", "--audience", "a", "--scope", "phone"],
         "no client"),
        ([env.my3.client_id, "--subject-token-type", "jwt", "--issuer", "self", "--audience", "a", "--scope",
          "phone"], "public client"),
        (["portal-x", "--subject-token-type", "saml2", "--issuer", "self", "--audience", "a", "--scope", "phone"],
         "subject-token-type"),
        (["portal-x", "--subject-token-type", "jwt", "--issuer", "https://unknown.example", "--audience", "a",
          "--scope", "phone"], "neither self"),
        (["portal-x", "--subject-token-type", "jwt", "--issuer", "self", "--scope", "phone"], "--audience"),
        (["portal-x", "--subject-token-type", "jwt", "--issuer", "self", "--audience", "a", "--scope", "openid"],
         "openid"),
        (["portal-x", "--subject-token-type", "jwt", "--issuer", "self", "--audience", "a"], "--scope"),
        (["portal-x", "--issuer", "self", "--audience", "a", "--scope", "phone"], "--subject-token-type"),
        (["portal-x", "--subject-token-type", "jwt", "--issuer", "self", "--audience", "a", "--scope", "phone",
          "--subject-client", "nobody"], "no client"),
        (["selfcare-api", "--subject-token-type", "jwt", "--issuer", "self", "--audience", "a", "--scope",
          "phone", "--refresh"], "refresh_token grant"),
    ]:
        result = _cli(env.app, "exchange-policy", *args)
        assert result.exit_code != 0 and words in result.output, (args, result.output)

    cleared = _cli(env.app, "exchange-policy", "portal-x", "--clear")
    assert cleared.exit_code == 0, cleared.output
    shown = json.loads(_cli(env.app, "show", "portal-x").output)
    assert "token_exchange" not in shown and GRANT not in shown["grant_types"]
    response = env.exchange(rp=env.other, subject_token=subject["access_token"], subject_token_type=AT)
    assert error_of(response) == "unauthorized_client"


@pytest.mark.parametrize("overrides,words", [
    ({"EXCHANGE_TOKEN_TTL": 0}, "EXCHANGE_TOKEN_TTL"),
    ({"EXCHANGE_TOKEN_TTL": 3600}, "EXCHANGE_TOKEN_TTL"),
    ({"EXCHANGE_TRUSTED_ISSUERS": {"issuer": AC3}}, "JSON list"),
    ({"EXCHANGE_TRUSTED_ISSUERS": [{"issuer": AC3, "audience": "a", "subject_claim": "sub"}]}, "exactly one"),
    ({"EXCHANGE_TRUSTED_ISSUERS": [{"issuer": AC3, "jwks_uri": "http://idp.example/jwks", "audience": "a",
                                    "subject_claim": "sub"}]}, "https"),
    ({"EXCHANGE_TRUSTED_ISSUERS": [{"issuer": AC3, "jwks_uri": "https://ac3.example/jwks",
                                    "subject_claim": "sub"}]}, "audience"),
    ({"EXCHANGE_TRUSTED_ISSUERS": [{"issuer": AC3, "jwks_uri": "https://ac3.example/jwks", "audience": "a",
                                    "subject_claim": "email"}]}, "subject_claim"),
    ({"EXCHANGE_TRUSTED_ISSUERS": [{"issuer": AC3, "jwks_uri": "https://ac3.example/jwks", "audience": "a",
                                    "subject_claim": "sub", "algorithms": ["HS256"]}]}, "algorithms"),
    ({"EXCHANGE_TRUSTED_ISSUERS": [{"issuer": AC3, "jwks_uri": "https://ac3.example/jwks", "audience": "a",
                                    "subject_claim": "sub", "audiance": "typo"}]}, "unknown keys"),
    ({"EXCHANGE_TRUSTED_ISSUERS": [{"issuer": "http://127.0.0.1:5000", "jwks": {"keys": []}, "audience": "a",
                                    "subject_claim": "sub"}]}, "own tokens"),
])
def test_configuration_is_checked(overrides, words):
    settings = dict(idp_config.DEFAULTS, **overrides)
    with pytest.raises(idp_config.ConfigError, match=words):
        idp_config.validate(settings)


def test_loopback_jwks_uri_is_refused_in_production():
    settings = dict(idp_config.DEFAULTS, DEPLOYMENT="production", EXCHANGE_TRUSTED_ISSUERS=[
        {"issuer": AC3, "jwks_uri": "http://127.0.0.1:8080/jwks", "audience": "a", "subject_claim": "sub"}])
    with pytest.raises(idp_config.ConfigError, match="https in production"):
        idp_config.validate(settings)


# an independent client library performs the exchange ------------------------------------------------------------

def _node(config: dict) -> dict:
    node = shutil.which("node")
    assert node, "node is not installed: the openid-client interoperability test needs Node.js (>= 20)"
    assert (NODE_DIR / "node_modules" / "openid-client").is_dir(), \
        "tests/oidc_client/node_modules is missing: run `npm ci` in tests/oidc_client (scripts/test does)"
    done = subprocess.run([node, str(NODE_DIR / "exchange.mjs"), json.dumps(config)], cwd=NODE_DIR, text=True,
                          capture_output=True, timeout=60, env={**os.environ, "NODE_NO_WARNINGS": "1"})
    lines = done.stdout.strip().splitlines()
    assert lines, f"exchange.mjs printed nothing (exit {done.returncode}): {done.stderr}"
    result = json.loads(lines[-1])
    assert done.returncode == 0 and result.get("ok"), result
    return result


def test_openid_client_performs_the_exchange_with_private_key_jwt(make_app, ext, partner_key):
    with live(make_app, ext, partner_key) as (server, env):
        key = ECKey.generate_key("P-256", parameters={"kid": "backend-key-1", "alg": "ES256", "use": "sig"})
        signed = env.factory.rp(name="My3 backend (keys)", client_id="my3-backend-pkjwt", redirect_uri=None,
                                grant_types=("client_credentials",), auth_method="private_key_jwt",
                                jwks={"keys": [key.as_dict(private=False)]})
        env.set_policy(rp=signed)
        subject = env.my3_tokens()
        external = ext.sign(ac3_claims())
        result = _node({
            "issuer": server.url, "client_id": signed.client_id, "private_jwk": key.as_dict(private=True),
            "actor_from_client_credentials": True,
            "requests": [
                {"label": "own", "parameters": {"subject_token": subject["access_token"],
                                                "subject_token_type": AT, "audience": LINES_API,
                                                "scope": "phone"}},
                {"label": "external", "parameters": {"subject_token": external, "subject_token_type": JWT_TYPE,
                                                     "resource": LINES_API}},
                {"label": "delegated", "with_actor": True,
                 "parameters": {"subject_token": subject["access_token"], "subject_token_type": AT,
                                "audience": BILLING_API}},
                {"label": "bad-target", "parameters": {"subject_token": subject["access_token"],
                                                       "subject_token_type": AT,
                                                       "audience": "https://elsewhere.example"}},
                {"label": "replay", "parameters": {"subject_token": external, "subject_token_type": JWT_TYPE,
                                                   "resource": LINES_API}},
                {"label": "too-wide", "parameters": {"subject_token": subject["access_token"],
                                                     "subject_token_type": AT, "audience": LINES_API,
                                                     "scope": "phone email"}},
            ],
        })
        assert result["grant_advertised"] is True and result["token_endpoint"] == server.url + "/token"
        own, external_result, delegated, bad_target, replay, too_wide = result["results"]
        for item in (own, external_result, delegated):
            assert item["ok"] is True, item
            assert item["response"]["issued_token_type"] == AT and item["response"]["token_type"] == "bearer"
            assert 0 < item["response"]["expires_in_helper"] <= 300 and item["response"]["refresh_token"] is None
        own_claims = env.claims(own["response"]["access_token"]).claims
        assert own_claims["aud"] == LINES_API and own_claims["client_id"] == signed.client_id
        assert own_claims["sub"] == env.sub and own["response"]["scope"] == "phone"
        assert env.claims(external_result["response"]["access_token"]).claims["sub"] == env.sub
        delegated_claims = env.claims(delegated["response"]["access_token"]).claims
        assert delegated_claims["act"] == {"sub": signed.client_id} and delegated_claims["aud"] == BILLING_API
        assert (bad_target["ok"], bad_target["oauth_error"], bad_target["status"]) == (False, "invalid_target", 400)
        assert (replay["ok"], replay["oauth_error"]) == (False, "invalid_request")
        assert (too_wide["ok"], too_wide["oauth_error"]) == (False, "invalid_scope")


# the example Selfcare API ---------------------------------------------------------------------------------------

def test_example_api_accepts_the_exchanged_token_and_refuses_the_original(make_app, ext, partner_key):
    with live(make_app, ext, partner_key) as (server, env):
        _example_api_journey(server, env)


def _example_api_journey(live_server, env):
    app = env.app
    subject = env.my3_tokens(scope="openid profile phone")
    exchanged = env.exchange(subject_token=subject["access_token"], subject_token_type=AT, audience=LINES_API,
                             scope="profile phone").json["access_token"]
    billing = env.exchange(subject_token=subject["access_token"], subject_token_type=AT,
                           audience=BILLING_API).json["access_token"]

    jwt_api = selfcare_api.create_app({"ISSUER": live_server.url, "AUDIENCE": LINES_API}).test_client()

    def call(api, token, path="/v1/me"):
        headers = {"Authorization": "Bearer " + token} if token else {}
        return api.get(path, headers=headers)

    accepted = call(jwt_api, exchanged)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json["token"]["sub"] == env.sub and accepted.json["token"]["client_id"] == "my3-backend"
    assert accepted.json["token"]["acr"] == ACR_PASSWORD
    original = call(jwt_api, subject["access_token"])  # aud is the IdP: not meant for this API
    assert original.status_code == 401 and original.json["error"] == "invalid_token"
    assert 'error="invalid_token"' in original.headers["WWW-Authenticate"]
    assert call(jwt_api, billing).status_code == 401  # another API's token
    assert call(jwt_api, subject["id_token"]).status_code == 401  # not an access token
    scope = call(jwt_api, exchanged, "/v1/lines")  # needs lines; the token has profile phone
    assert scope.status_code == 403 and scope.json["error"] == "insufficient_scope"
    missing = call(jwt_api, None)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == 'Bearer realm="selfcare-api"'
    with app.app_context():  # an exchanged token past its exp (signed by the IdP's real key)
        claims = dict(env.claims(exchanged).claims, exp=int(time.time()) - 120)
        expired = tokens.sign(claims, "ES256", "at+jwt")
    assert call(jwt_api, expired).status_code == 401
    assert jwt_api.application.extensions["selfcare_api.idp"].jwks_fetches == 1

    # introspection mode sees revocation at once; the JWT mode cannot (the token lives a few minutes)
    api_client = env.api
    introspecting = selfcare_api.create_app({"ISSUER": live_server.url, "AUDIENCE": LINES_API,
                                             "MODE": "introspection", "CLIENT_ID": api_client.client_id,
                                             "CLIENT_SECRET": api_client.secret}).test_client()
    assert call(introspecting, exchanged).status_code == 200
    assert call(introspecting, subject["access_token"]).status_code == 401
    assert call(introspecting, billing).status_code == 401
    assert call(introspecting, exchanged, "/v1/lines").status_code == 403
    revoked = env.client.post("/revoke", data={"token": exchanged},
                              headers=basic(env.backend.client_id, env.backend.secret))
    assert revoked.status_code == 200
    assert call(introspecting, exchanged).status_code == 401
    assert call(jwt_api, exchanged).status_code == 200


def test_example_api_refetches_rotated_keys_at_a_bounded_rate(ext):
    """The example's JWKS cache against a real JWKS server: refetch on an unknown kid, rate-limited."""
    api = selfcare_api.create_app({"ISSUER": AC3, "AUDIENCE": LINES_API, "JWKS_URI": ext.jwks_uri,
                                   "JWKS_REFETCH_INTERVAL": 1}).test_client()

    def token(kid: str | None = None, typ: str = "at+jwt"):
        now = int(time.time())
        claims = {"iss": AC3, "sub": "someone", "aud": LINES_API, "client_id": "c", "iat": now, "exp": now + 60,
                  "scope": "profile", "jti": secrets.token_hex(6)}
        key = ext.keys[0]
        return jwt.encode({"alg": "ES256", "kid": kid or key.kid, "typ": typ}, claims, key, algorithms=["ES256"])

    def call(value):
        return api.get("/v1/me", headers={"Authorization": "Bearer " + value})

    assert call(token()).status_code == 200 and ext.fetches == 1
    assert call(token()).status_code == 200 and ext.fetches == 1  # cached
    ext.rotate()
    assert call(token()).status_code == 401 and ext.fetches == 1  # within the refetch interval
    time.sleep(1.1)
    assert call(token()).status_code == 200 and ext.fetches == 2
    for index in range(10):
        assert call(token(kid=f"bogus-{index}")).status_code == 401
    assert ext.fetches <= 3
    assert call(token(typ="JWT")).status_code == 401  # an ID token or any other JWT is not an access token


def _b64json(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("value, words", [
    ("a.b.c", "not a signed JWT"),  # segments that are not base64url JSON
    (_b64json({"alg": "ES256"}) + "." + _b64json({"iss": "x"}) + ".", "not a signed JWT"),  # no signature
    (_b64json({"alg": "ES256"}) + "." + _b64json({"iss": "x"}) + ".c2ln=", "not a signed JWT"),  # padding
    (_b64json({"alg": "ES256"}) + "=." + _b64json({"iss": "x"}) + ".c2ln", "not a signed JWT"),
    (_b64json(["alg"]) + "." + _b64json({"iss": "x"}) + ".c2ln", "not a signed JWT"),  # header not an object
    (_b64json({"typ": "JWT"}) + "." + _b64json({"iss": "x"}) + ".c2ln", "not a signed JWT"),  # no alg
    (_b64json({"alg": "ES256"}) + "." + _b64json(["iss"]) + ".c2ln", "has no issuer"),
    (_b64json({"alg": "ES256"}) + "." + _b64json({"iss": 7}) + ".c2ln", "has no issuer"),
    (_b64json({"alg": "ES256"}) + ".é" + _b64json({"iss": "x"}) + ".c2ln", "not a signed JWT"),
    ("eyJ." * 2 + "x", "not a signed JWT"),
])
def test_a_malformed_jwt_is_refused_before_any_lookup(value, words):
    """The routing peek at a subject or actor token (RFC 7515 §7.1 compact form): anything but base64url JSON
    objects with an ``alg`` and an ``iss`` is invalid_request, never an exception."""
    from authlib.oauth2.rfc6749 import InvalidRequestError

    from idp.oauth.exchange import _peek
    with pytest.raises(InvalidRequestError) as refused:
        _peek(value, "subject")
    assert words in refused.value.description


def test_the_peek_reads_header_and_claims_of_a_real_token(env):
    from idp.oauth.exchange import _peek
    access_token = env.my3_tokens()["access_token"]
    header, claims = _peek(access_token, "subject")
    assert header["alg"] == "ES256" and header["typ"] == "at+jwt" and claims["iss"] == env.app.config["ISSUER"]
