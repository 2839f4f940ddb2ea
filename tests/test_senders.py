"""The senders against real servers on loopback (SPEC §3, issue 3 point 8).

E-mail goes over real SMTP to an aiosmtpd server (plain, STARTTLS or implicit TLS, with or without login); SMS goes
as a real HTTP POST to a gateway served by ``http.server``. The tests read what arrived on the far side.
"""
from __future__ import annotations

import json
import socket
import time

import pytest

from idp.config import DEFAULTS, ConfigError, validate
from idp.senders import DeliveryFailed, Message, deliver, read_outbox, send_email, send_sms

from .receivers import SMTP_PASSWORD, SMTP_USER, SmsGateway, SmtpReceiver, extract_code

ADDRESS = "mario.rossi@acme.example"
LINE = "+393931234567"
SUBJECT = "Il tuo codice di conferma – Selfcare Business"
TEXT = "Gentile Mario,\nil tuo codice di conferma è 482913. Scade tra 5 minuti.\nNon condividerlo con nessuno."
HTML = "<p>Gentile Mario,</p><p>il tuo codice di conferma è <strong>482913</strong>. Scade tra 5 minuti.</p>"


def email_message(to: str = ADDRESS, code: str = "482913") -> Message:
    return Message(channel="email", to=to, subject=SUBJECT, text=TEXT.replace("482913", code),
                   html=HTML.replace("482913", code))


def sms_message(to: str = LINE, code: str = "305117") -> Message:
    return Message(channel="sms", to=to, text=f"Selfcare Business: il codice è {code}. Non condividerlo.")


def send(app, message: Message) -> None:
    with app.app_context():
        deliver(message)


def fails_within(app, message: Message, seconds: float) -> tuple[DeliveryFailed, float]:
    started = time.monotonic()
    with pytest.raises(DeliveryFailed) as failure:
        send(app, message)
    elapsed = time.monotonic() - started
    assert elapsed < seconds, f"gave up after {elapsed:.2f}s, not within {seconds}s"
    return failure.value, elapsed


# ------------------------------------------------------------------------------------------------------- e-mail

def test_email_over_smtp_carries_italian_text_and_html(real_senders_app, smtp_receiver):
    send(real_senders_app, email_message())
    mail = smtp_receiver.wait_for(ADDRESS)
    assert mail.rcpt_tos == [ADDRESS] and mail.to == ADDRESS
    assert mail.mail_from == "no-reply@selfcare.example"
    assert mail.from_ == "Selfcare Business <no-reply@selfcare.example>"
    assert mail.subject == SUBJECT  # non-ASCII subject survives RFC 2047 encoding
    assert mail.text.strip() == TEXT
    assert "<strong>482913</strong>" in mail.html and "è" in mail.html
    assert mail.headers["Message-ID"].endswith("@selfcare.example>")
    assert not mail.tls and mail.login is None
    assert smtp_receiver.last_code(ADDRESS) == "482913"


def test_otp_email_rendered_from_the_templates_in_italian(real_senders_app, smtp_receiver):
    with real_senders_app.app_context():
        send_email(ADDRESS, "otp", "Il tuo codice di conferma", locale="it", code="731904", minutes=5,
                   purpose="confermare il tuo indirizzo e-mail")
    mail = smtp_receiver.wait_for(ADDRESS)
    assert mail.subject == "Il tuo codice di conferma"
    assert "731904" in mail.text and "5 minuti" in mail.text and "confermare il tuo indirizzo e-mail" in mail.text
    assert "731904" in mail.html and 'lang="it"' in mail.html
    assert smtp_receiver.last_code(ADDRESS) == "731904"


def test_each_email_reaches_its_own_recipient_in_order(real_senders_app, smtp_receiver):
    send(real_senders_app, email_message(code="111111"))
    send(real_senders_app, email_message(to="anna@acme.example", code="222222"))
    send(real_senders_app, email_message(code="333333"))
    assert extract_code(smtp_receiver.wait_for(ADDRESS).text) == "111111"
    assert extract_code(smtp_receiver.wait_for(ADDRESS).text) == "333333"
    assert smtp_receiver.last_code(ADDRESS) == "333333"
    assert smtp_receiver.last_code("anna@acme.example") == "222222"
    with pytest.raises(AssertionError, match="nothing new"):
        smtp_receiver.wait_for(ADDRESS, timeout=0.1)


