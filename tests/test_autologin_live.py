"""Network autologin over real HTTP (issue 5 point 6): the operator's enrichment gateway before a live IdP.

``EnrichmentProxy`` (tests/gateway.py) is a real HTTP proxy on loopback: it strips any MSISDN header the
client sent and adds a freshly signed ``X-MSISDN`` for the line +393931234567 on every request, as the
operator's gateway does on the mobile path. It is the IdP's public face: ``ISSUER`` is the proxy's URL, so
discovery, the ``iss`` of the authorization response and of the tokens all name the address the browser and
the RP really use. The IdP's own port is the same server reached without the gateway (a fixed line, Wi-Fi).

1. chromium (Playwright) logs in to the demo RP through the proxy with "Accedi direttamente"; the same login
   page at the IdP's own port has no button, and ``prompt=login`` through the proxy asks for the password;
2. the independent client library (node ``openid-client``, tests/oidc_client/rp.mjs) completes a code flow
   whose login is that button, and validates the network-level ID token;
3. a client that is not the gateway (TCP peer 127.0.0.2, while only the gateway's 127.0.0.1 is trusted) sends
   its own ``X-MSISDN`` straight to the IdP, even correctly signed: ignored, no button, no login, and audited
   as ``autologin.spoof`` with reason ``untrusted_peer``.
"""
from __future__ import annotations

import os
import re
import secrets
from urllib.parse import urlencode, urljoin, urlsplit

import pytest
import requests
from playwright.sync_api import expect
from requests.adapters import HTTPAdapter

from examples import demo_rp
from idp import msisdn
from idp.extensions import db
from idp.models import AuditEvent

from .conftest import LiveServer, free_port
from .gateway import GATEWAY_SETTINGS, EnrichmentProxy, signed_headers
from .helpers import LINE, Factory, csrf_of, pkce, query_of
from .test_browser import ARTIFACTS, _claim, _page
from .test_openid_client import REDIRECT_URI, TIMEOUT, NodeRP

pytestmark = [pytest.mark.live]

ACR_NETWORK = "urn:selfcare:acr:network"
MASKED = "+39 393 ***4567"
SPOOFER_ADDRESS = "127.0.0.2"  # loopback too, but not the gateway's address


class GatewayIdP:
    """A live IdP whose public face is an enrichment proxy for one line."""

    def __init__(self, make_app, number=LINE, **settings):
        self.proxy = EnrichmentProxy(None, number)  # bound now: its URL is the issuer
        self.port = free_port()
        self.app = make_app(ISSUER=self.proxy.url, **{**GATEWAY_SETTINGS, **settings})
        self.server = LiveServer(self.app, self.port)
        self.url = self.server.url  # the IdP itself, without the gateway
        self.factory = Factory(self.app)

    def __enter__(self):
        self.server.start()
        self.proxy.upstream_port = self.port
        self.proxy.__enter__()
        return self

    def __exit__(self, *exc):
        self.proxy.__exit__(*exc)
        self.server.stop()

    def spoof_events(self) -> list[AuditEvent]:
        with self.app.app_context():
            rows = db.session.query(AuditEvent).filter_by(type="autologin.spoof").order_by(AuditEvent.id)
            rows = rows.all()
            db.session.expunge_all()
            return rows


@pytest.fixture
def gateway_idp(make_app):
    with GatewayIdP(make_app) as idp:
        idp.factory.account()
        yield idp


def _network_form(html: str) -> tuple[str, str]:
    """The "Accedi direttamente" form's action and CSRF token, as a browser would submit it."""
    section = re.search(r'<section class="network" id="network-login">(.*?)</section>', html, re.S)
    assert section, "no network-login section on the page"
    action = re.search(r'<form method="post" action="([^"]+)"', section.group(1))
    assert action and "Accedi direttamente" in section.group(1)
    return action.group(1), csrf_of(section.group(1))


def _authorize_url(base: str, client_id: str, redirect_uri: str, **extra) -> str:
    _verifier, challenge = pkce()
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
              "scope": "openid", "state": secrets.token_urlsafe(8), "nonce": secrets.token_urlsafe(8),
              "code_challenge": challenge, "code_challenge_method": "S256", **extra}
    return base + "/authorize?" + urlencode(params)


# 1. the browser -------------------------------------------------------------------------------------------

