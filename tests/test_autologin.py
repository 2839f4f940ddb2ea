"""Network autologin and step-up (issue 5 points 2–4): the button, its click, and what an RP may ask for more."""
import re

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from idp.extensions import db
from idp.models import Account, AuditEvent, Line

from .gateway import GATEWAY_SETTINGS, signed_headers
from .helpers import LINE, PASSWORD, Factory, Journey, csrf_of, query_of

ACR_NETWORK = "urn:selfcare:acr:network"
ACR_PASSWORD = "urn:selfcare:acr:password"
ACR_QUESTION = "urn:selfcare:acr:password+question"


@pytest.fixture
def gw(make_app):
    app = make_app(**GATEWAY_SETTINGS)
    factory = Factory(app)
    factory.account(question="first_pet", answer="Fido")
    return app, factory.rp()


def _claims(client, token):
    return jwt.decode(token, KeySet.import_key_set(client.get("/jwks.json").json)).claims


def _login_page(client, journey, number=LINE, **params):
    location = journey.authorize(**params).headers["Location"]
    return location, client.get(location, headers=signed_headers(number) if number else {})


def _click(client, location, page, number=LINE):
    return client.post(location + "/network", data={"csrf_token": csrf_of(page.text)},
                       headers=signed_headers(number) if number else {})


def _finish(client, journey, response):
    assert response.status_code == 302, response.text
    code = query_of(client.get(response.headers["Location"]).headers["Location"])["code"]
    return journey.redeem(code).json


def test_accedi_direttamente_logs_in_with_the_network_level(gw):
    app, rp = gw
    client = app.test_client()
    journey = Journey(client, rp)
    location, page = _login_page(client, journey)
    assert "Accedi direttamente" in page.text and "+39 393 ***4567" in page.text and LINE not in page.text
    tokens = _finish(client, journey, _click(client, location, page))
    claims = _claims(client, tokens["id_token"])
    assert claims["acr"] == ACR_NETWORK and claims["amr"] == ["mno"]


@pytest.mark.parametrize("case", ["no_header", "unknown", "referent", "suspended", "disabled", "unassociated"])
def test_no_button_when_not_eligible_and_the_page_is_the_same(gw, case):
    app, rp = gw
    number = {"no_header": None, "unknown": "+393930000077"}.get(case, LINE)
    with app.app_context():
        account = db.session.query(Account).one()
        if case == "referent":
            account.role = "referent"
        if case == "disabled":
            account.status = "disabled"
        if case == "suspended":
            db.session.query(Line).filter_by(msisdn=LINE).one().status = "suspended"
        if case == "unassociated":
            db.session.delete(account.lines[0])
        db.session.commit()
    client = app.test_client()
    _location, page = _login_page(client, Journey(client, rp), number)
    assert "Accedi direttamente" not in page.text and 'id="username"' in page.text


def test_click_rechecks_everything(gw):
    app, rp = gw
    client = app.test_client()
    location, page = _login_page(client, Journey(client, rp))
    refused = _click(client, location, page, number=None)  # the click arrives without the gateway
    assert refused.status_code == 403 and "idp_sso" not in str(refused.headers.getlist("Set-Cookie"))
    other = _click(client, location, page, number="+393930000077")
    assert other.status_code == 403
    no_csrf = client.post(location + "/network", headers=signed_headers(LINE))
    assert no_csrf.status_code == 400


