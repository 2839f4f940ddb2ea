"""The audit log (SPEC §5; issue 4 point 4): the one receiver of ``signals.security_event``.

Each event becomes an ``AuditEvent`` row written by one INSERT in autocommit on its own connection
(``database.execute(beside_session=True)``), so an event is recorded even when the request's own work is rolled
back, and recording never commits the request's pending changes.
Lines are stored masked; client address, user agent and a correlation id (the request's ``X-Request-ID`` when it
is well formed, otherwise a fresh one) come from the request. Details are filtered: no key that looks like a
secret ever reaches the table.
"""
from __future__ import annotations

import csv
import json
import re
import secrets
from contextlib import contextmanager
from datetime import datetime

from flask import current_app, g, has_app_context, has_request_context, request
from sqlalchemy import bindparam, select

from . import database, msisdn, signals
from .extensions import db
from .models import AuditEvent, utcnow

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")
_SECRET_WORDS = ("password", "secret", "code", "pin", "answer", "token", "otp")


def _environ() -> dict | None:
    """The WSGI environ of the request being answered: Flask's, or one answered before Flask (``idp.fastpaths``
    keeps it in ``g`` of its application context); None on the console."""
    if has_request_context():
        return request.environ
    return g.get("wsgi_environ") if has_app_context() else None


def correlation_id() -> str:
    environ = _environ()
    if environ is None:
        return "cli-" + secrets.token_hex(6)
    if "correlation_id" not in g:
        supplied = environ.get("HTTP_X_REQUEST_ID", "")
        g.correlation_id = supplied if _REQUEST_ID.match(supplied) else secrets.token_hex(12)
    return g.correlation_id


_SECRET_KEY = re.compile("|".join(_SECRET_WORDS), re.IGNORECASE)


def _safe(details: dict) -> dict:
    return {k: v for k, v in details.items() if not _SECRET_KEY.search(k)
            and isinstance(v, (str, int, float, bool, type(None)))}


_COLUMNS = tuple(column.key for column in AuditEvent.__table__.columns if column.key != "id")
_INSERT_EVENT = AuditEvent.__table__.insert().values({key: bindparam(key) for key in _COLUMNS})


def record(event: str, outcome: str, account_id=None, line=None, client_id=None, details=None) -> None:
    row = {"type": event, "occurred_at": utcnow(), "outcome": outcome, "account_id": account_id,
           "masked_line": msisdn.mask(line) if line else None, "client_id": client_id,
           "correlation_id": correlation_id(), "details": _safe(details or {}), "client_address": None,
           "user_agent": None}
    environ = _environ()
    if environ is not None:
        row["client_address"] = environ.get("REMOTE_ADDR")
        row["user_agent"] = environ.get("HTTP_USER_AGENT", "")[:300]
    collecting = g.get("audit_collected") if has_app_context() else None
    if collecting is not None:
        collecting.append((_INSERT_EVENT, row))
        return
    database.execute(_INSERT_EVENT, row, beside_session=True)  # one INSERT in autocommit, on its own connection


@contextmanager
def collected():
    """Inside the block, events are collected instead of written: ``(statement, row)`` pairs for the caller to
    write in the same transaction as what they record (``tokens.save(row, also=…)``: the token and the event of its
    issue stand or fall together, in one round trip)."""
    g.audit_collected = events = []
    try:
        yield events
    finally:
        g.pop("audit_collected", None)


def _receive(event, **kwargs):
    try:
        record(event, kwargs.get("outcome", "success"), kwargs.get("account_id"), kwargs.get("line"),
               kwargs.get("client_id"), kwargs.get("details"))
    except Exception:  # the audit log must never turn a security decision into a 500
        current_app.logger.exception("could not write audit event %s", event)


def init_app(app) -> None:
    if not getattr(signals.security_event, "_idp_audit_connected", False):
        signals.security_event.connect(_receive)
        signals.security_event._idp_audit_connected = True


def add_request_id_header(response):
    if has_request_context() and "correlation_id" in g:
        response.headers.setdefault("X-Request-ID", g.correlation_id)
    return response


def request_id_header() -> list[tuple[str, str]]:
    """For a response made before Flask: the header ``add_request_id_header`` adds when an event was recorded."""
    return [("X-Request-ID", g.correlation_id)] if "correlation_id" in g else []


# reading --------------------------------------------------------------------------------------------------------

def as_dict(row: AuditEvent) -> dict:
    return {"id": row.id, "type": row.type, "occurred_at": row.occurred_at.isoformat(), "outcome": row.outcome,
            "account_id": row.account_id, "masked_line": row.masked_line, "client_id": row.client_id,
            "client_address": row.client_address, "user_agent": row.user_agent,
            "correlation_id": row.correlation_id, "details": row.details or {}}


def latest(limit: int = 20) -> list[AuditEvent]:
    rows = db.session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit))
    return list(rows)[::-1]


def since(moment: datetime, after_id: int = 0):
    query = select(AuditEvent).where(AuditEvent.occurred_at >= moment, AuditEvent.id > after_id) \
        .order_by(AuditEvent.id)
    return db.session.scalars(query.execution_options(yield_per=500))


COLUMNS = ["id", "occurred_at", "type", "outcome", "account_id", "masked_line", "client_id", "client_address",
           "user_agent", "correlation_id", "details"]


def export(rows, fmt: str, out) -> int:
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
    for row in rows:
        data = as_dict(row)
        if fmt == "csv":
            data["details"] = json.dumps(data["details"], ensure_ascii=False)
            writer.writerow(data)
        else:
            out.write(json.dumps(data, ensure_ascii=False) + "\n")
        count += 1
    return count
