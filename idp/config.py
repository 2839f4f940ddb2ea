"""Every setting of the IdP, its default and its check (DESIGN §1, issue 2 point 3).

Load order: DEFAULTS → the file named by IDP_SETTINGS → environment variables with the prefix ``IDP_``
(``IDP_ACCESS_TOKEN_TTL=300`` sets ``ACCESS_TOKEN_TTL``; values are parsed as JSON when they can be) → the
mapping a test passes to ``create_app``. No other module reads the environment. ``validate`` refuses the
development defaults when ``DEPLOYMENT=production``. The README's configuration table lists the same keys.
"""
from __future__ import annotations

import os
from urllib.parse import urlsplit

DEV_SECRET_KEY = "dev-only-secret-key-change-me"  # noqa: S105 - refused in production by validate()
DEV_HMAC_KEY = "dev-only-hmac-key-change-me"  # noqa: S105

DEFAULTS: dict[str, object] = {
    # where and what
    "DEPLOYMENT": "development",  # development | test | production
    "ISSUER": "http://127.0.0.1:5000",  # the `iss` of every token; https in production
    "SECRET_KEY": DEV_SECRET_KEY,  # signs the CSRF cookie
    "HMAC_KEY": DEV_HMAC_KEY,  # server-side key for keyed hashes (one-time codes, stable decoys)
    "DATABASE_URL": "",  # empty: SQLite file in the instance folder
    "REDIS_URL": "",  # empty: embedded in-process Redis-compatible store (one process only)
    "REDIS_PREFIX": "idp:",  # every short-lived key starts with this
    "PROXY_FIX_HOPS": 0,  # exact number of trusted reverse proxies in front of the app (X-Forwarded-*)
    "MAX_CONTENT_LENGTH": 65536,  # bytes; larger request bodies are refused with 413
    "MAX_HEADER_BYTES": 16384,  # bytes, all request headers together; larger ones are refused with 431
    # signing keys
    "KEYS_DIR": "",  # empty: the repository's keys/ folder
    "KEYS_RELOAD_INTERVAL": 5,  # seconds between checks of the key folder by each worker
    "JWKS_MAX_AGE": 300,  # Cache-Control max-age of the JWKS, seconds
    "DEFAULT_SIGNING_ALG": "ES256",  # ES256 or RS256 for clients that do not ask
    # signing-key lifecycle (`flask --app wsgi idp keys …`; README "Signing keys")
    "KEYS_ACTIVATION_MARGIN": 60,  # seconds a next key waits past KEYS_RELOAD_INTERVAL + JWKS_MAX_AGE to sign
    "KEYS_CLOCK_SKEW": 60,  # seconds of verifiers' clock skew allowed for when pruning a retired key
    "KEYS_ROTATION_PERIOD": 7776000,  # seconds a key signs before `keys rotate` activates its successor (90 d)
    # lifetimes, seconds
    "CODE_TTL": 60,  # authorization code
    "ACCESS_TOKEN_TTL": 600,  # JWT access token
    "ID_TOKEN_TTL": 600,  # ID token
    "REFRESH_TOKEN_TTL": 86400,  # one refresh token (idle lifetime)
    "REFRESH_FAMILY_TTL": 2592000,  # a refresh-token family from its login (absolute lifetime)
    "SESSION_TTL": 28800,  # SSO session, absolute
    "SESSION_TTL_NETWORK": 1800,  # SSO session opened by network autologin alone (weaker: shorter)
    "FLOW_TTL": 900,  # a login/registration/recovery flow
    # login
    "LOGIN_MAX_ATTEMPTS": 5,  # wrong passwords within one login flow before it restarts
    # argon2id: OWASP's first recommended configuration, m=46 MiB t=1 p=1 (~50 ms of one core; see the operator
    # guide §Password cost); production refuses less than OWASP's minimum; hashes follow the setting at next login
    "PASSWORD_ARGON2_TIME_COST": 1,  # argon2id passes
    "PASSWORD_ARGON2_MEMORY_COST": 47104,  # argon2id memory, KiB
    "PASSWORD_ARGON2_PARALLELISM": 1,  # argon2id lanes (one hash per core: logins run side by side, not one hash)
    # cookies
    "SSO_COOKIE_NAME": "idp_sso",  # holds only a random session id
    "SESSION_COOKIE_NAME": "idp_csrf",  # Flask's signed cookie: holds only the CSRF token
    "COOKIE_SECURE": None,  # None: Secure everywhere but development and test
    # clients
    "CLIENT_CACHE_TTL": 30,  # seconds a worker keeps a client's registration in memory
    # token storage
    "DURABLE_TOKEN_ISSUE": False,  # true: a new token's commit waits for the disk (operator guide §1.3)
    # token exchange (RFC 8693; README "Token exchange"); each client's policy: `idp clients exchange-policy`
    "EXCHANGE_TOKEN_TTL": 300,  # seconds an exchanged token lives (≤ 900; ≤ ACCESS_TOKEN_TTL and its subject)
    "EXCHANGE_TRUSTED_ISSUERS": [],  # external issuers whose JWTs may be exchanged (JSON list; README)
    # one-time codes (SMS and e-mail)
    "OTP_DIGITS": 6,
    "OTP_TTL": 300,  # seconds a code stays valid
    "OTP_MAX_ATTEMPTS": 5,  # wrong tries before a code is destroyed
    "OTP_RESEND_COOLDOWN": 30,  # seconds between two codes to the same destination
    "OTP_SENDS_PER_HOUR_DESTINATION": 5,  # codes per hour to one line or address
    "OTP_SENDS_PER_HOUR_ADDRESS": 20,  # codes per hour requested from one client address
    "OTP_TRIES_PER_HOUR_DESTINATION": 15,  # code tries per hour for one line or address, across flows
    "OTP_TRIES_PER_HOUR_ADDRESS": 60,  # code tries per hour from one client address, across flows
    "SIM_PIN_MAX_ATTEMPTS": 3,  # wrong data-SIM PINs within one flow
    "SIM_PIN_ATTEMPTS_PER_LINE_PER_DAY": 10,  # wrong data-SIM PINs per line, across flows
    # network autologin (the operator's header-enrichment gateway); off unless CIDRs and keys are set
    "AUTOLOGIN_TRUSTED_CIDRS": [],  # the gateway's addresses as seen in REMOTE_ADDR (after PROXY_FIX_HOPS)
    "AUTOLOGIN_MSISDN_HEADER": "X-MSISDN",  # the one header the gateway sets
    "AUTOLOGIN_SIGNATURE_HEADER": "X-MSISDN-Signature",  # kid=…;ts=…;nonce=…;sig=base64url(HMAC-SHA256)
    "AUTOLOGIN_GATEWAY_KEYS": {},  # key id → shared secret (JSON object in IDP_AUTOLOGIN_GATEWAY_KEYS)
    "AUTOLOGIN_MAX_SKEW": 60,  # seconds the signed timestamp may differ from our clock
    "AUTOLOGIN_PER_LINE_PER_HOUR": 30,  # network identifications of one line per hour
    "AUTOLOGIN_PER_ADDRESS_PER_HOUR": 600,  # network identifications through one gateway address per hour
    # password guessing (per typed line and per client address)
    "LOCKOUT_THRESHOLD": 10,  # attempts per line within the window before a temporary lock
    "LOCKOUT_THRESHOLD_ADDRESS": 100,  # attempts per client address within the window before a temporary lock
    "LOCKOUT_WINDOW": 900,  # seconds over which attempts are counted
    "LOCKOUT_DURATION": 900,  # seconds a lock lasts
    "LOCKOUT_FREE_FAILURES": 3,  # failures before the progressive delay starts
    "LOCKOUT_MAX_DELAY": 30,  # seconds, the longest progressive delay
    # recovery
    "RECOVERY_MAX_ANSWER_ATTEMPTS": 3,  # wrong answers within one recovery before it ends
    "RECOVERY_ANSWERS_PER_HOUR": 6,  # wrong-or-right answers per line per hour (throttle, never a lock)
    "RECOVERY_ANSWERS_PER_HOUR_ADDRESS": 30,  # answers per client address per hour
    # passwords and security questions
    "PASSWORD_MIN_LENGTH": 8,
    "PASSWORD_MAX_LENGTH": 128,
    # senders
    "EMAIL_SENDER": "outbox",  # outbox | smtp
    "SMS_SENDER": "outbox",  # outbox | http
    "OUTBOX_PATH": "",  # empty: outbox.jsonl in the instance folder (development only)
    "SMTP_HOST": "127.0.0.1",
    "SMTP_PORT": 25,
    "SMTP_SECURITY": "starttls",  # none | starttls | tls
    "SMTP_USERNAME": "",
    "SMTP_PASSWORD": "",
    "SMTP_FROM": "no-reply@selfcare.example",
    "SMTP_FROM_NAME": "Selfcare Business",
    "SMTP_TIMEOUT": 10,  # seconds
    "SMTP_CA_FILE": "",  # PEM file of the CA(s) that sign the relay's certificate; empty: system trust store
    "SMS_GATEWAY_URL": "",  # the gateway's endpoint; receives {"to", "from", "text"} as JSON
    "SMS_GATEWAY_AUTH_HEADER": "",  # e.g. "Authorization: Bearer …"
    "SMS_GATEWAY_SENDER_ID": "Selfcare",
    "SMS_GATEWAY_TIMEOUT": 5,  # seconds per attempt
    "SMS_GATEWAY_RETRIES": 2,  # further attempts after a network error or a 5xx/429
    # operations
    "METRICS_TOKEN": "",  # bearer token a Prometheus scraper sends to /metrics; empty: /metrics is off (404)
    "LOG_FORMAT": None,  # json | text; None: json in production, text elsewhere
    "LOG_LEVEL": "INFO",
    "LOG_REQUESTS": False,  # one JSON line per request (the TLS proxy usually keeps the access log already)
    # pages
    "LANGUAGES": ["it", "en"],  # languages offered; the pages' catalogues are in idp/translations
    "BABEL_DEFAULT_LOCALE": "it",  # language when nothing else decides
    "DEMO_RP_URL": "",  # shown on the home page in development
}

