"""The audit log (issue 4 point 4): the receiver of security signals, and the CLI that reads it."""
import csv
import io
import json

from idp import audit, signals
from idp.extensions import db
from idp.models import AuditEvent

from .helpers import Journey, basic


def _events(app, kind=None):
    with app.app_context():
        rows = db.session.query(AuditEvent).order_by(AuditEvent.id).all()
        return [audit.as_dict(r) for r in rows if kind is None or r.type == kind]


def test_emit_writes_a_masked_row_with_request_facts(app):
    with app.test_request_context(headers={"X-Request-ID": "req-12345678", "User-Agent": "Test/1.0"},
                                  environ_base={"REMOTE_ADDR": "10.1.2.3"}):
        signals.emit(signals.CODE_SENT, line="+393931234567", account_id=7, channel="sms", code="123456",
                     password="hunter2")
    [event] = _events(app, signals.CODE_SENT)
    assert event["masked_line"] == "+39 393 ***4567" and event["account_id"] == 7
    assert event["client_address"] == "10.1.2.3" and event["user_agent"] == "Test/1.0"
    assert event["correlation_id"] == "req-12345678"
    assert event["details"] == {"channel": "sms"}  # code and password never reach the log


def test_a_malformed_request_id_is_replaced(app):
    with app.test_request_context(headers={"X-Request-ID": "bad id <script>"}):
        signals.emit(signals.LOGOUT)
    [event] = _events(app, signals.LOGOUT)
    assert event["correlation_id"] != "bad id <script>" and len(event["correlation_id"]) == 24


def test_the_event_survives_a_rolled_back_request(app, factory):
    factory.account()
    with app.test_request_context():
        from idp.models import Account
        account = db.session.query(Account).one()
        account.email = "changed@acme.example"
        signals.emit(signals.PASSWORD_CHANGED, account_id=account.id)
        db.session.rollback()
        assert db.session.query(Account).one().email != "changed@acme.example"  # not committed by the audit
    assert _events(app, signals.PASSWORD_CHANGED)


def test_code_reuse_and_refresh_reuse_are_recorded(app, client, factory):
    factory.account()
    journey = Journey(client, factory.rp())
    code = journey.login_and_get_code()["code"]
    tokens = journey.redeem(code).json
    journey.redeem(code)
    rp = journey.rp
    client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                headers=basic(rp.client_id, rp.secret))
    client.post("/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                headers=basic(rp.client_id, rp.secret))
    reuse = _events(app, signals.TOKEN_REUSE_DETECTED)
    assert [e["details"]["kind"] for e in reuse][:1] == ["authorization_code"]
    assert all(e["client_id"] == rp.client_id and e["outcome"] == "refused" for e in reuse)


def test_client_and_key_changes_are_recorded(make_app, tmp_path):
    app = make_app(KEYS_DIR=str(tmp_path / "keys"))
    runner = app.test_cli_runner()
    runner.invoke(args=["idp", "clients", "create", "--name", "X", "--grant-type", "client_credentials",
                        "--scope", "profile", "--client-id", "x-client"])
    runner.invoke(args=["idp", "clients", "disable", "x-client"])
    runner.invoke(args=["idp", "keys", "ensure"])
    types = [e["type"] for e in _events(app)]
    assert types.count(signals.CLIENT_CREATED) == 1 and types.count(signals.CLIENT_DISABLED) == 1
    assert types.count(signals.KEY_CHANGED) == 2
    assert all(e["correlation_id"].startswith("cli-") for e in _events(app))


def test_logout_is_recorded(app, client, factory):
    factory.account()
    tokens = Journey(client, factory.rp()).tokens()
    client.get("/logout", query_string={"id_token_hint": tokens["id_token"]})
    assert len(_events(app, signals.LOGOUT)) == 1


def test_cli_tail_and_export(app):
    with app.test_request_context():
        for n in range(3):
            signals.emit(signals.CODE_SENT, line=f"+39393123456{n}", channel="sms")
    runner = app.test_cli_runner()
    tail = runner.invoke(args=["idp", "audit", "tail", "-n", "2"])
    assert tail.exit_code == 0 and len(tail.output.strip().splitlines()) == 2
    assert "code.sent" in tail.output and "***4562" in tail.output
    jsonl = runner.invoke(args=["idp", "audit", "export", "--since", "2000-01-01", "--format", "jsonl"])
    rows = [json.loads(line) for line in jsonl.stdout.strip().splitlines() if line.startswith("{")]
    assert len(rows) == 3 and rows[0]["type"] == "code.sent"
    exported = runner.invoke(args=["idp", "audit", "export", "--since", "2000-01-01T00:00Z", "--format", "csv"])
    table = list(csv.DictReader(io.StringIO(exported.stdout.split("3 events")[0])))
    assert len(table) == 3 and table[0]["masked_line"].endswith("4560")
    future = runner.invoke(args=["idp", "audit", "export", "--since", "2999-01-01"])
    assert "0 events" in future.output
    bad = runner.invoke(args=["idp", "audit", "export", "--since", "yesterday"])
    assert bad.exit_code != 0
