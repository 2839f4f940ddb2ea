"""Races (issue 9 point 2): 20 concurrent requests each, through a live threaded server, released together.

Code redemption and refresh rotation are in tests/test_races.py, the lockout and OTP attempt counters in
tests/test_login.py and tests/test_otp.py; signing-key activation has its own test. Here:

* 20 browsers finishing employee registration for the same line at once → exactly one account;
* 20 "Associa SIM" flows of one account (one SIM so far) finishing at once → the account ends with two;
* the same final step of one flow sent 20 times at once (a double click, or a retrying client) → exactly one
  success and no duplicate row, for a registration and for a password recovery;
* one correct one-time code sent 20 times at once → accepted exactly once.

The server's connection pool is sized for the concurrency (one connection per concurrent request), as in the
50-guess test of tests/test_login.py. Every person comes from 127.0.0.1, so the per-address and
per-destination hourly limits are raised: they are not what these tests are about.
"""
from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from idp import passwords
from idp.extensions import db
from idp.models import Account, AccountLine, AuditEvent, Line

from .conftest import DATABASE_URL, LiveServer, free_port
from .faultproxy import Browser, csrf_token
from .helpers import LINE, PASSWORD, Factory, Outbox

pytestmark = pytest.mark.live

RACERS = 20
NUMBER = "+393935550101"
CREDENTIALS = {"password": "Girasole-Lento-73", "confirm": "Girasole-Lento-73", "question": "first_pet",
               "answer": "Fido il bassotto"}


@pytest.fixture
def server(make_app):
    pool = {"pool_size": RACERS + 10, "max_overflow": 0, "pool_timeout": 60}
    pool.update({"connect_args": {"connect_timeout": 5}} if DATABASE_URL else {"connect_args": {"timeout": 30}})
    port = free_port()
    app = make_app(ISSUER=f"http://127.0.0.1:{port}", SQLALCHEMY_ENGINE_OPTIONS=pool,
                   OTP_SENDS_PER_HOUR_DESTINATION=1000, OTP_TRIES_PER_HOUR_DESTINATION=1000,
                   OTP_SENDS_PER_HOUR_ADDRESS=1000, OTP_TRIES_PER_HOUR_ADDRESS=1000,
                   LOCKOUT_THRESHOLD_ADDRESS=1000, RECOVERY_ANSWERS_PER_HOUR_ADDRESS=1000)
    live = LiveServer(app, port).start()
    live.factory, live.outbox = Factory(app), Outbox(app)
    live.factory.customer("C0001")
    yield live
    live.stop()


def race(calls) -> list:
    """Run every call in its own thread, all released at the same instant."""
    barrier = threading.Barrier(len(calls))

    def one(call):
        barrier.wait(10)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


def twins(browser: Browser, count: int) -> list[Browser]:
    """``count`` tabs of one browser: separate connections, the same cookies."""
    tabs = []
    for _ in range(count):
        tab = Browser(browser.base)
        tab.http.cookies.update(browser.http.cookies)
        tabs.append(tab)
    return tabs


def add_line(server, number: str, sim_type: str = "voice") -> str:
    customer_id = server.factory.customer("C0001")
    with server.app.app_context():
        db.session.add(Line(msisdn=number, customer_id=customer_id, sim_type=sim_type, status="active"))
        db.session.commit()
    return number


def count(server, query) -> int:
    with server.app.app_context():
        value = db.session.scalar(query)
        db.session.remove()
        return value


def events(server, kind: str) -> int:
    return count(server, select(func.count()).select_from(AuditEvent).where(AuditEvent.type == kind,
                                                                            AuditEvent.outcome == "success"))


def registration_at(server, number: str, until: str = "credentials") -> tuple[Browser, str]:
    """A browser whose employee registration (by SMS) for ``number`` has reached ``until`` ("code" or
    "credentials")."""
    browser = Browser(server.url)
    started = browser.submit("/flows/registration_employee/", way="sms")
    assert started.status_code == 302, started.text
    url = started.headers["Location"]
    assert browser.submit(url, line=number).status_code == 302
    if until == "credentials":
        assert browser.submit(url, code=server.outbox.last_code(number)).status_code == 302
    return browser, url


