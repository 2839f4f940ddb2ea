"""One-statement database work outside the ORM session, and dead pooled connections found without a round trip
(issue 8 point 5; shared/notes/performance.md).

The hot endpoints need one statement each: userinfo and introspection a lookup, the token endpoint an insert.
Through the ORM session each costs BEGIN, the statement and ROLLBACK or COMMIT — three round trips — plus the
session, connection and result machinery: ~230 µs of CPU per lookup here; a pooled connection switched to
autocommit still ~90 µs. ``fetch`` and ``execute`` run one statement in autocommit (one round trip; a single
statement is atomic on its own) on a PostgreSQL connection kept in autocommit outside the pool
(``_AutocommitConnections``: ~40 µs), compiled once per engine. Parameters go through their column types' bind
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
import weakref
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import bindparam, create_engine, event, exc
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.visitors import replacement_traverse
from sqlalchemy.pool import NullPool, Pool

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


class _AutocommitConnections:
    """Connections held in autocommit for one-statement work, outside SQLAlchemy's pool.

    Checking a connection out of the pool, toggling autocommit and resetting it on return cost ~35 µs per
    statement, a third of a userinfo request; here a connection is taken from a list, its socket looked at
    (``connection_dropped``) and put back. They are made by a second engine on the same URL and connect
    arguments, without a pool (``NullPool``): a request whose ORM session holds a pooled connection never waits on
    the pool for one of these (with every pooled connection held by sessions that wait would be a deadlock, seen
    with 20 concurrent refreshes). At most ``IDLE`` wait per worker; disposing the app's engine closes them."""
    IDLE = 8

    def __init__(self, engine, connect_args: dict, durable: bool = True):
        self.sqlite = engine.dialect.name == "sqlite"
        if self.sqlite:  # shared between threads, one at a time
            connect_args = {**connect_args, "check_same_thread": False}
        elif not durable:  # commits that do not wait for the WAL flush (``execute(durable=False)``)
            options = f"{connect_args.get('options', '')} -c synchronous_commit=off".strip()
            connect_args = {**connect_args, "options": options}
        self.maker = create_engine(engine.url, poolclass=NullPool, connect_args=connect_args)
        self._idle: list[tuple] = []
        self._lock = threading.Lock()
        event.listen(engine, "engine_disposed", lambda _engine: self.close_idle())

    def take(self) -> tuple:
        while True:
            with self._lock:
                held = self._idle.pop() if self._idle else None
            if held is None:
                return self._connect()
            if not connection_dropped(held[0], held[1]):
                return held
            _close(held)

    def put_back(self, held: tuple) -> None:
        if _usable(held[0]):
            with self._lock:
                if len(self._idle) < self.IDLE:
                    self._idle.append(held)
                    return
        _close(held)

    def close_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for held in idle:
            _close(held)

    def _connect(self) -> tuple:
        made = self.maker.raw_connection()
        made.detach()  # ours: NullPool would close it on return
        connection = made.dbapi_connection
        if self.sqlite:
            connection.isolation_level = None  # sqlite3's autocommit
            return connection, None, connection.cursor()
        connection.autocommit = True
        poller = select.poll()
        poller.register(connection.pgconn.socket, select.POLLIN | select.POLLPRI)
        return connection, poller, connection.cursor()


def _usable(connection) -> bool:
    return not (getattr(connection, "closed", False) or getattr(connection, "broken", False))


def _close(held: tuple) -> None:
    try:
        held[0].close()
    except Exception:  # already gone
        pass


_autocommit: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_autocommit_lock = threading.Lock()


def _connections(engine, durable: bool) -> _AutocommitConnections:
    """The engine's autocommit connections: durable ones (every commit waits for the WAL flush, PostgreSQL's
    default) and, made only when first asked for, ones whose commits do not wait (``synchronous_commit=off``).
    SQLite has one kind."""
    sets = _autocommit.get(engine)
    durable = durable or engine.dialect.name == "sqlite"
    found = sets.get(durable) if sets is not None else None
    if found is None:
        with _autocommit_lock:
            sets = _autocommit.setdefault(engine, {})
            found = sets.get(durable)
            if found is None:
                options = current_app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {}
                found = sets[durable] = _AutocommitConnections(engine, dict(options.get("connect_args", {})),
                                                               durable)
    return found


def _run(statement, params: dict, rows: bool, durable: bool = True):
    def one(cursor, sqlite: bool, dialect):
        compiled = _compile(statement, dialect)
        return _execute(cursor, compiled.sql, _arguments(compiled, params), rows, sqlite)
    return _on_connection(one, statement, durable)


