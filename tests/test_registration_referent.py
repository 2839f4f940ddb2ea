"""Referent registration (SPEC §3 point 4) and the referent's forced password change at first login (point 2).

Directory data are made through ``idp.directory.import_rows``; codes and credentials are read from the outbox (the
development sender); logins go through the real pages and end with a real authorization code and tokens.
"""
from __future__ import annotations

import re
import time
from html import unescape

import pytest
from sqlalchemy import select

from idp import accounts, msisdn, registration
from idp.directory import import_rows
from idp.extensions import db
from idp.models import Account, AuditEvent

from .helpers import Journey, Outbox, csrf_of, query_of

LINE = "+393331112222"  # C0001's free voice line
OTHER_CUSTOMER_LINE = "+393331113333"  # C0002's
SUSPENDED_LINE = "+393331114444"  # C0001's, suspended
TAKEN_LINE = "+393331115555"  # C0001's, registered already
UNKNOWN_LINE = "+393339998888"
EMAIL = "giulia.bianchi@acme-servizi.example"
NEW_PASSWORD = "Tramonto-Sul-Lago-77"
START = "/flows/registration_referent/"


@pytest.fixture
def directory_data(app):
    with app.app_context():
        report = import_rows([
            {"kind": "customer", "customer_code": "C0001", "name": "Acme Servizi S.r.l.",
             "email": "it@acme-servizi.example", "email_domain": "acme-servizi.example"},
            {"kind": "customer", "customer_code": "C0002", "name": "Beta Logistica S.p.A.",
             "email": "amministrazione@beta.example"},
            {"kind": "line", "customer_code": "C0001", "msisdn": LINE},
            {"kind": "line", "customer_code": "C0002", "msisdn": OTHER_CUSTOMER_LINE},
            {"kind": "line", "customer_code": "C0001", "msisdn": SUSPENDED_LINE, "status": "suspended"},
            {"kind": "line", "customer_code": "C0001", "msisdn": TAKEN_LINE},
        ])
        assert not report.errors, report.errors
        registration.create_account(TAKEN_LINE, "C0001", "referent", "capo@acme-servizi.example", "sms",
                                    "Gia-Registrato-2025")


def account_of(app, line: str) -> Account | None:
    with app.app_context():
        account = db.session.scalar(select(Account).where(Account.username == line))
        if account is not None:
            db.session.expunge(account)
        return account


def audit(app, kind: str) -> list[AuditEvent]:
    with app.app_context():
        rows = db.session.scalars(select(AuditEvent).where(AuditEvent.type == kind).order_by(AuditEvent.id)).all()
        db.session.expunge_all()
        return rows


def page_url(client, url: str = START) -> str:
    response = client.get(url)
    assert response.status_code == 302, response.text
    return response.headers["Location"]


def submit_details(client, url: str, customer_code="C0001", email=EMAIL, line="333 111 2222", channel="sms"):
    page = client.get(url)
    assert page.status_code == 200 and 'name="customer_code"' in page.text
    return client.post(url, data={"csrf_token": csrf_of(page.text), "customer_code": customer_code, "email": email,
                                  "line": line, "channel": channel})


def submit_pin(client, url: str, pin: str):
    page = client.get(url)
    return client.post(url, data={"csrf_token": csrf_of(page.text), "pin": pin})


def press(client, url: str, action: str):
    """Press «Invia di nuovo il PIN» (resend) or «Modifica i dati» (edit) on the PIN page."""
    page = client.get(url)
    return client.post(f"{url}/{action}", data={"csrf_token": csrf_of(page.text)})


def normalised(html: str, url: str, line: str, email: str) -> str:
    """The page with what legitimately differs (flow id, CSRF token, the destination typed) taken out."""
    html = html.replace(url.rsplit("/", 1)[1], "FLOW")
    html = re.sub(r'name="csrf_token"[^>]*value="[^"]+"', 'name="csrf_token" value="CSRF"', html)
    return html.replace(msisdn.mask(line), "LINE").replace(email, "EMAIL")


def credentials_from(outbox: Outbox, email: str) -> tuple[str, str]:
    mail = outbox.last(email)
    assert mail["subject"] == "Le tue credenziali Selfcare Business"
    username = re.search(r"Username \(linea mobile\): (\S+)", mail["text"]).group(1)
    password = re.search(r"Password provvisoria: (\S+)", mail["text"]).group(1)
    assert password in mail["html"] and username in mail["html"]
    return username, password


