"""The IdP under benchmark: its environment, database, keys, data, clients, and the credentials the cases spend.

Everything goes through the project's own code paths where a real deployment would: the schema through the Alembic
migrations (``flask db upgrade``), the keys through ``flask idp keys ensure``, clients through
``idp.oauth.clients.create``, exchange policies through ``flask idp clients exchange-policy``, authorization codes
through ``tokens.save_code`` (the function ``/authorize`` uses), refresh and access tokens through ``tokens.issue``
(what every grant uses). Only the bulk data is written directly, with PostgreSQL's COPY: N customers' lines and
accounts (and, for the scale case, 10^6 refresh tokens). Hashing 10^6 passwords with argon2id would take a day, so
one password is hashed once, with the configured parameters, and its hash (salt included) is stored for every
account: verifying it costs exactly what a real one costs.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import secrets
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import psycopg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.gateway import GATEWAY_KID, GATEWAY_SECRET, signed_headers  # noqa: E402  (the test gateway's settings)

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/0"
PASSWORD = "Bench-Password-2026!"
ANSWER = "Fido"
REDIRECT_URI = "https://rp.bench.example/cb"
API_AUDIENCE = "https://api.bench.example"
USER_SCOPE = "openid profile phone"
PER_CUSTOMER = 50  # accounts per business customer
SECOND_SIM_EVERY = 10  # every 10th account has a second (data) SIM
REFERENT_EVERY = 50  # every 50th account is a company referent, the others employees
UNLIMITED = "1000000000"


def msisdn(i: int) -> str:
    """The registered line of account i (valid Italian mobile numbers, 320…329: up to 10^8 accounts)."""
    return f"+39{320 + i // 10_000_000}{i % 10_000_000:07d}"


def data_sim(i: int) -> str:
    return f"+39{340 + i // 10_000_000}{i % 10_000_000:07d}"


def is_employee(i: int) -> bool:
    return i % REFERENT_EVERY != 0


@dataclasses.dataclass
class Instance:
    """One IdP configuration: a database, a Redis prefix, a key folder, secrets, a port."""
    database: str
    port: int
    workdir: Path
    redis_prefix: str
    client_secret: str
    secret_key: str = dataclasses.field(default_factory=lambda: secrets.token_urlsafe(48))
    hmac_key: str = dataclasses.field(default_factory=lambda: secrets.token_urlsafe(48))
    workers: int = 1
    autologin_skew: int = 60

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database_url(self) -> str:
        return f"{PG_SERVER}/{self.database}"

    @property
    def keys_dir(self) -> Path:
        return self.workdir / "keys"

    def env(self) -> dict[str, str]:
        """The IdP's environment: production settings except DEPLOYMENT=test and an http issuer on loopback.

        What DEPLOYMENT=production would switch on is set explicitly: secure cookies, JSON logs (request lines stay
        off, as production's default LOG_REQUESTS=false: the TLS proxy keeps the access log). What it would refuse is absent: PostgreSQL, Redis, 48-character random secrets, argon2id at the
        configured cost. The only bench-specific settings raise limits that count per line or per client address,
        because every simulated person arrives from 127.0.0.1 (the counting itself still runs on every request).
        """
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        env = {
            "IDP_DEPLOYMENT": "test",
            "IDP_ISSUER": self.url,
            "IDP_SECRET_KEY": self.secret_key,
            "IDP_HMAC_KEY": self.hmac_key,
            "IDP_DATABASE_URL": self.database_url,
            "IDP_REDIS_URL": REDIS_URL,
            "IDP_REDIS_PREFIX": self.redis_prefix,
            "IDP_KEYS_DIR": str(self.keys_dir),
            "IDP_COOKIE_SECURE": "true",
            "IDP_LOG_FORMAT": "json",
            "IDP_OUTBOX_PATH": str(self.workdir / "outbox.jsonl"),
            # the test gateway (tests/gateway.py): network autologin through signed headers from loopback
            "IDP_AUTOLOGIN_TRUSTED_CIDRS": json.dumps(["127.0.0.0/8"]),
            "IDP_AUTOLOGIN_GATEWAY_KEYS": json.dumps({GATEWAY_KID: GATEWAY_SECRET}),
            "IDP_AUTOLOGIN_MAX_SKEW": str(self.autologin_skew),
            # bench-only: one client address and one gateway address carry every simulated person
            "IDP_AUTOLOGIN_PER_LINE_PER_HOUR": UNLIMITED,
            "IDP_AUTOLOGIN_PER_ADDRESS_PER_HOUR": UNLIMITED,
            "IDP_LOCKOUT_THRESHOLD_ADDRESS": UNLIMITED,
        }
        if self.workers > 1:  # the client library's multiprocess mode, as the README asks for several workers
            prom = self.workdir / "prometheus"
            prom.mkdir(parents=True, exist_ok=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
        return env


# database -------------------------------------------------------------------------------------------------------

def _check_name(name: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise ValueError(f"not a database name the bench creates: {name!r}")
    return name


def recreate_database(name: str) -> None:
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{_check_name(name)}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{_check_name(name)}" WITH (FORCE)')


def flask_cli(instance: Instance, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, **instance.env()}
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=check)


def migrate_and_keys(instance: Instance) -> None:
    flask_cli(instance, "db", "upgrade")
    flask_cli(instance, "idp", "keys", "ensure")


def clear_redis_prefix(prefix: str) -> int:
    import redis
    client = redis.Redis.from_url(REDIS_URL)
    removed = 0
    batch = []
    for key in client.scan_iter(match=prefix + "*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            removed += client.delete(*batch)
            batch = []
    if batch:
        removed += client.delete(*batch)
    return removed


# bulk data ------------------------------------------------------------------------------------------------------

def seed_directory(database_url: str, n: int, password_hash: str, answer_hash: str) -> dict:
    """N accounts of business customers (50 per customer), each with its registered line; every 10th with a
    second, data SIM; every 50th a company referent. COPY in one transaction."""
    started = time.perf_counter()
    now = datetime.now(timezone.utc)
    customers = math.ceil(n / PER_CUSTOMER)
    with psycopg.connect(database_url) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY customers (id, code, name, email, email_domain, updated_at) FROM STDIN") as copy:
                for c in range(customers):
                    copy.write_row((c + 1, f"C{c:07d}", f"Cliente {c} S.r.l.", f"it@cliente{c}.example",
                                    f"cliente{c}.example", now))
            with cur.copy("COPY lines (id, msisdn, customer_id, sim_type, status, sim_pin_hash, updated_at) "
                          "FROM STDIN") as copy:
                for i in range(n):
                    copy.write_row((i + 1, msisdn(i), i // PER_CUSTOMER + 1, "voice", "active", None, now))
                extra = n
                for i in range(0, n, SECOND_SIM_EVERY):
                    extra += 1
                    copy.write_row((extra, data_sim(i), i // PER_CUSTOMER + 1, "data", "active", None, now))
            with cur.copy("COPY accounts (id, public_id, username, role, customer_id, email, email_verified, "
                          "password_hash, password_temporary, security_question, security_answer_hash, otp_channel, "
                          "status, created_at, updated_at) FROM STDIN") as copy:
                for i in range(n):
                    c = i // PER_CUSTOMER
                    copy.write_row((i + 1, secrets.token_urlsafe(16), msisdn(i),
                                    "employee" if is_employee(i) else "referent", c + 1, f"u{i}@cliente{c}.example",
                                    True, password_hash, False, "first_pet", answer_hash, "sms", "active", now, now))
            with cur.copy("COPY account_lines (id, account_id, line_id, slot, created_at) FROM STDIN") as copy:
                for i in range(n):
                    copy.write_row((i + 1, i + 1, i + 1, 1, now))
                link, extra = n, n
                for i in range(0, n, SECOND_SIM_EVERY):
                    link += 1
                    extra += 1
                    copy.write_row((link, i + 1, extra, 2, now))
            for table in ("customers", "lines", "accounts", "account_lines"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        conn.commit()
    analyze(database_url)
    return {"customers": customers, "accounts": n, "lines": n + math.ceil(n / SECOND_SIM_EVERY),
            "seconds": round(time.perf_counter() - started, 1)}


def seed_refresh_tokens(database_url: str, n: int, accounts: int, client_id: str) -> dict:
    """N refresh-token rows of people (their access tokens expired), a third of them already rotated, as a
    table looks after a month of use. Random values: nobody can present them; they are there to be searched."""
    started = time.perf_counter()
    now = int(time.time())
    rnd = random.Random(8)
    with psycopg.connect(database_url) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY tokens (jti, access_hash, client_id, account_id, grant_type, scope, audience, "
                          "issued_at, expires_at, refresh_hash, refresh_expires_at, refresh_used_at, family_id, "
                          "family_expires_at, sid, auth_time, acr, amr) FROM STDIN") as copy:
                for _ in range(n):
                    issued = now - rnd.randrange(86400 * 20)
                    copy.write_row((secrets.token_urlsafe(18), hashlib.sha256(secrets.token_bytes(32)).hexdigest(),
                                    client_id, rnd.randrange(accounts) + 1,
                                    "authorization_code", USER_SCOPE, None, issued, issued + 600,
                                    hashlib.sha256(secrets.token_bytes(32)).hexdigest(), issued + 86400,
                                    issued + 3600 if rnd.random() < 1 / 3 else None, secrets.token_hex(16),
                                    issued + 2592000, secrets.token_urlsafe(24), issued, "urn:selfcare:acr:password",
                                    "pwd"))
        conn.commit()
    analyze(database_url)
    return {"refresh_tokens": n, "seconds": round(time.perf_counter() - started, 1)}


def analyze(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def settle(database_url: str) -> None:
    """Before a measured round: what autovacuum does on a production server (this kind of machine runs PostgreSQL
    with it off: the dead row versions that refresh rotation and revocation leave behind are reclaimed, the
    statistics brought up to date), then a checkpoint, so that no round pays for writing out the pages dirtied by
    the one before it."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) tokens")
        conn.execute("CHECKPOINT")


