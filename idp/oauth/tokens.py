"""Issuing, finding and revoking tokens (SPEC §4; RFC 9068 JWT access tokens, RFC 6749 §4.1.2 and §10.4).

Access tokens are ES256 (or RS256) JWTs with ``typ: at+jwt`` and a ``jti``; the ``tokens`` row under that ``jti``
is what revocation marks, so a revoked JWT is refused by userinfo and reported inactive by introspection.
Refresh tokens are random and stored as SHA-256. Authorization codes live in Redis and are redeemed with GETDEL,
so of N concurrent redemptions exactly one wins; a loser marks the code's family revoked *before* revoking its
rows, and the winner re-checks that mark *after* committing, so the tokens from a reused code always end revoked.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass

from flask import current_app
from joserfc import jwt
from joserfc.errors import JoseError
from sqlalchemy import and_, func, or_, select, update

from .. import observability, signals
from ..extensions import db
from ..keystore import keyring
from ..models import Token
from ..store import store

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
VERIFY_ALGORITHMS = ["ES256", "RS256"]


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def sign(claims: dict, alg: str, typ: str) -> str:
    key = keyring().signing_key(alg)
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": typ}, claims, key, algorithms=[alg])


@dataclass
class LoginContext:
    """How and when the person authenticated: carried from the SSO session into codes and refresh tokens."""
    auth_time: int
    acr: str
    amr: list[str]
    sid: str | None
    family_id: str
    family_expires_at: int


def new_family(auth_time: int, acr: str, amr: list[str], sid: str | None) -> LoginContext:
    ttl = int(current_app.config["REFRESH_FAMILY_TTL"])
    return LoginContext(auth_time=auth_time, acr=acr, amr=list(amr), sid=sid, family_id=secrets.token_hex(16),
                        family_expires_at=int(time.time()) + ttl)


def context_of(row: Token) -> LoginContext:
    return LoginContext(auth_time=row.auth_time, acr=row.acr, amr=(row.amr or "").split(), sid=row.sid,
                        family_id=row.family_id, family_expires_at=row.family_expires_at)


def issue(client, grant_type: str, scope: str, account=None, login: LoginContext | None = None,
          include_refresh: bool = False) -> tuple[dict, Token]:
    """Build the token response and its (unsaved) row."""
    config = current_app.config
    now = int(time.time())
    ttl = int(config["ACCESS_TOKEN_TTL"])
    jti = secrets.token_urlsafe(18)
    audience = client.meta.get("access_token_audience") or config["ISSUER"]
    claims = {"iss": config["ISSUER"], "sub": account.public_id if account else client.client_id,
              "aud": audience, "client_id": client.client_id, "iat": now, "exp": now + ttl, "jti": jti}
    if scope:
        claims["scope"] = scope
    if login:
        claims.update(auth_time=login.auth_time, acr=login.acr, amr=login.amr)
        if login.sid:
            claims["sid"] = login.sid
    token = {"access_token": sign(claims, config["DEFAULT_SIGNING_ALG"], "at+jwt"), "token_type": "Bearer",
             "expires_in": ttl}
    if scope:
        token["scope"] = scope
    row = Token(jti=jti, client_id=client.client_id, account_id=account.id if account else None,
                grant_type=grant_type, scope=scope or "", audience=audience, issued_at=now, expires_at=now + ttl)
    if login:
        row.auth_time, row.acr, row.amr, row.sid = login.auth_time, login.acr, " ".join(login.amr), login.sid
        row.family_id, row.family_expires_at = login.family_id, login.family_expires_at
        if include_refresh and now < login.family_expires_at:
            refresh = secrets.token_urlsafe(32)
            token["refresh_token"] = refresh
            row.refresh_hash = sha256(refresh)
            row.refresh_expires_at = min(now + int(config["REFRESH_TOKEN_TTL"]), login.family_expires_at)
    return token, row


_TOKEN_COLUMNS = tuple(c.key for c in Token.__table__.columns if c.key != "id")
_INSERT_TOKEN = Token.__table__.insert()


def save(row: Token) -> None:
    """Insert the row with one Core INSERT: the ORM unit of work costs more than the insert itself on this path."""
    db.session.execute(_INSERT_TOKEN, {key: getattr(row, key) for key in _TOKEN_COLUMNS})
    db.session.commit()
    observability.count_token(row.grant_type)


# authorization codes ---------------------------------------------------------------------------------------------

def save_code(code: str, record: dict) -> None:
    store().put("code:" + sha256(code), record, int(current_app.config["CODE_TTL"]))


# KEYS: the code, its "used" mark. Taking the code and leaving the mark is one atomic step, so a concurrent
# second presentation either wins or finds the mark (and the family to revoke); nothing falls in between.
_REDEEM = """
local record = redis.call('GETDEL', KEYS[1])
if record then
  redis.call('SET', KEYS[2], record, 'EX', tonumber(ARGV[1]))
  return {1, record}
