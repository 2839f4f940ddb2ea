"""Web security (issue 9 point 4): the browser-facing defences, each checked on the real pages.

* security headers on every HTML page (CSP with ``frame-ancestors 'none'``, ``X-Frame-Options``,
  ``X-Content-Type-Options``, ``Referrer-Policy``, ``Cache-Control``), and HSTS on every response of a
  production-configured app (none in development and test);
* cookies: the SSO cookie and the CSRF cookie are ``HttpOnly``, ``SameSite=Lax`` and ``Secure`` outside development;
* the session is renewed at login (a planted cookie is worthless) and at every step-up (same ``sid``, new cookie);
* no open redirect: a list of bypass forms against ``/authorize`` ``redirect_uri``, ``/logout``
  ``post_logout_redirect_uri`` and every ``?login=`` / continue / next link the flows build;
* CSRF: every POST form of the app (enumerated from its URL map) refuses a missing or foreign token, and the only
  forms exempt are the OAuth endpoints, which are not browser forms;
* every user-controlled value is rendered escaped (login_hint, ui_locales, typed lines, answers, e-mails, client
  names registered through the CLI).

The production app of ``test_hsts_on_every_response_in_production`` is the complete configuration of
``tests/test_config.py`` with PostgreSQL and Redis on dead loopback ports: it answers the pages that need neither,
and the 503 pages of those that do — with HSTS too.
"""
from __future__ import annotations

import html
import re
from urllib.parse import urlencode, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from markupsafe import escape

from idp import create_app, passwords
from idp.extensions import csrf, db
from idp.models import Account, Line

from .gateway import GATEWAY_SETTINGS, signed_headers
from .helpers import LINE, PASSWORD, Factory, Journey, RegisteredRP, csrf_of, pkce, query_of
from .test_config import GOOD_PRODUCTION

ACR_PASSWORD = "urn:selfcare:acr:password"
ACR_QUESTION = "urn:selfcare:acr:password+question"
HSTS = "max-age=31536000; includeSubDomains"
RP_REDIRECT = "https://rp.example/cb"
RP_POST_LOGOUT = "https://rp.example/bye"
NEW_PASSWORD = "Girasole-Lento-73"
FREE_VOICE = "+393937654321"
FREE_DATA = "+393401112233"
MARKUP = ('"><script>alert(7331)</script>', "'><img src=x onerror=alert(7331)>", '" onfocus="alert(7331)" x="')
OAUTH_ENDPOINTS = {"/authorize", "/token", "/revoke", "/introspect", "/userinfo", "/logout", "/authorize-challenge"}


# helpers ---------------------------------------------------------------------------------------------------------

def with_answer(app, account_id, answer="Fido"):
    with app.app_context():
        account = db.session.get(Account, account_id)
        account.security_question = "first_pet"
        account.security_answer_hash = passwords.hash_secret(passwords.normalise_answer(answer))
        db.session.commit()


def add_line(app, number, sim_type="voice", pin=None, customer_code="C0001"):
    customer_id = Factory(app).customer(customer_code)
    with app.app_context():
        db.session.add(Line(msisdn=number, customer_id=customer_id, sim_type=sim_type, status="active",
                            sim_pin_hash=passwords.hash_secret(pin) if pin else None))
        db.session.commit()


def post_form(client, url, page_url=None, **data):
    page = client.get(page_url or url)
    return client.post(url, data={"csrf_token": csrf_of(page.text), **data})


def set_cookie_of(response, name) -> str | None:
    return next((header for header in response.headers.getlist("Set-Cookie") if header.startswith(name + "=")), None)


def sso_cookie(client) -> str | None:
    cookie = client.get_cookie("idp_sso")
    return cookie.value if cookie is not None else None


def claims_of(client, token):
    return jwt.decode(token, KeySet.import_key_set(client.get("/jwks.json").json)).claims


def links_of(page: str) -> list[str]:
    """Every URL a page makes the browser follow or submit to."""
    found = re.findall(r'\b(?:href|action|formaction|src)\s*=\s*"([^"]*)"', page, re.I)
    found += re.findall(r"\b(?:href|action|formaction|src)\s*=\s*'([^']*)'", page, re.I)
    found += re.findall(r'http-equiv="refresh"[^>]*content="[^"]*url=([^"]*)"', page, re.I)
    return [html.unescape(link) for link in found]


def is_ours(link: str) -> bool:
    """A path or query on this server: never a scheme, a host, or a browser-normalised ``//`` / ``/\\``."""
    link = link.strip()
    if link.startswith(("?", "#")):
        return True
    parts = urlsplit(link)
    return (not parts.scheme and not parts.netloc and link.startswith("/")
            and not link.startswith(("//", "/\\")) and "\\" not in parts.path and "\t" not in link)


