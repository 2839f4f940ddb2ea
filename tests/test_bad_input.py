"""Bad input at every endpoint (issue 2 point 9): the RFC's error, an Italian page — never a 500."""
import pytest

from .helpers import Journey, basic

JUNK = ["", "x" * 5000, "\x00", "%ff%fe", "' OR 1=1 --", "<script>alert(1)</script>", "é" * 300, "a\r\nb"]

TOKEN_FORMS = [
    {},
    {"grant_type": "password", "username": "a", "password": "b"},
    {"grant_type": "authorization_code"},
    {"grant_type": "authorization_code", "code": "x" * 3000},
    {"grant_type": "refresh_token"},
    {"grant_type": "refresh_token", "refresh_token": "x" * 3000},
    {"grant_type": "client_credentials", "scope": "\x00"},
    {"grant_type": "urn:unknown"},
]


@pytest.mark.parametrize("form", TOKEN_FORMS)
def test_token_endpoint_answers_oauth_json(client, factory, form):
    rp = factory.rp(grant_types=("authorization_code", "refresh_token", "client_credentials"))
    for headers in ({}, basic(rp.client_id, rp.secret), basic("nobody", "x"), {"Authorization": "Basic %%%"},
                    {"Authorization": "Basic " + "A" * 5000}):
        response = client.post("/token", data=form, headers=headers)
        assert 400 <= response.status_code < 500, (form, headers, response.status_code)
        assert response.is_json and "error" in response.json
        assert response.headers.get("Cache-Control") == "no-store" or response.status_code != 200


@pytest.mark.parametrize("value", JUNK)
def test_junk_everywhere_is_never_a_500(client, factory, value):
    rp = factory.rp()
    requests = [
        ("get", "/authorize", {"query_string": {"response_type": "code", "client_id": value,
                                                "redirect_uri": value, "scope": value}}),
        ("get", "/authorize", {"query_string": {"response_type": value, "client_id": rp.client_id,
                                                "redirect_uri": rp.redirect_uri, "scope": "openid",
                                                "state": value, "nonce": value, "max_age": value,
                                                "prompt": value, "login_hint": value, "ui_locales": value,
                                                "code_challenge": value, "code_challenge_method": value}}),
        ("post", "/revoke", {"data": {"token": value}, "headers": basic(rp.client_id, rp.secret)}),
        ("post", "/introspect", {"data": {"token": value, "token_type_hint": value},
                                 "headers": basic(rp.client_id, rp.secret)}),
        ("get", "/userinfo", {"headers": {"Authorization": "Bearer " + value.replace("\r\n", "")}}),
        ("post", "/userinfo", {"data": {"access_token": value}}),
        ("get", "/logout", {"query_string": {"id_token_hint": value, "post_logout_redirect_uri": value,
                                             "client_id": value, "state": value}}),
        ("get", f"/flows/login/{value.replace('/', '') or 'x'}", {}),
        ("post", "/token", {"data": {"grant_type": value, "code": value}}),
    ]
    for method, path, kwargs in requests:
        response = getattr(client, method)(path, **kwargs)
        assert response.status_code < 500, (path, value, response.status_code)


def test_login_form_with_junk_values(client, factory):
    factory.account()
    journey = Journey(client, factory.rp())
    url = journey.authorize().headers["Location"]
    for value in JUNK:
        response = journey.submit_login(url, username=value, password=value)
        assert response.status_code in (200, 302), value
        if response.status_code == 200:
            assert "<script>alert(1)</script>" not in response.text  # escaped
    flooded = client.post(url, data={"username": "x" * 100000})
    assert flooded.status_code == 413


def test_wrong_methods_and_unknown_paths(client):
    assert client.get("/token").status_code == 405 and client.get("/token").is_json
    assert client.put("/authorize").status_code == 405
    page = client.get("/nowhere")
    assert page.status_code == 404 and "La pagina richiesta non esiste." in page.text


def test_json_body_at_the_token_endpoint_is_an_oauth_error(client, factory):
    rp = factory.rp(grant_types=("client_credentials",))
    response = client.post("/token", json={"grant_type": "client_credentials"},
                           headers=basic(rp.client_id, rp.secret))
    assert 400 <= response.status_code < 500 and response.json["error"]
