"""Logging in: network autologin, mobile line + password, the security question as a step-up
(SPEC §3 points 1–3; issue 2 point 7; issue 5 points 2 and 4).

State diagram::

    credentials ──("Accedi direttamente": trusted, signed header; eligible employee line)──▶ done (acr network)
         │  │  │  └──(line + password right)──▶ done (acr password), or question when the request needs it
         │  │  └──(wrong, attempts left)──▶ credentials (same message for unknown line and wrong password)
         │  └──(line + password right, password temporary)──▶ change_password
         │                  ├──(policy refusals)──▶ change_password (the problems listed)
         │                  └──(new password + security question and answer saved)──▶ done (as above)
         └──(attempts used up)──▶ flow ends; a new one starts with the same authorization request
    question ──(answer right)──▶ done (acr password + question)   ──(wrong)──▶ question (counted like passwords)

The autologin button appears only when ``oauth.policy`` allows the network level for this request, the gateway
vouches for the line (``gateway.identify``) and the line belongs to an active employee (never a referent); its
click is a CSRF-protected POST that checks everything again on that request's own signed header. A session that
already exists but is below the level the RP asks for is stepped up (``sessions.step_up``: same ``sid``): a
network session is asked for the password of its own line, a password session only for the security question.
Wrong answers count in the same lockout as wrong passwords.

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

from .. import accounts, gateway, lockout, msisdn, passwords, security_questions, sessions, signals
from ..oauth.policy import Decision, level, request_hash
from ..oauth.scopes import ACR_NETWORK, ACR_PASSWORD, ACR_PASSWORD_QUESTION, AMR
from .base import Flow, FlowConflict, FlowExpired, TooManyAttempts, client_address
from .steps import NewCredentialsForm, credentials_problems

bp = Blueprint("login", __name__, url_prefix="/flows/login")


class LoginFlow(Flow):
    kind = "login"
    initial = "credentials"
    transitions = {"credentials": ("credentials", "change_password", "question", "done"),
                   "change_password": ("done",), "question": ("done",)}
    attempts_setting = "LOGIN_MAX_ATTEMPTS"


class CredentialsForm(FlaskForm):
    username = StringField("username", validators=[DataRequired(), Length(max=32)])
    password = PasswordField("password", validators=[DataRequired(), Length(max=256)])


class NetworkForm(FlaskForm):
    """The "Accedi direttamente" button: only its CSRF token."""


class QuestionForm(FlaskForm):
    answer = StringField("answer", validators=[DataRequired(), Length(max=200)])


def _locale(ui_locales: str | None) -> str | None:
    for tag in (ui_locales or "").split():
        lang = tag.split("-")[0].lower()
        if lang in current_app.config["LANGUAGES"]:
            return lang
    return None


def begin(authorize_query: str, client, login_hint: str | None, ui_locales: str | None, decision: Decision,
          sso=None):
    """Start a login for an authorization request (a first login or a step-up) and send the browser to it."""
    account = accounts.active_by_id(sso.account_id) if sso is not None else None
    data = {"authorize_query": authorize_query, "client_name": client.name, "client_id": client.client_id,
            "login_hint": msisdn.try_normalise(login_hint) if login_hint else None, "locale": _locale(ui_locales),
            "required_acr": decision.required_acr, "allow_network": decision.allow_network}
    if account is not None:  # a step-up: the same person, so their line is known
        data.update(step_up_account=account.id, login_hint=account.username)
    flow = LoginFlow.start(**data)
    if account is not None and not decision.reauthenticate and level(sso.acr) >= level(ACR_PASSWORD) \
            and _needs_question(flow) and account.security_answer_hash:
        flow.advance("question", account_id=account.id)  # the password is proven already: only the question
    return redirect(url_for("login.credentials", flow_id=flow.id))


def _needs_question(flow: LoginFlow) -> bool:
    return level(flow.data.get("required_acr")) >= level(ACR_PASSWORD_QUESTION)


def _restart(authorize_query: str, message: str):
    flash(message, "warning")
    return redirect(url_for("oauth.authorize") + "?" + authorize_query) if authorize_query \
        else redirect(url_for("oauth.home"))


@bp.route("/<flow_id>", methods=["GET", "POST"])
def credentials(flow_id: str):
    flow = LoginFlow.load_for_page(flow_id)
    if flow.state == "change_password":
        return _change_password(flow)
    if flow.state == "question":
        return _question(flow)
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
            next_state = "change_password" if account.password_temporary else \
                "question" if _needs_question(flow) and account.security_answer_hash else "done"
            try:
                flow.advance(next_state, account_id=account.id)
            except (FlowConflict, FlowExpired):
                return _restart(flow.data["authorize_query"], _("La richiesta è già stata inviata."))
            if next_state != "done":  # no session yet: the change or the question leads on
                return redirect(url_for("login.credentials", flow_id=flow.id))
            return _log_in(flow, account, ACR_PASSWORD)
        error = _("Numero di linea o password non corretti.")
    elif request.method == "POST":
        error = _("Inserisci il numero di linea e la password.")
    return _credentials_page(flow, form, error)


def _network_offer(flow: LoginFlow):
    """The account the gateway vouches for, when this request may use network autologin; else None."""
    if not flow.data.get("allow_network") or not gateway.enabled():
        return None
    account = gateway.eligible_account(gateway.identify())
    if account is None or flow.data.get("step_up_account") not in (None, account.id):
        return None
    return account


def _credentials_page(flow: LoginFlow, form, error=None, status=200):
    offer = _network_offer(flow) if request.method == "GET" or error else None
    return render_template("flows/login/credentials.html", form=form, flow=flow, error=error,
                           client_name=flow.data.get("client_name"),
                           network_line=offer.username if offer else None, network_form=NetworkForm()), status


@bp.post("/<flow_id>/network")
def network(flow_id: str):
    """ "Accedi direttamente": everything is checked again on this request's own signed header."""
    flow = LoginFlow.load(flow_id)
    g.locale = flow.data.get("locale")
    if flow.state != "credentials":
        return redirect(url_for("login.credentials", flow_id=flow.id))
    account = _network_offer(flow)
    if account is None:
        return _credentials_page(flow, CredentialsForm(formdata=None),
                                 _("L'accesso diretto non è disponibile: accedi con linea e password."), 403)
    try:
        flow.advance("done", account_id=account.id)
    except (FlowConflict, FlowExpired):
        return _restart(flow.data["authorize_query"], _("La richiesta è già stata inviata."))
    return _log_in(flow, account, ACR_NETWORK)


