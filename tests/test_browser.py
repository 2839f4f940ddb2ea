"""A real browser (Debian's chromium through Playwright) logs in to the demo RP through the IdP and out again.

The IdP runs on a loopback port (``live_server``), the demo RP (``examples/demo_rp.py``, Authlib's Flask
client) on another, both in this process; Playwright drives chromium, so cookies, redirects, forms, CSP and
the pages' language are the browser's own. Screenshots of the pages go to tests/artifacts/ (git-ignored).
"""
from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect

from examples import demo_rp

from .conftest import LiveServer, free_port
from .helpers import LINE, PASSWORD

pytestmark = [pytest.mark.live, pytest.mark.browser]

ARTIFACTS = os.path.join(os.path.dirname(__file__), "artifacts")
WRONG_CREDENTIALS = "Numero di linea o password non corretti."


@pytest.fixture
def demo_portal(live_server):
    """The demo RP on its own loopback port, registered at the live IdP like ``flask idp demo`` does."""
    port = free_port()
    rp_url = f"http://127.0.0.1:{port}"
    rp = live_server.factory.rp(name="Selfcare demo portal", redirect_uri=rp_url + "/callback",
                                post_logout_redirect_uris=[rp_url + "/"],
                                scope="openid profile email phone lines")
    app = demo_rp.create_app({"client_id": rp.client_id, "client_secret": rp.secret,
                              "redirect_uri": rp.redirect_uri, "rp_url": rp_url, "issuer": live_server.url})
    server = LiveServer(app, port).start()
    server.client_id = rp.client_id
    yield server
    server.stop()


def _page(chromium, **context_options):
    context = chromium.new_context(**context_options)
    context.set_default_timeout(15000)
    return context, context.new_page()


def _claim(page, name: str):
    return page.locator(f'#id-token-claims tr[data-claim="{name}"] td.value')


def test_login_on_the_demo_portal_and_logout(chromium, live_server, demo_portal):
    live_server.factory.account()
    context, page = _page(chromium, locale="it-IT")
    try:
        page.goto(demo_portal.url)
        expect(page.get_by_role("heading", name="Portale dimostrativo Selfcare")).to_be_visible()
        page.get_by_role("link", name="Accedi").click()

        # the IdP's login page, in Italian
        expect(page).to_have_url(re.compile(re.escape(live_server.url) + r"/flows/login/"))
        expect(page.get_by_role("heading", name="Accedi")).to_be_visible()
        expect(page.get_by_text("per continuare su Selfcare demo portal")).to_be_visible()
        expect(page.get_by_label("Username (linea mobile)")).to_be_visible()
        assert page.locator("html").get_attribute("lang") == "it"
        os.makedirs(ARTIFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(ARTIFACTS, "login-it.png"), full_page=True)

        # an unknown line and a wrong password get the same generic message
        page.get_by_label("Username (linea mobile)").fill("393 000 0000")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Accedi").click()
        expect(page.get_by_role("alert")).to_have_text(WRONG_CREDENTIALS)
        page.get_by_label("Username (linea mobile)").fill(LINE)
        page.get_by_label("Password").fill("sbagliata-" + PASSWORD)
        page.get_by_role("button", name="Accedi").click()
        expect(page.get_by_role("alert")).to_have_text(WRONG_CREDENTIALS)
        page.screenshot(path=os.path.join(ARTIFACTS, "login-it-error.png"), full_page=True)

        # the line as a person types it, and the right password
        page.get_by_label("Username (linea mobile)").fill("393 123 4567")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Accedi").click()

        # back on the RP, which validated the ID token and shows its claims
        expect(page).to_have_url(demo_portal.url + "/")
        expect(page.get_by_role("heading", name="Benvenuto nel portale")).to_be_visible()
        page.screenshot(path=os.path.join(ARTIFACTS, "demo-portal-claims.png"), full_page=True)
        sub = _claim(page, "sub").inner_text().strip()
        assert sub and sub != LINE and "393" not in sub and "1234567" not in sub
        expect(_claim(page, "iss")).to_have_text(live_server.url)
        expect(_claim(page, "aud")).to_have_text(demo_portal.client_id)
        expect(_claim(page, "acr")).to_have_text("urn:selfcare:acr:password")
        expect(_claim(page, "amr")).to_have_text("pwd")
        expect(_claim(page, "phone_number")).to_have_text(LINE)
        expect(page.locator('#userinfo-claims tr[data-claim="sub"] td.value')).to_have_text(sub)

        # "Esci": RP-initiated logout at the IdP, back to the RP
        page.get_by_role("link", name="Esci").first.click()
        expect(page).to_have_url(demo_portal.url + "/")
        expect(page.get_by_text("Sei uscito dal portale e dal servizio di accesso.")).to_be_visible()
        assert "idp_sso" not in {cookie["name"] for cookie in context.cookies()}

        # the IdP's session is over too: a new "Accedi" asks for the password again (no silent SSO)
        page.get_by_role("link", name="Accedi").click()
        expect(page).to_have_url(re.compile(re.escape(live_server.url) + r"/flows/login/"))
        expect(page.get_by_role("heading", name="Accedi")).to_be_visible()
    finally:
        context.close()


def test_login_page_follows_the_browsers_language(chromium, live_server, demo_portal):
    live_server.factory.account()
    context, page = _page(chromium, locale="en-US")  # Accept-Language: en-US
    try:
        page.goto(demo_portal.url)
        page.get_by_role("link", name="Accedi").click()  # the demo portal itself speaks only Italian
        expect(page).to_have_url(re.compile(re.escape(live_server.url) + r"/flows/login/"))
        expect(page.get_by_role("heading", name="Log in")).to_be_visible()
        assert page.locator("html").get_attribute("lang") == "en"
        os.makedirs(ARTIFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(ARTIFACTS, "login-en.png"), full_page=True)
        page.get_by_label("Username (mobile line)").fill(LINE)
        page.get_by_label("Password").fill("wrong-" + PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("alert")).to_have_text("Incorrect line number or password.")

        # the page's own language switch wins over the browser's preference
        page.get_by_role("link", name="Italiano").click()
        expect(page.get_by_role("heading", name="Accedi")).to_be_visible()
    finally:
        context.close()
