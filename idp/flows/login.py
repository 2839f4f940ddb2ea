"""Explicit login: mobile line + password (SPEC §3 points 1–2; issue 2 point 7).

State diagram::

    credentials ──(line + password right)──▶ done: SSO session started, back to /authorize
         │  │  └──(wrong, attempts left)──▶ credentials (same message for unknown line and wrong password)
         │  └──(line + password right, password temporary)──▶ change_password
         │                  ├──(policy refusals)──▶ change_password (the problems listed)
         │                  └──(new password + security question and answer saved)──▶ done (as above)
         └──(attempts used up)──▶ flow ends; a new one starts with the same authorization request

A temporary password (the referent's, e-mailed at registration — SPEC §3 point 4) opens no session: it only leads
to ``change_password``, and the SSO session starts after ``accounts.change_credentials`` has saved the new password
and question (``registration.set_credentials``, which clears the flag). Whoever abandons the change is not logged
in, and the temporary password keeps working only until the change; it cannot be kept as the new one.

The flow carries the original authorization request's query string and returns to it; the login marks that
request as satisfied so ``prompt=login`` and ``max_age`` do not loop.
"""
from __future__ import annotations

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from .. import accounts, lockout, msisdn, passwords, sessions, signals
from ..oauth.policy import request_hash
from ..oauth.scopes import ACR_PASSWORD, AMR
from .base import Flow, FlowConflict, FlowExpired, TooManyAttempts, client_address
from .steps import NewCredentialsForm, credentials_problems

bp = Blueprint("login", __name__, url_prefix="/flows/login")


class LoginFlow(Flow):
    kind = "login"
    initial = "credentials"
    transitions = {"credentials": ("credentials", "change_password", "done"), "change_password": ("done",)}
    attempts_setting = "LOGIN_MAX_ATTEMPTS"


class CredentialsForm(FlaskForm):
    username = StringField("username", validators=[DataRequired(), Length(max=32)])
    password = PasswordField("password", validators=[DataRequired(), Length(max=256)])


def _locale(ui_locales: str | None) -> str | None:
    for tag in (ui_locales or "").split():
        lang = tag.split("-")[0].lower()
        if lang in current_app.config["LANGUAGES"]:
            return lang
    return None


def begin(authorize_query: str, client, login_hint: str | None, ui_locales: str | None):
    """Start a login for an authorization request and send the browser to it."""
    flow = LoginFlow.start(authorize_query=authorize_query, client_name=client.name, client_id=client.client_id,
                           login_hint=msisdn.try_normalise(login_hint) if login_hint else None,
                           locale=_locale(ui_locales))
    return redirect(url_for("login.credentials", flow_id=flow.id))


def _restart(authorize_query: str, message: str):
    flash(message, "warning")
    return redirect(url_for("oauth.authorize") + "?" + authorize_query) if authorize_query \
        else redirect(url_for("oauth.home"))


