"""Password recovery, "Non ricordi la password" (issue 4 point 1)."""
import re
import statistics
import time

import pytest

from idp.extensions import db
from idp.models import Account

from .helpers import LINE, PASSWORD, Journey, basic, csrf_of

NEW_PASSWORD = "Lampione-Verde-72"


@pytest.fixture
def known(app, factory):
    """An employee with a security question (channel SMS) and a logged-in session holding tokens."""
    return factory.account(question="first_pet", answer="Fido")


def _start(client, line=LINE):
    page = client.get("/flows/recovery/")
    response = client.post("/flows/recovery/", data={"csrf_token": csrf_of(page.text), "username": line})
    assert response.status_code == 302
    return response.headers["Location"]


def _post(client, url, **data):
    page = client.get(url)
    return client.post(url, data=dict(data, csrf_token=csrf_of(page.text)))


def _question_of(client, url):
    return re.search(r'id="question-text">([^<]+)<', client.get(url).text).group(1)


def test_full_recovery_by_sms_ends_sessions_and_tokens(app, client, factory, known, outbox):
    rp = factory.rp()
    tokens = Journey(client, rp).tokens()
    other_browser = app.test_client()
    url = _start(other_browser, "393 123 4567")
    assert "animale domestico" in _question_of(other_browser, url)
    to_code = _post(other_browser, url, answer="  fido ")
    assert to_code.status_code == 302
    code = outbox.last_code(LINE)
    assert "recuperare la password" in outbox.last(LINE)["text"]
    to_credentials = _post(other_browser, url, code=code)
    assert to_credentials.status_code == 302
    done = _post(other_browser, url, password=NEW_PASSWORD, confirm=NEW_PASSWORD, question="first_concert",
                 answer="Vasco Rossi")
    assert done.status_code == 200 and "Password aggiornata" in done.text
    assert "idp_sso=" not in str(done.headers.getlist("Set-Cookie")) or "idp_sso=;" in str(
        done.headers.getlist("Set-Cookie"))  # never logged in by the reset
    # the first browser's session and the RP's tokens are gone
    assert Journey(client, rp).authorize().headers["Location"].startswith("/flows/login/")
    refreshed = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                            headers=basic(rp.client_id, rp.secret))
    assert refreshed.json["error"] == "invalid_grant"
    assert client.get("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]}).status_code == 401
    assert "password del tuo account è stata cambiata" in outbox.last(LINE)["text"]
    # the new password works, the old one does not; the new question is saved
    fresh = app.test_client()
    Journey(fresh, rp).tokens(password=NEW_PASSWORD)
    journey = Journey(app.test_client(), rp)
    login = journey.authorize().headers["Location"]
    assert "non corretti" in journey.submit_login(login, password=PASSWORD).text
    with app.app_context():
        assert db.session.get(Account, known).security_question == "first_concert"


def test_recovery_by_email_channel(app, client, known, outbox):
    with app.app_context():
        db.session.get(Account, known).otp_channel = "email"
        db.session.commit()
    url = _start(client)
    _post(client, url, answer="fido")
    code = outbox.last_code("mario@acme.example")
    assert _post(client, url, code=code).status_code == 302


def test_unknown_line_gets_a_stable_decoy_and_no_code(app, client, known, outbox):
    first = _question_of(client, _start(client, "+393930000001"))
    again = _question_of(app.test_client(), _start(app.test_client(), "+393930000001"))
    assert first == again  # stable
    url = _start(client, "+393930000001")
    wrong = _post(client, url, answer="fido")
    assert wrong.status_code == 200 and "La risposta non è corretta." in wrong.text
    assert outbox.messages() == []


def test_decoys_vary_by_line(app, known):
    from idp.flows.recovery import decoy_question
    with app.test_request_context():
        assert len({decoy_question(f"+39393000{n:04d}") for n in range(40)}) > 3


def test_wrong_answer_then_limit(app, client, known, outbox):
    url = _start(client)
    for _ in range(app.config["RECOVERY_MAX_ANSWER_ATTEMPTS"]):
        response = _post(client, url, answer="Rex")
        assert "La risposta non è corretta." in response.text
    ended = _post(client, url, answer="fido")
    assert "Troppi tentativi" in ended.text and outbox.messages() == []


def test_answers_are_throttled_per_line_not_locked(make_app, factory):
    app = make_app(RECOVERY_ANSWERS_PER_HOUR=2)
    from .helpers import Factory
    Factory(app).account()
    client = app.test_client()
    for _ in range(2):
        _post(client, _start(client), answer="Rex")
    throttled = _post(client, _start(client), answer="Rex")
    assert throttled.status_code == 429 and "Riprova tra" in throttled.text
    # the password still logs in: recovery never locks the account
    Journey(app.test_client(), Factory(app).rp()).tokens()


def test_known_and_unknown_lines_answer_in_the_same_time(app, client, known):
    samples_known, samples_unknown = [], []
    for n in range(5):
        for line, bucket in ((LINE, samples_known), (f"+39393555{n:04d}", samples_unknown)):
            browser = app.test_client()
            url = _start(browser, line)
            page = browser.get(url)
            start = time.perf_counter()
            browser.post(url, data={"csrf_token": csrf_of(page.text), "answer": "Rex"})
            bucket.append(time.perf_counter() - start)
    ratio = statistics.median(samples_unknown) / statistics.median(samples_known)
    assert 0.5 < ratio < 2.0


def test_wrong_code_and_resend(app, client, known, outbox):
    url = _start(client)
    _post(client, url, answer="fido")
    first = outbox.last_code(LINE)
    wrong = _post(client, url, code="000000" if first != "000000" else "111111")
    assert "non è corretto" in wrong.text
    page = client.get(url)
    resent = client.post(url + "/resend", data={"csrf_token": csrf_of(page.text)})
    assert resent.status_code == 302
    second = outbox.last_code(LINE)
    if second != first:
        assert "non è corretto" in _post(client, url, code=first).text
    assert _post(client, url, code=second).status_code == 302


def test_failed_delivery_is_told_and_resumable(make_app, factory):
    app = make_app(SMS_SENDER="http", SMS_GATEWAY_URL="http://127.0.0.1:9/", SMS_GATEWAY_RETRIES=0)
    from .helpers import Factory
    Factory(app).account(question="first_pet", answer="Fido")
    client = app.test_client()
    url = _start(client)
    response = _post(client, url, answer="fido")
    assert response.status_code == 200 and "Non siamo riusciti a inviare il codice" in response.text
    assert "Invia di nuovo" in response.text


def test_policy_applies_to_the_new_password(app, client, known, outbox):
    url = _start(client)
    _post(client, url, answer="fido")
    _post(client, url, code=outbox.last_code(LINE))
    refused = _post(client, url, password="password123", confirm="password123", question="first_pet",
                    answer="Rex")
    assert refused.status_code == 200 and "troppo comune" in refused.text


def test_unknown_flow_and_csrf(client, known):
    assert client.get("/flows/recovery/unknown-flow-identifier-123").status_code == 410
    url = _start(client)
    assert client.post(url, data={"answer": "fido"}).status_code == 400


def test_login_page_links_to_recovery(client, factory):
    journey = Journey(client, factory.rp())
    page = client.get(journey.authorize().headers["Location"])
    assert "Non ricordi la password?" in page.text
