"""Employee registration (SPEC §3 points 5 and 6): by SMS and with a data SIM; every edge and refusal."""
import html
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from idp.directory import import_rows
from idp.extensions import db
from idp.models import Account, Customer

from .helpers import Journey, Outbox, csrf_of, query_of

START = "/flows/registration_employee/"
NEW_PASSWORD = "Girasole-Lento-73"
ANSWER = "Fido il bassotto"

VOICE = "+393935550101"
VOICE_TYPED = "393 555 0101"
DATA = "+393935550202"
DATA_PIN = "4321"
EMAIL = "giulia.rossi@posta.example"
UNKNOWN = "+393935559999"
SUSPENDED = "+393935550303"
CEASED = "+393935550404"
DATA_SUSPENDED = "+393935550505"
VOICE_TAKEN = "+393935550606"
DATA_TAKEN = "+393935550707"


def load_directory(app):
    rows = [
        {"kind": "customer", "customer_code": "C0001", "name": "Acme Servizi S.r.l.",
         "email_domain": "acme.example"},
        {"kind": "line", "customer_code": "C0001", "msisdn": VOICE, "sim_type": "voice", "status": "active"},
        {"kind": "line", "customer_code": "C0001", "msisdn": DATA, "sim_type": "data", "status": "active",
         "sim_pin": DATA_PIN},
        {"kind": "line", "customer_code": "C0001", "msisdn": SUSPENDED, "sim_type": "voice",
         "status": "suspended"},
        {"kind": "line", "customer_code": "C0001", "msisdn": CEASED, "sim_type": "voice", "status": "ceased"},
        {"kind": "line", "customer_code": "C0001", "msisdn": DATA_SUSPENDED, "sim_type": "data",
         "status": "suspended", "sim_pin": DATA_PIN},
        {"kind": "line", "customer_code": "C0001", "msisdn": VOICE_TAKEN, "sim_type": "voice",
         "status": "active"},
        {"kind": "line", "customer_code": "C0001", "msisdn": DATA_TAKEN, "sim_type": "data",
         "status": "active", "sim_pin": DATA_PIN},
    ]
    with app.app_context():
        report = import_rows(rows)
        assert not report.errors, report.errors
        from idp import registration
        for number in (VOICE_TAKEN, DATA_TAKEN):
            registration.create_account(number, "C0001", "employee", None, "sms", "Altra-Password-99",
                                        question="first_pet", answer="micio")


@pytest.fixture
def directory_app(app):
    load_directory(app)
    return app


# drivers ---------------------------------------------------------------------------------------------------

def start(client, way, login=None):
    page = client.get(START, query_string={"login": login} if login else None)
    assert page.status_code == 200
    response = client.post(START, data={"csrf_token": csrf_of(page.text), "way": way, "login": login or ""})
    assert response.status_code == 302, response.text
    return response.headers["Location"]


def post(client, url, **data):
    page = client.get(url)
    assert page.status_code == 200, page.text
    return client.post(url, data={"csrf_token": csrf_of(page.text), **data})


def credentials(password=NEW_PASSWORD, answer=ANSWER, confirm=None, question="first_pet"):
    return {"password": password, "confirm": password if confirm is None else confirm,
            "question": question, "answer": answer}


def to_code_page_by_sms(client, typed=VOICE_TYPED, login=None):
    url = start(client, "sms", login)
    response = post(client, url, line=typed)
    assert response.status_code == 302 and response.headers["Location"] == url
    return url


def to_code_page_with_pin(client, line=DATA, pin=DATA_PIN, email=EMAIL):
    url = start(client, "data")
    response = post(client, url, line=line, pin=pin, email=email)
    assert response.status_code == 302 and response.headers["Location"] == url, response.text
    return url


def page_shape(html: str, url: str, *variables: str) -> str:
    """The page without what legitimately differs between two people: flow id, CSRF token, what they typed."""
    html = html.replace(url.rsplit("/", 1)[1], "<flow>")
    html = re.sub(r'name="csrf_token"[^>]*value="[^"]+"', "<csrf>", html)
    for value in variables:
        html = html.replace(value, "<typed>")
    return re.sub(r"\+39 393 \*\*\*\d{4}", "<line>", html)


def accounts(app, username=None):
    with app.app_context():
        query = select(func.count()).select_from(Account)
        if username:
            query = query.where(Account.username == username)
        return db.session.scalar(query)


