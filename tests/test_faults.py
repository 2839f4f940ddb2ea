"""Faults (issue 9 point 1): a live IdP keeps its word when PostgreSQL, Redis, the SMTP server or the SMS
gateway fail.

The IdP runs as real gunicorn processes (two workers) on its own PostgreSQL database and a real Redis with a
key prefix of its own, and reaches each dependency through a ``FaultProxy`` (tests/faultproxy.py) that the
tests cut and restore, or stall, or cut at the moment a given statement goes out (``cut_on``). The database
fault needs a network database, so this module always uses PostgreSQL: the suite's server when
``IDP_TEST_DATABASE_URL`` is set, otherwise the machine's PostgreSQL at 127.0.0.1:5432 (as the instances test
does for Redis); the database is created here, migrated with ``flask db upgrade`` and dropped at the end. The
SMTP server and the SMS gateway are the real loopback receivers of tests/receivers.py.

What must hold:

* Redis or PostgreSQL down → the pages answer the Italian 503 page, the OAuth endpoints
  ``temporarily_unavailable`` with 503, the JWKS still answers and the access tokens already issued verify
  against it; when the dependency returns, the same server processes serve logins again (no restart), and what
  was in flight (a login page, an unredeemed code) carries on;
* the SMTP server or the SMS gateway down or hanging → the page answers within the configured time-out ×
  attempts, says the message could not be sent, the flow stays where it was and the resend works once the
  receiver is back; the receiver gets exactly one message per successful send;
* a fault between two steps, right before the final POST, or in the middle of the final POST leaves the
  database consistent (no half-created account, no account without its line, no SIM row without its account,
  at most two SIMs per account) and the person can finish or start again.
"""
from __future__ import annotations

import contextlib
import html
import re
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import func, select

from idp import create_app, passwords
from idp.extensions import db
from idp.models import Account, AccountLine, Line

from .conftest import DATABASE_URL, REDIS_URL, SMS_GATEWAY_TOKEN, base_config
from .faultproxy import (MACHINE_POSTGRES, MACHINE_REDIS, Browser, FaultProxy, GunicornIdP, csrf_token,
                         flask_cli, free_port, host_port, private_database, through, write_keys)
from .helpers import PASSWORD, Factory
from .receivers import SmsGateway, SmtpReceiver

pytestmark = pytest.mark.live

SHARED_REDIS = REDIS_URL or MACHINE_REDIS
SMS_TIMEOUT, SMS_RETRIES, SMTP_TIMEOUT = 1.0, 1, 1.0
SMS_BOUND = SMS_TIMEOUT * (1 + SMS_RETRIES) + 0.2 + 1.5  # time-out × attempts + back-off + margin
SMTP_BOUND = SMTP_TIMEOUT + 1.5
UNAVAILABLE_BOUND = 5.0  # seconds a request may take to answer 503 while a dependency is down
NEW_PASSWORD = "Girasole-Lento-73"
COOLDOWN = 2  # OTP_RESEND_COOLDOWN: short, a restarted flow sends its code soon; a double click stays one
PIN = "4321"


