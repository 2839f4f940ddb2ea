"""Userinfo and introspection answered before Flask (idp/fastpaths.py, issue 8): the same answers as the Flask
views, byte for byte and header for header; anything unusual goes on to Flask with its body intact."""
from contextlib import contextmanager

import pytest
from flask import request_started

from .helpers import Factory, Journey, basic

COMPARED_HEADERS = ("Content-Type", "Cache-Control", "Pragma", "WWW-Authenticate", "X-Content-Type-Options",
                    "Strict-Transport-Security", "Content-Length", "Set-Cookie", "Vary")


@pytest.fixture
def setup(make_app):
    app = make_app(METRICS_TOKEN="m" * 32)
    factory = Factory(app)
    factory.account()
    rp = factory.rp(scope="openid profile email phone lines")
    resource_server = factory.rp(name="API", redirect_uri=None, grant_types=("client_credentials",),
                                 scope="profile", may_introspect=True)
    client = app.test_client()
    tokens = Journey(client, rp).tokens(scope="openid profile email phone lines")
    return app, client, rp, resource_server, tokens


@contextmanager
def flask_requests(app):
    """How many requests reached Flask inside the block."""
    seen = []
    with request_started.connected_to(lambda sender, **extra: seen.append(1), app):
        yield seen


def headers_of(response) -> dict:
    return {name: response.headers.get(name) for name in COMPARED_HEADERS}


def test_userinfo_with_a_bearer_header_is_answered_before_flask_as_flask_answers(setup):
    app, client, _rp, _rs, tokens = setup
    with flask_requests(app) as reached:
        fast = client.get("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]})
    assert reached == [] and fast.status_code == 200
    with flask_requests(app) as reached:  # the token in the body: Flask's view
        slow = client.post("/userinfo", data={"access_token": tokens["access_token"]})
    assert reached == [1] and slow.status_code == 200
    assert fast.data == slow.data and headers_of(fast) == headers_of(slow)
    assert set(fast.json) >= {"sub", "phone_number", "email", "customer_code", "lines"}


@pytest.mark.parametrize("mangle, status", [(lambda t: t[:-4] + "AAAA", 401), (lambda t: t + ".x", 401)])
def test_userinfo_refusals_before_flask_match_flasks(setup, mangle, status):
    app, client, _rp, _rs, tokens = setup
    bad = mangle(tokens["access_token"])
    fast = client.get("/userinfo", headers={"Authorization": "Bearer " + bad})
    slow = client.post("/userinfo", data={"access_token": bad})
    assert fast.status_code == slow.status_code == status
    assert fast.data == slow.data and headers_of(fast) == headers_of(slow)
    assert 'error="invalid_token"' in fast.headers["WWW-Authenticate"]


def test_a_token_without_openid_is_refused_before_flask_with_insufficient_scope(setup, make_app):
    app, client, _rp, resource_server, _tokens = setup
    issued = client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"},
                         headers=basic(resource_server.client_id, resource_server.secret))
    with flask_requests(app) as reached:
        fast = client.get("/userinfo", headers={"Authorization": "Bearer " + issued.json["access_token"]})
    assert reached == [] and fast.status_code == 403
    assert fast.json["error"] == "insufficient_scope"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}])
def test_userinfo_without_a_bearer_token_goes_to_flask(setup, headers):
    app, client, *_ = setup
    with flask_requests(app) as reached:
        response = client.get("/userinfo", headers=headers)
    assert reached == [1] and response.status_code == 401


def test_introspection_with_client_secret_basic_is_answered_before_flask_as_flask_answers(setup):
    app, client, _rp, rs, tokens = setup
    for token in (tokens["access_token"], tokens["refresh_token"], "not-a-token"):
        with flask_requests(app) as reached:
            fast = client.post("/introspect", data={"token": token, "token_type_hint": "access_token"},
                               headers=basic(rs.client_id, rs.secret))
        assert reached == [] and fast.status_code == 200
        with flask_requests(app) as reached:  # a parameter the fast path does not take: Flask and Authlib
            slow = client.post("/introspect", data={"token": token, "extra": "1"},
                               headers=basic(rs.client_id, rs.secret))
        assert reached == [1] and slow.status_code == 200
        assert fast.data == slow.data and headers_of(fast) == headers_of(slow)
    assert client.post("/introspect", data={"token": tokens["access_token"]},
                       headers=basic(rs.client_id, rs.secret)).json["active"] is True