def account_of(app, username):
    with app.app_context():
        account = db.session.scalar(select(Account).where(Account.username == username))
        customer = db.session.get(Customer, account.customer_id)
        return {"role": account.role, "otp_channel": account.otp_channel, "email": account.email,
                "email_verified": account.email_verified, "customer": customer.code,
                "temporary": account.password_temporary, "question": account.security_question,
                "answer_hash": account.security_answer_hash, "password_hash": account.password_hash}


def assert_no_secret_stored(info):
    assert info["password_hash"].startswith("$argon2id$") and NEW_PASSWORD not in info["password_hash"]
    assert info["answer_hash"].startswith("$argon2id$")


# happy paths -----------------------------------------------------------------------------------------------

def test_start_page_offers_both_ways(client, directory_app):
    page = client.get(START)
    assert page.status_code == 200
    assert 'value="sms"' in page.text and 'value="data"' in page.text
    assert "Con SMS" in page.text and "Con SIM dati" in page.text


def test_login_page_links_to_employee_registration(client, factory):
    journey = Journey(client, factory.rp())
    login_url = journey.authorize().headers["Location"]
    page = client.get(login_url)
    login_id = login_url.rsplit("/", 1)[1]
    assert f'href="{START}?login={login_id}"' in page.text


def test_registration_by_sms_end_to_end_then_login(client, directory_app, factory, outbox):
    rp = factory.rp(name="Portale Selfcare")
    journey = Journey(client, rp)
    login_url = journey.authorize().headers["Location"]
    login_id = login_url.rsplit("/", 1)[1]
    start_page = client.get(START, query_string={"login": login_id})
    assert "Portale Selfcare" in start_page.text

    url = to_code_page_by_sms(client, login=login_id)
    page = client.get(url)
    assert "Se la linea +39 393 ***0101 è idonea" in page.text
    sms = outbox.last(VOICE)
    assert sms["channel"] == "sms" and "Selfcare Business" in sms["text"]
    response = post(client, url, code=outbox.last_code(VOICE))
    assert response.status_code == 302 and response.headers["Location"] == url
    page = client.get(url)
    assert "Scegli password e domanda di sicurezza" in page.text and 'name="question"' in page.text

    done = post(client, url, **credentials())
    assert done.status_code == 200 and "Registrazione completata" in done.text
    continue_url = html.unescape(re.search(r'href="(/authorize\?[^"]+)" id="continue"', done.text).group(1))
    assert query_of(continue_url) == journey.last_params  # the original authorization request, unchanged
    assert client.get(url).status_code == 410  # the flow is over

    info = account_of(directory_app, VOICE)
    assert info["role"] == "employee" and info["otp_channel"] == "sms" and info["customer"] == "C0001"
    assert info["email"] is None and not info["temporary"] and info["question"] == "first_pet"
    assert_no_secret_stored(info)

    # "Continua" goes back to the authorization request, which shows the login page: the new password works
    back = client.get(continue_url)
    assert back.status_code == 302 and back.headers["Location"].startswith("/flows/login/")
    logged_in = journey.submit_login(back.headers["Location"], username=VOICE, password=NEW_PASSWORD)
    assert logged_in.status_code == 302 and logged_in.headers["Location"].startswith("/authorize?")
    assert "code=" in client.get(logged_in.headers["Location"]).headers["Location"]


def test_registration_with_data_sim_end_to_end_then_login(client, directory_app, factory, outbox):
    url = to_code_page_with_pin(client)
    page = client.get(url)
    assert f"all'indirizzo {EMAIL}" in page.text
    mail = outbox.last(EMAIL)
    assert mail["channel"] == "email" and mail["subject"] and "<html" in mail["html"]
    code = outbox.last_code(EMAIL)
    assert code in mail["html"]
    assert outbox.messages(DATA) == []  # a data SIM gets no SMS
    response = post(client, url, code=code)
    assert response.status_code == 302
    done = post(client, url, **credentials())
    assert done.status_code == 200 and "Registrazione completata" in done.text
    assert 'id="continue"' not in done.text  # not started from a login: nowhere to continue to

    info = account_of(directory_app, DATA)
    assert info["otp_channel"] == "email" and info["email"] == EMAIL and info["email_verified"] is True
    assert info["role"] == "employee" and info["customer"] == "C0001"
    assert_no_secret_stored(info)

    tokens = Journey(directory_app.test_client(), factory.rp()).tokens(username=DATA, password=NEW_PASSWORD)
    assert tokens["access_token"] and tokens["id_token"]


