"""The only module that understands phone numbers (SPEC §2: username = the registered mobile line, E.164).

People type ``333 123 4567``, ``+39 333 1234567``, ``0039 333…`` or ``39 333…``; we store and compare ``+39…``.
"""
from __future__ import annotations

from functools import lru_cache

import phonenumbers

DEFAULT_REGION = "IT"
_MOBILE_TYPES = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE)


class InvalidMsisdn(ValueError):
    """Not a mobile line we can recognise."""


@lru_cache(maxsize=8192)
def normalise(text: str | None) -> str:
    """Return the E.164 form of a mobile line typed by a person, or raise InvalidMsisdn.

    Pure, so the answers are kept (the gateway repeats the same lines all day; a failure is not kept). The number's
    type is looked up once: a mobile type implies a valid number (``number_type`` is UNKNOWN for invalid ones), so
    ``is_valid_number``, which looks it up again, is not called."""
    raw = (text or "").strip()
    if not raw or len(raw) > 32:
        raise InvalidMsisdn(raw)
    digits = "".join(ch for ch in raw if ch.isdigit())
    if not raw.startswith(("+", "00")) and digits.startswith("39") and len(digits) in (11, 12, 13):
        raw = "+" + digits  # "39 333 1234567": the country code without a plus
    try:
        number = phonenumbers.parse(raw, DEFAULT_REGION)
    except phonenumbers.NumberParseException as exc:
        raise InvalidMsisdn(raw) from exc
    if phonenumbers.number_type(number) not in _MOBILE_TYPES:
        raise InvalidMsisdn(raw)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def try_normalise(text: str | None) -> str | None:
    try:
        return normalise(text)
    except InvalidMsisdn:
        return None


def mask(e164: str) -> str:
    """``+393931234567`` → ``+39 393 ***4567``: enough for a person to recognise their line, for logs too."""
    if len(e164) < 8:
        return "***"
    return f"{e164[:3]} {e164[3:6]} ***{e164[-4:]}"
