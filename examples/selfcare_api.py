"""An example Selfcare API: a resource server that accepts only access tokens the Selfcare IdP issued *for it*.

Copy it as the starting point of a Selfcare service (README "For teams building Selfcare services"). It depends on
Flask, joserfc and requests only — nothing of the IdP.

A token is accepted when (RFC 9068 §4, RFC 6750):

* it is a JWS whose header has ``typ: at+jwt``, an ``alg`` we allow (ES256, RS256) and a ``kid``;
* the signature verifies with the IdP's key of that ``kid``, from the IdP's JWKS (``jwks_uri`` of its discovery
  document), cached for ``JWKS_MAX_AGE`` seconds and refetched when an unknown ``kid`` shows up (key rotation) —
  at most once per ``JWKS_REFETCH_INTERVAL`` seconds, so made-up ``kid`` values cannot make us hammer the IdP;
* ``iss`` is the IdP, ``aud`` is **this API's own identifier** (``AUDIENCE``), ``exp`` has not passed (``LEEWAY``
  seconds of clock skew), and ``sub``, ``client_id`` and ``iat`` are present;
* its ``scope`` has the scope the endpoint needs (else 403 ``insufficient_scope``).

Anything else is 401 ``invalid_token`` with a ``WWW-Authenticate: Bearer`` challenge. A token the IdP issued to a
client for the IdP itself (its ``aud`` is the issuer) — the "original" token My3 got at login — is refused: My3 must
exchange it (RFC 8693) for one whose ``aud`` is this API.

``MODE = "introspection"`` asks the IdP instead (RFC 7662, with this API's own client credentials, registered
``--may-introspect``) on every request: slower, but it sees revocation at once, while a JWT stays valid until its
``exp`` (exchanged tokens live at most a few minutes). The same ``aud`` and scope rules apply to the answer.

Endpoints: ``GET /v1/me`` (scope ``profile``) and ``GET /v1/lines`` (scope ``lines``) answer what the token proves:
who (``sub``), through which client (``client_id``), on whose behalf (``act``), how strongly authenticated
(``acr``, ``amr``, ``auth_time``).

Run::

    SELFCARE_API_ISSUER=http://127.0.0.1:5000 SELFCARE_API_AUDIENCE=https://api.selfcare.example/lines \\
        python -m examples.selfcare_api            # listens on 127.0.0.1:5002 (SELFCARE_API_HOST/PORT)

Every setting is ``SELFCARE_API_<NAME>`` in the environment or a key of the mapping given to ``create_app``.
"""
from __future__ import annotations

import base64
import json
import os
import threading
import time
from functools import wraps

import requests
from flask import Flask, current_app, g, jsonify, request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

DEFAULTS = {
    "ISSUER": "http://127.0.0.1:5000",  # the IdP
    "AUDIENCE": "https://api.selfcare.example/lines",  # this API's identifier: the `audience` clients ask for
    "MODE": "jwt",  # jwt (local validation) | introspection (ask the IdP every time)
    "JWKS_URI": "",  # empty: the jwks_uri of the IdP's discovery document
    "JWKS_MAX_AGE": 3600,  # seconds the JWKS is trusted before it is fetched again
    "JWKS_REFETCH_INTERVAL": 10,  # at least this many seconds between two fetches (unknown kid, expiry)
    "LEEWAY": 30,  # seconds of clock skew allowed on exp and iat
    "ALGORITHMS": ["ES256", "RS256"],
    "CLIENT_ID": "",  # introspection mode: this API's client, registered --may-introspect
    "CLIENT_SECRET": "",
    "HTTP_TIMEOUT": 5,
}


class TokenError(Exception):
    def __init__(self, status: int, error: str, description: str):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def _unauthorized(description: str) -> TokenError:
    return TokenError(401, "invalid_token", description)


