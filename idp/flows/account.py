"""The account page of the logged-in person (SPEC §3 point 9 "Associa SIM"; issue 3 point 6).

A small page, grown later into "Gestione Utente" (SPEC §3 point 8): it needs the SSO session (without one, an
Italian page explains to log in from the portal, status 401), lists the associated SIMs masked with the registered
line marked, offers "Associa SIM" while the account has fewer than two, and removes a SIM that is not the
registered line. Changing the SIMs is a sensitive action: a session opened by network autologin alone may look but
not change them (notes/security.md, header enrichment point 9: step-up for sensitive actions).

Routes::

    GET  /account               the page (401 without a session)
    POST /account/sims/remove   remove the SIM in the given slot (CSRF); the registered line cannot be removed
"""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_wtf import FlaskForm
from wtforms import IntegerField
from wtforms.validators import DataRequired, NumberRange

from .. import accounts, registration, sessions, signals
from ..oauth.scopes import ACR_LEVELS, ACR_PASSWORD

bp = Blueprint("account", __name__, url_prefix="/account")


class StartForm(FlaskForm):
    """The "Associa SIM" button: only its CSRF token."""


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

@bp.get("")
def page():
    sso, account = logged_in()
    if account is None:
        return login_required_page()
    links = list(account.lines)
    return render_template("flows/account/page.html", title=_("Il tuo account"), account=account, links=links,
                           can_add=len(links) < registration.MAX_SIMS, may_change=may_change_sims(sso),
                           max_sims=registration.MAX_SIMS, start_form=StartForm(), remove_form=RemoveForm())


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
