"""Accounts as the login sees them (SPEC §2, §3 point 2): lookups and the password check.

An unknown line, a disabled account and a wrong password take the same path and the same time: the password is
always verified against a real or a dummy argon2id hash before the answer is decided.
"""
from __future__ import annotations

from sqlalchemy import select

from . import msisdn, passwords
from .extensions import db
from .models import Account


def by_id(account_id: int) -> Account | None:
    return db.session.get(Account, account_id)


def active_by_id(account_id: int) -> Account | None:
    account = by_id(account_id)
    return account if account is not None and account.is_active else None


def by_username(line: str) -> Account | None:
    return db.session.scalar(select(Account).where(Account.username == line))


def check_password(username_text: str, password: str) -> Account | None:
    """Return the active account whose registered line and password match, else None (same time either way)."""
    line = msisdn.try_normalise(username_text)
    account = by_username(line) if line else None
    if account is None:
        passwords.dummy_verify(password)
        return None
    ok = passwords.verify_secret(account.password_hash, password)
    if not ok or not account.is_active:
        return None
    if passwords.needs_rehash(account.password_hash):
        account.password_hash = passwords.hash_secret(password)
        db.session.commit()
    return account
