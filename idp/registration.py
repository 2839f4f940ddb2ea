"""Creating accounts and associating SIMs (SPEC §2, §3 points 4–6 and 9) — the domain side of the flows.

The database has the last word: ``accounts.username`` and ``account_lines.line_id`` are unique and an account has
slots 1 and 2 only, so two concurrent registrations of one line, or a third SIM, fail on a constraint even when
both requests passed the flow's checks.
"""
from __future__ import annotations

import secrets
import string
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from . import passwords
from .extensions import db
from .models import Account, AccountLine, Customer, Line

MAX_SIMS = 2


class RegistrationError(Exception):
    """The line cannot be registered (already registered, or not eligible)."""


class SimLimitReached(Exception):
    """The account already has two SIMs."""


class LineTaken(Exception):
    """The line belongs to an account already."""


def line_is_registered(number: str) -> bool:
    line_id = db.session.scalar(select(Line.id).where(Line.msisdn == number))
    if line_id is None:
        return False
    return db.session.scalar(select(AccountLine.id).where(AccountLine.line_id == line_id)) is not None \
        or db.session.scalar(select(Account.id).where(Account.username == number)) is not None


def temporary_password() -> str:
    """A readable temporary password that satisfies the policy (16 characters from an unambiguous alphabet)."""
    alphabet = "".join(ch for ch in string.ascii_letters + string.digits if ch not in "Il1O0o")
    return "-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(4))


def create_account(number: str, customer_code: str, role: str, email: str | None, otp_channel: str,
                   password: str, question: str | None = None, answer: str | None = None,
                   temporary: bool = False, email_verified: bool = False) -> Account:
    """Create the account with its registered line in slot 1, or raise RegistrationError."""
    line = db.session.scalar(select(Line).where(Line.msisdn == number))
    customer = db.session.scalar(select(Customer).where(Customer.code == customer_code))
    if line is None or customer is None:
        raise RegistrationError("unknown line or customer")
    account = Account(username=number, role=role, customer_id=customer.id, email=email,
                      email_verified=email_verified, otp_channel=otp_channel,
                      password_hash=passwords.hash_secret(password), password_temporary=temporary,
                      security_question=question,
                      security_answer_hash=passwords.hash_secret(passwords.normalise_answer(answer))
                      if answer else None)
    try:
        db.session.add(account)
        db.session.flush()
        db.session.add(AccountLine(account_id=account.id, line_id=line.id, slot=1))
        db.session.commit()
    except IntegrityError as exc:
        db.session.rollback()
        raise RegistrationError("line already registered") from exc
    return account


def set_credentials(account: Account, password: str, question: str, answer: str) -> None:
    """New password and new security question + answer; clears the temporary-password flag."""
    account.password_hash = passwords.hash_secret(password)
    account.password_temporary = False
    account.security_question = question
    account.security_answer_hash = passwords.hash_secret(passwords.normalise_answer(answer))
    db.session.commit()


def sim_count(account_id: int) -> int:
    return db.session.scalar(select(func.count()).select_from(AccountLine)
                             .where(AccountLine.account_id == account_id)) or 0


def associate_sim(account_id: int, number: str) -> AccountLine:
    """Associate a line with the account in a free slot; the unique constraints decide races."""
    line = db.session.scalar(select(Line).where(Line.msisdn == number))
    if line is None:
        raise LineTaken("unknown line")
    for _ in range(MAX_SIMS):
        used = set(db.session.scalars(select(AccountLine.slot).where(AccountLine.account_id == account_id)))
        free = [slot for slot in range(1, MAX_SIMS + 1) if slot not in used]
        if not free:
            raise SimLimitReached()
        link = AccountLine(account_id=account_id, line_id=line.id, slot=free[0])
        try:
            db.session.add(link)
            db.session.commit()
            return link
        except IntegrityError:
            db.session.rollback()
            if db.session.scalar(select(AccountLine.id).where(AccountLine.line_id == line.id)) is not None:
                raise LineTaken("line already associated") from None
            # another request took that slot meanwhile: look again
    raise SimLimitReached()


def remove_sim(account_id: int, number: str) -> None:
    """Remove an associated SIM other than the registered line (the username)."""
    account = db.session.get(Account, account_id)
    if account is None or account.username == number:
        raise LineTaken("the registered line cannot be removed")
    link = db.session.scalar(select(AccountLine).join(Line).where(AccountLine.account_id == account_id,
                                                                   Line.msisdn == number))
    if link is None:
        raise LineTaken("not associated")
    db.session.delete(link)
    db.session.commit()
