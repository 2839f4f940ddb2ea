"""Metrics and structured logs (issue 10 points 2–3)."""
import json
import logging

from .helpers import Journey, basic


def test_metrics_need_the_token(make_app):
    app = make_app(METRICS_TOKEN="scrape-secret-123")
    client = app.test_client()
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 404
    ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-123"})
    assert ok.status_code == 200 and b"idp_requests_total" in ok.data


def test_metrics_off_without_a_token(client):
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 404


def _value(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_counters_move(make_app):
    from .helpers import Factory
    app = make_app(METRICS_TOKEN="t0ken-for-metrics")
    client = app.test_client()
    scrape = lambda: client.get("/metrics", headers={"Authorization": "Bearer t0ken-for-metrics"}).text  # noqa: E731
    before = scrape()
    Factory(app).account()
    rp = Factory(app).rp(grant_types=("authorization_code", "refresh_token", "client_credentials"), scope="openid profile")
    journey = Journey(client, rp)
    url = journey.authorize().headers["Location"]
    journey.submit_login(url, password="wrong")
    Journey(client, rp).tokens()
    client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"},
                headers=basic(rp.client_id, rp.secret))
    after = scrape()
    assert _value(after, "idp_logins_total", method="password", outcome="success") == \
        _value(before, "idp_logins_total", method="password", outcome="success") + 1
    assert _value(after, "idp_logins_total", method="password", outcome="refused") >= 1
    assert _value(after, "idp_tokens_issued_total", grant_type="client_credentials") >= 1
    assert _value(after, "idp_requests_total", endpoint="oauth.token", method="POST", status="200") >= 2
    assert _value(after, "idp_active_signing_key_age_seconds", alg="ES256") > 0


def test_json_logs_carry_the_request_id_and_nothing_secret(make_app, capsys):
    app = make_app(LOG_FORMAT="json", LOG_REQUESTS=True)
    client = app.test_client()
    client.get("/authorize?client_id=x&login_hint=%2B393931234567&password=hunter2",
               headers={"X-Request-ID": "req-abcdef12"})
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    request_lines = [entry for entry in lines if entry["message"] == "request"]
    assert request_lines and request_lines[-1]["request_id"] == "req-abcdef12"
    assert request_lines[-1]["http"]["endpoint"] == "oauth.authorize"
    text = json.dumps(lines)
    assert "393931234567" not in text and "hunter2" not in text
    assert logging.getLogger("idp").handlers