def test_resend_replaces_the_code(client, directory_app, outbox):
    url = to_code_page_by_sms(client)
    first = outbox.last_code(VOICE)
    response = post(client, url, action="resend")
    assert response.status_code == 302
    assert "ti abbiamo inviato un nuovo codice" in client.get(url).text
    second = outbox.last_code(VOICE)
    assert len(outbox.messages(VOICE)) == 2
    if first != second:
        assert "Codice non corretto o scaduto" in post(client, url, code=first).text
    assert post(client, url, code=second).status_code == 302
    assert "Scegli password" in client.get(url).text


def test_code_is_single_use_and_bound_to_its_flow(client, directory_app, outbox, app):
    url_a = to_code_page_by_sms(client)
    code_a = outbox.last_code(VOICE)
    other = app.test_client()
    url_b = to_code_page_by_sms(other)
    code_b = outbox.last_code(VOICE)
    if code_a != code_b:
        # flow A's code does not open flow B
        assert "Codice non corretto" in post(other, url_b, code=code_a).text
    assert post(client, url_a, code=code_a).status_code == 302
    # the code state is over: posting the code again is just an incomplete credentials form
    again = post(client, url_a, code=code_a)
    assert again.status_code == 200 and accounts(app, VOICE) == 0


# refusals look the same as the right data ------------------------------------------------------------------

@pytest.mark.parametrize("line", [UNKNOWN, DATA, SUSPENDED, CEASED, VOICE_TAKEN],
                         ids=["unknown", "data-sim", "suspended", "ceased", "registered"])
def test_sms_way_refusals_look_like_the_right_line_and_send_nothing(app, directory_app, outbox, line):
    right = app.test_client()
    right_url = to_code_page_by_sms(right, VOICE)
    right_page = right.get(right_url).text
    right_wrong_code = post(right, right_url, code="000000")

    client = app.test_client()
    url = to_code_page_by_sms(client, line)
    page = client.get(url).text
    assert page_shape(page, url) == page_shape(right_page, right_url)
    assert outbox.messages(line) == []
    wrong_code = post(client, url, code="000000")
    assert wrong_code.status_code == right_wrong_code.status_code == 200
    assert page_shape(wrong_code.text, url) == page_shape(right_wrong_code.text, right_url)
    assert "Codice non corretto o scaduto. Ti restano 4 tentativi." in wrong_code.text
    resend = post(client, url, action="resend")
    assert resend.status_code == 302 and outbox.messages(line) == []
    assert accounts(app, line) == (1 if line == VOICE_TAKEN else 0)


@pytest.mark.parametrize("line,pin", [(UNKNOWN, DATA_PIN), (VOICE, DATA_PIN), (DATA, "9999")],
                         ids=["unknown-line", "voice-sim", "wrong-pin"])
def test_data_way_unknown_line_voice_sim_and_wrong_pin_say_the_same(app, directory_app, outbox, line, pin):
    client = app.test_client()
    url = start(client, "data")
    response = post(client, url, line=line, pin=pin, email=EMAIL)
    assert response.status_code == 200
    assert "PIN non corretto. Ti restano 2 tentativi." in response.text
    assert outbox.messages(EMAIL) == [] and outbox.messages(line) == []


def test_data_way_pin_pages_are_identical_for_unknown_and_known_lines(app, directory_app):
    pages = []
    for line, pin in ((UNKNOWN, DATA_PIN), (VOICE, DATA_PIN), (DATA, "9999")):
        client = app.test_client()
        url = start(client, "data")
        pages.append(page_shape(post(client, url, line=line, pin=pin, email=EMAIL).text, url, line))
    assert pages[0] == pages[1] == pages[2]


@pytest.mark.parametrize("line", [DATA_SUSPENDED, DATA_TAKEN], ids=["suspended", "registered"])
def test_data_way_right_pin_on_ineligible_line_same_next_page_no_email(app, directory_app, outbox, line):
    right = app.test_client()
    right_url = to_code_page_with_pin(right)
    right_page = right.get(right_url).text
    assert len(outbox.messages(EMAIL)) == 1

    client = app.test_client()
    url = to_code_page_with_pin(client, line=line, email="altro@posta.example")
    page = client.get(url).text
    assert page_shape(page, url, "altro@posta.example") == page_shape(right_page, right_url, EMAIL)
    assert outbox.messages("altro@posta.example") == []
    response = post(client, url, code="000000")
    assert "Codice non corretto o scaduto" in response.text