def test_introspection_of_a_revoked_token_before_flask_is_inactive(setup):
    app, client, rp, rs, tokens = setup
    assert client.post("/revoke", data={"token": tokens["access_token"]},
                       headers=basic(rp.client_id, rp.secret)).status_code == 200
    response = client.post("/introspect", data={"token": tokens["access_token"]},
                           headers=basic(rs.client_id, rs.secret))
    assert response.json == {"active": False}


@pytest.mark.parametrize("case", ["wrong secret", "unknown client", "no token", "token twice", "json body",
                                  "not utf-8", "client_secret_post"])
def test_unusual_introspection_requests_go_to_flask_with_their_body(setup, case):
    app, client, rp, rs, tokens = setup
    token = tokens["access_token"]
    kwargs = {"data": {"token": token}, "headers": basic(rs.client_id, rs.secret)}
    expected = 200
    if case == "wrong secret":
        kwargs["headers"], expected = basic(rs.client_id, "wrong"), 401
    elif case == "unknown client":
        kwargs["headers"], expected = basic("nobody", "secret"), 401
    elif case == "no token":
        kwargs["data"], expected = {"token_type_hint": "access_token"}, 400
    elif case == "token twice":
        kwargs["data"] = f"token={token}&token={token}"
        kwargs["content_type"] = "application/x-www-form-urlencoded"
    elif case == "json body":
        kwargs = {"json": {"token": token}, "headers": basic(rs.client_id, rs.secret)}
        expected = 400
    elif case == "not utf-8":
        kwargs["data"], kwargs["content_type"] = b"token=\xff\xfe", "application/x-www-form-urlencoded"
        expected = 400
    elif case == "client_secret_post":
        kwargs = {"data": {"token": token, "client_id": rs.client_id, "client_secret": rs.secret}}
        expected = 401  # the client is registered for client_secret_basic
    with flask_requests(app) as reached:
        response = client.post("/introspect", **kwargs)
    assert reached == [1], case
    assert response.status_code == expected, (case, response.data)
    if case == "token twice":
        assert response.json["active"] is True  # Flask read the body the fast path had read


def test_requests_answered_before_flask_are_counted_in_the_metrics(setup):
    app, client, _rp, rs, tokens = setup
    client.get("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]})
    client.post("/introspect", data={"token": tokens["access_token"]}, headers=basic(rs.client_id, rs.secret))
    metrics = client.get("/metrics", headers={"Authorization": "Bearer " + "m" * 32}).text
    assert 'idp_requests_total{endpoint="oauth.userinfo",method="GET",status="200"}' in metrics
    assert 'idp_requests_total{endpoint="oauth.introspect",method="POST",status="200"}' in metrics


def test_client_credentials_with_client_secret_basic_is_issued_before_flask_as_authlib_issues_it(setup):
    app, client, _rp, rs, _tokens = setup
    with flask_requests(app) as reached:
        fast = client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"},
                           headers=basic(rs.client_id, rs.secret))
    assert reached == [] and fast.status_code == 200
    assert set(fast.json) == {"access_token", "token_type", "expires_in", "scope"} and fast.json["scope"] == "profile"
    assert headers_of(fast)["Cache-Control"] == "no-store" and headers_of(fast)["Pragma"] == "no-cache"
    introspected = client.post("/introspect", data={"token": fast.json["access_token"]},
                               headers=basic(rs.client_id, rs.secret)).json
    assert introspected["active"] is True and introspected["client_id"] == rs.client_id


def test_client_credentials_before_flask_and_through_authlib_give_the_same_kind_of_answer(setup):
    """The same request once before Flask and once through Authlib (forced by an unknown extra parameter, which
    Authlib ignores): the same keys, values and headers but for the token itself."""
    app, client, _rp, rs, _tokens = setup
    fast = client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"},
                       headers=basic(rs.client_id, rs.secret))
    with flask_requests(app) as reached:
        slow = client.post("/token", data={"grant_type": "client_credentials", "scope": "profile", "x": "1"},
                           headers=basic(rs.client_id, rs.secret))
    assert reached == [1] and slow.status_code == 200
    assert list(fast.json) == list(slow.json)
    assert {k: v for k, v in fast.json.items() if k != "access_token"} == \
        {k: v for k, v in slow.json.items() if k != "access_token"}
    assert headers_of(fast) | {"Content-Length": None} == headers_of(slow) | {"Content-Length": None}