@pytest.fixture
def demo_portal_via_gateway(gateway_idp):
    """The demo RP, whose IdP is the proxy's URL (the issuer), registered like ``flask idp demo`` does."""
    port = free_port()
    rp_url = f"http://127.0.0.1:{port}"
    rp = gateway_idp.factory.rp(name="Selfcare demo portal", redirect_uri=rp_url + "/callback",
                                post_logout_redirect_uris=[rp_url + "/"],
                                scope="openid profile email phone lines")
    app = demo_rp.create_app({"client_id": rp.client_id, "client_secret": rp.secret,
                              "redirect_uri": rp.redirect_uri, "rp_url": rp_url,
                              "issuer": gateway_idp.proxy.url})
    server = LiveServer(app, port).start()
    server.client_id, server.redirect_uri = rp.client_id, rp.redirect_uri
    yield server
    server.stop()


@pytest.mark.browser
def test_browser_logs_in_with_accedi_direttamente_through_the_gateway(chromium, gateway_idp,
                                                                        demo_portal_via_gateway):
    proxy, portal = gateway_idp.proxy, demo_portal_via_gateway
    context, page = _page(chromium, locale="it-IT")
    try:
        page.goto(portal.url)
        page.get_by_role("link", name="Accedi").click()

        # the IdP's login page, reached through the gateway: the button, with the line masked
        expect(page).to_have_url(re.compile(re.escape(proxy.url) + r"/flows/login/[A-Za-z0-9_-]+$"))
        login_path = urlsplit(page.url).path
        button = page.get_by_role("button", name="Accedi direttamente")
        expect(button).to_be_visible()
        expect(page.locator("#network-login")).to_contain_text(MASKED)
        assert LINE not in page.content()
        os.makedirs(ARTIFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(ARTIFACTS, "login-network-it.png"), full_page=True)

        # the same page at the IdP's own port: no gateway, no header, no button — only line and password
        page.goto(gateway_idp.url + login_path)
        expect(page.get_by_role("heading", name="Accedi")).to_be_visible()
        expect(page.get_by_label("Username (linea mobile)")).to_be_visible()
        expect(page.get_by_label("Password")).to_be_visible()
        expect(page.locator("#network-login")).to_have_count(0)
        expect(page.get_by_role("button", name="Accedi direttamente")).to_have_count(0)

        # back through the gateway, and the click
        page.goto(proxy.url + login_path)
        page.get_by_role("button", name="Accedi direttamente").click()

        # back on the RP, which validated the ID token: the network level, by the mobile network operator
        expect(page).to_have_url(portal.url + "/")
        expect(page.get_by_role("heading", name="Benvenuto nel portale")).to_be_visible()
        page.screenshot(path=os.path.join(ARTIFACTS, "demo-portal-network-claims.png"), full_page=True)
        expect(_claim(page, "acr")).to_have_text(ACR_NETWORK)
        expect(_claim(page, "amr")).to_have_text("mno")
        expect(_claim(page, "iss")).to_have_text(proxy.url)
        expect(_claim(page, "aud")).to_have_text(portal.client_id)
        expect(_claim(page, "phone_number")).to_have_text(LINE)

        # an RP asking for prompt=login, through the gateway and with a network session: the password page
        page.goto(_authorize_url(proxy.url, portal.client_id, portal.redirect_uri, prompt="login"))
        expect(page).to_have_url(re.compile(re.escape(proxy.url) + r"/flows/login/"))
        expect(page.get_by_role("heading", name="Accedi")).to_be_visible()
        expect(page.get_by_label("Password")).to_be_visible()
        expect(page.get_by_label("Username (linea mobile)")).to_have_value(LINE)
        expect(page.locator("#network-login")).to_have_count(0)
        expect(page.get_by_role("button", name="Accedi direttamente")).to_have_count(0)
    finally:
        context.close()
    assert gateway_idp.spoof_events() == []  # the gateway's own headers are never taken for a spoof


# 2. the independent client library ------------------------------------------------------------------------

def _network_login(proxy_url: str, authorization_url: str) -> str:
    """Python as the phone's browser on the mobile network: every request goes through the gateway, and the
    login is the "Accedi direttamente" button. Returns the redirect to the RP, unfollowed."""
    assert authorization_url.startswith(proxy_url + "/authorize?")
    browser = requests.Session()
    response = browser.get(authorization_url, allow_redirects=False, timeout=TIMEOUT)
    assert response.status_code == 302, response.text
    login_url = urljoin(proxy_url, response.headers["Location"])
    assert login_url.startswith(proxy_url + "/flows/login/")
    page = browser.get(login_url, allow_redirects=False, timeout=TIMEOUT)
    assert page.status_code == 200 and MASKED in page.text and LINE not in page.text
    action, token = _network_form(page.text)
    assert urljoin(login_url, action) == login_url + "/network"
    response = browser.post(urljoin(login_url, action), data={"csrf_token": token},
                            headers={"Referer": login_url}, allow_redirects=False, timeout=TIMEOUT)
    assert response.status_code == 302, response.text
    assert "idp_sso" in browser.cookies
    back = urljoin(proxy_url, response.headers["Location"])
    assert back.startswith(proxy_url + "/authorize?")
    response = browser.get(back, allow_redirects=False, timeout=TIMEOUT)
    assert response.status_code == 302, response.text
    callback = response.headers["Location"]
    assert callback.startswith(REDIRECT_URI + "?"), callback
    return callback


