"""Liveness and readiness (issue 10 point 2)."""
from idp import create_app

from .conftest import base_config


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["checks"] == {"database": True, "redis": True,
                                                                 "signing_keys": True}


def test_readyz_names_what_is_down(migrated, keys_dir, tmp_path):
    app = create_app(base_config(migrated, keys_dir, REDIS_URL="redis://127.0.0.1:1/0"))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503 and response.json["checks"]["redis"] is False
    no_keys = create_app(base_config(migrated, str(tmp_path / "empty")))
    response = no_keys.test_client().get("/readyz")
    assert response.status_code == 503 and response.json["checks"]["signing_keys"] is False
    assert no_keys.test_client().get("/healthz").status_code == 200


def test_no_signing_key_is_503_not_500(migrated, keys_dir, tmp_path):
    app = create_app(base_config(migrated, str(tmp_path / "no-keys")))
    from .helpers import Factory, basic
    rp = Factory(app).rp(grant_types=("client_credentials",), scope="profile", redirect_uri=None)
    response = app.test_client().post("/token", data={"grant_type": "client_credentials", "scope": "profile"},
                                      headers=basic(rp.client_id, rp.secret))
    assert response.status_code == 503 and response.json["error"] == "temporarily_unavailable"
    with app.app_context():
        from idp.extensions import db
        for table in reversed(db.metadata.sorted_tables):
            db.session.execute(table.delete())
        db.session.commit()