@pytest.mark.parametrize("data, status, error", [
    ({"grant_type": "client_credentials", "scope": "openid"}, 400, "invalid_scope"),
    ({"grant_type": "client_credentials", "scope": "email"}, 400, "invalid_scope"),  # not registered for it
    ({"grant_type": "client_credentials", "scope": "nonsense"}, 400, "invalid_scope"),
    ({"grant_type": "password", "username": "x", "password": "y"}, 400, "unsupported_grant_type"),
])
def test_refused_client_credentials_requests_go_to_flask(setup, data, status, error):
    app, client, _rp, rs, _tokens = setup
    with flask_requests(app) as reached:
        response = client.post("/token", data=data, headers=basic(rs.client_id, rs.secret))
    assert reached == [1] and response.status_code == status and response.json["error"] == error


def test_a_client_not_registered_for_client_credentials_goes_to_flask(setup):
    app, client, rp, _rs, _tokens = setup
    with flask_requests(app) as reached:
        response = client.post("/token", data={"grant_type": "client_credentials"}, headers=basic(rp.client_id,
                                                                                                 rp.secret))
    assert reached == [1] and response.json["error"] == "unauthorized_client"


def test_revocation_with_client_secret_basic_is_answered_before_flask_as_authlib_answers(setup):
    app, client, rp, _rs, tokens = setup
    with flask_requests(app) as reached:
        fast = client.post("/revoke", data={"token": tokens["access_token"], "token_type_hint": "access_token"},
                           headers=basic(rp.client_id, rp.secret))
    assert reached == [] and fast.status_code == 200 and fast.json == {}
    assert client.get("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]}).status_code == 401
    with flask_requests(app) as reached:  # an extra parameter: Authlib answers, for comparison
        slow = client.post("/revoke", data={"token": "unknown", "x": "1"}, headers=basic(rp.client_id, rp.secret))
    assert reached == [1] and slow.status_code == 200
    assert fast.data == slow.data and headers_of(fast) == headers_of(slow)
    refreshed = client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                            headers=basic(rp.client_id, rp.secret))
    assert refreshed.status_code == 200  # revoking the access token alone keeps the grant (RFC 7009 §2.1)