def test_invalid_line_format_is_told_without_sending(client, directory_app, outbox):
    url = start(client, "sms")
    response = post(client, url, line="not a number")
    assert response.status_code == 200 and "Inserisci un numero di cellulare valido" in response.text
    assert outbox.messages() == []


# limits ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line", [VOICE, UNKNOWN], ids=["eligible", "unknown"])
def test_wrong_codes_up_to_the_limit_end_the_flow(app, directory_app, outbox, line):
    client = app.test_client()
    url = to_code_page_by_sms(client, line)
    limit = app.config["OTP_MAX_ATTEMPTS"]
    for left in range(limit - 1, 0, -1):
        response = post(client, url, code="000000")
        assert response.status_code == 200 and f"Ti {'resta' if left == 1 else 'restano'} {left} tentativ" \
            in response.text
    last = post(client, url, code="000000")
    assert last.status_code == 302 and last.headers["Location"].startswith(START)
    restarted = client.get(last.headers["Location"]).text
    assert "Troppi codici non corretti: ricomincia la registrazione." in restarted
    assert client.get(url).status_code == 410
    if line == VOICE:  # even the right code is useless now
        assert client.post(url, data={"code": outbox.last_code(VOICE)}).status_code in (400, 410)
    assert accounts(app, line) == 0


def test_wrong_pins_per_flow_end_the_flow(app, directory_app, outbox):
    client = app.test_client()
    url = start(client, "data")
    assert app.config["SIM_PIN_MAX_ATTEMPTS"] == 3
    assert "Ti restano 2 tentativi" in post(client, url, line=DATA, pin="1111", email=EMAIL).text
    assert "Ti resta 1 tentativo" in post(client, url, line=DATA, pin="2222", email=EMAIL).text
    last = post(client, url, line=DATA, pin="3333", email=EMAIL)
    assert last.status_code == 302 and last.headers["Location"].startswith(START)
    assert "Troppi PIN non corretti" in client.get(last.headers["Location"]).text
    assert client.get(url).status_code == 410
    assert outbox.messages(EMAIL) == []


@pytest.mark.parametrize("line", [DATA, UNKNOWN], ids=["data-sim", "unknown"])
def test_pin_attempts_per_line_per_day_refuse_even_the_right_pin(make_app, line):
    app = make_app(SIM_PIN_ATTEMPTS_PER_LINE_PER_DAY=4)
    load_directory(app)
    outbox = Outbox(app)
    first = app.test_client()
    url = start(first, "data")
    for pin in ("1111", "2222", "3333"):
        post(first, url, line=line, pin=pin, email=EMAIL)
    assert first.get(url).status_code == 410  # the flow's own limit (3) ended it
    second = app.test_client()
    url = start(second, "data")
    fourth = post(second, url, line=line, pin="4444", email=EMAIL)  # the 4th of the day
    assert "PIN non corretto" in fourth.text
    refused = post(second, url, line=line, pin=DATA_PIN, email=EMAIL)  # the 5th: refused before checking
    assert refused.status_code == 200
    assert "Troppi tentativi di PIN per questa linea: riprova tra 24 ore." in refused.text
    assert outbox.messages(EMAIL) == []
    # another line is not affected
    third = app.test_client()
    url = start(third, "data")
    assert "PIN non corretto" in post(third, url, line=DATA_SUSPENDED, pin="9999", email=EMAIL).text


@pytest.mark.parametrize("line", [VOICE, UNKNOWN], ids=["eligible", "unknown"])
def test_resend_cooldown_applies_to_every_line(make_app, line):
    app = make_app(OTP_RESEND_COOLDOWN=30)
    load_directory(app)
    outbox = Outbox(app)
    client = app.test_client()
    url = to_code_page_by_sms(client, line)
    response = post(client, url, action="resend")
    assert response.status_code == 200
    match = re.search(r"potrai chiederne un altro tra (\d+) secondi", response.text)
    assert match and 25 <= int(match.group(1)) <= 30
    assert len(outbox.messages(line)) == (1 if line == VOICE else 0)
    # a new flow for the same line is held back as well
    other = app.test_client()
    again = post(other, start(other, "sms"), line=line)
    assert again.status_code == 200 and "potrai chiederne un altro tra" in again.text


