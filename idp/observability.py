"""Metrics and structured logs (issue 10 points 2–3).

Metrics use the standard Prometheus client: requests and latency by endpoint, logins by method and outcome, codes
sent and failed by channel, tokens issued by grant, rate-limit and lockout refusals, and the age of each active
signing key. They are served at ``/metrics`` only to a bearer of ``METRICS_TOKEN`` (404 without one configured),
so a scraper can reach them through the same port without exposing them to the Internet. With several gunicorn
workers set ``PROMETHEUS_MULTIPROC_DIR`` (the client library's multiprocess mode) and every worker's samples are
aggregated. Security events are counted by a second receiver of ``signals.security_event``: the code that emits
events knows nothing of metrics.

Logs are JSON lines when ``LOG_FORMAT=json`` (the production default): time, level, logger, message, and for
requests the request id (``X-Request-ID`` from the proxy, or generated), method, endpoint, status and duration.
Nothing else from the request is logged: no query string, no form, no header values, so no secret, code or phone
number can reach the log.
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import time

from flask import Blueprint, Response, current_app, g, has_request_context, request
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest,
                               multiprocess)

from . import signals

REQUESTS = Counter("idp_requests_total", "HTTP requests by endpoint and status", ["endpoint", "method", "status"])
LATENCY = Histogram("idp_request_duration_seconds", "Request latency by endpoint", ["endpoint"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
LOGINS = Counter("idp_logins_total", "Logins by method and outcome", ["method", "outcome"])
CODES = Counter("idp_codes_total", "One-time codes by channel and outcome", ["channel", "outcome"])
TOKENS = Counter("idp_tokens_issued_total", "Tokens issued by grant type", ["grant_type"])
REFUSALS = Counter("idp_rate_limited_total", "Requests refused by a rate limit or a lock", ["limit"])
SPOOFS = Counter("idp_autologin_spoof_total", "MSISDN headers refused as spoof attempts", ["reason"])
KEY_AGE = Gauge("idp_active_signing_key_age_seconds", "Seconds since the active key of each algorithm was activated",
                ["alg"], multiprocess_mode="max")

_METHODS = {"urn:selfcare:acr:network": "network", "urn:selfcare:acr:password": "password",
            "urn:selfcare:acr:password+question": "password+question"}

bp = Blueprint("observability", __name__)


# security events → counters ------------------------------------------------------------------------------------

def _on_event(event, **kwargs):
    details = kwargs.get("details") or {}
    outcome = kwargs.get("outcome", "success")
    if event == signals.LOGIN_SUCCEEDED:
        LOGINS.labels(_METHODS.get(details.get("acr"), "other"), "success").inc()
    elif event == signals.LOGIN_FAILED:
        LOGINS.labels("password+question" if details.get("factor") == "kba" else "password", outcome).inc()
    elif event in (signals.CODE_SENT, signals.CODE_SEND_FAILED):
        CODES.labels(details.get("channel", "unknown"), "sent" if event == signals.CODE_SENT else "failed").inc()
    elif event == signals.AUTOLOGIN_SPOOF:
        SPOOFS.labels(details.get("reason", "unknown")).inc()
    elif event in (signals.ACCOUNT_LOCKED, signals.AUTOLOGIN_THROTTLED):
        REFUSALS.labels(event).inc()


def count_token(grant_type: str) -> None:
    TOKENS.labels(grant_type).inc()


def count_refusal(limit: str) -> None:
    REFUSALS.labels(limit).inc()


# requests -------------------------------------------------------------------------------------------------------

_KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
_request_series: dict[tuple[str, str, int], tuple] = {}  # (endpoint, method, status) → its counter and histogram


def _series(endpoint: str, method: str, status: int) -> tuple:
    """The labelled children, made once: ``labels()`` per request costs more than the increment itself.
    Endpoints and statuses are the app's own; a method outside HTTP's usual ones is counted as OTHER, so a
    client cannot grow the registry."""
    key = (endpoint, method, status)
    found = _request_series.get(key)
    if found is None:
        label = method if method in _KNOWN_METHODS else "OTHER"
        found = _request_series[key] = (REQUESTS.labels(endpoint, label, str(status)), LATENCY.labels(endpoint))
    return found


def _before():
    g.request_started = time.perf_counter()


def _after(response):
    started = g.pop("request_started", None)
    if started is not None:
        record_request(request.endpoint or "unmatched", request.method, response.status_code,
                       time.perf_counter() - started)
    return response


def record_request(endpoint: str, method: str, status: int, elapsed: float) -> None:
    """Count and time one request (and log it when LOG_REQUESTS): Flask's, or one answered before Flask."""
    requests_total, latency = _series(endpoint, method, status)
    requests_total.inc()
    latency.observe(elapsed)
    if current_app.config["LOG_REQUESTS"]:
        current_app.logger.info("request", extra={"http": {
            "method": method, "endpoint": endpoint, "status": status, "duration_ms": round(elapsed * 1000, 2)}})


@bp.get("/metrics")
def metrics():
    expected = current_app.config["METRICS_TOKEN"]
    supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not expected or not hmac.compare_digest(supplied.encode(), str(expected).encode()):
        return Response("Not Found", status=404, mimetype="text/plain")
    _update_key_ages()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest()
    return Response(body, mimetype=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})


def _update_key_ages() -> None:
    from . import keystore
    now = time.time()
    for key in keystore.read_all(current_app.config["KEYS_DIR"]):
        if key.state == "active" and key.activated_at:
            KEY_AGE.labels(key.alg).set(now - key.activated_at)


# logs -----------------------------------------------------------------------------------------------------------

class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z", "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if has_request_context():
            from .audit import correlation_id
            entry["request_id"] = correlation_id()
        http = getattr(record, "http", None)
        if http:
            entry["http"] = http
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _configure_logging(app) -> None:
    if app.config["LOG_FORMAT"] != "json":
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    app.logger.handlers[:] = [handler]
    app.logger.setLevel(app.config["LOG_LEVEL"])
    app.logger.propagate = False


def init_app(app) -> None:
    _configure_logging(app)
    app.before_request(_before)
    app.after_request(_after)
    app.register_blueprint(bp)
    if not getattr(signals.security_event, "_idp_metrics_connected", False):
        signals.security_event.connect(_on_event)
        signals.security_event._idp_metrics_connected = True
