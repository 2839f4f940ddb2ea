"""One-time codes (issue 3 point 7) and the rate-limit counters under them."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from idp import otp, ratelimit
from idp.store import store


@pytest.fixture
def ctx(app):
    with app.test_request_context():
        yield app


def test_codes_are_numeric_six_digits_and_random(ctx):
    codes = {otp.new_code() for _ in range(200)}
    assert all(len(c) == 6 and c.isdigit() for c in codes)
    assert len(codes) > 190


def test_code_is_single_use(ctx):
    code = otp.issue("flow1", "register", "+393931234567")
    otp.verify("flow1", "register", "+393931234567", code)
    with pytest.raises(otp.OtpError):
        otp.verify("flow1", "register", "+393931234567", code)


def test_code_is_bound_to_flow_purpose_and_destination(ctx):
    code = otp.issue("flow1", "register", "+393931234567")
    for flow, purpose, destination in (("flow2", "register", "+393931234567"),
                                       ("flow1", "recovery", "+393931234567"),
                                       ("flow1", "register", "+393937654321")):
        with pytest.raises(otp.OtpError):
            otp.verify(flow, purpose, destination, code)


def test_code_is_stored_only_as_an_hmac(ctx):
    code = otp.issue("flow1", "register", "+393931234567")
    raw = store().redis.get(store().key("otp:flow1:register"))
    assert code not in raw and "+393931234567" not in raw


def test_code_expires(make_app):
    app = make_app(OTP_TTL=1)
    with app.test_request_context():
        code = otp.issue("f", "p", "d")
        time.sleep(1.2)
        with pytest.raises(otp.OtpError):
            otp.verify("f", "p", "d", code)


def test_five_wrong_tries_destroy_the_code(ctx):
    code = otp.issue("f", "p", "d")
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(4):
        with pytest.raises(otp.OtpError) as error:
            otp.verify("f", "p", "d", wrong)
        assert not isinstance(error.value, otp.OtpExhausted)
    with pytest.raises(otp.OtpExhausted):
        otp.verify("f", "p", "d", wrong)
    with pytest.raises(otp.OtpError):
        otp.verify("f", "p", "d", code)  # even the right code is gone now


def test_concurrent_guesses_never_exceed_the_attempt_limit(make_app):
    app = make_app()
    with app.test_request_context():
        code = otp.issue("f", "p", "d")
    guesses = [f"{n:06d}" for n in range(40) if f"{n:06d}" != code]
    barrier = threading.Barrier(20)
    outcomes = []

    def guess(value):
        with app.test_request_context():
            barrier.wait(10)
            try:
                otp.verify("f", "p", "d", value)
                return "ok"
            except otp.OtpExhausted:
                return "exhausted"
            except otp.OtpError as error:
                return str(error)  # "wrong code" (compared) or "no code" (already destroyed)

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(guess, guesses[:20]))
    # only the first tries counted were compared; the rest found the code destroyed
    assert outcomes.count("wrong code") <= app.config["OTP_MAX_ATTEMPTS"] - 1
    assert "exhausted" in outcomes and "ok" not in outcomes
    with app.test_request_context():
        with pytest.raises(otp.OtpError):
            otp.verify("f", "p", "d", code)


def test_a_new_code_replaces_the_old_one(ctx):
    first = otp.issue("f", "p", "d")
    second = otp.issue("f", "p", "d")
    if first != second:
        with pytest.raises(otp.OtpError):
            otp.verify("f", "p", "d", first)
    otp.verify("f", "p", "d", second)


def test_send_limits_cooldown_and_hourly_caps(make_app):
    app = make_app(OTP_RESEND_COOLDOWN=30, OTP_SENDS_PER_HOUR_DESTINATION=3, OTP_SENDS_PER_HOUR_ADDRESS=5)
    with app.test_request_context():
        otp.check_send_limits("+393931234567", "10.0.0.1")
        with pytest.raises(ratelimit.RateLimited) as error:
            otp.check_send_limits("+393931234567", "10.0.0.1")
        assert error.value.name == "otp-resend" and 0 < error.value.retry_after <= 30
    app = make_app(OTP_RESEND_COOLDOWN=0, OTP_SENDS_PER_HOUR_DESTINATION=3, OTP_SENDS_PER_HOUR_ADDRESS=5)
    with app.test_request_context():
        for _ in range(3):
            otp.check_send_limits("+393937654321", "10.0.0.2")
        with pytest.raises(ratelimit.RateLimited) as error:
            otp.check_send_limits("+393937654321", "10.0.0.2")
        assert error.value.name == "otp-send-destination"
        for n in range(2):
            otp.check_send_limits(f"+39393000000{n}", "10.0.0.2")
        with pytest.raises(ratelimit.RateLimited) as error:
            otp.check_send_limits("+393930000009", "10.0.0.2")
        assert error.value.name == "otp-send-address"


def test_rate_limit_keys_hold_no_clear_identifiers(ctx):
    ratelimit.hit("login", "+393931234567", 10, 60)
    keys = list(store().redis.scan_iter(store().prefix + "rl:*"))
    assert keys and all("393931234567" not in k for k in keys)


def test_concurrent_hits_are_counted_exactly(make_app):
    app = make_app()
    barrier = threading.Barrier(25)

    def one(_):
        with app.test_request_context():
            barrier.wait(10)
            try:
                ratelimit.hit("x", "subject", 10, 60)
                return True
            except ratelimit.RateLimited:
                return False

    with ThreadPoolExecutor(25) as pool:
        allowed = list(pool.map(one, range(25)))
    assert allowed.count(True) == 10


def test_an_undelivered_code_does_not_hold_back_the_retry(make_app):
    app = make_app(OTP_RESEND_COOLDOWN=30)
    with app.test_request_context():
        otp.check_send_limits("+393931234567", "10.0.0.1")
        otp.delivery_failed("+393931234567")
        otp.check_send_limits("+393931234567", "10.0.0.1")  # allowed at once
        with pytest.raises(ratelimit.RateLimited):
            otp.check_send_limits("+393931234567", "10.0.0.1")


def test_tries_across_flows_are_capped_per_destination(make_app):
    app = make_app(OTP_TRIES_PER_HOUR_DESTINATION=3)
    with app.test_request_context():
        for flow in ("a", "b", "c"):
            code = otp.issue(flow, "p", "+393931234567")
            with pytest.raises(otp.OtpError):
                otp.verify(flow, "p", "+393931234567", "000000" if code != "000000" else "111111")
        code = otp.issue("d", "p", "+393931234567")
        with pytest.raises(otp.OtpExhausted):
            otp.verify("d", "p", "+393931234567", code)  # even the right code, past the hourly cap