def register(client, outbox, url: str, channel="sms", email=EMAIL) -> str:
    """Walk the registration to its last page; return the temporary password e-mailed."""
    response = submit_details(client, url, email=email, channel=channel)
    assert response.status_code == 302 and response.headers["Location"] == url
    code = outbox.last_code(LINE if channel == "sms" else email)
    response = submit_pin(client, url, code)
    assert response.status_code == 302 and response.headers["Location"] == url
    return credentials_from(outbox, email)[1]


def sso_cookie_set(response) -> bool:
    return any(c.startswith("idp_sso=") and not c.startswith("idp_sso=;")
               for c in response.headers.getlist("Set-Cookie"))


def new_credentials(client, url: str, password=NEW_PASSWORD, confirm=None, question="first_pet", answer="Fufi"):
    page = client.get(url)
    assert page.status_code == 200 and 'id="change-required"' in page.text
    return client.post(url, data={"csrf_token": csrf_of(page.text), "password": password,
                                  "confirm": confirm if confirm is not None else password,
                                  "question": question, "answer": answer})


# the happy paths ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channel", ["sms", "email"])
def test_registration_then_forced_change_at_first_login(app, client, factory, outbox, directory_data, channel):
    rp = factory.rp()
    journey = Journey(client, rp)
    login_url = journey.authorize().headers["Location"]
    login_page = client.get(login_url)
    login_id = login_url.rsplit("/", 1)[1]
    assert f'href="/flows/registration_referent/?login={login_id}"' in login_page.text

    url = page_url(client, f"{START}?login={login_id}")
    response = submit_details(client, url, channel=channel, customer_code=" c0001 ", email=EMAIL.upper())
    assert response.status_code == 302
    pin_page = client.get(url)
    assert "Se i dati sono corretti riceverai un PIN" in pin_page.text
    destination, other = (LINE, EMAIL) if channel == "sms" else (EMAIL, LINE)
    sms_or_mail = outbox.last(destination)
    assert "registrazione del Referente Aziendale" in sms_or_mail["text"]
    assert outbox.messages(other) == []
    code = outbox.last_code(destination)
    assert account_of(app, LINE) is None  # nothing exists before the PIN

    response = submit_pin(client, url, code)
    assert response.status_code == 302
    done = client.get(url)
    assert "Registrazione completata" in done.text and "credenziali di accesso" in done.text and EMAIL in done.text
    continue_url = re.search(r'id="continue" href="([^"]+)"|href="([^"]+)" id="continue"', done.text)
    continue_url = (continue_url.group(1) or continue_url.group(2)).replace("&amp;", "&")
    assert continue_url.startswith("/authorize?") and f"client_id={rp.client_id}" in continue_url

    account = account_of(app, LINE)
    assert account.role == "referent" and account.otp_channel == channel and account.email == EMAIL
    assert account.password_temporary and account.security_question is None
    assert account.email_verified is (channel == "email")
    username, temporary = credentials_from(outbox, EMAIL)
    assert username == LINE and len(temporary) >= 16
    assert temporary not in str(account.password_hash)

    # first login with the temporary password: no session, only the change
    login_url = client.get(continue_url).headers["Location"]
    assert login_url.startswith("/flows/login/")
    response = journey.submit_login(login_url, username="333 111 2222", password=temporary)
    assert response.status_code == 302 and response.headers["Location"] == login_url
    assert not sso_cookie_set(response)
    assert client.get(continue_url).headers["Location"].startswith("/flows/login/")  # not logged in
    response = new_credentials(client, login_url)
    assert response.status_code == 302 and response.headers["Location"] == continue_url
    assert sso_cookie_set(response)
    redirect = client.get(continue_url)
    assert redirect.status_code == 302 and redirect.headers["Location"].startswith(rp.redirect_uri)
    code = query_of(redirect.headers["Location"])["code"]
    tokens = journey.redeem(code)
    assert tokens.status_code == 200 and tokens.json["id_token"]

    account = account_of(app, LINE)
    assert not account.password_temporary and account.security_question == "first_pet"
    [completed] = audit(app, "registration.completed")
    assert completed.account_id == account.id and completed.details["role"] == "referent"
    assert completed.masked_line == msisdn.mask(LINE) and completed.details["channel"] == channel
    assert [e.details.get("via") for e in audit(app, "password.changed")] == ["first_login"]
    assert all(temporary not in str(e.details) and NEW_PASSWORD not in str(e.details)
               for e in audit(app, "code.sent") + audit(app, "password.changed"))
    with app.test_request_context():
        assert accounts.check_password(LINE, NEW_PASSWORD) is not None
        assert accounts.check_password(LINE, temporary) is None
    # a fresh browser: the temporary password is refused, the new one logs straight in
    other = Journey(app.test_client(), rp)
    url2 = other.authorize().headers["Location"]
    refused = other.submit_login(url2, username=LINE, password=temporary)
    assert refused.status_code == 200 and "Numero di linea o password non corretti." in refused.text
    assert other.login_and_get_code(username=LINE, password=NEW_PASSWORD)["code"]