_SECRET_KEYS = ("SECRET_KEY", "HMAC_KEY")


class ConfigError(RuntimeError):
    """The configuration cannot run (refused in production, or inconsistent)."""


def load(app, test_config: dict | None = None) -> None:
    app.config.update(DEFAULTS)
    settings_file = os.environ.get("IDP_SETTINGS")
    if settings_file:
        app.config.from_pyfile(settings_file)
    app.config.from_prefixed_env("IDP")
    if test_config:
        app.config.update(test_config)
    _derive(app)
    validate(app.config)


def _derive(app) -> None:
    config = app.config
    os.makedirs(app.instance_path, exist_ok=True)
    url = config["DATABASE_URL"] or "sqlite:///" + os.path.join(app.instance_path, "idp.sqlite3")
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    config["SQLALCHEMY_DATABASE_URI"] = url
    if url.startswith("sqlite"):
        config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"connect_args": {"timeout": 30}})
    else:
        # a dead or hung PostgreSQL answers 503 within seconds instead of holding the worker; dead pooled
        # connections are replaced at checkout without a round trip (idp.database), so no pool_pre_ping
        config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"connect_args": {"connect_timeout": 5}})
    config["SQLALCHEMY_TRACK_MODIFICATIONS"] = False
    if not config["KEYS_DIR"]:
        config["KEYS_DIR"] = os.path.join(os.path.dirname(app.root_path), "keys")
    if config["COOKIE_SECURE"] is None:
        config["COOKIE_SECURE"] = config["DEPLOYMENT"] not in ("development", "test")
    config["ISSUER"] = str(config["ISSUER"]).rstrip("/")
    production = config["DEPLOYMENT"] == "production"
    if config["LOG_FORMAT"] is None:
        config["LOG_FORMAT"] = "json" if production else "text"
    config["SESSION_COOKIE_SECURE"] = config["COOKIE_SECURE"]
    config["SESSION_COOKIE_HTTPONLY"] = True
    config["SESSION_COOKIE_SAMESITE"] = "Lax"
    config["WTF_CSRF_TIME_LIMIT"] = None  # the CSRF token lives as long as the signed cookie
    config["WTF_CSRF_SSL_STRICT"] = config["COOKIE_SECURE"]


