"""The token endpoint (issue 2 points 5, 6, 8): grants, client authentication, rotation, reuse detection."""
import time

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from .helpers import Journey, basic


def _post_token(client, rp, **data):
    return client.post("/token", data=data, headers=basic(rp.client_id, rp.secret))


def _claims(client, token):
    return jwt.decode(token, KeySet.import_key_set(client.get("/jwks.json").json), algorithms=["ES256", "RS256"])


def test_refresh_rotates_and_keeps_the_login_facts(client, factory):
    factory.account()
    rp = factory.rp()
    first = Journey(client, rp).tokens()
    response = _post_token(client, rp, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert response.status_code == 200, response.text
    second = response.json
    assert second["refresh_token"] != first["refresh_token"]
    old, new = _claims(client, first["id_token"]).claims, _claims(client, second["id_token"]).claims
    assert new["auth_time"] == old["auth_time"] and new["sub"] == old["sub"] and new["sid"] == old["sid"]
    assert "nonce" not in new


def test_presenting_a_rotated_refresh_token_revokes_the_family(client, factory):
    factory.account()
    rp = factory.rp()
    first = Journey(client, rp).tokens()
    second = _post_token(client, rp, grant_type="refresh_token", refresh_token=first["refresh_token"]).json
    replay = _post_token(client, rp, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert replay.status_code == 400 and replay.json["error"] == "invalid_grant"
    # the legitimate holder's newer tokens die with the family
    assert _post_token(client, rp, grant_type="refresh_token",
                       refresh_token=second["refresh_token"]).json["error"] == "invalid_grant"
    assert client.get("/userinfo", headers={"Authorization": "Bearer " + second["access_token"]}).status_code == 401


def test_refresh_scope_can_only_narrow(client, factory):
    factory.account()
    rp = factory.rp()
    first = Journey(client, rp).tokens(scope="openid phone")
    wider = _post_token(client, rp, grant_type="refresh_token", refresh_token=first["refresh_token"],
                        scope="openid phone email")
    assert wider.status_code == 400 and wider.json["error"] == "invalid_scope"
    narrower = _post_token(client, rp, grant_type="refresh_token", refresh_token=first["refresh_token"],
                           scope="openid")
    assert narrower.status_code == 200 and narrower.json["scope"] == "openid"


def test_refresh_token_of_another_client_is_refused(client, factory):
    factory.account()
    rp, other = factory.rp(), factory.rp(name="Altro")
    tokens = Journey(client, rp).tokens()
    response = _post_token(client, other, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert response.status_code == 400 and response.json["error"] == "invalid_grant"


def test_code_is_single_use_and_a_second_use_revokes_its_tokens(client, factory):
    factory.account()
    journey = Journey(client, factory.rp())
    code = journey.login_and_get_code()["code"]
    first = journey.redeem(code)
    assert first.status_code == 200
    second = journey.redeem(code)
    assert second.status_code == 400 and second.json["error"] == "invalid_grant"
    access = first.json["access_token"]
    assert client.get("/userinfo", headers={"Authorization": "Bearer " + access}).status_code == 401
    refresh = _post_token(client, journey.rp, grant_type="refresh_token", refresh_token=first.json["refresh_token"])
    assert refresh.json["error"] == "invalid_grant"


def test_code_expires(make_app, factory):
    app = make_app(CODE_TTL=1)
    client = app.test_client()
    from .helpers import Factory
    Factory(app).account()
    journey = Journey(client, Factory(app).rp())
    code = journey.login_and_get_code()["code"]
    time.sleep(2.1)
    assert journey.redeem(code).json["error"] == "invalid_grant"


def test_code_redeemed_by_another_client_is_refused(client, factory):
    factory.account()
    journey = Journey(client, factory.rp())
    other = factory.rp(name="Altro")
    code = journey.login_and_get_code()["code"]
    response = client.post("/token", data={"grant_type": "authorization_code", "code": code,
                                           "redirect_uri": journey.rp.redirect_uri,
                                           "code_verifier": journey.verifier}, headers=basic(other.client_id,
                                                                                             other.secret))
    assert response.json["error"] == "invalid_grant"


def test_redirect_uri_must_match_at_the_token_endpoint(client, factory):
    factory.account()
    journey = Journey(client, factory.rp())
    code = journey.login_and_get_code()["code"]
    assert journey.redeem(code, redirect_uri="https://rp.example/other").json["error"] == "invalid_grant"


def test_wrong_pkce_verifier_is_refused(client, factory):
    factory.account()
    journey = Journey(client, factory.rp())
    code = journey.login_and_get_code()["code"]
    response = journey.redeem(code, code_verifier="x" * 50)
    assert response.status_code == 400 and response.json["error"] == "invalid_grant"


def test_public_client_needs_pkce_s256(client, factory):
    factory.account()
    rp = factory.rp(auth_method="none")
    journey = Journey(client, rp)
    for extra in ({"code_challenge": None, "code_challenge_method": None},
                  {"code_challenge_method": "plain"}):
        response = journey.authorize(**extra)
        assert response.status_code == 302
        assert "error=invalid_request" in response.headers["Location"], extra
    tokens = journey.tokens()
    assert "refresh_token" in tokens and "id_token" in tokens


def test_public_client_cannot_skip_the_verifier(client, factory):
    factory.account()
    journey = Journey(client, factory.rp(auth_method="none"))
    code = journey.login_and_get_code()["code"]
    response = client.post("/token", data={"grant_type": "authorization_code", "code": code,
                                           "redirect_uri": journey.rp.redirect_uri, "client_id": journey.rp.client_id})
    assert response.status_code == 400 and response.json["error"] in ("invalid_request", "invalid_grant")


def test_confidential_client_cannot_pretend_to_be_public(client, factory):
    factory.account()
    journey = Journey(client, factory.rp())
    code = journey.login_and_get_code()["code"]
    response = client.post("/token", data={"grant_type": "authorization_code", "code": code,
                                           "redirect_uri": journey.rp.redirect_uri, "client_id": journey.rp.client_id,
                                           "code_verifier": journey.verifier})
    assert response.status_code == 401 and response.json["error"] == "invalid_client"


def test_client_secret_post(client, factory):
    factory.account()
    rp = factory.rp(auth_method="client_secret_post")
    journey = Journey(client, rp)
    code = journey.login_and_get_code()["code"]
    response = client.post("/token", data={"grant_type": "authorization_code", "code": code,
                                           "redirect_uri": rp.redirect_uri, "code_verifier": journey.verifier,
                                           "client_id": rp.client_id, "client_secret": rp.secret})
    assert response.status_code == 200, response.text


def test_wrong_secret_is_invalid_client(client, factory):
    rp = factory.rp(grant_types=("client_credentials",), scope="profile")
    response = client.post("/token", data={"grant_type": "client_credentials"}, headers=basic(rp.client_id, "nope"))
    assert response.status_code == 401 and response.json["error"] == "invalid_client"


def test_client_secret_is_stored_hashed(app, factory):
    rp = factory.rp()
    from idp.models import Client
    with app.app_context():
        row = Client.query.filter_by(client_id=rp.client_id).one()
        assert rp.secret not in (row.secret_hash or "") and len(row.secret_hash) == 64


def _assertion(key, client_id, audience, jti="j1"):
    now = int(time.time())
    return jwt.encode({"alg": "ES256", "kid": key.kid}, {"iss": client_id, "sub": client_id, "aud": audience,
                                                         "iat": now, "exp": now + 60, "jti": jti}, key)


def test_private_key_jwt_and_assertion_replay(app, client, factory):
    key = ECKey.generate_key("P-256", parameters={"kid": "rp-key-1", "alg": "ES256", "use": "sig"})
    jwks = {"keys": [key.as_dict(private=False)]}
    rp = factory.rp(auth_method="private_key_jwt", jwks=jwks, grant_types=("client_credentials",), scope="profile")
    audience = app.config["ISSUER"] + "/token"
    data = {"grant_type": "client_credentials", "client_assertion_type":
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": _assertion(key, rp.client_id, audience)}
    ok = client.post("/token", data=data)
    assert ok.status_code == 200, ok.text
    replay = client.post("/token", data=data)
    assert replay.status_code in (400, 401) and replay.json["error"] == "invalid_client"
    stranger = ECKey.generate_key("P-256", parameters={"kid": "rp-key-1", "alg": "ES256"})
    forged = dict(data, client_assertion=_assertion(stranger, rp.client_id, audience, jti="j2"))
    assert client.post("/token", data=forged).json["error"] == "invalid_client"


def test_client_credentials_scopes_are_narrowed_to_the_registration(client, factory):
    rp = factory.rp(grant_types=("client_credentials",), scope="profile lines", redirect_uri=None)
    ok = _post_token(client, rp, grant_type="client_credentials", scope="lines")
    assert ok.status_code == 200 and ok.json["scope"] == "lines" and "refresh_token" not in ok.json
    claims = _claims(client, ok.json["access_token"]).claims
    assert claims["sub"] == rp.client_id and claims["client_id"] == rp.client_id
    for scope in ("email", "openid"):
        refused = _post_token(client, rp, grant_type="client_credentials", scope=scope)
        assert refused.status_code == 400 and refused.json["error"] == "invalid_scope", scope


def test_grant_type_not_registered_is_unauthorized_client(client, factory):
    rp = factory.rp(grant_types=("authorization_code",))
    response = _post_token(client, rp, grant_type="client_credentials")
    assert response.status_code == 400 and response.json["error"] == "unauthorized_client"


def test_rs256_per_client(client, factory):
    factory.account()
    rp = factory.rp(id_token_alg="RS256")
    tokens = Journey(client, rp).tokens()
    decoded = _claims(client, tokens["id_token"])
    assert decoded.header["alg"] == "RS256" and decoded.header["kid"]


def test_lifetimes_are_short_and_configurable(make_app):
    app = make_app(ACCESS_TOKEN_TTL=120)
    from .helpers import Factory
    Factory(app).account()
    client = app.test_client()
    tokens = Journey(client, Factory(app).rp()).tokens()
    assert tokens["expires_in"] == 120
    claims = _claims(client, tokens["access_token"]).claims
    assert claims["exp"] - claims["iat"] == 120
    id_claims = _claims(client, tokens["id_token"]).claims
    assert id_claims["exp"] - id_claims["iat"] == app.config["ID_TOKEN_TTL"] <= 3600


@pytest.mark.parametrize("ttl", [0, -5])
def test_non_positive_lifetimes_are_refused(make_app, ttl):
    from idp.config import ConfigError
    with pytest.raises(ConfigError):
        make_app(ACCESS_TOKEN_TTL=ttl)
