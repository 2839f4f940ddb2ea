"""Hostile input (issue 9 point 3): Hypothesis throws junk at every endpoint's parameters and every form field.

One app per module (``world``), so Hypothesis runs many examples without function-scoped fixtures; its lockout,
OTP and recovery limits are raised so that the examples reach the code behind them instead of a 429 page (the limits
themselves have their own tests). Every form is reached for real: the flow is started and walked to the state
whose form is attacked, with a real flow id and CSRF token. Every response must hold (``check``):

* no 5xx, no stack trace in the body, no exception logged by the app (``idp`` logger) meanwhile;
* none of the markup breakers we sent (``BREAKERS``) comes back unescaped, and no template is evaluated;
* a ``Location`` is ours (a path on this server) or the registered redirect URI — never anywhere else.

Then the fixed cases: oversized bodies (413) and headers (431), malformed JWTs everywhere a JWT is accepted, and
Unicode edge cases in lines, answers and names. ``IDP_HYPOTHESIS_EXAMPLES`` raises the number of examples per test
for a longer hunt (default 10: about 20 s on the embedded defaults, 35 s on PostgreSQL and Redis).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import logging
import os
import re
import secrets
import time
from urllib.parse import quote, urlencode, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from idp import create_app, passwords
from idp.extensions import db
from idp.models import Account, Line

from .conftest import _clean, base_config
from .gateway import GATEWAY_SETTINGS, signed_headers
from .helpers import Factory, Journey, Outbox, basic, csrf_of, pkce, query_of

EXAMPLES = int(os.environ.get("IDP_HYPOTHESIS_EXAMPLES", "10"))
HOSTILE = settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
HOSTILE_CHEAP = settings(HOSTILE, max_examples=4 * EXAMPLES)  # for the tests whose examples cost one request

NETWORK_GRANT = "urn:selfcare:params:oauth:grant-type:network"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ACR_QUESTION = "urn:selfcare:acr:password+question"
PASSWORD = "Corretta-Cavallo-42"
ANSWER = "Fido"
NEW_PASSWORD = "Girasole-Lento-73"
RP_REDIRECT = "https://rp.example/cb"
RP_POST_LOGOUT = "https://rp.example/bye"

# Markup that must never come back as it was sent: each breaks out of text, of an attribute or of a tag.
BREAKERS = (
    "<script>alert(7331)</script>",
    '"><svg/onload=alert(7331)>',
    "'><img src=x onerror=alert(7331)>",
    '" autofocus onfocus="alert(7331)',
    "</textarea></title><iframe srcdoc=7331>",
)
TEMPLATE = "{{7*7331}}"  # evaluated, it would show 51317
NASTY = (
    "", " ", "\x00", "a\x00b", "%00", "%ff%fe", "\r\n", "a\r\nSet-Cookie: x=y", "' OR '1'='1",
    "'; DROP TABLE accounts;--", "x" * 5000, "é" * 300, "\u202e", "\u200b", "\ufeff", "ｆｕｌｌ", "e\u0301", "😀" * 40,
    "٣٩٣١٢٣٤٥٦٧", "../../etc/passwd", "${jndi:ldap://x}", TEMPLATE, "{% raw %}", "%(x)s%s%n", "null", "[]", "{}", "-1",
    "1e309", "NaN", "\\", "//evil.example",
    "javascript:alert(7331)", "+39 393 123 4567", "0" * 40, "\u0000\u0001\u001f\u007f", "\ud7ff\ue000\uffff",
) + BREAKERS

hostile_text = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=40),
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=6), st.sampled_from(BREAKERS), st.text(max_size=6)),
)
# What a header can carry at all (latin-1, no line breaks): the rest is the HTTP server's business.
header_text = st.one_of(
    st.sampled_from([v for v in NASTY if all(" " <= ch <= "\xff" and ch != "\x7f" for ch in v)]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60),
)


def field(*valid):
    """A form field's value: junk most of the time, sometimes a valid value so the examples get further."""
    return st.one_of(hostile_text, st.sampled_from(valid)) if valid else hostile_text


# the world: one app, its directory, accounts and clients ---------------------------------------------------------

