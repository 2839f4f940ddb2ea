"""Passwords and security answers (SPEC §2; issue 3 points 9–10): argon2id, constant-time checks, the policy.

``dummy_verify`` spends the same time as a real verification, so an unknown line and a wrong password cannot be
told apart by timing (issue 2 point 7).
"""
from __future__ import annotations

import os
import secrets
import unicodedata
from functools import lru_cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from flask import current_app
from flask_babel import gettext as _


@lru_cache(maxsize=8)
def _hasher(time_cost: int, memory_cost: int, parallelism: int) -> tuple[PasswordHasher, str]:
    hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism, type=Type.ID)
    return hasher, hasher.hash(secrets.token_urlsafe(24))


def _current() -> tuple[PasswordHasher, str]:
    config = current_app.config
    return _hasher(int(config["PASSWORD_ARGON2_TIME_COST"]), int(config["PASSWORD_ARGON2_MEMORY_COST"]),
                   int(config["PASSWORD_ARGON2_PARALLELISM"]))


def hash_secret(secret: str) -> str:
    return _current()[0].hash(_nfkc(secret))


def verify_secret(stored_hash: str | None, secret: str) -> bool:
    """True when ``secret`` matches; an absent or damaged hash costs the same time and is False."""
    hasher, dummy = _current()
    try:
        return hasher.verify(stored_hash or dummy, _nfkc(secret)) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def dummy_verify(secret: str = "") -> None:
    verify_secret(None, secret)


def needs_rehash(stored_hash: str) -> bool:
    return _current()[0].check_needs_rehash(stored_hash)


def _nfkc(text: str) -> str:
    # NIST SP 800-63B: normalise Unicode so the same password typed on two keyboards matches.
    return unicodedata.normalize("NFKC", text or "")


def normalise_answer(answer: str) -> str:
    """Security answers compare loosely: NFKC, case-folded, accents and invisible characters (zero-width, bidi
    marks, controls) dropped, spaces trimmed and collapsed."""
    text = unicodedata.normalize("NFKC", answer or "").casefold()
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch)
                   and (ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf")))
    return " ".join(text.split())


# policy -----------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    path = os.path.join(os.path.dirname(__file__), "data", "common-passwords.txt")
    with open(path, encoding="utf-8") as fh:
        return frozenset(line.strip() for line in fh if line.strip() and not line.startswith("#"))


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def password_problems(password: str, line: str | None = None, email: str | None = None) -> list[str]:
    """Why a new password is refused (issue 3 point 10), as messages for the person; empty when it is fine."""
    config = current_app.config
    password = _nfkc(password)
    problems = []
    if len(password) < int(config["PASSWORD_MIN_LENGTH"]):
        problems.append(_("La password deve avere almeno %(n)d caratteri.", n=int(config["PASSWORD_MIN_LENGTH"])))
    if len(password) > int(config["PASSWORD_MAX_LENGTH"]):
        problems.append(_("La password può avere al massimo %(n)d caratteri.", n=int(config["PASSWORD_MAX_LENGTH"])))
    if password.casefold() in _common_passwords() or len(set(password)) <= 2:
        problems.append(_("Questa password è troppo comune: scegline una meno prevedibile."))
    if line:
        national = _digits(line)[2:] if line.startswith("+39") else _digits(line)
        if national and national[-7:] in _digits(password):
            problems.append(_("La password non può contenere il tuo numero di linea."))
    if email and email.split("@")[0].casefold() in password.casefold() and len(email.split("@")[0]) >= 4:
        problems.append(_("La password non può contenere il tuo indirizzo e-mail."))
    return problems


def answer_problems(answer: str, password: str = "", line: str | None = None, email: str | None = None) -> list[str]:
    """Why a security answer is refused: too short, or equal to the line, the e-mail or the password."""
    normalised = normalise_answer(answer)
    problems = []
    if len(normalised) < 3:
        problems.append(_("La risposta deve avere almeno 3 caratteri."))
    forbidden = {normalise_answer(password)} if password else set()
    if line:
        forbidden |= {_digits(line), _digits(line)[2:], line}
    if email:
        forbidden |= {normalise_answer(email), normalise_answer(email.split("@")[0])}
    if normalised in forbidden or _digits(normalised) and _digits(normalised) in forbidden and \
            _digits(normalised) == normalised.replace(" ", "").lstrip("+"):
        problems.append(_("La risposta non può essere uguale al numero di linea, all'e-mail o alla password."))
    return problems
