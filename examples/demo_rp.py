"""Selfcare demo portal: a small relying party that logs its users in through the Selfcare IdP.

It shows what an RP has to do, and nothing more. The OpenID Connect work is Authlib's Flask client:
discovery, PKCE (S256), ``state``, ``nonce`` and the ID token's validation (signature against the IdP's JWKS,
``iss``, ``aud``, ``exp``, ``nonce``, ``at_hash``). This module adds only the RFC 9207 ``iss`` check of the
authorization response.

Pages (in Italian):

* ``/``: the "Accedi" button or, once logged in, the ID token's claims and what ``/userinfo`` returned;
* ``/login``: off to the IdP's authorization endpoint; ``/callback``: back from it;
* ``/logout`` ("Esci"): forgets the local session and asks the IdP to end its own (RP-initiated logout with
  ``id_token_hint``), which sends the browser back to ``/``.

Run (``scripts/run`` does it)::

    DEMO_RP_CONFIG=instance/demo-rp.json IDP_ISSUER=http://127.0.0.1:5000 python -m examples.demo_rp

The config file is written by ``flask --app wsgi idp demo --rp-config FILE`` (client_id, client_secret,
redirect_uri, rp_url). DEMO_RP_HOST / DEMO_RP_PORT choose where it listens (127.0.0.1:5001). Both apps run on
127.0.0.1 and browsers do not separate cookies by port, so this app keeps its session in its own cookie,
``demo_rp_session`` (the IdP's are ``idp_sso`` and ``idp_csrf``).
"""
from __future__ import annotations

import json
import os
import secrets
from datetime import datetime

import requests
from authlib.integrations.flask_client import OAuth, OAuthError
from flask import Flask, flash, redirect, render_template_string, request, session, url_for
from joserfc.errors import JoseError

SCOPE = "openid profile email phone lines"

CLAIM_LABELS = {
    "iss": "Emittente (il servizio di accesso)",
    "sub": "Identificativo dell'utente: stabile, opaco, non è il numero di telefono",
    "aud": "Destinatario (il client_id di questo portale)",
    "exp": "Scadenza del token",
    "iat": "Emesso il",
    "auth_time": "Momento dell'accesso",
    "nonce": "Nonce (lega il token a questa richiesta)",
    "acr": "Livello di autenticazione",
    "amr": "Metodi di autenticazione usati",
    "sid": "Identificativo della sessione sul servizio di accesso",
    "at_hash": "Impronta dell'access token",
    "phone_number": "Numero di telefono",
    "phone_number_verified": "Numero verificato",
    "email": "Email",
    "email_verified": "Email verificata",
    "role": "Ruolo",
    "customer_code": "Codice cliente",
    "customer_name": "Ragione sociale",
    "lines": "Linee associate",
}
TIMESTAMPS = ("exp", "iat", "auth_time")

PAGE = """{% macro claims_table(id, rows) %}
<table id="{{ id }}">
  <thead><tr><th class="name">Claim</th><th class="label">Significato</th><th>Valore</th></tr></thead>
  <tbody>
  {% for name, label, value in rows %}
    <tr data-claim="{{ name }}"><th class="name" scope="row"><code>{{ name }}</code></th>
      <td class="label">{{ label }}</td><td class="value">{{ value }}</td></tr>
  {% endfor %}
  </tbody>
</table>
{% endmacro %}<!doctype html>
<html lang="it">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{{ title }} · Selfcare demo portal</title>
  <style>
    body { margin: 0; font: 16px/1.5 system-ui, sans-serif; color: #1d1d1f; background: #f4f5f7; }
    header { display: flex; justify-content: space-between; align-items: center; padding: .75rem 1.25rem;
             background: #1d3557; color: #fff; }
    header a { color: #fff; }
    main { max-width: 52rem; margin: 2rem auto; padding: 2rem; background: #fff; border-radius: 12px;
           box-shadow: 0 1px 4px rgba(0,0,0,.08); }
    h1 { margin-top: 0; font-size: 1.5rem; }
    .button { display: inline-block; padding: .7rem 1.4rem; border-radius: 8px; background: #1d3557;
              color: #fff; font-weight: 600; text-decoration: none; }
    .notice { padding: .6rem .8rem; border-radius: 8px; background: #eef3fd; }
    .notice.error { background: #fdecea; color: #b3261e; }
    table { width: 100%; border-collapse: collapse; table-layout: fixed; margin: 1rem 0 2rem;
            font-size: .95rem; }
    th, td { text-align: left; vertical-align: top; padding: .45rem .6rem;
             border-bottom: 1px solid #e3e5e8; }
    .name { width: 13rem; } .label { width: 40%; }
    td.value { overflow-wrap: anywhere; font-family: ui-monospace, monospace; }
    .muted { color: #5f6368; }
    @media (max-width: 40rem) {  /* phones: one claim per block instead of three columns */
      main { margin: 1rem .5rem; padding: 1.25rem; }
      table, tbody, tr, th, td { display: block; width: auto !important; } thead { display: none; }
      tr { padding: .4rem 0; border-bottom: 1px solid #e3e5e8; } th, td { border: 0; padding: .1rem 0; }
      td.label { color: #5f6368; font-size: .85rem; }
    }
  </style>
</head>
<body>
  <header><strong>Selfcare demo portal</strong>
    {% if claims %}<a href="{{ url_for('logout') }}">Esci</a>{% endif %}</header>
  <main>
    {% for category, message in get_flashed_messages(with_categories=true) %}
      <p class="notice {{ category }}" role="status">{{ message }}</p>
    {% endfor %}
    {% if error %}
      <h1>Accesso non riuscito</h1>
      <p class="notice error" role="alert">{{ error }}</p>
      <p><a class="button" href="{{ url_for('login') }}">Riprova</a></p>
    {% elif claims %}
      <h1>Benvenuto nel portale</h1>
      <p>Hai effettuato l'accesso tramite Selfcare Business. Questi sono i dati (<em>claims</em>)
         dell'ID token che il portale ha ricevuto e verificato.</p>
      {{ claims_table("id-token-claims", claims) }}
      {% if userinfo %}
      <h2>Dati restituiti da /userinfo</h2>
      {{ claims_table("userinfo-claims", userinfo) }}
      {% endif %}
      <p><a class="button" href="{{ url_for('logout') }}">Esci</a></p>
    {% else %}
      <h1>Portale dimostrativo Selfcare</h1>
      <p>Questo portale di esempio usa il servizio di accesso Selfcare Business (OpenID Connect).</p>
      <p><a class="button" href="{{ url_for('login') }}">Accedi</a></p>
      <p class="muted">Servizio di accesso: {{ issuer }}</p>
    {% endif %}
  </main>
</body>
</html>"""


