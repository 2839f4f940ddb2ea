"""Delivering SMS and e-mail (SPEC §3 "pluggable sender"; issue 3 point 8).

``send_sms`` and ``send_email`` render the Italian (or English) templates in ``templates/sms`` and
``templates/email`` and hand the message to the configured sender:

| channel | setting          | senders                                                                 |
|---------|------------------|-------------------------------------------------------------------------|
| SMS     | ``SMS_SENDER``   | ``http``: JSON POST to the operator's SMS gateway; ``outbox``            |
| e-mail  | ``EMAIL_SENDER`` | ``smtp``: SMTP with TLS, STARTTLS or none, optional login; ``outbox``    |

The outbox (development and tests only; refused in production) appends to a JSON-lines file that
``flask --app wsgi idp outbox`` and the development page ``/dev/outbox`` read. A failed delivery raises
``DeliveryFailed``; the flows say so plainly and stay resumable.
"""
from __future__ import annotations

import json
import os
import smtplib
import ssl
import threading
import time
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from email.utils import formataddr, make_msgid

import requests
from flask import current_app, render_template
from flask_babel import force_locale


class DeliveryFailed(Exception):
    """The message could not be handed to the SMS gateway or the mail server."""


@dataclass
class Message:
    channel: str  # "sms" | "email"
    to: str
    text: str
    subject: str | None = None
    html: str | None = None


_outbox_lock = threading.Lock()


def outbox_path() -> str:
    return current_app.config["OUTBOX_PATH"] or os.path.join(current_app.instance_path, "outbox.jsonl")


def _deliver_outbox(message: Message) -> None:
    record = dict(asdict(message), sent_at=int(time.time()))
    with _outbox_lock, open(outbox_path(), "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_outbox(limit: int = 50) -> list[dict]:
    try:
        with open(outbox_path(), encoding="utf-8") as fh:
            lines = fh.readlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines[-limit:]][::-1]


def _deliver_http_sms(message: Message) -> None:
    config = current_app.config
    headers = {"Content-Type": "application/json"}
    if config["SMS_GATEWAY_AUTH_HEADER"]:
        name, _, value = str(config["SMS_GATEWAY_AUTH_HEADER"]).partition(":")
        headers[name.strip()] = value.strip()
    body = {"to": message.to, "from": config["SMS_GATEWAY_SENDER_ID"], "text": message.text}
    attempts = 1 + max(0, int(config["SMS_GATEWAY_RETRIES"]))
    for attempt in range(attempts):
        try:
            response = requests.post(config["SMS_GATEWAY_URL"], json=body, headers=headers,
                                     timeout=float(config["SMS_GATEWAY_TIMEOUT"]))
        except requests.RequestException as exc:
            error = f"gateway unreachable: {exc.__class__.__name__}"
        else:
            if 200 <= response.status_code < 300:
                return
            error = f"gateway answered {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                break  # the gateway refused the message itself: retrying cannot help
        if attempt + 1 < attempts:
            time.sleep(min(0.2 * 2 ** attempt, 2.0))
    raise DeliveryFailed(error)


def _deliver_smtp(message: Message) -> None:
    config = current_app.config
    mail = EmailMessage()
    mail["From"] = formataddr((config["SMTP_FROM_NAME"], config["SMTP_FROM"]))
    mail["To"] = message.to
    mail["Subject"] = message.subject or ""
    mail["Message-ID"] = make_msgid(domain=config["SMTP_FROM"].rsplit("@", 1)[-1])
    mail.set_content(message.text)
    if message.html:
        mail.add_alternative(message.html, subtype="html")
    security = config["SMTP_SECURITY"]
    timeout = float(config["SMTP_TIMEOUT"])
    try:
        context = ssl.create_default_context(cafile=config["SMTP_CA_FILE"] or None)
        if security == "tls":
            smtp = smtplib.SMTP_SSL(config["SMTP_HOST"], int(config["SMTP_PORT"]), timeout=timeout,
                                    context=context)
        else:
            smtp = smtplib.SMTP(config["SMTP_HOST"], int(config["SMTP_PORT"]), timeout=timeout)
        with smtp:
            if security == "starttls":
                smtp.starttls(context=context)
            if config["SMTP_USERNAME"]:
                smtp.login(config["SMTP_USERNAME"], config["SMTP_PASSWORD"])
            smtp.send_message(mail)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryFailed(f"mail server: {exc.__class__.__name__}") from exc


def deliver(message: Message) -> None:
    config = current_app.config
    kind = config["SMS_SENDER"] if message.channel == "sms" else config["EMAIL_SENDER"]
    if kind == "outbox":
        _deliver_outbox(message)
    elif message.channel == "sms" and kind == "http":
        _deliver_http_sms(message)
    elif message.channel == "email" and kind == "smtp":
        _deliver_smtp(message)
    else:
        raise DeliveryFailed(f"no sender {kind!r} for {message.channel}")


def send_sms(to: str, template: str, locale: str | None = None, **context) -> None:
    with force_locale(locale or current_app.config["BABEL_DEFAULT_LOCALE"]):
        text = render_template(f"sms/{template}.txt", **context).strip()
    deliver(Message(channel="sms", to=to, text=text))


def send_email(to: str, template: str, subject: str, locale: str | None = None, **context) -> None:
    with force_locale(locale or current_app.config["BABEL_DEFAULT_LOCALE"]):
        text = render_template(f"email/{template}.txt", **context).strip()
        html = render_template(f"email/{template}.html", **context)
    deliver(Message(channel="email", to=to, subject=subject, text=text, html=html))
