"""Userinfo, revocation (RFC 7009) and introspection (RFC 7662) — issue 2 point 5."""
from .helpers import Journey, basic


def _bearer(token):
    return {"Authorization": "Bearer " + token}


def test_userinfo_get_and_post_with_header_and_body(client, factory):
    factory.account()
    tokens = Journey(client, factory.rp()).tokens(scope="openid phone")
    get = client.get("/userinfo", headers=_bearer(tokens["access_token"]))
    post = client.post("/userinfo", headers=_bearer(tokens["access_token"]))
    body = client.post("/userinfo", data={"access_token": tokens["access_token"]})
    assert get.status_code == post.status_code == body.status_code == 200
    assert get.json == post.json == body.json
    assert set(get.json) == {"sub", "phone_number", "phone_number_verified"}  # only what the scope allows
    assert get.headers["Cache-Control"] == "no-store"


def test_userinfo_refusals_follow_rfc6750(client, factory):
    factory.account()
    tokens = Journey(client, factory.rp()).tokens()
    none = client.get("/userinfo")
    assert none.status_code == 401 and none.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error=" not in none.headers["WWW-Authenticate"]
    garbage = client.get("/userinfo", headers=_bearer("not-a-token"))
    assert garbage.status_code == 401 and 'error="invalid_token"' in garbage.headers["WWW-Authenticate"]
    tampered = tokens["access_token"][:-4] + ("AAAA" if not tokens["access_token"].endswith("AAAA") else "BBBB")
    assert client.get("/userinfo", headers=_bearer(tampered)).status_code == 401
    both = client.post("/userinfo", headers=_bearer(tokens["access_token"]),
                       data={"access_token": tokens["access_token"]})
    assert both.status_code == 400 and both.json["error"] == "invalid_request"
    basic_scheme = client.get("/userinfo", headers={"Authorization": "Basic abc"})
    assert basic_scheme.status_code == 401


def test_userinfo_needs_openid_scope(client, factory):
    rp = factory.rp(grant_types=("client_credentials",), scope="profile", redirect_uri=None)
    token = client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"},
                        headers=basic(rp.client_id, rp.secret)).json["access_token"]
    response = client.get("/userinfo", headers=_bearer(token))
    assert response.status_code == 403 and 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_userinfo_refuses_a_disabled_account(app, client, factory):
    account_id = factory.account()
    tokens = Journey(client, factory.rp()).tokens()
    from idp.extensions import db
    from idp.models import Account
    with app.app_context():
        db.session.get(Account, account_id).status = "disabled"
        db.session.commit()
    assert client.get("/userinfo", headers=_bearer(tokens["access_token"])).status_code == 401


def test_revoked_access_token_is_refused_and_inactive(client, factory):
    factory.account()
    rp = factory.rp()
    tokens = Journey(client, rp).tokens()
    revoked = client.post("/revoke", data={"token": tokens["access_token"]}, headers=basic(rp.client_id, rp.secret))
    assert revoked.status_code == 200
    assert client.get("/userinfo", headers=_bearer(tokens["access_token"])).status_code == 401
    introspection = client.post("/introspect", data={"token": tokens["access_token"]},
                                headers=basic(rp.client_id, rp.secret))
    assert introspection.json == {"active": False}
    # revoking only the access token leaves the refresh token usable
    refreshed = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                            headers=basic(rp.client_id, rp.secret))
    assert refreshed.status_code == 200


def test_revoking_the_refresh_token_ends_the_grant(client, factory):
    factory.account()
    rp = factory.rp()
    tokens = Journey(client, rp).tokens()
    response = client.post("/revoke", data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
                           headers=basic(rp.client_id, rp.secret))
    assert response.status_code == 200
    assert client.get("/userinfo", headers=_bearer(tokens["access_token"])).status_code == 401
    again = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                        headers=basic(rp.client_id, rp.secret))
    assert again.json["error"] == "invalid_grant"


def test_revocation_of_unknown_token_is_200_and_public_clients_may_revoke(client, factory):
    factory.account()
    rp = factory.rp(auth_method="none")
    tokens = Journey(client, rp).tokens()
    unknown = client.post("/revoke", data={"token": "nothing-we-issued", "client_id": rp.client_id})
    assert unknown.status_code == 200
    ok = client.post("/revoke", data={"token": tokens["refresh_token"], "client_id": rp.client_id})
    assert ok.status_code == 200
    assert client.get("/userinfo", headers=_bearer(tokens["access_token"])).status_code == 401


def test_revocation_errors(client, factory):
    rp = factory.rp()
    missing = client.post("/revoke", data={}, headers=basic(rp.client_id, rp.secret))
    assert missing.status_code == 400 and missing.json["error"] == "invalid_request"
    bad_hint = client.post("/revoke", data={"token": "x", "token_type_hint": "id_token"},
                           headers=basic(rp.client_id, rp.secret))
    assert bad_hint.status_code == 200  # a hint is only a hint: every kind of token is searched
    unauthenticated = client.post("/revoke", data={"token": "x"})
    assert unauthenticated.status_code in (400, 401) and unauthenticated.json["error"] == "invalid_client"


def test_another_clients_token_cannot_be_revoked(client, factory):
    factory.account()
    rp, other = factory.rp(), factory.rp(name="Altro")
    tokens = Journey(client, rp).tokens()
    response = client.post("/revoke", data={"token": tokens["refresh_token"]},
                           headers=basic(other.client_id, other.secret))
    assert response.status_code == 400
    assert client.get("/userinfo", headers=_bearer(tokens["access_token"])).status_code == 200


def test_introspection_of_access_and_refresh_tokens(app, client, factory):
    factory.account()
    rp = factory.rp()
    tokens = Journey(client, rp).tokens()
    access = client.post("/introspect", data={"token": tokens["access_token"]},
                         headers=basic(rp.client_id, rp.secret)).json
    assert access["active"] is True and access["client_id"] == rp.client_id and access["iss"] == app.config["ISSUER"]
    for name in ("sub", "exp", "iat", "scope", "jti", "acr", "auth_time"):
        assert name in access
    refresh = client.post("/introspect", data={"token": tokens["refresh_token"]},
                          headers=basic(rp.client_id, rp.secret)).json
    assert refresh["active"] is True and refresh["token_type"] == "refresh_token"


def test_introspection_permissions(client, factory):
    factory.account()
    rp = factory.rp()
    stranger = factory.rp(name="Estraneo")
    resource_server = factory.rp(name="Selfcare API", grant_types=("client_credentials",), scope="profile",
                                 redirect_uri=None, may_introspect=True)
    tokens = Journey(client, rp).tokens()
    assert client.post("/introspect", data={"token": tokens["access_token"]},
                       headers=basic(stranger.client_id, stranger.secret)).json == {"active": False}
    assert client.post("/introspect", data={"token": tokens["access_token"]},
                       headers=basic(resource_server.client_id, resource_server.secret)).json["active"] is True
    unauthenticated = client.post("/introspect", data={"token": tokens["access_token"]})
    assert unauthenticated.status_code in (400, 401) and unauthenticated.json["error"] == "invalid_client"


def test_disabling_a_client_revokes_its_tokens(app, client, factory):
    factory.account()
    rp = factory.rp()
    tokens = Journey(client, rp).tokens()
    from idp.oauth import clients
    with app.app_context():
        clients.disable(rp.client_id)
    assert client.get("/userinfo", headers=_bearer(tokens["access_token"])).status_code == 401
    response = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                           headers=basic(rp.client_id, rp.secret))
    assert response.status_code in (400, 401) and response.json["error"] == "invalid_client"