def test_openid_client_completes_a_network_login_through_the_gateway(gateway_idp):
    proxy = gateway_idp.proxy
    rp = gateway_idp.factory.rp(redirect_uri=REDIRECT_URI)
    node = NodeRP({"issuer": proxy.url, "client_id": rp.client_id, "client_secret": rp.secret,
                   "redirect_uri": rp.redirect_uri, "scope": "openid profile phone"})
    try:
        first = node.read()
        assert "error" not in first, first
        authorization = query_of(first["authorization_url"])
        assert authorization["code_challenge_method"] == "S256" and authorization["nonce"]
        callback = _network_login(proxy.url, first["authorization_url"])
        params = query_of(callback)
        assert params["iss"] == proxy.url and params["state"] == authorization["state"] and params["code"]
        node.send(callback)
        result, code = node.finish()
    finally:
        node.close()
    assert code == 0 and "error" not in result, result
    assert result["ok"] is True and result["server_issuer"] == proxy.url
    claims = result["id_token_claims"]
    assert claims["iss"] == proxy.url and claims["aud"] == rp.client_id and claims["nonce"] == result["nonce"]
    assert claims["acr"] == ACR_NETWORK and claims["amr"] == ["mno"]
    assert claims["phone_number"] == LINE and claims["sub"] != LINE and "1234567" not in claims["sub"]
    assert result["userinfo"]["sub"] == claims["sub"]
    refreshed = result["refresh"]["id_token_claims"]
    assert refreshed["sub"] == claims["sub"] and refreshed["sid"] == claims["sid"]
    assert gateway_idp.spoof_events() == []


# 3. spoofing through the network ----------------------------------------------------------------------------

class _FromAddress(HTTPAdapter):
    """Connections that leave from a chosen local address (the TCP peer the IdP sees)."""

    def __init__(self, address: str):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def test_msisdn_header_from_a_peer_that_is_not_the_gateway_is_ignored_and_audited(make_app):
    # only the gateway's address is trusted; the spoofer is another loopback address, a real TCP peer
    with GatewayIdP(make_app, AUTOLOGIN_TRUSTED_CIDRS=["127.0.0.1/32"]) as idp:
        idp.factory.account()
        rp = idp.factory.rp(redirect_uri=REDIRECT_URI)
        spoofer = requests.Session()
        spoofer.mount("http://", _FromAddress(SPOOFER_ADDRESS))

        response = spoofer.get(_authorize_url(idp.url, rp.client_id, rp.redirect_uri), allow_redirects=False,
                               timeout=TIMEOUT)
        assert response.status_code == 302, response.text
        login_url = urljoin(idp.url, response.headers["Location"])
        assert urlsplit(login_url).path.startswith("/flows/login/")

        # its own bare X-MSISDN, and then one signed with the gateway's real key: both ignored
        for headers in ({"X-MSISDN": LINE}, signed_headers(LINE)):
            page = spoofer.get(login_url, headers=headers, allow_redirects=False, timeout=TIMEOUT)
            assert page.status_code == 200
            assert "Accedi direttamente" not in page.text and 'id="network-login"' not in page.text
            assert 'id="username"' in page.text and 'id="password"' in page.text
        # nor does a forged click log it in
        click = spoofer.post(login_url + "/network", data={"csrf_token": csrf_of(page.text)},
                             headers={**signed_headers(LINE), "Referer": login_url}, allow_redirects=False,
                             timeout=TIMEOUT)
        assert click.status_code == 403 and "Accedi direttamente" not in click.text
        assert "idp_sso" not in spoofer.cookies

        events = idp.spoof_events()
        assert len(events) == 3
        for event in events:
            assert event.outcome == "refused" and event.details["reason"] == "untrusted_peer"
            assert event.client_address == SPOOFER_ADDRESS
            assert event.masked_line == msisdn.mask(LINE) == MASKED
            assert event.account_id is None

        # the control: the same login page through the gateway (peer 127.0.0.1, trusted) does get the button
        through_gateway = requests.get(idp.proxy.url + urlsplit(login_url).path, allow_redirects=False,
                                       timeout=TIMEOUT)
        assert through_gateway.status_code == 200 and "Accedi direttamente" in through_gateway.text
        assert MASKED in through_gateway.text
        assert len(idp.spoof_events()) == 3
