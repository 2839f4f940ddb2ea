"""Factories and drivers shared by the tests: real rows through the real code paths, no fakes."""
from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from idp import passwords
from idp.extensions import db
from idp.models import Account, AccountLine, Customer, Line
from idp.oauth import clients

PASSWORD = "Corretta-Cavallo-42"
LINE = "+393931234567"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def basic(client_id: str, secret: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def query_of(location: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


class Outbox:
    """The development sender's outbox: every SMS and e-mail the app "sent", newest first."""

    def __init__(self, app):
        self.app = app

    def messages(self, to: str | None = None) -> list[dict]:
        with self.app.app_context():
            from idp.senders import read_outbox
            found = read_outbox(limit=1000)
        return [m for m in found if to is None or m["to"] == to]

    def last(self, to: str) -> dict:
        found = self.messages(to)
        assert found, f"nothing was sent to {to}"
        return found[0]

    def last_code(self, to: str) -> str:
        match = re.search(r"\b(\d{6})\b", self.last(to)["text"])
        assert match, "no code in the message"
        return match.group(1)


@dataclass
class RegisteredRP:
    client_id: str
    secret: str | None
    redirect_uri: str


class Factory:
    def __init__(self, app):
        self.app = app

    def customer(self, code="C0001", name="Acme Servizi S.r.l.", domain="acme.example"):
        with self.app.app_context():
            row = db.session.query(Customer).filter_by(code=code).one_or_none()
            if row is None:
                row = Customer(code=code, name=name, email=f"it@{domain}", email_domain=domain)
                db.session.add(row)
                db.session.commit()
            return row.id

    def account(self, line=LINE, password=PASSWORD, role="employee", status="active", email="mario@acme.example",
                customer_code="C0001", question: str | None = None, answer: str | None = None) -> int:
        customer_id = self.customer(customer_code)
        with self.app.app_context():
            line_row = Line(msisdn=line, customer_id=customer_id, sim_type="voice", status="active")
            db.session.add(line_row)
            db.session.flush()
            account = Account(username=line, role=role, customer_id=customer_id, email=email, email_verified=True,
                              password_hash=passwords.hash_secret(password), status=status,
                              security_question=question,
                              security_answer_hash=passwords.hash_secret(passwords.normalise_answer(answer))
                              if answer else None)
            db.session.add(account)
            db.session.flush()
            db.session.add(AccountLine(account_id=account.id, line_id=line_row.id, slot=1))
            db.session.commit()
            return account.id

    def rp(self, name="Portale di prova", redirect_uri="https://rp.example/cb", auth_method="client_secret_basic",
           grant_types=("authorization_code", "refresh_token"), scope="openid profile email phone lines",
           **kwargs) -> RegisteredRP:
        with self.app.app_context():
            row, secret = clients.create(name, redirect_uris=[redirect_uri] if redirect_uri else [],
                                         grant_types=grant_types, scope=scope, auth_method=auth_method, **kwargs)
            return RegisteredRP(row.client_id, secret, redirect_uri)


class Journey:
    """Drives the authorization-code journey through the real pages with Flask's test client."""

    def __init__(self, client, rp: RegisteredRP):
        self.client, self.rp = client, rp
        self.verifier, self.challenge = pkce()

    def params(self, **extra) -> dict:
        params = {"response_type": "code", "client_id": self.rp.client_id, "redirect_uri": self.rp.redirect_uri,
                  "scope": "openid profile phone", "state": secrets.token_urlsafe(8),
                  "nonce": secrets.token_urlsafe(8), "code_challenge": self.challenge,
                  "code_challenge_method": "S256"}
        params.update(extra)
        return {k: v for k, v in params.items() if v is not None}

    def authorize(self, **extra):
        self.last_params = self.params(**extra)
        return self.client.get("/authorize", query_string=self.last_params)

    def submit_login(self, login_page_url: str, username=LINE, password=PASSWORD):
        page = self.client.get(login_page_url)
        return self.client.post(login_page_url, data={"csrf_token": csrf_of(page.text), "username": username,
                                                     "password": password})

    def login_and_get_code(self, username=LINE, password=PASSWORD, **extra) -> dict:
        response = self.authorize(**extra)
        assert response.status_code == 302, response.text
        if response.headers["Location"].startswith("/flows/login/"):
            response = self.submit_login(response.headers["Location"], username, password)
            assert response.status_code == 302, response.text
            response = self.client.get(response.headers["Location"])
        assert response.status_code == 302
        return query_of(response.headers["Location"])

    def redeem(self, code: str, **extra):
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.rp.redirect_uri,
                "code_verifier": self.verifier}
        data.update(extra)
        headers = basic(self.rp.client_id, self.rp.secret) if self.rp.secret else {}
        if not self.rp.secret:
            data.setdefault("client_id", self.rp.client_id)
        return self.client.post("/token", data=data, headers=headers)

    def tokens(self, **extra) -> dict:
        code = self.login_and_get_code(**extra)["code"]
        response = self.redeem(code)
        assert response.status_code == 200, response.text
        return response.json
