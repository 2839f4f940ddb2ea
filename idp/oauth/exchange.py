"""Token exchange (RFC 8693) for the My3 app and the Selfcare APIs (issue 6; security notes §5.2).

A confidential client (the My3 backend, the Wind Tre Business backend, a Selfcare API calling another one)
holds a token for a person and needs one for another audience without a new login. It POSTs to /token::

    grant_type=urn:ietf:params:oauth:grant-type:token-exchange
    subject_token=…  subject_token_type=urn:ietf:params:oauth:token-type:access_token|id_token|jwt
    [actor_token=…  actor_token_type=…]  [audience=… | resource=…]  [scope=…]
    [requested_token_type=urn:ietf:params:oauth:token-type:access_token]

and gets an RFC 9068 access token (``typ: at+jwt``) with ``aud`` = the requested audience or resource,
``client_id`` = the exchanging client, ``sub`` = the person's account, ``act`` when an actor token was
presented.

**Subject tokens.**

- Our own **access tokens**: found by their hash (byte for byte one we issued, of a key not revoked), not
  expired, not revoked, through ``tokens.find_access``. They must have been issued to the exchanging
  client, name it in their ``aud``, or have been issued to a client its policy names (``subject_clients``). They must represent a
  person: a ``client_credentials`` token is refused as a subject. **They may be exchanged more than once**
  while they live: the client already presents that bearer token to every resource of its audience, so a
  one-time rule would protect nothing, while My3 legitimately needs tokens for several Selfcare APIs from one
  login; each exchange is audited and yields a separately revocable row.
- Our own **ID tokens**: signature (kid not revoked), ``typ: JWT``, ``iss``, ``exp``; ``aud`` must be the
  exchanging client or a client its policy names. An ID token is **single use** as a subject token (its
  ``jti``, or the hash of the whole token since ours carry none, is remembered in Redis until it expires).
  Its scope is the one its claims prove (``phone_number`` → ``phone`` …).
- **JWTs of trusted external issuers** (``EXCHANGE_TRUSTED_ISSUERS``, for example the consumer-side Area
  Clienti 3 IdP): signature through the issuer's JWKS (fetched over HTTP, cached, refetched when an unknown
  ``kid`` appears but at most once per ``jwks_refetch_interval``), ``alg`` from the issuer's list, ``iss``,
  ``aud`` (the configured audience), ``exp`` (and ``nbf``/``iat``, 30 s leeway), a lifetime no longer than
  ``max_lifetime``; **single use** (``jti``, or the token's hash, in Redis). The person is found by
  ``subject_claim``:

  - ``phone_number``: with ``phone_number_verified`` exactly ``true``, the active account whose registered
    line or associated SIM (an active line) it is;
  - ``sub``: a claim mapping, the ``sub`` *is* our account's public id (a partner issuer that federates our
    accounts). A link table was not built: it needs a schema change and an account-linking journey, and the
    consumer-side case is served by the verified phone number.

  External scopes mean nothing here: the issuer's ``scopes`` entry stands in for the subject token's scope.
  ``acr`` is carried over literally unless the issuer's ``acr_map`` translates it to one of ours.

**Actor tokens** (delegation): the same kinds, allowed per client (``actor_token_types``); our access token
must have been issued to the exchanging client (typically its own ``client_credentials`` token), our ID token
must name it in ``aud``. The result carries ``act: {"sub": …}`` (plus ``iss`` for an external actor), nesting
the subject token's own ``act``, which is never dropped. A subject token with ``may_act`` needs an actor token
matching every member of it. Actor tokens are not single use (an actor presents its own credential again).

**Policy per client** (``meta["token_exchange"]``, set by ``flask --app wsgi idp clients exchange-policy``),
deny by default: no policy → ``unauthorized_client``. It lists the subject (and actor) token types and the
issuers the client may present, the audiences/resources it may request, the scopes, the other clients whose
tokens it may exchange, and whether a refresh token may be issued. Public clients cannot have one: the
exchange runs from a backend.

**Result rules.** The scope only narrows: never more than the subject token's scope ∩ the policy (a requested
scope must lie inside that, else ``invalid_scope``; absent, it is all of it). ``acr``, ``amr`` and
``auth_time`` are copied from the subject token; nothing in the request, nor the actor, can raise them. The
lifetime is ``EXCHANGE_TOKEN_TTL`` (≤ 900 s, ≤ ``ACCESS_TOKEN_TTL``), never past the subject token's expiry.
One target per exchange. A refresh token only when the policy says so, the client is registered for the
refresh grant and the exchange is not delegated (``act`` is bound to the actor token presented now);
refreshing it keeps the audience, the exchange lifetime and the carried-over assurance.

**Errors** as RFC 8693 §2.2.2 and RFC 6749 §5.2 name them: ``invalid_request`` (malformed, or a subject or
actor token invalid or unacceptable by policy), ``invalid_target``, ``invalid_scope``,
``unauthorized_client``, ``invalid_client``; ``unsupported_grant_type`` comes from Authlib. Every exchange,
granted or refused, is an audit event (``token.exchanged`` / ``token.exchange_refused``); exchanged tokens are
rows of the ``tokens`` table, so revocation and introspection work on them.
"""
from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (InvalidRequestError, InvalidScopeError, UnauthorizedClientError, grants,
                                    scope_to_list)
