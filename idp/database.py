"""One-statement database work outside the ORM session, and dead pooled connections found without a round trip
(issue 8 point 5; shared/notes/performance.md).

The hot endpoints need one statement each: userinfo and introspection a lookup, the token endpoint an insert.
Through the ORM session each costs BEGIN, the statement and ROLLBACK or COMMIT — three round trips — plus the
session, connection and result machinery: ~230 µs of CPU per lookup here against ~75 µs for the statement alone.
``fetch`` and ``execute`` run one statement on a pooled connection in autocommit (one round trip; a single
statement is atomic on its own), compiled once per engine. Parameters go through their column types' bind
processors (JSON, dates); rows come back as the driver gives them (SQLite gives booleans as 0/1). Errors come out
as SQLAlchemy's (``OperationalError`` …), so the 503 handlers treat them as they treat the ORM's, and a connection
that failed by disconnecting leaves the pool.

Pool pre-ping (a ``SELECT 1`` round trip on every checkout) is replaced by a look at the socket: an idle
PostgreSQL connection is sent nothing, so a socket with something to read — the server's termination notice or
end of stream after a restart, a proxy's cut — belongs to a dead connection, and the pool replaces it before the
request uses it (``exc.DisconnectionError`` in a checkout listener: SQLAlchemy's documented pessimistic check).
"""
from __future__ import annotations

import select
import threading
from dataclasses import dataclass

from sqlalchemy import event, exc
from sqlalchemy.pool import Pool

from .extensions import db


# dead connections ------------------------------------------------------------------------------------------------

def connection_dropped(dbapi_connection, poller=None) -> bool:
    """Whether a pooled, idle PostgreSQL connection is known dead without asking the server (SQLite: never).

    ``poller``: a ``select.poll`` already watching the connection's socket (kept with the pooled connection)."""
    pgconn = getattr(dbapi_connection, "pgconn", None)
    if pgconn is None:
        return False
    if dbapi_connection.closed or dbapi_connection.broken:
        return True
    if poller is None:
        try:
            fd = pgconn.socket
        except Exception:  # psycopg: "the connection is lost"
            return True
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))  # readable (data, EOF) or in error while nothing was asked: dead


@event.listens_for(Pool, "checkout")
def _replace_dropped(dbapi_connection, connection_record, connection_proxy) -> None:
    watched = connection_record.info.get("idp.poller")
    if watched is None or watched[0] is not dbapi_connection:  # a new connection in this pool slot
        pgconn = getattr(dbapi_connection, "pgconn", None)
        poller = None
        if pgconn is not None and not dbapi_connection.closed:
            poller = select.poll()
            poller.register(pgconn.socket, select.POLLIN | select.POLLPRI)
        watched = connection_record.info["idp.poller"] = (dbapi_connection, poller)
    if connection_dropped(dbapi_connection, watched[1]):
        raise exc.DisconnectionError("the database closed this pooled connection")


# one statement in autocommit --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Compiled:
    sql: str
    order: tuple[str, ...] | None  # parameter names in order, for positional parameter styles (SQLite)
    constants: dict  # values written in the statement itself (``status == "active"``)
    processors: tuple  # (name, the type's bind processor) where the dialect needs one (JSON, DateTime…)


_compiled: dict[tuple[int, str], _Compiled] = {}
_compiled_lock = threading.Lock()


def _compile(statement, dialect) -> _Compiled:
    """The statement compiled for this dialect, once. Statements are module-level constants, so ``id`` identifies
    them for the process's life."""
    key = (id(statement), dialect.name)
    found = _compiled.get(key)
    if found is None:
        compiled = statement.compile(dialect=dialect)
        processors = tuple((name, processor) for name, bind in compiled.binds.items()
                           if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None)
        found = _Compiled(str(compiled), tuple(compiled.positiontup) if compiled.positional else None,
                          {name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required},
                          processors)
        with _compiled_lock:
            _compiled[key] = found
    return found


def _arguments(compiled: _Compiled, params: dict):
    values = {**compiled.constants, **params} if compiled.constants else dict(params)
    for name, processor in compiled.processors:
        if values.get(name) is not None:
            values[name] = processor(values[name])
    return tuple(values[name] for name in compiled.order) if compiled.order is not None else values


def _run(statement, params: dict, rows: bool):
    engine = db.engine
    dialect = engine.dialect
    compiled = _compile(statement, dialect)
    sql, args = compiled.sql, _arguments(compiled, params)
    dbapi_error = dialect.loaded_dbapi.Error
    try:
        connection = engine.raw_connection()
    except dbapi_error as error:
        raise exc.DBAPIError.instance(None, None, error, dbapi_error) from error
    driver = connection.dbapi_connection
    psycopg = hasattr(driver, "pgconn")  # its autocommit is a flag: toggled directly, ~10 µs cheaper
    try:
        if psycopg:
            driver.autocommit = True
        else:
            dialect.set_isolation_level(driver, "AUTOCOMMIT")
        cursor = connection.cursor()
        try:
            cursor.execute(sql, args)
            return cursor.fetchall() if rows else cursor.rowcount
        finally:
            cursor.close()
    except dbapi_error as error:
        gone = dialect.is_disconnect(error, connection.dbapi_connection, None)
        if gone:
            connection.invalidate(error)
        raise exc.DBAPIError.instance(sql, args, error, dbapi_error, connection_invalidated=gone) from error
    finally:
        if connection.dbapi_connection is not None:
            try:
                if psycopg:
                    connection.dbapi_connection.autocommit = False
                else:
                    dialect.reset_isolation_level(connection.dbapi_connection)
            except dbapi_error:
                connection.invalidate()
        connection.close()


def fetch(statement, params: dict) -> list[tuple]:
    """Run a SELECT on its own, in autocommit: one round trip. Rows as tuples.

    A connection that dies between its checkout and the statement is invalidated and the read tried once more on
    a new one (a read is safe to repeat; a write is not, so ``execute`` never retries)."""
    try:
        return _run(statement, params, rows=True)
    except exc.DBAPIError as error:
        if not error.connection_invalidated:
            raise
    return _run(statement, params, rows=True)


def execute(statement, params: dict, *, beside_session: bool = False) -> int:
    """Run one INSERT/UPDATE/DELETE on its own, in autocommit (atomic by itself): one round trip. Rows affected.

    Work the ORM session has in progress is committed first: a request writes through the session and through
    here one after the other, never interleaved in one transaction (on SQLite this connection would otherwise
    wait behind the session's own lock). ``beside_session`` leaves that work pending instead, for a record that
    must stand whatever becomes of it (the audit log)."""
    if not beside_session and db.session.registry.has():
        session = db.session()
        if session.in_transaction():
            session.commit()
    return _run(statement, params, rows=False)
