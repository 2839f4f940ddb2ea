"""RP-initiated logout, discovery and JWKS (issue 2 point 5)."""
from authlib.oidc.discovery import OpenIDProviderMetadata

from .helpers import Journey, csrf_of, query_of


def test_discovery_document(app, client):
    response = client.get("/.well-known/openid-configuration")
    doc = response.json
    OpenIDProviderMetadata(doc).validate()
    assert doc["issuer"] == app.config["ISSUER"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert set(doc["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post",
                                                                 "private_key_jwt", "none"}
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert {"ES256", "RS256"} <= set(doc["id_token_signing_alg_values_supported"])
    for name in ("revocation_endpoint", "introspection_endpoint", "end_session_endpoint", "userinfo_endpoint"):
        assert doc[name].startswith(app.config["ISSUER"])


def test_jwks_has_public_keys_only_with_kid_and_caching(app, client):
    response = client.get("/jwks.json")
    keys = response.json["keys"]
    assert {k["alg"] for k in keys} == {"ES256", "RS256"}
    for key in keys:
        assert key["kid"] and key["use"] == "sig" and "d" not in key and "p" not in key
    assert f"max-age={app.config['JWKS_MAX_AGE']}" in response.headers["Cache-Control"]
    etag = response.headers["ETag"]
    cached = client.get("/jwks.json", headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.data == b""


def _logged_in(client, factory):
    factory.account()
    rp = factory.rp(post_logout_redirect_uris=["https://rp.example/bye"])
    tokens = Journey(client, rp).tokens()
    return rp, tokens


def test_logout_with_hint_ends_the_session_and_redirects_exactly(client, factory):
    rp, tokens = _logged_in(client, factory)
    response = client.get("/logout", query_string={"id_token_hint": tokens["id_token"], "state": "s1",
                                                   "post_logout_redirect_uri": "https://rp.example/bye"})
    assert response.status_code == 302 and query_of(response.headers["Location"]) == {"state": "s1"}
    assert response.headers["Location"].startswith("https://rp.example/bye")
    assert Journey(client, rp).authorize().headers["Location"].startswith("/flows/login/")


def test_logout_never_redirects_to_an_unregistered_uri(client, factory):
    rp, tokens = _logged_in(client, factory)
    for uri in ("https://evil.example/", "https://rp.example/bye/", "https://rp.example/bye?x=1"):
        response = client.get("/logout", query_string={"id_token_hint": tokens["id_token"],
                                                       "post_logout_redirect_uri": uri})
        assert response.status_code == 200 and "Location" not in response.headers, uri


def test_logout_without_hint_asks_for_confirmation(client, factory):
    rp, _tokens = _logged_in(client, factory)
    page = client.get("/logout")
    assert page.status_code == 200 and "Vuoi uscire?" in page.text
    assert Journey(client, rp).authorize().headers["Location"].startswith("https://rp.example/cb")  # still in
    forged = client.post("/logout", data={"confirm": "yes"})
    assert "Vuoi uscire?" in forged.text  # no CSRF token: nothing happens
    done = client.post("/logout", data={"confirm": "yes", "csrf_token": csrf_of(page.text)})
    assert done.status_code == 200 and "Sei uscito" in done.text
    assert Journey(client, rp).authorize().headers["Location"].startswith("/flows/login/")


def test_logout_hint_of_another_session_needs_confirmation(client, factory, app):
    rp, tokens = _logged_in(client, factory)
    other_browser = app.test_client()
    from .helpers import LINE
    factory_other = factory
    Journey(other_browser, rp).tokens()  # a second session for the same account
    response = other_browser.get("/logout", query_string={"id_token_hint": tokens["id_token"]})
    assert "Vuoi uscire?" in response.text
    assert factory_other and LINE


def test_logout_with_a_forged_hint_is_an_error_page(client, factory):
    _logged_in(client, factory)
    response = client.get("/logout", query_string={"id_token_hint": "eyJhbGciOiJub25lIn0.e30.",
                                                   "post_logout_redirect_uri": "https://rp.example/bye"})
    assert response.status_code == 400 and "Location" not in response.headers
