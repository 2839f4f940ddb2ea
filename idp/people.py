"""People as tokens and claims see them (SPEC §4 "Claims"): an account with its customer and its SIMs, read in one
statement without the ORM (issue 8: the token endpoint and userinfo read a person on every request).

``Person`` has the attributes of ``models.Account`` that ``oauth.scopes.account_claims`` and the grants read, so
either can stand for the other there. The columns and joins live here once; ``oauth.tokens`` reads a person
together with a token in the same statement (``COLUMNS``, ``joined_to``, ``from_rows``).
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, bindparam, select

from . import database
from .models import Account, AccountLine, Customer, Line

_accounts, _customers = Account.__table__, Customer.__table__
_links, _lines = AccountLine.__table__, Line.__table__


@dataclass(frozen=True, slots=True)
class Holder:
    """The account a token was issued to, without its claims: who it is and whether it may still get tokens (what
    token exchange reads of a subject token's person)."""
    id: int
    public_id: str
    username: str  # the registered line, E.164
    status: str

    @property
    def is_active(self) -> bool:
        return self.status == "active"

    def get_user_id(self) -> str:  # Authlib's user interface, as Account's
        return self.public_id


@dataclass(frozen=True, slots=True)
class Person(Holder):
    """A holder with what its claims are made of: e-mail, role, customer and SIMs."""
    email: str | None
    email_verified: bool
    role: str
    customer_code: str
    customer_name: str
    line_numbers: tuple[str, ...]  # the associated SIMs, by slot


HOLDER_COLUMNS = (_accounts.c.id, _accounts.c.public_id, _accounts.c.username, _accounts.c.status)

COLUMNS = (*HOLDER_COLUMNS, _accounts.c.email, _accounts.c.email_verified, _accounts.c.role, _customers.c.code,
           _customers.c.name, _lines.c.msisdn)  # ``Person``'s fields in order, then one SIM per row


def joined_to(selectable, account_id_column):
    """``selectable`` joined (outer) to the account ``account_id_column`` names, its customer and its SIMs: one row
    per SIM, ordered by ``ORDER_BY``."""
    return (selectable.outerjoin(_accounts, _accounts.c.id == account_id_column)
            .outerjoin(_customers, _customers.c.id == _accounts.c.customer_id)
            .outerjoin(_links, _links.c.account_id == _accounts.c.id)
            .outerjoin(_lines, _lines.c.id == _links.c.line_id))


ORDER_BY = _links.c.slot


def from_rows(rows, offset: int = 0) -> Person | None:
    """The person in ``rows`` (``COLUMNS`` from ``offset``), or None when the outer join found no account."""
    first = rows[0]
    if first[offset] is None:
        return None
    id_, public_id, username, status, email, verified, role, code, name = first[offset:offset + 9]
    return Person(id_, public_id, username, status, email, bool(verified), role, code, name,
                  tuple(row[offset + 9] for row in rows if row[offset + 9] is not None))


def _by_id():
    return (select(*COLUMNS)
            .select_from(_accounts.join(_customers, _customers.c.id == _accounts.c.customer_id)
                         .outerjoin(_links, _links.c.account_id == _accounts.c.id)
                         .outerjoin(_lines, _lines.c.id == _links.c.line_id))
            .where(_accounts.c.id == bindparam("account_id")).order_by(ORDER_BY))


def _by_network_line():
    """The employee account a line is associated with, both active: what network autologin may log in."""
    matched_link, matched_line = _links.alias("matched_link"), _lines.alias("matched_line")
    return (select(*COLUMNS)
            .select_from(_accounts.join(_customers, _customers.c.id == _accounts.c.customer_id)
                         .join(matched_link, matched_link.c.account_id == _accounts.c.id)
                         .join(matched_line, and_(matched_line.c.id == matched_link.c.line_id,
                                                  matched_line.c.msisdn == bindparam("msisdn"),
                                                  matched_line.c.status == "active"))
                         .outerjoin(_links, _links.c.account_id == _accounts.c.id)
                         .outerjoin(_lines, _lines.c.id == _links.c.line_id))
            .where(_accounts.c.status == "active", _accounts.c.role == "employee").order_by(ORDER_BY))


_PERSON_BY_ID = _by_id()
_PERSON_BY_NETWORK_LINE = _by_network_line()


def active(account_id: int) -> Person | None:
    """The active account with this id (a grant issues to it), or None."""
    rows = database.fetch(_PERSON_BY_ID, {"account_id": account_id})
    person = from_rows(rows) if rows else None
    return person if person is not None and person.is_active else None


def eligible_for_network(line: str) -> Person | None:
    """The active employee whose account the active ``line`` is associated with, or None (one query either way)."""
    rows = database.fetch(_PERSON_BY_NETWORK_LINE, {"msisdn": line})
    return from_rows(rows) if rows else None