# OWASP Password Storage Cheat Sheet, argon2id: these (passes → KiB) are equally strong; less is refused in production
_OWASP_ARGON2_MINIMUM = {1: 47104, 2: 19456, 3: 12288, 4: 9216, 5: 7168}


def argon2_at_least_owasp(time_cost: int, memory_kib: int) -> bool:
    return time_cost >= 1 and memory_kib >= _OWASP_ARGON2_MINIMUM[min(time_cost, 5)]


def validate(config) -> None:
    """Refuse what must never run in production; check what must be consistent everywhere."""
    if config["DEPLOYMENT"] not in ("development", "test", "production"):
        raise ConfigError(f"DEPLOYMENT must be development, test or production, not {config['DEPLOYMENT']!r}")
    if config["DEFAULT_SIGNING_ALG"] not in ("ES256", "RS256"):
        raise ConfigError("DEFAULT_SIGNING_ALG must be ES256 or RS256")
    for key in ("CODE_TTL", "ACCESS_TOKEN_TTL", "ID_TOKEN_TTL", "REFRESH_TOKEN_TTL", "SESSION_TTL", "FLOW_TTL"):
        if int(config[key]) <= 0:
            raise ConfigError(f"{key} must be a positive number of seconds")
    if config["EMAIL_SENDER"] not in ("outbox", "smtp") or config["SMS_SENDER"] not in ("outbox", "http"):
        raise ConfigError("EMAIL_SENDER is outbox or smtp; SMS_SENDER is outbox or http")
    if config["SMTP_SECURITY"] not in ("none", "starttls", "tls"):
        raise ConfigError("SMTP_SECURITY is none, starttls or tls")
    if config["SMS_SENDER"] == "http" and not config["SMS_GATEWAY_URL"]:
        raise ConfigError("SMS_SENDER=http needs SMS_GATEWAY_URL")
    import ipaddress
    for cidr in config["AUTOLOGIN_TRUSTED_CIDRS"]:
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ConfigError(f"AUTOLOGIN_TRUSTED_CIDRS: {cidr!r} is not a network") from exc
        if network.prefixlen == 0:
            raise ConfigError("AUTOLOGIN_TRUSTED_CIDRS must name the gateway's addresses, not the whole Internet")
    if not isinstance(config["AUTOLOGIN_GATEWAY_KEYS"], dict):
        raise ConfigError("AUTOLOGIN_GATEWAY_KEYS is a JSON object: key id → secret")
    _validate_exchange(config)
    if config["DEPLOYMENT"] != "production":
        return
    problems = []
    for key in _SECRET_KEYS:
        value = str(config.get(key) or "")
        if value in (DEV_SECRET_KEY, DEV_HMAC_KEY) or len(value) < 32:
            problems.append(f"{key} is a development value or shorter than 32 characters")
    if urlsplit(config["ISSUER"]).scheme != "https":
        problems.append("ISSUER must be an https URL")
    if config["EMAIL_SENDER"] == "outbox" or config["SMS_SENDER"] == "outbox":
        problems.append("the outbox sender is for development only (set EMAIL_SENDER and SMS_SENDER)")
    if not config["DATABASE_URL"] or str(config["DATABASE_URL"]).startswith("sqlite"):
        problems.append("DATABASE_URL must name a PostgreSQL database")
    if not config["REDIS_URL"]:
        problems.append("REDIS_URL must name a Redis server (the embedded store serves one process only)")
    if not config["COOKIE_SECURE"]:
        problems.append("COOKIE_SECURE cannot be off")
    if any(len(str(secret)) < 32 for secret in config["AUTOLOGIN_GATEWAY_KEYS"].values()):
        problems.append("every AUTOLOGIN_GATEWAY_KEYS secret must have at least 32 characters")
    if config["EMAIL_SENDER"] == "smtp" and config["SMTP_SECURITY"] == "none":
        problems.append("SMTP_SECURITY=none sends codes in clear: use starttls or tls")
    if not argon2_at_least_owasp(int(config["PASSWORD_ARGON2_TIME_COST"]), int(config["PASSWORD_ARGON2_MEMORY_COST"])):
        problems.append("PASSWORD_ARGON2_* below OWASP's minimum (m=46 MiB t=1, 19 MiB t=2, 12 MiB t=3, 9 MiB t=4, "
                        "7 MiB t=5)")
    if problems:
        raise ConfigError("refused in production: " + "; ".join(problems))


