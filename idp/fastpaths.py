"""Fixed documents served before Flask (issue 8 point 5; notes/performance.md): discovery and the JWKS.

Both are the same bytes for every request until the configuration or the key folder changes, so they are answered
by a thin WSGI layer in front of the app — precomputed body, ETag and 304 — without routing, request objects or
per-request hooks. Anything else — and any request with oversized headers, which Flask refuses with 431 — goes to
Flask untouched. (These two paths are therefore not in the per-endpoint
request metrics.)
"""
from __future__ import annotations

import hashlib

from werkzeug.http import parse_etags

from .oauth import discovery

HSTS = "max-age=31536000; includeSubDomains"


def headers_too_large(environ, limit: int) -> bool:
    """All request headers together, as the client sent them (name, value, ": " and CRLF), over ``limit`` bytes."""
    size = 0
    for key, value in environ.items():
        if key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            size += len(key) - (5 if key.startswith("HTTP_") else 0) + len(value) + 4
    return size > limit


class FixedDocuments:
    def __init__(self, wsgi_app, app):
        self.wsgi_app = wsgi_app
        self.app = app
        self._discovery: tuple[str, bytes, str] | None = None

    def _discovery_body(self) -> tuple[bytes, str]:
        issuer = self.app.config["ISSUER"]
        if self._discovery is None or self._discovery[0] != issuer:
            body = discovery.body(issuer)
            self._discovery = (issuer, body, hashlib.sha256(body).hexdigest()[:32])
        return self._discovery[1], self._discovery[2]

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO")
        if environ.get("REQUEST_METHOD") in ("GET", "HEAD") and not headers_too_large(
                environ, int(self.app.config["MAX_HEADER_BYTES"])):  # oversized: Flask answers 431
            if path == "/.well-known/openid-configuration":
                body, etag = self._discovery_body()
                return self._answer(environ, start_response, body, etag, "application/json", 3600, self._hsts())
            if path == "/jwks.json":
                body, etag = self.app.extensions["idp.keyring"].jwks()
                return self._answer(environ, start_response, body, etag, "application/jwk-set+json",
                                    int(self.app.config["JWKS_MAX_AGE"]), self._hsts())
        return self.wsgi_app(environ, start_response)

    def _hsts(self) -> list[tuple[str, str]]:
        if self.app.config["DEPLOYMENT"] == "production":
            return [("Strict-Transport-Security", HSTS)]
        return []

    @staticmethod
    def _answer(environ, start_response, body: bytes, etag: str, mimetype: str, max_age: int, extra: list):
        headers = [("Cache-Control", f"public, max-age={max_age}"), ("ETag", f'"{etag}"'),
                   ("Access-Control-Allow-Origin", "*"), ("X-Content-Type-Options", "nosniff"), *extra]
        if_none_match = environ.get("HTTP_IF_NONE_MATCH")
        if if_none_match and parse_etags(if_none_match).contains_weak(etag):
            start_response("304 Not Modified", headers)
            return [b""]
        headers += [("Content-Type", mimetype), ("Content-Length", str(len(body)))]
        start_response("200 OK", headers)
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]