def _statuses(responses) -> list[int]:
    return sorted(r.status_code for r in responses)


# 1. the same line registered by twenty people at once -------------------------------------------------------

def test_twenty_registrations_of_one_line_at_once_make_one_account(server):
    add_line(server, NUMBER)
    flows = [registration_at(server, NUMBER) for _ in range(RACERS)]  # each browser has its own valid code
    posts = [(browser, url, csrf_token(browser.get(url).text)) for browser, url in flows]
    responses = race([lambda b=b, u=u, t=t: b.post(u, {"csrf_token": t, **CREDENTIALS}) for b, u, t in posts])
    winners = [r for r in responses if r.status_code == 200 and "Registrazione completata" in r.text]
    losers = [r for r in responses if r not in winners]
    assert len(winners) == 1, _statuses(responses)
    assert all(r.status_code == 409 and "Questa linea risulta già registrata" in r.text for r in losers), \
        _statuses(responses)
    assert count(server, select(func.count()).select_from(Account).where(Account.username == NUMBER)) == 1
    assert count(server, select(func.count()).select_from(AccountLine)) == 1
    assert events(server, "registration.completed") == 1


# 2. twenty SIMs for one account at once ---------------------------------------------------------------------

def test_twenty_sim_associations_at_once_leave_exactly_two(server):
    account_id = server.factory.account()
    numbers = [add_line(server, f"+39347{n:07d}") for n in range(RACERS)]
    browser = Browser(server.url)
    browser.log_in(server.factory.rp(), LINE, PASSWORD)
    token = csrf_token(browser.get("/account").text)
    flows = []
    for number in numbers:
        started = browser.post("/flows/sim_association/start", {"csrf_token": token})
        assert started.status_code == 302, started.text
        url = started.headers["Location"]
        chosen = browser.post(url, {"csrf_token": token, "line": number, "sim_type": "voice"})
        assert chosen.status_code == 302, chosen.text
        flows.append((url, server.outbox.last_code(number)))
    tabs = twins(browser, RACERS)
    responses = race([lambda tab=tab, u=u, c=c: tab.post(u, {"csrf_token": token, "code": c})
                      for tab, (u, c) in zip(tabs, flows)])
    statuses = _statuses(responses)
    assert statuses.count(302) == 1 and statuses.count(409) == RACERS - 1, statuses
    assert all("il massimo consentito" in r.text for r in responses if r.status_code == 409)
    with server.app.app_context():
        found = list(db.session.scalars(select(AccountLine.slot).where(AccountLine.account_id == account_id)))
        db.session.remove()
    assert sorted(found) == [1, 2]
    assert count(server, select(func.count()).select_from(AccountLine)) == 2
    assert events(server, "sim.associated") == 1


# 3. one final step sent twenty times ------------------------------------------------------------------------

def test_the_last_step_of_a_registration_sent_twenty_times_succeeds_once(server):
    add_line(server, NUMBER)
    browser, url = registration_at(server, NUMBER)
    token = csrf_token(browser.get(url).text)
    responses = race([lambda tab=tab: tab.post(url, {"csrf_token": token, **CREDENTIALS})
                      for tab in twins(browser, RACERS)])
    winners = [r for r in responses if r.status_code == 200 and "Registrazione completata" in r.text]
    assert len(winners) == 1, _statuses(responses)
    assert {r.status_code for r in responses if r not in winners} <= {409, 410}, _statuses(responses)
    assert count(server, select(func.count()).select_from(Account)) == 1
    assert count(server, select(func.count()).select_from(AccountLine)) == 1
    assert events(server, "registration.completed") == 1


