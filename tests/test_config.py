"""Configuration (issue 2 point 3): environment variables, and what production refuses."""
import pytest

from idp import create_app
from idp.config import ConfigError

GOOD_PRODUCTION = {
    "DEPLOYMENT": "production",
    "ISSUER": "https://login.selfcare.example",
    "SECRET_KEY": "s" * 48,
    "HMAC_KEY": "h" * 48,
    "DATABASE_URL": "postgresql://idp@db.internal/idp",
    "REDIS_URL": "redis://cache.internal:6379/0",
    "EMAIL_SENDER": "smtp",
    "SMS_SENDER": "http",
    "SMS_GATEWAY_URL": "https://sms-gateway.internal/send",
}


def test_environment_variables_with_the_idp_prefix(monkeypatch, keys_dir, tmp_path):
    monkeypatch.setenv("IDP_ACCESS_TOKEN_TTL", "321")
    monkeypatch.setenv("IDP_ISSUER", "http://127.0.0.1:5999/")
    app = create_app({"KEYS_DIR": keys_dir, "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"})
    assert app.config["ACCESS_TOKEN_TTL"] == 321
    assert app.config["ISSUER"] == "http://127.0.0.1:5999"  # trailing slash removed


def test_settings_file(monkeypatch, keys_dir, tmp_path):
    settings = tmp_path / "settings.py"
    settings.write_text("ID_TOKEN_TTL = 123\n")
    monkeypatch.setenv("IDP_SETTINGS", str(settings))
    app = create_app({"KEYS_DIR": keys_dir, "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"})
    assert app.config["ID_TOKEN_TTL"] == 123


def test_a_complete_production_configuration_is_accepted(keys_dir):
    app = create_app(dict(GOOD_PRODUCTION, KEYS_DIR=keys_dir))
    assert app.config["COOKIE_SECURE"] is True and app.config["SESSION_COOKIE_SECURE"] is True


@pytest.mark.parametrize("change,complaint", [
    ({"SECRET_KEY": "dev-only-secret-key-change-me"}, "SECRET_KEY"),
    ({"SECRET_KEY": "short"}, "SECRET_KEY"),
    ({"HMAC_KEY": "dev-only-hmac-key-change-me"}, "HMAC_KEY"),
    ({"ISSUER": "http://login.selfcare.example"}, "https"),
    ({"EMAIL_SENDER": "outbox"}, "outbox"),
    ({"SMS_SENDER": "outbox"}, "outbox"),
    ({"DATABASE_URL": ""}, "PostgreSQL"),
    ({"DATABASE_URL": "sqlite:///x.db"}, "PostgreSQL"),
    ({"REDIS_URL": ""}, "Redis"),
    ({"COOKIE_SECURE": False}, "COOKIE_SECURE"),
    ({"PASSWORD_ARGON2_TIME_COST": 1, "PASSWORD_ARGON2_MEMORY_COST": 19456}, "OWASP"),
    ({"PASSWORD_ARGON2_TIME_COST": 2, "PASSWORD_ARGON2_MEMORY_COST": 8192}, "OWASP"),
])
def test_production_refuses_development_settings(keys_dir, change, complaint):
    with pytest.raises(ConfigError, match=complaint):
        create_app(dict(GOOD_PRODUCTION, KEYS_DIR=keys_dir, **change))


def test_unknown_deployment_is_refused(keys_dir):
    with pytest.raises(ConfigError):
        create_app({"DEPLOYMENT": "staging", "KEYS_DIR": keys_dir})


@pytest.mark.parametrize("time_cost,memory_kib", [(1, 47104), (2, 19456), (3, 12288), (4, 9216), (5, 7168),
                                                   (9, 7168), (3, 65536)])
def test_production_accepts_argon2id_at_owasps_minimum_or_above(keys_dir, time_cost, memory_kib):
    create_app(dict(GOOD_PRODUCTION, KEYS_DIR=keys_dir, PASSWORD_ARGON2_TIME_COST=time_cost,
                    PASSWORD_ARGON2_MEMORY_COST=memory_kib))


def test_the_default_password_cost_is_owasps_first_recommendation():
    from idp.config import DEFAULTS, argon2_at_least_owasp
    assert (DEFAULTS["PASSWORD_ARGON2_TIME_COST"], DEFAULTS["PASSWORD_ARGON2_MEMORY_COST"],
            DEFAULTS["PASSWORD_ARGON2_PARALLELISM"]) == (1, 47104, 1)
    assert argon2_at_least_owasp(1, 47104) and not argon2_at_least_owasp(1, 47103)