def assert_stays_here(response, allowed=()):
    """Neither the redirect nor any link of the page leads anywhere but here (or to an exactly registered URI)."""
    location = response.headers.get("Location")
    if location is not None:
        assert is_ours(location) or any(location == uri or location.startswith((uri + "?", uri + "#"))
                                        for uri in allowed), f"redirect to {location!r}"
    if response.mimetype == "text/html":
        for link in links_of(response.get_data(as_text=True)):
            assert is_ours(link) or link.startswith("/static/"), f"link to {link!r}"


def bypasses(registered: str) -> list[str]:
    """Forms that have fooled redirect checks somewhere, aimed at ``registered`` (``https://rp.example/…``)."""
    path = urlsplit(registered).path
    evil = "evil.example"
    return [
        f"//{evil}", f"//{evil}{path}", f"///{evil}{path}", f"/\\{evil}", f"\\\\{evil}", f"\\/{evil}",
        f"https:{evil}", f"https:/{evil}{path}", f"https:\\\\{evil}", f"https:/\\{evil}",
        "javascript:alert(document.domain)", "JaVaScRiPt:alert(1)", "java\tscript:alert(1)",
        f"javascript://rp.example{path}%0aalert(1)", "data:text/html,<script>alert(1)</script>",
        "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==", "vbscript:msgbox(1)",
        f"%2F%2F{evil}", f"/%2F%2F{evil}", f"%2f%2f{evil}%2fcb", f"https%3A%2F%2F{evil}",
        f"http://rp.example@{evil}{path}", f"https://rp.example@{evil}{path}", f"https://rp.example:443@{evil}{path}",
        f"https://rp.example%40{evil}{path}", f"https://rp.example:@{evil}{path}",
        f"https://rp.example.{evil}{path}", f"https://{evil}/{registered}", f"https://{evil}/?{registered}",
        f"https://{evil}#{registered}", f"https://{evil}{path}",
        f"https://rp.example.{path}", f"https://rp.example..{path}", f"https://{evil}.{path}",
        f"HTTPS://RP.EXAMPLE{path}", f"https://RP.example{path}", f"Https://rp.example{path}",
        f"https://rp.example{path.upper()}",
        f"\t{registered}", f"{registered}\t", f"https://rp.ex\tample{path}", f"{registered}\n", f"\n{registered}",
        f"{registered}%0d%0aLocation:%20https://{evil}", f" {registered}", f"{registered} ",
        f"https://rp.example\\@{evil}{path}", f"https://rp.example\\{evil}{path}",
        f"https://rp。example{path}", f"https://rp．example{path}", f"https://rp%E3%80%82example{path}",
        f"https://rp%2eexample{path}", f"https://ｒｐ.example{path}", f"https://rp.example{path}\u2025",
        f"{registered}/../../{evil}", f"{registered}/..%2F..%2F{evil}", f"{registered}/", f"https://rp.example/{path}",
        f"{registered}?", f"{registered}#", f"{registered}?next=https://{evil}", f"{registered}#@{evil}",
        f"http://rp.example{path}", f"https://rp.example:443{path}", f"https://rp.example:8443{path}",
        f"https://{evil}%00.rp.example{path}", f"https://{evil}%2523@rp.example{path}",
    ]


# headers ----------------------------------------------------------------------------------------------------------

def _html_pages(app, client, factory, outbox):
    """(name, response) for every kind of HTML page: journeys, self-service, account, errors."""
    account_id = factory.account()
    with_answer(app, account_id)
    add_line(app, FREE_VOICE)
    rp = factory.rp(post_logout_redirect_uris=[RP_POST_LOGOUT])
    pages = [("home", client.get("/"))]
    journey = Journey(client, rp)
    login_url = journey.authorize().headers["Location"]
    pages.append(("login", client.get(login_url)))
    pages.append(("login refused", journey.submit_login(login_url, password="wrong-password")))
    login_id = login_url.rsplit("/", 1)[1]
    pages.append(("recovery", client.get(f"/flows/recovery/?login={login_id}")))
    recovery = post_form(client, "/flows/recovery/", username=LINE).headers["Location"]
    pages.append(("recovery question", client.get(recovery)))
    post_form(client, recovery, answer="Fido")
    pages.append(("recovery code", client.get(recovery)))
    pages.append(("employee start", client.get(f"/flows/registration_employee/?login={login_id}")))
    employee = post_form(client, "/flows/registration_employee/", way="sms", login="").headers["Location"]
    pages.append(("employee line", client.get(employee)))
    post_form(client, employee, line=FREE_VOICE)
    pages.append(("employee code", client.get(employee)))
    post_form(client, employee, code=outbox.last_code(FREE_VOICE))
    pages.append(("employee credentials", client.get(employee)))
    referent = client.get(f"/flows/registration_referent/?login={login_id}").headers["Location"]
    pages.append(("referent details", client.get(referent)))
    pages.append(("expired flow", client.get("/flows/login/" + "x" * 32)))
    pages.append(("not found", client.get("/nowhere")))
    pages.append(("method not allowed", client.put("/account")))
    pages.append(("csrf refused", client.post(login_url, data={"username": LINE, "password": PASSWORD})))
    pages.append(("body too large", client.post("/flows/recovery/", data={"x": "y" * 70000})))
    pages.append(("headers too large", client.get("/", headers={"X-Junk": "z" * 20000})))
    pages.append(("account without session", client.get("/account")))
    pages.append(("authorize error", client.get("/authorize", query_string={"client_id": "nobody"})))
    tokens = journey.tokens()
    pages.append(("account", client.get("/account")))
    sim = client.post("/flows/sim_association/start", data={"csrf_token": csrf_of(client.get("/account").text)})
    pages.append(("sim line", client.get(sim.headers["Location"])))
    pages.append(("logout confirm", client.get("/logout")))
    pages.append(("logged out", client.get("/logout", query_string={"id_token_hint": tokens["id_token"]})))
    return pages


