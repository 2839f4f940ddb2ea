"""Associa SIM and the account page (SPEC §3 point 9; issue 3 point 6): every edge of the flow, and the races.

The browser is Flask's test client logged in through the real pages (``Journey``); SMS codes are read from the
outbox. The race tests run two associations at once — in threads against the configured database, and through a
live threaded server — and the account must end with exactly two SIMs every time.
"""
import html
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from flask import g
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from idp import passwords, registration, sessions
from idp.extensions import db
from idp.models import Account, AccountLine, Line
from idp.oauth.scopes import ACR_NETWORK, AMR

from .conftest import free_port
from .helpers import LINE, PASSWORD, Factory, Journey, Outbox, csrf_of

VOICE = "+393937654321"   # a free voice line of the account's customer
DATA = "+393401112233"    # a free data line of the account's customer
DATA_PIN = "4321"
MASKED_LINE = "+39 393 ***4567"


# helpers ---------------------------------------------------------------------------------------------------------

def add_line(app, number, customer_code="C0001", sim_type="voice", status="active", pin=None):
    customer_id = Factory(app).customer(customer_code, domain=customer_code.lower() + ".example")
    with app.app_context():
        db.session.add(Line(msisdn=number, customer_id=customer_id, sim_type=sim_type, status=status,
                            sim_pin_hash=passwords.hash_secret(pin) if pin else None))
        db.session.commit()


def login(client, factory):
    Journey(client, factory.rp()).login_and_get_code()
    return client


def lines_of(app, account_id):
    with app.app_context():
        return [link.line.msisdn for link in db.session.scalars(
            select(AccountLine).where(AccountLine.account_id == account_id).order_by(AccountLine.slot))]


def start(client):
    page = client.get("/account")
    assert page.status_code == 200, page.text
    response = client.post("/flows/sim_association/start", data={"csrf_token": csrf_of(page.text)})
    assert response.status_code == 302, response.text
    assert response.headers["Location"].startswith("/flows/sim_association/")
    return response.headers["Location"]


def submit(client, url, **fields):
    page = client.get(url)
    assert page.status_code == 200, page.text
    return client.post(url, data={"csrf_token": csrf_of(page.text), **fields})


def choose_line(client, url, line, sim_type="voice"):
    response = submit(client, url, line=line, sim_type=sim_type)
    assert response.status_code == 302 and response.headers["Location"] == url, response.text
    return client.get(url)


def text_of(response) -> str:
    return re.sub(r"\s+", " ", html.unescape(response.text))


@pytest.fixture
def account(app, factory):
    account_id = factory.account()
    add_line(app, VOICE)
    add_line(app, DATA, sim_type="data", pin=DATA_PIN)
    return account_id


@pytest.fixture
def browser(client, factory, account):
    return login(client, factory)


# the account page ------------------------------------------------------------------------------------------------

def test_account_page_needs_a_session(client, account):
    response = client.get("/account")
    assert response.status_code == 401
    assert "Accedi per continuare" in response.text and "dal portale" in response.text


def test_account_page_lists_sims_masked_with_the_registered_line_marked(app, browser, account):
    with app.app_context():
        registration.associate_sim(account, VOICE)
    page = browser.get("/account")
    assert page.status_code == 200
    assert MASKED_LINE in page.text and "+39 393 ***4321" in page.text
    assert LINE not in page.text and VOICE not in page.text, "numbers are shown masked"
    assert "linea registrata" in page.text
    assert 'id="remove-slot-2"' in page.text and 'id="remove-slot-1"' not in page.text
    assert 'id="associate-sim"' not in page.text and 'id="sim-limit"' in page.text


def test_account_page_offers_associa_sim_below_two(browser):
    assert 'href="/account"' in browser.get("/").text, "the home page links to the account page"
    page = browser.get("/account")
    assert 'id="associate-sim"' in page.text and "Associa SIM" in page.text
    assert 'id="sim-limit"' not in page.text


# voice SIM: SMS code ---------------------------------------------------------------------------------------------