class ErrorLog(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


class World:
    def __init__(self, app):
        self.app = app
        self.factory = Factory(app)
        self.outbox = Outbox(app)
        self._numbers = itertools.count(1)
        self.customer_id = self.factory.customer("C0001", domain="acme.example")
        self.rp = self.factory.rp(redirect_uri=RP_REDIRECT, grant_types=("authorization_code", "refresh_token",
                                                                          "client_credentials"),
                                  post_logout_redirect_uris=[RP_POST_LOGOUT])
        self.public = self.factory.rp(name="App pubblica", redirect_uri="https://public.example/cb",
                                      auth_method="none")
        self.rp_key = ECKey.generate_key("P-256", parameters={"kid": "rp-key", "alg": "ES256", "use": "sig"})
        self.pkj = self.factory.rp(name="RP con chiave", auth_method="private_key_jwt",
                                   jwks={"keys": [self.rp_key.as_dict(private=False)]},
                                   grant_types=("client_credentials",), scope="profile", redirect_uri=None)
        self.native = self.factory.rp(name="My3", redirect_uri=None, auth_method="none", first_party=True,
                                      native_login=True, grant_types=("authorization_code", NETWORK_GRANT),
                                      scope="openid phone profile")
        self.resource = self.factory.rp(name="API", redirect_uri=None, grant_types=("client_credentials",),
                                        scope="profile", may_introspect=True)
        self.line, _ = self.account()
        client = app.test_client()
        self.tokens = Journey(client, self.rp).tokens(username=self.line)
        self.session_client = client  # logged in as self.line
        # the token test's own refresh token: its rotation and reuse must not revoke self.tokens
        self.spare_refresh = Journey(app.test_client(), self.rp).tokens(username=self.line)["refresh_token"]

    def number(self) -> str:
        return f"+39393{6000000 + next(self._numbers):07d}"

    def free_line(self, sim_type="voice", pin=None) -> str:
        number = self.number()
        with self.app.app_context():
            db.session.add(Line(msisdn=number, customer_id=self.customer_id, sim_type=sim_type, status="active",
                                sim_pin_hash=passwords.hash_secret(pin) if pin else None))
            db.session.commit()
        return number

    def account(self, temporary=False) -> tuple[str, str]:
        """A fresh employee (own line, password, security question "first_pet" answered "Fido")."""
        line = self.number()
        account_id = self.factory.account(line=line, password=PASSWORD, email=f"u{line[-7:]}@acme.example")
        with self.app.app_context():
            account = db.session.get(Account, account_id)
            account.security_question = "first_pet"
            account.security_answer_hash = passwords.hash_secret(passwords.normalise_answer(ANSWER))
            account.password_temporary = temporary
            db.session.commit()
        return line, PASSWORD


@pytest.fixture(scope="module")
def world(migrated, keys_dir):
    settings = dict(GATEWAY_SETTINGS, LOCKOUT_THRESHOLD=10**6, LOCKOUT_THRESHOLD_ADDRESS=10**6,
                    LOCKOUT_FREE_FAILURES=10**6, OTP_SENDS_PER_HOUR_DESTINATION=10**6,
                    OTP_SENDS_PER_HOUR_ADDRESS=10**6,
                    OTP_TRIES_PER_HOUR_DESTINATION=10**6, OTP_TRIES_PER_HOUR_ADDRESS=10**6,
                    RECOVERY_ANSWERS_PER_HOUR=10**6, RECOVERY_ANSWERS_PER_HOUR_ADDRESS=10**6,
                    SIM_PIN_ATTEMPTS_PER_LINE_PER_DAY=10**6, AUTOLOGIN_PER_LINE_PER_HOUR=10**6,
                    AUTOLOGIN_PER_ADDRESS_PER_HOUR=10**6)
    app = create_app(base_config(migrated, keys_dir, **settings))
    errors = ErrorLog()
    app.logger.addHandler(errors)
    try:
        built = World(app)
        built.errors = errors
        yield built
    finally:
        app.logger.removeHandler(errors)
        _clean(app)


# what every response must satisfy ----------------------------------------------------------------------------------

TRACE_SIGNS = ("Traceback (most recent call last)", 'File "/', "werkzeug.debug", "sqlalchemy.exc", "psycopg")


def _is_ours(location: str, host: str = "localhost") -> bool:
    """A path on this server; or Werkzeug's own absolute redirects (merged slashes) to the request's host."""
    parts = urlsplit(location)
    if parts.scheme in ("http", "https") and parts.netloc == host:
        return location.count("//") == 1 and "\\" not in parts.path
    return (not parts.scheme and not parts.netloc and location.startswith("/")
            and not location.startswith(("//", "/\\")) and "\\" not in parts.path)


def check(world, response, sent=(), allowed=()):
    """The invariants of every answer to hostile input (see the module's docstring)."""
    body = response.get_data(as_text=True)
    where = f"{response.request.method} {response.request.path} → {response.status_code}"
    logged = [record.getMessage() for record in world.errors.records]
    world.errors.records.clear()
    assert response.status_code < 500, where + "\n" + body[:800]
    assert not logged, f"{where}: the app logged {logged}"
    for sign in TRACE_SIGNS:
        assert sign not in body, where
    for breaker in BREAKERS:
        assert breaker not in body, f"{where}: {breaker!r} reflected unescaped"
    if any(TEMPLATE in value for value in sent) and not any("51317" in value for value in sent):
        assert "51317" not in body, where + ": a template was evaluated"
    if response.mimetype == "text/html":
        assert "frame-ancestors 'none'" in response.headers.get("Content-Security-Policy", ""), where
    if response.request.path in ("/token", "/revoke", "/introspect", "/userinfo", "/authorize-challenge") and body:
        assert response.is_json, where
    location = response.headers.get("Location")
    if location is not None:
        registered = any(location == base or location.startswith((base + "?", base + "#")) for base in allowed)
        assert _is_ours(location, response.request.host) or registered, f"{where}: redirect to {location!r}"
    return response


def values_of(*mappings) -> list[str]:
    found = []
    for mapping in mappings:
        for key, value in (mapping or {}).items():
            found += [str(key), str(value)]
    return found


def follow(world, client, response, sent, allowed=(RP_REDIRECT,)):
    """The page a redirect leads to renders what was stored: it must hold too."""
    location = response.headers.get("Location")
    if response.status_code in (301, 302, 303) and location and _is_ours(location):
        check(world, client.get(location), sent, allowed)


# the forms: how to reach each one with a real flow id and CSRF token ------------------------------------------------

def _authorize(world, client, **extra) -> str:
    response = Journey(client, world.rp).authorize(**extra)
    location = response.headers["Location"]
    assert location.startswith("/flows/login/"), location
    return location


def _post_ok(client, url, **data):
    page = client.get(url)
    response = client.post(url, data={"csrf_token": csrf_of(page.text), **data})
    assert response.status_code == 302, response.text[:500]
    return response.headers["Location"]


def _login_question(world, client):
    line, password = world.account()
    url = _authorize(world, client, acr_values=ACR_QUESTION)
    _post_ok(client, url, username=line, password=password)
    return url, url


def _login_change_password(world, client):
    line, password = world.account(temporary=True)
    url = _authorize(world, client)
    _post_ok(client, url, username=line, password=password)
    return url, url


def _recovery_start(world, client):
    login = _authorize(world, client).rsplit("/", 1)[1]
    return f"/flows/recovery/?login={login}", f"/flows/recovery/?login={login}"


def _recovery_question(world, client):
    line, _ = world.account()
    url = _post_ok(client, "/flows/recovery/", username=line)
    world.last_line = line
    return url, url


def _recovery_code(world, client):
    url, _ = _recovery_question(world, client)
    _post_ok(client, url, answer=ANSWER)
    return url, url


def _recovery_new_credentials(world, client):
    url, _ = _recovery_code(world, client)
    _post_ok(client, url, code=world.outbox.last_code(world.last_line))
    return url, url


def _recovery_resend(world, client):
    url, _ = _recovery_code(world, client)
    return url, url + "/resend"


def _employee_start(world, client):
    login = _authorize(world, client).rsplit("/", 1)[1]
    return f"/flows/registration_employee/?login={login}", "/flows/registration_employee/"


def _employee(world, client, way):
    return _post_ok(client, "/flows/registration_employee/", way=way, login="")


def _employee_code(world, client):
    line = world.free_line()
    url = _employee(world, client, "sms")
    _post_ok(client, url, line=line)
    world.last_line = line
    return url, url


def _employee_credentials(world, client):
    url, _ = _employee_code(world, client)
    _post_ok(client, url, code=world.outbox.last_code(world.last_line))
    return url, url


def _referent(world, client):
    login = _authorize(world, client).rsplit("/", 1)[1]
    response = client.get(f"/flows/registration_referent/?login={login}")
    assert response.status_code == 302
    return response.headers["Location"]


def _referent_pin(world, client):
    url = _referent(world, client)
    _post_ok(client, url, customer_code="C0001", email="mario.rossi@acme.example", line=world.free_line(),
             channel="sms")
    return url, url


def _logged_in(world, client):
    line, password = world.account()
    Journey(client, world.rp).login_and_get_code(username=line)
    return line


def _sim_start(world, client):
    _logged_in(world, client)
    return "/account", "/flows/sim_association/start"


def _sim(world, client):
    _logged_in(world, client)
    token = csrf_of(client.get("/account").text)
    response = client.post("/flows/sim_association/start", data={"csrf_token": token})
    assert response.status_code == 302, response.text[:500]
    return response.headers["Location"]


def _sim_code(world, client):
    url = _sim(world, client)
    _post_ok(client, url, line=world.free_line(), sim_type="voice")
    return url, url


def _sim_pin(world, client):
    url = _sim(world, client)
    _post_ok(client, url, line=world.free_line("data", pin="4321"), sim_type="data")
    return url, url


def _account(world, client, post):
    _logged_in(world, client)
    return "/account", post


def _account_session_end(world, client):
    _logged_in(world, client)
    handle = re.search(r"/account/sessions/([^/\"]+)/end", client.get("/account").text).group(1)
    return "/account", f"/account/sessions/{handle}/end"


NEW_CREDENTIALS = {"password": (NEW_PASSWORD,), "confirm": (NEW_PASSWORD,), "question": ("first_pet", "dream_job"),
                   "answer": ("Bassotto", "ＦＩＤＯ 🐶")}

# name → (how to reach it: page URL holding the CSRF token, URL to post to; the fields with some valid values)
FORMS = {
    "login.credentials": (lambda w, c: (_authorize(w, c),) * 2,
                          {"username": ("393 123 4567", "+393931234567"), "password": (PASSWORD,)}),
    "login.question": (_login_question, {"answer": (ANSWER, "fido")}),
    "login.change_password": (_login_change_password, NEW_CREDENTIALS),
    "login.network": (lambda w, c: (lambda u: (u, u + "/network"))(_authorize(w, c)), {}),
    "recovery.start": (_recovery_start, {"username": ("393 123 4567",)}),
    "recovery.question": (_recovery_question, {"answer": (ANSWER,)}),
    "recovery.code": (_recovery_code, {"code": ("123456",)}),
    "recovery.new_credentials": (_recovery_new_credentials, NEW_CREDENTIALS),
    "recovery.resend": (_recovery_resend, {}),
    "registration_employee.start": (_employee_start, {"way": ("sms", "data"), "login": ("",)}),
    "registration_employee.line": (lambda w, c: (_employee(w, c, "sms"),) * 2, {"line": ("393 600 0001",)}),
    "registration_employee.sim": (lambda w, c: (_employee(w, c, "data"),) * 2,
                                  {"line": ("393 600 0001",), "pin": ("4321",), "email": ("a@acme.example",)}),
    "registration_employee.code": (_employee_code, {"code": ("123456",), "action": ("resend", "verify")}),
    "registration_employee.credentials": (_employee_credentials, NEW_CREDENTIALS),
    "registration_referent.details": (lambda w, c: (_referent(w, c),) * 2,
                                      {"customer_code": ("C0001",), "email": ("a@acme.example",),
                                       "line": ("393 600 0001",), "channel": ("sms", "email")}),
    "registration_referent.pin": (_referent_pin, {"pin": ("123456",)}),
    "registration_referent.resend": (lambda w, c: (lambda u: (u, u + "/resend"))(_referent_pin(w, c)[0]), {}),
    "registration_referent.edit": (lambda w, c: (lambda u: (u, u + "/edit"))(_referent_pin(w, c)[0]), {}),
    "sim_association.start": (_sim_start, {}),
    "sim_association.line": (lambda w, c: (_sim(w, c),) * 2,
                             {"line": ("393 600 0001",), "sim_type": ("voice", "data")}),
    "sim_association.code": (_sim_code, {"code": ("123456",)}),
    "sim_association.pin": (_sim_pin, {"pin": ("4321",)}),
    "sim_association.resend": (lambda w, c: (lambda u: (u, u + "/resend"))(_sim_code(w, c)[0]), {}),
    "account.password": (lambda w, c: _account(w, c, "/account/password"),
                         dict(NEW_CREDENTIALS, old_password=(PASSWORD,))),
    "account.sims_remove": (lambda w, c: _account(w, c, "/account/sims/remove"), {"slot": ("1", "2")}),
    "account.session_end": (_account_session_end, {}),
    "account.application_revoke": (lambda w, c: _account(w, c, f"/account/applications/{w.rp.client_id}/revoke"),
                                   {}),
}


def test_every_post_form_of_the_app_is_attacked(world):
    """A new form (a POST route outside the OAuth endpoints) must be added to FORMS."""
    exempt = {"/authorize", "/token", "/revoke", "/introspect", "/userinfo", "/logout", "/authorize-challenge"}
    routes = {rule.rule for rule in world.app.url_map.iter_rules() if "POST" in rule.methods} - exempt
    attacked = {"/flows/login/<flow_id>", "/flows/login/<flow_id>/network", "/flows/recovery/",
                "/flows/recovery/<flow_id>", "/flows/recovery/<flow_id>/resend", "/flows/registration_employee/",
                "/flows/registration_employee/<flow_id>", "/flows/registration_referent/<flow_id>",
                "/flows/registration_referent/<flow_id>/resend", "/flows/registration_referent/<flow_id>/edit",
                "/flows/sim_association/start", "/flows/sim_association/<flow_id>",
                "/flows/sim_association/<flow_id>/resend", "/account/password", "/account/sims/remove",
                "/account/sessions/<handle>/end", "/account/applications/<client_id>/revoke"}
    assert routes == attacked


@pytest.mark.parametrize("form", sorted(FORMS))
@HOSTILE
@given(data=st.data())
def test_every_form_field_takes_junk(world, form, data):
    reach, fields = FORMS[form]
    client = world.app.test_client()
    page_url, post_url = reach(world, client)
    page = check(world, client.get(page_url))
    values = {name: data.draw(field(*valid), label=name) for name, valid in fields.items()}
    extra = data.draw(st.dictionaries(st.sampled_from(["next", "login", "redirect", "lang", "x\x00", "<b>"]),
                                      hostile_text, max_size=2), label="extra")
    query = data.draw(st.dictionaries(st.sampled_from(["lang", "login", "next", "continue"]), hostile_text,
                                      max_size=2), label="query")
    sent = values_of(values, extra, query)
    if query:
        post_url += ("&" if "?" in post_url else "?") + urlencode(query)
    response = client.post(post_url, data={**extra, **values, "csrf_token": csrf_of(page.text)})
    check(world, response, sent)
    follow(world, client, response, sent)


def test_raw_bytes_that_are_not_utf8(world):
    client = world.app.test_client()
    url = _authorize(world, client)
    token = csrf_of(client.get(url).text)
    body = f"csrf_token={token}&username=%ff%fe%00%c3%28&password=%80%81".encode() + b"\xff\xfe"
    check(world, client.post(url, data=body, content_type="application/x-www-form-urlencoded"))
    check(world, client.post("/token", data=b"grant_type=%ff%fe&code=\xc3\x28",
                             content_type="application/x-www-form-urlencoded",
                             headers=basic(world.rp.client_id, world.rp.secret)))
    check(world, client.get("/authorize?client_id=%ff%fe&redirect_uri=%c3%28&response_type=%00"))


# the endpoints ------------------------------------------------------------------------------------------------------

AUTHORIZE_OPTIONAL = {
    "prompt": ("none", "login", "consent"), "max_age": ("0", "3600"), "login_hint": ("393 123 4567",),
    "ui_locales": ("en", "it-IT"), "acr_values": (ACR_QUESTION,), "response_mode": ("query", "fragment", "form_post"),
    "claims": ('{"userinfo":{}}',), "request": ("e30.e30.",), "request_uri": ("https://evil.example/r",),
    "display": ("page",), "id_token_hint": ("x.y.z",),
}


@HOSTILE_CHEAP
@given(data=st.data())
def test_authorize_takes_junk(world, data):
    """A valid authorization request with one to three parameters replaced by junk (or left out)."""
    _verifier, challenge = pkce()
    params = {"response_type": "code", "client_id": data.draw(st.sampled_from([world.rp.client_id,
                                                                                 world.public.client_id])),
              "redirect_uri": RP_REDIRECT, "scope": "openid profile", "state": "s1", "nonce": "n1",
              "code_challenge": challenge, "code_challenge_method": "S256"}
    for name, valid in AUTHORIZE_OPTIONAL.items():
        if data.draw(st.booleans(), label=f"send {name}"):
            params[name] = data.draw(st.sampled_from(valid), label=name)
    names = sorted(set(params) | set(AUTHORIZE_OPTIONAL))
    for name in data.draw(st.sets(st.sampled_from(names), min_size=1, max_size=3), label="corrupted"):
        params[name] = data.draw(hostile_text, label=name)
    for name in data.draw(st.sets(st.sampled_from(names), max_size=2), label="left out"):
        params.pop(name, None)
    client = world.session_client if data.draw(st.booleans(), label="logged in") else world.app.test_client()
    if data.draw(st.sampled_from(["get", "post"]), label="method") == "get":
        response = client.get("/authorize", query_string=params)
    else:
        response = client.post("/authorize", data=params)
    sent = values_of(params)
    check(world, response, sent, allowed=(RP_REDIRECT, "https://public.example/cb"))
    follow(world, client, response, sent, allowed=(RP_REDIRECT, "https://public.example/cb"))


@pytest.mark.parametrize("name,value", [("redirect_uri", 'https://rp.example/cb"'),
                                        ("redirect_uri", "/\\evil.example"),
                                        ("response_type", 'code"'), ("response_type", "co\\de")])
def test_characters_authlib_cannot_describe_are_a_malformed_request(world, name, value):
    """Authlib puts an unknown redirect_uri or response_type in its error_description and raises ValueError when
    that holds '"' or '\\' (RFC 6749 §5.2): once a 500, now the "malformed parameter" page."""
    _verifier, challenge = pkce()
    params = {"response_type": "code", "client_id": world.rp.client_id, "redirect_uri": RP_REDIRECT,
              "scope": "openid", "code_challenge": challenge, "code_challenge_method": "S256", name: value}
    response = check(world, world.app.test_client().get("/authorize", query_string=params), [value])
    assert response.status_code == 400 and f"Malformed &#39;{name}&#39; parameter." in response.text


def _assertion(key, client_id, **header):
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": "http://127.0.0.1:5000/token", "iat": now,
              "exp": now + 60, "jti": secrets.token_hex(8)}
    return jwt.encode({"alg": "ES256", "kid": key.kid, **header}, claims, key)