def test_hourly_cap_per_line(make_app):
    app = make_app(OTP_SENDS_PER_HOUR_DESTINATION=2)
    load_directory(app)
    client = app.test_client()
    url = to_code_page_by_sms(client)
    assert post(client, url, action="resend").status_code == 302
    capped = post(client, url, action="resend")
    assert capped.status_code == 200 and "potrai chiederne un altro tra" in capped.text
    assert len(Outbox(app).messages(VOICE)) == 2


# robustness ------------------------------------------------------------------------------------------------

def test_unknown_and_malformed_flow_ids_are_expired_pages(client, directory_app):
    for flow_id in ("A" * 32, "short", "x" * 80):
        response = client.get(START + flow_id)
        assert response.status_code in (404, 410)
    response = client.get(START + "A" * 32)
    assert response.status_code == 410 and "Sessione scaduta" in response.text
    page = client.get(START)
    posted = client.post(START + "A" * 32, data={"csrf_token": csrf_of(page.text), "line": VOICE})
    assert posted.status_code == 410


def test_expired_flow_is_an_expired_page(make_app):
    app = make_app(FLOW_TTL=1)
    load_directory(app)
    client = app.test_client()
    url = start(client, "sms")
    page = client.get(url)
    time.sleep(2.1)
    response = client.post(url, data={"csrf_token": csrf_of(page.text), "line": VOICE})
    assert response.status_code == 410 and "Sessione scaduta" in response.text
    assert Outbox(app).messages() == []


def test_every_form_needs_csrf(client, directory_app, outbox):
    assert client.post(START, data={"way": "sms"}).status_code == 400
    url = start(client, "sms")
    response = client.post(url, data={"line": VOICE})
    assert response.status_code == 400 and "Modulo scaduto" in response.text
    assert outbox.messages() == []
    post(client, url, line=VOICE)
    assert client.post(url, data={"code": outbox.last_code(VOICE)}).status_code == 400
    assert client.post(url, data={"action": "resend"}).status_code == 400
    assert len(outbox.messages(VOICE)) == 1
    assert post(client, url, code=outbox.last_code(VOICE)).status_code == 302
    assert client.post(url, data=credentials()).status_code == 400
    assert accounts(client.application, VOICE) == 0


def test_failed_sms_delivery_is_told_and_can_be_retried(make_app):
    app = make_app(SMS_SENDER="http", SMS_GATEWAY_URL="http://127.0.0.1:9/", SMS_GATEWAY_RETRIES=0)
    load_directory(app)
    client = app.test_client()
    url = to_code_page_by_sms(client)
    page = client.get(url)
    assert page.status_code == 200 and "Non è stato possibile inviare l'SMS" in html.unescape(page.text)
    retry = post(client, url, action="resend")
    assert retry.status_code == 200 and "Non è stato possibile inviare l'SMS" in html.unescape(retry.text)
    # the gateway is back: the same flow goes on
    app.config["SMS_SENDER"] = "outbox"
    retry = post(client, url, action="resend")
    assert retry.status_code == 302
    page = client.get(url)
    assert "Non è stato possibile inviare" not in page.text
    code = Outbox(app).last_code(VOICE)
    assert post(client, url, code=code).status_code == 302
    done = post(client, url, **credentials())
    assert "Registrazione completata" in done.text and accounts(app, VOICE) == 1


@pytest.mark.parametrize("password,answer,message", [
    ("Corto-1", ANSWER, "La password deve avere almeno 8 caratteri."),
    ("password123", ANSWER, "Questa password è troppo comune"),
    ("Linea-3935550101", ANSWER, "La password non può contenere il tuo numero di linea."),
    (NEW_PASSWORD, "3935550101", "La risposta non può essere uguale al numero di linea"),
    (NEW_PASSWORD, "+39 393 555 0101", "La risposta non può essere uguale al numero di linea"),
    (NEW_PASSWORD, "ab", "La risposta deve avere almeno 3 caratteri."),
], ids=["short", "common", "contains-line", "answer-is-line", "answer-is-typed-line", "answer-short"])
def test_password_and_answer_policy(client, directory_app, outbox, password, answer, message):
    url = to_code_page_by_sms(client)
    post(client, url, code=outbox.last_code(VOICE))
    response = post(client, url, **credentials(password=password, answer=answer))
    assert response.status_code == 200 and message in response.text
    assert accounts(directory_app, VOICE) == 0
    # the same flow accepts good credentials afterwards
    assert "Registrazione completata" in post(client, url, **credentials()).text