def test_header_from_an_untrusted_peer_gives_no_button_and_is_logged(gw):
    app, rp = gw
    client = app.test_client()
    location = Journey(client, rp).authorize().headers["Location"]
    page = client.get(location, headers={"X-MSISDN": LINE}, environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert "Accedi direttamente" not in page.text
    with app.app_context():
        assert db.session.query(AuditEvent).filter_by(type="autologin.spoof").count() == 1


@pytest.mark.parametrize("params", [{"prompt": "login"}, {"acr_values": ACR_PASSWORD}, {"max_age": "3600"},
                                    {"acr_values": ACR_QUESTION}])
def test_rp_asking_for_more_gets_the_password_page_even_with_a_valid_header(gw, params):
    app, rp = gw
    client = app.test_client()
    _location, page = _login_page(client, Journey(client, rp), **params)
    assert "Accedi direttamente" not in page.text and 'id="password"' in page.text


def test_network_session_steps_up_to_password_keeping_the_sid(gw):
    app, rp = gw
    client = app.test_client()
    journey = Journey(client, rp)
    location, page = _login_page(client, journey)
    first = _claims(client, _finish(client, journey, _click(client, location, page))["id_token"])
    journey = Journey(client, rp)
    step = journey.authorize(acr_values=ACR_PASSWORD)
    assert step.headers["Location"].startswith("/flows/login/")
    form = client.get(step.headers["Location"])
    assert 'value="+393931234567"' in form.text  # the line is known: only the password is asked
    tokens = _finish(client, journey, journey.submit_login(step.headers["Location"]))
    second = _claims(client, tokens["id_token"])
    assert second["acr"] == ACR_PASSWORD and second["sid"] == first["sid"] and second["amr"] == ["pwd"]


def test_password_session_steps_up_to_the_security_question(gw):
    app, rp = gw
    client = app.test_client()
    first = _claims(client, Journey(client, rp).tokens()["id_token"])
    journey = Journey(client, rp)
    step = journey.authorize(acr_values=ACR_QUESTION)
    page = client.get(step.headers["Location"])
    assert "animale domestico" in page.text and 'id="password"' not in page.text
    wrong = client.post(step.headers["Location"], data={"csrf_token": csrf_of(page.text), "answer": "Rex"})
    assert "La risposta non è corretta." in wrong.text
    right = client.post(step.headers["Location"], data={"csrf_token": csrf_of(page.text), "answer": " fido "})
    claims = _claims(client, _finish(client, journey, right)["id_token"])
    assert claims["acr"] == ACR_QUESTION and claims["amr"] == ["pwd", "kba"] and claims["sid"] == first["sid"]
    # the higher level now satisfies lower requests without a new login
    again = Journey(client, rp).authorize(acr_values=ACR_PASSWORD)
    assert "code=" in again.headers["Location"]


def test_first_login_with_the_question_required(gw):
    app, rp = gw
    client = app.test_client()
    journey = Journey(client, rp)
    location = journey.authorize(acr_values=ACR_QUESTION).headers["Location"]
    after_password = journey.submit_login(location)
    assert after_password.headers["Location"] == location  # on to the question
    page = client.get(location)
    done = client.post(location, data={"csrf_token": csrf_of(page.text), "answer": "fido"})
    assert _claims(client, _finish(client, journey, done)["id_token"])["acr"] == ACR_QUESTION


def test_wrong_answers_count_in_the_password_lockout(make_app):
    app = make_app(**GATEWAY_SETTINGS, LOCKOUT_THRESHOLD=3, LOGIN_MAX_ATTEMPTS=20)
    factory = Factory(app)
    factory.account(question="first_pet", answer="Fido")
    client = app.test_client()
    journey = Journey(client, factory.rp())
    location = journey.authorize(acr_values=ACR_QUESTION).headers["Location"]
    journey.submit_login(location, password="wrong")  # 1: a wrong password
    journey.submit_login(location)  # a right one clears the line's count
    page = client.get(location)
    for _ in range(3):
        client.post(location, data={"csrf_token": csrf_of(page.text), "answer": "Rex"})
    locked = client.post(location, data={"csrf_token": csrf_of(page.text), "answer": "fido"})
    assert locked.status_code == 429


def test_network_session_cannot_change_the_account(gw):
    app, rp = gw
    client = app.test_client()
    journey = Journey(client, rp)
    location, page = _login_page(client, journey)
    _finish(client, journey, _click(client, location, page))
    account_page = client.get("/account")
    assert account_page.status_code == 200 and "accedi con la linea e la password" in account_page.text.lower()
    refused = client.post("/account/password", data={"csrf_token": csrf_of(account_page.text),
                                                      "old_password": PASSWORD})
    assert refused.status_code == 403


def test_network_sessions_are_shorter(gw):
    app, rp = gw
    client = app.test_client()
    journey = Journey(client, rp)
    location, page = _login_page(client, journey)
    _finish(client, journey, _click(client, location, page))
    from idp.store import store
    with app.app_context():
        ttls = [store().redis.ttl(k) for k in store().redis.scan_iter(store().prefix + "session:*")]
    assert ttls and max(ttls) <= app.config["SESSION_TTL_NETWORK"]


def test_discovery_lists_the_levels(client):
    doc = client.get("/.well-known/openid-configuration").json
    assert doc["acr_values_supported"] == [ACR_NETWORK, ACR_PASSWORD, ACR_QUESTION]
    assert re.search("network", " ".join(doc["acr_values_supported"]))