def test_starttls_with_login(make_app):
    with SmtpReceiver(security="starttls", auth=True) as receiver:
        app = make_app(**receiver.settings())
        send(app, email_message())
        mail = receiver.wait_for(ADDRESS)
        assert mail.tls, "the message must travel after STARTTLS"
        assert mail.login == SMTP_USER
        assert receiver.auth_attempts == [(receiver.auth_attempts[0][0], SMTP_USER, True)]
        assert receiver.auth_attempts[0][0] in ("LOGIN", "PLAIN")
        assert mail.subject == SUBJECT and extract_code(mail.text) == "482913"


def test_implicit_tls_with_login(make_app):
    with SmtpReceiver(security="tls", auth=True) as receiver:
        app = make_app(**receiver.settings())
        send(app, email_message())
        mail = receiver.wait_for(ADDRESS)
        assert mail.tls and mail.login == SMTP_USER


def test_starttls_refuses_a_certificate_it_cannot_verify(make_app):
    with SmtpReceiver(security="starttls", auth=True) as receiver:
        app = make_app(**dict(receiver.settings(), SMTP_CA_FILE=""))  # system store: the private CA is unknown
        failure, _ = fails_within(app, email_message(), 5)
        assert "SSL" in str(failure) or "Certificate" in str(failure)
        assert receiver.messages() == [] and receiver.auth_attempts == []  # the password never left


def test_wrong_smtp_password_is_a_delivery_failure(make_app):
    with SmtpReceiver(security="starttls", auth=True) as receiver:
        app = make_app(**dict(receiver.settings(), SMTP_PASSWORD="not-" + SMTP_PASSWORD))
        fails_within(app, email_message(), 5)
        assert receiver.messages() == []
        assert receiver.auth_attempts and not any(accepted for _, _, accepted in receiver.auth_attempts)


def test_plain_smtp_to_a_server_that_requires_starttls_fails(make_app):
    with SmtpReceiver(security="starttls") as receiver:
        app = make_app(**dict(receiver.settings(), SMTP_SECURITY="none"))
        fails_within(app, email_message(), 5)
        assert receiver.messages() == []


def test_a_refused_recipient_is_a_delivery_failure(make_app):
    with SmtpReceiver(reject_rcpt=(ADDRESS,)) as receiver:
        app = make_app(**receiver.settings())
        fails_within(app, email_message(), 5)
        assert receiver.messages() == []


def test_a_missing_ca_file_is_a_delivery_failure(make_app, smtp_receiver, tmp_path):
    app = make_app(**dict(smtp_receiver.settings(), SMTP_SECURITY="starttls",
                          SMTP_CA_FILE=str(tmp_path / "missing-ca.pem")))
    fails_within(app, email_message(), 5)
    assert smtp_receiver.messages() == []


def test_closed_smtp_port_fails_at_once(make_app):
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = make_app(EMAIL_SENDER="smtp", SMTP_HOST="127.0.0.1", SMTP_PORT=port, SMTP_SECURITY="none",
                   SMTP_TIMEOUT=5)
    failure, _ = fails_within(app, email_message(), 2)
    assert "ConnectionRefused" in str(failure)


def test_silent_smtp_server_fails_after_the_timeout(make_app):
    with socket.socket() as sock:  # accepts the TCP connection, never says a word
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        app = make_app(EMAIL_SENDER="smtp", SMTP_HOST="127.0.0.1", SMTP_PORT=sock.getsockname()[1],
                       SMTP_SECURITY="none", SMTP_TIMEOUT=0.5)
        failure, elapsed = fails_within(app, email_message(), 3)
    assert elapsed >= 0.4 and "timed out" in str(failure.__cause__)


# ------------------------------------------------------------------------------------------------------- SMS