def test_security_headers_on_every_html_page(app, client, factory, outbox):
    pages = _html_pages(app, client, factory, outbox)
    assert {response.status_code for _name, response in pages} >= {200, 400, 401, 404, 405, 410, 413, 431}
    for name, response in pages:
        if response.mimetype != "text/html":
            continue
        csp = response.headers.get("Content-Security-Policy", "")
        directives = {d.strip().split(" ")[0]: d.strip() for d in csp.split(";") if d.strip()}
        assert directives.get("default-src") == "default-src 'self'", name
        assert directives.get("frame-ancestors") == "frame-ancestors 'none'", name
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "*" not in csp, name
        assert response.headers.get("X-Frame-Options") == "DENY", name
        assert response.headers.get("X-Content-Type-Options") == "nosniff", name
        assert response.headers.get("Referrer-Policy") == "no-referrer", name
        assert response.headers.get("Cache-Control") == "no-store", name
        body = response.get_data(as_text=True)
        # the CSP forbids inline code, so the pages must not rely on any
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", body, re.I), name
        assert not re.search(r"\son[a-z]+\s*=", body, re.I), name
    assert "Strict-Transport-Security" not in pages[0][1].headers  # not in test; see the production test


def test_json_and_other_answers_are_nosniff(client):
    for response in (client.get("/jwks.json"), client.get("/.well-known/openid-configuration"),
                     client.post("/token"), client.get("/userinfo"), client.post("/introspect"),
                     client.get("/healthz"), client.get("/static/idp.css")):
        assert response.headers.get("X-Content-Type-Options") == "nosniff", response.request.path


@pytest.fixture
def production(keys_dir):
    """A production-configured app (``tests/test_config.py``'s GOOD_PRODUCTION), its dependencies unreachable."""
    return create_app(dict(GOOD_PRODUCTION, KEYS_DIR=keys_dir, DATABASE_URL="postgresql://idp@127.0.0.1:1/idp",
                           REDIS_URL="redis://127.0.0.1:1/0"))


def test_hsts_on_every_response_in_production(production):
    client = production.test_client()
    https = {"base_url": "https://login.selfcare.example"}
    responses = [client.get("/healthz", **https), client.get("/jwks.json", **https),
                 client.get("/.well-known/openid-configuration", **https), client.get("/", **https),
                 client.get("/flows/recovery/", **https), client.get("/logout", **https),
                 client.get("/nowhere", **https), client.post("/token", **https),
                 client.get("/authorize", query_string={"client_id": "portal"}, **https),  # needs the database: 503
                 client.post("/flows/recovery/", **https),  # no CSRF token: 400
                 client.get("/", headers={"X-Junk": "z" * 20000}, **https),
                 client.get("/healthz")]  # plain http (behind a TLS proxy that forgot X-Forwarded-Proto) too
    assert {r.status_code for r in responses} >= {200, 400, 404, 431, 503}
    for response in responses:
        assert response.headers.get("Strict-Transport-Security") == HSTS, response.request.path


@pytest.mark.parametrize("deployment", ["development", "test"])
def test_no_hsts_outside_production(make_app, deployment):
    app = make_app(DEPLOYMENT=deployment)
    for response in (app.test_client().get("/"), app.test_client().get("/healthz")):
        assert "Strict-Transport-Security" not in response.headers


# cookies ---------------------------------------------------------------------------------------------------------

def test_csrf_cookie_is_secure_httponly_and_samesite_in_production(production):
    page = production.test_client().get("/flows/recovery/", base_url="https://login.selfcare.example")
    cookie = set_cookie_of(page, "idp_csrf")
    assert cookie is not None and "csrf_token" in page.text
    assert "; Secure" in cookie and "; HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert production.config["COOKIE_SECURE"] is True and production.config["WTF_CSRF_SSL_STRICT"] is True