def _on_connection(work, statement, durable: bool = True):
    """``work(cursor, sqlite, dialect)`` with the cursor of an autocommit connection (kept with it: making a
    psycopg cursor costs a third of a lookup); driver errors come out as SQLAlchemy's, and a connection that died
    leaves for good."""
    engine = db.engine
    dialect = engine.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    connections = _connections(engine, durable)
    try:
        held = connections.take()
    except dbapi_error as error:
        raise exc.DBAPIError.instance(None, None, error, dbapi_error) from error
    connection = held[0]
    try:
        result = work(held[2], connections.sqlite, dialect)
    except dbapi_error as error:
        gone = not _usable(connection) or dialect.is_disconnect(error, connection, None)
        if gone:
            _close(held)
        else:  # in autocommit a failed statement leaves nothing open; a new cursor, nothing of the old one
            try:
                connections.put_back((connection, held[1], connection.cursor()))
            except dbapi_error:
                _close(held)
        raise exc.DBAPIError.instance(str(statement), None, error, dbapi_error,
                                      connection_invalidated=gone) from error
    connections.put_back(held)
    return result


def execute_together(statements: list[tuple], *, durable: bool = True) -> None:
    """Several INSERT/UPDATE/DELETE, ``(statement, params)`` each, as one transaction: all of them or none. On
    PostgreSQL one statement, so one round trip and one commit: the others become data-modifying CTEs of the last
    (``_combined``, compiled once); on SQLite, which has no such CTEs, one after the other under the write lock
    (BEGIN IMMEDIATE … COMMIT). For writes that stand or fall together, such as a token and the audit event of its
    issue. Work the ORM session has in progress is committed first, as ``execute`` does; ``durable`` as there."""
    if len(statements) == 1:
        execute(statements[0][0], statements[0][1], durable=durable)
        return
    if db.engine.dialect.name == "postgresql":
        combined = _combined(tuple(statement for statement, _params in statements))
        params = dict(statements[-1][1])
        for index, (_statement, values) in enumerate(statements[:-1]):
            params.update({f"w{index}_{name}": value for name, value in values.items()})
        execute(combined, params, durable=durable)
        return
    _commit_session_work()

    def together(cursor, sqlite: bool, dialect):
        cursor.execute("BEGIN IMMEDIATE")
        try:
            for statement, params in statements:
                compiled = _compile(statement, dialect)
                cursor.execute(compiled.sql, _arguments(compiled, params))
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")
    _on_connection(together, statements[0][0])


_combinations: dict[tuple[int, ...], object] = {}


def _combined(statements: tuple):
    """The last statement with the others as CTEs ``w0``, ``w1``…, their parameters renamed ``w0_name``…: one
    statement PostgreSQL runs atomically. Kept per combination (statements are module-level constants)."""
    key = tuple(id(statement) for statement in statements)
    found = _combinations.get(key)
    if found is None:
        ctes = []
        for index, statement in enumerate(statements[:-1]):
            def rename(element, prefix=f"w{index}_"):
                if isinstance(element, BindParameter):
                    return bindparam(prefix + element.key, value=element.value, type_=element.type,
                                     required=element.required)
                return None
            ctes.append(replacement_traverse(statement, {}, rename).cte(f"w{index}"))
        found = _combinations[key] = statements[-1].add_cte(*ctes)
    return found


def _execute(cursor, sql: str, args, rows: bool, sqlite: bool):
    """One statement. On SQLite a write takes the write lock first (BEGIN IMMEDIATE): two autocommit writers that
    each read before writing could otherwise deadlock, which SQLite answers at once with "database is locked"
    instead of waiting its busy timeout."""
    if rows or not sqlite:
        cursor.execute(sql, args)
        return cursor.fetchall() if rows else cursor.rowcount
    cursor.execute("BEGIN IMMEDIATE")
    try:
        cursor.execute(sql, args)
        count = cursor.rowcount
    except BaseException:
        cursor.execute("ROLLBACK")
        raise
    cursor.execute("COMMIT")
    return count


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


def execute(statement, params: dict, *, beside_session: bool = False, durable: bool = True) -> int:
    """Run one INSERT/UPDATE/DELETE on its own, in autocommit (atomic by itself): one round trip. Rows affected.
    The statement gives every value: the models' Python-side defaults (``default=utcnow``…) do not run here.

    Work the ORM session has in progress is committed first: a request writes through the session and through
    here one after the other, never interleaved in one transaction (on SQLite this connection would otherwise
    wait behind the session's own lock). ``beside_session`` leaves that work pending instead, for a record that
    must stand whatever becomes of it (the audit log).

    ``durable=False`` (PostgreSQL): the commit does not wait for its WAL record to reach the disk
    (``synchronous_commit=off``, on connections of their own). It is visible to every other session at once,
    exactly as a durable commit; only a crash of the database server within its last ~0.6 s (three
    ``wal_writer_delay``) can lose it — so only for writes whose loss refuses something rather than grants it,
    such as a newly issued token (``tokens.save``). Never for a revocation, a claim or an account change."""
    if not beside_session:
        _commit_session_work()
    return _run(statement, params, rows=False, durable=durable)


def _commit_session_work() -> None:
    if db.session.registry.has():
        session = db.session()
        if session.in_transaction():
            session.commit()