def test_demo_data_let_a_newcomer_register_a_referent(app, client, outbox):
    from idp import demo
    with app.app_context():
        info = demo.load("http://127.0.0.1:5001")
    free = next(f["line"] for f in info["free_lines"] if f["line"] == LINE)
    url = page_url(client)
    response = submit_details(client, url, customer_code=info["customer"]["code"], line=free,
                              email="nuovo.referente@" + info["customer"]["email_domain"])
    assert response.status_code == 302
    response = submit_pin(client, url, outbox.last_code(free))
    assert response.status_code == 302 and "Registrazione completata" in client.get(url).text
    assert account_of(app, free).role == "referent"


def test_registration_without_a_login_flow_ends_without_continue(client, outbox, directory_data):
    url = page_url(client, f"{START}?login=not-a-real-login-flow-1234")
    register(client, outbox, url)
    done = client.get(url)
    assert "Registrazione completata" in done.text and 'id="continue"' not in done.text


# refusals: the same pages, no PIN, no account ---------------------------------------------------------------------

REFUSALS = {
    "wrong customer code": dict(customer_code="C9999"),
    "e-mail outside the company's domain": dict(email="giulia@altra-azienda.example"),
    "e-mail of another customer": dict(email="amministrazione@beta.example"),
    "line of another customer": dict(line=OTHER_CUSTOMER_LINE),
    "suspended line": dict(line=SUSPENDED_LINE),
    "unknown line": dict(line=UNKNOWN_LINE),
    "line already registered": dict(line=TAKEN_LINE),
}


@pytest.mark.parametrize("channel", ["sms", "email"])
@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_walk_the_same_pages_and_send_nothing(app, client, outbox, directory_data, case, channel):
    right = page_url(client)
    submit_details(client, right, channel=channel)
    right_page = client.get(right).text
    sent_before = len(outbox.messages())

    fields = dict(customer_code="C0001", email=EMAIL, line=LINE, channel=channel)
    fields.update(REFUSALS[case])
    url = page_url(client)
    response = submit_details(client, url, **fields)
    assert response.status_code == 302 and response.headers["Location"] == url
    page = client.get(url)
    assert page.status_code == 200 and "Se i dati sono corretti riceverai un PIN" in page.text
    assert normalised(page.text, url, fields["line"], fields["email"]) == \
        normalised(right_page, right, LINE, EMAIL)
    assert len(outbox.messages()) == sent_before  # no PIN left the building
    assert [e.details["reason"] for e in audit(app, "registration.refused")] == ["data_do_not_match"]
    assert len(audit(app, "code.sent")) == 1  # the right flow's only

    wrong = submit_pin(client, url, "123456")
    assert wrong.status_code == 200 and "PIN non corretto o scaduto" in wrong.text
    assert account_of(app, UNKNOWN_LINE) is None and account_of(app, OTHER_CUSTOMER_LINE) is None
    assert account_of(app, SUSPENDED_LINE) is None
    assert account_of(app, TAKEN_LINE).email == "capo@acme-servizi.example"  # untouched
    # the right flow is unaffected: its PIN still works
    assert submit_pin(client, right, outbox.last_code(LINE if channel == "sms" else EMAIL)).status_code == 302
    assert account_of(app, LINE).role == "referent"


def test_malformed_input_is_refused_on_the_form_without_sending(client, outbox, directory_data):
    url = page_url(client)
    response = submit_details(client, url, line="not a number")
    assert response.status_code == 200 and "numero di linea mobile valido" in response.text
    assert 'value="C0001"' in response.text  # what was typed stays
    response = submit_details(client, url, email="not-an-email")
    assert response.status_code == 200 and "Compila tutti i campi" in response.text
    assert outbox.messages() == []


