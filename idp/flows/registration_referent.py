"""Referent registration — "Registrazione – Crea un Referente Aziendale Tre" (SPEC §3 point 4; SPEC §2).

The person gives the customer code, the company e-mail, the mobile line and the channel for the OTP PIN (SMS to the
line or e-mail to the given address). The data "match" when the line is an active line of that customer, not yet
registered, and the e-mail is the customer's company e-mail or in its domain (``CustomerInfo.owns_email``). Whether
they match or not, the person walks the same pages with the same words ("se i dati sono corretti riceverai un
PIN…"), the send limits (cooldown, hourly caps per destination and per client address) apply and a PIN is issued;
it is *delivered* only when the data match. For wrong data it is bound to a destination no request can name, so
every PIN entered is "wrong" — exactly like a mistyped one, with the same attempts. The account (role ``referent``,
temporary password) is created only after the right PIN; the username and the temporary password go to the company
e-mail, and the first login forces the change (``flows/login.py``).

State diagram::

    details ──(form valid, send limits OK)──▶ pin     a PIN is issued either way; sent only if the data match
       ▲  └──(form invalid / send limits hit)──▶ details (message, data kept)
       │
       └──(«Modifica i dati»)── pin ──(«Invia di nuovo il PIN», limits OK)──▶ pin (new PIN, the old one is void)
                                 ├──(delivery failed)──▶ pin (plain message; «Invia di nuovo il PIN» retries)
                                 ├──(wrong PIN, or no PIN was delivered; attempts left)──▶ pin (same message)
                                 ├──(attempts used up)──▶ flow ends; a new one starts with a message
                                 └──(right PIN, data match)──▶ account created with a temporary password
                                          ├──(credentials e-mailed)──▶ done ("credenziali inviate per e-mail")
                                          └──(delivery failed)──▶ credentials_unsent
                                                 └──(«Invia di nuovo»: a new temporary password, e-mailed)──▶ done

The flow's data hold only what the person typed and, after the account exists, its id — never a PIN or a password.
"""
from __future__ import annotations

import re

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_babel import force_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import RadioField, StringField
from wtforms.validators import DataRequired, Length, Regexp

from .. import accounts, msisdn, otp, passwords, ratelimit, registration, senders, signals
from ..directory import directory
from ..extensions import db
from ..models import Account
from .base import Flow, FlowConflict, FlowExpired, TooManyAttempts, client_address
from .login import LoginFlow

bp = Blueprint("registration_referent", __name__, url_prefix="/flows/registration_referent")

PURPOSE = "referent-registration"
# For data that do not match, the PIN is bound to this destination, which no request can name, and never sent: the
# verification path (attempts, exhaustion, messages) stays the same and no PIN typed can ever be right.
_NOWHERE = "\x00undeliverable"
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,}$")  # no control characters


# The field that tells a step's own form apart from a stale one posted again.
_STATE_FIELD = {"details": "customer_code", "pin": "pin", "credentials_unsent": "csrf_token"}


class RegistrationReferentFlow(Flow):
    kind = "registration_referent"
    initial = "details"
    transitions = {
        "details": ("pin",),
        "pin": ("pin", "details", "done", "credentials_unsent"),
        "credentials_unsent": ("done",),
    }
    # Wrong PINs within one flow, across resends: the same budget as one code's tries.
    attempts_setting = "OTP_MAX_ATTEMPTS"


# forms --------------------------------------------------------------------------------------------------------------

class DetailsForm(FlaskForm):
    customer_code = StringField(_l("Codice cliente Tre"), validators=[DataRequired(), Length(max=32)])
    email = StringField(_l("E-mail aziendale"), validators=[
        DataRequired(), Length(max=254), Regexp(_EMAIL, message=_l("Inserisci un indirizzo e-mail valido."))])
    line = StringField(_l("Linea mobile"), validators=[DataRequired(), Length(max=32)])
    channel = RadioField(_l("Ricevi il PIN OTP"), default="sms")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.channel.choices = [("sms", _("via SMS sulla linea mobile")),
                                ("email", _("via e-mail all'indirizzo aziendale"))]


class PinForm(FlaskForm):
    pin = StringField(_l("PIN OTP"), validators=[DataRequired(), Length(max=16)])


class ActionForm(FlaskForm):
    """A button only (resend, edit): the CSRF token is its whole content."""


# domain -------------------------------------------------------------------------------------------------------------

def _otp_key(flow: Flow) -> str:
    return f"{flow.kind}:{flow.id}"


def destination(data: dict) -> str:
    return data["line"] if data["channel"] == "sms" else data["email"]