@pytest.mark.parametrize("secure", [True, False])
def test_sso_cookie_flags(make_app, secure):
    """Secure whenever COOKIE_SECURE is (production forces it: test_config); always HttpOnly and SameSite=Lax."""
    app = make_app(COOKIE_SECURE=secure)
    factory = Factory(app)
    factory.account()
    client = app.test_client()
    base = {"base_url": "https://localhost"} if secure else {}
    journey = Journey(client, factory.rp())
    location = client.get("/authorize", query_string=journey.params(), **base).headers["Location"]
    page = client.get(location, **base)
    login = client.post(location, data={"csrf_token": csrf_of(page.text), "username": LINE, "password": PASSWORD},
                        headers={"Referer": f"https://localhost{location}"} if secure else {}, **base)
    assert login.status_code == 302, login.text
    for cookie in (set_cookie_of(login, "idp_sso"), set_cookie_of(page, "idp_csrf")):
        assert cookie is not None
        assert "; HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
        assert ("; Secure" in cookie) is secure
    value = set_cookie_of(login, "idp_sso").split(";")[0].split("=", 1)[1]
    assert len(value) >= 40 and LINE not in value  # a random handle: nothing about the person
    token = csrf_of(client.get("/account", **base).text)
    ended = client.post("/logout", data={"confirm": "yes", "csrf_token": token},
                        headers={"Referer": "https://localhost/logout"} if secure else {}, **base)
    cleared = set_cookie_of(ended, "idp_sso")
    assert cleared is not None and ("Max-Age=0" in cleared or "Expires=Thu, 01 Jan 1970" in cleared)
    assert "; HttpOnly" in cleared and ("; Secure" in cleared) is secure


# session renewal --------------------------------------------------------------------------------------------------

def test_login_renews_the_session_and_a_planted_cookie_is_worthless(app, factory):
    """Session fixation: whatever cookie value the browser held before a login, the login issues a new random one
    and destroys the session the old value named, so whoever planted it holds nothing afterwards."""
    victim_id = factory.account()
    attacker_line = "+393939999999"
    factory.account(line=attacker_line, email="eve@acme.example")
    rp = factory.rp()
    attacker = app.test_client()
    Journey(attacker, rp).login_and_get_code(username=attacker_line)
    planted = sso_cookie(attacker)
    victim = app.test_client()
    victim.set_cookie("idp_sso", planted)  # the attacker's own session, tossed into the victim's browser
    tokens = Journey(victim, rp).tokens(prompt="login")  # the victim logs in with their own line
    renewed = sso_cookie(victim)
    assert renewed and renewed != planted
    assert attacker.get("/account").status_code == 401  # the planted session was destroyed, not taken over
    with app.app_context():
        assert claims_of(victim, tokens["id_token"])["sub"] == db.session.get(Account, victim_id).public_id
    made_up = app.test_client()
    made_up.set_cookie("idp_sso", "attacker-chosen-value")  # a value the attacker could reuse later
    Journey(made_up, rp).login_and_get_code()
    assert sso_cookie(made_up) not in (None, "attacker-chosen-value")
    replay = app.test_client()
    replay.set_cookie("idp_sso", "attacker-chosen-value")
    assert replay.get("/account").status_code == 401


def test_step_up_to_the_question_renews_the_cookie_and_keeps_the_sid(app, factory):
    with_answer(app, factory.account())
    rp = factory.rp()
    client = app.test_client()
    first = claims_of(client, Journey(client, rp).tokens()["id_token"])
    before = sso_cookie(client)
    journey = Journey(client, rp)
    step = journey.authorize(acr_values=ACR_QUESTION).headers["Location"]
    answered = post_form(client, step, answer="Fido")
    code = query_of(client.get(answered.headers["Location"]).headers["Location"])["code"]
    second = claims_of(client, journey.redeem(code).json["id_token"])
    after = sso_cookie(client)
    assert second["acr"] == ACR_QUESTION and second["sid"] == first["sid"]
    assert after and after != before
    stale = app.test_client()
    stale.set_cookie("idp_sso", before)
    assert stale.get("/account").status_code == 401  # the pre-step-up cookie opens nothing any more


def test_step_up_from_the_network_level_renews_the_cookie(make_app):
    app = make_app(**GATEWAY_SETTINGS)
    factory = Factory(app)
    factory.account()
    rp = factory.rp()
    client = app.test_client()
    journey = Journey(client, rp)
    location = journey.authorize().headers["Location"]
    page = client.get(location, headers=signed_headers(LINE))
    clicked = client.post(location + "/network", data={"csrf_token": csrf_of(page.text)},
                          headers=signed_headers(LINE))
    assert clicked.status_code == 302, clicked.text
    network_cookie = sso_cookie(client)
    assert client.get("/account").status_code == 200
    step = Journey(client, rp).authorize(acr_values=ACR_PASSWORD).headers["Location"]
    assert step.startswith("/flows/login/")
    done = Journey(client, rp).submit_login(step)
    assert done.status_code == 302
    assert sso_cookie(client) != network_cookie
    stale = app.test_client()
    stale.set_cookie("idp_sso", network_cookie)
    assert stale.get("/account").status_code == 401


