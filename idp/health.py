"""Liveness and readiness for load balancers and orchestrators (issue 10 point 2).

``/healthz`` answers 200 while the process serves requests, touching nothing else. ``/readyz`` answers 200 only
when PostgreSQL and Redis answer and a signing key is active for every algorithm, else 503 with which check failed
(names only: no connection strings, no errors' text).
"""
from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy import text

from .extensions import db
from .keystore import ALGORITHMS, keyring
from .store import store

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


def _check_database() -> bool:
    try:
        db.session.execute(text("SELECT 1"))
        return True
    except Exception:
        db.session.rollback()
        return False


def _check_redis() -> bool:
    try:
        return bool(store().redis.ping())
    except Exception:
        return False


def _check_keys() -> bool:
    try:
        ring = keyring()
        return all(ring.signing_key(alg) is not None for alg in ALGORITHMS)
    except Exception:
        return False


@bp.get("/readyz")
def readyz():
    checks = {"database": _check_database(), "redis": _check_redis(), "signing_keys": _check_keys()}
    ready = all(checks.values())
    response = jsonify(status="ready" if ready else "unavailable", checks=checks)
    response.status_code = 200 if ready else 503
    response.headers["Cache-Control"] = "no-store"
    return response
