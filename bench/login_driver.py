"""Whole logins per second, driven like a browser (bench/run starts it; it can also be run alone).

One login is the authorization-code journey through the real pages, each simulated person with a fresh cookie jar:

1. ``GET /authorize?response_type=code&client_id=…&code_challenge=…`` → 302 to the login flow
2. ``GET /flows/login/<id>`` → the page, its CSRF token (and, on the mobile network, the "Accedi direttamente" offer)
3. ``--mode password``: ``POST /flows/login/<id>`` line + password (argon2id) → 302 back to /authorize
   ``--mode network``: ``POST /flows/login/<id>/network`` (CSRF token only), every request carrying the signed
   ``X-MSISDN`` headers of the test gateway (``tests/gateway.py``) with a fresh nonce → 302 back to /authorize
4. ``GET /authorize?…`` with the SSO cookie → 302 to the redirect URI with ``code`` — the login is done.

``--concurrency`` people log in at once, each on its own keep-alive connection, until ``--duration`` seconds have
passed; a login counts if it ended with a code before then. Latencies are measured per login (start of step 1 to
the code), not corrected. Prints one line ``BENCH_RESULT {json}``.
"""
from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import http.client
import itertools
import json
import re
import secrets
import sys
import threading
import time
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.gateway import signed_headers  # noqa: E402

CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


class Failed(Exception):
    pass


class Browser:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.conn = None
        self.cookies: dict[str, str] = {}
        self.requests = 0

    def _connection(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        return self.conn

    def request(self, method: str, path: str, *, form: dict | None = None, headers: dict | None = None):
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, OSError):
                conn.close()
                self.conn = None
                if attempt == 2:
                    raise Failed("connection")
        self.requests += 1
        for value in response.msg.get_all("Set-Cookie") or []:
            jar = SimpleCookie()
            jar.load(value)
            for name, morsel in jar.items():
                if morsel["max-age"] == "0" or morsel.value == "":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return response.status, response.getheader("Location"), data.decode("utf-8", "replace")


def pkce() -> str:
    verifier = secrets.token_urlsafe(48)
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def typed(number: str) -> str:
    """How a person types their line: '320 000 0001'."""
    national = number[3:]
    return f"{national[:3]} {national[3:6]} {national[6:]}"


def login(browser: Browser, args, number: str) -> None:
    browser.cookies = {}  # a new person, a new browser
    network = args.mode == "network"

    def gw():
        return signed_headers(number) if network else {}

    query = urlencode({"response_type": "code", "client_id": args.client_id, "redirect_uri": args.redirect_uri,
                       "scope": "openid profile phone", "state": secrets.token_urlsafe(8),
                       "nonce": secrets.token_urlsafe(8), "code_challenge": pkce(),
                       "code_challenge_method": "S256"})
    status, location, _ = browser.request("GET", "/authorize?" + query, headers=gw())
    if status != 302 or not location or "/flows/login/" not in location:
        raise Failed(f"authorize {status}")
    flow_path = urlsplit(location).path
    status, _, page = browser.request("GET", flow_path, headers=gw())
    if status != 200:
        raise Failed(f"login page {status}")
    match = CSRF.search(page)
    if not match:
        raise Failed("no csrf token")
    if network:
        if flow_path + "/network" not in page:
            raise Failed("no network offer")
        status, location, _ = browser.request("POST", flow_path + "/network", form={"csrf_token": match.group(1)},
                                              headers=gw())
    else:
        status, location, _ = browser.request("POST", flow_path, form={
            "csrf_token": match.group(1), "username": typed(number), "password": args.password})
    if status != 302 or not location or "/authorize" not in location:
        raise Failed(f"credentials {status}")
    parts = urlsplit(location)
    status, location, _ = browser.request("GET", parts.path + "?" + parts.query, headers=gw())
    if status != 302 or not location or not location.startswith(args.redirect_uri):
        raise Failed(f"back to authorize {status}")
    if "code" not in parse_qs(urlsplit(location).query):
        raise Failed("no code")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True)
    parser.add_argument("--mode", choices=("password", "network"), required=True)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lines", type=Path, required=True, help="employees' lines (E.164), one per line")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--redirect-uri", required=True)
    parser.add_argument("--password", default="")
    args = parser.parse_args()

    base = urlsplit(args.base)
    numbers = [ln.strip() for ln in args.lines.read_text().splitlines() if ln.strip()]
    next_number = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    failures: collections.Counter = collections.Counter()
    totals = {"requests": 0}
    start = time.monotonic()
    deadline = start + args.duration

    def worker():
        browser = Browser(base.hostname, base.port)
        local_lat, local_fail = [], collections.Counter()
        while time.monotonic() < deadline:
            number = numbers[next(next_number) % len(numbers)]
            t0 = time.perf_counter()
            try:
                login(browser, args, number)
                if time.monotonic() <= deadline:
                    local_lat.append(time.perf_counter() - t0)
            except Failed as exc:
                local_fail[str(exc)] += 1
        with lock:
            latencies.extend(local_lat)
            failures.update(local_fail)
            totals["requests"] += browser.requests

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.duration + 120)
    latencies.sort()

    def pct(p):
        if not latencies:
            return None
        rank = max(1, int(p / 100 * len(latencies) + 0.5))
        return round(latencies[min(rank, len(latencies)) - 1] * 1000, 2)

    result = {"logins": len(latencies), "failures": sum(failures.values()), "failure_reasons": dict(failures),
              "requests": totals["requests"], "duration_s": args.duration,
              "logins_per_s": round(len(latencies) / args.duration, 2), "mode": args.mode,
              "measured_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": pct(100),
                              "mean": round(sum(latencies) / len(latencies) * 1000, 2) if latencies else None}}
    print("BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