@dataclass
class Rig:
    idp: GunicornIdP
    app: object  # the same database and Redis prefix, reached directly: to set up rows and check them
    pg: FaultProxy
    redis: FaultProxy
    smtp: SmtpReceiver
    smtp_proxy: FaultProxy
    sms: SmsGateway
    sms_proxy: FaultProxy
    factory: Factory
    rp: object

    @property
    def url(self) -> str:
        return self.idp.url

    def browser(self) -> Browser:
        return Browser(self.url)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    with contextlib.ExitStack() as stack:
        database = stack.enter_context(private_database(DATABASE_URL or MACHINE_POSTGRES, "faults"))
        pg = stack.enter_context(FaultProxy(*host_port(database, 5432)))
        redis_proxy = stack.enter_context(FaultProxy(*host_port(SHARED_REDIS, 6379)))
        smtp = stack.enter_context(SmtpReceiver())
        smtp_proxy = stack.enter_context(FaultProxy("127.0.0.1", smtp.port))
        sms = stack.enter_context(SmsGateway(token=SMS_GATEWAY_TOKEN))
        sms_proxy = stack.enter_context(FaultProxy(*host_port(sms.url, 80)))
        keys = write_keys(str(tmp_path_factory.mktemp("fault-keys")))
        prefix = f"idp-test:faults:{uuid.uuid4().hex[:8]}:"
        port = free_port()
        senders = {"EMAIL_SENDER": "smtp", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": smtp_proxy.port,
                   "SMTP_SECURITY": "none", "SMTP_TIMEOUT": SMTP_TIMEOUT,
                   "SMS_SENDER": "http", "SMS_GATEWAY_URL": through(sms.url, sms_proxy),
                   "SMS_GATEWAY_AUTH_HEADER": f"Authorization: Bearer {SMS_GATEWAY_TOKEN}",
                   "SMS_GATEWAY_TIMEOUT": SMS_TIMEOUT, "SMS_GATEWAY_RETRIES": SMS_RETRIES}
        # everyone comes from 127.0.0.1: the per-address limits would count the whole module as one person
        per_address = dict(LOCKOUT_THRESHOLD_ADDRESS=10000, OTP_SENDS_PER_HOUR_ADDRESS=10000,
                           OTP_TRIES_PER_HOUR_ADDRESS=10000, RECOVERY_ANSWERS_PER_HOUR_ADDRESS=10000)
        common = dict(REDIS_PREFIX=prefix, ISSUER=f"http://127.0.0.1:{port}", OTP_RESEND_COOLDOWN=COOLDOWN,
                      SECRET_KEY="faults-" + secrets.token_hex(16), **per_address, **senders)
        settings = base_config(through(database, pg), keys, REDIS_URL=through(SHARED_REDIS, redis_proxy),
                               DEPLOYMENT="test", **common)
        flask_cli(settings, "db", "upgrade")
        idp = stack.enter_context(GunicornIdP(settings, workers=2, port=port))
        app = create_app(base_config(database, keys, REDIS_URL=SHARED_REDIS, **common))

        def _cleanup():
            store = app.extensions["idp.store"]
            leftover = list(store.redis.scan_iter(prefix + "*", count=500))
            if leftover:
                store.redis.delete(*leftover)
            with app.app_context():
                db.session.remove()
                db.engine.dispose()

        stack.callback(_cleanup)
        factory = Factory(app)
        factory.customer("C0001")
        yield Rig(idp, app, pg, redis_proxy, smtp, smtp_proxy, sms, sms_proxy, factory, factory.rp())


@pytest.fixture(autouse=True)
def healthy(rig):
    """Every test starts and ends with every dependency reachable and the server ready."""
    yield
    for proxy in (rig.pg, rig.redis, rig.smtp_proxy, rig.sms_proxy):
        if proxy.mode != "forward":
            proxy.restore()
    rig.sms.answer_ok()
    assert wait_ready(rig), rig.idp.log_tail()


# helpers ----------------------------------------------------------------------------------------------------

