"""Hot paths stay lean (issue 8 point 5): work counted, not timed. A change that adds a SQL statement to the token,
userinfo or introspection endpoint, re-parses keys or clients per request, or puts discovery/JWKS back behind
Flask makes one of these fail."""
import pytest
from sqlalchemy import event

from idp.extensions import db

from .helpers import Journey, basic


class StatementCounter:
    def __init__(self, app):
        self.app, self.statements = app, []

    def __enter__(self):
        with self.app.app_context():
            self.engine = db.engine
        event.listen(self.engine, "before_cursor_execute", self._count)
        return self

    def _count(self, conn, cursor, statement, *args):
        self.statements.append(statement.split()[0].upper())

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._count)


@pytest.fixture
def warm(make_app):
    app = make_app(CLIENT_CACHE_TTL=60)
    from .helpers import Factory
    factory = Factory(app)
    factory.account()
    rp = factory.rp(grant_types=("authorization_code", "refresh_token", "client_credentials"),
                    scope="openid profile phone", may_introspect=True)
    client = app.test_client()
    tokens = Journey(client, rp).tokens(scope="openid phone")
    client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"},
                headers=basic(rp.client_id, rp.secret))  # warms the client cache
    return app, client, rp, tokens


def test_client_credentials_is_one_insert(warm):
    app, client, rp, _tokens = warm
    with StatementCounter(app) as counter:
        response = client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"},
                               headers=basic(rp.client_id, rp.secret))
    assert response.status_code == 200
    assert counter.statements == ["INSERT"]


def test_userinfo_is_one_select(warm):
    app, client, _rp, tokens = warm
    with StatementCounter(app) as counter:
        response = client.get("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]})
    assert response.status_code == 200
    assert counter.statements == ["SELECT"]


def test_introspection_is_one_select(warm):
    app, client, rp, tokens = warm
    with StatementCounter(app) as counter:
        response = client.post("/introspect", data={"token": tokens["access_token"]},
                               headers=basic(rp.client_id, rp.secret))
    assert response.json["active"] is True
    assert counter.statements == ["SELECT"]


def test_keys_are_not_reimported_per_request(warm, monkeypatch):
    app, client, rp, _tokens = warm
    from joserfc.jwk import ECKey, RSAKey
    imports = []
    for cls in (ECKey, RSAKey):
        original = cls.import_key.__func__
        monkeypatch.setattr(cls, "import_key", classmethod(lambda c, *a, _o=original, **k: imports.append(c) or
                                                            _o(c, *a, **k)))
    for _ in range(5):
        client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"},
                    headers=basic(rp.client_id, rp.secret))
        client.get("/jwks.json")
    assert imports == []


def test_discovery_and_jwks_never_reach_flask(warm):
    app, client, _rp, _tokens = warm
    from flask import request_started
    calls = []

    def record(sender, **extra):
        calls.append(1)

    with request_started.connected_to(record, app):
        assert client.get("/.well-known/openid-configuration").status_code == 200
        assert client.get("/jwks.json").status_code == 200
        assert calls == []
        client.get("/healthz")
        assert calls == [1]  # the signal does fire for requests that reach Flask
