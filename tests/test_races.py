"""Atomic redemption (issue 2 point 8): 20 concurrent requests against a live, threaded server."""
import threading
from concurrent.futures import ThreadPoolExecutor

import requests
from sqlalchemy import func, select

from idp.extensions import db
from idp.models import Token

from .helpers import Journey, basic

RACERS = 20


def _race(url: str, data: dict, headers: dict) -> list[requests.Response]:
    barrier = threading.Barrier(RACERS)

    def one(_):
        with requests.Session() as session:
            barrier.wait(10)
            return session.post(url, data=data, headers=headers, timeout=30)

    with ThreadPoolExecutor(RACERS) as pool:
        return list(pool.map(one, range(RACERS)))


def test_twenty_concurrent_redemptions_of_one_code(live_server):
    factory = live_server.factory
    factory.account()
    rp = factory.rp()
    journey = Journey(live_server.app.test_client(), rp)
    code = journey.login_and_get_code()["code"]
    responses = _race(live_server.url + "/token",
                      {"grant_type": "authorization_code", "code": code, "redirect_uri": rp.redirect_uri,
                       "code_verifier": journey.verifier}, basic(rp.client_id, rp.secret))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 1, statuses
    losers = [r.json() for r in responses if r.status_code != 200]
    assert len(losers) == RACERS - 1 and all(body["error"] == "invalid_grant" for body in losers)
    winner = next(r.json() for r in responses if r.status_code == 200)
    # the code was replayed, so what it obtained is revoked (RFC 6749 §4.1.2)
    userinfo = requests.get(live_server.url + "/userinfo", timeout=10,
                            headers={"Authorization": "Bearer " + winner["access_token"]})
    assert userinfo.status_code == 401
    refresh = requests.post(live_server.url + "/token", timeout=10, headers=basic(rp.client_id, rp.secret),
                            data={"grant_type": "refresh_token", "refresh_token": winner["refresh_token"]})
    assert refresh.json()["error"] == "invalid_grant"


def test_twenty_concurrent_refreshes_of_one_token(live_server):
    factory = live_server.factory
    factory.account()
    rp = factory.rp()
    tokens = Journey(live_server.app.test_client(), rp).tokens()
    responses = _race(live_server.url + "/token",
                      {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                      basic(rp.client_id, rp.secret))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 1, statuses
    assert all(r.json()["error"] == "invalid_grant" for r in responses if r.status_code != 200)
    with live_server.app.app_context():
        issued = db.session.scalar(select(func.count()).select_from(Token).where(Token.grant_type == "refresh_token"))
    assert issued == 1  # exactly one new pair was minted
