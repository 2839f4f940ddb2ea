"""Native-app grants for first-party apps (issue 5 point 5): network autologin at the token endpoint, and the
authorization challenge endpoint (password, then the security question) without a browser."""
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from idp.extensions import db
from idp.models import Account

from .gateway import GATEWAY_SETTINGS, signed_headers
from .helpers import LINE, PASSWORD, Factory, pkce

NETWORK_GRANT = "urn:selfcare:params:oauth:grant-type:network"
ACR_QUESTION = "urn:selfcare:acr:password+question"


@pytest.fixture
def native(make_app):
    app = make_app(**GATEWAY_SETTINGS)
    factory = Factory(app)
    factory.account(question="first_pet", answer="Fido")
    my3 = factory.rp(name="My3", redirect_uri=None, auth_method="none", first_party=True, native_login=True,
                     grant_types=("authorization_code", "refresh_token", NETWORK_GRANT),
                     scope="openid phone profile")
    return app, my3


def _claims(client, token):
    return jwt.decode(token, KeySet.import_key_set(client.get("/jwks.json").json)).claims


# network autologin grant -------------------------------------------------------------------------------------

def test_network_grant_issues_network_level_tokens(native):
    app, my3 = native
    client = app.test_client()
    response = client.post("/token", data={"grant_type": NETWORK_GRANT, "client_id": my3.client_id,
                                           "scope": "openid phone"}, headers=signed_headers(LINE))
    assert response.status_code == 200, response.text
    claims = _claims(client, response.json["id_token"])
    assert claims["acr"] == "urn:selfcare:acr:network" and claims["amr"] == ["mno"]
    assert claims["phone_number"] == LINE and "refresh_token" in response.json
    assert client.get("/userinfo", headers={"Authorization": "Bearer " + response.json["access_token"]}).json[
        "phone_number"] == LINE


@pytest.mark.parametrize("headers,error", [
    ({}, "invalid_grant"),
    ({"X-MSISDN": LINE}, "invalid_grant"),
    (signed_headers("+393930000077"), "invalid_grant"),
])
def test_network_grant_refusals(native, headers, error):
    app, my3 = native
    response = app.test_client().post("/token", data={"grant_type": NETWORK_GRANT, "client_id": my3.client_id},
                                      headers=headers)
    assert response.status_code == 400 and response.json["error"] == error


def test_network_grant_needs_a_first_party_client_allowed_for_it(native):
    app, _my3 = native
    other = Factory(app).rp(name="Third party", auth_method="none", grant_types=("authorization_code",))
    response = app.test_client().post("/token", data={"grant_type": NETWORK_GRANT, "client_id": other.client_id},
                                      headers=signed_headers(LINE))
    assert response.status_code == 400 and response.json["error"] == "unauthorized_client"


def test_network_grant_without_refresh_registration_gives_no_refresh_token(native):
    app, _my3 = native
    app_client = Factory(app).rp(name="Wind Tre Business", redirect_uri=None, auth_method="none", first_party=True,
                                 grant_types=(NETWORK_GRANT,), scope="openid")
    response = app.test_client().post("/token", data={"grant_type": NETWORK_GRANT, "client_id": app_client.client_id,
                                                      "scope": "openid"}, headers=signed_headers(LINE))
    assert response.status_code == 200 and "refresh_token" not in response.json


def test_third_party_clients_cannot_be_registered_for_native_grants(native):
    app, _my3 = native
    from idp.oauth.clients import ClientError
    with pytest.raises(ClientError):
        Factory(app).rp(name="x", auth_method="none", grant_types=(NETWORK_GRANT,), first_party=False)


# authorization challenge endpoint ----------------------------------------------------------------------------

def _challenge(client, my3, **data):
    return client.post("/authorize-challenge", data={"client_id": my3.client_id, **data})


def _redeem(client, my3, code, verifier):
    return client.post("/token", data={"grant_type": "authorization_code", "code": code, "client_id": my3.client_id,
                                       "code_verifier": verifier})


def test_password_then_code_then_tokens(native):
    app, my3 = native
    client = app.test_client()
    verifier, challenge = pkce()
    response = _challenge(client, my3, username="393 123 4567", password=PASSWORD, scope="openid phone",
                          code_challenge=challenge, code_challenge_method="S256")
    assert response.status_code == 200, response.text
    tokens = _redeem(client, my3, response.json["authorization_code"], verifier)
    assert tokens.status_code == 200, tokens.text
    claims = _claims(client, tokens.json["id_token"])
    assert claims["acr"] == "urn:selfcare:acr:password" and claims["amr"] == ["pwd"]


