"""Accounts as the login sees them (SPEC §2, §3 point 2): lookups and the password check.

An unknown line, a disabled account and a wrong password take the same path and the same time: the password is
always verified against a real or a dummy argon2id hash before the answer is decided.
"""
from __future__ import annotations

from flask_babel import gettext as _
from sqlalchemy import select

from . import msisdn, passwords, registration, senders, sessions, signals
from .extensions import db
from .models import Account
from .oauth import tokens


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


def change_credentials(account: Account, password: str, question: str, answer: str, *, reason: str,
                       locale: str | None = None, keep_current_session: bool = False) -> None:
    """The one way a password changes (SPEC §3 points 2, 7, 8): new password and new security question.

    Every other session and every grant (refresh and access tokens) of the account ends; the person is told on
    their channel, except at the forced change of a temporary password, which they are doing right now.
    Sessions and grants end *before* the new password is saved: if Redis or the database fails in between, the
    account is at worst logged out with its old password, never on a new password with the old sessions alive.
    """
    sessions.end_all(account.id, keep_current=keep_current_session)
    tokens.revoke_account_tokens(account.id)
    registration.set_credentials(account, password, question, answer)
    signals.emit(signals.PASSWORD_CHANGED, account_id=account.id, line=account.username, via=reason)
    if reason == "first_login":
        return
    try:
        if account.otp_channel == "email" and account.email:
            senders.send_email(account.email, "password_changed", _("La tua password è stata cambiata"),
                               locale=locale, line=msisdn.mask(account.username))
        else:
            senders.send_sms(account.username, "password_changed", locale=locale)
    except senders.DeliveryFailed:
        signals.emit(signals.CODE_SEND_FAILED, "failed", account_id=account.id, purpose="password_changed_notice")