def test_voice_sim_is_associated_with_the_sms_code(app, browser, account, outbox):
    url = start(browser)
    page = choose_line(browser, url, "393 765 4321")
    assert "Se la linea +39 393 ***4321 è idonea riceverai un SMS" in text_of(page)
    sms = outbox.last(VOICE)
    assert sms["channel"] == "sms" and "associare una SIM" in sms["text"]
    wrong = submit(browser, url, code="000000" if outbox.last_code(VOICE) != "000000" else "111111")
    assert wrong.status_code == 200 and "Codice non corretto" in wrong.text
    done = submit(browser, url, code=outbox.last_code(VOICE))
    assert done.status_code == 302 and done.headers["Location"] == "/account"
    assert lines_of(app, account) == [LINE, VOICE]
    page = browser.get("/account")
    assert "associata al tuo account" in page.text and 'id="sim-limit"' in page.text
    assert browser.get(url).status_code == 410, "the finished flow cannot be replayed"


@pytest.mark.parametrize("case", ["other customer", "suspended", "ceased", "associated elsewhere", "unknown",
                                  "data SIM chosen as voice", "own registered line"])
def test_an_ineligible_voice_line_walks_the_same_path_and_gets_no_sms(app, factory, client, account, outbox, case):
    number = {"other customer": "+393331234000", "suspended": "+393331234001", "ceased": "+393331234002",
              "associated elsewhere": "+393331234003", "unknown": "+393339999999",
              "data SIM chosen as voice": DATA, "own registered line": LINE}[case]
    if case == "other customer":
        add_line(app, number, customer_code="C0002")
    elif case in ("suspended", "ceased"):
        add_line(app, number, status=case)
    elif case == "associated elsewhere":
        factory.account(line=number, customer_code="C0001", email="luigi@acme.example")
    browser = login(client, factory)
    url = start(browser)
    page = choose_line(browser, url, number)
    assert "è idonea riceverai un SMS" in page.text
    assert [m for m in outbox.messages() if m["channel"] == "sms"] == []
    for _ in range(2):
        refused = submit(browser, url, code="123456")
        assert refused.status_code == 200 and "Codice non corretto" in refused.text
    assert len(lines_of(app, account)) == 1


def test_the_eligible_and_the_ineligible_page_read_the_same(app, factory, client, account):
    add_line(app, "+393331234000", customer_code="C0002")
    browser = login(client, factory)
    pages = []
    for number in (VOICE, "+393331234000"):
        url = start(browser)
        page = text_of(choose_line(browser, url, number))
        pages.append(re.sub(r"\+39 \d{3} \*\*\*\d{4}|value=\"[^\"]+\"|/flows/sim_association/[\w-]+", "X", page))
    assert pages[0] == pages[1]


def test_wrong_codes_end_the_flow(make_app):
    app = make_app(OTP_MAX_ATTEMPTS=3)
    factory, client, outbox = Factory(app), app.test_client(), Outbox(app)
    account_id = factory.account()
    add_line(app, VOICE)
    browser = login(client, factory)
    url = start(browser)
    choose_line(browser, url, VOICE)
    right = outbox.last_code(VOICE)
    wrong = "000000" if right != "000000" else "111111"
    assert "Codice non corretto" in submit(browser, url, code=wrong).text
    assert "Codice non corretto" in submit(browser, url, code=wrong).text
    ended = submit(browser, url, code=wrong)
    assert ended.status_code == 302 and ended.headers["Location"] == "/account"
    assert "troppe volte" in browser.get("/account").text
    assert browser.get(url).status_code == 410
    assert lines_of(app, account_id) == [LINE]