def test_logout_destroys_the_session_server_side(app, factory):
    factory.account()
    rp = factory.rp()
    client = app.test_client()
    tokens = Journey(client, rp).tokens()
    cookie = sso_cookie(client)
    client.get("/logout", query_string={"id_token_hint": tokens["id_token"]})
    replay = app.test_client()
    replay.set_cookie("idp_sso", cookie)
    assert replay.get("/account").status_code == 401


# open redirects ---------------------------------------------------------------------------------------------------

def test_authorize_never_redirects_to_an_unregistered_uri(app, factory):
    factory.account()
    rp = factory.rp(redirect_uri=RP_REDIRECT)
    anonymous, logged_in = app.test_client(), app.test_client()
    Journey(logged_in, rp).login_and_get_code()
    _verifier, challenge = pkce()
    for uri in bypasses(RP_REDIRECT):
        params = {"response_type": "code", "client_id": rp.client_id, "redirect_uri": uri, "scope": "openid",
                  "state": "s", "code_challenge": challenge, "code_challenge_method": "S256"}
        for client, extras in ((anonymous, ({}, {"prompt": "none"})),
                               (logged_in, ({}, {"prompt": "none"}, {"scope": "not-a-scope"},
                                            {"response_type": "token"}))):
            for extra in extras:
                response = client.get("/authorize", query_string={**params, **extra})
                assert response.status_code == 400, (uri, extra, response.status_code, response.headers)
                assert_stays_here(response)
            posted = client.post("/authorize", data=params)  # POST is turned into the same GET, here
            assert posted.status_code == 303 and posted.headers["Location"].startswith("/authorize?")
            assert client.get(posted.headers["Location"]).status_code == 400
    control = logged_in.get("/authorize", query_string={**params, "redirect_uri": RP_REDIRECT})
    assert control.status_code == 302 and control.headers["Location"].startswith(RP_REDIRECT + "?code=")


def test_logout_never_redirects_to_an_unregistered_uri(app, factory):
    factory.account()
    rp = factory.rp(post_logout_redirect_uris=[RP_POST_LOGOUT])
    client = app.test_client()
    hint = Journey(client, rp).tokens()["id_token"]
    for uri in bypasses(RP_POST_LOGOUT):
        for params in ({"id_token_hint": hint}, {"id_token_hint": hint, "client_id": rp.client_id},
                       {"client_id": rp.client_id}, {}):
            response = client.get("/logout", query_string={**params, "post_logout_redirect_uri": uri, "state": "s"})
            assert response.status_code in (200, 400) and "Location" not in response.headers, (uri, params)
            assert_stays_here(response)
    # the confirmation form carries the parameters on; confirming must not redirect to them either
    Journey(client, rp).login_and_get_code()
    for uri in bypasses(RP_POST_LOGOUT)[:12]:
        page = client.get("/logout", query_string={"post_logout_redirect_uri": uri, "client_id": rp.client_id})
        assert page.status_code == 200 and 'name="confirm"' in page.text
        confirmed = client.post("/logout", data={"post_logout_redirect_uri": uri, "client_id": rp.client_id,
                                                 "confirm": "yes", "csrf_token": csrf_of(page.text)})
        assert "Location" not in confirmed.headers, uri
        assert_stays_here(confirmed)
        Journey(client, rp).login_and_get_code()
    hint = Journey(client, rp).tokens()["id_token"]
    control = client.get("/logout", query_string={"id_token_hint": hint, "post_logout_redirect_uri": RP_POST_LOGOUT})
    assert control.status_code == 302 and control.headers["Location"] == RP_POST_LOGOUT


REDIRECT_PARAMS = ("login", "next", "continue", "return_to", "redirect", "redirect_uri", "url", "lang")


def test_flow_links_never_lead_away(app, factory):
    """``?login=`` and every continue/next link the flows build stay on this server whatever is passed in."""
    factory.account()
    rp = factory.rp(redirect_uri=RP_REDIRECT)
    client = app.test_client()
    login_url = Journey(client, rp).authorize().headers["Location"]
    referent_flow = client.get("/flows/registration_referent/").headers["Location"]
    pages = ["/", login_url, "/flows/recovery/", "/flows/registration_employee/", "/flows/registration_referent/",
             referent_flow, "/account", "/logout"]
    for uri in bypasses(RP_REDIRECT)[:30] + ["//evil.example", "https://evil.example/"]:
        query = urlencode({name: uri for name in REDIRECT_PARAMS})
        for page in pages:
            response = client.get(page + ("&" if "?" in page else "?") + query)
            assert response.status_code < 500
            assert_stays_here(response)
            if response.status_code == 302:
                assert_stays_here(client.get(response.headers["Location"]))


