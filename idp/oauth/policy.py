"""When /authorize must (re)authenticate (OIDC Core §3.1.2.1 `prompt`, `max_age`, `acr_values`).

Authlib handles only ``prompt=none`` without a user; ``max_age``, ``acr_values`` and a ``prompt=login`` that does
not loop are ours. A login made for this very authorization request (``fresh_for``) satisfies all three once.
"""
from __future__ import annotations

import hashlib
import time

from authlib.oauth2.rfc6749 import InvalidRequestError

from .scopes import ACR_LEVELS


def request_hash(query_string: bytes) -> str:
    return hashlib.sha256(query_string).hexdigest()[:32]


def login_needed(data, sso, this_request: str, redirect_uri: str) -> bool:
    if sso is None:
        return True
    if sso.is_fresh_for(this_request):
        return False
    prompts = (data.get("prompt") or "").split()
    if "login" in prompts:
        return True
    max_age = data.get("max_age")
    if max_age not in (None, ""):
        try:
            seconds = int(max_age)
            if seconds < 0:
                raise ValueError
        except ValueError:
            raise InvalidRequestError("Invalid 'max_age' parameter.", redirect_uri=redirect_uri) from None
        if time.time() - sso.auth_time > seconds:
            return True
    wanted = [ACR_LEVELS[v] for v in (data.get("acr_values") or "").split() if v in ACR_LEVELS]
    if wanted and ACR_LEVELS.get(sso.acr, 0) < min(wanted):
        return True
    return False
