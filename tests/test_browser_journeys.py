"""Every self-service journey in a real browser, with the codes read from the real receivers.

Debian's chromium (through Playwright) walks the IdP's pages as a person would: it starts from the demo RP's
"Accedi" (``examples/demo_rp.py``, a real OpenID Connect client), follows the links of the login page, and
reads each one-time code where the person would read it: from the SMS that reached the HTTP gateway on
loopback (``sms_gateway``) or the e-mail that reached the SMTP server on loopback (``smtp_receiver``). The IdP
sends them with its real senders (``real_senders_settings``), never through the development outbox. Directory
data are loaded by ``idp.directory.import_rows``; ready-made accounts by ``idp.registration.create_account``.

One chromium for the module, a fresh browser context (cookies, storage) for every test. Screenshots of each
journey's key page go to tests/artifacts/ (git-ignored).
"""
from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect

from examples import demo_rp
from idp import directory, registration

from .conftest import LiveServer, free_port
from .helpers import Factory

pytestmark = [pytest.mark.live, pytest.mark.browser]

ARTIFACTS = os.path.join(os.path.dirname(__file__), "artifacts")
WRONG_CREDENTIALS = "Numero di linea o password non corretti."

CUSTOMER = {"kind": "customer", "customer_code": "C0001", "name": "Acme Servizi S.r.l.",
            "email": "it@acme.example", "email_domain": "acme.example"}
NEW_PASSWORD = "Girasole-Azzurro-73"
OTHER_PASSWORD = "Tramonto-Viola-58"
QUESTION = "first_pet"
QUESTION_TEXT = "Come si chiamava il tuo primo animale domestico?"
ANSWER = "Fido il bassotto"


# fixtures ---------------------------------------------------------------------------------------------------

@pytest.fixture
def idp(make_app, real_senders_settings):
    """The IdP on a loopback port, sending e-mail to ``smtp_receiver`` and SMS to ``sms_gateway``."""
    port = free_port()
    app = make_app(ISSUER=f"http://127.0.0.1:{port}", **real_senders_settings)
    server = LiveServer(app, port).start()
    server.factory = Factory(app)
    yield server
    server.stop()


@pytest.fixture
def portal(idp):
    """The demo RP on its own loopback port, registered at the IdP like ``flask idp demo`` does."""
    port = free_port()
    rp_url = f"http://127.0.0.1:{port}"
    rp = idp.factory.rp(name="Selfcare demo portal", redirect_uri=rp_url + "/callback",
                        post_logout_redirect_uris=[rp_url + "/"], scope="openid profile email phone lines")
    app = demo_rp.create_app({"client_id": rp.client_id, "client_secret": rp.secret,
                              "redirect_uri": rp.redirect_uri, "rp_url": rp_url, "issuer": idp.url})
    server = LiveServer(app, port).start()
    yield server
    server.stop()


@pytest.fixture
def browser(chromium):
    context = chromium.new_context(locale="it-IT")
    context.set_default_timeout(15000)
    yield context
    context.close()


# helpers ----------------------------------------------------------------------------------------------------

def load_directory(app, *lines: dict, customers=(CUSTOMER,)) -> None:
    """Customers and lines through the real import (validated, all or nothing)."""
    rows = list(customers) + [{"kind": "line", "customer_code": "C0001", "sim_type": "voice", **line}
                              for line in lines]
    with app.app_context():
        report = directory.import_rows(rows)
    assert report.errors == []


def make_account(app, line: str, password: str, channel: str = "sms", email: str | None = None) -> None:
    """A registered employee with a security question, as the registration flow leaves it."""
    with app.app_context():
        registration.create_account(line, "C0001", "employee", email, channel, password, question=QUESTION,
                                    answer=ANSWER, email_verified=email is not None)


def shot(page, name: str) -> None:
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, f"journey-{name}.png"), full_page=True)


