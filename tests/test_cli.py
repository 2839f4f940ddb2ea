"""Operators' CLI (issue 2 point 6): clients create|list|show|disable, keys, demo data."""
import json

from idp.extensions import db
from idp.models import Client

from .helpers import basic


def _run(app, *args):
    result = app.test_cli_runner().invoke(args=list(args))
    return result


def test_clients_create_list_show_disable(app, client):
    created = _run(app, "idp", "clients", "create", "--name", "Portale Business", "--redirect-uri",
                   "https://portal.example/cb", "--post-logout-uri", "https://portal.example/",
                   "--grant-type", "authorization_code", "--grant-type", "refresh_token",
                   "--scope", "openid profile phone", "--first-party", "--client-id", "portal")
    assert created.exit_code == 0, created.output
    secret = next(line.split()[1] for line in created.output.splitlines() if line.startswith("client_secret:"))
    with app.app_context():
        row = db.session.query(Client).filter_by(client_id="portal").one()
        assert row.secret_hash != secret and row.first_party
    listed = _run(app, "idp", "clients", "list")
    assert "portal" in listed.output and "active" in listed.output
    shown = json.loads(_run(app, "idp", "clients", "show", "portal").output)
    assert shown["redirect_uris"] == ["https://portal.example/cb"]
    assert shown["post_logout_redirect_uris"] == ["https://portal.example/"]
    assert "secret" not in json.dumps(shown).lower() or "client_secret" not in shown
    disabled = _run(app, "idp", "clients", "disable", "portal")
    assert disabled.exit_code == 0
    assert "disabled" in _run(app, "idp", "clients", "list").output
    refused = client.get("/authorize", query_string={"response_type": "code", "client_id": "portal",
                                                      "redirect_uri": "https://portal.example/cb",
                                                      "scope": "openid"})
    assert refused.status_code == 400


def test_clients_create_refuses_bad_registrations(app):
    cases = [
        ["--name", "x", "--grant-type", "authorization_code"],  # no redirect URI
        ["--name", "x", "--redirect-uri", "http://portal.example/cb"],  # plain http off loopback
        ["--name", "x", "--redirect-uri", "https://portal.example/cb#frag"],
        ["--name", "x", "--redirect-uri", "https://p.example/cb", "--scope", "openid admin"],
        ["--name", "x", "--auth-method", "none", "--grant-type", "client_credentials"],
        ["--name", "x", "--auth-method", "private_key_jwt", "--redirect-uri", "https://p.example/cb"],
    ]
    for args in cases:
        result = _run(app, "idp", "clients", "create", *args)
        assert result.exit_code != 0, args
        assert "Error" in result.output, args


def test_created_confidential_client_can_use_client_credentials(app, client):
    result = _run(app, "idp", "clients", "create", "--name", "Batch", "--grant-type", "client_credentials",
                  "--scope", "profile", "--client-id", "batch")
    secret = next(line.split()[1] for line in result.output.splitlines() if line.startswith("client_secret:"))
    response = client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"},
                           headers=basic("batch", secret))
    assert response.status_code == 200, response.text


def test_keys_list_and_ensure_is_idempotent(make_app, tmp_path):
    app = make_app(KEYS_DIR=str(tmp_path / "keys"))
    first = _run(app, "idp", "keys", "ensure")
    assert first.output.count("generated active") == 2
    assert _run(app, "idp", "keys", "ensure").output == ""
    listed = _run(app, "idp", "keys", "list").output
    assert "ES256\tactive" in listed and "RS256\tactive" in listed
    for path in (tmp_path / "keys").iterdir():
        assert path.stat().st_mode & 0o077 == 0, "private key files are readable by the owner only"
    assert _run(app, "idp", "keys", "generate", "--alg", "ES256", "--activate").exit_code != 0


def test_demo_data_is_idempotent_and_logs_in(app, tmp_path):
    config = tmp_path / "rp.json"
    for _ in range(2):
        result = _run(app, "idp", "demo", "--rp-config", str(config))
        assert result.exit_code == 0, result.output
    rp = json.loads(config.read_text())
    from .helpers import Journey, RegisteredRP
    from idp.demo import DEMO_ACCOUNT
    journey = Journey(app.test_client(), RegisteredRP(rp["client_id"], rp["client_secret"], rp["redirect_uri"]))
    tokens = journey.tokens(username=DEMO_ACCOUNT["line"], password=DEMO_ACCOUNT["password"])
    assert "id_token" in tokens


def test_generated_client_ids_never_look_like_command_line_options():
    """A client_id starting with "-" made `idp clients exchange-policy <id>` read it as an option (1 in 64)."""
    from idp.oauth.clients import new_client_id
    ids = [new_client_id() for _ in range(3000)]
    assert not any(client_id.startswith("-") for client_id in ids)
    assert len(set(ids)) == 3000 and all(len(client_id) == 24 for client_id in ids)
