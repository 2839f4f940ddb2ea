"""The flow record (DESIGN §2, SPEC §3): a short, resumable, server-side state machine in Redis.

A flow is ``{id, kind, state, expires_at, data, version}`` stored under ``idp:flow:<kind>:<id>`` with a TTL, plus a
declared table of transitions. ``advance`` refuses an undeclared transition and saves with compare-and-set on the
version (a Lua script), so a double submit cannot skip or repeat a state. Attempts are counted in their own Redis
counter, atomically and *before* the answer is checked. An unknown or expired flow raises ``FlowExpired``; the
views turn that into a restart with a clear message, never a 500.
"""
from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import ClassVar

from flask import current_app, g, request

from ..store import store

_FLOW_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

# KEYS[1] = record; ARGV = expected version, new value ("<version>|<json>"), ttl.
_CAS = """
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
local version = tonumber(string.match(current, '^(%d+)|'))
if version ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
return 1
"""


def client_address() -> str:
    """The client's address as the TCP peer saw it (ProxyFix corrects it for the configured trusted hops only)."""
    return request.remote_addr or "-"


# KEYS: the flow record, its attempt counter; 0 when the flow is gone.
_COUNT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local used = redis.call('INCR', KEYS[2])
if used == 1 then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[1])) end
return used
"""


class FlowExpired(Exception):
    """The flow is unknown, expired or finished."""


class FlowConflict(Exception):
    """Another request moved the flow first (double submit)."""


class TooManyAttempts(Exception):
    """The flow used up its attempts; it has been destroyed."""


class IllegalTransition(RuntimeError):
    pass


@dataclass
class Flow:
    kind: ClassVar[str] = ""
    initial: ClassVar[str] = ""
    transitions: ClassVar[dict[str, tuple[str, ...]]] = {}
    attempts_setting: ClassVar[str] = ""  # the config key holding the attempt limit; empty: no limit

    id: str
    state: str
    expires_at: int
    data: dict = field(default_factory=dict)
    version: int = 0

    # storage -------------------------------------------------------------------------------------------------
    @classmethod
    def _key(cls, flow_id: str) -> str:
        return f"flow:{cls.kind}:{flow_id}"

    @classmethod
    def start(cls, **data) -> "Flow":
        ttl = int(current_app.config["FLOW_TTL"])
        flow = cls(id=secrets.token_urlsafe(24), state=cls.initial, expires_at=int(time.time()) + ttl, data=data)
        store().redis.set(store().key(cls._key(flow.id)), flow._dump(), ex=ttl)
        return flow

    @classmethod
    def load(cls, flow_id: str) -> "Flow":
        if not flow_id or not _FLOW_ID.match(flow_id):
            raise FlowExpired(flow_id)
        raw = store().redis.get(store().key(cls._key(flow_id)))
        if raw is None:
            raise FlowExpired(flow_id)
        version, _, body = raw.partition("|")
        record = json.loads(body)
        if record["expires_at"] <= time.time():
            raise FlowExpired(flow_id)
        return cls(id=flow_id, state=record["state"], expires_at=record["expires_at"], data=record["data"],
                   version=int(version))

    @classmethod
    def load_for_page(cls, flow_id: str) -> "Flow":
        """Load the flow for one of its pages: ``?lang=`` switches (and remembers) the language the pages speak."""
        flow = cls.load(flow_id)
        lang = request.args.get("lang")
        if lang in current_app.config["LANGUAGES"] and lang != flow.data.get("locale"):
            flow.data["locale"] = lang
            try:
                flow.save()
            except (FlowConflict, FlowExpired):
                pass  # another request moved the flow: the language applies to this page only
        g.locale = flow.data.get("locale")
        return flow

    def _dump(self) -> str:
        return f"{self.version}|" + json.dumps({"state": self.state, "expires_at": self.expires_at,
                                                "data": self.data}, separators=(",", ":"))

    def save(self) -> None:
        """Compare-and-set: succeeds only if nobody saved since this flow was loaded."""
        ttl = self.expires_at - int(time.time())
        if ttl <= 0:
            raise FlowExpired(self.id)
        expected = self.version
        self.version += 1
        result = store().script(_CAS)(keys=[store().key(self._key(self.id))], args=[expected, self._dump(), ttl])
        if result == -1:
            raise FlowExpired(self.id)
        if result == 0:
            self.version = expected
            raise FlowConflict(self.id)

    def advance(self, next_state: str, **data) -> None:
        if next_state not in self.transitions.get(self.state, ()):
            raise IllegalTransition(f"{self.kind}: {self.state} → {next_state}")
        self.state = next_state
        self.data.update(data)
        self.save()

    def finish(self) -> None:
        store().destroy(self._key(self.id), self._key(self.id) + ":attempts")

    # attempts -------------------------------------------------------------------------------------------------
    def count_attempt(self) -> int:
        """Count one attempt before checking it; past the limit the flow ends and TooManyAttempts is raised.

        The count is taken only while the flow still exists (one Lua step), so requests racing past the limit
        cannot restart the counter after ``finish`` destroyed it.
        """
        ttl = max(1, self.expires_at - int(time.time()))
        used = store().script(_COUNT)(keys=[store().key(self._key(self.id)),
                                            store().key(self._key(self.id) + ":attempts")], args=[ttl])
        if used == 0:
            raise FlowExpired(self.id)
        limit = int(current_app.config[self.attempts_setting]) if self.attempts_setting else 0
        if limit and used > limit:
            self.finish()
            raise TooManyAttempts(self.id)
        return used

    def attempts_left(self) -> int | None:
        if not self.attempts_setting:
            return None
        used = int(store().redis.get(store().key(self._key(self.id) + ":attempts")) or 0)
        return max(0, int(current_app.config[self.attempts_setting]) - used)