def test_resend_issues_a_new_code_and_the_old_one_dies(app, browser, account, outbox):
    url = start(browser)
    page = choose_line(browser, url, VOICE)
    first = outbox.last_code(VOICE)
    resent = browser.post(url + "/resend", data={"csrf_token": csrf_of(page.text)})
    assert resent.status_code == 302
    assert "riceverai un nuovo SMS" in browser.get(url).text
    assert len(outbox.messages(VOICE)) == 2
    second = outbox.last_code(VOICE)
    if second != first:
        assert "Codice non corretto" in submit(browser, url, code=first).text
    assert submit(browser, url, code=second).status_code == 302
    assert lines_of(app, account) == [LINE, VOICE]


def test_send_limits_apply_to_eligible_and_ineligible_lines_alike(make_app):
    app = make_app(OTP_SENDS_PER_HOUR_DESTINATION=1)
    factory, client = Factory(app), app.test_client()
    factory.account()
    add_line(app, VOICE)
    add_line(app, "+393331234000", customer_code="C0002")
    browser = login(client, factory)
    for number in (VOICE, "+393331234000"):
        choose_line(browser, start(browser), number)
        url = start(browser)
        refused = submit(browser, url, line=number, sim_type="voice")
        assert refused.status_code == 200 and "troppe richieste" in refused.text
        assert 'name="line"' in refused.text, "the flow stays on the line step"


def test_a_failed_sms_is_told_plainly_and_the_flow_resumes(make_app):
    app = make_app(SMS_SENDER="http", SMS_GATEWAY_URL=f"http://127.0.0.1:{free_port()}/sms",
                   SMS_GATEWAY_RETRIES=0, SMS_GATEWAY_TIMEOUT=1)
    factory, client, outbox = Factory(app), app.test_client(), Outbox(app)
    account_id = factory.account()
    add_line(app, VOICE)
    browser = login(client, factory)
    url = start(browser)
    page = choose_line(browser, url, VOICE)
    assert "Non è stato possibile inviare l'SMS" in text_of(page)
    app.config["SMS_SENDER"] = "outbox"  # the gateway is back
    browser.post(url + "/resend", data={"csrf_token": csrf_of(page.text)})
    assert submit(browser, url, code=outbox.last_code(VOICE)).status_code == 302
    assert lines_of(app, account_id) == [LINE, VOICE]


# data SIM: its PIN -----------------------------------------------------------------------------------------------

def test_data_sim_is_associated_with_its_pin(app, browser, account, outbox):
    url = start(browser)
    page = choose_line(browser, url, "0039 340 111 2233", sim_type="data")
    assert "PIN della SIM" in page.text and "+39 340 ***2233" in page.text
    wrong = submit(browser, url, pin="9999")
    assert wrong.status_code == 200 and "PIN non corretto. Tentativi rimasti: 2." in wrong.text
    done = submit(browser, url, pin=DATA_PIN)
    assert done.status_code == 302 and done.headers["Location"] == "/account"
    assert lines_of(app, account) == [LINE, DATA]
    assert outbox.messages() == [], "no SMS on the data path"


@pytest.mark.parametrize("case", ["other customer", "suspended", "associated elsewhere", "unknown",
                                  "voice SIM chosen as data"])
def test_an_ineligible_data_line_hears_pin_non_corretto_even_with_the_right_pin(
        app, factory, client, account, case):
    number = {"other customer": "+393331234000", "suspended": "+393331234001",
              "associated elsewhere": "+393331234003", "unknown": "+393339999999",
              "voice SIM chosen as data": VOICE}[case]
    if case == "other customer":
        add_line(app, number, customer_code="C0002", sim_type="data", pin=DATA_PIN)
    elif case == "suspended":
        add_line(app, number, status="suspended", sim_type="data", pin=DATA_PIN)
    elif case == "associated elsewhere":
        add_line(app, number, sim_type="data", pin=DATA_PIN)
        other = factory.account(line="+393331234004", email="luigi@acme.example")
        with app.app_context():
            registration.associate_sim(other, number)
    browser = login(client, factory)
    url = start(browser)
    choose_line(browser, url, number, sim_type="data")
    refused = submit(browser, url, pin=DATA_PIN)
    assert refused.status_code == 200 and "PIN non corretto. Tentativi rimasti: 2." in refused.text
    assert lines_of(app, account) == [LINE]


