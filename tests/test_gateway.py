"""Gateway trust for network autologin (issue 5 points 1 and 3): what is believed, what is a spoof."""
import time

import pytest

from idp import gateway
from idp.extensions import db
from idp.models import AuditEvent

from .gateway import GATEWAY_SETTINGS, signed_headers

LINE = "+393931234567"
TRUSTED = {"REMOTE_ADDR": "127.0.0.1"}
UNTRUSTED = {"REMOTE_ADDR": "192.0.2.10"}


@pytest.fixture
def gw_app(make_app):
    return make_app(**GATEWAY_SETTINGS)


def _identify(app, headers, environ=TRUSTED):
    with app.test_request_context(headers=headers, environ_base=environ):
        return gateway.identify()


def _spoofs(app):
    with app.app_context():
        return [e.details.get("reason") for e in db.session.query(AuditEvent).filter_by(type="autologin.spoof")]


def test_a_signed_header_from_the_gateway_is_believed(gw_app):
    identity = _identify(gw_app, signed_headers(LINE))
    assert identity is not None and identity.msisdn == LINE
    assert _spoofs(gw_app) == []


@pytest.mark.parametrize("make_headers,environ,reason", [
    (lambda: {"X-MSISDN": LINE}, UNTRUSTED, "untrusted_peer"),
    (lambda: signed_headers(LINE), UNTRUSTED, "untrusted_peer"),
    (lambda: {"X-MSISDN": LINE}, TRUSTED, "missing_signature"),
    (lambda: {**signed_headers(LINE), "X-MSISDN": "+393937654321"}, TRUSTED, "bad_signature"),
    (lambda: signed_headers(LINE, secret="another-secret-0123456789abcdefgh"), TRUSTED, "bad_signature"),
    (lambda: signed_headers(LINE, kid="unknown"), TRUSTED, "unknown_key"),
    (lambda: signed_headers(LINE, ts=int(time.time()) - 120), TRUSTED, "stale"),
    (lambda: signed_headers(LINE, ts=int(time.time()) + 120), TRUSTED, "stale"),
    (lambda: {**signed_headers(LINE), "X-MSISDN-Signature": "garbage"}, TRUSTED, "missing_signature"),
    (lambda: {"X-MSISDN": "not-a-number", "X-MSISDN-Signature": "kid=a;ts=1;nonce=b;sig=c"}, TRUSTED,
     "malformed_msisdn"),
    (lambda: {**signed_headers(LINE), "X-Nokia-MSISDN": LINE}, TRUSTED, "unexpected_header"),
    (lambda: {"x-msisdn": LINE}, UNTRUSTED, "untrusted_peer"),  # case variant
    (lambda: {"X_MSISDN": LINE}, UNTRUSTED, "untrusted_peer"),  # underscore variant folds into the same key
])
def test_spoofing_variants_are_ignored_and_logged(gw_app, make_headers, environ, reason):
    assert _identify(gw_app, make_headers(), environ) is None
    assert _spoofs(gw_app) == [reason]


def test_a_duplicated_header_is_refused(gw_app):
    headers = signed_headers(LINE)
    with gw_app.test_request_context(environ_base={**TRUSTED, "HTTP_X_MSISDN": f"{LINE}, +393937654321",
                                                   "HTTP_X_MSISDN_SIGNATURE": headers["X-MSISDN-Signature"]}):
        assert gateway.identify() is None
    assert _spoofs(gw_app) == ["duplicated_header"]


def test_a_replayed_signature_is_refused(gw_app):
    headers = signed_headers(LINE)
    assert _identify(gw_app, headers) is not None
    assert _identify(gw_app, headers) is None
    assert _spoofs(gw_app) == ["replayed"]


def test_without_configuration_autologin_is_off(app):
    assert _identify(app, signed_headers(LINE)) is None
    assert _spoofs(app) == ["autologin_off"]


def test_no_header_is_no_event(gw_app):
    assert _identify(gw_app, {}) is None and _spoofs(gw_app) == []


def test_xff_does_not_make_a_peer_trusted(make_app):
    app = make_app(**GATEWAY_SETTINGS, PROXY_FIX_HOPS=0)
    assert _identify(app, {**signed_headers(LINE), "X-Forwarded-For": "127.0.0.1"}, UNTRUSTED) is None
    assert _spoofs(app) == ["untrusted_peer"]


def test_per_line_rate_limit(make_app):
    app = make_app(**GATEWAY_SETTINGS, AUTOLOGIN_PER_LINE_PER_HOUR=2)
    assert _identify(app, signed_headers(LINE)) and _identify(app, signed_headers(LINE))
    assert _identify(app, signed_headers(LINE)) is None


def test_a_replay_counts_against_no_limit(make_app):
    """The nonce is taken and the limits counted in one step: a replayed header (which only a trusted peer can
    send) must not spend the line's hourly budget."""
    app = make_app(**GATEWAY_SETTINGS, AUTOLOGIN_PER_LINE_PER_HOUR=2)
    headers = signed_headers(LINE)
    assert _identify(app, headers)
    for _ in range(5):
        assert _identify(app, headers) is None
    assert _identify(app, signed_headers(LINE)), "the five replays spent nothing of the line's limit"
    assert _identify(app, signed_headers(LINE)) is None
    assert _spoofs(app) == ["replayed"] * 5


def test_per_address_rate_limit(make_app):
    app = make_app(**GATEWAY_SETTINGS, AUTOLOGIN_PER_ADDRESS_PER_HOUR=1)
    assert _identify(app, signed_headers(LINE))
    assert _identify(app, signed_headers("+393401112233")) is None


def test_the_nonce_script_survives_a_script_cache_flush(gw_app):
    """Redis forgets loaded scripts when it restarts (or SCRIPT FLUSH): the script is loaded again."""
    assert _identify(gw_app, signed_headers(LINE))
    with gw_app.app_context():
        from idp.store import store
        store().redis.script_flush()
    assert _identify(gw_app, signed_headers(LINE))


def test_spoof_events_mask_the_number(gw_app):
    _identify(gw_app, {"X-MSISDN": LINE}, UNTRUSTED)
    with gw_app.app_context():
        event = db.session.query(AuditEvent).filter_by(type="autologin.spoof").one()
        assert event.masked_line == "+39 393 ***4567" and event.client_address == "192.0.2.10"


@pytest.mark.parametrize("settings", [{"AUTOLOGIN_TRUSTED_CIDRS": ["0.0.0.0/0"]},
                                      {"AUTOLOGIN_TRUSTED_CIDRS": ["not-a-cidr"]},
                                      {"AUTOLOGIN_GATEWAY_KEYS": ["a"]}])
def test_bad_gateway_settings_are_refused(make_app, settings):
    from idp.config import ConfigError
    with pytest.raises(ConfigError):
        make_app(**settings)