from flask import current_app
from flask import request as flask_request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import select

from .. import msisdn, signals
from ..extensions import db
from ..keystore import keyring
from ..models import Account, AccountLine, Line
from ..people import Holder, Person
from ..store import store
from . import tokens
from .grants import CONFIDENTIAL_AUTH_METHODS
from .grants import RefreshTokenGrant as _RefreshTokenGrant
from .scopes import SCOPES

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPES = {"access_token": ACCESS_TOKEN, "id_token": ID_TOKEN, "jwt": JWT}
SHORT_NAMES = {urn: short for short, urn in TOKEN_TYPES.items()}
POLICY_KEY = "token_exchange"
SELF = "self"  # in a policy's issuers: this IdP, whatever its ISSUER is
LEEWAY = 30  # seconds of clock skew allowed on external tokens' exp, nbf, iat
MAX_TOKEN_LENGTH = 8192
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_SINGLE_PARAMETERS = ("subject_token", "subject_token_type", "actor_token", "actor_token_type",
                      "requested_token_type", "scope")


class InvalidTargetError(OAuth2Error):
    """RFC 8693 §2.2.2: the audience or resource is unknown or not allowed."""
    error = "invalid_target"
    status_code = 400


# policy -----------------------------------------------------------------------------------------------------

class PolicyError(ValueError):
    """An exchange policy that cannot be stored."""


@dataclass(frozen=True)
class Policy:
    subject_token_types: tuple[str, ...]
    issuers: tuple[str, ...]
    audiences: tuple[str, ...]
    scopes: tuple[str, ...]
    actor_token_types: tuple[str, ...] = ()
    subject_clients: tuple[str, ...] = ()
    refresh: bool = False

    @classmethod
    def from_meta(cls, meta: dict) -> Policy | None:
        data = meta.get(POLICY_KEY)
        if not isinstance(data, dict):
            return None
        def listed(name):
            return tuple(data.get(name) or ())
        return cls(subject_token_types=listed("subject_token_types"), issuers=listed("issuers"),
                   audiences=listed("audiences"), scopes=listed("scopes"),
                   actor_token_types=listed("actor_token_types"), subject_clients=listed("subject_clients"),
                   refresh=bool(data.get("refresh")))

    def as_meta(self) -> dict:
        return {"subject_token_types": list(self.subject_token_types), "issuers": list(self.issuers),
                "audiences": list(self.audiences), "scopes": list(self.scopes),
                "actor_token_types": list(self.actor_token_types),
                "subject_clients": list(self.subject_clients), "refresh": self.refresh}

    def allows_issuer(self, issuer: str) -> bool:
        ours = current_app.config["ISSUER"]
        return any(issuer == (ours if allowed == SELF else allowed) for allowed in self.issuers)


def policy_of(client) -> Policy | None:
    return Policy.from_meta(client.meta or {})


def _token_types(values, what: str) -> list[str]:
    out = []
    for value in values:
        urn = TOKEN_TYPES.get(value, value)
        if urn not in SHORT_NAMES:
            raise PolicyError(f"{what} must be access_token, id_token or jwt (or their URNs), not {value!r}")
        if urn not in out:
            out.append(urn)
    return out


