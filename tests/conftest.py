"""Test set-up: real PostgreSQL and Redis when their URLs are given, the embedded defaults otherwise.

``IDP_TEST_DATABASE_URL`` (e.g. ``postgresql://postgres@127.0.0.1:5432/test``): the suite creates its own database
``idp_test_<random>`` on that server, migrates it with Alembic (the same migrations production runs) and drops it at
the end. ``IDP_TEST_REDIS_URL``: every app gets its own key prefix, deleted after the test. Without them: a migrated
SQLite file and the in-process store. Rows are deleted after every test, so tests never see each other's data.
"""
from __future__ import annotations

import os
import secrets
import socket
import tempfile
import threading
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
from werkzeug.serving import make_server

from idp import create_app, keystore
from idp.extensions import db

from .helpers import Factory, Outbox

DATABASE_URL = os.environ.get("IDP_TEST_DATABASE_URL", "")
REDIS_URL = os.environ.get("IDP_TEST_REDIS_URL", "")
RUN_ID = uuid.uuid4().hex[:10]


def _admin_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    if not DATABASE_URL:
        yield "sqlite:///" + str(tmp_path_factory.mktemp("db") / "idp.sqlite3")
        return
    import psycopg
    name = f"idp_test_{RUN_ID}"
    with psycopg.connect(_admin_url(DATABASE_URL), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(DATABASE_URL, name)
    finally:
        from sqlalchemy.orm import close_all_sessions
        close_all_sessions()
        with psycopg.connect(_admin_url(DATABASE_URL), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("keys"))
    for alg in keystore.ALGORITHMS:
        key = keystore.generate(alg, state="active")
        key.activated_at = int(time.time())
        keystore.write(folder, key)
    return folder


def base_config(database_url: str, keys_dir: str, **overrides) -> dict:
    config = {
        "DEPLOYMENT": "test",
        "TESTING": True,
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": f"idp-test:{RUN_ID}:{secrets.token_hex(4)}:",
        "KEYS_DIR": keys_dir,
        "CLIENT_CACHE_TTL": 0,
        "OUTBOX_PATH": os.path.join(tempfile.mkdtemp(prefix="idp-outbox-"), "outbox.jsonl"),
        "OTP_RESEND_COOLDOWN": 0,
        "LOCKOUT_FREE_FAILURES": 100,  # tests of the progressive delay set their own
        # argon2id stays argon2id, only cheaper: the tests verify behaviour, not cost
        "PASSWORD_ARGON2_TIME_COST": 1,
        "PASSWORD_ARGON2_MEMORY_COST": 8192,
        "PASSWORD_ARGON2_PARALLELISM": 1,
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def migrated(database_url, keys_dir):
    from flask_migrate import upgrade
    app = create_app(base_config(database_url, keys_dir))
    with app.app_context():
        upgrade()
        db.engine.dispose()
    return database_url


def _clean(app) -> None:
    with app.app_context():
        for table in reversed(db.metadata.sorted_tables):
            db.session.execute(table.delete())
        db.session.commit()
        store = app.extensions["idp.store"]
        if REDIS_URL:
            keys = list(store.redis.scan_iter(store.prefix + "*", count=500))
            if keys:
                store.redis.delete(*keys)
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def make_app(migrated, keys_dir):
    """Build apps with extra settings; each is cleaned up after the test."""
    made = []

    def _make(**overrides):
        app = create_app(base_config(migrated, keys_dir, **overrides))
        made.append(app)
        return app

    yield _make
    for app in made:
        _clean(app)


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def factory(app):
    return Factory(app)


@pytest.fixture
def outbox(app):
    return Outbox(app)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, app, port):
        self.app, self.port = app, port
        self.url = f"http://127.0.0.1:{port}"
        self._server = make_server("127.0.0.1", port, app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._thread.join(5)


@pytest.fixture
def live_server(make_app):
    """The IdP on a real loopback port, its issuer set to that URL."""
    port = free_port()
    app = make_app(ISSUER=f"http://127.0.0.1:{port}")
    server = LiveServer(app, port).start()
    server.factory = Factory(app)
    yield server
    server.stop()


def pytest_report_header(config):
    return [f"database: {'PostgreSQL ' + DATABASE_URL if DATABASE_URL else 'SQLite (embedded default)'}",
            f"redis: {REDIS_URL or 'embedded in-process store'}"]


# --- real receivers for the senders (issue 3 point 8): see tests/receivers.py --------------------------------------

SMS_GATEWAY_TOKEN = "test-token"  # noqa: S105 - the loopback gateway's bearer token


@pytest.fixture
def smtp_receiver():
    """A real SMTP server on 127.0.0.1 (plain, no login), stopped after the test.

    ``smtp_receiver.port``; ``.messages(to)``, ``.wait_for(to)`` (next unseen message), ``.last(to)`` and
    ``.last_code(to)`` (the 6-digit code in the newest e-mail's text part) read what arrived; each message has
    ``subject``, ``text``, ``html``, ``from_``, ``rcpt_tos``, ``tls``, ``login``. For STARTTLS/TLS and AUTH build
    ``receivers.SmtpReceiver(security="starttls", auth=True)`` in a ``with`` block; its ``settings()`` are the
    matching IdP settings (including ``SMTP_CA_FILE``).
    """
    from .receivers import SmtpReceiver
    with SmtpReceiver() as receiver:
        yield receiver


@pytest.fixture
def sms_gateway():
    """A real HTTP SMS gateway on 127.0.0.1 requiring ``Authorization: Bearer test-token``, stopped after the test.

    ``sms_gateway.url``; ``.requests`` (every POST, with headers and the status answered); ``.messages(to)``,
    ``.wait_for(to)``, ``.last(to)``, ``.last_code(to)`` over the SMS it accepted. Switch its behaviour with
    ``.answer_ok()``, ``.fail_then_ok(n, status=503)``, ``.reject(status=400)``, ``.hang(seconds)``.
    """
    from .receivers import SmsGateway
    with SmsGateway(token=SMS_GATEWAY_TOKEN) as gateway:
        yield gateway


@pytest.fixture
def real_senders_settings(smtp_receiver, sms_gateway):
    """Settings sending e-mail to ``smtp_receiver`` (SMTP, security none) and SMS to ``sms_gateway`` (HTTP).

    For a live server: ``make_app(ISSUER=f"http://127.0.0.1:{port}", **real_senders_settings)`` and then
    ``LiveServer(app, port).start()``; read codes with ``sms_gateway.last_code(line)`` /
    ``smtp_receiver.last_code(address)`` instead of the outbox.
    """
    return {**smtp_receiver.settings(), **sms_gateway.settings(), "SMTP_TIMEOUT": 3, "SMS_GATEWAY_TIMEOUT": 2}


@pytest.fixture
def real_senders_app(make_app, real_senders_settings):
    """An app (``make_app``) whose senders are real: EMAIL_SENDER=smtp → ``smtp_receiver``, SMS_SENDER=http →
    ``sms_gateway`` (with ``SMS_GATEWAY_AUTH_HEADER="Authorization: Bearer test-token"``). Request the receiver
    fixtures too to read the codes: ``def test_x(real_senders_app, sms_gateway, smtp_receiver)``."""
    return make_app(**real_senders_settings)


CHROMIUM = "/usr/bin/chromium"  # Debian's build: browser downloads are impossible on these machines
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def chromium():
    """Debian's chromium driven by Playwright, one per test module (each test opens its own context)."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
