"""The authorization code flow end to end through the real pages (issue 2 points 5 and 7)."""
from joserfc import jwt
from joserfc.jwk import KeySet

from .helpers import LINE, Journey


def _verify(client, token: str):
    keys = KeySet.import_key_set(client.get("/jwks.json").json)
    return jwt.decode(token, keys, algorithms=["ES256", "RS256"])


def test_code_flow_issues_tokens_with_the_claims_an_rp_needs(app, client, factory):
    factory.account()
    rp = factory.rp()
    journey = Journey(client, rp)
    tokens = journey.tokens(scope="openid profile phone email lines")
    id_token = _verify(client, tokens["id_token"])
    claims = id_token.claims
    assert id_token.header["kid"] and id_token.header["alg"] == "ES256"
    assert claims["iss"] == app.config["ISSUER"] and claims["aud"] == rp.client_id
    assert claims["nonce"] == journey.last_params["nonce"]
    for name in ("exp", "iat", "auth_time", "acr", "amr", "sid", "at_hash"):
        assert name in claims, name
    assert claims["amr"] == ["pwd"] and claims["acr"] == "urn:selfcare:acr:password"
    assert claims["sub"] != LINE and "393" not in claims["sub"]
    assert claims["phone_number"] == LINE and claims["lines"] == [LINE]
    access = _verify(client, tokens["access_token"])
    assert access.header["typ"] == "at+jwt" and access.claims["jti"] and access.claims["client_id"] == rp.client_id
    assert access.claims["sub"] == claims["sub"]
    assert tokens["expires_in"] == app.config["ACCESS_TOKEN_TTL"] and tokens["token_type"] == "Bearer"
    info = client.get("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]})
    assert info.status_code == 200 and info.json["sub"] == claims["sub"]


def test_sub_is_stable_across_logins(client, factory):
    factory.account()
    rp = factory.rp()
    first = _verify(client, Journey(client, rp).tokens()["id_token"]).claims["sub"]
    client.delete_cookie("idp_sso")
    second = _verify(client, Journey(client, rp).tokens()["id_token"]).claims["sub"]
    assert first == second


def test_authorization_response_carries_iss_and_state(app, client, factory):
    factory.account()
    journey = Journey(client, factory.rp())
    params = journey.login_and_get_code()
    assert params["iss"] == app.config["ISSUER"]
    assert params["state"] == journey.last_params["state"]


def test_sso_second_authorization_needs_no_login(client, factory):
    factory.account()
    rp = factory.rp()
    Journey(client, rp).tokens()
    again = Journey(client, rp).authorize()
    assert again.status_code == 302 and "code=" in again.headers["Location"]