def test_wrong_pins_end_the_flow(app, browser, account):
    url = start(browser)
    choose_line(browser, url, DATA, sim_type="data")
    assert "Tentativi rimasti: 2" in submit(browser, url, pin="0000").text
    assert "Tentativi rimasti: 1" in submit(browser, url, pin="0000").text
    ended = submit(browser, url, pin="0000")
    assert ended.status_code == 302 and "troppe volte" in browser.get("/account").text
    assert browser.get(url).status_code == 410
    assert lines_of(app, account) == [LINE]


def test_pin_attempts_per_line_per_day_count_before_checking(make_app):
    app = make_app(SIM_PIN_MAX_ATTEMPTS=3, SIM_PIN_ATTEMPTS_PER_LINE_PER_DAY=4)
    factory, client = Factory(app), app.test_client()
    account_id = factory.account()
    add_line(app, DATA, sim_type="data", pin=DATA_PIN)
    browser = login(client, factory)
    url = start(browser)
    choose_line(browser, url, DATA, sim_type="data")
    for _ in range(3):
        submit(browser, url, pin="0000")
    url = start(browser)  # a new flow: its own 3 attempts, but the line has 1 left today
    choose_line(browser, url, DATA, sim_type="data")
    assert "PIN non corretto" in submit(browser, url, pin="0000").text
    refused = submit(browser, url, pin=DATA_PIN)
    assert refused.status_code == 302 and "riprova domani" in browser.get("/account").text
    assert lines_of(app, account_id) == [LINE], "the right PIN was refused: the limit is checked first"


# a third SIM -----------------------------------------------------------------------------------------------------

def test_a_third_sim_is_refused_by_the_page_and_the_domain(app, browser, account):
    page = browser.get("/account")
    token = csrf_of(page.text)
    with app.app_context():
        registration.associate_sim(account, VOICE)
        with pytest.raises(registration.SimLimitReached):
            registration.associate_sim(account, DATA)
    refused = browser.post("/flows/sim_association/start", data={"csrf_token": token})
    assert refused.status_code == 409 and "non è possibile associarne una terza" in refused.text
    assert lines_of(app, account) == [LINE, VOICE]


def test_a_third_sim_is_refused_at_the_last_step_too(app, browser, account):
    url = start(browser)
    choose_line(browser, url, DATA, sim_type="data")
    with app.app_context():
        registration.associate_sim(account, VOICE)  # another tab finished first
    refused = submit(browser, url, pin=DATA_PIN)
    assert refused.status_code == 409 and "non è possibile associarne una terza" in refused.text
    assert lines_of(app, account) == [LINE, VOICE]


# removal ---------------------------------------------------------------------------------------------------------

def test_a_second_sim_can_be_removed_but_not_the_registered_line(app, browser, account):
    with app.app_context():
        registration.associate_sim(account, VOICE)
    page = browser.get("/account")
    token = csrf_of(page.text)
    refused = browser.post("/account/sims/remove", data={"csrf_token": token, "slot": "1"})
    assert refused.status_code == 302 and "non può essere rimossa" in browser.get("/account").text
    assert browser.post("/account/sims/remove", data={"slot": "2"}).status_code == 400, "CSRF"
    assert lines_of(app, account) == [LINE, VOICE]
    removed = browser.post("/account/sims/remove", data={"csrf_token": token, "slot": "2"})
    assert removed.status_code == 302 and "SIM rimossa" in browser.get("/account").text
    assert lines_of(app, account) == [LINE]
    browser.post("/account/sims/remove", data={"csrf_token": token, "slot": "2"})
    assert "non è associata" in browser.get("/account").text
    with app.app_context():
        with pytest.raises(registration.LineTaken):
            registration.remove_sim(account, LINE)


# sessions and CSRF -----------------------------------------------------------------------------------------------