@HOSTILE
@given(data=st.data())
def test_token_endpoint_takes_junk_for_every_grant(world, data):
    grant = data.draw(st.one_of(st.sampled_from(["authorization_code", "refresh_token", "client_credentials",
                                                 NETWORK_GRANT]), hostile_text), label="grant_type")
    form = {"grant_type": grant}
    for name, valid in {"code": (), "redirect_uri": (RP_REDIRECT,), "code_verifier": ("v" * 43,),
                        "refresh_token": (world.spare_refresh,), "scope": ("openid", "profile"),
                        "client_id": (world.rp.client_id, world.public.client_id, world.native.client_id),
                        "client_secret": (world.rp.secret,), "client_assertion_type": (ASSERTION_TYPE,),
                        "client_assertion": (_assertion(world.rp_key, world.pkj.client_id),),
                        "resource": ("https://api.example",), "audience": ("x",)}.items():
        if data.draw(st.booleans(), label=f"send {name}"):
            form[name] = data.draw(field(*valid), label=name)
    auth = data.draw(st.sampled_from(["basic", "none", "junk basic", "junk scheme"]), label="auth")
    headers = {}
    if auth == "basic":
        headers = basic(world.rp.client_id, world.rp.secret)
    elif auth == "junk basic":
        headers = basic(data.draw(hostile_text, label="basic id"), data.draw(hostile_text, label="basic secret"))
    elif auth == "junk scheme":
        headers = {"Authorization": data.draw(header_text, label="authorization")}
    if data.draw(st.booleans(), label="through the gateway"):
        headers.update(signed_headers(world.line))
    response = world.app.test_client().post("/token", data=form, headers=headers)
    check(world, response, values_of(form))
    assert response.status_code in (200, 400, 401), response.status_code
    if response.status_code == 200:
        assert response.headers["Cache-Control"] == "no-store"