def to_login_page(page, idp, portal) -> None:
    """From the demo RP's "Accedi" to the IdP's login page of that authorization request."""
    page.goto(portal.url)
    page.get_by_role("link", name="Accedi").click()
    expect_login_page(page, idp)


def expect_login_page(page, idp) -> None:
    expect(page).to_have_url(re.compile(re.escape(idp.url) + r"/flows/login/"))
    expect(page.get_by_role("heading", name="Accedi")).to_be_visible()
    expect(page.get_by_text("per continuare su Selfcare demo portal")).to_be_visible()


def submit_login(page, line: str, password: str) -> None:
    page.get_by_label("Username (linea mobile)").fill(line)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Accedi").click()


def refused_login(page, line: str, password: str) -> None:
    submit_login(page, line, password)
    expect(page.get_by_role("alert")).to_have_text(WRONG_CREDENTIALS)


def claim(page, name: str):
    return page.locator(f'#id-token-claims tr[data-claim="{name}"] td.value')


def expect_on_portal(page, portal, line: str, role: str = "employee") -> None:
    """Back on the RP, which validated the ID token: it is this person's."""
    expect(page).to_have_url(portal.url + "/")
    expect(page.get_by_role("heading", name="Benvenuto nel portale")).to_be_visible()
    expect(claim(page, "phone_number")).to_have_text(line)
    expect(claim(page, "role")).to_have_text(role)
    expect(claim(page, "acr")).to_have_text("urn:selfcare:acr:password")


def fill_new_credentials(page, password: str, question: str = QUESTION, answer: str = ANSWER) -> None:
    page.get_by_label("Nuova password", exact=True).fill(password)
    page.get_by_label("Ripeti la nuova password").fill(password)
    page.get_by_label("Domanda di sicurezza").select_option(question)
    page.get_by_label("Risposta", exact=True).fill(answer)


def to_account_page(page, idp) -> None:
    """Logged in: the user icon at the top right of the IdP's pages leads to Gestione Utente."""
    page.goto(idp.url + "/")
    icon = page.get_by_role("link", name="Gestione Utente")
    expect(icon).to_be_visible()
    icon.click()
    expect(page).to_have_url(idp.url + "/account")
    expect(page.get_by_role("heading", name="Gestione Utente")).to_be_visible()


# 1. employee registration by SMS ----------------------------------------------------------------------------

def test_employee_registers_by_sms_and_logs_in(browser, idp, portal, sms_gateway, smtp_receiver):
    line = "+393931110001"
    load_directory(idp.app, {"msisdn": line})
    page = browser.new_page()
    to_login_page(page, idp, portal)

    page.get_by_role("link", name="Sei un dipendente? Registrati").click()
    expect(page.get_by_role("heading", name="Registrati come dipendente")).to_be_visible()
    page.get_by_role("button", name="Con SMS").click()
    expect(page.get_by_role("heading", name="Registrazione con SMS")).to_be_visible()
    page.get_by_label("Linea mobile aziendale").fill("393 111 0001")
    page.get_by_role("button", name="Invia il codice").click()

    expect(page.get_by_role("heading", name="Inserisci il codice di conferma")).to_be_visible()
    sms = sms_gateway.last(line)
    assert "completare la registrazione" in sms.text
    page.get_by_label("Codice di conferma").fill(sms_gateway.last_code(line))
    page.get_by_role("button", name="Conferma", exact=True).click()

    expect(page.get_by_role("heading", name="Scegli password e domanda di sicurezza")).to_be_visible()
    fill_new_credentials(page, NEW_PASSWORD)
    page.get_by_role("button", name="Completa la registrazione").click()

    expect(page.get_by_role("heading", name="Registrazione completata")).to_be_visible()
    shot(page, "1-employee-sms-done")
    page.get_by_role("link", name="Continua").click()

    expect_login_page(page, idp)
    submit_login(page, "393 111 0001", NEW_PASSWORD)
    expect_on_portal(page, portal, line)
    assert smtp_receiver.messages() == []  # the SMS way sends no e-mail


