"""The Selfcare IdP: an OpenID Connect provider for a mobile operator's business self-care portal (SPEC §1).

``create_app`` only wires: configuration → extensions → blueprints → CLI → error handlers.
"""
from __future__ import annotations

import os

import redis
import sqlalchemy.exc
from flask import Flask, current_app, g, has_request_context, render_template, request
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, RequestHeaderFieldsTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from . import audit, config, database, directory, keystore, sessions, store  # noqa: F401  (database: pool checks)
from .extensions import babel, csrf, db, migrate
from .fastpaths import HSTS, BeforeFlask, headers_too_large


def _select_locale():
    if not has_request_context():
        return current_app.config["BABEL_DEFAULT_LOCALE"]
    chosen = g.get("locale")
    if chosen:
        return chosen
    offered = current_app.config["LANGUAGES"]
    default = current_app.config["BABEL_DEFAULT_LOCALE"]
    for tag in request.args.get("ui_locales", "").split():
        lang = tag.split("-")[0].lower()
        if lang in offered:
            return lang
    return request.accept_languages.best_match(offered, default=default)


def _datetime_local(epoch: int) -> str:
    from datetime import datetime
    from zoneinfo import ZoneInfo
    return datetime.fromtimestamp(int(epoch), ZoneInfo("Europe/Rome")).strftime("%d/%m/%Y %H:%M")


def _signed_in():
    """For the header's user icon: whether this browser has an SSO session (HTML pages only)."""
    def signed_in() -> bool:
        try:
            return sessions.current() is not None
        except Exception:  # an error page must render even when Redis is down
            return False
    return {"signed_in": signed_in}


def _synchronous(function):
    return function


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    app.session_interface = sessions.CsrfCookieSessionInterface()
    app.ensure_sync = _synchronous  # no view or hook here is a coroutine: skip Flask's per-call inspection
    config.load(app, test_config)
    app.wsgi_app = BeforeFlask(app.wsgi_app, app)
    if int(app.config["PROXY_FIX_HOPS"]) > 0:
        hops = int(app.config["PROXY_FIX_HOPS"])
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)

    db.init_app(app)
    migrate.init_app(app, db, directory=os.path.join(os.path.dirname(__file__), "migrations"),
                     render_as_batch=True, compare_type=True)
    csrf.init_app(app)
    babel.init_app(app, locale_selector=_select_locale)
    store.init_app(app)
    keystore.init_app(app)
    directory.init_app(app)
    audit.init_app(app)
    from .oauth import server as oauth_server
    oauth_server.init_app(app)

    from .flows import blueprints as flow_blueprints
    from .oauth import native as oauth_native
    from .oauth import views as oauth_views
    app.register_blueprint(oauth_views.bp)
    app.register_blueprint(oauth_native.bp)
    from . import health, observability
    app.register_blueprint(health.bp)
    observability.init_app(app)
    for blueprint in flow_blueprints():
        app.register_blueprint(blueprint)
    app.jinja_env.globals["has_endpoint"] = lambda name: name in app.view_functions

    from . import cli, devpages, msisdn
    cli.init_app(app)
    devpages.init_app(app)  # /dev/outbox, only when DEPLOYMENT == "development"
    app.add_template_filter(msisdn.mask, "mask_line")
    app.add_template_filter(_datetime_local, "datetime_local")
    app.context_processor(_signed_in)
    from flask_babel import get_locale
    app.jinja_env.globals["current_locale"] = lambda: str(get_locale() or "it")
    _register_handlers(app)
    return app


def _rollback_quietly() -> None:
    try:
        db.session.rollback()
    except Exception:  # the connection itself may be gone
        pass


_JSON_ENDPOINTS = ("/token", "/revoke", "/introspect", "/userinfo", "/authorize-challenge")


def _register_handlers(app: Flask) -> None:
    from .flows.base import FlowExpired

    def _header_limit():
        """Refuse oversized request headers (431) before anything else, CSRF check included, reads them."""
        if headers_too_large(request.environ, int(app.config["MAX_HEADER_BYTES"])):
            raise RequestHeaderFieldsTooLarge()
    app.before_request_funcs.setdefault(None, []).insert(0, _header_limit)

    @app.after_request
    def _headers(response):
        sessions.write_cookie(response)
        audit.add_request_id_header(response)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if app.config["DEPLOYMENT"] == "production":
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy",
                                        "default-src 'self'; frame-ancestors 'none'; form-action 'self' http: https:")
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Referrer-Policy", "no-referrer")
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.errorhandler(FlowExpired)
    def _flow_expired(error):
        return render_template("flows/expired.html"), 410

    @app.errorhandler(CSRFError)
    def _csrf_error(error):
        return render_template("error.html", title=_("Modulo scaduto"),
                               message=_("Il modulo è scaduto o non è valido. Torna indietro e riprova.")), 400

    @app.errorhandler(HTTPException)
    def _http_error(error):
        if request.path in _JSON_ENDPOINTS:
            return {"error": "invalid_request", "error_description": error.description}, error.code
        messages = {404: _("La pagina richiesta non esiste."), 405: _("Metodo non consentito."),
                    413: _("La richiesta è troppo grande."), 431: _("La richiesta è troppo grande.")}
        return render_template("error.html", title=_("Errore"),
                               message=messages.get(error.code, _("La richiesta non è valida."))), error.code

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    @app.errorhandler(sqlalchemy.exc.OperationalError)
    @app.errorhandler(sqlalchemy.exc.InterfaceError)
    @app.errorhandler(sqlalchemy.exc.TimeoutError)
    @app.errorhandler(keystore.KeyStoreError)
    def _unavailable(error):
        """A dependency (Redis, PostgreSQL, the key store) is down, saturated or unusable: say so; clients retry."""
        app.logger.error("dependency unavailable on %s: %s", request.path, error.__class__.__name__)
        _rollback_quietly()
        headers = {"Retry-After": "5", "Cache-Control": "no-store"}
        if request.path in _JSON_ENDPOINTS:
            return {"error": "temporarily_unavailable",
                    "error_description": "The service is temporarily unavailable; retry shortly."}, 503, headers
        return render_template("error.html", title=_("Servizio temporaneamente non disponibile"),
                               message=_("Il servizio è momentaneamente non disponibile. Riprova tra qualche "
                                         "istante: i dati inseriti finora non vanno persi.")), 503, headers

    @app.errorhandler(Exception)
    def _unexpected(error):
        app.logger.exception("unhandled error on %s", request.path)
        _rollback_quietly()
        if request.path in _JSON_ENDPOINTS:
            return {"error": "server_error"}, 500
        return render_template("error.html", title=_("Servizio non disponibile"),
                               message=_("Si è verificato un errore. Riprova tra qualche minuto.")), 500
