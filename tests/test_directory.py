"""The directory and its operators' tools (SPEC §2, §5; issue 3 point 1): import, show, the outbox CLI and page.

Files are imported through the real command (``flask --app wsgi idp directory import``) into the configured
database; the shipped examples in ``examples/`` are imported as they are.
"""
import json
import os

import pytest
from sqlalchemy import func, select

from idp import registration, senders
from idp.directory import CustomerInfo, directory, import_rows, parse_file
from idp.extensions import db
from idp.models import Customer, Line

from .helpers import LINE

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
HEADER = "kind,customer_code,name,email,email_domain,msisdn,sim_type,status,sim_pin\n"


def run(app, *args):
    """The command's result; ``output`` holds stdout and stderr as a terminal shows them (Click ≥ 8.2)."""
    return app.test_cli_runner().invoke(args=list(args))


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def counts(app):
    with app.app_context():
        return (db.session.scalar(select(func.count()).select_from(Customer)),
                db.session.scalar(select(func.count()).select_from(Line)))


def line_row(app, number):
    with app.app_context():
        return db.session.scalar(select(Line).where(Line.msisdn == number))


# import ----------------------------------------------------------------------------------------------------------

def test_import_the_csv_example(app):
    result = run(app, "idp", "directory", "import", os.path.join(EXAMPLES, "directory.csv"))
    assert result.exit_code == 0, result.output
    assert "customers: 2 created, 0 updated" in result.output
    assert "lines:     8 created, 0 updated" in result.output
    assert counts(app) == (2, 8)
    data = line_row(app, "+393471000004")
    assert data.sim_type == "data" and data.status == "active"
    assert data.sim_pin_hash.startswith("$argon2id$") and "4821" not in data.sim_pin_hash
    with app.app_context():
        assert directory().check_sim_pin("+393471000004", "4821")
        assert not directory().check_sim_pin("+393471000004", "4822")
        info = directory().line("+393471000003")
        assert info.status == "suspended" and not info.is_active
        assert info.customer.code == "C0100" and info.customer.owns_email("mario@rossitrasporti.example")
    assert line_row(app, "+393471000001").sim_pin_hash is None


def test_import_the_json_example(app):
    result = run(app, "idp", "directory", "import", os.path.join(EXAMPLES, "directory.json"))
    assert result.exit_code == 0, result.output
    assert "customers: 2 created" in result.output and "lines:     6 created" in result.output
    with app.app_context():
        customer = directory().customer("c0400")
        assert customer.email is None and customer.email_domain == "farmacianeri.example"
        assert directory().check_sim_pin("+393404000002", "80808")
        assert directory().line("+393333000004").status == "suspended"


def test_a_json_list_of_rows_works_too(app, tmp_path):
    rows = [{"kind": "customer", "customer_code": "C9", "name": "Nove S.r.l.", "email": "info@nove.example"},
            {"customer_code": "C9", "msisdn": "3331234567", "sim_type": "data", "sim_pin": "1234"}]
    result = run(app, "idp", "directory", "import", write(tmp_path, "rows.json", json.dumps(rows)))
    assert result.exit_code == 0, result.output
    assert line_row(app, "+393331234567").sim_type == "data"


def test_reimport_is_idempotent_and_updates(app, tmp_path):
    path = os.path.join(EXAMPLES, "directory.csv")
    assert run(app, "idp", "directory", "import", path).exit_code == 0
    again = run(app, "idp", "directory", "import", path)
    assert again.exit_code == 0
    pin_hash = line_row(app, "+393471000004").sim_pin_hash
    assert "customers: 0 created, 2 updated" in again.output and "lines:     0 created, 8 updated" in again.output
    assert counts(app) == (2, 8)
    changed = write(tmp_path, "changes.csv", HEADER +
                    "customer,C0100,Rossi Logistica S.p.A.,,rossilogistica.example,,,,\n"
                    "line,C0100,,,,+393471000001,voice,ceased,\n"
                    "line,C0100,,,,+393471000004,data,active,\n"       # no PIN: the old one stays
                    "line,C0100,,,,+393471000005,voice,active,\n")     # now a voice SIM: its PIN goes
    result = run(app, "idp", "directory", "import", changed)
    assert result.exit_code == 0, result.output
    assert "customers: 0 created, 1 updated" in result.output
    assert "lines:     0 created, 3 updated" in result.output
    with app.app_context():
        customer = directory().customer("C0100")
        assert customer.name == "Rossi Logistica S.p.A." and customer.email is None
        assert customer.email_domain == "rossilogistica.example"
        assert directory().line("+393471000001").status == "ceased"
    assert line_row(app, "+393471000004").sim_pin_hash == pin_hash
    assert line_row(app, "+393471000005").sim_pin_hash is None


