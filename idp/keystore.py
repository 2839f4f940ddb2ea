"""Signing keys (SPEC §4, §5; OIDC Core §10.1.1; RFC 7517, RFC 7638; issue 7): one JSON file per key, in KEYS_DIR.

Life of a key: ``next`` (published in the JWKS, not signing) → ``active`` (signs; exactly one per algorithm) →
``retired`` (published for verification only) → removed by ``prune`` once every token it signed has expired.
``revoked`` is the emergency exit: out of the JWKS at once, its private members destroyed, its tokens refused.
``kid`` is the RFC 7638 thumbprint. Each file records the state and its timestamps (``created_at``,
``published_at``, ``activated_at``, ``retired_at``, ``revoked_at``; seconds since the epoch), mode 0600, written
atomically; the folder is made 0700 when we create it.

Changes (``Keys``, driven by ``flask idp keys …``) hold an exclusive ``fcntl`` lock on ``KEYS_DIR/.lock`` and are
ordered so that a worker reading the folder between two writes never lacks a signing key nor loses a published
key: a newly active key is written before its predecessor is retired, and a worker that sees two active keys of
one algorithm signs with the most recently activated one.

``KeyRing`` is what one worker signs and verifies with. It re-reads the folder (a few small files) at most every
``KEYS_RELOAD_INTERVAL`` seconds and rebuilds itself when the contents changed, importing each key once (an RSA
import costs ~30 ms, never on the request path twice): a change reaches every worker within
``KEYS_RELOAD_INTERVAL`` seconds without a restart, and JWKS consumers within a further ``JWKS_MAX_AGE``.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

from joserfc.jwk import ECKey, KeySet, RSAKey

ALGORITHMS = ("ES256", "RS256")
STATES = ("next", "active", "retired", "revoked")
PUBLISHED_STATES = ("active", "next", "retired")  # also the order of the JWKS
LOCK_FILE = ".lock"
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")

log = logging.getLogger(__name__)


class KeyStoreError(RuntimeError):
    pass


class Refused(KeyStoreError):
    """The change would break tokens or leave an algorithm without a signing key."""


def _now() -> float:
    return round(time.time(), 3)


def public_members(jwk: dict) -> dict:
    return {k: v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS}


@dataclass
class StoredKey:
    kid: str
    alg: str
    state: str
    created_at: float
    published_at: float | None = None
    activated_at: float | None = None
    retired_at: float | None = None
    revoked_at: float | None = None
    private_jwk: dict = field(default_factory=dict, repr=False)
    public_jwk: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.published_at is None:
            self.published_at = self.created_at  # a key is published from its creation
        if not self.public_jwk and self.private_jwk:
            self.public_jwk = public_members(self.private_jwk)

    @classmethod
    def from_json(cls, data: dict) -> StoredKey:
        known = {f.name for f in fields(cls)}
        key = cls(**{k: v for k, v in data.items() if k in known})
        if key.state not in STATES or key.alg not in ALGORITHMS:
            raise KeyStoreError(f"key {key.kid}: unknown state {key.state!r} or algorithm {key.alg!r}")
        return key

    def to_json(self) -> dict:
        return {"kid": self.kid, "alg": self.alg, "state": self.state, "created_at": self.created_at,
                "published_at": self.published_at, "activated_at": self.activated_at,
                "retired_at": self.retired_at, "revoked_at": self.revoked_at,
                "public_jwk": self.public_jwk, "private_jwk": self.private_jwk}


def generate(alg: str = "ES256", state: str = "next") -> StoredKey:
    if alg not in ALGORITHMS:
        raise KeyStoreError(f"unsupported algorithm {alg}")
    key = ECKey.generate_key("P-256") if alg == "ES256" else RSAKey.generate_key(2048)
    kid = key.thumbprint()
    private = key.as_dict(private=True)
    private.update({"kid": kid, "alg": alg, "use": "sig"})
    now = _now()
    return StoredKey(kid=kid, alg=alg, state=state, created_at=now, published_at=now,
                     activated_at=now if state == "active" else None, private_jwk=private)


def _path(folder: str, kid: str) -> str:
    return os.path.join(folder, f"key-{kid}.json")


def _read_files(folder: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of every key file; a file removed while we list the folder is simply not there."""
    found = []
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return found
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name), "rb") as fh:
                found.append((name, fh.read()))
        except FileNotFoundError:  # pruned between listdir and open
            continue
    return found


