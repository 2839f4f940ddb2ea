"""Interoperability with an independent, certified OIDC client: panva's openid-client 6 (tests/oidc_client/rp.mjs).

The IdP runs on a real loopback port; node runs the RP; python plays the browser through our real login pages.
The library validates everything on its side (discovery, state, RFC 9207 ``iss``, PKCE, the ID token's signature
through the JWKS, iss/aud/nonce/at_hash, the userinfo ``sub``, the refreshed ID token); this test then checks
the claims and, from python, that the revoked refresh token is really dead. Node is required: no skip.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import requests

from .helpers import LINE, PASSWORD, basic, csrf_of, query_of

RP_DIR = Path(__file__).parent / "oidc_client"
RP_SCRIPT = RP_DIR / "rp.mjs"
REDIRECT_URI = "http://127.0.0.1:9/cb"  # never fetched: the browser below stops at the redirect
TIMEOUT = 60


class NodeRP:
    """``node rp.mjs`` as a subprocess speaking one JSON line at a time, with a hard deadline."""

    def __init__(self, config: dict):
        node = shutil.which("node")
        assert node, "node is not installed: the openid-client interoperability test needs Node.js (>= 20)"
        assert (RP_DIR / "node_modules" / "openid-client").is_dir(), \
            "tests/oidc_client/node_modules is missing: run `npm ci` in tests/oidc_client (scripts/test does)"
        self.proc = subprocess.Popen([node, str(RP_SCRIPT), json.dumps(config)], cwd=RP_DIR, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, "NODE_NO_WARNINGS": "1"})
        self._timer = threading.Timer(TIMEOUT, self.proc.kill)
        self._timer.start()

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            raise AssertionError(f"rp.mjs ended without output (exit {self.proc.wait()}): {self.proc.stderr.read()}")
        return json.loads(line)

    def send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # node already ended: its error line is still waiting on stdout

    def finish(self) -> tuple[dict, int]:
        result = self.read()
        return result, self.proc.wait(TIMEOUT)

    def close(self) -> None:
        self._timer.cancel()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()


def _browser_login(base_url: str, authorization_url: str, username: str) -> str:
    """Follow the authorization URL through the real login pages; return the redirect to the RP, unfollowed."""
    assert authorization_url.startswith(base_url + "/authorize?")
    browser = requests.Session()
    response = browser.get(authorization_url, allow_redirects=False, timeout=TIMEOUT)
    assert response.status_code == 302, response.text
    login_url = urljoin(base_url, response.headers["Location"])
    assert urlsplit(login_url).path.startswith("/flows/login/")
    page = browser.get(login_url, allow_redirects=False, timeout=TIMEOUT)
    assert page.status_code == 200
    response = browser.post(login_url, data={"csrf_token": csrf_of(page.text), "username": username,
                                            "password": PASSWORD},
                            headers={"Referer": login_url}, allow_redirects=False, timeout=TIMEOUT)
    assert response.status_code == 302, response.text
    back = urljoin(base_url, response.headers["Location"])
    assert urlsplit(back).path == "/authorize"
    response = browser.get(back, allow_redirects=False, timeout=TIMEOUT)
    assert response.status_code == 302, response.text
    callback = response.headers["Location"]
    assert callback.startswith(REDIRECT_URI + "?"), callback
    return callback


def _run(live_server, rp, *, introspect: bool, tamper=None) -> tuple[dict, int]:
    config = {"issuer": live_server.url, "client_id": rp.client_id, "client_secret": rp.secret,
              "redirect_uri": rp.redirect_uri, "scope": "openid profile phone", "introspect": introspect}
    node = NodeRP(config)
    try:
        first = node.read()
        assert "error" not in first, first
        authorization = query_of(first["authorization_url"])
        assert authorization["code_challenge_method"] == "S256" and authorization["code_challenge"]
        assert authorization["state"] and authorization["nonce"] and authorization["client_id"] == rp.client_id
        # the line as a person types it: the IdP normalises it to +393931234567
        callback = _browser_login(live_server.url, first["authorization_url"], "393 123 4567")
        params = query_of(callback)
        assert params["iss"] == live_server.url and params["state"] == authorization["state"] and params["code"]
        node.send(tamper(callback) if tamper else callback)
        return node.finish()
    finally:
        node.close()


def _succeed(live_server, rp, *, introspect: bool) -> dict:
    result, code = _run(live_server, rp, introspect=introspect)
    assert code == 0 and "error" not in result, result
    assert result["ok"] is True and result["public_client"] is (rp.secret is None)
    return result


def _check(live_server, rp, result: dict) -> None:
    claims = result["id_token_claims"]
    assert result["server_issuer"] == live_server.url
    assert result["id_token_header"]["alg"] in ("ES256", "RS256") and result["id_token_header"]["kid"]
    assert claims["iss"] == live_server.url and claims["aud"] == rp.client_id
    assert claims["nonce"] == result["nonce"]
    for name in ("sub", "exp", "iat", "auth_time", "acr", "amr", "sid", "at_hash"):
        assert name in claims, name
    sub = claims["sub"]
    assert sub != LINE and "393" not in sub and "1234567" not in sub  # opaque, not the phone number
    assert claims["acr"] == "urn:selfcare:acr:password" and claims["amr"] == ["pwd"]
    assert claims["phone_number"] == LINE
    assert result["token_type"].lower() == "bearer"
    assert result["userinfo"]["sub"] == sub and result["userinfo"]["phone_number"] == LINE

    refresh = result["refresh"]
    assert refresh["worked"] and refresh["new_access_token"] and refresh["new_refresh_token"]
    assert refresh["refresh_token"] != result["refresh_token"]
    assert refresh["userinfo_sub"] == sub
    refreshed = refresh["id_token_claims"]
    assert refreshed is not None, "a refresh of an openid grant returns a new ID token"
    assert refreshed["sub"] == sub and refreshed["aud"] == rp.client_id and refreshed["iss"] == live_server.url
    assert refreshed["auth_time"] == claims["auth_time"] and refreshed["sid"] == claims["sid"]
    assert result["revocation"]["revoked"] is True

    # from python: the revoked refresh token is refused, and so is the one it replaced
    for token in (refresh["refresh_token"], result["refresh_token"]):
        data = {"grant_type": "refresh_token", "refresh_token": token}
        if rp.secret:
            response = requests.post(live_server.url + "/token", data=data,
                                     headers=basic(rp.client_id, rp.secret), timeout=TIMEOUT)
        else:
            response = requests.post(live_server.url + "/token", data={**data, "client_id": rp.client_id},
                                     timeout=TIMEOUT)
        assert response.status_code == 400 and response.json()["error"] == "invalid_grant", response.text
    # revoking a refresh token takes its grant's access tokens along (RFC 7009 §2.1)
    info = requests.get(live_server.url + "/userinfo", timeout=TIMEOUT,
                        headers={"Authorization": "Bearer " + refresh["access_token"]})
    assert info.status_code == 401


def test_confidential_client_interoperates_with_openid_client(live_server):
    live_server.factory.account()
    rp = live_server.factory.rp(redirect_uri=REDIRECT_URI)
    assert rp.secret
    result = _succeed(live_server, rp, introspect=True)
    _check(live_server, rp, result)
    assert result["introspection"]["active"] is True
    assert result["introspection"]["sub"] == result["id_token_claims"]["sub"]
    assert result["introspection"]["client_id"] == rp.client_id
    assert result["introspection_after_revocation"] == {"active": False}


def test_public_client_with_pkce_interoperates_with_openid_client(live_server):
    live_server.factory.account()
    rp = live_server.factory.rp(redirect_uri=REDIRECT_URI, auth_method="none")
    assert rp.secret is None
    result = _succeed(live_server, rp, introspect=False)
    _check(live_server, rp, result)


def test_openid_client_refuses_a_response_from_another_issuer(live_server):
    """The library's checks are live: a callback whose RFC 9207 ``iss`` is not our issuer is refused."""
    live_server.factory.account()
    rp = live_server.factory.rp(redirect_uri=REDIRECT_URI)
    wrong = quote("https://attacker.example", safe="")
    result, code = _run(live_server, rp, introspect=False,
                        tamper=lambda url: re.sub(r"([?&]iss=)[^&]*", lambda m: m.group(1) + wrong, url))
    assert code == 1 and "iss" in result.get("cause", ""), result


def test_rp_script_reports_errors_as_one_json_line():
    node = NodeRP({"client_id": "x", "redirect_uri": REDIRECT_URI})  # no issuer
    try:
        result, code = node.finish()
    finally:
        node.close()
    assert code == 1 and "issuer" in result["error"]