def test_passwords_must_match(client, directory_app, outbox):
    url = to_code_page_by_sms(client)
    post(client, url, code=outbox.last_code(VOICE))
    response = post(client, url, **credentials(confirm="Altra-Cosa-123"))
    assert "Le due password non coincidono." in response.text and accounts(directory_app, VOICE) == 0


def test_data_way_password_cannot_contain_the_email(client, directory_app, outbox):
    url = to_code_page_with_pin(client)
    post(client, url, code=outbox.last_code(EMAIL))
    response = post(client, url, **credentials(password="giulia.rossi-2024!"))
    assert "La password non può contenere il tuo indirizzo e-mail." in response.text


# races -----------------------------------------------------------------------------------------------------

def _at_credentials(app, outbox):
    client = app.test_client()
    url = to_code_page_by_sms(client)
    assert post(client, url, code=outbox.last_code(VOICE)).status_code == 302
    token = csrf_of(client.get(url).text)
    return client, url, token


def _race(posts):
    barrier = threading.Barrier(len(posts))

    def one(call):
        barrier.wait(10)
        return call()

    with ThreadPoolExecutor(len(posts)) as pool:
        return list(pool.map(one, posts))


def test_two_flows_for_one_line_leave_one_account(app, directory_app, outbox):
    first, url_a, token_a = _at_credentials(app, outbox)
    second, url_b, token_b = _at_credentials(app, outbox)
    done = first.post(url_a, data={"csrf_token": token_a, **credentials()})
    assert "Registrazione completata" in done.text
    loser = second.post(url_b, data={"csrf_token": token_b, **credentials(password="Altra-Password-77")})
    assert loser.status_code == 409 and "Questa linea risulta già registrata" in loser.text
    assert accounts(app, VOICE) == 1
    assert second.get(url_b).status_code == 410


def test_two_flows_for_one_line_completing_at_once(app, directory_app, outbox):
    flows = [_at_credentials(app, outbox) for _ in range(2)]
    responses = _race([lambda c=c, u=u, t=t: c.post(u, data={"csrf_token": t, **credentials()})
                       for c, u, t in flows])
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 409], statuses
    assert sum("Registrazione completata" in r.text for r in responses) == 1
    assert any("Questa linea risulta già registrata" in r.text for r in responses)
    assert accounts(app, VOICE) == 1


def test_double_submit_of_the_last_step(app, directory_app, outbox):
    client, url, token = _at_credentials(app, outbox)
    twin = app.test_client()
    cookie = app.config["SESSION_COOKIE_NAME"]
    twin.set_cookie(cookie, client.get_cookie(cookie).value)  # the same browser, two tabs
    responses = _race([lambda c=c: c.post(url, data={"csrf_token": token, **credentials()})
                       for c in (client, twin)])
    assert sum("Registrazione completata" in r.text for r in responses) == 1
    loser = next(r for r in responses if "Registrazione completata" not in r.text)
    assert loser.status_code in (409, 410) and loser.status_code != 500
    assert accounts(app, VOICE) == 1


# audit -----------------------------------------------------------------------------------------------------

def _events(app):
    from idp import audit
    from idp.models import AuditEvent
    with app.app_context():
        return [audit.as_dict(r) for r in db.session.query(AuditEvent).order_by(AuditEvent.id)]


def test_audit_records_the_journey_without_secrets(app, directory_app, outbox):
    client = app.test_client()
    url = to_code_page_by_sms(client)
    code = outbox.last_code(VOICE)
    post(client, url, code="000000")
    post(client, url, code=code)
    post(client, url, **credentials())
    refused = app.test_client()
    to_code_page_by_sms(refused, UNKNOWN)
    events = _events(app)
    kinds = [e["type"] for e in events]
    for kind in ("registration.started", "code.sent", "code.wrong", "registration.completed",
                 "registration.refused"):
        assert kind in kinds, kinds
    completed = next(e for e in events if e["type"] == "registration.completed")
    assert completed["masked_line"] == "+39 393 ***0101" and completed["account_id"]
    text = repr([(e["details"], e["masked_line"]) for e in events])
    assert code not in text and NEW_PASSWORD not in text and VOICE not in text and UNKNOWN not in text
