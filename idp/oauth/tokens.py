"""Issuing, finding and revoking tokens (SPEC §4; RFC 9068 JWT access tokens, RFC 6749 §4.1.2 and §10.4).

Access tokens are ES256 (or RS256) JWTs with ``typ: at+jwt`` and a ``jti``; their row keeps the SHA-256 of the
JWT, and userinfo, introspection, revocation and token exchange find them by it, as refresh tokens (random,
stored as SHA-256) are found: one indexed lookup, and a match proves the presented string is byte for byte a
token we issued, so our own endpoints need no signature check (resource servers verify the signature against the
JWKS). A revoked token or a token of a revoked key is refused. Those lookups read the row and its person with one
statement in autocommit (``idp.database``); tokens are inserted the same way.
Authorization codes live in Redis and are redeemed with GETDEL, so of N concurrent redemptions exactly one wins;
a loser marks the code's family revoked *before* revoking its rows, and the winner re-checks that mark *after*
committing, so the tokens from a reused code always end revoked.
"""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, fields

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from flask import current_app
from sqlalchemy import and_, bindparam, func, or_, select, update

from .. import database, observability, people, signals
from ..extensions import db
from ..keystore import keyring
from ..models import Account, Token
from ..store import store

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
VERIFY_ALGORITHMS = ["ES256", "RS256"]


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def sign(claims: dict, alg: str, typ: str) -> str:
    """A JWS compact serialization (RFC 7515 §7.1) of the claims, signed with the active key of ``alg`` and naming
    its ``kid``. Signed here with ``cryptography`` directly: joserfc's generic path costs as much again as the
    signature itself (issue 8); tests verify the result with joserfc and with independent libraries."""
    key = keyring().signing_key(alg)
    header = _b64(json.dumps({"alg": alg, "kid": key.kid, "typ": typ}, separators=(",", ":")).encode())
    signing_input = header + b"." + _b64(json.dumps(claims, separators=(",", ":")).encode())
    if alg == "ES256":  # RFC 7518 §3.4: R and S, 32 bytes each, not DER
        r, s = decode_dss_signature(key.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif alg == "RS256":
        signature = key.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise ValueError(f"unsupported signing algorithm {alg}")
    return (signing_input + b"." + _b64(signature)).decode()


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


def context_of(row) -> LoginContext:
    return LoginContext(auth_time=row.auth_time, acr=row.acr, amr=(row.amr or "").split(), sid=row.sid,
                        family_id=row.family_id, family_expires_at=row.family_expires_at)


@dataclass(slots=True)
class NewToken:
    """A ``tokens`` row about to be inserted, with the columns of ``Token`` (a test keeps them equal): a plain
    object, because the ORM's instrumentation costs more than the insert itself on the token endpoint."""
    jti: str
    access_hash: str
    client_id: str
    account_id: int | None
    grant_type: str
    scope: str
    audience: str | None
    issued_at: int
    expires_at: int
    revoked_at: int | None = None
    access_revoked_at: int | None = None
    refresh_hash: str | None = None
    refresh_expires_at: int | None = None
    refresh_used_at: int | None = None
    family_id: str | None = None
    family_expires_at: int | None = None
    sid: str | None = None
    auth_time: int | None = None
    acr: str | None = None
    amr: str | None = None


def issue(client, grant_type: str, scope: str, account=None, login: LoginContext | None = None,
          include_refresh: bool = False) -> tuple[dict, NewToken]:
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
    access_token = sign(claims, config["DEFAULT_SIGNING_ALG"], "at+jwt")
    token = {"access_token": access_token, "token_type": "Bearer", "expires_in": ttl}
    if scope:
        token["scope"] = scope
    row = NewToken(jti=jti, access_hash=sha256(access_token), client_id=client.client_id,
                   account_id=account.id if account else None, grant_type=grant_type, scope=scope or "",
                   audience=audience, issued_at=now, expires_at=now + ttl)
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
_INSERT_TOKEN = Token.__table__.insert().values({key: bindparam(key) for key in _TOKEN_COLUMNS})


def save(row: NewToken, also: list[tuple] = ()) -> None:
    """Insert the row with one INSERT in autocommit (the ORM unit of work costs more than the insert itself);
    with ``also`` (``(statement, params)`` pairs, e.g. ``audit.collected()`` events) in the same transaction and
    round trip.

    Unless ``DURABLE_TOKEN_ISSUE``, the commit does not wait for the disk (``database.execute(durable=False)``):
    a token lost with the last instant of a database crash is unknown afterwards, so it is refused everywhere —
    its client logs in again — and its audit event, written in the same transaction, goes with it. Revocations,
    refresh-token claims and rotations always wait."""
    params = {key: getattr(row, key) for key in _TOKEN_COLUMNS}
    durable = bool(current_app.config["DURABLE_TOKEN_ISSUE"])
    if also:
        database.execute_together([(_INSERT_TOKEN, params), *also], durable=durable)
    else:
        database.execute(_INSERT_TOKEN, params, durable=durable)
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


TAKEN_CODE = "idp.taken_code"  # environ key: a code this request has already taken, and what it held


def redeem_code(code: str, environ: dict | None = None) -> dict | None:
    """Take the code (atomically, once). A second presentation revokes what the first one obtained.

    With ``environ`` the outcome is kept in the request: ``idp.fastpaths`` takes the code first, and a request it
    then hands to Flask continues with what it took (taking again would find its own "used" mark)."""
    if environ is not None and TAKEN_CODE in environ and environ[TAKEN_CODE][0] == code:
        return environ[TAKEN_CODE][1]
    digest = sha256(code)
    s = store()
    outcome, raw = s.script(_REDEEM)(keys=[s.key("code:" + digest), s.key("code-used:" + digest)],
                                     args=[int(current_app.config["REFRESH_TOKEN_TTL"])])
    record = json.loads(raw) if outcome == 1 else None
    if outcome == 2:
        used = json.loads(raw)
        revoke_family(used["family_id"])
        signals.emit(signals.TOKEN_REUSE_DETECTED, "refused", account_id=used["account_id"],
                     client_id=used["client_id"], kind="authorization_code")
    if environ is not None:
        environ[TAKEN_CODE] = (code, record)
    return record


def confirm_family_alive(family_id: str) -> None:
    """Called by the code's winner after its tokens are committed: honour a reuse seen meanwhile."""
    if store().exists("family-revoked:" + family_id):
        revoke_family(family_id)


# refresh tokens -------------------------------------------------------------------------------------------------

_t = Token.__table__
_CLAIM_REFRESH = (update(_t).where(_t.c.id == bindparam("row_id"), _t.c.refresh_used_at.is_(None),
                                   _t.c.revoked_at.is_(None)).values(refresh_used_at=bindparam("now")))
_REVOKE_FAMILY = (update(_t).where(_t.c.family_id == bindparam("family_id"), _t.c.revoked_at.is_(None))
                  .values(revoked_at=bindparam("now")))
_REVOKE_ROW = update(_t).where(_t.c.id == bindparam("row_id"), _t.c.revoked_at.is_(None)).values(
    revoked_at=bindparam("now"))
_REVOKE_ACCESS = update(_t).where(_t.c.id == bindparam("row_id"), _t.c.access_revoked_at.is_(None)).values(
    access_revoked_at=bindparam("now"))


def _rotate_refresh_statement():
    """PostgreSQL: mark the old refresh token used and insert its successor in one statement (a data-modifying
    CTE): the INSERT selects from what the UPDATE claimed, so both happen or neither, in one round trip and one
    commit. Of concurrent presentations, the first holds the row; the others re-check it and claim nothing."""
    claimed = (update(_t).where(_t.c.id == bindparam("row_id"), _t.c.refresh_used_at.is_(None),
                                _t.c.revoked_at.is_(None))
               .values(refresh_used_at=bindparam("now")).returning(_t.c.id).cte("claimed"))
    successor = select(*(bindparam(key, type_=_t.c[key].type) for key in _TOKEN_COLUMNS)).select_from(claimed)
    return _t.insert().from_select(list(_TOKEN_COLUMNS), successor)


_ROTATE_REFRESH = _rotate_refresh_statement()


def rotate_refresh(row, successor: NewToken) -> bool:
    """Refresh rotation (RFC 6749 §6): mark ``row`` used and store ``successor``; False when another presentation
    won (nothing stored). One atomic statement on PostgreSQL; on SQLite the conditional UPDATE, then the INSERT."""
    params = {key: getattr(successor, key) for key in _TOKEN_COLUMNS}
    if db.engine.dialect.name == "postgresql":
        won = database.execute(_ROTATE_REFRESH, {**params, "row_id": row.id, "now": int(time.time())}) == 1
    else:
        won = claim_refresh(row)
        if won:
            database.execute(_INSERT_TOKEN, params)
    if won:
        observability.count_token(successor.grant_type)
    return won


def claim_refresh(row) -> bool:
    """Mark the refresh token used, atomically (one UPDATE): exactly one of concurrent presentations gets True."""
    return database.execute(_CLAIM_REFRESH, {"row_id": row.id, "now": int(time.time())}) == 1


def refresh_usable(row) -> bool:
    now = int(time.time())
    return (row.revoked_at is None and row.refresh_used_at is None and row.refresh_expires_at is not None
            and row.refresh_expires_at > now)


# revocation -----------------------------------------------------------------------------------------------------

def revoke_family(family_id: str) -> None:
    store().put("family-revoked:" + family_id, 1, int(current_app.config["REFRESH_FAMILY_TTL"]))
    database.execute(_REVOKE_FAMILY, {"family_id": family_id, "now": int(time.time())})


def revoke(row) -> None:
    if row.family_id and row.refresh_hash:
        revoke_family(row.family_id)  # RFC 7009 §2.1: a refresh token takes its grant's access tokens along
        return
    database.execute(_REVOKE_ROW, {"row_id": row.id, "now": int(time.time())})


def revoke_access(row) -> None:
    database.execute(_REVOKE_ACCESS, {"row_id": row.id, "now": int(time.time())})


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


# finding tokens: the row and its person in one statement ----------------------------------------------------

@dataclass(frozen=True, slots=True)
class FoundToken:
    """A token row (the columns of ``Token`` that endpoints read) with its person, or ``None`` for a client's."""
    id: int
    jti: str
    client_id: str
    account_id: int | None
    grant_type: str
    scope: str
    audience: str | None
    issued_at: int
    expires_at: int
    revoked_at: int | None
    access_revoked_at: int | None
    refresh_hash: str | None
    refresh_expires_at: int | None
    refresh_used_at: int | None
    family_id: str | None
    family_expires_at: int | None
    sid: str | None
    auth_time: int | None
    acr: str | None
    amr: str | None
    person: people.Person | people.Holder | None  # as much as was asked for (``read``)
    public_id: str | None = None  # the account's public id (the token's ``sub``); None for a client's token

    def check_client(self, client) -> bool:
        return self.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.scope

    def access_active(self) -> bool:
        return self.revoked_at is None and self.access_revoked_at is None and self.expires_at > time.time()


_FOUND_COLUMNS = tuple(field.name for field in fields(FoundToken)
                       if field.name not in ("person", "public_id"))  # selected in order


def _found_select(key_column):
    """The token and its person (account, customer, SIMs): one row per SIM."""
    tokens_ = Token.__table__
    return (select(*(tokens_.c[name] for name in _FOUND_COLUMNS), *people.COLUMNS)
            .select_from(people.joined_to(tokens_, tokens_.c.account_id))
            .where(key_column == bindparam("digest"))
            .order_by(people.ORDER_BY))


def _brief_select(key_column, account_columns=(Account.__table__.c.public_id,)):
    """The token and a few columns of its account: its public id only, what introspection and revocation read (a
    third cheaper than the person), or ``people.HOLDER_COLUMNS``."""
    tokens_, accounts = Token.__table__, Account.__table__
    return (select(*(tokens_.c[name] for name in _FOUND_COLUMNS), *account_columns)
            .select_from(tokens_.outerjoin(accounts, accounts.c.id == tokens_.c.account_id))
            .where(key_column == bindparam("digest")))


PERSON, HOLDER, BRIEF = "person", "holder", "brief"  # how much of a token's account ``find_*`` reads


def _selects(key_column) -> dict:
    return {PERSON: _found_select(key_column), HOLDER: _brief_select(key_column, people.HOLDER_COLUMNS),
            BRIEF: _brief_select(key_column)}


_BY_ACCESS_HASH = _selects(Token.__table__.c.access_hash)
_BY_REFRESH_HASH = _selects(Token.__table__.c.refresh_hash)
_N = len(_FOUND_COLUMNS)


def _found(statements: dict, value: str, read: str) -> FoundToken | None:
    rows = database.fetch(statements[read], {"digest": sha256(value)})
    if not rows:
        return None
    row = rows[0]
    if read == BRIEF:
        return FoundToken(*row[:_N], person=None, public_id=row[_N])
    if read == HOLDER:
        holder = people.Holder(*row[_N:]) if row[_N] is not None else None
        return FoundToken(*row[:_N], person=holder, public_id=holder.public_id if holder is not None else None)
    person = people.from_rows(rows, _N)
    return FoundToken(*row[:_N], person=person, public_id=person.public_id if person is not None else None)


def _header(value: str) -> dict:
    segment = value.split(".", 1)[0]
    try:
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except ValueError:
        return {}


def find_access(value: str, read: str = PERSON) -> FoundToken | None:
    """An access token we issued (active or not), found by its hash; ``None`` for anything else and for the
    tokens of a revoked signing key. ``read``: its person (``PERSON``, for claims), its ``HOLDER`` (who, and
    whether active) or its public id only (``BRIEF``)."""
    if not value or len(value) > 4096 or value.count(".") != 2:
        return None
    found = _found(_BY_ACCESS_HASH, value, read)
    if found is not None:
        ring = keyring()
        ring.refresh()
        if ring.revoked_kids and _header(value).get("kid") in ring.revoked_kids:
            return None
    return found


def find_refresh_token(value: str, read: str = PERSON) -> FoundToken | None:
    """A refresh token we issued (used, expired or not), found by its hash; ``read`` as for ``find_access``."""
    if not value or len(value) > 200:
        return None
    return _found(_BY_REFRESH_HASH, value, read)
