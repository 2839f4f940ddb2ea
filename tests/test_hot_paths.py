"""Hot paths stay lean (issue 8 point 5): work counted, not timed. A change that adds a database round trip to the
token, userinfo or introspection endpoint (a statement, a BEGIN/COMMIT/ROLLBACK, a pool ping), re-parses keys or
clients per request, or puts discovery/JWKS back behind Flask makes one of these fail."""
import tempfile

import pytest
from sqlalchemy import event
from sqlalchemy.pool import Pool

from idp.extensions import db

from .helpers import Journey, basic


class RoundTrips:
    """What reaches the database inside the block, counted at the driver, so nothing escapes: every statement,
    transaction control and pool ping. PostgreSQL: libpq's protocol trace, one round trip per ReadyForQuery,
    named by the server's command tag ("SELECT", "INSERT", "BEGIN", "COMMIT"…; "PREPARE" for psycopg's one-time
    preparation of a statement on a connection, not counted). SQLite: the connection's statement trace, without
    PRAGMAs (SQLAlchemy's isolation-level reset) and the BEGIN IMMEDIATE/COMMIT around a one-statement write
    (idp/database.py): all in-process, no round trip; the PostgreSQL run counts transaction control. ``trips`` is sorted: connections trace on their own,
    so their order across connections is not kept."""

    def __init__(self, app):
        self.app, self.traced, self.sqlite = app, [], []

    def __enter__(self):
        with self.app.app_context():
            self.engine = db.engine
        self.engine.dispose()  # every connection used inside is made, and traced, inside
        self.trace_file = tempfile.TemporaryFile("w+")
        event.listen(Pool, "checkout", self._trace)  # also idp/database.py's own, made without a pool
        return self

    def _trace(self, dbapi_connection, record, proxy):
        if any(c is dbapi_connection for c in self.traced):
            return
        self.traced.append(dbapi_connection)
        pgconn = getattr(dbapi_connection, "pgconn", None)
        if pgconn is None:
            dbapi_connection.set_trace_callback(self.sqlite.append)
            return
        from psycopg import pq
        pgconn.trace(self.trace_file.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def __exit__(self, *exc):
        event.remove(Pool, "checkout", self._trace)
        for connection in self.traced:
            pgconn = getattr(connection, "pgconn", None)
            if pgconn is None:
                connection.set_trace_callback(None)
            elif not connection.closed:
                pgconn.untrace()
        self.trace_file.seek(0)
        in_process = ("PRAGMA", "BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")
        self.trips = sorted(self._postgres(self.trace_file.read()) + [
            statement.split()[0].upper() for statement in self.sqlite if not statement.upper().startswith(in_process)])
        self.trace_file.close()

    @staticmethod
    def _postgres(trace: str) -> list[str]:
        """One entry per round trip: its statements' tags, joined with "+" when one trip carries several
        (pipeline mode: "BEGIN+INSERT+INSERT+COMMIT")."""
        trips, tags = [], []
        for line in trace.splitlines():
            fields = line.split("\t")
            if len(fields) < 3 or fields[0] != "B":
                continue
            if fields[2] == "CommandComplete":
                tags.append(fields[3].strip().strip('"').split()[0])
            elif fields[2] == "ReadyForQuery":
                if tags:
                    trips.append("+".join(tags))
                tags = []
        return trips


class RedisCommands:
    """The commands the app's store sends to Redis inside the block (a pipeline's commands as one entry)."""

    def __init__(self, app):
        self.app, self.commands = app, []

    def __enter__(self):
        self.client = self.app.extensions["idp.store"].redis
        send = self.client.execute_command

        def counted(*args, **options):
            self.commands.append(str(args[0]).upper())
            return send(*args, **options)
        self.client.execute_command = counted
        return self

    def __exit__(self, *exc):
        del self.client.execute_command


def _together(app, *statements: str) -> list[str]:
    """How ``database.execute_together`` shows: on PostgreSQL one statement (the others are its CTEs), tagged as
    the last; on SQLite the statements (in-process, under BEGIN IMMEDIATE)."""
    if app.config["DATABASE_URL"].startswith("postgresql"):
        return [statements[-1]]
    return list(statements)


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
    with RoundTrips(app) as database:
        response = client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"},
                               headers=basic(rp.client_id, rp.secret))
    assert response.status_code == 200
    assert database.trips == ["INSERT"]  # in autocommit: no BEGIN, no COMMIT, no ping


