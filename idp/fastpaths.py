"""Requests answered before Flask (issue 8 point 5; shared/notes/performance.md): the fixed documents, and the
common case of userinfo, introspection, revocation and the token endpoint's three everyday grants.

Flask's request machinery costs ~110 µs per request on this machine kind, Authlib's token endpoint as much again:
more than the work these answers need.

- **Discovery and the JWKS** are the same bytes for every request until the configuration or the key folder
  changes: precomputed body, ETag and 304, without routing, request objects or per-request hooks.
- **Userinfo** (``GET`` with ``Authorization: Bearer``), **introspection**, **revocation** and the
  **``authorization_code``**, **``refresh_token``** and **``client_credentials``** grants (``POST`` authenticated
  with ``client_secret_basic``, a url-encoded body of the usual parameters) — the calls relying parties, resource
  servers and batch jobs make all day — are answered here with the functions the Flask views, Authlib's endpoints
  and our grants use (``views.userinfo_claims``, ``endpoints.introspection``, ``endpoints.revoke``,
  ``grants.client_credentials_scope``, ``grants.id_token``, ``grants.CodeRecord``, ``tokens.issue``/
  ``redeem_code``/``rotate_refresh``/``save``): the same bytes and headers, counted in the same request metrics.
  Anything else — another method, authentication or parameter, a malformed header or body, an unknown client or a
  wrong secret, a code that fails a check (PKCE, redirect URI, expiry), a used code or refresh token, an exchanged
  refresh token, oversized headers, any exception (a database outage included) — goes on to Flask with its body
  intact, where the one implementation of those answers and errors lives. A token is issued, claimed or revoked
  only at the end, after every check, so a request does not pass on after it changed anything; a failure after
  that point is answered here as Flask's handlers would (503 or 500 JSON). The one exception is the code, taken
  first as Authlib takes it: a request passed on after that carries what it took (``tokens.TAKEN_CODE``), so
  Flask goes on from the same state instead of taking it again.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import time
from urllib.parse import parse_qsl

import redis
import sqlalchemy.exc
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from flask import g
from werkzeug.http import HTTP_STATUS_CODES, parse_etags

from . import audit, keystore, observability
from .oauth import discovery
from .oauth.clients import NETWORK_GRANT
from .oauth.exchange import ACCESS_TOKEN as ACCESS_TOKEN_TYPE
from .oauth.exchange import GRANT as EXCHANGE_GRANT

HSTS = "max-age=31536000; includeSubDomains"
_FORM = "application/x-www-form-urlencoded"
_CODE_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")  # RFC 7636 §4.1
_EXCHANGE_PARAMETERS = frozenset(("grant_type", "subject_token", "subject_token_type", "audience", "resource", "scope",
                                  "requested_token_type"))
_NO_STORE_JSON = (("Content-Type", "application/json"), ("Cache-Control", "no-store"), ("Pragma", "no-cache"))
_DEPENDENCY_ERRORS = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.TimeoutError,
                      redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, keystore.KeyStoreError)


def headers_too_large(environ, limit: int) -> bool:
    """All request headers together, as the client sent them (name, value, ": " and CRLF), over ``limit`` bytes.

    (One comprehension over the environ, which granian fills with the whole process environment too.)"""
    size = sum([len(key) + len(value) - 1 for key, value in environ.items() if key[:5] == "HTTP_"])
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        value = environ.get(key)
        if value is not None:
            size += len(key) + len(value) + 4
    return size > limit


class _PassOn(Exception):
    """Not the common case: Flask answers."""


class _Failed(Exception):
    """A failure after the request changed something: answered here, as Flask's error handlers would."""


