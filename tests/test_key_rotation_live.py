"""Proof of issue 7: a full key rotation and a revocation on a live 2-worker gunicorn server, zero broken tokens.

The server is `gunicorn -w 2 wsgi:app` configured only through IDP_* variables, as in production, with short
settings: KEYS_RELOAD_INTERVAL=1, JWKS_MAX_AGE=2, KEYS_ACTIVATION_MARGIN=3 (activation guard 1 + 2 + 3 = 6 s),
ACCESS_TOKEN_TTL=ID_TOKEN_TTL=6, KEYS_CLOCK_SKEW=1 (prune delay 1 + 6 + 1 = 8 s). Every change is made with the
operators' CLI (`flask --app wsgi idp keys …`) in a separate process, as an operator would.

While two threads obtain access tokens continuously (client_credentials), an independent verifier checks every
token as it arrives: panva's `jose` (the JOSE library under openid-client) in node, `createRemoteJWKSet` and
`jwtVerify`. It caches the JWKS for the server's max-age and refetches on an unknown kid no more than once per 30 s
(jose's default cooldown), so it passes only if every key was published long enough before it signed.

Sequence: generate B (next) → activate B too early (refused) → generate C → wait for the guard → activate B
(A retired) → `retire A` (already retired) → prune too early (A kept) → wait until A's tokens expired → prune
(A removed) → revoke B without --replace (refused) → revoke B --replace (C, published long ago, signs).

Counted: tokens issued, verified, failures (tokens not signed by B that the verifier refused: must be 0) and,
separately, tokens signed by the revoked key B: every one must be refused after the revocation (by the verifier
once its cache expired, by introspection and userinfo at once). Also proven: no worker signs with an old key later
than KEYS_RELOAD_INTERVAL after a change, and both workers issued tokens.

Redis: the embedded in-process store cannot be shared by two gunicorn workers (and production refuses it), so
this test always uses a real Redis: IDP_TEST_REDIS_URL when set, else the machine's redis://127.0.0.1:6379/0
(always running on this kind of machine; .ci/run starts it), with a key prefix of its own, deleted afterwards.
Database: PostgreSQL when IDP_TEST_DATABASE_URL is set (the suite's migrated database), else a SQLite file
migrated with `flask --app wsgi db upgrade` under the same environment as the server.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
import requests

from idp import keystore
from idp.extensions import db
from idp.models import AuditEvent

from .conftest import DATABASE_URL, REDIS_URL, RUN_ID, free_port

pytestmark = [pytest.mark.live]

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "tests" / "oidc_client"
GUNICORN = Path(sys.executable).parent / "gunicorn"
FLASK = Path(sys.executable).parent / "flask"
LIVE_REDIS_URL = REDIS_URL or "redis://127.0.0.1:6379/0"

# the margin leaves a slow CLI start (a loaded machine) time to show the refusal of a young key
RELOAD, MAX_AGE, MARGIN, TTL, SKEW = 1, 2, 3, 6, 1
GUARD = RELOAD + MAX_AGE + MARGIN  # a next key may sign this long after its publication
PRUNE_AFTER = RELOAD + TTL + SKEW  # a retired key may go this long after its retirement

VERIFIER = r"""
import { createRemoteJWKSet, jwtVerify, customFetch } from 'jose';
import readline from 'node:readline';