def _unique(values) -> list[str]:
    out = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def set_policy(client_id: str, *, subject_token_types, issuers, audiences, scopes, actor_token_types=(),
               subject_clients=(), refresh: bool = False) -> dict:
    """Store the client's exchange policy (replacing any previous one), allow it the grant; return it."""
    from . import clients as registry
    row = registry.get(client_id)
    if row is None:
        raise PolicyError(f"no client {client_id}")
    meta = dict(row.meta or {})
    if row.disabled:
        raise PolicyError(f"client {client_id} is disabled")
    if meta.get("token_endpoint_auth_method", "client_secret_basic") == "none":
        raise PolicyError("a public client cannot exchange tokens: run the exchange from a confidential "
                          "backend")
    subject_types = _token_types(subject_token_types, "--subject-token-type")
    actor_types = _token_types(actor_token_types, "--actor-token-type")
    if not subject_types:
        raise PolicyError("name at least one --subject-token-type")
    trusted = {entry["issuer"] for entry in current_app.config["EXCHANGE_TRUSTED_ISSUERS"]}
    ours = current_app.config["ISSUER"]
    issuer_list = _unique(SELF if value == ours else value for value in issuers)
    if not issuer_list:
        raise PolicyError("name at least one --issuer (self for this IdP, or a trusted external issuer)")
    for issuer in issuer_list:
        if issuer != SELF and issuer not in trusted:
            raise PolicyError(f"{issuer} is neither self nor an issuer of EXCHANGE_TRUSTED_ISSUERS")
    audience_list = _unique(audiences)
    if not audience_list:
        raise PolicyError("name at least one --audience (logical name or resource URI)")
    for audience in audience_list:
        if not audience or len(audience) > 500 or any(ch.isspace() for ch in audience):
            raise PolicyError(f"an audience is a non-empty name without spaces, at most 500 characters: "
                              f"{audience!r}")
    scope_list = _unique(scopes)
    if not scope_list:
        raise PolicyError("name at least one --scope")
    for scope in scope_list:
        if scope == "openid":
            raise PolicyError("openid is not an API scope: an exchange issues access tokens, never a login")
        if scope not in SCOPES:
            raise PolicyError(f"unknown scope {scope}")
    client_list = _unique(subject_clients)
    for other in client_list:
        if registry.get(other) is None:
            raise PolicyError(f"no client {other} (--subject-client)")
    grant_types = list(meta.get("grant_types", ["authorization_code"]))
    if refresh and "refresh_token" not in grant_types:
        raise PolicyError("--refresh needs a client registered for the refresh_token grant")
    policy = Policy(tuple(subject_types), tuple(issuer_list), tuple(audience_list), tuple(scope_list),
                    tuple(actor_types), tuple(client_list), bool(refresh))
    if GRANT not in grant_types:
        grant_types.append(GRANT)
    meta["grant_types"] = grant_types
    meta[POLICY_KEY] = policy.as_meta()
    row.meta = meta  # a new dict: SQLAlchemy sees the change
    db.session.commit()
    current_app.extensions["idp.clients"].forget(client_id)
    return policy.as_meta()


def clear_policy(client_id: str) -> None:
    """Take the exchange grant away from the client (deny by default again)."""
    from . import clients as registry
    row = registry.get(client_id)
    if row is None:
        raise PolicyError(f"no client {client_id}")
    meta = dict(row.meta or {})
    meta.pop(POLICY_KEY, None)
    meta["grant_types"] = [g for g in meta.get("grant_types", ["authorization_code"]) if g != GRANT]
    row.meta = meta
    db.session.commit()
    current_app.extensions["idp.clients"].forget(client_id)


# trusted external issuers and their keys --------------------------------------------------------------------

@dataclass(frozen=True)
class TrustedIssuer:
    """One entry of ``EXCHANGE_TRUSTED_ISSUERS`` (checked by ``config.validate``)."""
    issuer: str
    audiences: tuple[str, ...]
    subject_claim: str
    jwks_uri: str | None = None
    jwks: dict | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    scopes: tuple[str, ...] = ()
    acr_map: dict = field(default_factory=dict, hash=False)
    max_lifetime: int = 86400
    jwks_max_age: int = 3600
    jwks_refetch_interval: float = 10.0

    @classmethod
    def from_config(cls, entry: dict) -> TrustedIssuer:
        audience = entry["audience"]
        return cls(issuer=entry["issuer"],
                   audiences=(audience,) if isinstance(audience, str) else tuple(audience),
                   subject_claim=entry["subject_claim"], jwks_uri=entry.get("jwks_uri"),
                   jwks=entry.get("jwks"),
                   algorithms=tuple(entry.get("algorithms") or ("RS256", "ES256")),
                   scopes=tuple(entry.get("scopes") or ()), acr_map=dict(entry.get("acr_map") or {}),
                   max_lifetime=int(entry.get("max_lifetime", 86400)),
                   jwks_max_age=int(entry.get("jwks_max_age", 3600)),
                   jwks_refetch_interval=float(entry.get("jwks_refetch_interval", 10)))


