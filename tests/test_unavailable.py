"""A dependency down (issue 9 point 1, first part): a clear 503, RFC errors on the OAuth endpoints, no 500."""
from idp import create_app

from .conftest import base_config
from .helpers import Journey, basic


def test_redis_down_gives_503_pages_and_temporarily_unavailable(migrated, keys_dir, factory):
    rp = factory.rp()  # registered through the healthy app, in the same database
    app = create_app(base_config(migrated, keys_dir, REDIS_URL="redis://127.0.0.1:1/0"))  # nothing listens there
    client = app.test_client()
    page = client.get("/authorize", query_string=Journey(client, rp).params())
    assert page.status_code == 503 and "temporaneamente non disponibile" in page.text
    assert page.headers["Retry-After"]
    token = client.post("/token", data={"grant_type": "authorization_code", "code": "x",
                                        "redirect_uri": rp.redirect_uri}, headers=basic(rp.client_id, rp.secret))
    assert token.status_code == 503 and token.json["error"] == "temporarily_unavailable"


def test_database_down_gives_503(keys_dir):
    app = create_app(base_config("postgresql://nobody@127.0.0.1:1/none", keys_dir))
    client = app.test_client()
    page = client.get("/authorize", query_string={"response_type": "code", "client_id": "x",
                                                  "redirect_uri": "https://rp.example/cb", "scope": "openid"})
    assert page.status_code == 503
    token = client.post("/token", data={"grant_type": "client_credentials"}, headers=basic("x", "y"))
    assert token.status_code == 503 and token.json["error"] == "temporarily_unavailable"
    assert client.get("/jwks.json").status_code == 200  # tokens keep validating from the JWKS
    assert client.get("/.well-known/openid-configuration").status_code == 200