def test_without_a_session_nothing_works(app, client, factory, account):
    journey = Journey(client, factory.rp())
    token = csrf_of(client.get(journey.authorize().headers["Location"]).text)
    assert client.post("/flows/sim_association/start", data={"csrf_token": token}).status_code == 401
    assert client.post("/account/sims/remove", data={"csrf_token": token, "slot": "2"}).status_code == 401
    browser = login(app.test_client(), factory)
    url = start(browser)
    response = client.get(url)
    assert response.status_code == 401 and "Accedi per continuare" in response.text


def test_another_session_cannot_continue_the_flow(app, client, factory, account, outbox):
    owner = login(client, factory)
    url = start(owner)
    choose_line(owner, url, VOICE)
    same_account_other_browser = login(app.test_client(), factory)
    assert same_account_other_browser.get(url).status_code == 410
    token = csrf_of(same_account_other_browser.get("/account").text)
    stolen = same_account_other_browser.post(url, data={"csrf_token": token, "code": outbox.last_code(VOICE)})
    assert stolen.status_code == 410
    other_account = app.test_client()
    factory.account(line="+393331234004", email="luigi@acme.example")
    Journey(other_account, factory.rp()).login_and_get_code(username="+393331234004")
    assert other_account.get(url).status_code == 410
    assert lines_of(app, account) == [LINE]
    assert submit(owner, url, code=outbox.last_code(VOICE)).status_code == 302, "the owner still can"
    assert lines_of(app, account) == [LINE, VOICE]


def test_every_form_needs_its_csrf_token(browser, outbox):
    assert browser.post("/flows/sim_association/start").status_code == 400
    url = start(browser)
    assert browser.post(url, data={"line": VOICE, "sim_type": "voice"}).status_code == 400
    choose_line(browser, url, VOICE)
    assert browser.post(url, data={"code": outbox.last_code(VOICE)}).status_code == 400
    assert browser.post(url + "/resend").status_code == 400


def test_unknown_flow_is_expired_not_an_error(browser):
    assert browser.get("/flows/sim_association/" + "x" * 32).status_code == 410
    assert browser.get("/flows/sim_association/bad!").status_code in (404, 410)


def test_autologin_alone_may_look_but_not_change_the_sims(app, client, account):
    with app.test_request_context():
        sessions.start(account, ACR_NETWORK, AMR[ACR_NETWORK])
        cookie = g.sso_set_cookie
    client.set_cookie(app.config["SSO_COOKIE_NAME"], cookie)
    page = client.get("/account")
    assert page.status_code == 200 and MASKED_LINE in page.text
    assert 'id="associate-sim"' not in page.text and "accedi con la linea e la password" in page.text
    token = csrf_of(page.text)
    assert client.post("/flows/sim_association/start", data={"csrf_token": token}).status_code == 403
    assert client.post("/account/sims/remove", data={"csrf_token": token, "slot": "2"}).status_code == 403


# races -----------------------------------------------------------------------------------------------------------

ROUNDS = 20