def test_sms_through_the_http_gateway(real_senders_app, sms_gateway):
    send(real_senders_app, sms_message())
    assert sms_gateway.last_code(LINE) == "305117"
    [request] = sms_gateway.requests
    assert request.method == "POST" and request.path == "/sms" and request.status == 200
    assert json.loads(request.body) == {"to": LINE, "from": "Selfcare",
                                        "text": "Selfcare Business: il codice è 305117. Non condividerlo."}
    assert request.headers["Authorization"] == "Bearer test-token"
    assert request.headers["Content-Type"] == "application/json"


def test_otp_sms_rendered_from_the_template_in_italian(real_senders_app, sms_gateway):
    with real_senders_app.app_context():
        send_sms(LINE, "otp", locale="it", code="528360", minutes=5, purpose="associare la SIM")
    sms = sms_gateway.wait_for(LINE)
    assert "528360" in sms.text and "5 minuti" in sms.text and "associare la SIM" in sms.text
    assert sms.sender == "Selfcare"
    assert sms_gateway.last_code(LINE) == "528360"


def test_sms_codes_are_read_per_line_and_in_order(real_senders_app, sms_gateway):
    send(real_senders_app, sms_message(code="100001"))
    send(real_senders_app, sms_message(to="+393339876543", code="200002"))
    send(real_senders_app, sms_message(code="300003"))
    assert extract_code(sms_gateway.wait_for(LINE).text) == "100001"
    assert extract_code(sms_gateway.wait_for(LINE).text) == "300003"
    assert sms_gateway.last_code("+393339876543") == "200002"


def test_sms_retries_a_5xx_then_succeeds(make_app, real_senders_settings, sms_gateway):
    app = make_app(**dict(real_senders_settings, SMS_GATEWAY_RETRIES=2))
    sms_gateway.fail_then_ok(2, status=503)
    send(app, sms_message())
    assert [r.status for r in sms_gateway.requests] == [503, 503, 200]
    assert sms_gateway.last_code(LINE) == "305117"
    assert len(sms_gateway.messages(LINE)) == 1  # delivered once


def test_sms_gives_up_after_the_bounded_retries(make_app, real_senders_settings, sms_gateway):
    app = make_app(**dict(real_senders_settings, SMS_GATEWAY_RETRIES=1))
    sms_gateway.fail_then_ok(10, status=502)
    failure, _ = fails_within(app, sms_message(), 3)
    assert "502" in str(failure)
    assert [r.status for r in sms_gateway.requests] == [502, 502]
    assert sms_gateway.messages() == []


def test_sms_retries_429(make_app, real_senders_settings, sms_gateway):
    app = make_app(**dict(real_senders_settings, SMS_GATEWAY_RETRIES=1))
    sms_gateway.fail_then_ok(1, status=429)
    send(app, sms_message())
    assert [r.status for r in sms_gateway.requests] == [429, 200]


@pytest.mark.parametrize("status", [400, 422])
def test_sms_is_not_retried_on_4xx(make_app, real_senders_settings, sms_gateway, status):
    app = make_app(**dict(real_senders_settings, SMS_GATEWAY_RETRIES=2))
    sms_gateway.reject(status)
    failure, _ = fails_within(app, sms_message(), 1)
    assert str(status) in str(failure)
    assert [r.status for r in sms_gateway.requests] == [status]


def test_sms_without_the_gateway_credentials_is_refused_once(make_app, real_senders_settings, sms_gateway):
    app = make_app(**dict(real_senders_settings, SMS_GATEWAY_AUTH_HEADER=""))
    failure, _ = fails_within(app, sms_message(), 1)
    assert "401" in str(failure)
    [request] = sms_gateway.requests
    assert "Authorization" not in request.headers and request.status == 401


def test_sms_gateway_that_hangs_fails_within_bounded_time(make_app, real_senders_settings, sms_gateway):
    app = make_app(**dict(real_senders_settings, SMS_GATEWAY_TIMEOUT=0.3, SMS_GATEWAY_RETRIES=2))
    sms_gateway.hang(10)
    # 3 attempts × 0.3 s + back-off 0.2 s + 0.4 s ≈ 1.5 s
    failure, elapsed = fails_within(app, sms_message(), 3)
    assert elapsed >= 0.9
    assert "unreachable" in str(failure) and "Timeout" in str(failure)
    assert len(sms_gateway.requests) == 3 and sms_gateway.messages() == []