# PIN attempts, resend, edit ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("eligible", [True, False])
def test_wrong_pins_end_the_flow_the_same_way_whether_or_not_a_pin_was_sent(app, client, outbox, directory_data,
                                                                         eligible):
    url = page_url(client)
    submit_details(client, url, line=LINE if eligible else UNKNOWN_LINE)
    limit = app.config["OTP_MAX_ATTEMPTS"]
    for attempt in range(1, limit):
        response = submit_pin(client, url, "000000")
        assert response.status_code == 200 and "PIN non corretto o scaduto" in response.text
        left = limit - attempt
        assert (f"Ti restano {left} tentativi." if left > 1 else "Ti resta 1 tentativo.") in response.text
    last = submit_pin(client, url, "000000")
    assert last.status_code == 302 and last.headers["Location"] != url
    restarted = client.get(last.headers["Location"])
    assert "PIN errato troppe volte" in restarted.text and 'name="customer_code"' in restarted.text
    assert client.get(url).status_code == 410
    if eligible:  # the right PIN is worthless now
        page = client.get(last.headers["Location"])
        late = client.post(url, data={"csrf_token": csrf_of(page.text), "pin": outbox.last_code(LINE)})
        assert late.status_code == 410
    assert account_of(app, LINE) is None


def test_resend_makes_a_new_pin_and_voids_the_old_one(app, client, outbox, directory_data):
    url = page_url(client)
    submit_details(client, url)
    first = outbox.last_code(LINE)
    response = press(client, url, "resend")
    assert response.status_code == 302
    assert "Ti abbiamo inviato un nuovo PIN, se i dati sono corretti" in client.get(url).text
    assert len(outbox.messages(LINE)) == 2
    second = outbox.last_code(LINE)
    if first != second:
        assert "PIN non corretto" in submit_pin(client, url, first).text
    assert submit_pin(client, url, second).status_code == 302
    assert account_of(app, LINE) is not None


@pytest.mark.parametrize("line", [LINE, UNKNOWN_LINE])
def test_resend_cooldown_refuses_a_second_send_with_the_wait(make_app, line):
    app = make_app(OTP_RESEND_COOLDOWN=30)
    outbox = Outbox(app)
    client = app.test_client()
    with app.app_context():
        import_rows([{"kind": "customer", "customer_code": "C0001", "name": "Acme",
                      "email_domain": "acme-servizi.example"},
                     {"kind": "line", "customer_code": "C0001", "msisdn": LINE}])
    url = page_url(client)
    submit_details(client, url, line=line)
    response = press(client, url, "resend")
    assert response.status_code == 302
    page = client.get(url)
    match = re.search(r"Hai già richiesto un PIN da poco: attendi (\d+) secondi e riprova.", page.text)
    assert match and 0 < int(match.group(1)) <= 30
    assert len(outbox.messages(line)) == (1 if line == LINE else 0)
    # a new flow for the same line is under the same cooldown: the limit is the destination's, not the flow's
    other = page_url(client)
    refused = submit_details(client, other, line=line)
    assert refused.status_code == 200 and "attendi" in refused.text
    assert len(outbox.messages(line)) == (1 if line == LINE else 0)


def test_hourly_cap_on_the_client_address(make_app):
    app = make_app(OTP_SENDS_PER_HOUR_ADDRESS=2)
    client = app.test_client()
    for n in range(2):
        url = page_url(client)
        assert submit_details(client, url, line=f"+39333000000{n}").status_code == 302
    url = page_url(client)
    refused = submit_details(client, url, line="+393330000009")
    assert refused.status_code == 200 and "Hai richiesto troppi PIN: riprova tra" in refused.text


def test_edit_goes_back_to_the_form_and_a_corrected_e_mail_gets_the_pin(app, client, outbox, directory_data):
    url = page_url(client)
    submit_details(client, url, email="giulia@gmail.example", channel="email")
    assert outbox.messages() == []
    response = press(client, url, "edit")
    assert response.status_code == 302
    form = client.get(url)
    assert 'value="giulia@gmail.example"' in form.text and 'name="customer_code"' in form.text
    submit_details(client, url, email=EMAIL, channel="email")
    assert submit_pin(client, url, outbox.last_code(EMAIL)).status_code == 302
    assert account_of(app, LINE).otp_channel == "email"


# expiry, CSRF, delivery failures --------------------------------------------------------------------------------