def _race(app, calls):
    """Run each call in its own thread and app context (own database session), released together."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        with app.app_context():
            barrier.wait(10)
            try:
                call()
                return "ok"
            except registration.SimLimitReached:
                return "limit"
            except registration.LineTaken:
                return "taken"
            finally:
                db.session.remove()

    with ThreadPoolExecutor(len(calls)) as pool:
        return sorted(pool.map(run, calls))


def test_a_second_and_a_third_line_at_once_leave_exactly_two(app, factory):
    for round_ in range(ROUNDS):
        line = f"+39393{round_:07d}"
        account_id = factory.account(line=line, email=None)
        second, third = f"+39340{round_:07d}", f"+39347{round_:07d}"
        add_line(app, second)
        add_line(app, third)
        outcomes = _race(app, [lambda: registration.associate_sim(account_id, second),
                               lambda: registration.associate_sim(account_id, third)])
        assert outcomes == ["limit", "ok"], (round_, outcomes)
        found = lines_of(app, account_id)
        assert len(found) == 2 and found[0] == line and found[1] in (second, third), (round_, found)


def test_one_line_for_two_accounts_at_once_goes_to_one(app, factory):
    for round_ in range(ROUNDS):
        first = factory.account(line=f"+39393{round_:07d}", email=None)
        other = factory.account(line=f"+39347{round_:07d}", email=None)
        shared = f"+39340{round_:07d}"
        add_line(app, shared)
        outcomes = _race(app, [lambda: registration.associate_sim(first, shared),
                               lambda: registration.associate_sim(other, shared)])
        assert outcomes == ["ok", "taken"], (round_, outcomes)
        assert (shared in lines_of(app, first)) != (shared in lines_of(app, other))


def test_two_tabs_finishing_at_once_through_a_live_server(live_server):
    app, factory = live_server.app, live_server.factory
    outbox = Outbox(app)
    account_id = factory.account()
    rp = factory.rp()
    first = requests.Session()
    params = Journey(None, rp).params()
    login_url = live_server.url + first.get(live_server.url + "/authorize", params=params,
                                            allow_redirects=False, timeout=10).headers["Location"]
    token = csrf_of(first.get(login_url, timeout=10).text)
    logged = first.post(login_url, data={"csrf_token": token, "username": LINE, "password": PASSWORD},
                        allow_redirects=False, timeout=10)
    assert logged.status_code == 302
    second = requests.Session()
    second.cookies.update(first.cookies)
    token = csrf_of(first.get(live_server.url + "/account", timeout=10).text)
    for round_ in range(10):
        numbers = (f"+39340{round_:07d}", f"+39347{round_:07d}")
        flows = []
        for number in numbers:
            add_line(app, number)
            url = first.post(live_server.url + "/flows/sim_association/start", data={"csrf_token": token},
                             allow_redirects=False, timeout=10).headers["Location"]
            answer = first.post(live_server.url + url, allow_redirects=False, timeout=10,
                                data={"csrf_token": token, "line": number, "sim_type": "voice"})
            assert answer.status_code == 302, answer.text
            flows.append((url, outbox.last_code(number)))
        barrier = threading.Barrier(2)

        def finish(args):
            session, (url, code) = args
            barrier.wait(10)
            return session.post(live_server.url + url, data={"csrf_token": token, "code": code},
                                allow_redirects=False, timeout=30).status_code

        with ThreadPoolExecutor(2) as pool:
            statuses = sorted(pool.map(finish, zip((first, second), flows)))
        assert statuses == [302, 409], (round_, statuses)
        found = lines_of(app, account_id)
        assert len(found) == 2 and found[1] in numbers, (round_, found)
        with app.app_context():
            registration.remove_sim(account_id, found[1])


# the database itself ---------------------------------------------------------------------------------------------

def test_the_database_refuses_a_third_slot_and_a_second_owner(app, factory, account):
    other = factory.account(line="+393331234004", email="luigi@acme.example")
    with app.app_context():
        voice_id = db.session.scalar(select(Line.id).where(Line.msisdn == VOICE))
        customer_id = db.session.get(Account, account).customer_id
        attempts = [
            lambda: AccountLine(account_id=account, line_id=voice_id, slot=3),  # slot 3
            lambda: AccountLine(account_id=account, line_id=voice_id, slot=1),  # slot 1 taken
            lambda: AccountLine(account_id=other, line_id=db.session.scalar(
                select(Line.id).where(Line.msisdn == LINE)), slot=2),  # the line belongs to another account
            lambda: Account(username=LINE, customer_id=customer_id, password_hash="x"),  # a second account
        ]
        for make in attempts:
            db.session.add(make())
            with pytest.raises(IntegrityError):
                db.session.commit()
            db.session.rollback()
        db.session.add(AccountLine(account_id=account, line_id=voice_id, slot=2))
        db.session.commit()
        db.session.add(AccountLine(account_id=other, line_id=voice_id, slot=2))
        with pytest.raises(IntegrityError):
            db.session.commit()
        db.session.rollback()
        assert registration.sim_count(account) == 2