def _public_key_set(document) -> KeySet:
    """The signature keys of a JWKS document: asymmetric, with a kid, not for encryption."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    usable = [k for k in document["keys"] if isinstance(k, dict) and k.get("kty") in ("RSA", "EC", "OKP")
              and isinstance(k.get("kid"), str) and k.get("use", "sig") == "sig"]
    return KeySet.import_key_set({"keys": usable})


class RemoteKeys:
    """An issuer's JWKS as one worker knows it: fetched over HTTP when first needed, kept ``max_age`` seconds,
    refetched when a token names an unknown ``kid`` — but at most once per ``refetch_interval`` seconds, so a
    flood of made-up ``kid`` values costs the issuer one request per interval. A failed fetch keeps the
    previous keys."""

    def __init__(self, uri: str, max_age: float, refetch_interval: float, timeout: float = 5.0):
        self.uri, self.max_age, self.refetch_interval, self.timeout = uri, max_age, refetch_interval, timeout
        self._lock = threading.Lock()
        self._keys: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetched_at = 0.0
        self._attempted_at: float | None = None

    def _fetch(self) -> None:
        try:
            response = requests.get(self.uri, timeout=self.timeout, allow_redirects=False,
                                    headers={"Accept": "application/jwk-set+json, application/json"})
            if response.status_code != 200 or len(response.content) > 262144:
                raise ValueError(f"HTTP {response.status_code}, {len(response.content)} bytes")
            keys = _public_key_set(response.json())
        except (requests.RequestException, ValueError, JoseError, TypeError, KeyError) as exc:
            current_app.logger.warning("could not fetch the JWKS %s: %s", self.uri, exc)
            return
        self._keys = keys
        self._kids = frozenset(k.kid for k in keys.keys)
        self._fetched_at = time.monotonic()

    def lookup(self, kid: str) -> KeySet | None:
        """The key set if it has ``kid`` (after a refetch when allowed), else None."""
        with self._lock:
            now = time.monotonic()
            fresh = self._keys is not None and now - self._fetched_at < self.max_age
            if not (fresh and kid in self._kids):
                if self._attempted_at is None or now - self._attempted_at >= self.refetch_interval:
                    self._attempted_at = now
                    self._fetch()
            return self._keys if self._keys is not None and kid in self._kids else None


class InlineKeys:
    def __init__(self, document: dict):
        self._keys = _public_key_set(document)
        self._kids = frozenset(k.kid for k in self._keys.keys)

    def lookup(self, kid: str) -> KeySet | None:
        return self._keys if kid in self._kids else None


class _Registry:
    """The trusted issuers of one app and their key caches, built at first use."""

    def __init__(self, entries: list[dict]):
        self.issuers = {e["issuer"]: TrustedIssuer.from_config(e) for e in entries}
        self._keys: dict[str, RemoteKeys | InlineKeys] = {}
        self._lock = threading.Lock()

    def keys(self, issuer: TrustedIssuer):
        with self._lock:
            found = self._keys.get(issuer.issuer)
            if found is None:
                found = InlineKeys(issuer.jwks) if issuer.jwks is not None else \
                    RemoteKeys(issuer.jwks_uri, issuer.jwks_max_age, issuer.jwks_refetch_interval)
                self._keys[issuer.issuer] = found
            return found


_registry_lock = threading.Lock()


def _registry() -> _Registry:
    found = current_app.extensions.get("idp.exchange")
    if found is None:
        with _registry_lock:
            found = current_app.extensions.get("idp.exchange")
            if found is None:
                found = current_app.extensions["idp.exchange"] = _Registry(
                    list(current_app.config["EXCHANGE_TRUSTED_ISSUERS"]))
    return found


# presented tokens -------------------------------------------------------------------------------------------

@dataclass
class Assurance:
    """How and when the person authenticated, as the subject token says: copied, never raised."""
    auth_time: int | None
    acr: str | None
    amr: list[str]
    sid: str | None = None


@dataclass
class Presented:
    """A subject or actor token that passed its checks."""
    token_type: str
    issuer: str
    claims: dict
    identity: dict  # sub, iss (and client_id) of whoever the token stands for: matched against may_act
    account: Account | Holder | Person | None = None  # our access tokens: their Holder (read with them)
    scope: set[str] = field(default_factory=set)
    assurance: Assurance | None = None
    expires_at: int = 0
    replay_key: str | None = None
    family_expires_at: int | None = None


def _bad(description: str) -> InvalidRequestError:
    return InvalidRequestError(description)


def _segment(segment: str):
    if len(segment) % 4 == 1 or not _BASE64URL.fullmatch(segment):
        raise ValueError("not base64url")
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def _peek(value: str, role: str) -> tuple[dict, dict]:
    """Header and claims of a compact JWS (RFC 7515 §7.1), unverified: only to route it to the right checks (our
    own access tokens are then found by their hash, anything else is verified by its issuer's keys)."""
    if not value or len(value) > MAX_TOKEN_LENGTH or value.count(".") != 2:
        raise _bad(f"The {role} token is not a signed JWT.")
    header_segment, payload_segment, signature = value.split(".")
    try:
        header, claims = _segment(header_segment), _segment(payload_segment)
    except (ValueError, UnicodeError):  # json.JSONDecodeError and binascii.Error are ValueErrors
        raise _bad(f"The {role} token is not a signed JWT.") from None
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str) or not signature \
            or not _BASE64URL.fullmatch(signature):
        raise _bad(f"The {role} token is not a signed JWT.")
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str):
        raise _bad(f"The {role} token has no issuer.")
    return header, claims


def _audiences(claims: dict) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [a for a in aud if isinstance(a, str)]
    return []


def _number(value) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _implied_scope(claims: dict) -> set[str]:
    """The scopes an ID token of ours proves were granted (OIDC Core §5.4 claims by scope)."""
    scope = {"openid"}
    if "phone_number" in claims:
        scope.add("phone")
    if "email" in claims:
        scope.add("email")
    if "role" in claims or "customer_code" in claims:
        scope.add("profile")
    if "lines" in claims:
        scope.add("lines")
    return scope


