"""Trusting the operator's enrichment gateway (SPEC §3 point 3; issue 5 points 1–3; notes/security.md §3).

A request is network-identified only when all of these hold:

1. its TCP peer (``REMOTE_ADDR`` after ProxyFix with the exact number of trusted hops — never the left-most
   ``X-Forwarded-For``) is inside ``AUTOLOGIN_TRUSTED_CIDRS``;
2. it carries exactly one ``AUTOLOGIN_MSISDN_HEADER`` value, a valid mobile number;
3. it carries ``AUTOLOGIN_SIGNATURE_HEADER`` = ``kid=…;ts=…;nonce=…;sig=…`` where ``sig`` is
   base64url(HMAC-SHA256(key[kid], "<msisdn>|<ts>|<nonce>")), ``ts`` within ±``AUTOLOGIN_MAX_SKEW`` seconds, and the
   nonce never seen before (Redis SET NX);
4. the per-line and per-address limits are not exceeded.

Anything else that carries an MSISDN-like header is a spoof attempt: ignored, and written to the audit log with
the reason (the number masked). With no trusted CIDR or no gateway key configured, autologin is off. WSGI folds
``X-MSISDN`` and ``X_MSISDN`` into the same key, and joins duplicates with commas; the signature, not the spelling,
is what is trusted, and a joined (duplicated) value is refused.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import time
from dataclasses import dataclass
from functools import lru_cache

from flask import current_app, request

from . import msisdn, ratelimit, signals
from .store import store


@dataclass(frozen=True)
class NetworkIdentity:
    msisdn: str
    kid: str


def enabled() -> bool:
    config = current_app.config
    return bool(config["AUTOLOGIN_TRUSTED_CIDRS"]) and bool(config["AUTOLOGIN_GATEWAY_KEYS"])


@lru_cache(maxsize=16)
def _networks(cidrs: tuple[str, ...]):
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _trusted_peer(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(ip in net for net in _networks(tuple(current_app.config["AUTOLOGIN_TRUSTED_CIDRS"])))


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def _msisdn_like_headers(environ) -> list[str]:
    return [k for k in environ if k.startswith("HTTP_") and ("MSISDN" in k or "CALLING_LINE" in k)]


def sign(secret: str, number: str, ts: int, nonce: str) -> str:
    """The gateway's signature (used by the gateway, and by our tests acting as one)."""
    mac = hmac.new(secret.encode(), f"{number}|{ts}|{nonce}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _parse_signature(value: str) -> dict | None:
    parts = {}
    for item in value.split(";"):
        name, sep, val = item.strip().partition("=")
        if not sep or name in parts:
            return None
        parts[name] = val
    return parts if set(parts) == {"kid", "ts", "nonce", "sig"} else None


def _spoof(reason: str, number: str | None = None) -> None:
    signals.emit(signals.AUTOLOGIN_SPOOF, "refused", line=number, reason=reason)


_IDENTITY = "idp.network_identity"  # environ key: the request's identity, decided once


def identify(environ: dict | None = None) -> NetworkIdentity | None:
    """The verified network identity of this request (Flask's, or the WSGI ``environ`` of a request answered before
    Flask), or None; spoof attempts are logged. Decided once per request (the nonce is single-use) and kept in the
    environ, so a request handed from ``idp.fastpaths`` to Flask is not identified twice."""
    environ = request.environ if environ is None else environ
    if _IDENTITY not in environ:
        environ[_IDENTITY] = _identify(environ)
    return environ[_IDENTITY]


def _identify(environ) -> NetworkIdentity | None:
    config = current_app.config
    present = _msisdn_like_headers(environ)
    if not present:
        return None
    header_key = _environ_key(config["AUTOLOGIN_MSISDN_HEADER"])
    raw = environ.get(header_key, "")
    typed = msisdn.try_normalise(raw.split(",")[0]) if raw else None
    if not enabled():
        _spoof("autologin_off", typed)
        return None
    peer = environ.get("REMOTE_ADDR")  # after ProxyFix (the trusted hops only), as Flask's request.remote_addr
    if not _trusted_peer(peer):
        _spoof("untrusted_peer", typed)
        return None
    expected_keys = {header_key, _environ_key(config["AUTOLOGIN_SIGNATURE_HEADER"])}
    if header_key not in present or set(present) - expected_keys:
        _spoof("unexpected_header", typed)
        return None
    if "," in raw:
        _spoof("duplicated_header", typed)
        return None
    if typed is None:
        _spoof("malformed_msisdn")
        return None
    signature = _parse_signature(environ.get(_environ_key(config["AUTOLOGIN_SIGNATURE_HEADER"]), ""))
    if signature is None:
        _spoof("missing_signature", typed)
        return None
    secret = config["AUTOLOGIN_GATEWAY_KEYS"].get(signature["kid"])
    if not secret:
        _spoof("unknown_key", typed)
        return None
    expected = sign(secret, raw.strip(), signature["ts"], signature["nonce"])
    if not hmac.compare_digest(expected, signature["sig"]):
        _spoof("bad_signature", typed)
        return None
    try:
        ts = int(signature["ts"])
    except ValueError:
        _spoof("bad_timestamp", typed)
        return None
    if abs(time.time() - ts) > int(config["AUTOLOGIN_MAX_SKEW"]):
        _spoof("stale", typed)
        return None
    if not 8 <= len(signature["nonce"]) <= 64:
        _spoof("replayed", typed)
        return None
    line_counter = ratelimit.key("autologin-line", typed)
    address_counter = ratelimit.key("autologin-address", peer or "-")
    counts = _take_nonce_and_count(f"gateway-nonce:{signature['kid']}:{signature['nonce']}",
                                   2 * int(config["AUTOLOGIN_MAX_SKEW"]) + 5, line_counter, address_counter)
    if counts is None:
        _spoof("replayed", typed)
        return None
    try:
        ratelimit.refuse_over("autologin-line", line_counter, counts[0], int(config["AUTOLOGIN_PER_LINE_PER_HOUR"]))
        ratelimit.refuse_over("autologin-address", address_counter, counts[1],
                              int(config["AUTOLOGIN_PER_ADDRESS_PER_HOUR"]))
    except ratelimit.RateLimited as exc:
        signals.emit(signals.AUTOLOGIN_THROTTLED, "refused", line=typed, limit=exc.name)
        return None
    return NetworkIdentity(msisdn=typed, kid=signature["kid"])


# KEYS: the nonce, the line's counter, the address's counter. ARGV: the nonce's TTL, the counters' window.
# A nonce seen before counts nothing; a new one is kept and both counters counted: one round trip, one atomic step.
_NONCE_AND_COUNT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) then return false end
local counts = {}
for i = 2, 3 do
  counts[i - 1] = redis.call('INCR', KEYS[i])
  if counts[i - 1] == 1 then redis.call('EXPIRE', KEYS[i], tonumber(ARGV[2])) end
end
return counts
"""


def _take_nonce_and_count(nonce_key: str, nonce_ttl: int, *counters: str, window: int = 3600) -> list[int] | None:
    """Keep the nonce (single use) and count the request against both limits, or None when the nonce was seen."""
    s = store()
    script = s.script(_NONCE_AND_COUNT)
    counts = script(keys=[s.key(nonce_key), *(s.key(c) for c in counters)], args=[max(1, nonce_ttl), window])
    return [int(c) for c in counts] if counts else None


def eligible_account(identity: NetworkIdentity | None):
    """The active employee the identified line is associated with, if the line is active (a ``people.Person``);
    else None. Unknown and ineligible lines run the same single query, so they take the same time."""
    if identity is None:
        return None
    from . import people
    return people.eligible_for_network(identity.msisdn)