def test_unknown_and_expired_flows_show_the_expired_page(make_app, client):
    for path in ("/flows/registration_referent/not-a-real-flow-id-123456", "/flows/registration_referent/x"):
        response = client.get(path)
        assert response.status_code == 410 and "Sessione scaduta" in response.text
    page = client.get(page_url(client))
    response = client.post("/flows/registration_referent/not-a-real-flow-id-123456/resend",
                           data={"csrf_token": csrf_of(page.text)})
    assert response.status_code == 410

    app = make_app(FLOW_TTL=1)
    short = app.test_client()
    url = page_url(short)
    time.sleep(1.2)
    response = short.get(url)
    assert response.status_code == 410 and "Sessione scaduta" in response.text


def test_forms_require_csrf(app, client, outbox, directory_data):
    url = page_url(client)
    client.get(url)
    response = client.post(url, data={"customer_code": "C0001", "email": EMAIL, "line": LINE, "channel": "sms"})
    assert response.status_code == 400 and "Modulo scaduto" in response.text
    assert outbox.messages() == []
    submit_details(client, url)
    for target, data in ((url, {"pin": outbox.last_code(LINE)}), (url + "/resend", {}), (url + "/edit", {})):
        response = client.post(target, data=data)
        assert response.status_code == 400 and "Modulo scaduto" in response.text
    assert len(outbox.messages(LINE)) == 1 and account_of(app, LINE) is None


def test_failed_sms_says_so_and_the_flow_can_retry(make_app):
    app = make_app(SMS_SENDER="http", SMS_GATEWAY_URL="http://127.0.0.1:9/", SMS_GATEWAY_RETRIES=0,
                   SMS_GATEWAY_TIMEOUT=2)
    outbox, client = Outbox(app), app.test_client()
    with app.app_context():
        import_rows([{"kind": "customer", "customer_code": "C0001", "name": "Acme",
                      "email_domain": "acme-servizi.example"},
                     {"kind": "line", "customer_code": "C0001", "msisdn": LINE}])
    url = page_url(client)
    assert submit_details(client, url).status_code == 302
    page = client.get(url)
    assert "Non siamo riusciti a inviare l'SMS con il PIN" in unescape(page.text) and 'id="resend"' in page.text
    press(client, url, "resend")
    assert "Non siamo riusciti a inviare l'SMS con il PIN" in unescape(client.get(url).text)
    app.config["SMS_SENDER"] = "outbox"  # the gateway is back
    press(client, url, "resend")
    assert submit_pin(client, url, outbox.last_code(LINE)).status_code == 302
    assert "Registrazione completata" in client.get(url).text


def test_failed_credentials_e_mail_is_retried_with_a_new_temporary_password(make_app):
    app = make_app(EMAIL_SENDER="smtp", SMTP_HOST="127.0.0.1", SMTP_PORT=9, SMTP_SECURITY="none", SMTP_TIMEOUT=2)
    outbox, client = Outbox(app), app.test_client()
    with app.app_context():
        import_rows([{"kind": "customer", "customer_code": "C0001", "name": "Acme",
                      "email_domain": "acme-servizi.example"},
                     {"kind": "line", "customer_code": "C0001", "msisdn": LINE}])
    url = page_url(client)
    submit_details(client, url)  # the PIN goes by SMS (outbox)
    assert submit_pin(client, url, outbox.last_code(LINE)).status_code == 302
    page = client.get(url)
    assert "non siamo riusciti a inviare l'e-mail con le credenziali" in unescape(page.text)
    assert account_of(app, LINE).password_temporary
    retry = client.post(url, data={"csrf_token": csrf_of(page.text)})
    assert retry.status_code == 200 and "nemmeno questa volta" in retry.text
    app.config["EMAIL_SENDER"] = "outbox"
    assert client.post(url, data={"csrf_token": csrf_of(page.text)}).status_code == 302
    assert "Registrazione completata" in client.get(url).text
    _username, temporary = credentials_from(outbox, EMAIL)
    with app.test_request_context():
        assert accounts.check_password(LINE, temporary) is not None


# the forced change: policy refusals ----------------------------------------------------------------------------------

@pytest.fixture
def change_page(app, client, factory, outbox, directory_data):
    url = page_url(client)
    temporary = register(client, outbox, url)
    journey = Journey(client, factory.rp())
    login_url = journey.authorize().headers["Location"]
    response = journey.submit_login(login_url, username=LINE, password=temporary)
    assert response.status_code == 302 and response.headers["Location"] == login_url
    return login_url, temporary