def _replay_key(issuer: str, claims: dict, value: str) -> str:
    jti = claims.get("jti")
    what = "jti:" + tokens.sha256(jti) if isinstance(jti, str) and jti else "token:" + tokens.sha256(value)
    return f"exchange-used:{tokens.sha256(issuer)[:32]}:{what}"


def _active_account(account: Account | Holder | Person | None, role: str) -> Account | Holder | Person:
    if account is None or not account.is_active:
        raise _bad(f"The {role} token's person has no active account here.")
    return account


def _own_access_token(value: str, claims: dict, role: str, client, policy: Policy) -> Presented:
    """One of our access tokens, usable now (``claims``: its payload; the hash match vouches for it)."""
    row = tokens.find_access(value, tokens.HOLDER)
    if row is None or not row.access_active():
        raise _bad(f"The {role} token is invalid, expired or revoked.")
    issued_to = claims.get("client_id")
    account = row.person  # who holds it and whether still active, read with the token in the same statement
    if role == "actor":
        if issued_to != client.client_id:
            raise _bad("The actor token was not issued to this client.")
        identity = {"sub": claims["sub"], "iss": claims["iss"], "client_id": issued_to}
        if account is not None:
            _active_account(account, role)
        return Presented(ACCESS_TOKEN, claims["iss"], claims, identity, expires_at=row.expires_at)
    if not (issued_to == client.client_id or client.client_id in _audiences(claims)
            or issued_to in policy.subject_clients):
        raise _bad("The subject token was not issued to this client nor to a client its policy names.")
    if account is None:
        raise _bad("The subject token does not represent a person (client credentials).")
    account = _active_account(account, role)
    return Presented(ACCESS_TOKEN, claims["iss"], claims, {"sub": claims["sub"], "iss": claims["iss"]},
                     account=account, scope=set((row.scope or "").split()),
                     assurance=Assurance(row.auth_time, row.acr, (row.amr or "").split(), row.sid),
                     expires_at=row.expires_at, family_expires_at=row.family_expires_at)


def _own_id_token(value: str, role: str, client, policy: Policy) -> Presented:
    ring = keyring()
    try:
        token = jwt.decode(value, ring.verification_keys(), algorithms=tokens.VERIFY_ALGORITHMS)
    except (JoseError, ValueError, TypeError, KeyError):
        raise _bad(f"The {role} token's signature is not ours.") from None
    header, claims = token.header, token.claims
    now = time.time()
    if header.get("typ") != "JWT" or header.get("kid") in ring.revoked_kids:
        raise _bad(f"The {role} token is not one of our ID tokens.")
    exp = _number(claims.get("exp"))
    if claims.get("iss") != current_app.config["ISSUER"] or exp is None \
            or not isinstance(claims.get("sub"), str):
        raise _bad(f"The {role} token is not one of our ID tokens.")
    if exp <= now:
        raise _bad(f"The {role} token has expired.")
    allowed = {client.client_id} if role == "actor" else {client.client_id, *policy.subject_clients}
    if not allowed.intersection(_audiences(claims)):
        raise _bad(f"The {role} ID token was not issued to this client nor to a client its policy names.")
    account = db.session.scalar(select(Account).where(Account.public_id == claims["sub"]))
    identity = {"sub": claims["sub"], "iss": claims["iss"]}
    if role == "actor":
        _active_account(account, role)
        return Presented(ID_TOKEN, claims["iss"], claims, identity, expires_at=int(exp))
    amr = claims.get("amr") if isinstance(claims.get("amr"), list) else []
    return Presented(ID_TOKEN, claims["iss"], claims, identity, account=_active_account(account, role),
                     scope=_implied_scope(claims),
                     assurance=Assurance(claims.get("auth_time"), claims.get("acr"), [str(a) for a in amr],
                                         claims.get("sid") if isinstance(claims.get("sid"), str) else None),
                     expires_at=int(exp), replay_key=_replay_key(claims["iss"], claims, value))


def _account_by_phone(number: str) -> Account | None:
    return db.session.scalar(
        select(Account).join(AccountLine, AccountLine.account_id == Account.id)
        .join(Line, Line.id == AccountLine.line_id)
        .where(Line.msisdn == number, Line.status == "active", Account.status == "active"))


def _external_assurance(claims: dict, issuer: TrustedIssuer, now: float) -> Assurance:
    auth_time = claims.get("auth_time")
    if auth_time is not None and (_number(auth_time) is None or auth_time > now + LEEWAY):
        raise _bad("The subject token's auth_time is not valid.")
    acr = claims.get("acr")
    if acr is not None:
        if not isinstance(acr, str):
            raise _bad("The subject token's acr is not valid.")
        acr = issuer.acr_map.get(acr, acr)
        if len(acr) > 64:
            raise _bad("The subject token's acr is not valid.")
    amr = claims.get("amr", [])
    if not isinstance(amr, list) or not all(isinstance(a, str) for a in amr) or len(" ".join(amr)) > 200:
        raise _bad("The subject token's amr is not valid.")
    return Assurance(int(auth_time) if auth_time is not None else None, acr, list(amr), None)


