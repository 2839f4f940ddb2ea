"""Throttling and temporary lockout (issue 4 point 3), against the real store."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from idp import lockout
from idp.extensions import db
from idp.models import AuditEvent

LINE = "+393931234567"


def test_fifty_concurrent_attempts_count_exactly_and_the_fifty_first_is_refused(make_app):
    app = make_app(LOCKOUT_THRESHOLD=50, LOCKOUT_FREE_FAILURES=1000)
    barrier = threading.Barrier(50)

    def attempt(n):
        with app.test_request_context():
            barrier.wait(10)
            try:
                ticket = lockout.take(LINE, f"10.0.{n // 250}.{n % 250}")
            except lockout.Locked:
                return False
            lockout.failed(ticket)
            return True

    with ThreadPoolExecutor(50) as pool:
        admitted = list(pool.map(attempt, range(50)))
    with app.test_request_context():
        assert admitted.count(True) == 50 and lockout.attempts(LINE) == 50
        with pytest.raises(lockout.Locked) as error:
            lockout.take(LINE, "10.9.9.9")
        assert error.value.locked and error.value.retry_after > 0
        assert lockout.attempts(LINE) == 50
    with app.app_context():
        assert db.session.query(AuditEvent).filter_by(type="account.locked").count() == 1


def test_progressive_delay_then_lock(make_app):
    app = make_app(LOCKOUT_THRESHOLD=6, LOCKOUT_FREE_FAILURES=2, LOCKOUT_MAX_DELAY=1, LOCKOUT_DURATION=2)
    with app.test_request_context():
        for _ in range(2):
            lockout.failed(lockout.take(LINE, "10.0.0.1"))
        lockout.failed(lockout.take(LINE, "10.0.0.1"))  # third failure: a delay starts
        with pytest.raises(lockout.Locked) as error:
            lockout.take(LINE, "10.0.0.1")
        assert not error.value.locked and error.value.retry_after == 1
        time.sleep(1.05)
        for _ in range(3):
            lockout.failed(lockout.take(LINE, "10.0.0.1"))
            time.sleep(1.05)
        with pytest.raises(lockout.Locked) as error:
            lockout.take(LINE, "10.0.0.1")
        assert error.value.locked
        time.sleep(2.1)
        lockout.take(LINE, "10.0.0.1")  # the lock is temporary


def test_success_clears_the_line(make_app):
    app = make_app(LOCKOUT_FREE_FAILURES=100)
    with app.test_request_context():
        for _ in range(5):
            lockout.failed(lockout.take(LINE, "10.0.0.1"))
        lockout.succeeded(lockout.take(LINE, "10.0.0.1"))
        assert lockout.attempts(LINE) == 0


def test_address_limit_spans_lines(make_app):
    app = make_app(LOCKOUT_THRESHOLD_ADDRESS=3, LOCKOUT_FREE_FAILURES=100)
    with app.test_request_context():
        for n in range(3):
            lockout.failed(lockout.take(f"+39393000000{n}", "10.0.0.7"))
        with pytest.raises(lockout.Locked):
            lockout.take("+393930000009", "10.0.0.7")
        lockout.take("+393930000009", "10.0.0.8")


def test_operator_clear(make_app):
    app = make_app(LOCKOUT_THRESHOLD=2, LOCKOUT_FREE_FAILURES=100)
    with app.test_request_context():
        for _ in range(2):
            lockout.failed(lockout.take(LINE, "10.0.0.1"))
        with pytest.raises(lockout.Locked):
            lockout.take(LINE, "10.0.0.1")
        assert lockout.clear(LINE)
        lockout.take(LINE, "10.0.0.1")


def test_cli_status_and_clear(make_app):
    app = make_app(LOCKOUT_THRESHOLD=2)
    with app.test_request_context():
        for _ in range(2):
            lockout.failed(lockout.take(LINE, "10.0.0.1"))
    runner = app.test_cli_runner()
    assert "2 attempts" in runner.invoke(args=["idp", "lockout", "status", "393 123 4567"]).output
    assert "unlocked" in runner.invoke(args=["idp", "lockout", "clear", "393 123 4567"]).output
    with app.test_request_context():
        lockout.take(LINE, "10.0.0.1")
    with app.app_context():
        assert db.session.query(AuditEvent).filter_by(type="account.unlocked").count() == 1


def test_successful_logins_do_not_lock_a_shared_address(make_app):
    app = make_app(LOCKOUT_THRESHOLD_ADDRESS=3, LOCKOUT_FREE_FAILURES=100)
    with app.test_request_context():
        for n in range(10):  # ten colleagues behind one NAT log in successfully
            lockout.succeeded(lockout.take(f"+39393000000{n}", "10.0.0.9"))
        for n in range(3):
            lockout.failed(lockout.take(f"+39393100000{n}", "10.0.0.9"))
        with pytest.raises(lockout.Locked):
            lockout.take("+393931000009", "10.0.0.9")