def wait_ready(rig, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(rig.url + "/readyz", timeout=5).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


def new_number(prefix: str = "+39393") -> str:
    return prefix + f"{secrets.randbelow(10 ** 7):07d}"


def add_line(rig, number: str, sim_type: str = "voice", pin: str | None = None) -> str:
    customer_id = rig.factory.customer("C0001")
    with rig.app.app_context():
        db.session.add(Line(msisdn=number, customer_id=customer_id, sim_type=sim_type, status="active",
                            sim_pin_hash=passwords.hash_secret(pin) if pin else None))
        db.session.commit()
    return number


def new_account(rig, question: bool = False) -> str:
    line = new_number()
    account_id = rig.factory.account(line=line, email=None)
    if question:
        with rig.app.app_context():
            account = db.session.get(Account, account_id)
            account.security_question = "first_pet"
            account.security_answer_hash = passwords.hash_secret(passwords.normalise_answer("Fido"))
            db.session.commit()
    return line


def text_of(response) -> str:
    return re.sub(r"\s+", " ", html.unescape(response.text))


def assert_unavailable_page(response) -> None:
    assert response.status_code == 503, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("text/html")
    page = text_of(response)
    assert "Servizio temporaneamente non disponibile" in page and "Riprova tra qualche istante" in page
    assert response.headers["Retry-After"] and "Traceback" not in page


def assert_unavailable_json(response) -> None:
    assert response.status_code == 503, (response.status_code, response.text[:300])
    assert response.json()["error"] == "temporarily_unavailable"
    assert response.headers["Retry-After"] and response.headers["Cache-Control"] == "no-store"


def timed(call):
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


def verify_with_jwks(rig, access_token: str) -> dict:
    """What a resource server does: fetch /jwks.json and verify the JWT access token against it (joserfc)."""
    response = requests.get(rig.url + "/jwks.json", timeout=10)
    assert response.status_code == 200
    token = jwt.decode(access_token, KeySet.import_key_set(response.json()), algorithms=["ES256", "RS256"])
    assert token.header["typ"] == "at+jwt"
    jwt.JWTClaimsRegistry(iss={"essential": True, "value": rig.url},
                          exp={"essential": True}).validate(token.claims)
    return token.claims


def consistency(rig) -> dict:
    """The invariants of accounts and SIMs, straight from the database; fails the test on any breach."""
    with rig.app.app_context():
        accounts = db.session.execute(select(Account.id, Account.username)).all()
        links = db.session.execute(select(AccountLine.account_id, AccountLine.slot, Line.msisdn)
                                   .join(Line, Line.id == AccountLine.line_id)).all()
        db.session.remove()
    by_account: dict[int, list] = {}
    for account_id, slot, number in links:
        by_account.setdefault(account_id, []).append((slot, number))
    ids = {account_id for account_id, _ in accounts}
    assert set(by_account) <= ids, "a SIM row without its account"
    for account_id, username in accounts:
        slots = sorted(by_account.get(account_id, []))
        assert slots and slots[0] == (1, username), f"account {username} without its registered line: {slots}"
        assert len(slots) <= 2 and all(slot in (1, 2) for slot, _ in slots), slots
    numbers = [number for _a, _s, number in links]
    assert len(numbers) == len(set(numbers)), "a line on two accounts"
    return {username: [n for _s, n in sorted(by_account[account_id])] for account_id, username in accounts}


def accounts_for(rig, number: str) -> int:
    with rig.app.app_context():
        count = db.session.scalar(select(func.count()).select_from(Account).where(Account.username == number))
        db.session.remove()
        return count


# 1. Redis and PostgreSQL down -------------------------------------------------------------------------------

def test_redis_down_answers_503_tokens_keep_validating_and_service_recovers(rig):
    line = new_account(rig)
    person = rig.browser()
    code, verifier = person.log_in(rig.rp, line, PASSWORD)
    issued = person.tokens(rig.rp, code, verifier).json()
    pending = rig.browser()  # opened the login page before the fault
    login_path = pending.authorize(rig.rp)[0].headers["Location"]
    login_csrf = csrf_token(pending.get(login_path).text)
    late = rig.browser()  # got a code before the fault, redeems it during the fault
    late_code, late_verifier = late.log_in(rig.rp, line, PASSWORD)
    visitor = rig.browser()  # the self-service start pages need no Redis to show their forms
    registration_csrf = csrf_token(visitor.get("/flows/registration_employee/").text)
    recovery_csrf = csrf_token(visitor.get("/flows/recovery/").text)

    rig.redis.cut()
    answers = {
        "authorize": timed(lambda: rig.browser().authorize(rig.rp)[0]),
        "login page": timed(lambda: pending.get(login_path)),
        "login": timed(lambda: pending.post(login_path, {"csrf_token": login_csrf, "username": line,
                                                         "password": PASSWORD})),
        "account": timed(lambda: person.get("/account")),
        "registration": timed(lambda: visitor.post("/flows/registration_employee/",
                                                   {"csrf_token": registration_csrf, "way": "sms"})),
        "recovery": timed(lambda: visitor.post("/flows/recovery/", {"csrf_token": recovery_csrf,
                                                                    "username": line})),
    }
    token_answer = timed(lambda: late.tokens(rig.rp, late_code, late_verifier))
    jwks_answer = requests.get(rig.url + "/jwks.json", timeout=10)
    claims = verify_with_jwks(rig, issued["access_token"])
    ready = requests.get(rig.url + "/readyz", timeout=10)
    alive = requests.get(rig.url + "/healthz", timeout=10)
    rig.redis.restore()

    for name, (response, elapsed) in answers.items():
        assert_unavailable_page(response)
        assert elapsed < UNAVAILABLE_BOUND, (name, elapsed)
    assert_unavailable_json(token_answer[0])
    assert token_answer[1] < UNAVAILABLE_BOUND
    assert jwks_answer.status_code == 200 and claims["sub"]
    assert ready.status_code == 503 and ready.json()["checks"] == {"database": True, "redis": False,
                                                                   "signing_keys": True}
    assert alive.status_code == 200

    # recovery, without restarting anything: the same processes serve again
    assert wait_ready(rig, 10)
    logged = pending.post(login_path, {"csrf_token": login_csrf, "username": line, "password": PASSWORD})
    assert logged.status_code == 302 and logged.headers["Location"].startswith("/authorize?")
    redeemed = late.tokens(rig.rp, late_code, late_verifier)  # the failed redemption did not use the code up
    assert redeemed.status_code == 200, redeemed.text
    fresh = rig.browser()
    assert fresh.tokens(rig.rp, *fresh.log_in(rig.rp, line, PASSWORD)).status_code == 200
    assert person.get("/account").status_code == 200  # the SSO session made before the fault is still there


def test_postgres_down_answers_503_tokens_keep_validating_and_service_recovers(rig):
    line = new_account(rig)
    person = rig.browser()
    issued = person.tokens(rig.rp, *person.log_in(rig.rp, line, PASSWORD)).json()
    pending = rig.browser()
    login_path = pending.authorize(rig.rp)[0].headers["Location"]
    csrf = csrf_token(pending.get(login_path).text)
    access = issued["access_token"]

    rig.pg.cut()
    answers = {
        "authorize": timed(lambda: rig.browser().authorize(rig.rp)[0]),
        "login": timed(lambda: pending.post(login_path, {"csrf_token": csrf, "username": line,
                                                         "password": PASSWORD})),
        "account": timed(lambda: person.get("/account")),
    }
    json_answers = {
        "refresh": timed(lambda: person.refresh(rig.rp, issued["refresh_token"])),
        "userinfo": timed(lambda: requests.get(rig.url + "/userinfo", timeout=30,
                                               headers={"Authorization": "Bearer " + access})),
        "introspection": timed(lambda: requests.post(rig.url + "/introspect", timeout=30, data={"token": access},
                                                     auth=(rig.rp.client_id, rig.rp.secret))),
        "client_credentials": timed(lambda: requests.post(rig.url + "/token", timeout=30,
                                                          auth=(rig.rp.client_id, rig.rp.secret),
                                                          data={"grant_type": "client_credentials"})),
    }
    claims = verify_with_jwks(rig, issued["access_token"])
    discovery = requests.get(rig.url + "/.well-known/openid-configuration", timeout=10)
    ready = requests.get(rig.url + "/readyz", timeout=10)
    rig.pg.restore()

    for name, (response, elapsed) in answers.items():
        assert_unavailable_page(response)
        assert elapsed < UNAVAILABLE_BOUND, (name, elapsed)
    for name, (response, elapsed) in json_answers.items():
        assert_unavailable_json(response)
        assert elapsed < UNAVAILABLE_BOUND, (name, elapsed)
    assert claims["sub"] and discovery.status_code == 200
    assert ready.status_code == 503 and ready.json()["checks"] == {"database": False, "redis": True,
                                                                   "signing_keys": True}

    assert wait_ready(rig, 10)
    again = pending.post(login_path, {"csrf_token": csrf, "username": line, "password": PASSWORD})
    assert again.status_code == 302 and again.headers["Location"].startswith("/authorize?"), again.text[:300]
    refreshed = person.refresh(rig.rp, issued["refresh_token"])  # not used up by the failed attempt
    assert refreshed.status_code == 200, refreshed.text
    fresh = rig.browser()
    assert fresh.tokens(rig.rp, *fresh.log_in(rig.rp, line, PASSWORD)).status_code == 200


def _account_pages(rig, cookies, count: int = 24) -> list[int]:
    """``count`` requests of the account page (Redis: the session; PostgreSQL: the account), six at a time, so
    both workers serve some."""
    def one(_):
        with requests.Session() as session:
            session.cookies.update(cookies)
            return session.get(rig.url + "/account", timeout=30, allow_redirects=False).status_code

    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.parametrize("dependency", ["redis", "pg"])
def test_a_dependency_restarting_between_requests_costs_no_request(rig, dependency):
    """Redis or PostgreSQL restarts (every connection drops) while the workers are idle: the next requests
    must not fail on the dead pooled connections (PostgreSQL: their sockets show it, idp/database.py; Redis: one
    reconnect)."""
    line = new_account(rig)
    person = rig.browser()
    person.log_in(rig.rp, line, PASSWORD)
    cookies = person.http.cookies.get_dict()
    assert set(_account_pages(rig, cookies)) == {200}
    proxy = rig.redis if dependency == "redis" else rig.pg
    proxy.cut()
    proxy.restore()
    assert set(_account_pages(rig, cookies)) == {200}


def test_redis_that_hangs_answers_503_within_a_bounded_time(rig):
    """Redis accepts connections and never answers (overloaded, or a network black hole): every request that
    needs it must still end with the 503 page within the client's socket time-out, not hang the worker."""
    line = new_account(rig)
    person = rig.browser()
    person.log_in(rig.rp, line, PASSWORD)
    rig.redis.stall()
    answers = [timed(lambda: person.get("/account")) for _ in range(2)]  # the second opens a new connection
    rig.redis.restore()
    for response, elapsed in answers:
        assert_unavailable_page(response)
        assert elapsed < 5 + 2.5, elapsed  # idp/store.py: socket time-outs of 5 s
    assert wait_ready(rig, 10)
    assert person.get("/account").status_code == 200



# 2. the SMS gateway and the SMTP server down or slow --------------------------------------------------------

CREDENTIALS = {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD, "question": "first_pet",
               "answer": "Fido il bassotto"}


def start_registration(person: Browser, way: str) -> str:
    response = person.submit("/flows/registration_employee/", way=way)
    assert response.status_code == 302, (response.status_code, response.text[:300])
    return response.headers["Location"]


def resend(person: Browser, url: str):
    page = person.get(url)
    return person.post(url, {"csrf_token": csrf_token(page.text), "action": "resend"})


def finish_registration(rig, person: Browser, url: str, code: str) -> None:
    to_credentials = person.submit(url, code=code)
    assert to_credentials.status_code == 302, text_of(to_credentials)
    assert to_credentials.headers["Location"] == url
    done = person.submit(url, **CREDENTIALS)
    assert done.status_code == 200 and "Registrazione completata" in done.text, (done.status_code,
                                                                                text_of(done)[:500])


def test_sms_gateway_slow_then_down_bounded_told_resumable_and_sent_once(rig):
    number = add_line(rig, new_number())
    person = rig.browser()
    url = start_registration(person, "sms")

    rig.sms.hang(SMS_TIMEOUT * 5)  # takes the request and never answers: longer than the IdP's time-out
    answer, elapsed = timed(lambda: person.submit(url, line=number))
    assert answer.status_code == 302 and answer.headers["Location"] == url
    assert elapsed < SMS_BOUND, elapsed
    assert "Non è stato possibile inviare l'SMS in questo momento" in text_of(person.get(url))
    assert [r.status for r in rig.sms.requests if r.to == number] == [0] * (1 + SMS_RETRIES)  # bounded tries
    assert rig.sms.messages(number) == []

    rig.sms.answer_ok()
    rig.sms_proxy.cut()  # the gateway is down: nothing listens
    answer, elapsed = timed(lambda: resend(person, url))
    assert answer.status_code == 200 and elapsed < SMS_BOUND, elapsed  # the code page, saying so
    assert "Non è stato possibile inviare l'SMS in questo momento" in text_of(answer)

    rig.sms_proxy.restore()
    twin = Browser(rig.url)  # a double click on "Invia di nuovo il codice": two tabs of one browser
    twin.http.cookies.update(person.http.cookies)
    page = person.get(url)
    token = csrf_token(page.text)
    with ThreadPoolExecutor(2) as pool:
        clicks = list(pool.map(lambda tab: tab.post(url, {"csrf_token": token, "action": "resend"}),
                               (person, twin)))
    assert all(c.status_code in (200, 302, 409) for c in clicks), [c.status_code for c in clicks]
    code = rig.sms.wait_for(number).text
    finish_registration(rig, person, url, re.search(r"\b(\d{6})\b", code).group(1))
    assert len(rig.sms.messages(number)) == 1, "the double click sent one SMS, the failures none"
    assert accounts_for(rig, number) == 1
    consistency(rig)


def test_smtp_server_slow_then_down_bounded_told_resumable_and_sent_once(rig):
    number = add_line(rig, new_number("+39340"), "data", PIN)
    address = f"dati.{secrets.token_hex(4)}@posta.example"
    person = rig.browser()
    url = start_registration(person, "data")

    rig.smtp_proxy.stall()  # accepts the connection, never greets
    answer, elapsed = timed(lambda: person.submit(url, line=number, pin=PIN, email=address))
    assert answer.status_code == 302 and answer.headers["Location"] == url, text_of(answer)[:300]
    assert elapsed < SMTP_BOUND, elapsed
    assert "Non è stato possibile inviare l'e-mail in questo momento" in text_of(person.get(url))

    rig.smtp_proxy.cut()  # the server is down
    answer, elapsed = timed(lambda: resend(person, url))
    assert answer.status_code == 200 and elapsed < SMTP_BOUND, elapsed
    assert "Non è stato possibile inviare l'e-mail in questo momento" in text_of(answer)
    assert rig.smtp.messages(address) == []

    rig.smtp_proxy.restore()
    assert resend(person, url).status_code == 302
    code = rig.smtp.last_code(address)
    finish_registration(rig, person, url, code)
    assert len(rig.smtp.messages(address)) == 1
    assert accounts_for(rig, number) == 1
    consistency(rig)


# 3. no partial writes ---------------------------------------------------------------------------------------

def test_registration_through_faults_between_steps_and_before_the_final_post(rig):
    number = add_line(rig, new_number())
    person = rig.browser()
    url = start_registration(person, "sms")
    assert person.submit(url, line=number).status_code == 302
    code = rig.sms.last_code(number)
    token = csrf_token(person.get(url).text)

    rig.redis.cut()  # between two steps
    assert_unavailable_page(person.post(url, {"csrf_token": token, "code": code}))
    rig.redis.restore()
    assert wait_ready(rig)
    assert person.post(url, {"csrf_token": token, "code": code}).status_code == 302
    token = csrf_token(person.get(url).text)

    for proxy in (rig.redis, rig.pg):  # right before the final POST
        proxy.cut()
        assert_unavailable_page(person.post(url, {"csrf_token": token, **CREDENTIALS}))
        proxy.restore()
        assert wait_ready(rig)
        assert accounts_for(rig, number) == 0
        consistency(rig)

    # "i dati inseriti finora non vanno persi": the same page can be sent again
    page = person.get(url)
    assert page.status_code == 200 and 'name="confirm"' in page.text, (page.status_code, text_of(page)[:300])
    done = person.post(url, {"csrf_token": token, **CREDENTIALS})
    assert done.status_code == 200 and "Registrazione completata" in done.text
    assert accounts_for(rig, number) == 1
    assert consistency(rig)[number] == [number]


@pytest.mark.parametrize("statement", [b"INSERT INTO accounts", b"INSERT INTO account_lines"])
def test_registration_cut_in_the_middle_of_the_final_post(rig, statement):
    number = add_line(rig, new_number())
    person = rig.browser()
    url = start_registration(person, "sms")
    assert person.submit(url, line=number).status_code == 302
    assert person.submit(url, code=rig.sms.last_code(number)).status_code == 302
    token = csrf_token(person.get(url).text)

    rig.pg.cut_on(statement)  # PostgreSQL goes away the moment this statement is sent
    assert_unavailable_page(person.post(url, {"csrf_token": token, **CREDENTIALS}))
    assert rig.pg.triggered.is_set()
    rig.pg.restore()
    assert wait_ready(rig)
    assert accounts_for(rig, number) == 0, "half an account"
    consistency(rig)

    done = person.post(url, {"csrf_token": token, **CREDENTIALS})
    assert done.status_code == 200 and "Registrazione completata" in done.text, text_of(done)[:300]
    assert consistency(rig)[number] == [number]


def start_recovery(rig, person: Browser, line: str) -> str:
    response = person.submit("/flows/recovery/", username=line)
    assert response.status_code == 302
    return response.headers["Location"]


RECOVERED = {"password": "Lampione-Verde-72", "confirm": "Lampione-Verde-72", "question": "first_concert",
             "answer": "Vasco Rossi"}


def _logged_in_with_tokens(rig, line: str):
    person = rig.browser()
    issued = person.tokens(rig.rp, *person.log_in(rig.rp, line, PASSWORD)).json()
    return person, issued


def _password_works(rig, line: str, password: str) -> bool:
    browser = rig.browser()
    first, _verifier = browser.authorize(rig.rp)
    answer = browser.submit(first.headers["Location"], username=line, password=password)
    return answer.status_code == 302


def test_recovery_through_faults_between_steps_and_before_the_final_post(rig):
    line = new_account(rig, question=True)
    holder, issued = _logged_in_with_tokens(rig, line)
    person = rig.browser()
    url = start_recovery(rig, person, line)
    token = csrf_token(person.get(url).text)

    rig.redis.cut()  # between the question and the code
    assert_unavailable_page(person.post(url, {"csrf_token": token, "answer": "Fido"}))
    rig.redis.restore()
    assert wait_ready(rig)
    assert person.post(url, {"csrf_token": token, "answer": "Fido"}).status_code == 302
    code = rig.sms.last_code(line)

    rig.pg.cut()  # between the code and the new password
    assert_unavailable_page(person.post(url, {"csrf_token": token, "code": code}))
    rig.pg.restore()
    assert wait_ready(rig)
    assert person.post(url, {"csrf_token": token, "code": code}).status_code == 302

    for proxy in (rig.redis, rig.pg):  # right before the final POST
        proxy.cut()
        assert_unavailable_page(person.post(url, {"csrf_token": token, **RECOVERED}))
        proxy.restore()
        assert wait_ready(rig)
        assert _password_works(rig, line, PASSWORD)  # nothing changed

    done = person.post(url, {"csrf_token": token, **RECOVERED})
    assert done.status_code == 200 and "Password aggiornata" in done.text, text_of(done)[:300]
    assert _password_works(rig, line, RECOVERED["password"])
    assert holder.get("/account").status_code == 401  # the earlier session ended
    assert holder.refresh(rig.rp, issued["refresh_token"]).status_code == 400  # and its grant
    consistency(rig)


@pytest.mark.parametrize("proxy_name,statement", [("redis", b"SMEMBERS"), ("pg", b"UPDATE tokens SET"),
                                                  ("pg", b"UPDATE accounts SET")],
                         ids=["redis-ending-sessions", "pg-revoking-tokens", "pg-saving-password"])
def test_recovery_cut_in_the_middle_of_the_final_post(rig, proxy_name, statement):
    """Wherever the final POST is cut, a changed password never leaves the earlier sessions and grants
    alive."""
    line = new_account(rig, question=True)
    holder, issued = _logged_in_with_tokens(rig, line)
    person = rig.browser()
    url = start_recovery(rig, person, line)
    assert person.submit(url, answer="Fido").status_code == 302
    assert person.submit(url, code=rig.sms.last_code(line)).status_code == 302
    token = csrf_token(person.get(url).text)

    proxy = rig.redis if proxy_name == "redis" else rig.pg
    proxy.cut_on(statement)
    assert_unavailable_page(person.post(url, {"csrf_token": token, **RECOVERED}))
    assert proxy.triggered.is_set()
    proxy.restore()
    assert wait_ready(rig)
    changed = _password_works(rig, line, RECOVERED["password"])
    assert changed != _password_works(rig, line, PASSWORD)
    if changed:
        assert holder.get("/account").status_code == 401, "password changed, the old session lives on"
        assert holder.refresh(rig.rp, issued["refresh_token"]).status_code == 400, "and its refresh token"

    # the person can finish (or, if the flow is gone, start again) and ends with the new password
    page = person.get(url)
    if page.status_code == 200:
        done = person.post(url, {"csrf_token": token, **RECOVERED})
    else:
        assert page.status_code == 410 and "Sessione scaduta" in page.text
        time.sleep(COOLDOWN)  # a new code to the same line waits out the resend cool-down
        person = rig.browser()
        url = start_recovery(rig, person, line)
        assert person.submit(url, answer="Fido").status_code == 302
        assert person.submit(url, code=rig.sms.last_code(line)).status_code == 302
        done = person.submit(url, **RECOVERED)
    assert done.status_code == 200 and "Password aggiornata" in done.text, text_of(done)[:300]
    assert _password_works(rig, line, RECOVERED["password"])
    assert holder.get("/account").status_code == 401
    assert holder.refresh(rig.rp, issued["refresh_token"]).status_code == 400
    consistency(rig)


def start_sim_association(person: Browser) -> str:
    page = person.get("/account")
    assert page.status_code == 200, page.status_code
    response = person.post("/flows/sim_association/start", {"csrf_token": csrf_token(page.text)})
    assert response.status_code == 302, text_of(response)[:300]
    return response.headers["Location"]


def _sims(rig, line: str) -> list[str]:
    return consistency(rig)[line]


def test_sim_association_through_faults_between_steps_and_before_the_final_post(rig):
    line = new_account(rig)
    second = add_line(rig, new_number("+39347"))
    person = rig.browser()
    person.log_in(rig.rp, line, PASSWORD)
    url = start_sim_association(person)
    token = csrf_token(person.get(url).text)

    rig.redis.cut()  # between choosing the line and the code
    assert_unavailable_page(person.post(url, {"csrf_token": token, "line": second, "sim_type": "voice"}))
    rig.redis.restore()
    assert wait_ready(rig)
    assert rig.sms.messages(second) == []
    assert person.post(url, {"csrf_token": token, "line": second, "sim_type": "voice"}).status_code == 302
    code = rig.sms.last_code(second)

    for proxy in (rig.redis, rig.pg):  # right before the final POST
        proxy.cut()
        assert_unavailable_page(person.post(url, {"csrf_token": token, "code": code}))
        proxy.restore()
        assert wait_ready(rig)
        assert _sims(rig, line) == [line]

    done = person.post(url, {"csrf_token": token, "code": code})
    assert done.status_code == 302 and done.headers["Location"] == "/account", text_of(done)[:300]
    assert _sims(rig, line) == [line, second]
    assert len(rig.sms.messages(second)) == 1


def test_sim_association_cut_in_the_middle_of_the_final_post(rig):
    line = new_account(rig)
    second = add_line(rig, new_number("+39347"))
    person = rig.browser()
    person.log_in(rig.rp, line, PASSWORD)
    url = start_sim_association(person)
    assert person.submit(url, line=second, sim_type="voice").status_code == 302
    token = csrf_token(person.get(url).text)

    rig.pg.cut_on(b"INSERT INTO account_lines")
    assert_unavailable_page(person.post(url, {"csrf_token": token, "code": rig.sms.last_code(second)}))
    assert rig.pg.triggered.is_set()
    rig.pg.restore()
    assert wait_ready(rig)
    assert _sims(rig, line) == [line]

    # the flow is spent; the person starts "Associa SIM" again and it works
    if person.get(url).status_code == 200:
        done = person.post(url, {"csrf_token": token, "code": rig.sms.last_code(second)})
    else:
        time.sleep(COOLDOWN)  # a new code to the same line waits out the resend cool-down
        url = start_sim_association(person)
        assert person.submit(url, line=second, sim_type="voice").status_code == 302
        assert len(rig.sms.messages(second)) == 2
        done = person.submit(url, code=rig.sms.last_code(second))
    assert done.status_code == 302 and done.headers["Location"] == "/account", text_of(done)[:300]
    assert _sims(rig, line) == [line, second]


def test_a_refresh_cut_as_it_is_stored_answers_503_and_the_old_token_still_works(rig):
    """The refresh grant (answered before Flask, idp/fastpaths.py) marks the old token used and stores the new pair
    in one statement (tokens.rotate_refresh): PostgreSQL dies as it goes out. The answer is the 503 JSON, answered
    there, not passed on to Flask (which would have met a used token and ended the family); nothing happened, so
    the same refresh token works once PostgreSQL is back."""
    line = new_account(rig)
    person = rig.browser()
    issued = person.tokens(rig.rp, *person.log_in(rig.rp, line, PASSWORD)).json()
    rig.pg.cut_on(b"INSERT INTO tokens")
    response = person.refresh(rig.rp, issued["refresh_token"])
    assert rig.pg.triggered.is_set()
    assert_unavailable_json(response)
    rig.pg.restore()
    assert wait_ready(rig)
    assert "temporarily_unavailable" in response.text and "access_token" not in response.text
    again = person.refresh(rig.rp, issued["refresh_token"])
    assert again.status_code == 200, again.text

_BACKEND_PID = select(func.pg_backend_pid())


def test_an_autocommit_connection_the_server_closed_is_replaced(rig):
    """The connections idp/database.py keeps in autocommit outside the pool: the same one serves statement after
    statement; once its server side is gone (terminated, as a restart does) the next statement runs on a new
    one instead of failing."""
    import psycopg

    from idp import database
    with rig.app.app_context():
        first = database.fetch(_BACKEND_PID, {})[0][0]
        assert database.fetch(_BACKEND_PID, {})[0][0] == first  # kept, not re-made
        url = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        time.sleep(0.2)
        assert database.fetch(_BACKEND_PID, {})[0][0] != first

def test_a_pooled_connection_the_server_closed_is_replaced_without_a_round_trip(rig):
    """No pool pre-ping (a SELECT 1 round trip per checkout, issue 8): a pooled connection whose server side has
    gone (terminated here as a restart does) has a readable socket while idle; idp/database.py replaces it at
    checkout, so the next statement runs on a new connection instead of failing."""
    with rig.app.app_context():
        engine = db.engine
        engine.dispose()
        with engine.connect() as connection:
            dead_pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() == dead_pid  # pooled, reused
        import psycopg
        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url, autocommit=True) as admin:  # another session ends the pooled one
            admin.execute("SELECT pg_terminate_backend(%s)", (dead_pid,))
        time.sleep(0.2)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() != dead_pid