def test_the_last_step_of_a_recovery_sent_twenty_times_succeeds_once(server):
    account_id = server.factory.account()
    with server.app.app_context():
        account = db.session.get(Account, account_id)
        account.security_question = "first_pet"
        account.security_answer_hash = passwords.hash_secret(passwords.normalise_answer("Fido"))
        db.session.commit()
    browser = Browser(server.url)
    started = browser.submit("/flows/recovery/", username=LINE)
    url = started.headers["Location"]
    assert browser.submit(url, answer="Fido").status_code == 302
    assert browser.submit(url, code=server.outbox.last_code(LINE)).status_code == 302
    token = csrf_token(browser.get(url).text)
    sent_before = len(server.outbox.messages(LINE))
    new = {"password": "Lampione-Verde-72", "confirm": "Lampione-Verde-72", "question": "first_concert",
           "answer": "Vasco Rossi"}
    responses = race([lambda tab=tab: tab.post(url, {"csrf_token": token, **new})
                      for tab in twins(browser, RACERS)])
    winners = [r for r in responses if r.status_code == 200 and "Password aggiornata" in r.text]
    assert len(winners) == 1, _statuses(responses)
    assert {r.status_code for r in responses if r not in winners} == {410}, _statuses(responses)
    assert events(server, "password.changed") == 1
    notices = server.outbox.messages(LINE)[: len(server.outbox.messages(LINE)) - sent_before]
    assert len(notices) == 1 and "password" in notices[0]["text"].lower(), notices  # one notice, not twenty
    with server.app.app_context():
        assert passwords.verify_secret(db.session.get(Account, account_id).password_hash, new["password"])
        db.session.remove()


# 4. one correct code sent twenty times ----------------------------------------------------------------------

def test_one_code_sent_twenty_times_at_once_is_accepted_once(server):
    add_line(server, NUMBER)
    browser, url = registration_at(server, NUMBER, until="code")
    code = server.outbox.last_code(NUMBER)
    token = csrf_token(browser.get(url).text)
    responses = race([lambda tab=tab: tab.post(url, {"csrf_token": token, "code": code})
                      for tab in twins(browser, RACERS)])
    accepted = [r for r in responses if r.status_code == 302 and r.headers["Location"] == url]
    assert len(accepted) == 1, [(r.status_code, r.headers.get("Location")) for r in responses]
    assert all(r.status_code != 500 for r in responses)
    # the one that was accepted really moved the flow on: the registration completes
    page = browser.get(url)
    assert page.status_code == 200 and 'name="confirm"' in page.text, re.sub(r"\s+", " ", page.text)[:400]
    done = browser.post(url, {"csrf_token": token, **CREDENTIALS})
    assert "Registrazione completata" in done.text
    assert count(server, select(func.count()).select_from(Account)) == 1


def test_one_sms_code_for_a_sim_sent_twenty_times_at_once_is_accepted_once(server):
    account_id = server.factory.account()
    number = add_line(server, "+393470000001")
    browser = Browser(server.url)
    browser.log_in(server.factory.rp(), LINE, PASSWORD)
    token = csrf_token(browser.get("/account").text)
    url = browser.post("/flows/sim_association/start", {"csrf_token": token}).headers["Location"]
    assert browser.post(url, {"csrf_token": token, "line": number, "sim_type": "voice"}).status_code == 302
    code = server.outbox.last_code(number)
    responses = race([lambda tab=tab: tab.post(url, {"csrf_token": token, "code": code})
                      for tab in twins(browser, RACERS)])
    accepted = [r for r in responses if r.status_code == 302 and r.headers["Location"] == "/account"]
    assert len(accepted) == 1, [(r.status_code, r.headers.get("Location")) for r in responses]
    # the others were compared against a code already used ("non corretto o scaduto"), or found the flow done
    assert all(r.status_code in (200, 410) for r in responses if r not in accepted)
    assert all("Codice non corretto o scaduto" in r.text for r in responses if r.status_code == 200)
    with server.app.app_context():
        found = list(db.session.scalars(select(AccountLine.slot).where(AccountLine.account_id == account_id)))
        db.session.remove()
    assert sorted(found) == [1, 2]
    assert events(server, "sim.associated") == 1