# 2. employee registration with a data SIM -------------------------------------------------------------------

def test_employee_registers_a_data_sim_by_pin_and_email(browser, idp, portal, sms_gateway, smtp_receiver):
    line, email = "+393931110002", "dati.rossi@acme.example"
    load_directory(idp.app, {"msisdn": line, "sim_type": "data", "sim_pin": "4321"})
    page = browser.new_page()
    to_login_page(page, idp, portal)

    page.get_by_role("link", name="Sei un dipendente? Registrati").click()
    page.get_by_role("button", name="Con SIM dati").click()
    expect(page.get_by_role("heading", name="Registrazione con SIM dati")).to_be_visible()
    page.get_by_label("Numero della SIM dati").fill("393 111 0002")
    page.get_by_label("PIN della SIM").fill("4321")
    page.get_by_label("Indirizzo e-mail").fill(email)
    page.get_by_role("button", name="Continua").click()

    expect(page.get_by_role("heading", name="Inserisci il codice di conferma")).to_be_visible()
    expect(page.locator("#code-sent")).to_contain_text(email)
    shot(page, "2-employee-data-sim-code")
    mail = smtp_receiver.last(email)
    assert mail.subject == "Il tuo codice di conferma Selfcare Business"
    page.get_by_label("Codice di conferma").fill(smtp_receiver.last_code(email))
    page.get_by_role("button", name="Conferma", exact=True).click()

    expect(page.get_by_role("heading", name="Scegli password e domanda di sicurezza")).to_be_visible()
    fill_new_credentials(page, NEW_PASSWORD, question="first_concert", answer="Vasco a Modena")
    page.get_by_role("button", name="Completa la registrazione").click()
    expect(page.get_by_role("heading", name="Registrazione completata")).to_be_visible()
    page.get_by_role("link", name="Continua").click()

    expect_login_page(page, idp)
    submit_login(page, line, NEW_PASSWORD)
    expect_on_portal(page, portal, line)
    expect(claim(page, "email")).to_have_text(email)
    assert sms_gateway.messages() == []  # a data SIM gets no SMS


# 4. Associa SIM in Gestione Utente --------------------------------------------------------------------------

def test_associate_a_second_sim_and_a_third_is_refused(browser, idp, portal, sms_gateway):
    first, second, third = "+393931110011", "+393931110012", "+393931110013"
    load_directory(idp.app, {"msisdn": first}, {"msisdn": second}, {"msisdn": third})
    make_account(idp.app, first, NEW_PASSWORD)
    page = browser.new_page()
    to_login_page(page, idp, portal)
    submit_login(page, first, NEW_PASSWORD)
    expect_on_portal(page, portal, first)

    to_account_page(page, idp)
    expect(page.locator("#sims li")).to_have_count(1)
    # a second tab opens "Associa SIM" too, before the first one finishes
    other = browser.new_page()
    other.goto(idp.url + "/account")
    other.get_by_role("button", name="Associa SIM").click()
    expect(other.get_by_label("Numero della SIM da associare")).to_be_visible()

    page.get_by_role("button", name="Associa SIM").click()
    expect(page.get_by_role("heading", name="Associa SIM")).to_be_visible()
    page.get_by_label("Numero della SIM da associare").fill("393 111 0012")
    page.get_by_label("SIM voce: ricevi un codice via SMS").check()
    shot(page, "4-associate-sim-line")
    page.get_by_role("button", name="Continua").click()

    expect(page.get_by_label("Codice ricevuto via SMS")).to_be_visible()
    sms = sms_gateway.last(second)
    assert "associare una SIM al tuo account" in sms.text
    page.get_by_label("Codice ricevuto via SMS").fill(sms_gateway.last_code(second))
    page.get_by_role("button", name="Conferma").click()

    expect(page).to_have_url(idp.url + "/account")
    expect(page.get_by_role("status")).to_contain_text("associata al tuo account")
    sims = page.locator("#sims li")
    expect(sims).to_have_count(2)
    expect(sims.nth(0)).to_contain_text("linea registrata")
    expect(page.locator("#sim-limit")).to_be_visible()
    expect(page.get_by_role("button", name="Associa SIM")).to_have_count(0)
    shot(page, "4-account-two-sims")

    # the other tab tries a third line: refused, and nothing is sent to it
    other.get_by_label("Numero della SIM da associare").fill(third)
    other.get_by_role("button", name="Continua").click()
    expect(other.get_by_role("alert")).to_contain_text("non è possibile associarne una terza")
    shot(other, "4-third-sim-refused")
    assert sms_gateway.messages(third) == []
    other.goto(idp.url + "/account")  # the refusal changed nothing: still two SIMs
    expect(other.locator("#sims li")).to_have_count(2)