class BeforeFlask:
    FIXED = frozenset(("/.well-known/openid-configuration", "/jwks.json"))

    def __init__(self, wsgi_app, app):
        self.wsgi_app = wsgi_app
        self.app = app
        self._discovery: tuple[str, bytes, str] | None = None
        self._handlers = {("GET", "/userinfo"): ("oauth.userinfo", self._userinfo),
                          ("POST", "/introspect"): ("oauth.introspect", self._introspection),
                          ("POST", "/token"): ("oauth.token", self._token),
                          ("POST", "/revoke"): ("oauth.revoke", self._revocation)}

    def __call__(self, environ, start_response):
        path, method = environ.get("PATH_INFO"), environ.get("REQUEST_METHOD")
        if path in self.FIXED:
            if method in ("GET", "HEAD") and not self._too_large(environ):  # oversized: Flask answers 431
                return self._fixed(environ, start_response, path)
        else:
            handler = self._handlers.get((method, path))
            if handler is not None and not self._too_large(environ):
                return self._answer_or_pass_on(environ, start_response, *handler)
        return self.wsgi_app(environ, start_response)

    def _too_large(self, environ) -> bool:
        return headers_too_large(environ, int(self.app.config["MAX_HEADER_BYTES"]))

    def _security_headers(self) -> list[tuple[str, str]]:
        headers = [("X-Content-Type-Options", "nosniff")]
        if self.app.config["DEPLOYMENT"] == "production":
            headers.append(("Strict-Transport-Security", HSTS))
        return headers

    # discovery and JWKS -------------------------------------------------------------------------------------------
    def _discovery_body(self) -> tuple[bytes, str]:
        issuer = self.app.config["ISSUER"]
        if self._discovery is None or self._discovery[0] != issuer:
            body = discovery.body(issuer)
            self._discovery = (issuer, body, hashlib.sha256(body).hexdigest()[:32])
        return self._discovery[1], self._discovery[2]

    def _fixed(self, environ, start_response, path: str):
        if path == "/jwks.json":
            body, etag = self.app.extensions["idp.keyring"].jwks()
            mimetype, max_age = "application/jwk-set+json", int(self.app.config["JWKS_MAX_AGE"])
        else:
            body, etag = self._discovery_body()
            mimetype, max_age = "application/json", 3600
        headers = [("Cache-Control", f"public, max-age={max_age}"), ("ETag", f'"{etag}"'),
                   ("Access-Control-Allow-Origin", "*"), *self._security_headers()]
        if_none_match = environ.get("HTTP_IF_NONE_MATCH")
        if if_none_match and parse_etags(if_none_match).contains_weak(etag):
            start_response("304 Not Modified", headers)
            return [b""]
        headers += [("Content-Type", mimetype), ("Content-Length", str(len(body)))]
        start_response("200 OK", headers)
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    # the common cases ------------------------------------------------------------------------------------------
    def _answer_or_pass_on(self, environ, start_response, endpoint: str, handler):
        started = time.perf_counter()
        with self.app.app_context():
            g.wsgi_environ = environ  # for the audit log: address, user agent, request id
            try:
                status, body, headers = handler(environ)
            except _PassOn:
                return self.wsgi_app(environ, start_response)
            except _Failed as failed:
                status, body, headers = self._failure(endpoint, failed.__cause__)
            except Exception as error:  # Flask meets it again and answers: the 503 JSON, or a logged 500
                if not isinstance(error, _DEPENDENCY_ERRORS):
                    self.app.logger.exception("answering %s before Flask failed; Flask answers", endpoint)
                return self.wsgi_app(environ, start_response)
            observability.record_request(endpoint, environ["REQUEST_METHOD"], status, time.perf_counter() - started)
            headers += audit.request_id_header()
        headers += [("Content-Length", str(len(body))), *self._security_headers()]
        start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}", headers)
        return [body]

    def _failure(self, endpoint: str, error: BaseException) -> tuple[int, bytes, list]:
        """The JSON of ``idp._register_handlers`` for a dependency that failed (503), or anything else (500)."""
        if isinstance(error, _DEPENDENCY_ERRORS):
            self.app.logger.error("dependency unavailable on %s: %s", endpoint, error.__class__.__name__)
            body = {"error": "temporarily_unavailable",
                    "error_description": "The service is temporarily unavailable; retry shortly."}
            return 503, json.dumps(body).encode(), [("Content-Type", "application/json"), ("Retry-After", "5"),
                                                    ("Cache-Control", "no-store")]
        self.app.logger.error("unhandled error on %s", endpoint, exc_info=error)
        return 500, b'{"error": "server_error"}', [("Content-Type", "application/json")]

    def _userinfo(self, environ) -> tuple[int, bytes, list]:
        from .oauth.views import UserinfoRefused, bearer_challenge, userinfo_claims
        scheme, _sep, value = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise _PassOn
        try:
            claims = userinfo_claims(value)
        except UserinfoRefused as refused:
            body, challenge = bearer_challenge(refused)
            return refused.status, _jsonify_bytes(body), [
                ("Content-Type", "application/json"), ("WWW-Authenticate", challenge),
                ("Cache-Control", "no-store")]
        return 200, _jsonify_bytes(claims), [("Content-Type", "application/json"), ("Cache-Control", "no-store")]

    def _introspection(self, environ) -> tuple[int, bytes, list]:
        from .oauth.endpoints import introspection
        form = self._form(environ, {"token", "token_type_hint"})
        if not form.get("token"):
            raise _PassOn
        client = self._basic_client(environ, "introspection")
        body = _authlib_json_bytes(introspection(client, form["token"]))
        return 200, body, list(_NO_STORE_JSON)

    def _revocation(self, environ) -> tuple[int, bytes, list]:
        """RFC 7009: a token of this client is revoked, an unknown one needs nothing (200 either way); another
        client's token goes on to Flask (400 invalid_grant, as Authlib answers)."""
        from .oauth.endpoints import find_token, revoke
        form = self._form(environ, {"token", "token_type_hint"})
        if not form.get("token"):
            raise _PassOn
        client = self._basic_client(environ, "revocation")
        token = find_token(form["token"], None)
        if token is not None:
            if not token.check_client(client):
                raise _PassOn
            revoke(token)
        return 200, b"{}", list(_NO_STORE_JSON)

    def _token(self, environ) -> tuple[int, bytes, list]:
        form = self._form(environ, {"grant_type", "scope", "refresh_token", "code", "redirect_uri", "code_verifier",
                                    "client_id", *_EXCHANGE_PARAMETERS})
        grant_type = form.get("grant_type")
        if grant_type == "client_credentials" and set(form) <= {"grant_type", "scope"}:
            return self._client_credentials(environ, form)
        if grant_type == "refresh_token" and form.get("refresh_token") \
                and set(form) <= {"grant_type", "scope", "refresh_token"}:
            return self._refresh(environ, form)
        if grant_type == "authorization_code" and form.get("code") \
                and set(form) <= {"grant_type", "code", "redirect_uri", "code_verifier"}:
            return self._code(environ, form)
        if grant_type == NETWORK_GRANT and form.get("client_id") and set(form) <= {"grant_type", "client_id", "scope"}:
            return self._network(environ, form)
        if grant_type == EXCHANGE_GRANT and form.get("subject_token_type") == ACCESS_TOKEN_TYPE \
                and set(form) <= _EXCHANGE_PARAMETERS:
            return self._exchange(environ, form)
        raise _PassOn

    def _client_credentials(self, environ, form: dict) -> tuple[int, bytes, list]:
        """Issues a token: nothing may pass on to Flask after ``tokens.save`` (it would issue a second one)."""
        from authlib.oauth2 import OAuth2Error

        from .oauth import tokens
        from .oauth.grants import client_credentials_scope
        client = self._basic_client(environ, "token")
        if not client.check_grant_type("client_credentials"):
            raise _PassOn
        try:
            scope = client_credentials_scope(client, form.get("scope"))
        except OAuth2Error:
            raise _PassOn from None
        token, row = tokens.issue(client, "client_credentials", scope)
        body = _authlib_json_bytes(token)
        tokens.save(row)
        return 200, body, list(_NO_STORE_JSON)

    def _refresh(self, environ, form: dict) -> tuple[int, bytes, list]:
        """Refresh rotation (RFC 6749 §6) as ``grants.RefreshTokenGrant`` does it, for a usable token of this
        client; a used, revoked, expired or exchanged token goes on to Flask (reuse detection lives there). The new
        pair and ID token are made first; then ``tokens.rotate_refresh`` claims the old token and stores the new
        one (one atomic statement on PostgreSQL); a lost race goes on to Flask, which meets a used token; a failure
        is answered here."""
        from authlib.oauth2.rfc6749 import scope_to_list

        from .oauth import tokens
        from .oauth.grants import id_token
        client = self._basic_client(environ, "token")
        if not client.check_grant_type("refresh_token"):
            raise _PassOn
        row = tokens.find_refresh_token(form["refresh_token"])
        if row is None or row.grant_type == EXCHANGE_GRANT or not tokens.refresh_usable(row) \
                or not row.check_client(client) or row.person is None or not row.person.is_active:
            raise _PassOn
        scope = form.get("scope") or row.scope
        if form.get("scope") and not (row.scope and set(scope_to_list(scope)) <= set(scope_to_list(row.scope))):
            raise _PassOn
        login = tokens.context_of(row)
        token, new_row = tokens.issue(client, "refresh_token", scope, account=row.person, login=login,
                                      include_refresh=True)
        if "openid" in (scope_to_list(token.get("scope")) or []):
            token["id_token"] = id_token(token, client, login, row.person)
        body = _authlib_json_bytes(token)
        try:
            rotated = tokens.rotate_refresh(row, new_row)
        except Exception as error:  # PostgreSQL: nothing changed, the old token still works; answered, not passed on
            raise _Failed(error) from error
        if not rotated:
            raise _PassOn  # another presentation won: Flask meets a used token
        return 200, body, list(_NO_STORE_JSON)

    def _code(self, environ, form: dict) -> tuple[int, bytes, list]:
        """Code redemption (RFC 6749 §4.1.3, RFC 7636, OIDC Core §3.1.3) as ``grants.AuthorizationCodeGrant`` and
        Authlib's PKCE check do it. The code is taken first, as Authlib does (one atomic step: of concurrent
        presentations one wins; a used code ends its family); a taken code that fails a check (client, expiry,
        redirect URI, PKCE, an inactive person) goes on to Flask with what was taken (``tokens.TAKEN_CODE``), which
        answers the error; once tokens are issued a failure is answered here."""
        from . import people
        from .oauth import tokens
        from .oauth.grants import CodeRecord, id_token
        client = self._basic_client(environ, "token")
        if not client.check_grant_type("authorization_code") or len(form["code"]) > 128:
            raise _PassOn
        record = tokens.redeem_code(form["code"], environ)
        if record is None or record["client_id"] != client.client_id or record["expires_at"] <= time.time() \
                or (record["redirect_uri"] and form.get("redirect_uri") != record["redirect_uri"]) \
                or not _pkce_holds(record, form.get("code_verifier")):
            raise _PassOn
        person = people.active(record["account_id"])
        if person is None:
            raise _PassOn
        code = CodeRecord(**record)
        login = code.login_context()
        token, row = tokens.issue(client, "authorization_code", code.scope, account=person, login=login,
                                  include_refresh=client.check_grant_type("refresh_token"))
        if "openid" in code.scope.split():
            token["id_token"] = id_token(token, client, login, person, nonce=code.nonce)
        body = _authlib_json_bytes(token)
        try:
            tokens.save(row)
            tokens.confirm_family_alive(code.family_id)
        except Exception as error:
            raise _Failed(error) from error
        return 200, body, list(_NO_STORE_JSON)

    def _network(self, environ, form: dict) -> tuple[int, bytes, list]:
        """The network-autologin grant of a first-party public app (``grants.NetworkAutologinGrant``): the same
        checks, the same identity (``gateway.identify``, decided once per request and kept in the environ, so a
        request handed to Flask after it is not identified twice), the same tokens and audit event."""
        from authlib.oauth2 import OAuth2Error

        from . import gateway
        from .oauth import tokens
        from .oauth.clients import query_client
        from .oauth.grants import announce_network_login, id_token, network_login, network_scope
        if "HTTP_AUTHORIZATION" in environ:
            raise _PassOn
        client = query_client(form["client_id"])
        if client is None or not client.check_endpoint_auth_method("none", "token") or not client.first_party \
                or not client.check_grant_type(NETWORK_GRANT):
            raise _PassOn
        try:
            scope = network_scope(client, form.get("scope"))
        except OAuth2Error:
            raise _PassOn from None
        person = gateway.eligible_account(gateway.identify(environ))
        if person is None:
            raise _PassOn
        login = network_login()
        token, row = tokens.issue(client, NETWORK_GRANT, scope, account=person, login=login,
                                  include_refresh=client.check_grant_type("refresh_token"))
        if "openid" in scope.split():
            token["id_token"] = id_token(token, client, login, person)
        body = _authlib_json_bytes(token)
        with audit.collected() as events:
            announce_network_login(person, client)
        try:
            tokens.save(row, also=events)  # the login's token and its audit event: together, one round trip
        except Exception as error:
            raise _Failed(error) from error
        return 200, body, list(_NO_STORE_JSON)

    def _exchange(self, environ, form: dict) -> tuple[int, bytes, list]:
        """Token exchange (RFC 8693) of one of our access tokens, as ``exchange.TokenExchangeGrant`` does it, with
        its functions (``validate``, ``exchange_token``, ``announce``): checking such a subject changes nothing, so
        any refusal goes on to Flask, which answers and audits it."""
        from authlib.oauth2 import OAuth2Error
        from werkzeug.datastructures import MultiDict

        from .oauth import exchange, tokens
        client = self._basic_client(environ, "token")
        try:
            request = exchange.validate(client, MultiDict(form))
        except OAuth2Error:
            raise _PassOn from None
        token, row = exchange.exchange_token(client, request)
        with audit.collected() as events:
            exchange.announce(client, request, row)
        try:
            tokens.save(row, also=events)  # the token and its audit event: together, one round trip
        except Exception as error:
            raise _Failed(error) from error
        token["issued_token_type"] = exchange.ACCESS_TOKEN
        return 200, _authlib_json_bytes(token), list(_NO_STORE_JSON)

    @staticmethod
    def _basic_client(environ, endpoint: str):
        """The client authenticated by ``client_secret_basic`` (RFC 6749 §2.3.1), as Authlib checks it."""
        from .oauth.clients import query_client
        client_id, secret = extract_basic_authorization({"Authorization": environ.get("HTTP_AUTHORIZATION")})
        if not client_id or not secret:
            raise _PassOn
        client = query_client(client_id)
        if client is None or not client.check_endpoint_auth_method("client_secret_basic", endpoint) \
                or not client.check_client_secret(secret):
            raise _PassOn
        return client

    def _form(self, environ, names: set[str]) -> dict[str, str]:
        """A small url-encoded body of these names, each at most once; put back for Flask whatever happens next."""
        if environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower() != _FORM:
            raise _PassOn
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            raise _PassOn from None
        if not 0 < length <= int(self.app.config["MAX_CONTENT_LENGTH"]):
            raise _PassOn
        raw = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(raw)
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise _PassOn from None
        form = dict(pairs)
        if len(form) != len(pairs) or set(form) - names:
            raise _PassOn
        return form


def _jsonify_bytes(obj) -> bytes:
    """The bytes ``flask.jsonify`` makes outside debug mode: compact, sorted keys, ASCII, a final newline."""
    return (json.dumps(obj, separators=(",", ":"), sort_keys=True) + "\n").encode()


def _authlib_json_bytes(obj) -> bytes:
    """The bytes of Authlib's Flask responses (``flask.json.dumps``: sorted keys, ASCII, default separators)."""
    return json.dumps(obj, sort_keys=True).encode()


def _pkce_holds(record: dict, verifier: str | None) -> bool:
    """RFC 7636 §4.6 with S256 only, as ``grants.S256CodeChallenge`` checks it: a challenge needs its verifier, and
    a verifier without a challenge is refused (RFC 9700 §4.8)."""
    challenge = record.get("code_challenge")
    if not challenge:
        return not verifier
    if not verifier or (record.get("code_challenge_method") or "S256") != "S256" \
            or not _CODE_VERIFIER.match(verifier):
        return False
    computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()
    return hmac.compare_digest(computed, challenge)