end
local used = redis.call('GET', KEYS[2])
if used then return {2, used} end
return {0, false}
"""


def redeem_code(code: str) -> dict | None:
    """Take the code (atomically, once). A second presentation revokes what the first one obtained."""
    digest = sha256(code)
    outcome, raw = store().redis.eval(_REDEEM, 2, store().key("code:" + digest), store().key("code-used:" + digest),
                                      int(current_app.config["REFRESH_TOKEN_TTL"]))
    if outcome == 1:
        return json.loads(raw)
    if outcome == 2:
        record = json.loads(raw)
        revoke_family(record["family_id"])
        signals.emit(signals.TOKEN_REUSE_DETECTED, "refused", account_id=record["account_id"],
                     client_id=record["client_id"], kind="authorization_code")
    return None


def confirm_family_alive(family_id: str) -> None:
    """Called by the code's winner after its tokens are committed: honour a reuse seen meanwhile."""
    if store().exists("family-revoked:" + family_id):
        revoke_family(family_id)


# refresh tokens -------------------------------------------------------------------------------------------------

def find_refresh(refresh_token: str) -> Token | None:
    if not refresh_token or len(refresh_token) > 200:
        return None
    return db.session.scalar(select(Token).where(Token.refresh_hash == sha256(refresh_token)))


def claim_refresh(row: Token) -> bool:
    """Mark the refresh token used, atomically: exactly one of concurrent presentations gets True."""
    now = int(time.time())
    result = db.session.execute(
        update(Token).where(Token.id == row.id, Token.refresh_used_at.is_(None), Token.revoked_at.is_(None))
        .values(refresh_used_at=now))
    db.session.commit()
    return result.rowcount == 1


def refresh_usable(row: Token) -> bool:
    now = int(time.time())
    return (row.revoked_at is None and row.refresh_used_at is None and row.refresh_expires_at is not None
            and row.refresh_expires_at > now)


# revocation -----------------------------------------------------------------------------------------------------

def revoke_family(family_id: str) -> None:
    store().put("family-revoked:" + family_id, 1, int(current_app.config["REFRESH_FAMILY_TTL"]))
    db.session.execute(update(Token).where(Token.family_id == family_id, Token.revoked_at.is_(None))
                       .values(revoked_at=int(time.time())))
    db.session.commit()


def revoke(row: Token) -> None:
    if row.family_id and row.refresh_hash:
        revoke_family(row.family_id)  # RFC 7009 §2.1: a refresh token takes its grant's access tokens along
        return
    db.session.execute(update(Token).where(Token.id == row.id, Token.revoked_at.is_(None))
                       .values(revoked_at=int(time.time())))
    db.session.commit()


def revoke_access(row: Token) -> None:
    db.session.execute(update(Token).where(Token.id == row.id, Token.access_revoked_at.is_(None))
                       .values(access_revoked_at=int(time.time())))
    db.session.commit()


def revoke_account_tokens(account_id: int) -> None:
    """End every grant of the account (password reset or change): its refresh tokens and access tokens."""
    db.session.execute(update(Token).where(Token.account_id == account_id, Token.revoked_at.is_(None))
                       .values(revoked_at=int(time.time())))
    db.session.commit()


def applications_of_account(account_id: int) -> list[tuple[str, int]]:
    """The clients holding a live grant of the account: (client_id, when the latest token was issued)."""
    now = int(time.time())
    rows = db.session.execute(
        select(Token.client_id, func.max(Token.issued_at)).where(
            Token.account_id == account_id, Token.revoked_at.is_(None),
            or_(Token.expires_at > now, and_(Token.refresh_used_at.is_(None), Token.refresh_expires_at > now)))
        .group_by(Token.client_id).order_by(func.max(Token.issued_at).desc()))
    return [(client_id, issued_at) for client_id, issued_at in rows]


def revoke_account_client(account_id: int, client_id: str) -> None:
    db.session.execute(update(Token).where(Token.account_id == account_id, Token.client_id == client_id,
                                           Token.revoked_at.is_(None)).values(revoked_at=int(time.time())))
    db.session.commit()


def revoke_client_tokens(client_id: str) -> None:
    db.session.execute(update(Token).where(Token.client_id == client_id, Token.revoked_at.is_(None))
                       .values(revoked_at=int(time.time())))
    db.session.commit()


# access tokens --------------------------------------------------------------------------------------------------

def decode_access_token(value: str) -> dict | None:
    """Verify an access token we issued (signature, kid, typ, iss, exp); None when it is not one."""
    if not value or len(value) > 4096 or value.count(".") != 2:
        return None
    ring = keyring()
    try:
        token = jwt.decode(value, ring.verification_keys(), algorithms=VERIFY_ALGORITHMS)
    except (JoseError, ValueError, TypeError, KeyError):
        return None
    header, claims = token.header, token.claims
    if header.get("typ") != "at+jwt" or header.get("kid") in ring.revoked_kids:
        return None
    if claims.get("iss") != current_app.config["ISSUER"] or not isinstance(claims.get("jti"), str):
        return None
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp <= time.time():
        return None
    return claims


def find_by_jti(jti: str) -> Token | None:
    return db.session.scalar(select(Token).where(Token.jti == jti))


def active_access_token(value: str) -> tuple[dict, Token] | None:
    claims = decode_access_token(value)
    if claims is None:
        return None
    row = find_by_jti(claims["jti"])
    if row is None or row.revoked_at is not None or row.access_revoked_at is not None:
        return None
    return claims, row
