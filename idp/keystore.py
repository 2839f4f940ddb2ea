"""Signing keys (SPEC §4, §5; OIDC Core §10.1.1; RFC 7517, RFC 7638): one JSON file per key in ``KEYS_DIR``.

A key's ``state`` is ``next`` (published, not signing), ``active`` (signs; exactly one per algorithm),
``retired`` (published for verification only) or ``revoked`` (gone from the JWKS; its tokens are refused).
``kid`` is the RFC 7638 thumbprint. Each worker imports the keys once and re-reads the folder when its listing
changes, checked at most every ``KEYS_RELOAD_INTERVAL`` seconds: no restart after a change, and no key import on
the request path (an RSA import costs ~30 ms). Files are written atomically with mode 0600.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field

from joserfc.jwk import ECKey, KeySet, RSAKey

ALGORITHMS = ("ES256", "RS256")
STATES = ("next", "active", "retired", "revoked")


class KeyStoreError(RuntimeError):
    pass


@dataclass
class StoredKey:
    kid: str
    alg: str
    state: str
    created_at: int
    activated_at: int | None = None
    retired_at: int | None = None
    revoked_at: int | None = None
    private_jwk: dict = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {"kid": self.kid, "alg": self.alg, "state": self.state, "created_at": self.created_at,
                "activated_at": self.activated_at, "retired_at": self.retired_at, "revoked_at": self.revoked_at,
                "private_jwk": self.private_jwk}


def generate(alg: str = "ES256", state: str = "next") -> StoredKey:
    if alg not in ALGORITHMS:
        raise KeyStoreError(f"unsupported algorithm {alg}")
    key = ECKey.generate_key("P-256") if alg == "ES256" else RSAKey.generate_key(2048)
    kid = key.thumbprint()
    private = key.as_dict(private=True)
    private.update({"kid": kid, "alg": alg, "use": "sig"})
    return StoredKey(kid=kid, alg=alg, state=state, created_at=int(time.time()), private_jwk=private)


def read_all(folder: str) -> list[StoredKey]:
    keys = []
    if not os.path.isdir(folder):
        return keys
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(folder, name), encoding="utf-8") as fh:
            data = json.load(fh)
        keys.append(StoredKey(**data))
    return keys


def write(folder: str, key: StoredKey) -> None:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"key-{key.kid}.json")
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(key.to_json(), fh, indent=2)
    os.replace(tmp, path)
    _touch(folder)


def _touch(folder: str) -> None:
    # The listing signature below includes the folder's mtime; make it move even on coarse clocks.
    now = time.time()
    os.utime(folder, (now, now))


def _import(private_jwk: dict):
    params = {"kid": private_jwk["kid"], "alg": private_jwk["alg"], "use": "sig"}
    cls = ECKey if private_jwk["kty"] == "EC" else RSAKey
    return cls.import_key(private_jwk, parameters=params)


class KeyRing:
    """What one worker signs and verifies with, rebuilt only when the key folder changes."""

    def __init__(self, folder: str, reload_interval: float):
        self.folder = folder
        self.reload_interval = reload_interval
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._signature = None
        self.signing: dict[str, object] = {}
        self.verifying = KeySet([])
        self.revoked_kids: frozenset[str] = frozenset()
        self.jwks_body = b'{"keys":[]}'
        self.jwks_etag = "empty"
        self.refresh(force=True)

    def _listing_signature(self):
        try:
            entries = tuple(sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size)
                                   for e in os.scandir(self.folder) if e.name.endswith(".json")))
        except FileNotFoundError:
            entries = ()
        return entries

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked_at < self.reload_interval:
            return
        with self._lock:
            if not force and now - self._checked_at < self.reload_interval:
                return
            self._checked_at = now
            signature = self._listing_signature()
            if signature == self._signature and not force:
                return
            self._load(read_all(self.folder))
            self._signature = signature

    def _load(self, stored: list[StoredKey]) -> None:
        signing, published = {}, []
        for key in stored:
            if key.state == "revoked":
                continue
            imported = _import(key.private_jwk)
            published.append(imported)
            if key.state == "active":
                if key.alg in signing:
                    raise KeyStoreError(f"more than one active {key.alg} key in {self.folder}")
                signing[key.alg] = imported
        self.signing = signing
        self.verifying = KeySet(published)
        self.revoked_kids = frozenset(k.kid for k in stored if k.state == "revoked")
        body = json.dumps(self.verifying.as_dict(private=False), separators=(",", ":"), sort_keys=True).encode()
        self.jwks_body = body
        self.jwks_etag = hashlib.sha256(body).hexdigest()[:32]

    def signing_key(self, alg: str):
        self.refresh()
        key = self.signing.get(alg)
        if key is None:
            raise KeyStoreError(f"no active {alg} signing key in {self.folder}: run `flask --app wsgi idp keys "
                                f"generate --alg {alg} --activate`")
        return key

    def verification_keys(self) -> KeySet:
        self.refresh()
        return self.verifying


def init_app(app) -> None:
    app.extensions["idp.keyring"] = KeyRing(app.config["KEYS_DIR"], float(app.config["KEYS_RELOAD_INTERVAL"]))


def keyring() -> KeyRing:
    from flask import current_app

    return current_app.extensions["idp.keyring"]