class IdP:
    """What this API knows about the IdP: its discovery document and its signing keys, cached per process."""

    def __init__(self, config: dict):
        self.config = config
        self._lock = threading.Lock()
        self._metadata: dict | None = None
        self._keys: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self.jwks_fetches = 0

    def _get_json(self, url: str) -> dict:
        response = requests.get(url, timeout=self.config["HTTP_TIMEOUT"], allow_redirects=False)
        response.raise_for_status()
        return response.json()

    def metadata(self) -> dict:
        if self._metadata is None:
            document = self._get_json(self.config["ISSUER"] + "/.well-known/openid-configuration")
            if document.get("issuer") != self.config["ISSUER"]:
                raise RuntimeError("the discovery document names another issuer")
            self._metadata = document
        return self._metadata

    def _fetch_keys(self) -> None:
        uri = self.config["JWKS_URI"] or self.metadata()["jwks_uri"]
        self.jwks_fetches += 1
        try:
            document = self._get_json(uri)
            keys = KeySet.import_key_set({"keys": [k for k in document.get("keys", [])
                                                   if k.get("kty") in ("EC", "RSA") and k.get("kid")]})
        except (requests.RequestException, ValueError, JoseError, TypeError, KeyError) as exc:
            current_app.logger.warning("could not fetch the JWKS %s: %s", uri, exc)
            return  # keep the keys we had
        self._keys, self._kids = keys, frozenset(k.kid for k in keys.keys)
        self._fetched_at = time.monotonic()

    def keys_for(self, kid: str) -> KeySet | None:
        """The IdP's keys if they include ``kid``: cached, refetched (rate-limited) when ``kid`` is new."""
        with self._lock:
            now = time.monotonic()
            fresh = self._keys is not None and now - self._fetched_at < self.config["JWKS_MAX_AGE"]
            if not (fresh and kid in self._kids):
                if self._attempted_at is None or now - self._attempted_at >= self.config["JWKS_REFETCH_INTERVAL"]:
                    self._attempted_at = now
                    self._fetch_keys()
            return self._keys if self._keys is not None and kid in self._kids else None

    def introspect(self, token: str) -> dict:
        response = requests.post(self.metadata()["introspection_endpoint"], data={"token": token},
                                 auth=(self.config["CLIENT_ID"], self.config["CLIENT_SECRET"]),
                                 timeout=self.config["HTTP_TIMEOUT"])
        if response.status_code != 200:
            raise TokenError(503, "temporarily_unavailable", "The IdP cannot check tokens right now.")
        return response.json()


def _header(token: str) -> dict:
    try:
        encoded = token.split(".")[0]
        return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, UnicodeError):
        raise _unauthorized("The access token is not a JWT.") from None


def _audiences(claims: dict) -> list:
    aud = claims.get("aud")
    return [aud] if isinstance(aud, str) else list(aud) if isinstance(aud, list) else []


def _check_claims(claims: dict, config: dict) -> dict:
    now = time.time()
    if claims.get("iss") != config["ISSUER"]:
        raise _unauthorized("The access token comes from another issuer.")
    if config["AUDIENCE"] not in _audiences(claims):
        raise _unauthorized("The access token is not meant for this API.")
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or exp + config["LEEWAY"] <= now:
        raise _unauthorized("The access token has expired.")
    iat = claims.get("iat")
    if not isinstance(iat, (int, float)) or iat > now + config["LEEWAY"]:
        raise _unauthorized("The access token has no valid iat.")
    if not claims.get("sub") or not claims.get("client_id"):
        raise _unauthorized("The access token lacks sub or client_id.")
    return claims


def validate_jwt(token: str, idp: IdP, config: dict) -> dict:
    """RFC 9068 §4: the checks a resource server makes on a JWT access token."""
    if token.count(".") != 2 or len(token) > 8192:
        raise _unauthorized("The access token is not a JWT.")
    header = _header(token)
    if str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
        raise _unauthorized("The token is not an access token (typ at+jwt).")
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in config["ALGORITHMS"] or not isinstance(kid, str):
        raise _unauthorized("The access token's algorithm or kid is not accepted.")
    keys = idp.keys_for(kid)
    if keys is None:
        raise _unauthorized("The access token is signed with an unknown key.")
    try:
        claims = jwt.decode(token, keys, algorithms=[alg]).claims
    except (JoseError, ValueError, TypeError):
        raise _unauthorized("The access token's signature is not valid.") from None
    return _check_claims(claims, config)