def test_userinfo_is_one_select(warm):
    app, client, _rp, tokens = warm
    with RoundTrips(app) as database:
        response = client.get("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]})
    assert response.status_code == 200
    assert database.trips == ["SELECT"]  # the token, its person and the person's lines, in autocommit


def test_introspection_is_one_select(warm):
    app, client, rp, tokens = warm
    with RoundTrips(app) as database:
        response = client.post("/introspect", data={"token": tokens["access_token"]},
                               headers=basic(rp.client_id, rp.secret))
    assert response.json["active"] is True
    assert database.trips == ["SELECT"]



def test_code_redemption_is_one_select_and_one_insert(warm):
    app, client, rp, _tokens = warm
    journey = Journey(client, rp)
    code = journey.login_and_get_code(scope="openid phone")["code"]
    with RoundTrips(app) as database, RedisCommands(app) as redis:
        response = journey.redeem(code)
    assert response.status_code == 200 and "id_token" in response.json
    assert database.trips == ["INSERT", "SELECT"]  # the person (with customer and SIMs), the new row
    # the code taken with its "used" mark (one script, by its SHA), then the family's revocation mark checked
    assert redis.commands == ["EVALSHA", "EXISTS"]


def test_refresh_is_a_lookup_and_one_rotation(warm):
    app, client, rp, tokens = warm
    with RoundTrips(app) as database:
        response = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                               headers=basic(rp.client_id, rp.secret))
    assert response.status_code == 200
    postgres = app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")
    # the token and its person; then, on PostgreSQL, "used" and the new pair in one statement (WITH … UPDATE …
    # INSERT), on SQLite the UPDATE then the INSERT
    assert database.trips == (["INSERT", "SELECT"] if postgres else ["INSERT", "SELECT", "UPDATE"])


def test_revoking_a_refresh_token_is_a_lookup_and_one_update(warm):
    app, client, rp, tokens = warm
    with RoundTrips(app) as database:
        response = client.post("/revoke", data={"token": tokens["refresh_token"]},
                               headers=basic(rp.client_id, rp.secret))
    assert response.status_code == 200
    assert database.trips == ["SELECT", "UPDATE"]  # the token; its whole family

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


def test_new_token_rows_have_exactly_the_columns_of_the_tokens_table():
    """tokens.NewToken (a plain object, for speed) must stay in step with the Token model."""
    import dataclasses

    from idp.models import Token
    from idp.oauth.tokens import NewToken
    columns = {column.key for column in Token.__table__.columns if column.key != "id"}
    assert {field.name for field in dataclasses.fields(NewToken)} == columns


def test_network_grant_is_one_lookup_two_inserts_and_one_redis_step(make_app):
    from .gateway import GATEWAY_SETTINGS, signed_headers
    from .helpers import LINE, Factory
    app = make_app(**GATEWAY_SETTINGS, CLIENT_CACHE_TTL=60)
    factory = Factory(app)
    factory.account()
    grant = "urn:selfcare:params:oauth:grant-type:network"
    my3 = factory.rp(name="My3", redirect_uri=None, auth_method="none", first_party=True, native_login=True,
                     grant_types=("authorization_code", "refresh_token", grant), scope="openid phone")
    client = app.test_client()
    data = {"grant_type": grant, "client_id": my3.client_id, "scope": "openid phone"}
    assert client.post("/token", data=data, headers=signed_headers(LINE)).status_code == 200  # warms the caches
    with RoundTrips(app) as database, RedisCommands(app) as redis:
        response = client.post("/token", data=data, headers=signed_headers(LINE))
    assert response.status_code == 200 and "id_token" in response.json
    # the eligible person; the token row and the login's audit event together (one round trip on PostgreSQL)
    assert database.trips == _together(app, "INSERT", "INSERT") + ["SELECT"]
    assert redis.commands == ["EVALSHA"]  # the gateway's nonce and both limits, in one step


def test_exchanging_our_access_token_is_one_lookup_and_two_inserts(warm):
    from idp.oauth import exchange
    app, client, rp, tokens = warm
    with app.app_context():
        exchange.set_policy(rp.client_id, subject_token_types=["access_token"], issuers=["self"],
                            audiences=["https://api.example"], scopes=["phone"])
    data = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": tokens["access_token"],
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token", "audience": "https://api.example",
            "scope": "phone"}
    assert client.post("/token", data=data, headers=basic(rp.client_id, rp.secret)).status_code == 200  # warms
    with RoundTrips(app) as database, RedisCommands(app) as redis:
        response = client.post("/token", data=data, headers=basic(rp.client_id, rp.secret))
    assert response.status_code == 200 and response.json["issued_token_type"].endswith("access_token")
    # the subject token and its person; the new row and the exchange's audit event together
    assert database.trips == _together(app, "INSERT", "INSERT") + ["SELECT"]
    assert redis.commands == []


def test_lua_steps_go_by_sha_on_the_login_path(make_app):
    """Every Lua step of a login (the flow's compare-and-set, the attempt counters, the lockout) is sent as
    EVALSHA: the script's text crosses the network once per process, not with every request."""
    from .helpers import LINE, PASSWORD, Factory, csrf_of
    app = make_app()
    factory = Factory(app)
    factory.account()
    rp = factory.rp()
    client = app.test_client()
    for password in ("sbagliata-1", PASSWORD):  # a wrong password (attempts counted), then the right one
        location = Journey(client, rp).authorize().headers["Location"]
        page = client.get(location)
        with RedisCommands(app) as redis:
            response = client.post(location, data={"csrf_token": csrf_of(page.text), "username": LINE,
                                                   "password": password})
        assert response.status_code in (200, 302)
        assert "EVALSHA" in redis.commands and "EVAL" not in redis.commands, redis.commands
