"""The operator's directory of business customers and their lines (SPEC §2; issue 3 point 1).

The flows read it only through ``Directory`` (``line``, ``customer``, ``check_sim_pin``), so a CRM adapter can
replace ``SqlDirectory`` later. ``import_rows`` loads a CSV or JSON file: every row is validated first and the
file is imported whole or not at all; re-importing updates (customers by code, lines by MSISDN).
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from typing import Protocol

from flask import current_app
from sqlalchemy import select

from . import msisdn, passwords
from .extensions import db
from .models import Customer, Line

SIM_TYPES = ("voice", "data")
LINE_STATUSES = ("active", "suspended", "ceased")
_CUSTOMER_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{1,31}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,}$")
_DOMAIN = re.compile(r"^(?=.{3,253}$)[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_SIM_PIN = re.compile(r"^\d{4,8}$")


@dataclass(frozen=True)
class CustomerInfo:
    code: str
    name: str
    email: str | None
    email_domain: str | None

    def owns_email(self, email: str) -> bool:
        """The company e-mail itself, or an address in the company's domain (case-insensitive)."""
        email = (email or "").strip().lower()
        if not email or "@" not in email:
            return False
        if self.email and email == self.email.lower():
            return True
        return bool(self.email_domain) and email.rsplit("@", 1)[1] == self.email_domain.lower()


@dataclass(frozen=True)
class LineInfo:
    msisdn: str
    customer: CustomerInfo
    sim_type: str
    status: str

    @property
    def is_active(self) -> bool:
        return self.status == "active"


class Directory(Protocol):
    def line(self, number: str) -> LineInfo | None: ...

    def customer(self, code: str) -> CustomerInfo | None: ...

    def check_sim_pin(self, number: str, pin: str) -> bool: ...


def _customer_info(row: Customer) -> CustomerInfo:
    return CustomerInfo(code=row.code, name=row.name, email=row.email, email_domain=row.email_domain)


class SqlDirectory:
    """The directory as tables in our own database, loaded by ``idp directory import``."""

    def line(self, number: str) -> LineInfo | None:
        row = db.session.scalar(select(Line).where(Line.msisdn == number))
        if row is None:
            return None
        return LineInfo(msisdn=row.msisdn, customer=_customer_info(row.customer), sim_type=row.sim_type,
                        status=row.status)

    def customer(self, code: str) -> CustomerInfo | None:
        code = (code or "").strip().upper()
        if not _CUSTOMER_CODE.fullmatch(code):  # cannot exist, so not looked up (a NUL breaks PostgreSQL)
            return None
        row = db.session.scalar(select(Customer).where(Customer.code == code))
        return _customer_info(row) if row is not None else None

    def check_sim_pin(self, number: str, pin: str) -> bool:
        """Constant work whether or not the line exists or has a PIN (argon2id against a dummy otherwise)."""
        row = db.session.scalar(select(Line).where(Line.msisdn == number))
        stored = row.sim_pin_hash if row is not None and row.sim_type == "data" else None
        return passwords.verify_secret(stored, pin or "")


def directory() -> Directory:
    return current_app.extensions["idp.directory"]


def init_app(app) -> None:
    app.extensions["idp.directory"] = SqlDirectory()


# import ---------------------------------------------------------------------------------------------------------

@dataclass
class ImportReport:
    errors: list[str] = field(default_factory=list)
    customers_created: int = 0
    customers_updated: int = 0
    lines_created: int = 0
    lines_updated: int = 0


def parse_file(name: str, text: str) -> list[dict]:
    """Rows from a CSV (header line) or JSON file (a list of objects, or {"customers": [...], "lines": [...]})."""
    if name.lower().endswith(".json"):
        data = json.loads(text)
        if isinstance(data, dict):
            rows = [dict(r, kind="customer") for r in data.get("customers", [])]
            rows += [dict(r, kind="line") for r in data.get("lines", [])]
            return rows
        if not isinstance(data, list):
            raise ValueError("a JSON directory file is a list of rows or an object with customers and lines")
        return data
    return list(csv.DictReader(io.StringIO(text)))


def _clean(value) -> str:
    return "" if value is None else str(value).strip()


