"""Throttling and temporary lockout of password guesses (issue 4 point 3; OWASP Authentication Cheat Sheet).

Every attempt takes a ticket *before* the password is checked, in one Lua step per subject (the typed line, and
the client address): a subject that is locked, or that must still wait out its progressive delay, gets no ticket
and its password is never checked; otherwise the attempt is counted. At ``LOCKOUT_THRESHOLD`` counted attempts in
``LOCKOUT_WINDOW`` seconds the subject is locked for ``LOCKOUT_DURATION`` seconds, and the counter never goes past
the threshold, so N concurrent guesses are counted exactly and none slips in past the limit. After
``LOCKOUT_FREE_FAILURES`` failures each further failure doubles the wait before the next try (up to
``LOCKOUT_MAX_DELAY``). A success clears the subject's counters. Unknown lines are counted and locked like known
ones, so the lock reveals nothing; the lock is temporary, and operators can clear it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from flask import current_app

from . import observability, ratelimit, signals
from .store import store

# KEYS: counter, lock, next-allowed. ARGV: threshold, window, lock duration, now (ms).
# Returns {status, value}: {1, count} ticket taken; {0, ms} locked for ms; {-1, ms} wait ms (progressive delay);
# {2, count} ticket taken and this attempt reached the threshold (the lock is set for the next ones).
# The counter expires with the lock, so a new window starts when the lock ends.
_TAKE = """
local lock_ms = redis.call('PTTL', KEYS[2])
if lock_ms > 0 then return {0, lock_ms} end
local now = tonumber(ARGV[4])
local next_allowed = tonumber(redis.call('GET', KEYS[3]) or '0')
if next_allowed > now then return {-1, next_allowed - now} end
local threshold = tonumber(ARGV[1])
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count >= threshold then
  redis.call('SET', KEYS[2], '1', 'PX', tonumber(ARGV[3]) * 1000)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
  return {0, tonumber(ARGV[3]) * 1000}
end
count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
if count >= threshold then
  redis.call('SET', KEYS[2], '1', 'PX', tonumber(ARGV[3]) * 1000)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
  return {2, count}
end
return {1, count}
"""


class Locked(Exception):
    def __init__(self, retry_after: int, locked: bool):
        super().__init__(retry_after)
        self.retry_after, self.locked = retry_after, locked


@dataclass
class Ticket:
    subjects: list[str]


def _keys(subject: str) -> tuple[str, str, str]:
    base = store().key("lockout", ratelimit.subject(subject))
    return base + ":count", base + ":lock", base + ":next"


def _subjects(line: str, address: str) -> list[tuple[str, int]]:
    config = current_app.config
    return [("line:" + line, int(config["LOCKOUT_THRESHOLD"])),
            ("address:" + address, int(config["LOCKOUT_THRESHOLD_ADDRESS"]))]


def take(line: str, address: str) -> Ticket:
    """Count one attempt for the line and the address before the password is checked, or raise Locked."""
    config = current_app.config
    now_ms = int(time.time() * 1000)
    taken = []
    for subject, threshold in _subjects(line, address):
        status, value = store().script(_TAKE)(keys=list(_keys(subject)), args=[
            threshold, int(config["LOCKOUT_WINDOW"]), int(config["LOCKOUT_DURATION"]), now_ms])
        if status <= 0:
            observability.count_refusal("lockout-" + subject.split(":", 1)[0])
            raise Locked(max(1, (int(value) + 999) // 1000), locked=status == 0)
        if status == 2:
            signals.emit(signals.ACCOUNT_LOCKED, "refused", line=line if subject.startswith("line:") else None,
                         subject=subject.split(":", 1)[0], threshold=threshold)
        taken.append(subject)
    return Ticket(taken)


def failed(ticket: Ticket) -> None:
    """The password was wrong: make the next try wait longer (progressive delay)."""
    config = current_app.config
    free, cap = int(config["LOCKOUT_FREE_FAILURES"]), int(config["LOCKOUT_MAX_DELAY"])
    for subject in ticket.subjects:
        count_key, _lock, next_key = _keys(subject)
        count = int(store().redis.get(count_key) or 0)
        if count > free:
            delay_ms = min(cap, 2 ** (count - free - 1)) * 1000
            store().redis.set(next_key, int(time.time() * 1000) + delay_ms, px=delay_ms)


def succeeded(ticket: Ticket) -> None:
    """The password was right: forget the line's failures, and give the address its ticket back, so that many
    people behind one NAT (an office, a mobile gateway) are never locked out by their own successful logins."""
    for subject in ticket.subjects:
        if subject.startswith("line:"):
            store().redis.delete(*_keys(subject))
        else:
            count_key = _keys(subject)[0]
            if int(store().redis.decr(count_key)) < 0:
                store().redis.delete(count_key)


def attempts(line: str) -> int:
    return int(store().redis.get(_keys("line:" + line)[0]) or 0)


def clear(line: str) -> bool:
    """Operator's unlock: remove the line's lock, counter and delay."""
    removed = store().redis.delete(*_keys("line:" + line))
    signals.emit(signals.ACCOUNT_UNLOCKED, line=line, by="operator")
    return bool(removed)