def test_continue_links_after_the_flows_go_back_to_the_authorization_request(app, factory, outbox):
    """The "continue" link of a finished flow is the authorization request it came from, or our home page."""
    with_answer(app, factory.account())
    rp = factory.rp(redirect_uri=RP_REDIRECT)
    client = app.test_client()
    login_url = Journey(client, rp).authorize().headers["Location"]
    login_id = login_url.rsplit("/", 1)[1]
    for login, expected in ((login_id, "/authorize?"), ("//evil.example", "/"), ("https://evil.example", "/")):
        start = f"/flows/recovery/?{urlencode({'login': login, 'next': 'https://evil.example'})}"
        flow = post_form(client, start, username=LINE).headers["Location"]
        post_form(client, flow, answer="Fido")
        post_form(client, flow, code=outbox.last_code(LINE))
        done = post_form(client, flow, password=NEW_PASSWORD, confirm=NEW_PASSWORD, question="dream_job",
                         answer="Astronauta")
        assert done.status_code == 200 and 'id="continue"' in done.text, done.text
        link = html.unescape(re.search(r'href="([^"]*)" id="continue"', done.text).group(1))
        assert link == "/" if expected == "/" else link.startswith(expected), link
        assert_stays_here(done)
        with app.app_context():  # back to the known password for the next round
            account = db.session.query(Account).filter_by(username=LINE).one()
            account.password_hash = passwords.hash_secret(PASSWORD)
            account.security_answer_hash = passwords.hash_secret(passwords.normalise_answer("Fido"))
            account.security_question = "first_pet"
            db.session.commit()
    referent = client.get(f"/flows/registration_referent/?login={login_id}")
    page = client.get(referent.headers["Location"])
    back = html.unescape(re.search(r'href="([^"]*)" id="back-to-login"', page.text).group(1))
    assert back.startswith("/authorize?") and "client_id=" + rp.client_id in back


# CSRF -------------------------------------------------------------------------------------------------------------

def _exempt_post_rules(app) -> set[str]:
    exempt = set()
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        if "POST" in rule.methods and f"{view.__module__}.{view.__name__}" in csrf._exempt_views:
            exempt.add(rule.rule)
    return exempt


def test_only_the_oauth_endpoints_are_exempt_from_csrf(app):
    assert _exempt_post_rules(app) == OAUTH_ENDPOINTS


def _scene(app, outbox):
    """Real flows in every state and a logged-in victim: rule → (client, URL, what a real submission would send)."""
    factory = Factory(app)
    account_id = factory.account()
    with_answer(app, account_id)
    add_line(app, FREE_VOICE)
    add_line(app, "+393337777777")
    add_line(app, FREE_DATA, sim_type="data", pin="4321")
    rp = factory.rp()
    victim = app.test_client()
    Journey(victim, rp).login_and_get_code()
    anon = app.test_client()
    login = Journey(anon, rp).authorize().headers["Location"]
    recovery = post_form(anon, "/flows/recovery/", username=LINE).headers["Location"]
    post_form(anon, recovery, answer="Fido")
    employee = post_form(anon, "/flows/registration_employee/", way="sms", login="").headers["Location"]
    referent = anon.get("/flows/registration_referent/").headers["Location"]
    referent_pin = anon.get("/flows/registration_referent/").headers["Location"]
    post_form(anon, referent_pin, customer_code="C0001", email="it@acme.example", line="+393337777777",
              channel="sms")
    token = csrf_of(victim.get("/account").text)
    sim_line = victim.post("/flows/sim_association/start", data={"csrf_token": token}).headers["Location"]
    sim_code = victim.post("/flows/sim_association/start", data={"csrf_token": token}).headers["Location"]
    victim.post(sim_code, data={"csrf_token": token, "line": FREE_VOICE, "sim_type": "voice"})
    handle = re.search(r"/account/sessions/([^/\"]+)/end", victim.get("/account").text).group(1)
    credentials = {"old_password": PASSWORD, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD,
                   "question": "dream_job", "answer": "Astronauta"}
    return rp, victim, anon, {
        "/flows/login/<flow_id>": (anon, login, {"username": LINE, "password": PASSWORD}),
        "/flows/login/<flow_id>/network": (anon, login + "/network", {}),
        "/flows/recovery/": (anon, "/flows/recovery/", {"username": LINE}),
        "/flows/recovery/<flow_id>": (anon, recovery, {"code": "123456"}),
        "/flows/recovery/<flow_id>/resend": (anon, recovery + "/resend", {}),
        "/flows/registration_employee/": (anon, "/flows/registration_employee/", {"way": "sms", "login": ""}),
        "/flows/registration_employee/<flow_id>": (anon, employee, {"line": FREE_VOICE}),
        "/flows/registration_referent/<flow_id>": (anon, referent, {"customer_code": "C0001", "channel": "sms",
                                                                    "email": "it@acme.example",
                                                                    "line": "+393337777777"}),
        "/flows/registration_referent/<flow_id>/resend": (anon, referent_pin + "/resend", {}),
        "/flows/registration_referent/<flow_id>/edit": (anon, referent_pin + "/edit", {}),
        "/flows/sim_association/start": (victim, "/flows/sim_association/start", {}),
        "/flows/sim_association/<flow_id>": (victim, sim_line, {"line": FREE_DATA, "sim_type": "data"}),
        "/flows/sim_association/<flow_id>/resend": (victim, sim_code + "/resend", {}),
        "/account/password": (victim, "/account/password", credentials),
        "/account/sims/remove": (victim, "/account/sims/remove", {"slot": "1"}),
        "/account/applications/<client_id>/revoke": (victim, f"/account/applications/{rp.client_id}/revoke", {}),
        "/account/sessions/<handle>/end": (victim, f"/account/sessions/{handle}/end", {}),
    }


