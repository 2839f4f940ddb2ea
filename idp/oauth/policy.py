"""When /authorize must (re)authenticate, and how (OIDC Core §3.1.2.1 `prompt`, `max_age`, `acr_values`;
RFC 9470 step-up; SPEC §3 point 3; issue 5 point 4).

Authlib handles only ``prompt=none`` without a user; ``max_age``, ``acr_values`` and a ``prompt=login`` that does
not loop are ours. ``decide`` answers three questions: must the person authenticate now; which assurance level
(``acr``) the request needs — the lowest of the known ``acr_values`` it names, since the RP accepts any of them —;
and may network autologin serve it (not when the RP asks for ``prompt=login``, gives a ``max_age``, or needs more
than the network level). A session below the needed level gets only the missing step (password, then the security
question) and keeps its ``sid``. A login made for this very authorization request (``fresh_for``) satisfies the
request once, so nothing loops.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from authlib.oauth2.rfc6749 import InvalidRequestError

from .scopes import ACR_LEVELS, ACR_NETWORK


@dataclass(frozen=True)
class Decision:
    login: bool
    required_acr: str
    allow_network: bool
    reauthenticate: bool  # prompt=login or max_age exceeded: every factor again


def request_hash(query_string: bytes) -> str:
    return hashlib.sha256(query_string).hexdigest()[:32]


def level(acr: str | None) -> int:
    return ACR_LEVELS.get(acr or "", 0)


def _max_age(data, redirect_uri: str) -> int | None:
    value = data.get("max_age")
    if value in (None, ""):
        return None
    try:
        seconds = int(value)
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise InvalidRequestError("Invalid 'max_age' parameter.", redirect_uri=redirect_uri)
    return seconds


def decide(data, sso, this_request: str, redirect_uri: str) -> Decision:
    requested = [v for v in (data.get("acr_values") or "").split() if v in ACR_LEVELS]
    required = min(requested, key=level) if requested else ACR_NETWORK
    prompts = (data.get("prompt") or "").split()
    max_age = _max_age(data, redirect_uri)
    allow_network = "login" not in prompts and max_age is None and level(required) <= level(ACR_NETWORK)
    if sso is None:
        return Decision(True, required, allow_network, False)
    if sso.is_fresh_for(this_request):
        return Decision(False, required, allow_network, False)
    reauthenticate = "login" in prompts or (max_age is not None and time.time() - sso.auth_time > max_age)
    login = reauthenticate or level(sso.acr) < level(required)
    return Decision(login, required, allow_network, reauthenticate)
