"""Several instances behind one load balancer (issue 10 point 4; DESIGN §5): two IdP servers, separate processes
and ports, sharing the database and Redis.

The embedded in-process store cannot be shared between processes by design, so this test always uses a real Redis:
the suite's IDP_TEST_REDIS_URL when set, otherwise the machine's Redis at 127.0.0.1:6379 (it runs on every machine
of this project and in CI), with a key prefix of its own. The database is the suite's (PostgreSQL or the migrated
SQLite file, which two processes can share).
"""
from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
import uuid

import pytest
import requests

from idp import create_app, keystore
from idp.extensions import db

from .conftest import REDIS_URL, base_config, free_port
from .helpers import LINE, PASSWORD, Factory, csrf_of, pkce, query_of

SHARED_REDIS = REDIS_URL or "redis://127.0.0.1:6379/0"


def _env(settings: dict) -> dict:
    env = dict(os.environ)
    for key, value in settings.items():
        env["IDP_" + key] = value if isinstance(value, str) else __import__("json").dumps(value)
    return env


@pytest.fixture
def two_instances(migrated, tmp_path):
    keys = str(tmp_path / "keys")
    for alg in keystore.ALGORITHMS:
        key = keystore.generate(alg, state="active")
        key.activated_at = int(time.time())
        keystore.write(keys, key)
    port_a, port_b = free_port(), free_port()
    settings = base_config(migrated, keys, REDIS_URL=SHARED_REDIS,
                           REDIS_PREFIX=f"idp-test:instances:{uuid.uuid4().hex[:8]}:",
                           ISSUER=f"http://127.0.0.1:{port_a}", KEYS_RELOAD_INTERVAL=1, LOCKOUT_THRESHOLD=4,
                           SECRET_KEY="shared-secret-key-" + secrets.token_hex(8))
    settings.pop("TESTING")
    app = create_app(dict(settings))
    factory = Factory(app)
    factory.account()
    rp = factory.rp()
    procs = []
    env = _env({k: v for k, v in settings.items() if k != "DEPLOYMENT"} | {"DEPLOYMENT": "test"})
    for port in (port_a, port_b):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", "--log-level", "warning",
             "wsgi:app"], env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    urls = [f"http://127.0.0.1:{port}" for port in (port_a, port_b)]
    deadline = time.time() + 30
    for url in urls:
        while True:
            try:
                if requests.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                for proc in procs:
                    proc.kill()
                pytest.fail("the instances did not start: " + procs[0].stderr.read().decode()[-2000:])
            time.sleep(0.2)
    try:
        yield app, rp, urls, keys
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        store = app.extensions["idp.store"]
        leftover = list(store.redis.scan_iter(store.prefix + "*"))
        if leftover:
            store.redis.delete(*leftover)
        with app.app_context():
            for table in reversed(db.metadata.sorted_tables):
                db.session.execute(table.delete())
            db.session.commit()
            db.engine.dispose()


def _params(rp, challenge):
    return {"response_type": "code", "client_id": rp.client_id, "redirect_uri": rp.redirect_uri,
            "scope": "openid", "state": "s", "nonce": secrets.token_urlsafe(8), "code_challenge": challenge,
            "code_challenge_method": "S256"}


def test_a_flow_started_on_one_instance_finishes_on_the_other_and_sso_spans_both(two_instances):
    _app, rp, (a, b), _keys = two_instances
    browser = requests.Session()
    _verifier, challenge = pkce()
    first = browser.get(a + "/authorize", params=_params(rp, challenge), allow_redirects=False)
    login_path = first.headers["Location"]
    page = browser.get(a + login_path)
    # the credentials are posted to the other instance: the flow lives in Redis, the CSRF secret is shared
    back = browser.post(b + login_path, data={"csrf_token": csrf_of(page.text), "username": LINE,
                                              "password": PASSWORD}, allow_redirects=False)
    assert back.status_code == 302 and back.headers["Location"].startswith("/authorize?")
    done = browser.get(b + back.headers["Location"], allow_redirects=False)
    assert "code" in query_of(done.headers["Location"])
    # the SSO session made through B is valid on A: no login page
    _v2, challenge2 = pkce()
    again = browser.get(a + "/authorize", params=_params(rp, challenge2), allow_redirects=False)
    assert again.status_code == 302 and "code=" in again.headers["Location"]


def test_rate_limits_count_across_instances(two_instances):
    _app, rp, (a, b), _keys = two_instances
    _verifier, challenge = pkce()
    statuses = []
    for attempt in range(5):
        base = (a, b)[attempt % 2]
        browser = requests.Session()
        first = browser.get(base + "/authorize", params=_params(rp, challenge), allow_redirects=False)
        path = first.headers["Location"]
        page = browser.get(base + path)
        answer = browser.post(base + path, data={"csrf_token": csrf_of(page.text), "username": LINE,
                                                 "password": "wrong"}, allow_redirects=False)
        statuses.append(answer.status_code)
    assert statuses == [200, 200, 200, 200, 429]  # the 5th, wherever it lands, finds the line locked


def test_a_key_change_reaches_both_instances(two_instances):
    _app, _rp, (a, b), keys = two_instances
    key = keystore.generate("ES256", state="next")
    keystore.write(keys, key)
    deadline = time.time() + 10
    seen = set()
    while time.time() < deadline and seen != {a, b}:
        for base in (a, b):
            kids = {k["kid"] for k in requests.get(base + "/jwks.json", timeout=5).json()["keys"]}
            if key.kid in kids:
                seen.add(base)
        time.sleep(0.3)
    assert seen == {a, b}
    assert re.match(r"^[A-Za-z0-9_-]{43}$", key.kid)
