"""Acting as the operator's enrichment gateway in tests: signed MSISDN headers, and a real proxy on loopback."""
from __future__ import annotations

import http.client
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from idp.gateway import sign

GATEWAY_KID = "gw-2026"
GATEWAY_SECRET = "test-gateway-secret-0123456789abcdef"
GATEWAY_SETTINGS = {"AUTOLOGIN_TRUSTED_CIDRS": ["127.0.0.0/8"], "AUTOLOGIN_GATEWAY_KEYS": {GATEWAY_KID: GATEWAY_SECRET}}


def signed_headers(number: str, *, ts: int | None = None, nonce: str | None = None, kid: str = GATEWAY_KID,
                   secret: str = GATEWAY_SECRET, header: str = "X-MSISDN") -> dict:
    ts = int(time.time()) if ts is None else ts
    nonce = nonce or secrets.token_urlsafe(12)
    signature = sign(secret, number, ts, nonce)
    return {header: number, "X-MSISDN-Signature": f"kid={kid};ts={ts};nonce={nonce};sig={signature}"}


class EnrichmentProxy:
    """A small HTTP proxy on loopback that forwards to the IdP and adds a signed X-MSISDN, like the operator's
    gateway does on the mobile path. It strips any client-supplied MSISDN headers first.

    Its port is known as soon as it is built, before it starts: to make the proxy the IdP's public face
    (``ISSUER = proxy.url``), build it with ``upstream_port=None``, build the IdP with that issuer, then set
    ``proxy.upstream_port``. Until then it answers 502."""

    def __init__(self, upstream_port: int | None, number: str):
        self.number = number
        self.upstream_port = upstream_port
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.upstream_port is None:
                    self.send_error(502, "no upstream yet")
                    return
                headers = {k: v for k, v in self.headers.items()
                           if "msisdn" not in k.lower() and k.lower() not in ("connection", "keep-alive")}
                if proxy.number:
                    headers.update(signed_headers(proxy.number))
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                conn.close()

            do_GET = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