def test_csrf_is_refused_on_every_post_form(app, outbox):
    rp, victim, anon, scene = _scene(app, outbox)
    forms = {rule.rule for rule in app.url_map.iter_rules() if "POST" in rule.methods} - OAUTH_ENDPOINTS
    assert forms == set(scene), "a POST form without a CSRF case here: add it to _scene"
    attacker = app.test_client()
    foreign = csrf_of(attacker.get("/flows/recovery/").text)  # a valid token, of the attacker's own session
    outbox_before = len(outbox.messages())
    for rule, (client, url, data) in scene.items():
        for token in (None, foreign, "", "x" * 40):
            form = dict(data) if token is None else dict(data, csrf_token=token)
            response = client.post(url, data=form)
            assert response.status_code == 400 and "Il modulo è scaduto o non è valido" in response.text, \
                (rule, token and token[:10], response.status_code)
            assert "Location" not in response.headers and set_cookie_of(response, "idp_sso") is None, rule
    # nothing happened: no session for the anonymous browser, the victim's session and password intact, no SMS
    assert sso_cookie(anon) is None
    assert victim.get("/account").status_code == 200
    assert len(outbox.messages()) == outbox_before
    with app.app_context():
        stored = db.session.query(Account).filter_by(username=LINE).one().password_hash
        assert passwords.verify_secret(stored, PASSWORD)
    # and with their own token each form is accepted as a form (whatever the step then decides)
    for rule, (client, url, data) in scene.items():
        token = csrf_of(client.get("/account" if client is victim else "/flows/recovery/").text)
        response = client.post(url, data=dict(data, csrf_token=token))
        assert "Il modulo è scaduto o non è valido" not in response.text, rule


def test_logout_confirmation_needs_its_csrf_token(app, factory):
    factory.account()
    rp = factory.rp()
    victim = app.test_client()
    Journey(victim, rp).login_and_get_code()
    attacker_token = csrf_of(app.test_client().get("/flows/recovery/").text)  # valid, but of another session
    for form in ({"confirm": "yes"}, {"confirm": "yes", "csrf_token": attacker_token}):
        page = victim.post("/logout", data=form)
        assert page.status_code == 200 and 'name="confirm"' in page.text  # asked again
        assert victim.get("/account").status_code == 200  # still logged in
    page = victim.get("/logout")
    victim.post("/logout", data={"confirm": "yes", "csrf_token": csrf_of(page.text)})
    assert victim.get("/account").status_code == 401


def test_csrf_over_https_also_checks_the_referer(make_app):
    """With secure cookies (production), a POST must come from our own origin (Flask-WTF's strict referrer)."""
    app = make_app(COOKIE_SECURE=True)
    client = app.test_client()
    https = {"base_url": "https://localhost"}
    token = csrf_of(client.get("/flows/recovery/", **https).text)
    for headers in ({}, {"Referer": "https://evil.example/flows/recovery/"},
                    {"Referer": "http://localhost/flows/recovery/"}):
        refused = client.post("/flows/recovery/", data={"csrf_token": token, "username": LINE}, headers=headers,
                              **https)
        assert refused.status_code == 400 and "Il modulo è scaduto" in refused.text, headers
    accepted = client.post("/flows/recovery/", data={"csrf_token": token, "username": LINE},
                           headers={"Referer": "https://localhost/flows/recovery/"}, **https)
    assert accepted.status_code == 302