def test_sms_gateway_that_is_down_fails(make_app):
    gateway = SmsGateway().start()
    url = gateway.url
    gateway.stop()  # nothing listens there any more
    app = make_app(SMS_SENDER="http", SMS_GATEWAY_URL=url, SMS_GATEWAY_RETRIES=1)
    failure, _ = fails_within(app, sms_message(), 2)
    assert "unreachable" in str(failure)


# ------------------------------------------------------------------------------------------------------- outbox, kinds

def test_outbox_writes_and_reads_newest_first(make_app):
    app = make_app(EMAIL_SENDER="outbox", SMS_SENDER="outbox")
    send(app, sms_message(code="111111"))
    send(app, email_message(code="222222"))
    send(app, sms_message(code="333333"))
    with app.app_context():
        newest_first = read_outbox()
        only_two = read_outbox(limit=2)
    assert [extract_code(m["text"]) for m in newest_first] == ["333333", "222222", "111111"]
    assert [extract_code(m["text"]) for m in only_two] == ["333333", "222222"]
    mail = newest_first[1]
    assert mail["channel"] == "email" and mail["to"] == ADDRESS and mail["subject"] == SUBJECT
    assert "<strong>222222</strong>" in mail["html"] and isinstance(mail["sent_at"], int)
    with open(app.config["OUTBOX_PATH"], encoding="utf-8") as fh:
        assert "è" in fh.read()  # Italian text stored as written, not escaped


def test_outbox_is_empty_before_anything_is_sent(make_app, tmp_path):
    app = make_app(OUTBOX_PATH=str(tmp_path / "never-written.jsonl"))
    with app.app_context():
        assert read_outbox() == []


@pytest.mark.parametrize("setting,kind,message", [
    ("EMAIL_SENDER", "carrier-pigeon", email_message()),
    ("EMAIL_SENDER", "http", email_message()),  # an SMS sender kind for e-mail
    ("SMS_SENDER", "smtp", sms_message()),  # an e-mail sender kind for SMS
])
def test_deliver_refuses_an_unknown_sender_kind(make_app, setting, kind, message, tmp_path):
    app = make_app(OUTBOX_PATH=str(tmp_path / "outbox.jsonl"))
    app.config[setting] = kind  # past validation, as a hand-edited config would be
    with app.app_context():
        with pytest.raises(DeliveryFailed, match=f"no sender '{kind}'"):
            deliver(message)
        assert read_outbox() == []


# ------------------------------------------------------------------------------------------------------- settings

PRODUCTION = dict(DEFAULTS, DEPLOYMENT="production", ISSUER="https://login.selfcare.example", SECRET_KEY="s" * 48,
                  HMAC_KEY="h" * 48, DATABASE_URL="postgresql://idp@db.internal/idp",
                  REDIS_URL="redis://cache.internal:6379/0", COOKIE_SECURE=True, EMAIL_SENDER="smtp",
                  SMS_SENDER="http", SMS_GATEWAY_URL="https://sms-gateway.internal/send")


def test_sms_sender_http_needs_a_gateway_url(make_app):
    with pytest.raises(ConfigError, match="SMS_GATEWAY_URL"):
        make_app(SMS_SENDER="http", SMS_GATEWAY_URL="")


@pytest.mark.parametrize("change,complaint", [
    ({"EMAIL_SENDER": "carrier-pigeon"}, "EMAIL_SENDER"),
    ({"SMS_SENDER": "smtp"}, "SMS_SENDER"),
    ({"SMTP_SECURITY": "ssl"}, "SMTP_SECURITY"),
])
def test_unknown_sender_settings_are_refused(make_app, change, complaint):
    with pytest.raises(ConfigError, match=complaint):
        make_app(**change)


def test_production_refuses_smtp_in_clear():
    validate(PRODUCTION)  # starttls, the default, is accepted
    validate(dict(PRODUCTION, SMTP_SECURITY="tls"))
    with pytest.raises(ConfigError, match="SMTP_SECURITY=none"):
        validate(dict(PRODUCTION, SMTP_SECURITY="none"))