def count_rows(database_url: str, table: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# the app, in this process -----------------------------------------------------------------------------------------

def make_app(instance: Instance):
    """The IdP's Flask app with the instance's settings, for in-process set-up (never serves requests)."""
    saved = dict(os.environ)
    os.environ.update(instance.env())
    try:
        from idp import create_app
        return create_app({"DATABASE_URL": instance.database_url, "ISSUER": instance.url,
                           "REDIS_PREFIX": instance.redis_prefix, "KEYS_DIR": str(instance.keys_dir)})
    finally:
        os.environ.clear()
        os.environ.update(saved)


def hashes(app) -> tuple[str, str, dict]:
    from idp import passwords
    with app.app_context():
        password_hash = passwords.hash_secret(PASSWORD)
        answer_hash = passwords.hash_secret(passwords.normalise_answer(ANSWER))
        cpu = []
        for _ in range(3):  # what one verification costs this process in CPU (the least disturbed of three)
            t0 = time.process_time()
            passwords.verify_secret(password_hash, PASSWORD)
            cpu.append(time.process_time() - t0)
        cfg = app.config
        params = {"time_cost": cfg["PASSWORD_ARGON2_TIME_COST"], "memory_cost_kib": cfg["PASSWORD_ARGON2_MEMORY_COST"],
                  "parallelism": cfg["PASSWORD_ARGON2_PARALLELISM"], "verify_cpu_ms": round(min(cpu) * 1000, 1)}
    return password_hash, answer_hash, params


CLIENTS = {
    # a relying party: code flow with PKCE, refresh tokens, ID tokens
    "bench-rp": dict(grant_types=["authorization_code", "refresh_token"], scope="openid profile email phone lines",
                     redirect_uris=[REDIRECT_URI], first_party=True),
    # a batch job: client_credentials, JWT access token
    "bench-cc": dict(grant_types=["client_credentials"], scope="profile"),
    # a resource server that introspects every token
    "bench-rs": dict(grant_types=["client_credentials"], scope="profile", may_introspect=True),
    # the operator's native app: network autologin at the token endpoint (public client)
    "bench-app": dict(grant_types=["urn:selfcare:params:oauth:grant-type:network"], scope="openid profile phone",
                      auth_method="none", first_party=True),
    # a backend that exchanges people's access tokens for an API audience (RFC 8693), when the grant exists
    "bench-api": dict(grant_types=["client_credentials"], scope="profile phone"),
}


def register_clients(app, secret: str) -> None:
    from idp.oauth import clients
    with app.app_context():
        for client_id, spec in CLIENTS.items():
            spec = dict(spec)
            auth = spec.pop("auth_method", "client_secret_basic")
            clients.create(f"Bench {client_id}", client_id=client_id, auth_method=auth,
                           secret=secret if auth != "none" else None, **spec)


def exchange_available() -> tuple[bool, str]:
    path = ROOT / "idp" / "oauth" / "exchange.py"
    if not path.exists():
        return False, "idp/oauth/exchange.py does not exist in this checkout"
    return True, ""


def set_exchange_policy(instance: Instance) -> tuple[bool, str]:
    result = flask_cli(instance, "idp", "clients", "exchange-policy", "bench-api", "--subject-token-type",
                       "access_token", "--issuer", "self", "--audience", API_AUDIENCE, "--scope", "phone",
                       "--scope", "profile", "--subject-client", "bench-rp", check=False)
    if result.returncode != 0:
        return False, (result.stderr or result.stdout).strip()[-300:]
    return True, ""


def employee_indexes(n: int, count: int, rnd: random.Random) -> list[int]:
    out = []
    while len(out) < count:
        i = rnd.randrange(n)
        if is_employee(i):
            out.append(i)
    return out


def _accounts(app, indexes: list[int]) -> list[SimpleNamespace]:
    """(id, public_id) of accounts: what tokens.issue reads of an account."""
    from sqlalchemy import select
    from idp.extensions import db
    from idp.models import Account
    ids = sorted({i + 1 for i in indexes})
    found = {}
    with app.app_context():
        for start in range(0, len(ids), 5000):
            chunk = ids[start:start + 5000]
            for account_id, public_id in db.session.execute(
                    select(Account.id, Account.public_id).where(Account.id.in_(chunk))):
                found[account_id] = SimpleNamespace(id=account_id, public_id=public_id)
    return [found[i + 1] for i in indexes]


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def mint_codes(app, n: int, accounts_total: int, rnd: random.Random) -> list[tuple[str, str]]:
    """N authorization codes for bench-rp, saved with tokens.save_code exactly as /authorize saves them
    (the record's keys are checked against the grant's CodeRecord), each with its own PKCE verifier."""
    from idp.oauth import grants, tokens
    from idp.oauth.scopes import ACR_PASSWORD, AMR
    expected = {f.name for f in dataclasses.fields(grants.CodeRecord)}
    out = []
    with app.app_context():
        ttl = int(app.config["CODE_TTL"])
        for i in employee_indexes(accounts_total, n, rnd):
            now = int(time.time())
            login = tokens.new_family(now - 5, ACR_PASSWORD, AMR[ACR_PASSWORD], secrets.token_urlsafe(24))
            verifier, challenge = pkce_pair()
            record = {"client_id": "bench-rp", "redirect_uri": REDIRECT_URI, "scope": USER_SCOPE,
                      "nonce": secrets.token_urlsafe(8), "code_challenge": challenge,
                      "code_challenge_method": "S256", "account_id": i + 1, "auth_time": login.auth_time,
                      "acr": login.acr, "amr": login.amr, "sid": login.sid, "family_id": login.family_id,
                      "family_expires_at": login.family_expires_at, "expires_at": now + ttl}
            if set(record) != expected:
                raise RuntimeError(f"the authorization code record changed: {sorted(set(record) ^ expected)}")
            code = secrets.token_urlsafe(32)
            tokens.save_code(code, record)
            out.append((code, verifier))
    return out


def mint_user_tokens(app, n: int, accounts_total: int, rnd: random.Random) -> list[tuple[str, str]]:
    """N (access token, refresh token) pairs of people for bench-rp, built by tokens.issue as the code grant
    builds them, and saved in bulk. Returns the token strings."""
    from sqlalchemy import insert
    from idp.extensions import db
    from idp.models import Token
    from idp.oauth import clients, tokens
    from idp.oauth.scopes import ACR_PASSWORD, AMR
    accounts = _accounts(app, employee_indexes(accounts_total, n, rnd))
    columns = [c.key for c in Token.__table__.columns if c.key != "id"]
    out, rows = [], []
    with app.app_context():
        client = clients.query_client("bench-rp")
        for account in accounts:
            login = tokens.new_family(int(time.time()) - 5, ACR_PASSWORD, AMR[ACR_PASSWORD],
                                      secrets.token_urlsafe(24))
            token, row = tokens.issue(client, "authorization_code", USER_SCOPE, account=account, login=login,
                                      include_refresh=True)
            out.append((token["access_token"], token["refresh_token"]))
            rows.append({key: getattr(row, key) for key in columns})
            if len(rows) >= 5000:
                db.session.execute(insert(Token), rows)
                rows = []
        if rows:
            db.session.execute(insert(Token), rows)
        db.session.commit()
    return out


def mint_gateway_headers(n: int, accounts_total: int, rnd: random.Random) -> list[tuple[str, str]]:
    """N signed enrichment headers (X-MSISDN, X-MSISDN-Signature) for employees' lines, each with its own nonce,
    as the operator's gateway adds them (tests/gateway.py). Valid for AUTOLOGIN_MAX_SKEW seconds."""
    out = []
    for i in employee_indexes(accounts_total, n, rnd):
        headers = signed_headers(msisdn(i))
        out.append((headers["X-MSISDN"], headers["X-MSISDN-Signature"]))
    return out


def write_feed(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write("\t".join(row) + "\n")
    return path