# 5. password recovery ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("channel", ["sms", "email"])
def test_password_recovery_from_the_login_page(browser, idp, portal, sms_gateway, smtp_receiver, channel):
    line, email = "+393931110021", "anna.bianchi@acme.example"
    load_directory(idp.app, {"msisdn": line})
    make_account(idp.app, line, OTHER_PASSWORD, channel=channel, email=email)
    page = browser.new_page()
    to_login_page(page, idp, portal)

    page.get_by_role("link", name="Non ricordi la password?").click()
    expect(page.get_by_role("heading", name="Recupera la password")).to_be_visible()
    page.get_by_label("Username (linea mobile)").fill("393 111 0021")
    page.get_by_role("button", name="Continua").click()

    expect(page.get_by_role("heading", name="Domanda di sicurezza")).to_be_visible()
    expect(page.locator("#question-text")).to_have_text(QUESTION_TEXT)
    page.get_by_label(QUESTION_TEXT).fill("  fido IL Bassotto ")  # case and spaces do not count
    page.get_by_role("button", name="Continua").click()

    expect(page.get_by_role("heading", name="Codice di controllo")).to_be_visible()
    if channel == "sms":
        expect(page.get_by_text("via SMS alla linea registrata")).to_be_visible()
        code = sms_gateway.last_code(line)
        assert smtp_receiver.messages(email) == []
    else:
        expect(page.get_by_text("all'indirizzo e-mail registrato")).to_be_visible()
        assert smtp_receiver.last(email).subject == "Il tuo codice di controllo"
        code = smtp_receiver.last_code(email)
        assert sms_gateway.messages(line) == []
    page.get_by_label("Codice", exact=True).fill(code)
    page.get_by_role("button", name="Continua").click()

    expect(page.get_by_role("heading", name="Scegli la nuova password")).to_be_visible()
    fill_new_credentials(page, NEW_PASSWORD, question="dream_job", answer="astronauta")
    page.get_by_role("button", name="Salva").click()

    expect(page.get_by_role("heading", name="Password aggiornata")).to_be_visible()
    shot(page, f"5-recovery-done-{channel}")
    page.get_by_role("link", name="Vai all'accesso").click()

    expect_login_page(page, idp)
    refused_login(page, line, OTHER_PASSWORD)  # the old password no longer works
    submit_login(page, line, NEW_PASSWORD)
    expect_on_portal(page, portal, line)


# 6. change password in Gestione Utente ----------------------------------------------------------------------

