"""Atomic counters in Redis (SPEC §3 "rate-limited per line, per account and per client address").

``hit`` counts first and then decides, so concurrent requests cannot slip past a limit: the counter is incremented
atomically (INCR) and the window starts with the first hit. Keys carry a keyed hash of the subject, never a phone
number or an address in clear.
"""
from __future__ import annotations

import hashlib
import hmac

from flask import current_app

from . import observability
from .store import store


class RateLimited(Exception):
    def __init__(self, name: str, retry_after: int):
        super().__init__(name)
        self.name, self.retry_after = name, retry_after


def subject(value: str) -> str:
    key = str(current_app.config["HMAC_KEY"]).encode()
    return hmac.new(key, (value or "").encode(), hashlib.sha256).hexdigest()[:32]


def key(name: str, value: str) -> str:
    """The counter of ``value`` in ``name`` (for callers that count several things in one Redis round trip)."""
    return f"rl:{name}:{subject(value)}"


def hit(name: str, value: str, limit: int, window: int) -> int:
    """Count one event for ``value`` in ``name``; raise RateLimited when it goes over ``limit`` per ``window`` s."""
    counter = key(name, value)
    count = store().incr(counter, window)
    refuse_over(name, counter, count, limit)
    return count


def refuse_over(name: str, counter: str, count: int, limit: int) -> None:
    """Raise RateLimited (retry after the window's rest) when ``count``, just counted in ``counter``, is over
    ``limit`` (0: no limit)."""
    if limit and count > limit:
        ttl = store().redis.ttl(store().key(counter))
        observability.count_refusal(name)
        raise RateLimited(name, max(int(ttl), 1))


def cooldown(name: str, value: str, seconds: int) -> None:
    """Allow one event per ``seconds`` for ``value`` (SET NX EX); raise RateLimited inside the quiet period."""
    if seconds <= 0:
        return
    key = f"cd:{name}:{subject(value)}"
    if not store().add(key, 1, seconds):
        ttl = store().redis.ttl(store().key(key))
        observability.count_refusal(name)
        raise RateLimited(name, max(int(ttl), 1))


def release_cooldown(name: str, value: str) -> None:
    """End a quiet period early (the event it guarded did not happen, e.g. a message that was not delivered)."""
    store().destroy(f"cd:{name}:{subject(value)}")