# token exchange (RFC 8693) ----------------------------------------------------------------------------------
_EXCHANGE_ISSUER_KEYS = {"issuer", "jwks_uri", "jwks", "audience", "subject_claim", "algorithms", "scopes",
                         "acr_map", "max_lifetime", "jwks_max_age", "jwks_refetch_interval"}
_EXCHANGE_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                        "EdDSA")


def _validate_exchange(config) -> None:
    """EXCHANGE_TOKEN_TTL is short; each EXCHANGE_TRUSTED_ISSUERS entry names its keys, audience, subject."""
    ttl = config["EXCHANGE_TOKEN_TTL"]
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= 900:
        raise ConfigError("EXCHANGE_TOKEN_TTL is a number of seconds from 1 to 900")
    entries = config["EXCHANGE_TRUSTED_ISSUERS"]
    if not isinstance(entries, list):
        raise ConfigError("EXCHANGE_TRUSTED_ISSUERS is a JSON list of issuer objects")
    seen = set()
    for entry in entries:
        if not isinstance(entry, dict):
            raise ConfigError("EXCHANGE_TRUSTED_ISSUERS: every entry is an object")
        issuer = entry.get("issuer")
        where = f"EXCHANGE_TRUSTED_ISSUERS[{issuer!r}]"
        if not isinstance(issuer, str) or not issuer or issuer in seen:
            raise ConfigError("EXCHANGE_TRUSTED_ISSUERS: every entry has its own non-empty issuer")
        if issuer.rstrip("/") == config["ISSUER"]:
            raise ConfigError(f"{where}: this IdP's own tokens need no entry (policies name it 'self')")
        seen.add(issuer)
        unknown = set(entry) - _EXCHANGE_ISSUER_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        if ("jwks_uri" in entry) == ("jwks" in entry):
            raise ConfigError(f"{where}: give exactly one of jwks_uri and jwks")
        if "jwks_uri" in entry:
            parts = urlsplit(str(entry["jwks_uri"]))
            loopback = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
            if not (parts.scheme == "https" or loopback) or not parts.hostname:
                raise ConfigError(f"{where}: jwks_uri must be https (plain http on loopback only)")
            if loopback and config["DEPLOYMENT"] == "production":
                raise ConfigError(f"{where}: jwks_uri must be https in production")
        elif not isinstance(entry["jwks"], dict) or not isinstance(entry["jwks"].get("keys"), list):
            raise ConfigError(f"{where}: jwks is a JWKS object with a keys list")
        audience = entry.get("audience")
        if not (isinstance(audience, str) and audience) and not (
                isinstance(audience, list) and audience and all(isinstance(a, str) and a for a in audience)):
            raise ConfigError(f"{where}: audience is the aud its tokens carry for us (a string or a list)")
        if entry.get("subject_claim") not in ("sub", "phone_number"):
            raise ConfigError(f"{where}: subject_claim is sub or phone_number")
        algorithms = entry.get("algorithms", ["RS256", "ES256"])
        if not isinstance(algorithms, list) or not algorithms or \
                any(a not in _EXCHANGE_ALGORITHMS for a in algorithms):
            raise ConfigError(f"{where}: algorithms are among {', '.join(_EXCHANGE_ALGORITHMS)}")
        scopes = entry.get("scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ConfigError(f"{where}: scopes is a list of this IdP's scopes")
        acr_map = entry.get("acr_map", {})
        if not isinstance(acr_map, dict) or not all(isinstance(v, str) for v in acr_map.values()):
            raise ConfigError(f"{where}: acr_map maps the issuer's acr values to ours")
        for key in ("max_lifetime", "jwks_max_age", "jwks_refetch_interval"):
            value = entry.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{where}: {key} is a number of seconds")