def _question(flow: LoginFlow):
    """The security question as a second step (acr password + question)."""
    account = accounts.active_by_id(flow.data["account_id"])
    if account is None or not account.security_answer_hash:
        flow.finish()
        return _restart(flow.data["authorize_query"], _("Accedi di nuovo con la tua password."))
    form = QuestionForm()
    error, status = None, 200
    if form.validate_on_submit():
        try:
            flow.count_attempt()
        except TooManyAttempts:
            return _restart(flow.data["authorize_query"], _("Troppi tentativi non riusciti: ricomincia l'accesso."))
        try:
            ticket = lockout.take(account.username, client_address())
        except lockout.Locked as locked:
            signals.emit(signals.LOGIN_FAILED, "locked", account_id=account.id, line=account.username, factor="kba")
            error, status = _lock_message(locked), 429
        else:
            if passwords.verify_secret(account.security_answer_hash, passwords.normalise_answer(form.answer.data)):
                lockout.succeeded(ticket)
                try:
                    flow.advance("done")
                except (FlowConflict, FlowExpired):
                    return _restart(flow.data["authorize_query"], _("La richiesta è già stata inviata."))
                return _log_in(flow, account, ACR_PASSWORD_QUESTION)
            lockout.failed(ticket)
            signals.emit(signals.LOGIN_FAILED, "refused", account_id=account.id, line=account.username,
                         client_id=flow.data.get("client_id"), factor="kba")
            error = _("La risposta non è corretta.")
    return render_template("flows/login/question.html", form=form, flow=flow, error=error,
                           question=security_questions.text(account.security_question),
                           client_name=flow.data.get("client_name")), status


def _lock_message(locked: lockout.Locked) -> str:
    if locked.locked:
        minutes = max(1, (locked.retry_after + 59) // 60)
        return _("Troppi tentativi non riusciti: per sicurezza l'accesso con questa linea è sospeso per "
                 "%(minutes)d minuti. Se non ricordi la password puoi recuperarla.", minutes=minutes)
    return _("Attendi %(seconds)d secondi prima di riprovare.", seconds=locked.retry_after)


def _locked_page(flow: LoginFlow, form, locked: lockout.Locked):
    """The same page whether or not the line has an account: it says only how long to wait."""
    return _credentials_page(flow, form, _lock_message(locked), 429)


def _log_in(flow: LoginFlow, account, acr: str):
    """The flow is done: start (or step up) the SSO session and go back to the authorization request."""
    flow.finish()
    query = flow.data["authorize_query"]
    fresh = request_hash(query.encode())
    current = sessions.current()
    if current is not None and current.account_id == account.id and level(acr) >= level(current.acr):
        sessions.step_up(current, acr, AMR[acr], fresh_for=fresh)
    else:
        ttl = current_app.config["SESSION_TTL_NETWORK"] if acr == ACR_NETWORK else None
        sessions.start(account.id, acr, AMR[acr], fresh_for=fresh, ttl=ttl)
    signals.emit(signals.LOGIN_SUCCEEDED, account_id=account.id, line=account.username,
                 client_id=flow.data.get("client_id"), acr=acr)
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
            return _log_in(flow, account, ACR_PASSWORD)
    return render_template("flows/login/change_password.html", form=form, flow=flow, problems=problems,
                           line=account.username, client_name=flow.data.get("client_name"))