def validate_by_introspection(token: str, idp: IdP, config: dict) -> dict:
    """RFC 7662: the IdP says whether the token is active (not expired, not revoked); we still check aud."""
    answer = idp.introspect(token)
    if answer.get("active") is not True:
        raise _unauthorized("The access token is not active.")
    if answer.get("token_type", "Bearer") != "Bearer":
        raise _unauthorized("The token is not an access token.")
    return _check_claims(answer, config)


def require(scope: str):
    """Decorator: the request needs a valid token for this API with ``scope``; its claims go to ``g.token``."""

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            config, idp = current_app.config["SELFCARE_API"], current_app.extensions["selfcare_api.idp"]
            try:
                scheme, _, token = request.headers.get("Authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    raise TokenError(401, "", "")
                token = token.strip()
                if config["MODE"] == "introspection":
                    claims = validate_by_introspection(token, idp, config)
                else:
                    claims = validate_jwt(token, idp, config)
                if scope not in str(claims.get("scope", "")).split():
                    raise TokenError(403, "insufficient_scope", f"This endpoint needs the {scope} scope.")
            except TokenError as error:
                return _challenge(error, scope)
            except (requests.RequestException, RuntimeError, ValueError):
                return _challenge(TokenError(503, "temporarily_unavailable", "The IdP cannot be reached."), scope)
            g.token = claims
            return view(*args, **kwargs)

        return wrapper

    return decorator


def _challenge(error: TokenError, scope: str):
    challenge = 'Bearer realm="selfcare-api"'
    body = {}
    if error.error:
        challenge += f', error="{error.error}", error_description="{error.description}"'
        body = {"error": error.error, "error_description": error.description}
        if error.error == "insufficient_scope":
            challenge += f', scope="{scope}"'
    response = jsonify(body)
    response.status_code = error.status
    if error.status in (401, 403):
        response.headers["WWW-Authenticate"] = challenge
    response.headers["Cache-Control"] = "no-store"
    return response


def _proof() -> dict:
    token = g.token
    return {key: token[key] for key in ("sub", "client_id", "scope", "act", "acr", "amr", "auth_time", "exp")
            if key in token}


def create_app(settings: dict | None = None) -> Flask:
    app = Flask(__name__)
    config = dict(DEFAULTS)
    for key, default in DEFAULTS.items():
        raw = os.environ.get("SELFCARE_API_" + key)
        if raw is not None:
            config[key] = raw if isinstance(default, str) else json.loads(raw)
    config.update(settings or {})
    config["ISSUER"] = config["ISSUER"].rstrip("/")
    if config["MODE"] not in ("jwt", "introspection"):
        raise ValueError("MODE is jwt or introspection")
    if config["MODE"] == "introspection" and not (config["CLIENT_ID"] and config["CLIENT_SECRET"]):
        raise ValueError("introspection needs CLIENT_ID and CLIENT_SECRET (a client registered --may-introspect)")
    app.config["SELFCARE_API"] = config
    app.extensions["selfcare_api.idp"] = IdP(config)

    @app.get("/v1/me")
    @require("profile")
    def me():
        return jsonify({"api": config["AUDIENCE"], "token": _proof()})

    @app.get("/v1/lines")
    @require("lines")
    def lines():
        return jsonify({"api": config["AUDIENCE"], "token": _proof()})

    return app


if __name__ == "__main__":
    create_app().run(host=os.environ.get("SELFCARE_API_HOST", "127.0.0.1"),
                     port=int(os.environ.get("SELFCARE_API_PORT", "5002")))
