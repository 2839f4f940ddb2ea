"""The authorization endpoint (issue 2 points 5, 7 and 9): prompt, max_age, login_hint, errors."""
import time

import pytest

from .helpers import Journey, query_of


def _login_started(response) -> bool:
    return response.status_code == 302 and response.headers["Location"].startswith("/flows/login/")


def test_unauthenticated_request_starts_the_login_flow(client, factory):
    response = Journey(client, factory.rp()).authorize()
    assert _login_started(response)


def test_prompt_none_without_session_redirects_login_required(app, client, factory):
    journey = Journey(client, factory.rp())
    response = journey.authorize(prompt="none")
    params = query_of(response.headers["Location"])
    assert response.headers["Location"].startswith(journey.rp.redirect_uri)
    assert params["error"] == "login_required" and params["state"] == journey.last_params["state"]
    assert params["iss"] == app.config["ISSUER"]


def test_prompt_none_with_session_issues_a_code(client, factory):
    factory.account()
    rp = factory.rp()
    Journey(client, rp).tokens()
    response = Journey(client, rp).authorize(prompt="none")
    assert "code" in query_of(response.headers["Location"])


def test_prompt_login_forces_a_new_login_once(client, factory):
    factory.account()
    rp = factory.rp()
    Journey(client, rp).tokens()
    journey = Journey(client, rp)
    first = journey.authorize(prompt="login")
    assert _login_started(first)
    back = journey.submit_login(first.headers["Location"])
    done = client.get(back.headers["Location"])  # the same request, now satisfied: no loop
    assert "code" in query_of(done.headers["Location"])
    again = Journey(client, rp).authorize(prompt="login")
    assert _login_started(again)


def test_max_age(client, factory):
    factory.account()
    rp = factory.rp()
    Journey(client, rp).tokens()
    assert "code" in query_of(Journey(client, rp).authorize(max_age="3600").headers["Location"])
    time.sleep(1.1)
    journey = Journey(client, rp)
    stale = journey.authorize(max_age="0")
    assert _login_started(stale)
    back = journey.submit_login(stale.headers["Location"])
    done = client.get(back.headers["Location"])
    assert "code" in query_of(done.headers["Location"])


def test_invalid_max_age_is_an_error_for_the_client(client, factory):
    factory.account()
    rp = factory.rp()
    Journey(client, rp).tokens()
    response = Journey(client, rp).authorize(max_age="yesterday")
    assert query_of(response.headers["Location"])["error"] == "invalid_request"


def test_prompt_none_with_login_is_invalid(client, factory):
    factory.account()
    rp = factory.rp()
    Journey(client, rp).tokens()
    response = Journey(client, rp).authorize(prompt="none login")
    assert query_of(response.headers["Location"])["error"] == "invalid_request"


def test_login_hint_prefills_the_normalised_line(client, factory):
    response = Journey(client, factory.rp()).authorize(login_hint="0039 393 123 4567")
    page = client.get(response.headers["Location"])
    assert 'value="+393931234567"' in page.text


def test_unknown_client_gets_a_page_and_no_redirect(client, factory):
    journey = Journey(client, factory.rp())
    response = journey.authorize(client_id="nobody")
    assert response.status_code == 400 and "Location" not in response.headers
    assert "Richiesta non valida" in response.text


def test_unregistered_redirect_uri_gets_a_page_and_no_redirect(client, factory):
    journey = Journey(client, factory.rp())
    for uri in ("https://evil.example/cb", "https://rp.example/cb/../x", "https://rp.example/cb?x=1"):
        response = journey.authorize(redirect_uri=uri)
        assert response.status_code == 400 and "Location" not in response.headers, uri


def test_missing_redirect_uri_uses_the_only_registered_one(client, factory):
    factory.account()
    journey = Journey(client, factory.rp())
    params = journey.login_and_get_code(redirect_uri=None)
    assert "code" in params


@pytest.mark.parametrize("extra,error", [
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"scope": "openid admin"}, "invalid_scope"),
])
def test_bad_requests_from_a_known_client_redirect_with_the_error(client, factory, extra, error):
    journey = Journey(client, factory.rp())
    response = journey.authorize(**extra)
    if response.status_code == 400:  # Authlib refuses to redirect unsupported response types (open-redirect fix)
        assert error == "unsupported_response_type" and "Location" not in response.headers
    else:
        assert query_of(response.headers["Location"])["error"] == error


def test_repeated_parameters_are_refused(client, factory):
    rp = factory.rp()
    response = client.get(f"/authorize?response_type=code&client_id={rp.client_id}&client_id={rp.client_id}"
                          f"&redirect_uri={rp.redirect_uri}&scope=openid")
    assert response.status_code in (302, 400)
    if response.status_code == 302:
        assert query_of(response.headers["Location"])["error"] == "invalid_request"


def test_nonce_cannot_be_replayed(client, factory):
    factory.account()
    rp = factory.rp()
    Journey(client, rp).tokens(nonce="same-nonce")
    response = Journey(client, rp).authorize(nonce="same-nonce")
    assert query_of(response.headers["Location"])["error"] == "invalid_request"


def test_post_to_authorize_is_accepted(client, factory):
    rp = factory.rp()
    journey = Journey(client, rp)
    response = client.post("/authorize", data=journey.params())
    assert response.status_code == 303
    assert _login_started(client.get(response.headers["Location"]))