def test_security_question_challenge(native):
    app, my3 = native
    client = app.test_client()
    verifier, challenge = pkce()
    first = _challenge(client, my3, username=LINE, password=PASSWORD, scope="openid", acr_values=ACR_QUESTION,
                       code_challenge=challenge, code_challenge_method="S256")
    assert first.status_code == 400 and first.json["error"] == "insufficient_authorization"
    assert first.json["challenge"]["type"] == "security_question" and "animale" in first.json["challenge"]["question"]
    wrong = _challenge(client, my3, auth_session=first.json["auth_session"], answer="Rex")
    assert wrong.json["error"] == "insufficient_authorization" and wrong.json["auth_session"] != first.json[
        "auth_session"]
    reused = _challenge(client, my3, auth_session=first.json["auth_session"], answer="fido")
    assert reused.json["error"] == "invalid_session"
    right = _challenge(client, my3, auth_session=wrong.json["auth_session"], answer=" FIDO ")
    assert right.status_code == 200
    tokens = _redeem(client, my3, right.json["authorization_code"], verifier).json
    assert _claims(client, tokens["id_token"])["amr"] == ["pwd", "kba"]


def test_auth_session_is_bound_to_the_client(native):
    app, my3 = native
    client = app.test_client()
    other = Factory(app).rp(name="Other app", redirect_uri=None, auth_method="none", first_party=True,
                            native_login=True, grant_types=("authorization_code",), scope="openid")
    _v, challenge = pkce()
    first = _challenge(client, my3, username=LINE, password=PASSWORD, acr_values=ACR_QUESTION,
                       code_challenge=challenge, code_challenge_method="S256")
    stolen = _challenge(client, other, auth_session=first.json["auth_session"], answer="fido")
    assert stolen.json["error"] == "invalid_session"


@pytest.mark.parametrize("data,error", [
    ({"username": LINE, "password": "wrong"}, "insufficient_authorization"),
    ({"username": "+393930000077", "password": PASSWORD}, "insufficient_authorization"),
    ({"username": LINE}, "invalid_request"),
    ({"username": LINE, "password": PASSWORD, "code_challenge_method": "plain"}, "invalid_request"),
    ({"username": LINE, "password": PASSWORD, "scope": "openid email"}, "invalid_scope"),
])
def test_challenge_refusals(native, data, error):
    app, my3 = native
    _v, challenge = pkce()
    payload = {"code_challenge": challenge, "code_challenge_method": "S256", **data}
    response = _challenge(app.test_client(), my3, **payload)
    assert response.status_code == 400 and response.json["error"] == error


def test_unknown_and_wrong_look_the_same(native):
    app, my3 = native
    _v, challenge = pkce()
    base = {"code_challenge": challenge, "code_challenge_method": "S256"}
    known = _challenge(app.test_client(), my3, username=LINE, password="wrong", **base).json
    unknown = _challenge(app.test_client(), my3, username="+393930000077", password="wrong", **base).json
    assert known == unknown


def test_temporary_password_and_lock_redirect_to_web(make_app):
    app = make_app(LOCKOUT_THRESHOLD=2)
    factory = Factory(app)
    account_id = factory.account()
    my3 = factory.rp(name="My3", redirect_uri=None, auth_method="none", first_party=True, native_login=True,
                     grant_types=("authorization_code",), scope="openid")
    _v, challenge = pkce()
    base = {"code_challenge": challenge, "code_challenge_method": "S256"}
    with app.app_context():
        db.session.get(Account, account_id).password_temporary = True
        db.session.commit()
    client = app.test_client()
    assert _challenge(client, my3, username=LINE, password=PASSWORD, **base).json["error"] == "redirect_to_web"
    for _ in range(2):
        _challenge(client, my3, username=LINE, password="wrong", **base)
    assert _challenge(client, my3, username=LINE, password=PASSWORD, **base).json["error"] == "redirect_to_web"


def test_only_registered_first_party_apps(native):
    app, _my3 = native
    web = Factory(app).rp(name="Portale", auth_method="none")
    _v, challenge = pkce()
    response = _challenge(app.test_client(), web, username=LINE, password=PASSWORD, code_challenge=challenge,
                          code_challenge_method="S256")
    assert response.json["error"] == "unauthorized_client"
    unknown = app.test_client().post("/authorize-challenge", data={"client_id": "nobody", "username": LINE})
    assert unknown.status_code == 401 and unknown.json["error"] == "invalid_client"


def test_code_needs_the_verifier(native):
    app, my3 = native
    client = app.test_client()
    _verifier, challenge = pkce()
    code = _challenge(client, my3, username=LINE, password=PASSWORD, code_challenge=challenge,
                      code_challenge_method="S256").json["authorization_code"]
    response = client.post("/token", data={"grant_type": "authorization_code", "code": code,
                                           "client_id": my3.client_id})
    assert response.status_code == 400


def test_discovery_lists_the_native_grants(client):
    doc = client.get("/.well-known/openid-configuration").json
    assert NETWORK_GRANT in doc["grant_types_supported"]
    assert doc["authorization_challenge_endpoint"].endswith("/authorize-challenge")