@pytest.mark.parametrize("fields, message", [
    (dict(password="password"), "Questa password è troppo comune"),
    (dict(password="Casa3331112222!"), "La password non può contenere il tuo numero di linea."),
    (dict(password=NEW_PASSWORD, answer=NEW_PASSWORD.lower()), "La risposta non può essere uguale"),
    (dict(password=NEW_PASSWORD, confirm="Altra-Password-99"), "Le due password non coincidono."),
    (dict(password="corta"), "La password deve avere almeno 8 caratteri."),
    (dict(password="giulia.bianchi-2026"), "La password non può contenere il tuo indirizzo e-mail."),
])
def test_forced_change_refuses_weak_choices(app, client, change_page, fields, message):
    login_url, _temporary = change_page
    response = new_credentials(client, login_url, **fields)
    assert response.status_code == 200 and message in response.text
    assert 'id="credentials-errors"' in response.text and not sso_cookie_set(response)
    assert account_of(app, LINE).password_temporary
    # the page is still there: a good choice goes through
    assert new_credentials(client, login_url).status_code == 302


def test_forced_change_refuses_keeping_the_temporary_password(app, client, change_page):
    login_url, temporary = change_page
    response = new_credentials(client, login_url, password=temporary)
    assert response.status_code == 200 and "diversa da quella provvisoria" in response.text
    assert account_of(app, LINE).password_temporary


def test_abandoned_change_leaves_no_session_and_the_temporary_password_working(app, client, change_page, factory):
    login_url, temporary = change_page
    home = client.get("/")
    assert home.status_code == 200 and "Per accedere, parti dal portale" in unescape(home.text)
    assert msisdn.mask(LINE) not in home.text
    again = Journey(app.test_client(), factory.rp(redirect_uri="https://rp2.example/cb"))
    url = again.authorize().headers["Location"]
    response = again.submit_login(url, username=LINE, password=temporary)
    assert response.status_code == 302 and response.headers["Location"] == url
    assert "Scegli una nuova password" in again.client.get(url).text


def test_existing_accounts_with_a_normal_password_log_in_as_before(client, factory):
    factory.account()
    journey = Journey(client, factory.rp())
    assert journey.login_and_get_code()["code"]


def test_double_submit_of_the_form_sends_one_pin_and_both_land_on_the_pin_page(make_app):
    app = make_app(OTP_RESEND_COOLDOWN=30)
    outbox, client = Outbox(app), app.test_client()
    with app.app_context():
        import_rows([{"kind": "customer", "customer_code": "C0001", "name": "Acme",
                      "email_domain": "acme-servizi.example"},
                     {"kind": "line", "customer_code": "C0001", "msisdn": LINE}])
    url = page_url(client)
    page = client.get(url)
    data = {"csrf_token": csrf_of(page.text), "customer_code": "C0001", "email": EMAIL, "line": LINE,
            "channel": "sms"}
    first, second = client.post(url, data=data), client.post(url, data=data)
    assert first.status_code == second.status_code == 302 and second.headers["Location"] == url
    assert "Se i dati sono corretti riceverai un PIN" in client.get(url).text
    assert len(outbox.messages(LINE)) == 1


def test_a_second_window_in_the_change_step_must_log_in_again_once_the_first_changed(app, client, change_page,
                                                                                     factory):
    login_url, temporary = change_page
    other = Journey(app.test_client(), factory.rp(redirect_uri="https://rp2.example/cb"))
    other_url = other.authorize().headers["Location"]
    assert other.submit_login(other_url, username=LINE, password=temporary).headers["Location"] == other_url
    page = other.client.get(other_url)
    assert new_credentials(client, login_url).status_code == 302  # the first window changes the password
    late = other.client.post(other_url, data={"csrf_token": csrf_of(page.text), "password": "Un-Altra-Scelta-31",
                                              "confirm": "Un-Altra-Scelta-31", "question": "dream_job",
                                              "answer": "astronauta"})
    assert late.status_code == 302 and late.headers["Location"].startswith("/authorize?")
    assert not sso_cookie_set(late)
    assert "Accedi di nuovo con la tua password." in unescape(other.client.get(late.headers["Location"],
                                                                               follow_redirects=True).text)
    with app.test_request_context():
        assert accounts.check_password(LINE, NEW_PASSWORD) is not None
