"""The only door to Redis for short-lived state (DESIGN §1, §4).

Every key carries the configured prefix and every write a TTL. Values are JSON. ``consume`` is an atomic GETDEL,
which is what makes one-time things (authorization codes, flow steps) single-use across processes.
Without ``REDIS_URL`` an embedded Redis-compatible store (fakeredis with Lua) serves one process: the development
default, refused in production by ``config.validate``.
"""
from __future__ import annotations

import json
from typing import Any

import redis
from flask import current_app
from redis.backoff import NoBackoff
from redis.retry import Retry


class Store:
    def __init__(self, client: redis.Redis, prefix: str):
        self.redis = client
        self.prefix = prefix
        self._scripts: dict[str, Any] = {}

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def put(self, key: str, value: Any, ttl: int) -> None:
        self.redis.set(self.key(key), json.dumps(value, separators=(",", ":")), ex=max(1, int(ttl)))

    def add(self, key: str, value: Any, ttl: int) -> bool:
        """Write only if absent (SET NX): True when this call created the key."""
        return bool(self.redis.set(self.key(key), json.dumps(value), ex=max(1, int(ttl)), nx=True))

    def get(self, key: str) -> Any:
        raw = self.redis.get(self.key(key))
        return None if raw is None else json.loads(raw)

    def consume(self, key: str) -> Any:
        raw = self.redis.getdel(self.key(key))
        return None if raw is None else json.loads(raw)

    def exists(self, key: str) -> bool:
        return bool(self.redis.exists(self.key(key)))

    def destroy(self, *keys: str) -> None:
        if keys:
            self.redis.delete(*(self.key(k) for k in keys))

    def script(self, source: str):
        """A Lua script, registered once per process and run by its SHA (EVALSHA; loaded again after a Redis
        restart). Callers prefix their keys with ``key``."""
        found = self._scripts.get(source)
        if found is None:
            found = self._scripts[source] = self.redis.register_script(source)
        return found

    def incr(self, key: str, ttl: int) -> int:
        """Count atomically; the TTL is set when the counter is created and never extended."""
        pipe = self.redis.pipeline()
        pipe.incr(self.key(key))
        pipe.expire(self.key(key), max(1, int(ttl)), nx=True)
        return int(pipe.execute()[0])


def connect(config) -> Store:
    if config["REDIS_URL"]:
        # A pooled connection that died while idle (Redis restarted, a network blip) is reconnected once
        # instead of failing the request; a Redis that hangs fails within the socket time-outs (503) instead
        # of holding the worker. Options in the URL's query (e.g. ?socket_timeout=2) override these.
        client = redis.Redis.from_url(config["REDIS_URL"], decode_responses=True, health_check_interval=30,
                                      socket_timeout=5, socket_connect_timeout=5,
                                      retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
    else:
        import fakeredis  # development default only

        client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    return Store(client, config["REDIS_PREFIX"])


def init_app(app) -> None:
    app.extensions["idp.store"] = connect(app.config)


def store() -> Store:
    return current_app.extensions["idp.store"]