def test_framing_is_refused_on_the_pages_that_take_credentials(app, factory):
    """Clickjacking: the login, the confirmation and the account pages forbid every frame ancestor."""
    factory.account()
    rp = factory.rp()
    client = app.test_client()
    login = client.get(Journey(client, rp).authorize().headers["Location"])
    Journey(client, rp).login_and_get_code()
    for response in (login, client.get("/account"), client.get("/logout")):
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"


# escaping ---------------------------------------------------------------------------------------------------------

def _assert_escaped(response, value):
    body = response.get_data(as_text=True)
    assert value not in body, f"{value!r} rendered raw"
    return str(escape(value)) in body


def test_authorization_parameters_are_never_rendered_raw(app, factory):
    factory.account()
    rp = factory.rp()
    client = app.test_client()
    journey = Journey(client, rp)
    for markup in MARKUP:
        for params in ({"login_hint": markup}, {"login_hint": "393 123 4567" + markup}, {"ui_locales": markup},
                       {"state": markup}, {"nonce": markup}, {"acr_values": markup}):
            response = journey.authorize(**params)
            _assert_escaped(response, markup)
            if response.status_code == 302 and response.headers["Location"].startswith("/flows/login/"):
                page = client.get(response.headers["Location"])
                _assert_escaped(page, markup)
                assert '<html lang="it">' in page.text or '<html lang="en">' in page.text
        _assert_escaped(client.get("/logout", query_string={"state": markup, "client_id": markup,
                                                            "post_logout_redirect_uri": markup}), markup)


def test_typed_values_are_rendered_escaped(app, factory, outbox):
    with_answer(app, factory.account())
    add_line(app, FREE_DATA, sim_type="data", pin="4321")
    rp = factory.rp()
    client = app.test_client()
    login = Journey(client, rp).authorize().headers["Location"]
    shown = 0
    for markup in MARKUP:
        shown += _assert_escaped(post_form(client, login, username=markup[:32], password="x"), markup[:32])
        shown += _assert_escaped(post_form(client, "/flows/recovery/", username=markup[:32]), markup[:32])
        referent = client.get("/flows/registration_referent/").headers["Location"]
        shown += _assert_escaped(post_form(client, referent, customer_code=markup[:32], email=markup,
                                           line=markup[:32], channel="sms"), markup[:32])
        employee = post_form(client, "/flows/registration_employee/", way="data", login="").headers["Location"]
        shown += _assert_escaped(post_form(client, employee, line=markup[:32], pin="12", email=markup),
                                 markup[:32])
    assert shown >= 3 * len(MARKUP)  # the values are shown back (escaped), not merely dropped
    # an e-mail address may hold markup in its local part: shown escaped on the code page
    email = "<b>x</b>'\"@acme.example"
    employee = post_form(client, "/flows/registration_employee/", way="data", login="").headers["Location"]
    response = post_form(client, employee, line=FREE_DATA, pin="4321", email=email)
    assert response.status_code == 302, response.text
    assert _assert_escaped(client.get(employee), email)


def test_answers_are_rendered_escaped_when_the_form_comes_back(app, factory, outbox):
    with_answer(app, factory.account())
    client = app.test_client()
    flow = post_form(client, "/flows/recovery/", username=LINE).headers["Location"]
    post_form(client, flow, answer="Fido")
    post_form(client, flow, code=outbox.last_code(LINE))
    for markup in MARKUP:
        refused = post_form(client, flow, password="short", confirm="other", question="dream_job", answer=markup)
        assert refused.status_code == 200 and _assert_escaped(refused, markup)


def test_client_names_with_markup_are_rendered_escaped_everywhere(app, factory):
    factory.account()
    name = '<script>alert(7331)</script> "Portale" & \'Co\''
    created = app.test_cli_runner().invoke(args=["idp", "clients", "create", "--name", name, "--redirect-uri",
                                                 RP_REDIRECT, "--post-logout-uri", RP_POST_LOGOUT,
                                                 "--grant-type", "authorization_code", "--scope", "openid",
                                                 "--client-id", "marked"])
    assert created.exit_code == 0, created.output
    secret = re.search(r"client_secret:\s+(\S+)", created.output).group(1)
    rp = RegisteredRP("marked", secret, RP_REDIRECT)
    client = app.test_client()
    journey = Journey(client, rp)
    login = journey.authorize().headers["Location"]
    login_id = login.rsplit("/", 1)[1]
    pages = [client.get(login), client.get(f"/flows/registration_employee/?login={login_id}"),
             client.get(client.get(f"/flows/registration_referent/?login={login_id}").headers["Location"])]
    journey.tokens()
    pages += [client.get("/account"), client.get("/logout", query_string={"client_id": "marked"})]
    for page in pages:
        assert page.status_code == 200
        assert _assert_escaped(page, name), page.request.path
