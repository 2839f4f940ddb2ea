"""The production command (issue 10 point 1): scripts/serve refuses unsafe settings at start, and serves in
production mode with granian workers behind a TLS proxy (here, plain HTTP on loopback with PROXY_FIX_HOPS=1)."""
import os
import subprocess
import time

import requests

from idp import keystore

from .conftest import REDIS_URL, free_port

ROOT = os.path.dirname(os.path.dirname(__file__))
SERVE = os.path.join(ROOT, "scripts", "serve")


def _env(**settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update({"IDP_" + k: str(v) for k, v in settings.items()})
    return env


def test_unsafe_production_settings_stop_the_server_with_a_clear_message():
    result = subprocess.run([SERVE], env=_env(DEPLOYMENT="production"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "refuses to start" in result.stderr and "refused in production" in result.stderr
    assert "SECRET_KEY" in result.stderr


def test_serves_in_production_mode(tmp_path):
    keys = str(tmp_path / "keys")
    for alg in keystore.ALGORITHMS:
        key = keystore.generate(alg, state="active")
        key.activated_at = int(time.time())
        keystore.write(keys, key)
    port = free_port()
    settings = dict(DEPLOYMENT="production", ISSUER="https://login.selfcare.example", SECRET_KEY="s" * 48,
                    HMAC_KEY="h" * 48, DATABASE_URL="postgresql://postgres@127.0.0.1:5432/test",
                    REDIS_URL=REDIS_URL or "redis://127.0.0.1:6379/0", REDIS_PREFIX="idp-test:serve:",
                    EMAIL_SENDER="smtp", SMS_SENDER="http", SMS_GATEWAY_URL="https://sms.internal/send",
                    KEYS_DIR=keys, PROXY_FIX_HOPS=1, BIND_HOST="127.0.0.1", BIND_PORT=port, WORKERS=2)
    process = subprocess.Popen([SERVE], env=_env(**settings), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while True:
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except requests.RequestException:
                assert process.poll() is None, process.stderr.read().decode()[-2000:]
                assert time.time() < deadline, "the production server did not start"
                time.sleep(0.3)
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        discovery = requests.get(f"http://127.0.0.1:{port}/.well-known/openid-configuration", timeout=5)
        assert discovery.json()["issuer"] == "https://login.selfcare.example"
        page = requests.get(f"http://127.0.0.1:{port}/", headers={"X-Forwarded-Proto": "https"}, timeout=5)
        assert page.headers["Strict-Transport-Security"].startswith("max-age=")
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
            raise AssertionError("the production server did not stop within 20 s of SIGTERM")