def read_all(folder: str) -> list[StoredKey]:
    return [StoredKey.from_json(json.loads(raw)) for _name, raw in _read_files(folder)]


def ensure_folder(folder: str) -> None:
    if not os.path.isdir(folder):
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)  # makedirs' mode is filtered by the umask


def write(folder: str, key: StoredKey) -> None:
    """Replace the key's file atomically (write, fsync, rename): a reader sees the old or the new file, whole."""
    ensure_folder(folder)
    path = _path(folder, key.kid)
    tmp = os.path.join(folder, f".key-{key.kid}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(key.to_json(), fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _sync_folder(folder)


def remove(folder: str, kid: str) -> None:
    os.unlink(_path(folder, kid))
    _sync_folder(folder)


def _sync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def locked(folder: str):
    """Exclusive lock on the key folder, held by every change: two operators never interleave."""
    ensure_folder(folder)
    fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def signing_choice(keys: list[StoredKey], alg: str) -> StoredKey | None:
    """The key that signs for ``alg``: the most recently activated active key (normally the only one)."""
    active = [k for k in keys if k.alg == alg and k.state == "active" and k.private_jwk]
    if not active:
        return None
    return max(active, key=lambda k: (k.activated_at or 0, k.published_at or 0, k.kid))


# changes --------------------------------------------------------------------------------------------------------

@dataclass
class Change:
    key: StoredKey
    action: str  # generate | activate | retire | prune | revoke | repair | ensure
    state: str  # the key's state after the change ("removed" after prune)
    note: str = ""


class Keys:
    """The operator's changes to the key folder, each under the folder lock, each returning what changed.

    ``activation_delay``: a ``next`` key signs only once every worker has served it in the JWKS
    (``reload_interval``) and every JWKS cache has expired (``jwks_max_age``), plus ``activation_margin``.
    ``prune_delay``: a retired key may go once every token it signed has expired: workers may still sign with it
    for ``reload_interval`` after it was retired, its last token lives ``token_lifetime``, verifiers' clocks may
    lag by ``clock_skew``.
    """

    def __init__(self, folder: str, *, reload_interval: float, jwks_max_age: float, activation_margin: float,
                 token_lifetime: float, clock_skew: float, rotation_period: float):
        self.folder = folder
        self.activation_delay = float(reload_interval) + float(jwks_max_age) + float(activation_margin)
        self.prune_delay = float(reload_interval) + float(token_lifetime) + float(clock_skew)
        self.rotation_period = float(rotation_period)

    @classmethod
    def from_config(cls, config) -> Keys:
        return cls(config["KEYS_DIR"], reload_interval=config["KEYS_RELOAD_INTERVAL"],
                   jwks_max_age=config["JWKS_MAX_AGE"], activation_margin=config["KEYS_ACTIVATION_MARGIN"],
                   token_lifetime=max(int(config["ACCESS_TOKEN_TTL"]), int(config["ID_TOKEN_TTL"])),
                   clock_skew=config["KEYS_CLOCK_SKEW"], rotation_period=config["KEYS_ROTATION_PERIOD"])

    # reading
    def all(self) -> list[StoredKey]:
        return read_all(self.folder)

    def find(self, kid: str, keys: list[StoredKey] | None = None) -> StoredKey:
        """A key by its kid, or by an unambiguous prefix of at least 8 characters."""
        keys = self.all() if keys is None else keys
        exact = [k for k in keys if k.kid == kid]
        if exact:
            return exact[0]
        matches = [k for k in keys if len(kid) >= 8 and k.kid.startswith(kid)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise KeyStoreError(f"{kid} names {len(matches)} keys: give more of it")
        raise KeyStoreError(f"no key {kid}")

    def ready_at(self, key: StoredKey) -> float:
        """When a next key may be activated without breaking a verifier's cached JWKS."""
        return (key.published_at or key.created_at) + self.activation_delay

    def prunable_at(self, key: StoredKey) -> float:
        """When every token a retired key signed has expired (at once for a key that never signed)."""
        if key.activated_at is None:
            return key.retired_at or 0.0
        return (key.retired_at or 0.0) + self.prune_delay

    # set-up
    def generate(self, alg: str, activate: bool = False) -> list[Change]:
        with locked(self.folder):
            keys = self.all()
            if activate and signing_choice(keys, alg) is not None:
                raise Refused(f"an {alg} key is already active: generate a next key and activate it when it is "
                              f"old enough (or run `keys rotate`)")
            key = generate(alg, state="active" if activate else "next")
            write(self.folder, key)
            return [Change(key, "generate", key.state)]

    def ensure(self) -> list[Change]:
        """Give every algorithm an active key if it has none (set-up; idempotent)."""
        changes = []
        with locked(self.folder):
            keys = self.all()
            for alg in ALGORITHMS:
                if signing_choice(keys, alg) is None:
                    key = generate(alg, state="active")
                    write(self.folder, key)
                    changes.append(Change(key, "ensure", "active"))
        return changes

    # lifecycle
    def activate(self, kid: str, force: bool = False) -> list[Change]:
        with locked(self.folder):
            keys = self.all()
            key = self.find(kid, keys)
            if key.state == "active":
                return self._repair(keys, key.alg)
            if key.state == "revoked":
                raise Refused(f"{key.kid} is revoked: a revoked key never signs again")
            if not force:  # counted from publication: also a retired key going back to signing
                wait = self.ready_at(key) - time.time()
                if wait > 0:
                    raise Refused(f"{key.kid} was published {time.time() - key.published_at:.0f} s ago; relying "
                                  f"parties may not have it in their cached JWKS yet: wait {wait:.0f} s more "
                                  f"(or --force, and accept that their verification fails until they refetch)")
            return self._activate(keys, key)

    def retire(self, kid: str) -> list[Change]:
        with locked(self.folder):
            keys = self.all()
            key = self.find(kid, keys)
            if key.state == "retired":
                return []
            if key.state == "revoked":
                raise Refused(f"{key.kid} is revoked: it stays out of the JWKS")
            if key.state == "active" and not any(k.alg == key.alg and k.state == "active" and k.kid != key.kid
                                                 for k in keys):
                raise Refused(f"{key.kid} is the active {key.alg} key: activate its successor instead "
                              f"(`keys activate NEXT_KID` retires it)")
            return [self._retire(key, _now())]

    def prune(self) -> list[Change]:
        with locked(self.folder):
            return self._prune(self.all())

    def rotate(self, algs: list[str] | None = None, period: float | None = None) -> list[Change]:
        """The scheduled sequence, idempotent (run it from cron). For each algorithm: no next key → generate
        one; a next key old enough, and an active key that has signed for ``period`` seconds → activate the next
        key (which retires the active one). Then prune."""
        period = self.rotation_period if period is None else float(period)
        changes: list[Change] = []
        with locked(self.folder):
            keys = self.all()
            if algs is None:
                algs = [alg for alg in ALGORITHMS if signing_choice(keys, alg) is not None]
                if not algs:
                    raise KeyStoreError("no active key: run `keys ensure` first")
            for alg in algs:
                changes += self._repair(keys, alg)
                active = signing_choice(keys, alg)
                pending = [k for k in keys if k.alg == alg and k.state == "next"]
                if not pending:
                    key = generate(alg, state="next")
                    write(self.folder, key)
                    keys.append(key)
                    changes.append(Change(key, "generate", "next"))
                    continue
                candidate = max(pending, key=lambda k: (k.published_at, k.kid))
                now = time.time()
                served = now - (active.activated_at or 0) if active is not None else float("inf")
                if now >= self.ready_at(candidate) and served >= period:
                    changes += self._activate(keys, candidate)
            changes += self._prune(keys)
        return changes

    def revoke(self, kid: str, replace: bool = False) -> list[Change]:
        """Emergency: out of the JWKS and its tokens refused. The only active key of an algorithm goes only with
        ``replace``: the newest next key of that algorithm (or a new key) is activated first, at once."""
        changes: list[Change] = []
        with locked(self.folder):
            keys = self.all()
            key = self.find(kid, keys)
            if key.state == "revoked":
                return []
            if key.state == "active" and not any(k.alg == key.alg and k.state == "active" and k.kid != key.kid
                                                 for k in keys):
                if not replace:
                    raise Refused(f"{key.kid} is the only active {key.alg} key: revoking it stops {key.alg} "
                                  f"signing; add --replace to activate a successor in the same step")
                pending = [k for k in keys if k.alg == key.alg and k.state == "next"]
                if pending:
                    successor = max(pending, key=lambda k: (k.published_at, k.kid))
                else:
                    successor = generate(key.alg, state="next")
                    keys.append(successor)
                note = ""
                if time.time() < self.ready_at(successor):
                    note = ("published only now: relying parties refuse its tokens until they refetch the JWKS "
                            "(they do on an unknown kid, or within JWKS_MAX_AGE)")
                changes += self._activate(keys, successor, retire_others=False, note=note)
            key.state, key.revoked_at = "revoked", _now()
            key.private_jwk = {}  # destroy the compromised private key; the public one stays as a record
            write(self.folder, key)
            changes.append(Change(key, "revoke", "revoked"))
        return changes

    # under the lock
    def _activate(self, keys: list[StoredKey], key: StoredKey, retire_others: bool = True,
                  note: str = "") -> list[Change]:
        now = _now()
        others = [k for k in keys if k.alg == key.alg and k.state == "active" and k.kid != key.kid]
        # strictly the newest activation, even if a clock stepped back: workers pick the newest active key
        key.activated_at = max([now] + [round((k.activated_at or 0) + 0.001, 3) for k in others])
        key.state, key.retired_at = "active", None
        write(self.folder, key)  # first: a worker reading now sees two active keys and signs with this one
        changes = [Change(key, "activate", "active", note)]
        if retire_others:
            changes += [self._retire(other, now) for other in others]
        return changes

    def _retire(self, key: StoredKey, now: float) -> Change:
        key.state, key.retired_at = "retired", now
        write(self.folder, key)
        return Change(key, "retire", "retired")

    def _repair(self, keys: list[StoredKey], alg: str) -> list[Change]:
        """Two active keys (an activation interrupted between its two writes): keep the newest."""
        chosen = signing_choice(keys, alg)
        return [self._retire(k, _now()) for k in keys
                if chosen is not None and k.alg == alg and k.state == "active" and k.kid != chosen.kid]

    def _prune(self, keys: list[StoredKey]) -> list[Change]:
        now = time.time()
        changes = []
        for key in list(keys):
            if key.state == "retired" and now >= self.prunable_at(key):
                remove(self.folder, key.kid)
                keys.remove(key)
                changes.append(Change(key, "prune", "removed"))
        return changes


# what a worker uses ---------------------------------------------------------------------------------------------

def _import(private_jwk: dict):
    params = {"kid": private_jwk["kid"], "alg": private_jwk["alg"], "use": "sig"}
    cls = ECKey if private_jwk["kty"] == "EC" else RSAKey
    return cls.import_key(private_jwk, parameters=params)


@dataclass(frozen=True)
class _Snapshot:
    signing: dict
    verifying: KeySet
    revoked_kids: frozenset
    jwks_body: bytes
    jwks_etag: str


_EMPTY_BODY = b'{"keys":[]}'
_EMPTY = _Snapshot({}, KeySet([]), frozenset(), _EMPTY_BODY, hashlib.sha256(_EMPTY_BODY).hexdigest()[:32])


class KeyRing:
    """What one worker signs and verifies with, rebuilt only when the key folder's contents change.

    A rebuild is one immutable snapshot swapped in whole, so a request never mixes two generations. A folder that
    cannot be read (never seen with atomic writes) leaves the previous snapshot in place and is retried.
    """

    def __init__(self, folder: str, reload_interval: float):
        self.folder = folder
        self.reload_interval = reload_interval
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._contents: tuple | None = None
        self._imported: dict[str, object] = {}
        self._snapshot = _EMPTY
        self.refresh(force=True)

    # the current snapshot's parts
    @property
    def signing(self) -> dict:
        return self._snapshot.signing

    @property
    def verifying(self) -> KeySet:
        return self._snapshot.verifying

    @property
    def revoked_kids(self) -> frozenset:
        return self._snapshot.revoked_kids

    @property
    def jwks_body(self) -> bytes:
        return self._snapshot.jwks_body

    @property
    def jwks_etag(self) -> str:
        return self._snapshot.jwks_etag

    def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._checked_at < self.reload_interval:
            return
        with self._lock:
            now = time.monotonic()
            if not force and now - self._checked_at < self.reload_interval:
                return
            self._checked_at = now
            contents = tuple(_read_files(self.folder))
            if contents == self._contents:
                return
            try:
                self._snapshot = self._build([StoredKey.from_json(json.loads(raw)) for _name, raw in contents])
            except Exception:  # keep signing with what we have; the next check retries
                log.exception("cannot load the keys in %s: keeping the previous ones", self.folder)
                return
            self._contents = contents

    def _key(self, stored: StoredKey):
        imported = self._imported.get(stored.kid)
        if imported is None:
            imported = self._imported[stored.kid] = _import(stored.private_jwk)
        return imported

    def _build(self, stored: list[StoredKey]) -> _Snapshot:
        order = {state: i for i, state in enumerate(PUBLISHED_STATES)}
        published = sorted((k for k in stored if k.state in order and k.private_jwk),
                           key=lambda k: (order[k.state], k.kid))
        signing = {}
        for alg in ALGORITHMS:
            chosen = signing_choice(published, alg)
            if chosen is not None:
                signing[alg] = self._key(chosen)
        verifying = KeySet([self._key(k) for k in published])
        self._imported = {k.kid: self._imported[k.kid] for k in published}  # forget removed and revoked keys
        body = json.dumps(verifying.as_dict(private=False), separators=(",", ":"), sort_keys=True).encode()
        return _Snapshot(signing, verifying, frozenset(k.kid for k in stored if k.state == "revoked"), body,
                         hashlib.sha256(body).hexdigest()[:32])

    def signing_key(self, alg: str):
        self.refresh()
        key = self._snapshot.signing.get(alg)
        if key is None:
            raise KeyStoreError(f"no active {alg} signing key in {self.folder}: run `flask --app wsgi idp keys "
                                f"ensure`")
        return key

    def verification_keys(self) -> KeySet:
        self.refresh()
        return self._snapshot.verifying

    def jwks(self) -> tuple[bytes, str]:
        """The public JWKS (next, active and retired keys) and its ETag, from one snapshot."""
        self.refresh()
        snapshot = self._snapshot
        return snapshot.jwks_body, snapshot.jwks_etag


def init_app(app) -> None:
    app.extensions["idp.keyring"] = KeyRing(app.config["KEYS_DIR"], float(app.config["KEYS_RELOAD_INTERVAL"]))


def keyring() -> KeyRing:
    from flask import current_app

    return current_app.extensions["idp.keyring"]