def test_change_password_in_gestione_utente(browser, idp, portal, sms_gateway):
    line = "+393931110031"
    load_directory(idp.app, {"msisdn": line})
    make_account(idp.app, line, OTHER_PASSWORD)
    page = browser.new_page()
    to_login_page(page, idp, portal)
    submit_login(page, line, OTHER_PASSWORD)
    expect_on_portal(page, portal, line)

    to_account_page(page, idp)
    form = page.locator("#change-password")
    form.get_by_label("Password attuale").fill(OTHER_PASSWORD)
    fill_new_credentials(form, NEW_PASSWORD, question="first_car", answer="Fiat Panda")
    form.get_by_role("button", name="Cambia password").click()

    expect(page).to_have_url(idp.url + "/account")
    expect(page.get_by_role("status")).to_have_text(
        "Password e domanda di sicurezza aggiornate. Le altre sessioni sono state chiuse.")
    shot(page, "6-password-changed")
    assert "password del tuo account è stata cambiata" in sms_gateway.last(line).text  # the notice, by SMS

    # log out of the IdP from Gestione Utente, then of the portal
    page.get_by_role("button", name="Esci").click()
    expect(page.get_by_role("heading", name="Sei uscito")).to_be_visible()
    page.goto(portal.url)
    page.get_by_role("link", name="Esci").first.click()
    expect(page.get_by_role("link", name="Accedi")).to_be_visible()

    page.get_by_role("link", name="Accedi").click()
    expect_login_page(page, idp)
    refused_login(page, line, OTHER_PASSWORD)
    submit_login(page, line, NEW_PASSWORD)
    expect_on_portal(page, portal, line)


# 3. referent registration (flows/registration_referent.py, then the forced change in flows/login.py)

def test_referent_registers_and_changes_the_temporary_password(browser, idp, portal, sms_gateway,
                                                               smtp_receiver):
    line, email = "+393931110041", "referente@acme.example"
    load_directory(idp.app, {"msisdn": line})
    page = browser.new_page()
    to_login_page(page, idp, portal)

    page.get_by_role("link", name="Registrazione – Crea un Referente Aziendale Tre").click()
    expect(page.get_by_role("heading", name="Registrazione – Crea un Referente Aziendale Tre")) \
        .to_be_visible()
    page.get_by_label("Codice cliente Tre").fill("c0001")
    page.get_by_label("E-mail aziendale").fill(email)
    page.get_by_label("Linea mobile", exact=True).fill("393 111 0041")
    page.get_by_label("via e-mail all'indirizzo aziendale").check()
    shot(page, "3-referent-details")
    page.get_by_role("button", name="Invia il PIN").click()

    expect(page.get_by_role("heading", name="Inserisci il PIN OTP")).to_be_visible()
    expect(page.locator("#pin-sent")).to_contain_text(email)
    assert smtp_receiver.last(email).subject == "Il tuo PIN per la registrazione a Selfcare Business"
    page.get_by_label("PIN OTP").fill(smtp_receiver.last_code(email))
    page.get_by_role("button", name="Conferma").click()

    expect(page.get_by_role("heading", name="Registrazione completata")).to_be_visible()
    expect(page.locator("#registration-done")).to_contain_text(email)
    credentials = smtp_receiver.last(email)  # sent before the page was answered
    assert credentials.subject == "Le tue credenziali Selfcare Business"
    assert f"Username (linea mobile): {line}" in credentials.text
    temporary = re.search(r"Password provvisoria: (\S+)", credentials.text).group(1)
    assert sms_gateway.messages() == []  # the e-mail channel was chosen
    page.get_by_role("link", name="Continua").click()

    # first login: the temporary password leads only to the forced change
    expect_login_page(page, idp)
    submit_login(page, line, temporary)
    expect(page.get_by_role("heading", name="Scegli una nuova password")).to_be_visible()
    expect(page.locator("#change-required")).to_contain_text("password provvisoria")
    shot(page, "3-referent-change-password")
    fill_new_credentials(page, temporary)  # keeping the temporary password is refused
    page.get_by_role("button", name="Salva e continua").click()
    expect(page.locator("#credentials-errors")).to_contain_text("diversa da quella provvisoria")
    fill_new_credentials(page, NEW_PASSWORD, question="favourite_book", answer="Il barone rampante")
    page.get_by_role("button", name="Salva e continua").click()

    expect_on_portal(page, portal, line, role="referent")
    expect(claim(page, "email")).to_have_text(email)