def jwt_mutations(world, token: str) -> list[str]:
    """Malformed and forged variants of one of our JWTs (see test_malformed_jwts_are_refused_everywhere)."""
    header_b64, payload_b64, signature = token.split(".")
    header, claims = _json_b64(header_b64), _json_b64(payload_b64)
    stranger = ECKey.generate_key("P-256", parameters={"kid": header["kid"]})
    nested = "[" * 5000 + "]" * 5000
    variants = [
        _b64(json.dumps({**header, "alg": "none"})) + "." + payload_b64 + ".",
        _b64(json.dumps({**header, "alg": "none"})) + "." + payload_b64 + "." + signature,
        _b64(json.dumps({**header, "alg": "RS256"})) + "." + payload_b64 + "." + signature,
        _b64(json.dumps({**header, "kid": "no-such-kid"})) + "." + payload_b64 + "." + signature,
        jwt.encode({"alg": "ES256", "kid": header["kid"], "typ": header.get("typ", "JWT")}, claims, stranger),
        jwt.encode({"alg": "ES256", "kid": "attacker", "typ": header.get("typ", "JWT")}, claims,
                   ECKey.generate_key("P-256", parameters={"kid": "attacker"})),
        _b64(json.dumps({**header, "crit": ["exp"], "x": "y"})) + "." + payload_b64 + "." + signature,
        _b64('{"alg":"ES256","x":' + nested + "}") + "." + payload_b64 + "." + signature,
        header_b64 + "." + _b64('{"x":' + nested + "}") + "." + signature,
        header_b64 + "." + _b64(json.dumps({**claims, "pad": "x" * 10000})) + "." + signature,
        _b64(json.dumps({**header, "pad": "x" * 3000})) + "." + payload_b64 + "." + signature,
        header_b64 + "." + _b64("[1,2,3]") + "." + signature,
        header_b64 + "." + _b64('"just a string"') + "." + signature,
        _b64("not json") + "." + payload_b64 + "." + signature,
        "!!!.???.***", "a.b.c", "..", ".", "a.b", "a.b.c.d.e",
        header_b64 + "=." + payload_b64 + "=." + signature + "=",
        header_b64 + "." + payload_b64 + "." + signature + "ü",
        token[:-1], token[:-20], token[: len(header_b64) + 1 + len(payload_b64)], token + ".", token + "." + signature,
        header_b64 + "." + payload_b64 + "." + signature[::-1],
    ]
    variants += [_hs256(header, claims, secret) for secret in _public_key_secrets(world)]
    return variants


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _json_b64(segment: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def _hs256(header: dict, claims: dict, secret: bytes) -> str:
    """HMAC-with-public-key confusion: HS256 keyed with bytes anybody can fetch from our JWKS."""
    signing_input = _b64(json.dumps({**header, "alg": "HS256"})) + "." + _b64(json.dumps(claims))
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(mac)


def _public_key_secrets(world) -> list[bytes]:
    """Every form of our published public keys an attacker could use as an HMAC secret."""
    found = []
    with world.app.app_context():
        jwks = world.app.test_client().get("/jwks.json").json
    for jwk in jwks["keys"]:
        key = (ECKey if jwk["kty"] == "EC" else RSAKey).import_key(jwk)
        public = key.public_key
        found += [public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
                  public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
                  json.dumps(jwk).encode(), json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()]
    return found


@HOSTILE
@given(data=st.data())
def test_revocation_and_introspection_take_junk(world, data):
    path = data.draw(st.sampled_from(["/revoke", "/introspect"]), label="endpoint")
    token = data.draw(st.one_of(hostile_text, st.sampled_from(jwt_mutations(world, world.tokens["access_token"]))),
                      label="token")
    form = {"token": token}
    if data.draw(st.booleans(), label="send hint"):
        form["token_type_hint"] = data.draw(field("access_token", "refresh_token"), label="hint")
    who = data.draw(st.sampled_from(["rp", "resource", "public", "junk"]), label="client")
    headers = {"rp": basic(world.rp.client_id, world.rp.secret),
               "resource": basic(world.resource.client_id, world.resource.secret),
               "junk": basic(data.draw(hostile_text, label="id"), "x")}.get(who, {})
    if who == "public":
        form["client_id"] = world.public.client_id
    response = world.app.test_client().post(path, data=form, headers=headers)
    check(world, response, values_of(form))
    if path == "/introspect" and response.status_code == 200:
        assert response.json == {"active": False}
    # nothing malformed revoked the real token
    assert world.session_client.get("/userinfo", headers={
        "Authorization": "Bearer " + world.tokens["access_token"]}).status_code == 200


@HOSTILE
@given(data=st.data())
def test_userinfo_takes_junk(world, data):
    client = world.app.test_client()
    how = data.draw(st.sampled_from(["header", "bearer", "body", "both"]), label="how")
    token = data.draw(st.one_of(hostile_text, st.sampled_from(jwt_mutations(world, world.tokens["access_token"]))),
                      label="token")
    headers, form = {}, None
    if how in ("header", "both"):
        headers["Authorization"] = data.draw(header_text, label="authorization")
    if how == "bearer":
        headers["Authorization"] = "Bearer " + "".join(ch for ch in token if " " <= ch <= "\xff")
    if how in ("body", "both"):
        form = {"access_token": token}
    response = client.post("/userinfo", data=form, headers=headers) if form is not None else \
        client.get("/userinfo", headers=headers)
    check(world, response, values_of(form, headers))
    assert response.status_code in (400, 401), response.status_code
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert "\n" not in response.headers["WWW-Authenticate"]


LOGOUT_BYPASSES = ("https://rp.example/bye/", "https://rp.example/bye?x=1", "https://rp.example/bye#x",
                   "https://rp.example.evil.example/bye", "https://evil.example/bye", "//evil.example",
                   "javascript:alert(7331)", "HTTPS://RP.EXAMPLE/bye", "https://rp.example@evil.example/bye")


@HOSTILE
@given(data=st.data())
def test_logout_takes_junk(world, data):
    line, _ = world.account()
    client = world.app.test_client()
    id_token = Journey(client, world.rp).tokens(username=line)["id_token"] if data.draw(
        st.booleans(), label="logged in") else world.tokens["id_token"]
    params = {}
    for name, strategy in {
        "id_token_hint": st.one_of(hostile_text, st.just(id_token), st.sampled_from(jwt_mutations(world, id_token))),
        "post_logout_redirect_uri": field(RP_POST_LOGOUT, *LOGOUT_BYPASSES),
        "client_id": field(world.rp.client_id, world.public.client_id), "state": field("s1"),
        "ui_locales": field("en"), "logout_hint": field(line),
    }.items():
        if data.draw(st.booleans(), label=f"send {name}"):
            params[name] = data.draw(strategy, label=name)
    method = data.draw(st.sampled_from(["get", "post", "confirm"]), label="method")
    if method == "get":
        response = client.get("/logout", query_string=params)
    else:
        form = dict(params)
        if method == "confirm":
            page = client.get("/logout", query_string=params)
            form.update(confirm="yes", csrf_token=csrf_of(page.text) if 'name="csrf_token"' in page.text else "x")
        response = client.post("/logout", data=form)
    check(world, response, values_of(params), allowed=(RP_POST_LOGOUT,))
    if response.headers.get("Location", "").startswith(RP_POST_LOGOUT):
        assert params.get("post_logout_redirect_uri") == RP_POST_LOGOUT


@HOSTILE
@given(data=st.data())
def test_authorize_challenge_takes_junk(world, data):
    verifier, challenge = pkce()
    form = {}
    for name, valid in {"client_id": (world.native.client_id,), "username": (world.line,), "password": (PASSWORD,),
                        "scope": ("openid phone",), "code_challenge": (challenge,), "code_challenge_method": ("S256",),
                        "acr_values": (ACR_QUESTION,), "auth_session": (), "answer": (ANSWER,)}.items():
        if data.draw(st.booleans(), label=f"send {name}"):
            form[name] = data.draw(field(*valid), label=name)
    response = world.app.test_client().post("/authorize-challenge", data=form)
    check(world, response, values_of(form))
    assert response.status_code in (200, 400, 401) and response.is_json


@HOSTILE
@given(data=st.data())
def test_hostile_headers_and_cookies(world, data):
    """The gateway's headers, the correlation id, languages and cookies, forged by anybody."""
    headers = {}
    for name in ("X-MSISDN", "X-MSISDN-Signature", "X-Request-ID", "Accept-Language", "User-Agent",
                 "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Cookie", "Referer", "Origin"):
        if data.draw(st.booleans(), label=f"send {name}"):
            headers[name] = data.draw(header_text, label=name)
    if data.draw(st.booleans(), label="sign the msisdn"):
        headers.update(signed_headers(data.draw(st.one_of(header_text, st.just(world.line)), label="signed msisdn")))
    client = world.app.test_client()
    login = client.get(_authorize(world, client), headers=headers)
    check(world, login, values_of(headers))
    response = client.post("/token", data={"grant_type": NETWORK_GRANT, "client_id": world.native.client_id,
                                           "scope": "openid phone"}, headers=headers)
    check(world, response, values_of(headers))
    request_id = response.headers.get("X-Request-ID")
    assert request_id is None or re.fullmatch(r"[A-Za-z0-9._:-]{8,64}", request_id), request_id


@pytest.mark.parametrize("rule", ["/flows/login/<flow_id>", "/flows/login/<flow_id>/network",
                                  "/flows/recovery/<flow_id>", "/flows/recovery/<flow_id>/resend",
                                  "/flows/registration_employee/<flow_id>", "/flows/registration_referent/<flow_id>",
                                  "/flows/registration_referent/<flow_id>/resend",
                                  "/flows/registration_referent/<flow_id>/edit", "/flows/sim_association/<flow_id>",
                                  "/flows/sim_association/<flow_id>/resend", "/account/sessions/<handle>/end",
                                  "/account/applications/<client_id>/revoke"])
@HOSTILE
@given(segment=hostile_text.filter(lambda s: s not in ("", ".", "..")))
def test_hostile_path_segments(world, rule, segment):
    client = world.session_client
    token = csrf_of(client.get("/account").text)
    path = re.sub(r"<[^>]+>", quote(segment, safe=""), rule)
    check(world, client.get(path), [segment])
    check(world, client.post(path, data={"csrf_token": token}), [segment])


# oversized requests ---------------------------------------------------------------------------------------------

POST_PATHS = ("/token", "/revoke", "/introspect", "/userinfo", "/authorize-challenge", "/logout", "/authorize",
              "/flows/recovery/", "/flows/registration_employee/", "/account/password")


@pytest.mark.parametrize("path", POST_PATHS)
def test_oversized_bodies_are_refused_with_413(world, path):
    limit = world.app.config["MAX_CONTENT_LENGTH"]
    response = world.app.test_client().post(path, data={"username": "x" * (limit + 1)})
    check(world, response)
    assert response.status_code == 413
    if path in ("/token", "/revoke", "/introspect", "/userinfo", "/authorize-challenge"):
        assert response.json["error"] == "invalid_request"
    else:
        assert "La richiesta è troppo grande." in response.text
    raw = world.app.test_client().post(path, data=b"a=" + b"b" * (limit * 2),
                                       content_type="application/x-www-form-urlencoded")
    assert raw.status_code == 413


@pytest.mark.parametrize("path,method", [("/", "get"), ("/authorize", "get"), ("/jwks.json", "get"),
                                         ("/token", "post"), ("/userinfo", "get"), ("/flows/recovery/", "post"),
                                         ("/logout", "post"), ("/healthz", "get")])
def test_oversized_headers_are_refused_with_431(world, path, method):
    limit = world.app.config["MAX_HEADER_BYTES"]
    client = world.app.test_client()
    send = getattr(client, method)
    one_huge = send(path, headers={"X-Junk": "x" * (limit + 1)})
    many = send(path, headers={f"X-Junk-{i}": "y" * 100 for i in range(limit // 100)})
    jar = world.app.test_client()  # the test client sends only the cookies of its jar
    for i in range(limit // 50):
        jar.set_cookie(f"c{i}", "z" * 50)
    cookie = getattr(jar, method)(path)
    for response in (one_huge, many, cookie):
        check(world, response)
        assert response.status_code == 431, (path, response.status_code)
        if path in ("/token", "/userinfo"):
            assert response.json["error"] == "invalid_request"
        else:
            assert response.mimetype == "text/html" and "La richiesta è troppo grande." in response.text
    fine = send(path, headers={"X-Fine": "x" * (limit // 2)})
    assert fine.status_code != 431


# malformed JWTs wherever a JWT is accepted ---------------------------------------------------------------------

def test_malformed_jwts_are_refused_everywhere(world):
    """alg none, a wrong kid, HMAC keyed with our public key, nested and huge JSON, bad base64, truncation: userinfo
    refuses each, introspection says inactive, revocation revokes nothing, an ID token hint never logs out."""
    access, id_token = world.tokens["access_token"], world.tokens["id_token"]
    rp = basic(world.rp.client_id, world.rp.secret)
    resource = basic(world.resource.client_id, world.resource.secret)
    client = world.app.test_client()
    for forged in jwt_mutations(world, access) + [id_token]:  # an ID token is no access token either
        if all(" " <= ch <= "~" for ch in forged):  # what a header can carry
            refused = check(world, client.get("/userinfo", headers={"Authorization": "Bearer " + forged}))
            assert refused.status_code == 401 and refused.json["error"] in ("invalid_token", "invalid_request"), \
                forged[:120]
        assert check(world, client.post("/userinfo", data={"access_token": forged})).status_code == 401
        assert check(world, client.post("/introspect", data={"token": forged}, headers=resource)).json == \
            {"active": False}
        assert check(world, client.post("/revoke", data={"token": forged}, headers=rp)).status_code == 200
    assert client.get("/userinfo", headers={"Authorization": "Bearer " + access}).status_code == 200
    assert client.post("/introspect", data={"token": access}, headers=resource).json["active"] is True

    line, _ = world.account()
    browser = world.app.test_client()
    own = Journey(browser, world.rp).tokens(username=line)["id_token"]
    for forged in jwt_mutations(world, own):
        response = check(world, browser.get("/logout", query_string={
            "id_token_hint": forged, "post_logout_redirect_uri": RP_POST_LOGOUT}))
        assert response.status_code in (200, 400) and "Location" not in response.headers, forged[:80]
        assert browser.get("/account").status_code == 200, "a forged hint ended the session"
    done = browser.get("/logout", query_string={"id_token_hint": own, "post_logout_redirect_uri": RP_POST_LOGOUT})
    assert done.status_code == 302 and done.headers["Location"].startswith(RP_POST_LOGOUT)


def test_malformed_client_assertions_are_refused(world):
    """private_key_jwt: the same forgeries as client assertions, plus HS256 keyed with the client's own public key."""
    good = _assertion(world.rp_key, world.pkj.client_id)
    header_b64, payload_b64, _sig = good.split(".")
    header, claims = _json_b64(header_b64), _json_b64(payload_b64)
    rp_public = world.rp_key.public_key
    secrets_of_rp = [rp_public.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo),
                     json.dumps(world.rp_key.as_dict(private=False)).encode()]
    forged = jwt_mutations(world, good) + [_hs256(header, claims, secret) for secret in secrets_of_rp]
    nested = "[" * 20000 + "]" * 20000  # deeper than Python's JSON decoder goes: once a 500 here
    forged += [header_b64 + "." + _b64('{"sub":' + nested + "}") + ".x",
               _b64('{"alg":"ES256","x":' + nested + "}") + "." + payload_b64 + ".x"]
    client = world.app.test_client()
    for assertion in forged:
        for path, extra in (("/token", {"grant_type": "client_credentials"}), ("/introspect", {"token": "x"}),
                            ("/revoke", {"token": "x"})):
            response = check(world, client.post(path, data={**extra, "client_assertion_type": ASSERTION_TYPE,
                                                             "client_assertion": assertion}))
            assert response.status_code in (400, 401) and response.json["error"] == "invalid_client", \
                (path, assertion[:80], response.json)
    ok = client.post("/token", data={"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                                     "client_assertion": good})
    assert ok.status_code == 200, ok.text  # the forgeries were refused for what they are, not for the set-up


# Unicode edge cases --------------------------------------------------------------------------------------------

def _spaced(line: str) -> str:
    return f"{line[3:6]} {line[6:9]} {line[9:]}"


def _digits(zero: str):
    return str.maketrans("0123456789", "".join(chr(ord(zero) + i) for i in range(10)))


LINE_FORMS = {
    "arabic-indic digits": lambda line: _spaced(line).translate(_digits("٠")),
    "arabic-indic digits with +39": lambda line: ("+39 " + _spaced(line)).translate(_digits("٠")),
    "extended arabic-indic digits": lambda line: line[3:].translate(_digits("۰")),
    "fullwidth digits": lambda line: _spaced(line).translate(_digits("０")),
    "mathematical bold digits": lambda line: line[3:].translate(_digits("𝟎")),
    "zero-width spaces": lambda line: _spaced(line).replace(" ", "\u200b"),
    "right-to-left mark": lambda line: "\u200f" + _spaced(line),
    "byte order mark": lambda line: "\ufeff" + _spaced(line),
}


@pytest.mark.parametrize("form", sorted(LINE_FORMS))
def test_lines_in_other_digits_and_with_invisible_marks_are_normalised(world, form):
    line, password = world.account()
    typed = LINE_FORMS[form](line)
    client = world.app.test_client()
    url = _authorize(world, client)
    page = client.get(url)
    response = check(world, client.post(url, data={"csrf_token": csrf_of(page.text), "username": typed,
                                                   "password": password}), [typed])
    assert response.status_code == 302, f"{typed!r} was not recognised as {line}"
    assert "code" in query_of(client.get(response.headers["Location"]).headers["Location"])


@pytest.mark.parametrize("typed", ["\u202e7654 321 393", "³⁹³ ¹²³ ⁴⁵⁶⁷", "+39 393 123 45678901234", "😀" * 10,
                                   "٣٩٣", "+39\x00393 123 4567"])
def test_lines_that_are_not_lines_get_the_usual_message(world, typed):
    client = world.app.test_client()
    url = _authorize(world, client)
    response = check(world, client.post(url, data={"csrf_token": csrf_of(client.get(url).text), "username": typed,
                                                   "password": PASSWORD}), [typed])
    assert response.status_code == 200 and "Numero di linea o password non corretti." in response.text


@pytest.mark.parametrize("stored,typed", [("Fido", "ＦＩＤＯ"), ("Fido", "Fi\u0301do"), ("Fido", "  fido  "),
                                          ("Fido", "Fi\u200bdo"), ("Fido", "\u202aFido\u202c"),
                                          ("Fido", "\ufeffFido"), ("Straße", "STRASSE"),
                                          ("Crème brûlée", "creme brulee"),
                                          ("🐶🐕", "🐶🐕"), ("كلب", "كلب"), ("ﬁdo", "fido")])
def test_answers_are_compared_after_unicode_normalisation(world, stored, typed):
    """NFKC, case folding, accents and invisible format characters (zero-width, bidi marks, BOM) do not count."""
    line, password = world.account()
    with world.app.app_context():
        account = db.session.query(Account).filter_by(username=line).one()
        account.security_answer_hash = passwords.hash_secret(passwords.normalise_answer(stored))
        db.session.commit()
    client = world.app.test_client()
    url = _authorize(world, client, acr_values=ACR_QUESTION)
    _post_ok(client, url, username=line, password=password)
    answered = check(world, client.post(url, data={"csrf_token": csrf_of(client.get(url).text), "answer": typed}),
                     [typed])
    assert answered.status_code == 302, f"{typed!r} did not match {stored!r}"


@pytest.mark.parametrize("answer,accepted", [("🐶🐕🐈", True), ("Ｂａｓｓｏｔｔｏ", True), ("\u200b\u200b\u200bab", False),
                                             ("\u202e\u202e\u202e", False), ("e\u0301\u0301\u0301", False),
                                             ("ab\u0000", False)])
def test_new_answers_with_unicode_are_normalised_or_refused_with_a_message(world, answer, accepted):
    """A new answer that is only invisible or combining characters is too short once normalised: refused, said."""
    line, _ = world.account()
    client = world.app.test_client()
    url, _ = _recovery_new_credentials_for(world, client, line)
    page = client.get(url)
    response = check(world, client.post(url, data={"csrf_token": csrf_of(page.text), "password": NEW_PASSWORD,
                                                   "confirm": NEW_PASSWORD, "question": "dream_job",
                                                   "answer": answer}), [answer])
    if accepted:
        assert response.status_code == 200 and "Password aggiornata" in response.text, response.text[:2000]
        with world.app.app_context():
            stored = db.session.query(Account).filter_by(username=line).one().security_answer_hash
            assert passwords.verify_secret(stored, passwords.normalise_answer(answer))
    else:
        assert "La risposta deve avere almeno 3 caratteri." in response.text


def _recovery_new_credentials_for(world, client, line):
    url = _post_ok(client, "/flows/recovery/", username=line)
    _post_ok(client, url, answer=ANSWER)
    _post_ok(client, url, code=world.outbox.last_code(line))
    return url, url


@pytest.mark.parametrize("name", ["<script>alert(7331)</script>", 'Portale "Acme" <b>&amp;</b> \'x\'',
                                  "Portale 😀 Ａｃｍｅ", "بوابة الأعمال", "Portale e\u0301\u0301"])
def test_client_names_from_the_cli_are_rendered_escaped(world, name):
    """Operators name clients through the CLI; the name reaches the login and registration pages escaped."""
    from markupsafe import escape
    app = world.app
    result = app.test_cli_runner().invoke(args=["idp", "clients", "create", "--name", name, "--redirect-uri",
                                                "https://named.example/cb", "--scope", "openid"])
    assert result.exit_code == 0, result.output
    client_id = re.search(r"client_id:\s+(\S+)", result.output).group(1)
    client = app.test_client()
    _verifier, challenge = pkce()
    location = client.get("/authorize", query_string={
        "response_type": "code", "client_id": client_id, "redirect_uri": "https://named.example/cb",
        "scope": "openid", "code_challenge": challenge, "code_challenge_method": "S256"}).headers["Location"]
    login_id = location.rsplit("/", 1)[1]
    for url in (location, f"/flows/registration_employee/?login={login_id}"):
        page = check(world, client.get(url), [name])
        assert str(escape(name)) in page.text, url


@pytest.mark.parametrize("name", ["Portale\u202eelatroP", "Portale\u200b", "Portale\x07", "Portale\u2066x\u2069"])
def test_client_names_with_invisible_or_control_characters_are_refused(world, name):
    """Bidi overrides and invisible characters would let a name on the login page read as another one."""
    result = world.app.test_cli_runner().invoke(args=["idp", "clients", "create", "--name", name, "--redirect-uri",
                                                      "https://named.example/cb", "--scope", "openid"])
    assert result.exit_code != 0 and "name" in result.output.lower(), result.output


# NUL bytes: harmless to SQLite, refused by PostgreSQL ("text fields cannot contain NUL") ---------------------------

def test_nul_bytes_never_reach_the_database(world):
    """Where a typed value is looked up or stored as it was sent, a NUL byte must end as a refusal, not a 500."""
    client = world.app.test_client()
    for auth in (basic("a\x00b", "x"), basic("\x00", "")):
        for path in ("/token", "/revoke", "/introspect", "/authorize-challenge"):
            check(world, client.post(path, data={"grant_type": "client_credentials", "token": "x"}, headers=auth))
    for path in ("/token", "/revoke", "/introspect", "/authorize-challenge"):
        check(world, client.post(path, data={"grant_type": "client_credentials", "token": "x", "client_id": "a\x00",
                                             "client_secret": "x"}))
    check(world, client.get("/logout", query_string={"client_id": "a\x00b"}))

    browser = world.app.test_client()
    _logged_in(world, browser)
    token = csrf_of(browser.get("/account").text)
    check(world, browser.post("/account/applications/a%00b/revoke", data={"csrf_token": token}))

    line = world.free_line()
    for details in ({"customer_code": "C0001\x00", "email": "mario@acme.example"},
                    {"customer_code": "C0001", "email": "ma\x00rio@acme.example"}):
        referent = world.app.test_client()
        url = _referent(world, referent)
        response = check(world, referent.post(url, data={"csrf_token": csrf_of(referent.get(url).text),
                                                          "line": line, "channel": "email", **details}))
        if "\x00" in details["email"]:  # no PIN goes to such an address, and no account could hold it
            assert response.status_code == 200 and "Compila tutti i campi con dati validi." in response.text
        else:  # a code that cannot exist is simply a code that does not match
            assert response.status_code == 302

    employee = world.app.test_client()
    url = _employee(world, employee, "data")
    response = check(world, employee.post(url, data={"csrf_token": csrf_of(employee.get(url).text),
                                                      "line": world.free_line("data", pin="4321"), "pin": "4321",
                                                      "email": "ma\x00rio@acme.example"}))
    assert response.status_code == 200 and "indirizzo e-mail valido" in response.text