@bp.route("/<flow_id>", methods=["GET", "POST"])
def credentials(flow_id: str):
    try:
        flow = LoginFlow.load(flow_id)
    except FlowExpired:
        return render_template("flows/expired.html"), 410
    if request.args.get("lang") in current_app.config["LANGUAGES"]:
        flow.data["locale"] = request.args["lang"]
        try:
            flow.save()
        except (FlowConflict, FlowExpired):
            pass
    g.locale = flow.data.get("locale")
    if flow.state == "change_password":
        return _change_password(flow)
    form = CredentialsForm()
    error = None
    if request.method == "GET" and flow.data.get("login_hint"):
        form.username.data = flow.data["login_hint"]
    if form.validate_on_submit():
        try:
            flow.count_attempt()
        except TooManyAttempts:
            return _restart(flow.data["authorize_query"], _("Troppi tentativi non riusciti: ricomincia l'accesso."))
        typed = msisdn.try_normalise(form.username.data) or form.username.data.strip()
        try:
            ticket = lockout.take(typed, client_address())
        except lockout.Locked as locked:
            signals.emit(signals.LOGIN_FAILED, "locked", line=msisdn.try_normalise(typed))
            return _locked_page(flow, form, locked)
        account = accounts.check_password(form.username.data, form.password.data)
        if account is None:
            lockout.failed(ticket)
            signals.emit(signals.LOGIN_FAILED, "refused", line=msisdn.try_normalise(typed),
                         client_id=flow.data.get("client_id"))
        else:
            lockout.succeeded(ticket)
            next_state = "change_password" if account.password_temporary else "done"
            try:
                flow.advance(next_state, account_id=account.id)
            except (FlowConflict, FlowExpired):
                return _restart(flow.data["authorize_query"], _("La richiesta è già stata inviata."))
            if next_state == "change_password":  # no session yet: only the change leads on
                return redirect(url_for("login.credentials", flow_id=flow.id))
            return _log_in(flow, account)
        error = _("Numero di linea o password non corretti.")
    elif request.method == "POST":
        error = _("Inserisci il numero di linea e la password.")
    return render_template("flows/login/credentials.html", form=form, flow=flow, error=error,
                           client_name=flow.data.get("client_name"))


def _locked_page(flow: LoginFlow, form, locked: lockout.Locked):
    """The same page whether or not the line has an account: it says only how long to wait."""
    if locked.locked:
        minutes = max(1, (locked.retry_after + 59) // 60)
        error = _("Troppi tentativi non riusciti: per sicurezza l'accesso con questa linea è sospeso per "
                  "%(minutes)d minuti. Se non ricordi la password puoi recuperarla.", minutes=minutes)
    else:
        error = _("Attendi %(seconds)d secondi prima di riprovare.", seconds=locked.retry_after)
    return render_template("flows/login/credentials.html", form=form, flow=flow, error=error,
                           client_name=flow.data.get("client_name")), 429


def _log_in(flow: LoginFlow, account):
    """The flow is done: start the SSO session and go back to the authorization request."""
    flow.finish()
    query = flow.data["authorize_query"]
    sessions.start(account.id, ACR_PASSWORD, AMR[ACR_PASSWORD], fresh_for=request_hash(query.encode()))
    signals.emit(signals.LOGIN_SUCCEEDED, account_id=account.id, line=account.username,
                 client_id=flow.data.get("client_id"), acr=ACR_PASSWORD)
    return redirect(url_for("oauth.authorize") + "?" + query)


def new_credentials_problems(form: NewCredentialsForm, account) -> list[str]:
    """The shared policy, and the temporary password (it travelled by e-mail) may not be kept."""
    problems = credentials_problems(form, account.username, account.email)
    if not problems and passwords.verify_secret(account.password_hash, form.password.data):
        problems.append(_("La nuova password deve essere diversa da quella provvisoria."))
    return problems


def _change_password(flow: LoginFlow):
    """The forced change after a temporary password (SPEC §3 point 2): new password + security question."""
    account = accounts.active_by_id(flow.data["account_id"])
    if account is None or not account.password_temporary:  # disabled, or changed from another window meanwhile
        flow.finish()
        return _restart(flow.data["authorize_query"], _("Accedi di nuovo con la tua password."))
    form = NewCredentialsForm()
    problems: list[str] = []
    if request.method == "POST":
        form.validate_on_submit()
        problems = new_credentials_problems(form, account)
        if not problems:
            try:
                flow.advance("done")  # compare-and-set: one submission goes on
            except (FlowConflict, FlowExpired):
                return _restart(flow.data["authorize_query"], _("La richiesta è già stata inviata."))
            accounts.change_credentials(account, form.password.data, form.question.data, form.answer.data,
                                        reason="first_login", locale=flow.data.get("locale"))
            return _log_in(flow, account)
    return render_template("flows/login/change_password.html", form=form, flow=flow, problems=problems,
                           line=account.username, client_name=flow.data.get("client_name"))