def test_one_bad_row_imports_nothing_and_every_error_is_reported_by_row(app, tmp_path):
    path = write(tmp_path, "bad.csv", HEADER +
                 "customer,C0100,Rossi Trasporti S.p.A.,info@rossi.example,,,,,\n"      # row 1: fine
                 "line,C0100,,,,+393471000001,voice,active,\n"                          # row 2: fine
                 "line,C0100,,,,12345,voice,active,\n"                                  # row 3: not a mobile line
                 "line,C0100,,,,+393471000002,fax,active,\n"                            # row 4: sim type
                 "line,C0100,,,,+393471000003,voice,lost,\n"                            # row 5: status
                 "line,C0100,,,,+393471000004,voice,active,1234\n"                      # row 6: PIN on voice
                 "line,C0100,,,,+393471000005,data,active,12\n"                         # row 7: PIN too short
                 "customer,C0200,,info@bianchi.example,,,,,\n"                          # row 8: no name
                 "customer,C0300,Verdi,,,,,,\n"                                         # row 9: no e-mail
                 "customer,C 4,Spazio,info@spazio.example,,,,,\n"                       # row 10: bad code
                 "line,C0999,,,,+393471000006,voice,active,\n")                         # row 11: unknown customer
    result = run(app, "idp", "directory", "import", path)
    assert result.exit_code != 0
    output = result.output
    for number, words in [(3, "invalid msisdn"), (4, "invalid sim_type"), (5, "invalid status"),
                          (6, "only data SIMs carry a PIN"), (7, "4 to 8 digits"), (8, "company name"),
                          (9, "company email or an email domain"), (10, "invalid customer_code"),
                          (11, "unknown customer C0999")]:
        assert any(line.startswith(f"row {number}:") and words in line for line in output.splitlines()), \
            (number, output)
    reported = [int(line.split(":")[0][4:]) for line in output.splitlines() if line.startswith("row ")]
    assert reported == sorted(reported) == [3, 4, 5, 6, 7, 8, 9, 10, 11], "every error once, in file order"
    assert "9 error(s)" in output and "nothing was imported" in output
    assert counts(app) == (0, 0)


def test_duplicates_in_a_file_are_errors(app, tmp_path):
    path = write(tmp_path, "dup.csv", HEADER +
                 "customer,C0100,Rossi,info@rossi.example,,,,,\n"
                 "line,C0100,,,,+393471000001,voice,active,\n"
                 "line,C0100,,,,347 100 0001,voice,active,\n"
                 "customer,c0100,Rossi bis,info@rossi.example,,,,,\n")
    result = run(app, "idp", "directory", "import", path)
    output = result.output
    assert result.exit_code != 0
    assert "row 3: +393471000001 appears twice in the file (first at row 2)" in output
    assert "row 4: C0100 appears twice in the file (first at row 1)" in output
    assert counts(app) == (0, 0)


def test_a_line_may_name_a_customer_already_in_the_database(app, tmp_path):
    assert run(app, "idp", "directory", "import", os.path.join(EXAMPLES, "directory.csv")).exit_code == 0
    path = write(tmp_path, "more.csv", HEADER + "line,C0200,,,,+393202000009,data,active,9090\n")
    result = run(app, "idp", "directory", "import", path)
    assert result.exit_code == 0, result.output
    assert line_row(app, "+393202000009").sim_pin_hash.startswith("$argon2id$")


def test_an_unreadable_file_is_refused(app, tmp_path):
    result = run(app, "idp", "directory", "import", write(tmp_path, "broken.json", "{not json"))
    assert result.exit_code != 0 and "cannot read" in result.output
    result = run(app, "idp", "directory", "import", write(tmp_path, "scalar.json", "42"))
    assert result.exit_code != 0
    assert counts(app) == (0, 0)


def test_import_rows_reports_without_touching_the_database(app):
    with app.app_context():
        report = import_rows(parse_file("x.csv", HEADER + "line,C0100,,,,+393471000001,voice,active,\n"))
        assert report.errors == ["row 1: line +393471000001: unknown customer C0100"]
    assert counts(app) == (0, 0)


# show ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("typed", ["347 100 0004", "+39 347 100 0004", "0039 347 1000004", "393471000004",
                                   "+393471000004"])
