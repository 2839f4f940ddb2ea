"""Password and security-answer hashing (SPEC §2): argon2id, constant-time verification, rehash on login.

``dummy_verify`` spends the same time as a real verification, so an unknown line and a wrong password cannot be
told apart by timing (issue 2 point 7).
"""
from __future__ import annotations

import secrets
import unicodedata
from functools import lru_cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from flask import current_app


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
    """Security answers compare loosely: NFKC, case-folded, accents folded, spaces trimmed and collapsed."""
    text = unicodedata.normalize("NFKC", answer or "").casefold()
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return " ".join(text.split())