def validate_row(row: dict) -> tuple[str, dict] | str:
    """Return (kind, normalised fields) or an error message."""
    if not isinstance(row, dict):
        return "not an object"
    kind = _clean(row.get("kind")).lower() or ("line" if _clean(row.get("msisdn")) else "customer")
    code = _clean(row.get("customer_code")).upper()
    if not _CUSTOMER_CODE.match(code):
        return f"invalid customer_code {code!r}"
    if kind == "customer":
        name = _clean(row.get("name") or row.get("company_name"))
        email = _clean(row.get("email")).lower() or None
        domain = _clean(row.get("email_domain")).lower().lstrip("@") or None
        if not name or len(name) > 200:
            return "the company name is missing or longer than 200 characters"
        if email and not _EMAIL.match(email):
            return f"invalid email {email!r}"
        if domain and not _DOMAIN.match(domain):
            return f"invalid email_domain {domain!r}"
        if not email and not domain:
            return "a customer needs a company email or an email domain"
        return "customer", {"code": code, "name": name, "email": email, "email_domain": domain}
    if kind != "line":
        return f"unknown kind {kind!r} (customer or line)"
    number = msisdn.try_normalise(_clean(row.get("msisdn")))
    if number is None:
        return f"invalid msisdn {_clean(row.get('msisdn'))!r}"
    sim_type = _clean(row.get("sim_type")).lower() or "voice"
    status = _clean(row.get("status")).lower() or "active"
    pin = _clean(row.get("sim_pin"))
    if sim_type not in SIM_TYPES:
        return f"invalid sim_type {sim_type!r} (voice or data)"
    if status not in LINE_STATUSES:
        return f"invalid status {status!r} ({', '.join(LINE_STATUSES)})"
    if sim_type == "data" and pin and not _SIM_PIN.match(pin):
        return "a SIM PIN is 4 to 8 digits"
    if sim_type == "voice" and pin:
        return "only data SIMs carry a PIN"
    return "line", {"msisdn": number, "customer_code": code, "sim_type": sim_type, "status": status,
                    "sim_pin": pin or None}


def import_rows(rows: list[dict]) -> ImportReport:
    """Validate every row, then import all of them in one transaction — or none if any row is bad."""
    report = ImportReport()
    customers, lines, row_of, problems = {}, {}, {}, []
    for number, row in enumerate(rows, start=1):
        result = validate_row(row)
        if isinstance(result, str):
            problems.append((number, result))
            continue
        kind, fields = result
        target = customers if kind == "customer" else lines
        key = fields["code"] if kind == "customer" else fields["msisdn"]
        if key in target:
            problems.append((number, f"{key} appears twice in the file (first at row {row_of[key]})"))
        else:
            row_of[key] = number
        target[key] = fields
    known_codes = set(customers) | set(db.session.scalars(select(Customer.code)))
    for key, fields in lines.items():
        if fields["customer_code"] not in known_codes:
            problems.append((row_of[key], f"line {key}: unknown customer {fields['customer_code']}"))
    if problems:
        report.errors = [f"row {number}: {message}" for number, message in sorted(problems)]
        return report
    try:
        by_code = {c.code: c for c in db.session.scalars(select(Customer).where(Customer.code.in_(
            set(customers) | {f["customer_code"] for f in lines.values()})))}
        for code, fields in customers.items():
            row = by_code.get(code)
            if row is None:
                row = by_code[code] = Customer(**fields)
                db.session.add(row)
                report.customers_created += 1
            else:
                row.name, row.email, row.email_domain = fields["name"], fields["email"], fields["email_domain"]
                report.customers_updated += 1
        db.session.flush()
        existing = {ln.msisdn: ln for ln in db.session.scalars(select(Line).where(Line.msisdn.in_(list(lines))))}
        for number, fields in lines.items():
            row = existing.get(number)
            if row is None:
                row = Line(msisdn=number)
                db.session.add(row)
                report.lines_created += 1
            else:
                report.lines_updated += 1
            row.customer_id = by_code[fields["customer_code"]].id
            row.sim_type, row.status = fields["sim_type"], fields["status"]
            if fields["sim_type"] == "voice":
                row.sim_pin_hash = None
            elif fields["sim_pin"]:
                row.sim_pin_hash = passwords.hash_secret(fields["sim_pin"])
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return report