def _external_token(value: str, header: dict, role: str, issuer: TrustedIssuer, token_type: str) -> Presented:
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in issuer.algorithms:
        raise _bad(f"The {role} token's algorithm is not accepted for its issuer.")
    if not isinstance(kid, str) or not kid:
        raise _bad(f"The {role} token's header has no kid.")
    keys = _registry().keys(issuer).lookup(kid)
    if keys is None:
        raise _bad(f"The {role} token is signed with a key its issuer does not publish.")
    try:
        claims = jwt.decode(value, keys, algorithms=[alg]).claims
    except (JoseError, ValueError, TypeError, KeyError):
        raise _bad(f"The {role} token's signature is not valid.") from None
    now = time.time()
    exp, nbf, iat = _number(claims.get("exp")), claims.get("nbf"), claims.get("iat")
    if claims.get("iss") != issuer.issuer:
        raise _bad(f"The {role} token's issuer does not match.")
    if not set(issuer.audiences).intersection(_audiences(claims)):
        raise _bad(f"The {role} token was not issued for this audience.")
    if exp is None or exp + LEEWAY <= now:
        raise _bad(f"The {role} token has expired.")
    if exp - now > issuer.max_lifetime:
        raise _bad(f"The {role} token lives longer than its issuer is trusted for.")
    for name, moment in (("nbf", nbf), ("iat", iat)):
        if moment is not None and (_number(moment) is None or moment > now + LEEWAY):
            raise _bad(f"The {role} token's {name} is in the future.")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise _bad(f"The {role} token has no subject.")
    identity = {"sub": claims["sub"], "iss": issuer.issuer}
    if role == "actor":
        return Presented(token_type, issuer.issuer, claims, identity, expires_at=int(exp))
    if issuer.subject_claim == "phone_number":
        number = claims.get("phone_number")
        if claims.get("phone_number_verified") is not True or not isinstance(number, str):
            raise _bad("The subject token has no verified phone_number.")
        normalised = msisdn.try_normalise(number)
        account = _account_by_phone(normalised) if normalised else None
    else:
        account = db.session.scalar(select(Account).where(Account.public_id == claims["sub"]))
    return Presented(token_type, issuer.issuer, claims, identity, account=_active_account(account, role),
                     scope=set(issuer.scopes), assurance=_external_assurance(claims, issuer, now),
                     expires_at=int(exp), replay_key=_replay_key(issuer.issuer, claims, value))


def present(value: str | None, token_type: str | None, role: str, client, policy: Policy) -> Presented:
    """Check a subject or actor token against its issuer and the client's policy."""
    if not value:
        raise _bad(f"Missing '{role}_token'.")
    if not token_type:
        raise _bad(f"Missing '{role}_token_type'.")
    if token_type not in SHORT_NAMES:
        raise _bad(f"Unsupported '{role}_token_type'.")
    allowed_types = policy.subject_token_types if role == "subject" else policy.actor_token_types
    if token_type not in allowed_types:
        raise _bad(f"This client may not present {SHORT_NAMES[token_type]} {role} tokens.")
    header, unverified = _peek(value, role)
    issuer = unverified["iss"]
    if not policy.allows_issuer(issuer):
        raise _bad(f"This client may not present {role} tokens of that issuer.")
    if issuer == current_app.config["ISSUER"]:
        if token_type == ACCESS_TOKEN:
            return _own_access_token(value, unverified, role, client, policy)
        if token_type == ID_TOKEN:
            return _own_id_token(value, role, client, policy)
        raise _bad(f"Present our own tokens as access_token or id_token, not as jwt ({role} token).")
    trusted = _registry().issuers.get(issuer)
    if trusted is None:
        raise _bad(f"The {role} token's issuer is not trusted.")
    return _external_token(value, header, role, trusted, token_type)


def _may_act(subject: Presented, actor: Presented | None) -> None:
    """RFC 8693 §4.4: a subject token naming who may act for it is used only by that actor."""
    may_act = subject.claims.get("may_act")
    if may_act is None:
        return
    if not isinstance(may_act, dict) or not may_act:
        raise _bad("The subject token's may_act is not valid.")
    if actor is None:
        raise _bad("The subject token names who may act for it: present that actor's token.")
    for name, value in may_act.items():
        if actor.identity.get(name) != value:
            raise _bad("The actor is not the one the subject token's may_act names.")


def _act(subject: Presented, actor: Presented | None) -> dict | None:
    prior = subject.claims.get("act") if isinstance(subject.claims.get("act"), dict) else None
    if actor is None:
        return prior  # a delegated token stays delegated
    act = {"sub": actor.identity["sub"]}
    if actor.issuer != current_app.config["ISSUER"]:
        act["iss"] = actor.issuer
    if prior:
        act["act"] = prior
    return act