def matching_customer_code(customer_code: str, email: str, line: str) -> str | None:
    """The customer's code when the data match the directory and the line is free to register, else None."""
    found = directory().line(line)
    customer = directory().customer(customer_code)
    if found is None or customer is None or not found.is_active or found.customer.code != customer.code:
        return None
    if not customer.owns_email(email) or registration.line_is_registered(line):
        return None
    return customer.code


def _locale(flow: Flow) -> str | None:
    return flow.data.get("locale")


def send_pin(flow: Flow) -> None:
    """Issue a new PIN for the flow and deliver it only when the data match (raises senders.DeliveryFailed).

    The caller has applied ``otp.check_send_limits`` already: limits count for right and wrong data alike.
    """
    data = flow.data
    matches = matching_customer_code(data["customer_code"], data["email"], data["line"]) is not None
    code = otp.issue(_otp_key(flow), PURPOSE, destination(data) if matches else _NOWHERE)
    if not matches:
        signals.emit(signals.REGISTRATION_REFUSED, "refused", line=data["line"], purpose=PURPOSE,
                     customer=data["customer_code"][:32], reason="data_do_not_match")
        return
    minutes = max(1, int(current_app.config["OTP_TTL"]) // 60)
    with force_locale(_locale(flow) or current_app.config["BABEL_DEFAULT_LOCALE"]):
        purpose = _("la registrazione del Referente Aziendale")
        subject = _("Il tuo PIN per la registrazione a Selfcare Business")
    try:
        if data["channel"] == "sms":
            senders.send_sms(data["line"], "otp", locale=_locale(flow), code=code, minutes=minutes,
                             purpose=purpose)
        else:
            senders.send_email(data["email"], "otp", subject, locale=_locale(flow), code=code, minutes=minutes,
                               purpose=purpose)
    except senders.DeliveryFailed as exc:
        current_app.logger.warning("referent registration PIN not delivered (%s): %s", data["channel"], exc)
        signals.emit(signals.CODE_SEND_FAILED, "failed", line=data["line"], purpose=PURPOSE,
                     channel=data["channel"])
        otp.delivery_failed(destination(data))
        raise
    signals.emit(signals.CODE_SENT, line=data["line"], purpose=PURPOSE, channel=data["channel"])


def create_referent(data: dict) -> tuple[Account, str] | None:
    """After the right PIN: the referent's account with a temporary password, or None if the data no longer match.

    Raises registration.RegistrationError when another registration of the line won the race.
    """
    code = matching_customer_code(data["customer_code"], data["email"], data["line"])
    if code is None:
        signals.emit(signals.REGISTRATION_REFUSED, "refused", line=data["line"], purpose=PURPOSE,
                     customer=data["customer_code"][:32], reason="data_no_longer_match")
        return None
    password = registration.temporary_password()
    try:
        account = registration.create_account(data["line"], code, role="referent", email=data["email"],
                                              otp_channel=data["channel"], password=password, temporary=True,
                                              email_verified=data["channel"] == "email")
    except registration.RegistrationError:
        signals.emit(signals.REGISTRATION_REFUSED, "refused", line=data["line"], purpose=PURPOSE, customer=code,
                     reason="line_taken")
        raise
    signals.emit(signals.REGISTRATION_COMPLETED, account_id=account.id, line=account.username, role="referent",
                 customer=code, channel=data["channel"])
    return account, password


def renew_temporary_password(account_id: int) -> tuple[Account, str] | None:
    """A fresh temporary password for an account that has not chosen its own yet (the old one is void)."""
    account = accounts.active_by_id(account_id)
    if account is None or not account.password_temporary:
        return None
    password = registration.temporary_password()
    account.password_hash = passwords.hash_secret(password)
    db.session.commit()
    return account, password


def send_credentials(account: Account, password: str, locale: str | None) -> None:
    """E-mail the username and the temporary password to the company e-mail (raises senders.DeliveryFailed)."""
    with force_locale(locale or current_app.config["BABEL_DEFAULT_LOCALE"]):
        subject = _("Le tue credenziali Selfcare Business")
    try:
        senders.send_email(account.email, "referent_credentials", subject, locale=locale,
                           username=account.username, password=password, company=account.customer.name)
    except senders.DeliveryFailed as exc:
        current_app.logger.warning("referent credentials not delivered: account %s: %s", account.id, exc)
        signals.emit(signals.CODE_SEND_FAILED, "failed", account_id=account.id, line=account.username,
                     purpose="referent_credentials", channel="email")
        raise


def wait_message(error: ratelimit.RateLimited) -> str:
    seconds = int(error.retry_after)
    if error.name == "otp-resend" or seconds < 120:
        return _("Hai già richiesto un PIN da poco: attendi %(n)d secondi e riprova.", n=max(1, seconds))
    return _("Hai richiesto troppi PIN: riprova tra %(n)d minuti.", n=(seconds + 59) // 60)


# views --------------------------------------------------------------------------------------------------------------

def _expired():
    return render_template("flows/expired.html"), 410


def _load(flow_id: str) -> RegistrationReferentFlow:
    return RegistrationReferentFlow.load_for_page(flow_id)


def _page(flow: Flow):
    return redirect(url_for("registration_referent.step", flow_id=flow.id))


def _return_url(flow: Flow) -> str:
    query = flow.data.get("authorize_query")
    return url_for("oauth.authorize") + "?" + query if query else url_for("oauth.home")


def _render(flow: Flow, template: str, **context):
    return render_template(f"flows/registration_referent/{template}.html", flow=flow,
                           return_url=_return_url(flow), action=ActionForm(),
                           minutes=max(1, int(current_app.config["OTP_TTL"]) // 60), **context)


@bp.get("/")
def start():
    """Begin a registration, carrying the login's authorization request and language when there is one."""
    carried = {"authorize_query": "", "locale": None, "client_name": None}
    login_id = request.args.get("login", "")
    if login_id:
        try:
            login = LoginFlow.load(login_id)
        except FlowExpired:
            pass  # the registration works without it; only "Continua" has nowhere to go back to
        else:
            carried = {name: login.data.get(name) or default for name, default in carried.items()}
    flow = RegistrationReferentFlow.start(**carried)
    signals.emit(signals.REGISTRATION_STARTED, purpose=PURPOSE)
    return _page(flow)


@bp.route("/<flow_id>", methods=["GET", "POST"])
def step(flow_id: str):
    try:
        flow = _load(flow_id)
    except FlowExpired:
        return _expired()
    if request.method == "POST" and _STATE_FIELD.get(flow.state, "") not in request.form:
        return _page(flow)  # a form of an earlier step (double submit, back button): show where the flow is
    if flow.state == "details":
        return _details(flow)
    if flow.state == "pin":
        return _pin(flow)
    if flow.state == "credentials_unsent":
        return _credentials_unsent(flow)
    return _render(flow, "done")


def _details(flow: RegistrationReferentFlow):
    form = DetailsForm()
    error = None
    if request.method == "GET" and flow.data.get("line"):  # back from «Modifica i dati»
        form.customer_code.data, form.email.data = flow.data["customer_code"], flow.data["email"]
        form.line.data, form.channel.data = flow.data["line"], flow.data["channel"]
    if form.validate_on_submit():
        line = msisdn.try_normalise(form.line.data)
        if line is None:
            error = _("Inserisci un numero di linea mobile valido, ad esempio 333 123 4567.")
        else:
            data = {"customer_code": form.customer_code.data.strip().upper(),
                    "email": form.email.data.strip().lower(), "line": line, "channel": form.channel.data}
            try:
                otp.check_send_limits(destination(data), client_address())
            except ratelimit.RateLimited as exc:
                if _moved_on(flow):  # a double submit: the first one sent the PIN and goes on
                    return _page(flow)
                error = wait_message(exc)
            else:
                try:
                    flow.advance("pin", **data)
                except (FlowConflict, FlowExpired):
                    return _page(flow)  # a double submit: the first one goes on
                try:
                    send_pin(flow)
                except senders.DeliveryFailed:
                    flash(_delivery_failed(flow), "error")
                return _page(flow)
    elif request.method == "POST":
        error = _("Compila tutti i campi con dati validi.")
    return _render(flow, "details", form=form, error=error)


def _moved_on(flow: Flow) -> bool:
    try:
        return RegistrationReferentFlow.load(flow.id).state != flow.state
    except FlowExpired:
        return False


def _delivery_failed(flow: Flow) -> str:
    if flow.data["channel"] == "sms":
        return _("Non siamo riusciti a inviare l'SMS con il PIN. Riprova tra qualche istante con «Invia di nuovo "
                 "il PIN».")
    return _("Non siamo riusciti a inviare l'e-mail con il PIN. Riprova tra qualche istante con «Invia di nuovo "
             "il PIN».")


def _start_again(flow: Flow):
    new = RegistrationReferentFlow.start(authorize_query=flow.data.get("authorize_query", ""),
                                         locale=flow.data.get("locale"), client_name=flow.data.get("client_name"))
    return _page(new)


def _pin(flow: RegistrationReferentFlow):
    form = PinForm()
    error = None
    if form.validate_on_submit():
        try:
            flow.count_attempt()
        except TooManyAttempts:
            return _too_many(flow)
        try:
            otp.verify(_otp_key(flow), PURPOSE, destination(flow.data), form.pin.data)
        except otp.OtpExhausted:
            flow.finish()
            return _too_many(flow)
        except otp.OtpError:
            signals.emit(signals.CODE_WRONG, "refused", line=flow.data["line"], purpose=PURPOSE)
        else:
            created = _create(flow)
            if created is not None:
                return created
            # Right PIN, but the data stopped matching since it was sent (e.g. the line got registered): the
            # answer of a wrong PIN, as for anyone who has not proven the data.
        error = _("PIN non corretto o scaduto. Controlla e riprova, oppure chiedi un nuovo PIN.")
    elif request.method == "POST":
        error = _("Inserisci il PIN che hai ricevuto.")
    return _render(flow, "pin", form=form, error=error, attempts_left=flow.attempts_left())


def _too_many(flow: Flow):
    flash(_("Hai inserito un PIN errato troppe volte: ricomincia la registrazione."), "warning")
    return _start_again(flow)


def _create(flow: RegistrationReferentFlow):
    try:
        created = create_referent(flow.data)
    except registration.RegistrationError:
        flow.finish()
        return render_template("error.html", title=_("Registrazione non completata"),
                               message=_("Non è stato possibile completare la registrazione: la linea risulta già "
                                         "registrata. Accedi con le tue credenziali o recupera la password.")), 409
    if created is None:
        return None
    account, password = created
    try:
        send_credentials(account, password, _locale(flow))
    except senders.DeliveryFailed:
        next_state = "credentials_unsent"
    else:
        next_state = "done"
    try:
        flow.advance(next_state, account_id=account.id)
    except (FlowConflict, FlowExpired):
        pass  # the account exists and the e-mail went (or not): the page shows the flow's latest state
    return _page(flow)


def _credentials_unsent(flow: RegistrationReferentFlow):
    action = ActionForm()
    if request.method == "POST" and action.validate_on_submit():
        try:
            ratelimit.hit("referent-credentials", flow.data["email"],
                          int(current_app.config["OTP_SENDS_PER_HOUR_DESTINATION"]), 3600)
        except ratelimit.RateLimited as exc:
            return _render(flow, "credentials_unsent", error=_(
                "Troppi tentativi di invio: riprova tra %(n)d minuti.", n=(int(exc.retry_after) + 59) // 60))
        renewed = renew_temporary_password(flow.data["account_id"])
        if renewed is None:  # the password was chosen meanwhile: nothing to send
            try:
                flow.advance("done")
            except (FlowConflict, FlowExpired):
                pass
            return _page(flow)
        try:
            send_credentials(*renewed, _locale(flow))
        except senders.DeliveryFailed:
            return _render(flow, "credentials_unsent", error=_(
                "Non siamo riusciti a inviare l'e-mail nemmeno questa volta. Riprova tra qualche minuto."))
        try:
            flow.advance("done")
        except (FlowConflict, FlowExpired):
            pass
        return _page(flow)
    return _render(flow, "credentials_unsent")


@bp.post("/<flow_id>/resend")
def resend(flow_id: str):
    """«Invia di nuovo il PIN»: a new PIN (the previous one is void), under the same limits as the first."""
    try:
        flow = _load(flow_id)
    except FlowExpired:
        return _expired()
    action = ActionForm()
    if flow.state != "pin" or not action.validate_on_submit():
        return _page(flow)
    try:
        otp.check_send_limits(destination(flow.data), client_address())
    except ratelimit.RateLimited as exc:
        flash(wait_message(exc), "error")
        return _page(flow)
    try:
        flow.advance("pin")
    except (FlowConflict, FlowExpired):
        return _page(flow)
    try:
        send_pin(flow)
    except senders.DeliveryFailed:
        flash(_delivery_failed(flow), "error")
    else:
        flash(_("Ti abbiamo inviato un nuovo PIN, se i dati sono corretti. Il precedente non vale più."), "info")
    return _page(flow)


@bp.post("/<flow_id>/edit")
def edit(flow_id: str):
    """«Modifica i dati»: back to the form; the PIN already sent stays void once a new one is issued."""
    try:
        flow = _load(flow_id)
    except FlowExpired:
        return _expired()
    if flow.state == "pin" and ActionForm().validate_on_submit():
        try:
            flow.advance("details")
        except (FlowConflict, FlowExpired):
            pass
    return _page(flow)
