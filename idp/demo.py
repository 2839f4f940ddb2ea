"""Demo data for the run command (issue 2 point 2): a customer, its lines, an employee and the demo RP's client.

Idempotent: running it again resets the demo account's password and gives the demo RP a fresh secret.
Never used in production (the run command calls it only on the embedded development defaults).
"""
from __future__ import annotations

import secrets

from sqlalchemy import select

from . import passwords
from .extensions import db
from .models import Account, AccountLine, Customer, Line
from .oauth import clients

DEMO_CUSTOMER = {"code": "C0001", "name": "Acme Servizi S.r.l.", "email": "it@acme-servizi.example",
                 "email_domain": "acme-servizi.example"}
# The demo account's line, then lines free for every self-service flow: employee registration by SMS,
# registration with a data SIM (PIN 1234), a referent registration or a second SIM ("Associa SIM").
DEMO_LINES = [("+393931234567", "voice", None), ("+393937654321", "voice", None), ("+393401112233", "data", "1234"),
              ("+393331112222", "voice", None)]
DEMO_SIM_PIN = "1234"
DEMO_ACCOUNT = {"line": "+393931234567", "password": "Selfcare-Demo-2026", "email": "mario.rossi@acme-servizi.example",
                "question": "first_pet", "answer": "Fido"}
DEMO_CLIENT_ID = "selfcare-demo-portal"


def load(rp_url: str) -> dict:
    customer = db.session.scalar(select(Customer).where(Customer.code == DEMO_CUSTOMER["code"]))
    if customer is None:
        customer = Customer(**DEMO_CUSTOMER)
        db.session.add(customer)
        db.session.flush()
    lines = {}
    for number, sim_type, pin in DEMO_LINES:
        line = db.session.scalar(select(Line).where(Line.msisdn == number))
        if line is None:
            line = Line(msisdn=number, customer_id=customer.id, sim_type=sim_type, status="active",
                        sim_pin_hash=passwords.hash_secret(pin) if pin else None)
            db.session.add(line)
            db.session.flush()
        lines[number] = line
    account = db.session.scalar(select(Account).where(Account.username == DEMO_ACCOUNT["line"]))
    if account is None:
        account = Account(username=DEMO_ACCOUNT["line"], role="employee", customer_id=customer.id,
                          email=DEMO_ACCOUNT["email"], email_verified=True, otp_channel="sms", password_hash="")
        db.session.add(account)
        db.session.flush()
        db.session.add(AccountLine(account_id=account.id, line_id=lines[DEMO_ACCOUNT["line"]].id, slot=1))
    account.password_hash = passwords.hash_secret(DEMO_ACCOUNT["password"])
    account.security_question = DEMO_ACCOUNT["question"]
    account.security_answer_hash = passwords.hash_secret(passwords.normalise_answer(DEMO_ACCOUNT["answer"]))
    account.password_temporary = False
    account.status = "active"
    secret = secrets.token_urlsafe(32)
    redirect_uri = rp_url.rstrip("/") + "/callback"
    existing = clients.get(DEMO_CLIENT_ID)
    if existing is not None:
        db.session.delete(existing)
        db.session.flush()
    clients.create("Selfcare demo portal", client_id=DEMO_CLIENT_ID, secret=secret, redirect_uris=[redirect_uri],
                   post_logout_redirect_uris=[rp_url.rstrip("/") + "/"],
                   grant_types=["authorization_code", "refresh_token"],
                   scope="openid profile email phone lines", first_party=True)
    db.session.commit()
    return {"account": dict(DEMO_ACCOUNT), "customer": dict(DEMO_CUSTOMER),
            "free_lines": [{"line": n, "sim_type": t, "sim_pin": p} for n, t, p in DEMO_LINES[1:]],
            "rp": {"client_id": DEMO_CLIENT_ID, "client_secret": secret, "redirect_uri": redirect_uri,
                   "rp_url": rp_url}}
