"""Gestione Utente, the account page behind the user icon (SPEC §3 points 8 and 9; issue 4 point 2).

It needs the SSO session (without one, an Italian page explains to log in from the portal, status 401). It offers:
the password change (old password, new password, new security question and answer; the old password is a guess
like any other, so it is counted by ``lockout`` before it is checked; other sessions and every grant end); the
associated SIMs masked, with "Associa SIM" while fewer than two and removal of any but the registered line; the
active sessions and the applications holding tokens, each revocable. Changes are sensitive: a session opened by
network autologin alone may look but not change (notes/security.md, header enrichment point 9).

Routes::

    GET  /account                          the page (401 without a session)
    POST /account/password                 change the password (CSRF)
    POST /account/sims/remove              remove the SIM in the given slot (CSRF)
    POST /account/sessions/<handle>/end    end one session (CSRF)
    POST /account/applications/<client>/revoke   revoke an application's tokens (CSRF)
"""
from __future__ import annotations

from flask import Blueprint, flash, g, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from wtforms import IntegerField, PasswordField
from wtforms.validators import DataRequired, Length, NumberRange
from flask_wtf import FlaskForm

from .. import accounts, lockout, passwords, registration, sessions, signals
from ..oauth import clients, tokens
from ..oauth.scopes import ACR_LEVELS, ACR_PASSWORD
from .base import client_address
from .steps import NewCredentialsForm, credentials_problems

bp = Blueprint("account", __name__, url_prefix="/account")


class StartForm(FlaskForm):
    """The "Associa SIM" button: only its CSRF token."""


class ChangePasswordForm(NewCredentialsForm):
    old_password = PasswordField(_l("Password attuale"), validators=[DataRequired(), Length(max=256)])


class ActionForm(FlaskForm):
    """A button that changes something: only its CSRF token."""


class RemoveForm(FlaskForm):
    slot = IntegerField("slot", validators=[DataRequired(), NumberRange(min=1, max=registration.MAX_SIMS)])


# helpers the SIM association flow shares ------------------------------------------------------------------------

def logged_in():
    """The SSO session and its active account, or ``(None, None)``."""
    sso = sessions.current()
    account = accounts.active_by_id(sso.account_id) if sso is not None else None
    return (sso, account) if account is not None else (None, None)


def may_change_sims(sso) -> bool:
    """At least a password login: network autologin alone must not change the account's SIMs."""
    return ACR_LEVELS.get(sso.acr, 0) >= ACR_LEVELS[ACR_PASSWORD]


def login_required_page():
    return render_template("flows/account/login_required.html", title=_("Accedi per continuare")), 401


def step_up_page():
    return render_template("error.html", title=_("Accedi con la password"),
                           message=_("Per associare o rimuovere una SIM accedi con la linea e la password: "
                                     "l'accesso diretto dalla rete mobile non basta.")), 403


# views ----------------------------------------------------------------------------------------------------------

def _render(sso, account, password_form=None, problems=(), status=200):
    links = list(account.lines)
    current = sessions.handle_of_current()
    live = sorted(sessions.of_account(account.id), key=lambda item: item[1].auth_time, reverse=True)
    applications = []
    for client_id, issued_at in tokens.applications_of_account(account.id):
        client = clients.query_client(client_id)
        applications.append({"client_id": client_id, "name": client.name if client else client_id,
                             "issued_at": issued_at})
    return render_template("flows/account/page.html", title=_("Gestione Utente"), account=account, links=links,
                           can_add=len(links) < registration.MAX_SIMS, may_change=may_change_sims(sso),
                           max_sims=registration.MAX_SIMS, start_form=StartForm(), remove_form=RemoveForm(),
                           password_form=password_form or ChangePasswordForm(formdata=None),
                           problems=list(problems), sessions=live, current_handle=current,
                           applications=applications, action_form=ActionForm()), status


@bp.get("")
def page():
    sso, account = logged_in()
    if account is None:
        return login_required_page()
    return _render(sso, account)


@bp.post("/password")
def change_password():
    sso, account = logged_in()
    if account is None:
        return login_required_page()
    if not may_change_sims(sso):
        return step_up_page()
    form = ChangePasswordForm()
    if not form.validate():
        return _render(sso, account, form, [str(m) for errors in form.errors.values() for m in errors], 400)
    try:
        ticket = lockout.take(account.username, client_address())
    except lockout.Locked as locked:
        message = _("Troppi tentativi. Riprova tra %(minutes)d minuti.", minutes=max(1, (locked.retry_after + 59) // 60))
        return _render(sso, account, form, [message], 429)
    if not passwords.verify_secret(account.password_hash, form.old_password.data):
        lockout.failed(ticket)
        signals.emit(signals.PASSWORD_CHANGE_FAILED, "refused", account_id=account.id, line=account.username)
        return _render(sso, account, form, [_("La password attuale non è corretta.")], 400)
    lockout.succeeded(ticket)
    problems = credentials_problems(form, account.username, account.email)
    if form.password.data == form.old_password.data:
        problems.append(_("La nuova password deve essere diversa da quella attuale."))
    if problems:
        return _render(sso, account, form, problems, 400)
    accounts.change_credentials(account, form.password.data, form.question.data, form.answer.data,
                                reason="change", locale=g.get("locale"), keep_current_session=True)
    flash(_("Password e domanda di sicurezza aggiornate. Le altre sessioni sono state chiuse."), "success")
    return redirect(url_for("account.page"))


@bp.post("/sessions/<handle>/end")
def end_session(handle: str):
    sso, account = logged_in()
    if account is None:
        return login_required_page()
    if sessions.end_one(account.id, handle):
        signals.emit(signals.SESSION_ENDED, account_id=account.id, by="account_page")
        flash(_("Sessione chiusa."), "success")
    if sessions.current() is None:
        return redirect(url_for("oauth.home"))
    return redirect(url_for("account.page"))


@bp.post("/applications/<client_id>/revoke")
def revoke_application(client_id: str):
    sso, account = logged_in()
    if account is None:
        return login_required_page()
    if not clients.well_formed_id(client_id):  # no client has such an id: nothing to revoke
        return redirect(url_for("account.page"))
    tokens.revoke_account_client(account.id, client_id)
    signals.emit(signals.GRANT_REVOKED, account_id=account.id, client_id=client_id, by="account_page")
    flash(_("L'applicazione non ha più accesso al tuo account."), "success")
    return redirect(url_for("account.page"))


@bp.post("/sims/remove")
def remove_sim():
    sso, account = logged_in()
    if account is None:
        return login_required_page()
    if not may_change_sims(sso):
        return step_up_page()
    form = RemoveForm()
    link = next((ln for ln in account.lines if ln.slot == form.slot.data), None) if form.validate() else None
    if link is None:
        flash(_("Questa SIM non è associata al tuo account."), "warning")
    elif link.line.msisdn == account.username:
        flash(_("La linea registrata è il tuo nome utente e non può essere rimossa."), "warning")
    else:
        number = link.line.msisdn
        try:
            registration.remove_sim(account.id, number)
        except registration.LineTaken:
            flash(_("Questa SIM non è associata al tuo account."), "warning")
        else:
            signals.emit(signals.SIM_REMOVED, account_id=account.id, line=number)
            flash(_("SIM rimossa dal tuo account."), "success")
    return redirect(url_for("account.page"))
