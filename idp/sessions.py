"""The SSO session (SPEC §2 "one account, one password, for every RP"; OIDC Core §2 `sid`, `auth_time`).

The record lives in the store under a hash of the cookie's value; the cookie carries only that random value, is
renewed at every login (no fixation), and is HttpOnly, SameSite=Lax and Secure outside development. ``sid`` is a
separate public identifier put in ID tokens, never the cookie's value. ``fresh_for`` lists the authorization
requests that this login was made for, so ``prompt=login`` and ``max_age=0`` are satisfied once and do not loop.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import asdict, dataclass, field

from flask import current_app, g, request
from flask.sessions import SecureCookieSessionInterface

from .store import store


class CsrfCookieSessionInterface(SecureCookieSessionInterface):
    """Flask's own signed cookie, which holds only the CSRF token: read only when the request carries it.

    Flask builds its signing serializer on every request before looking for the cookie (~10 µs); API calls
    (token, userinfo, introspection) never carry it, so they skip that work (issue 8). Saving is unchanged."""

    def open_session(self, app, request):
        if app.config["SESSION_COOKIE_NAME"] not in request.cookies:
            return self.session_class()
        return super().open_session(app, request)


@dataclass
class SsoSession:
    sid: str
    account_id: int
    auth_time: int
    acr: str
    amr: list[str]
    created_at: int
    fresh_for: list[str] = field(default_factory=list)
    expires_at: int = 0

    def is_fresh_for(self, request_hash: str) -> bool:
        return request_hash in self.fresh_for


def _key(cookie_value: str) -> str:
    return "session:" + hashlib.sha256(cookie_value.encode()).hexdigest()


def current() -> SsoSession | None:
    if "sso" not in g:
        g.sso = None
        cookie = request.cookies.get(current_app.config["SSO_COOKIE_NAME"])
        if cookie and len(cookie) <= 128:
            data = store().get(_key(cookie))
            if data:
                g.sso = SsoSession(**data)
                g.sso_cookie = cookie
    return g.sso


def start(account_id: int, acr: str, amr: list[str], fresh_for: str | None = None,
          ttl: int | None = None) -> SsoSession:
    """Begin a new session for a fresh login, replacing (and destroying) the browser's previous one."""
    end()
    now = int(time.time())
    session = SsoSession(sid=secrets.token_urlsafe(16), account_id=account_id, auth_time=now, acr=acr,
                         amr=list(amr), created_at=now, fresh_for=[fresh_for] if fresh_for else [])
    cookie = secrets.token_urlsafe(32)
    ttl = int(ttl or current_app.config["SESSION_TTL"])
    session.expires_at = now + ttl
    store().put(_key(cookie), asdict(session), ttl)
    index = store().key(_index(account_id))
    pipe = store().redis.pipeline()
    pipe.sadd(index, _key(cookie))
    pipe.expire(index, ttl)
    pipe.execute()
    g.sso, g.sso_cookie, g.sso_set_cookie = session, cookie, cookie
    return session


def _index(account_id: int) -> str:
    return f"account-sessions:{account_id}"


def of_account(account_id: int) -> list[tuple[str, SsoSession]]:
    """The account's live sessions as (handle, session); the handle is a hash, never the cookie value."""
    found = []
    for key in store().redis.smembers(store().key(_index(account_id))):
        data = store().get(key)
        if data is not None:
            found.append((key.rsplit(":", 1)[-1], SsoSession(**data)))
    return found


def end_one(account_id: int, handle: str) -> bool:
    """End one of the account's sessions by its handle (from ``of_account``)."""
    key = "session:" + handle
    index = store().key(_index(account_id))
    if not store().redis.sismember(index, key):
        return False
    store().destroy(key)
    store().redis.srem(index, key)
    if g.get("sso_cookie") and _key(g.sso_cookie) == key:
        end()
    return True


def handle_of_current() -> str | None:
    cookie = g.get("sso_cookie")
    return _key(cookie).rsplit(":", 1)[-1] if cookie else None


def end_all(account_id: int, keep_current: bool = False) -> int:
    """End every session of the account (after a password change or reset); return how many ended."""
    index = store().key(_index(account_id))
    current_key = _key(g.sso_cookie) if keep_current and g.get("sso_cookie") else None
    ended = 0
    for key in store().redis.smembers(index):
        if key == current_key:
            continue
        store().destroy(key)
        store().redis.srem(index, key)
        ended += 1
    if not keep_current and g.get("sso") is not None and g.sso.account_id == account_id:
        end()
    return ended


def step_up(session: SsoSession, acr: str, amr: list[str], fresh_for: str | None = None) -> SsoSession:
    """The same person proved more (RFC 9470 step-up): raise the session's level, keep its sid, renew the cookie."""
    cookie = g.get("sso_cookie")
    if not cookie:
        return start(session.account_id, acr, amr, fresh_for)
    old_key = _key(cookie)
    session.auth_time, session.acr, session.amr = int(time.time()), acr, list(amr)
    session.created_at = session.auth_time
    session.expires_at = session.auth_time + int(current_app.config["SESSION_TTL"])
    if fresh_for:
        session.fresh_for.append(fresh_for)
    new_cookie = secrets.token_urlsafe(32)  # a new level gets a new cookie value (no fixation)
    ttl = int(current_app.config["SESSION_TTL"])
    store().put(_key(new_cookie), asdict(session), ttl)
    index = store().key(_index(session.account_id))
    pipe = store().redis.pipeline()
    pipe.sadd(index, _key(new_cookie))
    pipe.srem(index, old_key)
    pipe.expire(index, ttl)
    pipe.execute()
    store().destroy(old_key)
    g.sso, g.sso_cookie, g.sso_set_cookie = session, new_cookie, new_cookie
    return session


def use_fresh(session: SsoSession, request_hash: str) -> None:
    """The fresh login has served its authorization request: the next one with prompt=login logs in again."""
    if request_hash in session.fresh_for:
        session.fresh_for.remove(request_hash)
        _save(session)


def _save(session: SsoSession) -> None:
    cookie = g.get("sso_cookie")
    if cookie:
        remaining = session.expires_at - int(time.time())
        if remaining > 0:
            store().put(_key(cookie), asdict(session), remaining)


def end() -> None:
    cookie = g.get("sso_cookie") or request.cookies.get(current_app.config["SSO_COOKIE_NAME"])
    if cookie:
        session = g.get("sso")
        store().destroy(_key(cookie))
        if session is not None:
            store().redis.srem(store().key(_index(session.account_id)), _key(cookie))
        g.sso_clear_cookie = True
    g.sso, g.sso_cookie = None, None


def write_cookie(response):
    """after_request: set or clear the SSO cookie decided during the request."""
    config = current_app.config
    if g.get("sso_set_cookie"):
        response.set_cookie(config["SSO_COOKIE_NAME"], g.sso_set_cookie, max_age=int(config["SESSION_TTL"]),
                            httponly=True, secure=config["COOKIE_SECURE"], samesite="Lax", path="/")
    elif g.get("sso_clear_cookie"):
        response.delete_cookie(config["SSO_COOKIE_NAME"], path="/", httponly=True,
                               secure=config["COOKIE_SECURE"], samesite="Lax")
    return response