def _readable(name: str, value) -> str:
    if name in TIMESTAMPS and isinstance(value, (int, float)):
        when = datetime.fromtimestamp(value).astimezone()
        return f"{value} ({when:%d/%m/%Y %H:%M:%S %Z})"
    if isinstance(value, bool):
        return "sì" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return str(value)


def _rows(claims: dict | None) -> list[tuple[str, str, str]]:
    """(name, meaning, value) for a table: the known claims in CLAIM_LABELS' order, then any others."""
    claims = claims or {}
    names = [name for name in CLAIM_LABELS if name in claims] + sorted(set(claims) - set(CLAIM_LABELS))
    return [(name, CLAIM_LABELS.get(name, ""), _readable(name, claims[name])) for name in names]


def create_app(config: dict) -> Flask:
    """The demo RP for one registered client: ``client_id``, ``client_secret``, ``rp_url`` and the IdP's
    ``issuer`` (else the environment's IDP_ISSUER, else http://127.0.0.1:5000)."""
    app = Flask(__name__)
    app.config.update(SECRET_KEY=secrets.token_hex(32), SESSION_COOKIE_NAME="demo_rp_session",
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")
    issuer = (config.get("issuer") or os.environ.get("IDP_ISSUER") or "http://127.0.0.1:5000").rstrip("/")
    rp_url = config["rp_url"].rstrip("/")
    redirect_uri = config.get("redirect_uri") or rp_url + "/callback"

    oauth = OAuth(app)
    idp = oauth.register(
        name="selfcare", client_id=config["client_id"], client_secret=config["client_secret"],
        server_metadata_url=issuer + "/.well-known/openid-configuration",
        client_kwargs={"scope": SCOPE, "code_challenge_method": "S256", "timeout": 10})

    def page(status=200, **context):
        return render_template_string(PAGE, title=context.pop("title", "Portale dimostrativo"), issuer=issuer,
                                      **context), status

    @app.get("/")
    def home():
        if request.args.get("state") and "claims" not in session:  # back from the IdP's logout
            try:
                idp.validate_logout_response()
                flash("Sei uscito dal portale e dal servizio di accesso.")
            except OAuthError:
                pass
            return redirect(url_for("home"))
        return page(claims=_rows(session.get("claims")), userinfo=_rows(session.get("userinfo")))

    @app.get("/login")
    def login():
        try:
            return idp.authorize_redirect(redirect_uri)
        except requests.RequestException:
            return page(502, error="Il servizio di accesso non è raggiungibile. Riprova tra qualche istante.")

    @app.get("/callback")
    def callback():
        try:
            sent_iss = request.args.get("iss")
            if sent_iss is not None and sent_iss != idp.load_server_metadata()["issuer"]:  # RFC 9207
                raise OAuthError(error="invalid_issuer",
                                 description="la risposta viene da un altro emittente")
            token = idp.authorize_access_token()
            if "id_token" not in token:
                raise OAuthError(error="invalid_response", description="manca l'ID token")
            userinfo = idp.userinfo(token=token)
        except OAuthError as error:
            detail = error.description or error.error
            return page(400, error=f"Il servizio di accesso non ha concesso l'accesso ({detail}).")
        except JoseError as error:  # the ID token's signature or claims did not verify
            app.logger.warning("ID token refused: %s", error)
            return page(400, error="L'ID token ricevuto non è valido: accesso rifiutato.")
        except (requests.RequestException, ValueError) as error:
            app.logger.warning("token exchange failed: %s", error)
            return page(502, error="Non è stato possibile completare l'accesso. Riprova.")
        session.clear()
        session["id_token"] = token["id_token"]
        session["claims"] = dict(token["userinfo"])  # Authlib's name for the validated ID token claims
        session["userinfo"] = dict(userinfo)
        return redirect(url_for("home"))

    @app.get("/logout")
    def logout():
        id_token = session.get("id_token")
        session.clear()
        if not id_token:
            return redirect(url_for("home"))
        try:
            return idp.logout_redirect(post_logout_redirect_uri=rp_url + "/", id_token_hint=id_token)
        except requests.RequestException:
            flash("Sei uscito dal portale; il servizio di accesso non era raggiungibile.", "error")
            return redirect(url_for("home"))

    return app


def main() -> None:
    with open(os.environ.get("DEMO_RP_CONFIG", "instance/demo-rp.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    app = create_app(config)
    host, port = os.environ.get("DEMO_RP_HOST", "127.0.0.1"), int(os.environ.get("DEMO_RP_PORT", "5001"))
    app.run(host=host, port=port)


if __name__ == "__main__":
    main()