def _target(form, policy: Policy) -> str:
    audiences = [a.strip() for a in form.getlist("audience")]
    resources = [r.strip() for r in form.getlist("resource")]
    if any(not value for value in audiences + resources):
        raise _bad("Empty 'audience' or 'resource'.")
    for resource in resources:
        parts = urlsplit(resource)
        if not parts.scheme or not parts.netloc or parts.fragment:
            raise InvalidTargetError("A 'resource' is an absolute URI without a fragment (RFC 8707).")
    targets = _unique(audiences + resources)
    if len(targets) > 1:
        raise InvalidTargetError("One audience or resource per exchange.")
    if not targets:
        if len(policy.audiences) == 1:
            return policy.audiences[0]
        raise _bad("Name the 'audience' or 'resource' the token is for.")
    if targets[0] not in policy.audiences:
        raise InvalidTargetError("This client may not obtain tokens for that audience or resource.")
    return targets[0]


def _scope(form, subject: Presented, policy: Policy) -> str:
    ceiling = subject.scope & set(policy.scopes)
    requested = scope_to_list(form.get("scope")) or []
    if requested:
        if not set(requested) <= ceiling:
            raise InvalidScopeError("The scope may only narrow the subject token's scope, within the "
                                    "client's policy.")
        granted = set(requested)
    else:
        granted = ceiling
    if not granted:
        raise InvalidScopeError("No scope of the subject token may be exchanged by this client.")
    return " ".join(s for s in SCOPES if s in granted)


# issuing ----------------------------------------------------------------------------------------------------

def issue(client, account: Account, audience: str, scope: str, assurance: Assurance, *,
          act: dict | None = None, not_after: int | None = None, family: tuple[str, int] | None = None,
          include_refresh: bool = False) -> tuple[dict, tokens.NewToken]:
    """An RFC 9068 access token for ``audience`` and its (unsaved) row; with a refresh token if asked."""
    config = current_app.config
    now = int(time.time())
    exp = now + min(int(config["EXCHANGE_TOKEN_TTL"]), int(config["ACCESS_TOKEN_TTL"]))
    if not_after is not None:
        exp = min(exp, int(not_after))
    if exp <= now:
        raise _bad("The subject token expires now.")
    jti = secrets.token_urlsafe(18)
    claims = {"iss": config["ISSUER"], "sub": account.public_id, "aud": audience,
              "client_id": client.client_id, "iat": now, "exp": exp, "jti": jti, "scope": scope}
    if assurance.auth_time is not None:
        claims["auth_time"] = int(assurance.auth_time)
    if assurance.acr:
        claims["acr"] = assurance.acr
    if assurance.amr:
        claims["amr"] = list(assurance.amr)
    if assurance.sid:
        claims["sid"] = assurance.sid
    if act:
        claims["act"] = act
    access_token = tokens.sign(claims, config["DEFAULT_SIGNING_ALG"], "at+jwt")
    token = {"access_token": access_token, "token_type": "Bearer", "expires_in": exp - now, "scope": scope}
    family_id, family_expires_at = family or (secrets.token_hex(16), now + int(config["REFRESH_FAMILY_TTL"]))
    row = tokens.NewToken(jti=jti, access_hash=tokens.sha256(access_token), client_id=client.client_id,
                          account_id=account.id, grant_type=GRANT, scope=scope, audience=audience, issued_at=now,
                          expires_at=exp, auth_time=claims.get("auth_time"), acr=assurance.acr,
                          amr=" ".join(assurance.amr) or None, sid=assurance.sid, family_id=family_id,
                          family_expires_at=family_expires_at)
    if include_refresh and now < family_expires_at:
        refresh = secrets.token_urlsafe(32)
        token["refresh_token"] = refresh
        row.refresh_hash = tokens.sha256(refresh)
        row.refresh_expires_at = min(now + int(config["REFRESH_TOKEN_TTL"]), family_expires_at)
    return token, row


@dataclass
class ExchangeRequest:
    subject: Presented
    actor: Presented | None
    audience: str
    scope: str
    act: dict | None
    include_refresh: bool


def validate(client, form, seen: dict | None = None) -> ExchangeRequest:
    """Check an exchange by an authenticated ``client`` (``form``: the request's parameters, with ``getlist``) and
    say what it yields; raise the RFC's error. Remembers a used single-use subject token last, when every check
    passed. ``seen["subject"]`` is the subject token once it was recognised (for the refusal's audit event)."""
    policy = policy_of(client)
    if policy is None or not client.check_grant_type(GRANT):
        raise UnauthorizedClientError("The client may not exchange tokens.")
    for name in _SINGLE_PARAMETERS:
        if len(form.getlist(name)) > 1:
            raise _bad(f"Repeated '{name}' parameter.")
    requested_type = form.get("requested_token_type")
    if requested_type and requested_type != ACCESS_TOKEN:
        raise _bad("Only access tokens are issued ('requested_token_type').")
    subject = present(form.get("subject_token"), form.get("subject_token_type"), "subject", client, policy)
    if seen is not None:
        seen["subject"] = subject
    actor = None
    if form.get("actor_token") or form.get("actor_token_type"):
        actor = present(form.get("actor_token"), form.get("actor_token_type"), "actor", client, policy)
    _may_act(subject, actor)
    audience = _target(form, policy)
    scope = _scope(form, subject, policy)
    act = _act(subject, actor)
    include_refresh = policy.refresh and act is None and client.check_grant_type("refresh_token")
    if subject.replay_key is not None:
        ttl = int(subject.expires_at - time.time()) + LEEWAY + 60
        if not store().add(subject.replay_key, 1, max(ttl, 60)):
            signals.emit(signals.TOKEN_REUSE_DETECTED, "refused", account_id=subject.account.id,
                         client_id=client.client_id, kind="exchange_subject_token", issuer=subject.issuer)
            raise _bad("The subject token has already been exchanged.")
    return ExchangeRequest(subject, actor, audience, scope, act, include_refresh)


