"""One-time codes sent by SMS or e-mail (SPEC §3 "One-time codes"; issue 3 point 7).

A code is made with pyotp (an HOTP value under a fresh random secret), numeric, ``OTP_DIGITS`` long, lives
``OTP_TTL`` seconds, allows ``OTP_MAX_ATTEMPTS`` tries and is single-use. It is bound to its flow, purpose and
destination: only an HMAC over all four is stored, and it is compared in constant time. Every try is counted
atomically *before* the comparison. Sending is limited by a resend cooldown and hourly caps per destination and per
client address (SMS pumping). An unknown destination can be "sent" a code too (``deliver=False``): the caller gets
the same answers and the same limits, and nothing leaves the building.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time

import pyotp
from flask import current_app, has_request_context, request

from . import ratelimit
from .store import store


class OtpError(Exception):
    """The code is wrong, expired, used up or was never issued."""


class OtpExhausted(OtpError):
    """Too many wrong tries: the code is destroyed; a new one must be requested."""


def _key(flow_key: str, purpose: str) -> str:
    return f"otp:{flow_key}:{purpose}"


def _mac(flow_key: str, purpose: str, destination: str, code: str) -> str:
    secret = str(current_app.config["HMAC_KEY"]).encode()
    message = "\x1f".join((flow_key, purpose, destination, code)).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def new_code() -> str:
    digits = int(current_app.config["OTP_DIGITS"])
    return pyotp.HOTP(pyotp.random_base32(), digits=digits).at(0)


def check_send_limits(destination: str, client_address: str) -> None:
    """Raise ratelimit.RateLimited when another code may not be sent now."""
    config = current_app.config
    ratelimit.cooldown("otp-resend", destination, int(config["OTP_RESEND_COOLDOWN"]))
    ratelimit.hit("otp-send-destination", destination, int(config["OTP_SENDS_PER_HOUR_DESTINATION"]), 3600)
    ratelimit.hit("otp-send-address", client_address or "-", int(config["OTP_SENDS_PER_HOUR_ADDRESS"]), 3600)


def delivery_failed(destination: str) -> None:
    """A code that did not leave must not hold the person back: an immediate retry is allowed."""
    ratelimit.release_cooldown("otp-resend", destination)


def issue(flow_key: str, purpose: str, destination: str) -> str:
    """Create (or replace) the code for this flow and purpose; return it for sending."""
    ttl = int(current_app.config["OTP_TTL"])
    code = new_code()
    store().put(_key(flow_key, purpose), {"mac": _mac(flow_key, purpose, destination, code),
                                         "expires_at": int(time.time()) + ttl}, ttl)
    store().destroy(_key(flow_key, purpose) + ":tries")
    return code


# KEYS: the code's record, its try counter. Counting a try and reading the code is one atomic step, so a try is
# only ever compared against a live code and counted against it: no reset counter after the code is destroyed.
_TAKE_TRY = """
local record = redis.call('GET', KEYS[1])
if not record then return {0, false} end
local tries = redis.call('INCR', KEYS[2])
if tries == 1 then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[1])) end
return {tries, record}
"""


def verify(flow_key: str, purpose: str, destination: str, code: str) -> None:
    """Accept the code once, or raise OtpError / OtpExhausted.

    Besides the code's own tries, every try counts against the destination and the client address per hour, so
    fresh flows cannot multiply the guesses.
    """
    key = _key(flow_key, purpose)
    config = current_app.config
    try:
        ratelimit.hit("otp-try-destination", destination, int(config["OTP_TRIES_PER_HOUR_DESTINATION"]), 3600)
        address = request.remote_addr if has_request_context() else None
        ratelimit.hit("otp-try-address", address or "-", int(config["OTP_TRIES_PER_HOUR_ADDRESS"]), 3600)
    except ratelimit.RateLimited as exc:
        store().destroy(key, key + ":tries")
        raise OtpExhausted("too many tries for this destination or address") from exc
    tries, raw = store().script(_TAKE_TRY)(keys=[store().key(key), store().key(key + ":tries")],
                                           args=[int(current_app.config["OTP_TTL"])])
    if not raw:
        raise OtpError("no code")
    record = json.loads(raw)
    if tries > int(current_app.config["OTP_MAX_ATTEMPTS"]):
        store().destroy(key, key + ":tries")
        raise OtpExhausted("too many tries")
    candidate = "".join(ch for ch in (code or "") if ch.isdigit())[:16]
    if not hmac.compare_digest(record["mac"], _mac(flow_key, purpose, destination, candidate)):
        if tries >= int(current_app.config["OTP_MAX_ATTEMPTS"]):
            store().destroy(key, key + ":tries")
            raise OtpExhausted("too many tries")
        raise OtpError("wrong code")
    if store().consume(key) is None:  # a concurrent request used it first
        raise OtpError("already used")
    store().destroy(key + ":tries")
