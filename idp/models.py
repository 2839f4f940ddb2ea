"""Durable data (SPEC §2, §4): the directory's customers and lines, accounts, their SIMs, clients and tokens.

The schema is owned by the Alembic migrations in ``idp/migrations``; ``tests/test_migrations.py`` fails when these
models and the migrations drift. Times that tokens are checked against are integer epoch seconds, the same on
SQLite and PostgreSQL. Secrets are never stored: passwords and answers as argon2id hashes, client secrets and
refresh tokens as SHA-256 of high-entropy random values.
"""
from __future__ import annotations

import secrets
from datetime import datetime, timezone

from sqlalchemy import (JSON, Boolean, CheckConstraint, DateTime, ForeignKey, Integer, String,
                        UniqueConstraint)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .extensions import db


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_public_id() -> str:
    return secrets.token_urlsafe(16)


class Customer(db.Model):
    """A business customer of the operator (the CRM's view)."""
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(254))
    email_domain: Mapped[str | None] = mapped_column(String(253))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Line(db.Model):
    """A SIM of a business customer: voice or data-only; data SIMs carry a hashed PIN to prove possession."""
    __tablename__ = "lines"
    __table_args__ = (
        CheckConstraint("sim_type IN ('voice', 'data')", name="ck_lines_sim_type"),
        CheckConstraint("status IN ('active', 'suspended', 'ceased')", name="ck_lines_status"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    msisdn: Mapped[str] = mapped_column(String(16), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    sim_type: Mapped[str] = mapped_column(String(8), default="voice")
    status: Mapped[str] = mapped_column(String(12), default="active")
    sim_pin_hash: Mapped[str | None] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    customer: Mapped[Customer] = relationship(lazy="joined")


class Account(db.Model):
    """A person who logs in: an employee or a company referent. ``public_id`` is the OIDC ``sub``."""
    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("role IN ('employee', 'referent')", name="ck_accounts_role"),
        CheckConstraint("status IN ('active', 'disabled')", name="ck_accounts_status"),
        CheckConstraint("otp_channel IN ('sms', 'email')", name="ck_accounts_otp_channel"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    username: Mapped[str] = mapped_column(String(16), unique=True)  # the registered line, E.164
    role: Mapped[str] = mapped_column(String(16), default="employee")
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    email: Mapped[str | None] = mapped_column(String(254))
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    password_hash: Mapped[str] = mapped_column(String(255))
    password_temporary: Mapped[bool] = mapped_column(Boolean, default=False)
    security_question: Mapped[str | None] = mapped_column(String(32))
    security_answer_hash: Mapped[str | None] = mapped_column(String(255))
    otp_channel: Mapped[str] = mapped_column(String(8), default="sms")
    status: Mapped[str] = mapped_column(String(12), default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    customer: Mapped[Customer] = relationship(lazy="joined")
    lines: Mapped[list[AccountLine]] = relationship(back_populates="account", order_by="AccountLine.slot",
                                                    cascade="all, delete-orphan")

    def get_user_id(self) -> str:  # Authlib's user interface
        return self.public_id

    @property
    def is_active(self) -> bool:
        return self.status == "active"

    # what ``scopes.account_claims`` reads, named as on ``people.Person`` (the same data read without the ORM)
    @property
    def customer_code(self) -> str:
        return self.customer.code

    @property
    def customer_name(self) -> str:
        return self.customer.name

    @property
    def line_numbers(self) -> list[str]:
        return [link.line.msisdn for link in self.lines]


class AccountLine(db.Model):
    """A SIM associated with an account. Slots 1 and 2 only, one account per line: the database enforces
    SPEC §3 point 9 even when two requests race."""
    __tablename__ = "account_lines"
    __table_args__ = (
        UniqueConstraint("account_id", "slot", name="uq_account_lines_slot"),
        CheckConstraint("slot IN (1, 2)", name="ck_account_lines_slot"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id"), unique=True)
    slot: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    account: Mapped[Account] = relationship(back_populates="lines")
    line: Mapped[Line] = relationship(lazy="joined")


class Client(db.Model):
    """A registered relying party. ``meta`` holds the RFC 7591 metadata (redirect_uris, grant_types, …)."""
    __tablename__ = "clients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    secret_hash: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    first_party: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Token(db.Model):
    """One issued access token (a JWT known by its ``jti``) and, for user grants, its refresh token.

    A family is every token descending from one authorization code; presenting a rotated refresh token or
    reusing the code revokes the family (RFC 6749 §10.4, §4.1.2; OAuth 2.0 Security BCP §4.14).
    """
    __tablename__ = "tokens"
    # room on each page: setting a revocation/use timestamp (no index covers them) is an update in place that
    # touches no index (PostgreSQL heap-only tuples; migration 0004)
    __table_args__ = {"postgresql_with": {"fillfactor": 85}}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    jti: Mapped[str] = mapped_column(String(64), unique=True)
    access_hash: Mapped[str | None] = mapped_column(String(64), unique=True)  # SHA-256 of the JWT: how we find it
    client_id: Mapped[str] = mapped_column(String(64), index=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    grant_type: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(500), default="")
    audience: Mapped[str | None] = mapped_column(String(500))
    issued_at: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[int] = mapped_column(Integer)
    revoked_at: Mapped[int | None] = mapped_column(Integer)  # the whole row: access and refresh token
    access_revoked_at: Mapped[int | None] = mapped_column(Integer)  # the access token alone (RFC 7009)
    refresh_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    refresh_expires_at: Mapped[int | None] = mapped_column(Integer)
    refresh_used_at: Mapped[int | None] = mapped_column(Integer)
    family_id: Mapped[str | None] = mapped_column(String(32), index=True)
    family_expires_at: Mapped[int | None] = mapped_column(Integer)
    sid: Mapped[str | None] = mapped_column(String(64))  # carried into tokens; never looked up (migration 0004)
    auth_time: Mapped[int | None] = mapped_column(Integer)
    acr: Mapped[str | None] = mapped_column(String(64))
    amr: Mapped[str | None] = mapped_column(String(200))  # space-separated

    account: Mapped[Account | None] = relationship(lazy="joined")

    # Authlib's token interface (refresh grant, revocation, introspection)
    def check_client(self, client) -> bool:
        return self.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.scope




class AuditEvent(db.Model):
    """One security event (issue 4 point 4), written only by ``audit`` on its own transaction."""
    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(64), index=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    account_id: Mapped[int | None] = mapped_column(Integer, index=True)  # no FK: the log outlives accounts
    masked_line: Mapped[str | None] = mapped_column(String(32))
    client_id: Mapped[str | None] = mapped_column(String(64))
    client_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    correlation_id: Mapped[str] = mapped_column(String(64), index=True)
    details: Mapped[dict] = mapped_column(JSON, default=dict)