def exchange_token(client, exchange: ExchangeRequest) -> tuple[dict, tokens.NewToken]:
    """The token response of a validated exchange and its (unsaved) row; ``issued_token_type`` is added by the
    caller after saving (authlib-1.9.md §1.4)."""
    subject = exchange.subject
    family = None
    if subject.family_expires_at is not None:
        longest = int(time.time()) + int(current_app.config["REFRESH_FAMILY_TTL"])
        family = (secrets.token_hex(16), min(subject.family_expires_at, longest))
    return issue(client, subject.account, exchange.audience, exchange.scope, subject.assurance,
                 act=exchange.act, not_after=subject.expires_at, family=family,
                 include_refresh=exchange.include_refresh)


def announce(client, exchange: ExchangeRequest, row: tokens.NewToken) -> None:
    """The audit event of a saved exchange."""
    subject = exchange.subject
    signals.emit(signals.TOKEN_EXCHANGED, account_id=subject.account.id, line=subject.account.username,
                 client_id=client.client_id, audience=exchange.audience, scope=exchange.scope,
                 subject_type=SHORT_NAMES[subject.token_type], subject_issuer=subject.issuer,
                 actor=exchange.act.get("sub") if exchange.act else None, jti=row.jti,
                 acr=subject.assurance.acr, refresh=bool(row.refresh_hash))


class TokenExchangeGrant(grants.BaseGrant, grants.TokenEndpointMixin):
    GRANT_TYPE = GRANT
    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_AUTH_METHODS

    def validate_token_request(self):
        seen: dict = {}
        try:
            client = self.authenticate_token_endpoint_client()
            self.request.client = client
            exchange = validate(client, flask_request.form, seen)
        except OAuth2Error as error:
            client = getattr(self.request, "client", None)
            subject = seen.get("subject")
            signals.emit(signals.TOKEN_EXCHANGE_REFUSED, "refused",
                         client_id=client.client_id if client is not None else None,
                         account_id=subject.account.id if subject is not None and subject.account else None,
                         error=error.error, reason=error.description,
                         subject_type=SHORT_NAMES.get(flask_request.form.get("subject_token_type") or ""))
            raise
        self.request.user = exchange.subject.account
        self.request.exchange = exchange

    def create_token_response(self):
        client, exchange = self.request.client, self.request.exchange
        token, row = exchange_token(client, exchange)
        self.request.token_row = row
        self.save_token(token)  # saves the row; the extra response member comes after (authlib-1.9.md §1.4)
        token["issued_token_type"] = ACCESS_TOKEN
        announce(client, exchange, row)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class RefreshTokenGrant(_RefreshTokenGrant):
    """The refresh grant, aware of refresh tokens that came from an exchange: the policy must still allow it,
    and the new access token keeps the exchanged audience, the short lifetime and the carried-over
    assurance."""

    def authenticate_refresh_token(self, refresh_token):
        row = super().authenticate_refresh_token(refresh_token)
        if row is None or row.grant_type != GRANT:
            return row
        policy = policy_of(self.request.client) if self.request.client is not None else None
        if policy is None or not policy.refresh or row.audience not in policy.audiences \
                or not self.request.client.check_grant_type(GRANT):
            return None
        return row

    def generate_token(self, user=None, scope=None, grant_type=None, expires_in=None,
                       include_refresh_token=True):
        row = getattr(self.request, "refresh_token", None)
        if row is None or row.grant_type != GRANT:
            return super().generate_token(user=user, scope=scope, grant_type=grant_type,
                                          expires_in=expires_in, include_refresh_token=include_refresh_token)
        client = self.request.client
        policy = policy_of(client)
        granted = [s for s in scope_to_list(scope) or [] if s in policy.scopes]
        if not granted:
            raise InvalidScopeError("No scope of this grant may still be exchanged by this client.")
        login = self.request.login_context
        token, new_row = issue(client, user, row.audience, " ".join(granted),
                               Assurance(login.auth_time, login.acr, list(login.amr), login.sid),
                               family=(login.family_id, login.family_expires_at),
                               include_refresh=include_refresh_token)
        self.request.token_row = new_row
        return token