def test_revoking_another_clients_token_goes_to_flask_and_is_refused(setup):
    app, client, _rp, rs, tokens = setup
    with flask_requests(app) as reached:
        response = client.post("/revoke", data={"token": tokens["refresh_token"]},
                               headers=basic(rs.client_id, rs.secret))
    assert reached == [1] and response.status_code == 400 and response.json["error"] == "invalid_grant"
    assert client.get("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]}).status_code == 200


def _refresh(client, rp, refresh_token, **extra):
    return client.post("/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token, **extra},
                       headers=basic(rp.client_id, rp.secret))


def test_refresh_with_client_secret_basic_is_rotated_before_flask_as_authlib_rotates_it(setup):
    app, client, rp, _rs, tokens = setup
    with flask_requests(app) as reached:
        fast = _refresh(client, rp, tokens["refresh_token"])
    assert reached == [] and fast.status_code == 200
    with flask_requests(app) as reached:  # an extra parameter: Authlib's grant, for comparison
        slow = _refresh(client, rp, fast.json["refresh_token"], x="1")
    assert reached == [1] and slow.status_code == 200
    assert list(fast.json) == list(slow.json) == ["access_token", "expires_in", "id_token", "refresh_token", "scope",
                                                  "token_type"]
    assert headers_of(fast) | {"Content-Length": None} == headers_of(slow) | {"Content-Length": None}
    from joserfc import jwt
    from joserfc.jwk import KeySet
    keys = KeySet.import_key_set(client.get("/jwks.json").json)
    fast_id, slow_id = (jwt.decode(r.json["id_token"], keys).claims for r in (fast, slow))
    for name in ("iss", "sub", "aud", "auth_time", "acr", "amr", "sid", "phone_number", "email"):
        assert fast_id.get(name) == slow_id.get(name), name
    assert client.get("/userinfo", headers={"Authorization": "Bearer " + fast.json["access_token"]}).status_code == 200


def test_a_rotated_refresh_token_presented_again_goes_to_flask_and_ends_the_family(setup):
    app, client, rp, _rs, tokens = setup
    rotated = _refresh(client, rp, tokens["refresh_token"]).json
    with flask_requests(app) as reached:
        again = _refresh(client, rp, tokens["refresh_token"])
    assert reached == [1] and again.status_code == 400 and again.json["error"] == "invalid_grant"
    assert client.get("/userinfo", headers={"Authorization": "Bearer " + rotated["access_token"]}).status_code == 401
    assert _refresh(client, rp, rotated["refresh_token"]).status_code == 400


def test_refresh_scopes_narrow_before_flask_and_a_wider_one_goes_to_flask(setup):
    app, client, rp, _rs, tokens = setup
    with flask_requests(app) as reached:
        narrowed = _refresh(client, rp, tokens["refresh_token"], scope="openid phone")
    assert reached == [] and narrowed.status_code == 200 and narrowed.json["scope"] == "openid phone"
    with flask_requests(app) as reached:
        wider = _refresh(client, rp, narrowed.json["refresh_token"], scope="openid phone nonsense")
    assert reached == [1] and wider.status_code == 400 and wider.json["error"] == "invalid_scope"


def test_code_redemption_with_client_secret_basic_is_answered_before_flask_as_authlib_answers(setup):
    app, client, rp, _rs, _tokens = setup
    journey = Journey(client, rp)
    first = journey.login_and_get_code(scope="openid phone email")["code"]
    with flask_requests(app) as reached:
        fast = journey.redeem(first)
    assert reached == [] and fast.status_code == 200
    second = Journey(client, rp)
    code = second.login_and_get_code(scope="openid phone email")["code"]
    with flask_requests(app) as reached:  # an extra parameter: Authlib's grant, for comparison
        slow = second.redeem(code, x="1")
    assert reached == [1] and slow.status_code == 200
    assert list(fast.json) == list(slow.json)
    assert headers_of(fast) | {"Content-Length": None} == headers_of(slow) | {"Content-Length": None}
    from joserfc import jwt
    from joserfc.jwk import KeySet
    keys = KeySet.import_key_set(client.get("/jwks.json").json)
    fast_id, slow_id = (jwt.decode(r.json["id_token"], keys).claims for r in (fast, slow))
    assert set(fast_id) == set(slow_id) and fast_id["sub"] == slow_id["sub"] and fast_id["phone_number"]


@pytest.mark.parametrize("change", ["wrong verifier", "no verifier", "other redirect_uri"])
def test_a_code_redemption_that_fails_its_checks_goes_to_flask_which_refuses_it(setup, change):
    app, client, rp, _rs, _tokens = setup
    journey = Journey(client, rp)
    code = journey.login_and_get_code(scope="openid phone")["code"]
    extra = {"wrong verifier": {"code_verifier": "x" * 43}, "no verifier": {"code_verifier": ""},
             "other redirect_uri": {"redirect_uri": "https://rp.example/other"}}[change]
    with flask_requests(app) as reached:
        response = journey.redeem(code, **extra)
    assert reached == [1] and response.status_code == 400
    assert response.json["error"] == ("invalid_request" if change == "no verifier" else "invalid_grant")
    # Flask went on with the code the fast lane took: not seen as a second presentation (no reuse, nothing ended)
    from idp.extensions import db
    from idp.models import AuditEvent
    with app.app_context():
        assert db.session.query(AuditEvent).filter_by(type="token.reuse_detected").count() == 0
    assert journey.redeem(code).json["error"] == "invalid_grant", "taken once: a later presentation is refused"


def test_a_code_presented_twice_goes_to_flask_the_second_time_and_ends_the_family(setup):
    app, client, rp, _rs, _tokens = setup
    journey = Journey(client, rp)
    code = journey.login_and_get_code(scope="openid phone")["code"]
    issued = journey.redeem(code).json
    with flask_requests(app) as reached:
        again = journey.redeem(code)
    assert reached == [1] and again.status_code == 400 and again.json["error"] == "invalid_grant"
    assert client.get("/userinfo", headers={"Authorization": "Bearer " + issued["access_token"]}).status_code == 401


@pytest.fixture
def native(make_app):
    from .gateway import GATEWAY_SETTINGS
    app = make_app(**GATEWAY_SETTINGS)
    factory = Factory(app)
    factory.account()
    my3 = factory.rp(name="My3", redirect_uri=None, auth_method="none", first_party=True, native_login=True,
                     grant_types=("authorization_code", "refresh_token", NETWORK_GRANT), scope="openid phone profile")
    return app, app.test_client(), my3


NETWORK_GRANT = "urn:selfcare:params:oauth:grant-type:network"


def _network(client, my3, headers, **extra):
    return client.post("/token", data={"grant_type": NETWORK_GRANT, "client_id": my3.client_id,
                                       "scope": "openid phone", **extra}, headers=headers)


def _audit(app, event_type):
    from idp.extensions import db
    from idp.models import AuditEvent
    with app.app_context():
        return db.session.query(AuditEvent).filter_by(type=event_type).order_by(AuditEvent.id).all()


def test_the_network_grant_is_answered_before_flask_as_authlib_answers(native):
    from .gateway import signed_headers
    from .helpers import LINE
    app, client, my3 = native
    with flask_requests(app) as reached:
        fast = _network(client, my3, {**signed_headers(LINE), "X-Request-ID": "req-fast-0001",
                                      "User-Agent": "My3/7.1"})
    with flask_requests(app) as reached_slow:  # an extra parameter: Authlib's grant, for comparison
        slow = _network(client, my3, signed_headers(LINE), x="1")
    assert reached == [] and reached_slow == [1] and fast.status_code == slow.status_code == 200
    assert list(fast.json) == list(slow.json) == ["access_token", "expires_in", "id_token", "refresh_token", "scope",
                                                  "token_type"]
    assert headers_of(fast) | {"Content-Length": None} == headers_of(slow) | {"Content-Length": None}
    assert fast.headers["X-Request-ID"] == "req-fast-0001"  # as Flask's answer carries it once an event is recorded
    from joserfc import jwt
    from joserfc.jwk import KeySet
    keys = KeySet.import_key_set(client.get("/jwks.json").json)
    fast_id, slow_id = (jwt.decode(r.json["id_token"], keys).claims for r in (fast, slow))
    assert set(fast_id) == set(slow_id) and fast_id["acr"] == "urn:selfcare:acr:network" and fast_id["amr"] == ["mno"]
    logins = _audit(app, "login.succeeded")
    assert len(logins) == 2 and logins[0].correlation_id == "req-fast-0001"
    assert logins[0].client_address == logins[1].client_address == "127.0.0.1"
    assert logins[0].user_agent == "My3/7.1" and logins[0].details["via"] == "network_grant"


def test_an_ineligible_line_goes_to_flask_identified_once(native):
    """The nonce is spent by the lane before Flask; Flask goes on with that identity instead of meeting its own
    nonce again (which would be logged as a replay)."""
    from .gateway import signed_headers
    app, client, my3 = native
    with flask_requests(app) as reached:
        response = _network(client, my3, signed_headers("+393930000077"))
    assert reached == [1] and response.status_code == 400 and response.json["error"] == "invalid_grant"
    assert _audit(app, "autologin.spoof") == []


@pytest.mark.parametrize("case", ["no signature", "secret sent", "other scope", "not first party"])
def test_unusual_network_grant_requests_go_to_flask(native, case):
    from .gateway import signed_headers
    from .helpers import LINE
    app, client, my3 = native
    headers, extra = signed_headers(LINE), {}
    if case == "no signature":
        headers = {"X-MSISDN": LINE}
    elif case == "secret sent":
        headers["Authorization"] = basic(my3.client_id, "x" * 40)
    elif case == "other scope":
        extra = {"scope": "openid lines"}
    else:
        other = Factory(app).rp(name="Other", auth_method="none", grant_types=("authorization_code",), scope="openid")
        my3 = other
    with flask_requests(app) as reached:
        response = _network(client, my3, headers, **extra)
    assert reached == [1] and response.status_code < 500  # Flask's answer, whatever it is (Authlib's rules)