const config = JSON.parse(process.argv[1]);
let fetches = 0;
const jwks = createRemoteJWKSet(new URL(config.jwks_uri), {
  cacheMaxAge: config.cache_max_age_ms,  // as the server's Cache-Control says; cooldown: jose's default 30 s
  [customFetch]: (url, options) => { fetches += 1; return fetch(url, options); },
});
const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  const message = JSON.parse(line);
  const options = { issuer: config.issuer, audience: config.audience, algorithms: ['ES256', 'RS256'],
                    typ: 'at+jwt' };
  if (message.at) options.currentDate = new Date(message.at * 1000);
  let result;
  try {
    const { protectedHeader } = await jwtVerify(message.token, jwks, options);
    result = { id: message.id, ok: true, kid: protectedHeader.kid };
  } catch (error) {
    result = { id: message.id, ok: false, code: error.code || error.name, message: String(error.message) };
  }
  result.fetches = fetches;
  process.stdout.write(JSON.stringify(result) + '\n');
}
process.stdout.write(JSON.stringify({ done: true, fetches }) + '\n');
"""


def _claims_and_header(token: str) -> tuple[dict, dict]:
    def part(text):
        return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    header, claims, _sig = token.split(".")
    return part(header), part(claims)


class Verifier:
    """The node verifier: one JSON line per token in, one result line out."""

    def __init__(self, config: dict):
        node = shutil.which("node")
        assert node, "node is not installed: the rotation proof needs Node.js (>= 20) and tests/oidc_client"
        assert (NODE_DIR / "node_modules" / "jose").is_dir(), "run `npm ci` in tests/oidc_client (scripts/test does)"
        self.proc = subprocess.Popen([node, "--input-type=module", "-e", VERIFIER, json.dumps(config)],
                                     cwd=NODE_DIR, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env={**os.environ, "NODE_NO_WARNINGS": "1"})
        self.results: dict[str, dict] = {}
        self.fetches = 0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            message = json.loads(line)
            with self._arrived:
                self.fetches = message.get("fetches", self.fetches)
                if "id" in message:
                    self.results[message["id"]] = message
                self._arrived.notify_all()

    def submit(self, ident: str, token: str, at: int | None = None) -> None:
        line = json.dumps({"id": ident, "token": token, **({"at": at} if at else {})})
        with self._lock:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()

    def wait(self, idents, timeout: float = 30) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while not all(i in self.results for i in idents):
                left = deadline - time.monotonic()
                assert left > 0, f"the verifier answered {sum(i in self.results for i in idents)} of {len(idents)}" \
                                 f": {self.proc.stderr.read() if self.proc.poll() is not None else ''}"
                self._arrived.wait(left)
            return {i: self.results[i] for i in idents}

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Issuer:
    """Threads asking /token for client-credentials tokens without pause; each token goes to the verifier."""

    def __init__(self, url: str, client_id: str, secret: str, verifier: Verifier, threads: int = 2):
        self.url, self.auth, self.verifier = url, (client_id, secret), verifier
        self.tokens: dict[str, dict] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(n,), daemon=True) for n in range(threads)]

    def start(self):
        for thread in self._threads:
            thread.start()
        return self

    def _loop(self, number: int):
        count = 0
        while not self._stop.is_set():
            try:
                response = requests.post(self.url + "/token", auth=self.auth, timeout=10,
                                         data={"grant_type": "client_credentials", "scope": "profile"})
            except requests.RequestException as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            if response.status_code != 200:
                self.failures.append(f"{response.status_code} {response.text[:200]}")
                continue
            token = response.json()["access_token"]
            header, claims = _claims_and_header(token)
            ident = f"{number}-{count}"
            count += 1
            with self._lock:
                self.tokens[ident] = {"token": token, "kid": header["kid"], "iat": claims["iat"],
                                      "jti": claims["jti"]}
            self.verifier.submit(ident, token)
            time.sleep(0.02)

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


@pytest.fixture
def live_env(tmp_path, migrated):
    """The IDP_* environment of the server and of the operator's CLI; the database migrated by the CLI."""
    try:
        redis.Redis.from_url(LIVE_REDIS_URL).ping()
    except redis.RedisError as exc:
        raise AssertionError(f"the rotation proof needs a real Redis at {LIVE_REDIS_URL} (two workers share it): "
                             f"start redis-server or set IDP_TEST_REDIS_URL ({exc})") from exc
    port = free_port()
    prefix = f"idp-test:{RUN_ID}:rotation-{secrets.token_hex(4)}:"
    database = migrated if DATABASE_URL else f"sqlite:///{tmp_path / 'idp.sqlite3'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update({
        "IDP_DEPLOYMENT": "test", "IDP_ISSUER": f"http://127.0.0.1:{port}", "IDP_DATABASE_URL": database,
        "IDP_REDIS_URL": LIVE_REDIS_URL, "IDP_REDIS_PREFIX": prefix, "IDP_KEYS_DIR": str(tmp_path / "keys"),
        "IDP_OUTBOX_PATH": str(tmp_path / "outbox.jsonl"), "IDP_KEYS_RELOAD_INTERVAL": str(RELOAD),
        "IDP_JWKS_MAX_AGE": str(MAX_AGE), "IDP_KEYS_ACTIVATION_MARGIN": str(MARGIN),
        "IDP_ACCESS_TOKEN_TTL": str(TTL), "IDP_ID_TOKEN_TTL": str(TTL), "IDP_KEYS_CLOCK_SKEW": str(SKEW),
        "IDP_CLIENT_CACHE_TTL": "0",
    })
    upgraded = subprocess.run([str(FLASK), "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env, text=True,
                              capture_output=True, timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr
    yield {"env": env, "port": port, "url": f"http://127.0.0.1:{port}", "database": database, "prefix": prefix,
           "keys": str(tmp_path / "keys"), "tmp": tmp_path}
    client = redis.Redis.from_url(LIVE_REDIS_URL)
    leftovers = list(client.scan_iter(prefix + "*", count=500))
    if leftovers:
        client.delete(*leftovers)


def _cli(live, *args, ok=True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(FLASK), "--app", "wsgi", "idp", *args], cwd=ROOT, env=live["env"], text=True,
                          capture_output=True, timeout=120)
    if ok:
        assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
    return done


def _keys(live) -> dict[str, keystore.StoredKey]:
    return {k.kid: k for k in keystore.read_all(live["keys"])}


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def _jwks_kids_through_both_workers(url: str, requests_count: int = 6) -> list[set[str]]:
    """The JWKS as several fresh connections see it (gunicorn hands them to either worker)."""
    return [{k["kid"] for k in requests.get(url + "/jwks.json", timeout=10).json()["keys"]}
            for _ in range(requests_count)]


@pytest.fixture
def gunicorn(live_env):
    log = live_env["tmp"] / "gunicorn.log"
    access = live_env["tmp"] / "access.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(GUNICORN), "-w", "2", "-b", f"127.0.0.1:{live_env['port']}",
                                 "--access-logfile", str(access), "--access-logformat", "%(p)s %(m)s %(U)s %(s)s",
                                 "wsgi:app"], cwd=ROOT, env=live_env["env"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"gunicorn ended: {log.read_text()}"
            try:
                if requests.get(live_env["url"] + "/jwks.json", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or no worker booted yet
                pass
            assert time.monotonic() < deadline, f"gunicorn did not answer: {log.read_text()}"
            time.sleep(0.1)
        yield {"proc": proc, "log": log, "access": access}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_rotation_and_revocation_on_two_gunicorn_workers_break_no_token(live_env, make_app, request):
    live = live_env
    app = make_app(DATABASE_URL=live["database"], KEYS_DIR=live["keys"])  # reads the audit; cleans up after
    _cli(live, "keys", "ensure")
    created = _cli(live, "clients", "create", "--name", "Rotation batch", "--grant-type", "client_credentials",
                   "--scope", "profile", "--client-id", "rotation-batch").stdout
    secret = next(line.split()[1] for line in created.splitlines() if line.startswith("client_secret:"))
    key_a = next(k.kid for k in _keys(live).values() if k.alg == "ES256" and k.state == "active")
    server = request.getfixturevalue("gunicorn")
    url = live["url"]

    verifier = Verifier({"jwks_uri": url + "/jwks.json", "issuer": url, "audience": url,
                         "cache_max_age_ms": MAX_AGE * 1000})
    issuer = Issuer(url, "rotation-batch", secret, verifier).start()
    try:
        time.sleep(1.5)
        # 1. generate B (the next signer): published, not signing; activating it now is refused
        key_b = _cli(live, "keys", "generate").stdout.split("\t")[1]
        early = _cli(live, "keys", "activate", key_b, ok=False)
        assert early.returncode != 0 and "wait" in early.stderr, early.stderr
        # 2. and C, the emergency replacement used in 5.
        key_c = _cli(live, "keys", "generate").stdout.split("\t")[1]
        time.sleep(RELOAD + 0.1)
        assert all({key_a, key_b, key_c} <= kids for kids in _jwks_kids_through_both_workers(url))
        # 3. past the guard: B signs, A is retired (and stays published)
        _sleep_until(_keys(live)[key_b].published_at + GUARD + 0.2)
        activated = _cli(live, "keys", "activate", key_b).stdout
        activation_done = time.time()
        assert f"retire\t{key_a}" in activated
        assert "already retired" in _cli(live, "keys", "retire", key_a).stdout
        stored = _keys(live)
        retired_at = stored[key_a].retired_at
        assert stored[key_b].state == "active" and stored[key_a].state == "retired"
        # 4. A's tokens may still be alive: prune keeps it; once they all expired, prune removes it
        assert "nothing to prune" in _cli(live, "keys", "prune").stdout
        _sleep_until(retired_at + PRUNE_AFTER + 0.2)
        assert f"prune\t{key_a}" in _cli(live, "keys", "prune").stdout
        time.sleep(RELOAD + 0.1)
        assert all(key_a not in kids and key_b in kids for kids in _jwks_kids_through_both_workers(url))
        # 5. emergency: B is the only active key; --replace activates C (published long ago) in the same step
        refused = _cli(live, "keys", "revoke", key_b, ok=False)
        assert refused.returncode != 0 and "--replace" in refused.stderr
        revoked = _cli(live, "keys", "revoke", key_b, "--replace").stdout
        revocation_done = time.time()
        assert f"activate\t{key_c}" in revoked and "published only now" not in revoked
        time.sleep(RELOAD + 0.1)
        assert all(key_b not in kids and key_c in kids for kids in _jwks_kids_through_both_workers(url))
        _sleep_until(revocation_done + RELOAD + MAX_AGE + 0.5)  # every worker, then the verifier's cache
    finally:
        issuer.stop()
    tokens = dict(issuer.tokens)
    assert issuer.failures == [], f"the server failed to issue: {issuer.failures[:5]}"
    results = verifier.wait(list(tokens))

    # the revoked key's tokens: the verifier (as of their issuance, so only the key can fail) refuses them all
    by_b = {i: t for i, t in tokens.items() if t["kid"] == key_b}
    for ident, token in by_b.items():
        verifier.submit("recheck-" + ident, token["token"], at=token["iat"])
    rechecked = verifier.wait(["recheck-" + i for i in by_b])
    verifier.close()
    assert rechecked and all(not r["ok"] and r["code"] == "ERR_JWKS_NO_MATCHING_KEY" for r in rechecked.values())
    # … and so do introspection and userinfo, at once, for those still unexpired
    now = time.time()
    alive_b = [t for t in by_b.values() if t["iat"] + TTL > now + 0.5]
    alive_c = [t for t in tokens.values() if t["kid"] == key_c and t["iat"] + TTL > now + 0.5][-5:]
    assert alive_b and alive_c
    for token in alive_b:
        answer = requests.post(url + "/introspect", data={"token": token["token"]}, auth=("rotation-batch", secret))
        assert answer.json() == {"active": False}
        userinfo = requests.get(url + "/userinfo", headers={"Authorization": "Bearer " + token["token"]})
        assert userinfo.status_code == 401 and 'error="invalid_token"' in userinfo.headers["WWW-Authenticate"]
    for token in alive_c:
        answer = requests.post(url + "/introspect", data={"token": token["token"]}, auth=("rotation-batch", secret))
        assert answer.json()["active"] is True
        userinfo = requests.get(url + "/userinfo", headers={"Authorization": "Bearer " + token["token"]})
        assert userinfo.status_code == 403  # a valid token, only without the openid scope

    failures = {i: r for i, r in results.items() if not r["ok"] and tokens[i]["kid"] != key_b}
    verified = sum(r["ok"] for r in results.values())
    refused_b = [i for i in by_b if not results[i]["ok"]]
    per_key = {name: sum(t["kid"] == kid for t in tokens.values())
               for name, kid in (("A", key_a), ("B", key_b), ("C", key_c))}
    pids = {line.split()[0] for line in server["access"].read_text().splitlines() if " /token 200" in line}
    report = (f"rotation proof: {len(tokens)} tokens issued (A {per_key['A']}, B {per_key['B']}, C {per_key['C']}), "
              f"{verified} verified by jose, {len(failures)} failures; revoked key B: {len(by_b)} tokens, "
              f"{len(by_b) - len(refused_b)} verified before the revocation reached the verifier, "
              f"{len(refused_b)} refused at once, {len(rechecked)} refused on recheck, {len(alive_b)} refused by "
              f"introspection and userinfo; JWKS fetches by the verifier: {verifier.fetches}; "
              f"gunicorn workers that issued tokens: {len(pids)}")
    print("\n" + report)
    request.node.user_properties.append(("rotation_proof", report))

    assert failures == {}, f"{len(failures)} tokens failed verification: {list(failures.values())[:5]}"
    assert min(per_key.values()) > 0, per_key
    assert len(pids) == 2, f"expected both workers to issue tokens, saw {pids}"
    # no worker signed with the old key later than KEYS_RELOAD_INTERVAL after the change was written
    assert max(t["iat"] for t in tokens.values() if t["kid"] == key_a) <= activation_done + RELOAD
    assert max(t["iat"] for t in by_b.values()) <= revocation_done + RELOAD
    # every change is in the audit log
    with app.app_context():
        events = [(e.outcome, e.details.get("action"), e.details.get("kid"))
                  for e in db.session.query(AuditEvent).filter_by(type="key.changed").order_by(AuditEvent.id)]
    for expected in [("success", "generate", key_b), ("success", "generate", key_c), ("refused", "activate", key_b),
                     ("success", "activate", key_b), ("success", "retire", key_a), ("success", "prune", key_a),
                     ("refused", "revoke", key_b), ("success", "activate", key_c), ("success", "revoke", key_b)]:
        assert expected in events, expected
