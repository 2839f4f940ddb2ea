"""One-statement work beside the ORM (idp/database.py, issue 8): it never waits on the session's pool."""
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select, text

from idp import database
from idp.extensions import db
from idp.models import Customer

from .conftest import DATABASE_URL

_COUNT_CUSTOMERS = select(func.count()).select_from(Customer.__table__)
_ADD_CUSTOMER = Customer.__table__.insert().values(code="DB-TEST", name="Prova",
                                                  updated_at=datetime(2026, 11, 25, tzinfo=timezone.utc))


@pytest.fixture
def one_connection_app(make_app):
    """An app whose pool holds a single connection, and times out quickly when it is taken."""
    options = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 2}
    options["connect_args"] = {"connect_timeout": 5} if DATABASE_URL else {"timeout": 30}
    return make_app(SQLALCHEMY_ENGINE_OPTIONS=options)


def test_a_statement_runs_while_the_session_holds_every_pooled_connection(one_connection_app):
    """A request whose session holds a pooled connection (a client looked up on a cold cache, say) and then needs
    a one-statement lookup: if that lookup waited on the same pool, concurrent requests would starve it for the
    pool's whole timeout (seen as a 30 s stall with 20 concurrent refreshes)."""
    app = one_connection_app
    with app.app_context():
        db.session.execute(text("SELECT 1"))  # the session now holds the pool's only connection
        assert database.fetch(_COUNT_CUSTOMERS, {})[0][0] >= 0
        db.session.rollback()
        assert database.execute(_ADD_CUSTOMER, {}) == 1  # (commits the session's work first: none here)
        assert database.fetch(_COUNT_CUSTOMERS, {})[0][0] >= 1


def test_statements_together_are_written_together_or_not_at_all(make_app):
    """``execute_together`` (a token and its audit event): all or nothing; after a failure the connection is back
    to idle and serves the next statement."""
    from sqlalchemy.exc import IntegrityError
    app = make_app()
    other = Customer.__table__.insert().values(code="DB-TEST-2", name="Altra",
                                               updated_at=datetime(2026, 11, 25, tzinfo=timezone.utc))
    with app.app_context():
        before = database.fetch(_COUNT_CUSTOMERS, {})[0][0]
        database.execute_together([(_ADD_CUSTOMER, {}), (other, {})])
        assert database.fetch(_COUNT_CUSTOMERS, {})[0][0] == before + 2
        third = Customer.__table__.insert().values(code="DB-TEST-3", name="Terza",
                                                   updated_at=datetime(2026, 11, 25, tzinfo=timezone.utc))
        with pytest.raises(IntegrityError):  # the second one repeats a unique code: the first is undone too
            database.execute_together([(third, {}), (_ADD_CUSTOMER, {})])
        assert database.fetch(_COUNT_CUSTOMERS, {})[0][0] == before + 2
        # the connection went back idle: the next statements run (no "current transaction is aborted")
        database.execute_together([(third, {})])
        assert database.fetch(_COUNT_CUSTOMERS, {})[0][0] == before + 3


@pytest.mark.skipif(not DATABASE_URL, reason="synchronous_commit is PostgreSQL's")
@pytest.mark.parametrize("durable_issue", [False, True])
def test_issued_tokens_do_not_wait_for_the_disk_but_revocations_do(make_app, monkeypatch, durable_issue):
    """A new token's INSERT commits with ``synchronous_commit=off`` (its loss in a crash refuses, never grants),
    unless ``DURABLE_TOKEN_ISSUE``; the revocation's UPDATE always waits for the WAL flush."""
    from .helpers import Factory, basic
    app = make_app(DURABLE_TOKEN_ISSUE=durable_issue)
    rp = Factory(app).rp(grant_types=("client_credentials",), scope="profile")
    seen = []
    execute = database._execute

    def traced(cursor, sql, args, rows, sqlite):
        setting = cursor.connection.execute("SHOW synchronous_commit").fetchone()[0]
        seen.append((sql.lstrip().split()[0].upper(), setting))
        return execute(cursor, sql, args, rows, sqlite)
    monkeypatch.setattr(database, "_execute", traced)
    client = app.test_client()
    issued = client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"},
                         headers=basic(rp.client_id, rp.secret))
    assert issued.status_code == 200
    assert ("INSERT", "on" if durable_issue else "off") in seen
    seen.clear()
    revoked = client.post("/revoke", data={"token": issued.json["access_token"]}, headers=basic(rp.client_id, rp.secret))
    assert revoked.status_code == 200
    assert [setting for statement, setting in seen if statement == "UPDATE"] == ["on"]
    assert all(setting == "on" for statement, setting in seen if statement != "SELECT")
    # the revocation is seen, and the token refused, by every connection at once
    introspected = client.post("/introspect", data={"token": issued.json["access_token"]},
                               headers=basic(rp.client_id, rp.secret))
    assert introspected.json == {"active": False}