def test_show_accepts_any_common_form_and_never_shows_the_pin(app, typed):
    run(app, "idp", "directory", "import", os.path.join(EXAMPLES, "directory.csv"))
    result = run(app, "idp", "directory", "show", typed)
    assert result.exit_code == 0, result.output
    assert "line:      +393471000004" in result.output
    assert "customer:  C0100 — Rossi Trasporti S.p.A." in result.output
    assert "sim type:  data" in result.output and "status:    active" in result.output
    assert "sim pin:   set" in result.output
    assert "$argon2" not in result.output and "4821" not in result.output
    assert "account:   none" in result.output


def test_show_tells_the_account_masked(app, factory):
    account_id = factory.account()
    with app.app_context():
        customer_id = db.session.scalar(select(Customer.id))
        db.session.add(Line(msisdn="+393331112222", customer_id=customer_id, sim_type="voice", status="active"))
        db.session.commit()
        registration.associate_sim(account_id, "+393331112222")
    registered = run(app, "idp", "directory", "show", LINE)
    assert "account:   +39 393 ***4567 (employee, active; registered line, slot 1)" in registered.output
    second = run(app, "idp", "directory", "show", "333 111 2222")
    assert "account:   +39 393 ***4567 (employee, active; associated SIM, slot 2)" in second.output
    assert LINE not in second.output
    assert "sim pin" not in second.output, "voice SIMs have no PIN to speak of"


def test_show_refuses_unknown_and_invalid_lines(app):
    unknown = run(app, "idp", "directory", "show", "+393339999999")
    assert unknown.exit_code != 0 and "not in the directory" in unknown.output
    invalid = run(app, "idp", "directory", "show", "hello")
    assert invalid.exit_code != 0 and "not a mobile line" in invalid.output


# CustomerInfo.owns_email -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("email, domain, address, owned", [
    ("it@acme.example", "acme.example", "it@acme.example", True),
    ("it@acme.example", "acme.example", "IT@Acme.Example", True),
    ("it@acme.example", "acme.example", "mario.rossi@acme.example", True),
    ("it@acme.example", "acme.example", "  mario@ACME.example ", True),
    ("it@acme.example", None, "it@acme.example", True),
    ("it@acme.example", None, "mario@acme.example", False),           # no domain: only the company e-mail
    (None, "acme.example", "mario@acme.example", True),
    ("it@acme.example", "acme.example", "mario@sub.acme.example", False),
    ("it@acme.example", "acme.example", "mario@acme.example.evil", False),
    ("it@acme.example", "acme.example", "mario@evilacme.example", False),
    ("it@acme.example", "acme.example", "acme.example", False),
    ("it@acme.example", "acme.example", "", False),
    ("it@acme.example", "acme.example", None, False),
    (None, None, "mario@acme.example", False),
])
def test_customer_owns_email(email, domain, address, owned):
    customer = CustomerInfo(code="C0001", name="Acme", email=email, email_domain=domain)
    assert customer.owns_email(address) is owned


# the development outbox ------------------------------------------------------------------------------------------

def _send_some(app):
    with app.test_request_context():
        senders.send_sms("+393931234567", "otp", code="123456", minutes=5, purpose="associare una SIM")
        senders.send_email("mario@acme.example", "otp", "Il tuo codice", code="654321", minutes=5,
                           purpose="confermare l'indirizzo")


def test_outbox_cli_prints_the_last_messages(app):
    empty = run(app, "idp", "outbox")
    assert empty.exit_code == 0 and "the outbox is empty" in empty.output
    _send_some(app)
    result = run(app, "idp", "outbox")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    headers = [line for line in lines if line.startswith("--- ")]
    assert len(headers) == 2
    assert "sms  to +393931234567" in headers[0] and "email  to mario@acme.example  «Il tuo codice»" in headers[1]
    assert "123456" in result.output and "654321" in result.output
    last = run(app, "idp", "outbox", "-n", "1")
    assert "email  to mario@acme.example" in last.output and "+393931234567" not in last.output


def test_dev_outbox_page_in_development(make_app):
    app = make_app(DEPLOYMENT="development")
    client = app.test_client()
    assert "Nessun messaggio" in client.get("/dev/outbox").text
    _send_some(app)
    page = client.get("/dev/outbox")
    assert page.status_code == 200
    assert page.text.index("mario@acme.example") < page.text.index("+393931234567"), "newest first"
    assert "123456" in page.text and "654321" in page.text and "Il tuo codice" in page.text
    app.config["DEPLOYMENT"] = "test"
    assert client.get("/dev/outbox").status_code == 404


def test_dev_outbox_page_does_not_exist_outside_development(app, client):
    _send_some(app)
    response = client.get("/dev/outbox")
    assert response.status_code == 404 and "123456" not in response.text
    assert "devpages.outbox" not in app.view_functions
