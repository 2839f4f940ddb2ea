"""Gestione Utente (issue 4 point 2): password change, sessions and applications, the user icon."""
import re

import pytest

from idp.extensions import db
from idp.models import Account

from .helpers import LINE, PASSWORD, Journey, basic, csrf_of

NEW = "Lampione-Verde-72"


@pytest.fixture
def signed_in(app, client, factory):
    factory.account()
    rp = factory.rp()
    tokens = Journey(client, rp).tokens()
    return rp, tokens


def _change(client, **fields):
    page = client.get("/account")
    data = {"csrf_token": csrf_of(page.text), "old_password": PASSWORD, "password": NEW, "confirm": NEW,
            "question": "first_concert", "answer": "Vasco Rossi"}
    data.update(fields)
    return client.post("/account/password", data=data)


def test_page_needs_a_session_and_shows_the_user_icon(client, signed_in):
    from flask.testing import FlaskClient
    assert FlaskClient(client.application).get("/account").status_code == 401
    page = client.get("/account")
    assert page.status_code == 200 and "Gestione Utente" in page.text and 'id="user-icon"' in page.text
    assert "+39 393 ***4567" in page.text and LINE not in page.text


def test_change_password_keeps_this_session_and_ends_the_others(app, client, factory, signed_in, outbox):
    rp, tokens = signed_in
    other = app.test_client()
    Journey(other, rp).tokens()
    response = _change(client)
    assert response.status_code == 302
    assert "aggiornate" in client.get("/account").text
    assert other.get("/account").status_code == 401  # the other browser's session ended
    assert client.get("/account").status_code == 200  # this one did not
    refreshed = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                            headers=basic(rp.client_id, rp.secret))
    assert refreshed.json["error"] == "invalid_grant"
    assert "password del tuo account è stata cambiata" in outbox.last(LINE)["text"]
    Journey(app.test_client(), rp).tokens(password=NEW)
    with app.app_context():
        assert db.session.query(Account).one().security_question == "first_concert"


@pytest.mark.parametrize("fields,message", [
    ({"old_password": "sbagliata-123"}, "La password attuale non è corretta."),
    ({"password": "password123", "confirm": "password123"}, "troppo comune"),
    ({"password": PASSWORD, "confirm": PASSWORD}, "diversa da quella attuale"),
    ({"confirm": "Altra-Cosa-99"}, "non coincidono"),
    ({"answer": NEW}, "non può essere uguale"),
])
def test_change_password_refusals(client, signed_in, fields, message):
    response = _change(client, **fields)
    assert response.status_code == 400 and message in response.text


def test_old_password_guesses_are_locked_out(make_app):
    app = make_app(LOCKOUT_THRESHOLD=3, LOCKOUT_FREE_FAILURES=100)
    from .helpers import Factory
    Factory(app).account()
    client = app.test_client()
    Journey(client, Factory(app).rp()).tokens()
    for _ in range(3):
        assert _change(client, old_password="sbagliata-123").status_code == 400
    assert _change(client).status_code == 429


def test_sessions_are_listed_and_can_be_ended(app, client, signed_in):
    rp, _tokens = signed_in
    other = app.test_client()
    Journey(other, rp).tokens()
    page = client.get("/account").text
    items = re.findall(r"<li>(.*?)</li>", page.split('id="sessions"')[1].split("</ul>")[0], re.S)
    assert len(items) == 2
    mine = [re.search(r"/account/sessions/([^/]+)/end", i).group(1) for i in items if "questa sessione" in i]
    theirs = [re.search(r"/account/sessions/([^/]+)/end", i).group(1) for i in items if "questa sessione" not in i]
    assert len(mine) == len(theirs) == 1
    response = client.post(f"/account/sessions/{theirs[0]}/end", data={"csrf_token": csrf_of(page)})
    assert response.status_code == 302
    assert other.get("/account").status_code == 401 and client.get("/account").status_code == 200
    client.post(f"/account/sessions/{mine[0]}/end", data={"csrf_token": csrf_of(page)})
    assert client.get("/account").status_code == 401


def test_ending_a_foreign_handle_does_nothing(app, client, signed_in):
    page = client.get("/account").text
    client.post("/account/sessions/deadbeef/end", data={"csrf_token": csrf_of(page)})
    assert client.get("/account").status_code == 200


def test_applications_are_listed_and_revocable(app, client, factory, signed_in):
    rp, tokens = signed_in
    page = client.get("/account").text
    assert "Portale di prova" in page
    response = client.post(f"/account/applications/{rp.client_id}/revoke", data={"csrf_token": csrf_of(page)})
    assert response.status_code == 302
    assert "Nessuna applicazione" in client.get("/account").text
    assert client.get("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]}).status_code == 401


def test_forms_need_csrf(client, signed_in):
    assert client.post("/account/password", data={"old_password": PASSWORD}).status_code == 400
