"""Associa SIM: a logged-in person adds a second line to the account (SPEC §3 point 9; issue 3 point 6).

State diagram::

    account page ──POST start (session, password login, fewer than two SIMs)──▶ line
    line ──(voice SIM: send limits pass)──▶ code   an SMS code goes to the line only if it is eligible
         ──(data SIM)─────────────────────▶ pin
    code ──(code right, line still eligible)──▶ done: associated, back to the account page
         ├─(wrong code, tries left)──▶ code     "resend" issues a new code (same limits, same answers)
         └─(tries used up)──▶ flow ends
    pin  ──(PIN right, line eligible)──▶ done: associated, back to the account page
         ├─(wrong PIN or ineligible line, attempts left)──▶ pin   "PIN non corretto"
         └─(SIM_PIN_MAX_ATTEMPTS used up; or SIM_PIN_ATTEMPTS_PER_LINE_PER_DAY for the line)──▶ refused

Eligible: an active line of the account's own customer, of the SIM type the person chose, associated with no
account. Anything else walks the same path with the same words: for a voice SIM "se la linea è idonea riceverai un
SMS" and no SMS; for a data SIM "PIN non corretto". The person chooses the SIM type, so the path itself reveals
nothing about the line. A third SIM is refused plainly at the start and again by ``registration.associate_sim``,
whose database constraints decide a race between two flows of the same account. The flow record holds the account
id and the SSO session's ``sid``: another session, or no session, cannot continue it.
"""
from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, url_for
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import PasswordField, RadioField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length

from .. import msisdn, otp, ratelimit, registration, senders, signals
from ..directory import directory
from .account import logged_in, login_required_page, may_change_sims, step_up_page
from .base import Flow, FlowConflict, FlowExpired, TooManyAttempts, client_address

bp = Blueprint("sim_association", __name__, url_prefix="/flows/sim_association")

PURPOSE = "sim_association"


class SimAssociationFlow(Flow):
    kind = "sim_association"
    initial = "line"
    transitions = {"line": ("code", "pin"), "code": ("done",), "pin": ("done",)}
    attempts_setting = "SIM_PIN_MAX_ATTEMPTS"  # counted in the pin state only; SMS codes count their own tries


class LineForm(FlaskForm):
    line = StringField(_l("Numero della SIM da associare"), validators=[DataRequired(), Length(max=32)])
    sim_type = RadioField(_l("Tipo di SIM"), default="voice",
                          choices=[SelectChoice("voice", _l("SIM voce: ricevi un codice via SMS")),
                                   SelectChoice("data", _l("SIM solo dati: inserisci il PIN della SIM"))])


class CodeForm(FlaskForm):
    code = StringField(_l("Codice ricevuto via SMS"), validators=[DataRequired(), Length(max=16)])


class PinForm(FlaskForm):
    pin = PasswordField(_l("PIN della SIM"), validators=[DataRequired(), Length(max=16)])


class ResendForm(FlaskForm):
    """The "send a new code" button: only its CSRF token."""


# domain -------------------------------------------------------------------------------------------------------

def line_is_eligible(account, number: str, sim_type: str) -> bool:
    """An active line of the account's customer, of the chosen SIM type, associated with no account."""
    info = directory().line(number)
    return (info is not None and info.is_active and info.sim_type == sim_type
            and info.customer.code == account.customer.code
            and not registration.line_is_registered(number))


def _send_code(flow: SimAssociationFlow, account, number: str) -> None:
    """Issue a code for the flow; it leaves the building only when the line is eligible.

    The caller has checked the send limits (``otp.check_send_limits``). Raises senders.DeliveryFailed."""
    code = otp.issue(SimAssociationFlow._key(flow.id), PURPOSE, number)
    if not line_is_eligible(account, number, "voice"):
        return
    try:
        senders.send_sms(number, "otp", locale=str(get_locale() or ""), code=code,
                         minutes=max(1, int(current_app.config["OTP_TTL"]) // 60),
                         purpose=_("associare una SIM al tuo account"))
    except senders.DeliveryFailed:
        signals.emit(signals.CODE_SEND_FAILED, "failed", account_id=account.id, line=number, flow=flow.kind)
        otp.delivery_failed(number)
        raise
    signals.emit(signals.CODE_SENT, account_id=account.id, line=number, flow=flow.kind, channel="sms")


def _delivery_failed() -> None:
    flash(_("Non è stato possibile inviare l'SMS. Riprova tra qualche minuto con «Invia un nuovo codice»."),
          "error")


def _associate(flow: SimAssociationFlow, account):
    """Last step of both paths: the flow moves to done (compare-and-set), then the database decides."""
    number = flow.data["line"]
    try:
        flow.advance("done")
    except (FlowConflict, FlowExpired):
        return redirect(url_for("account.page"))
    flow.finish()
    try:
        registration.associate_sim(account.id, number)
    except registration.SimLimitReached:
        return _limit_page()
    except registration.LineTaken:
        signals.emit(signals.SIM_ASSOCIATED, "failure", account_id=account.id, line=number, reason="line_taken")
        flash(_("Non è stato possibile associare questa linea al tuo account."), "warning")
        return redirect(url_for("account.page"))
    signals.emit(signals.SIM_ASSOCIATED, account_id=account.id, line=number, sim_type=flow.data["sim_type"])
    flash(_("SIM %(line)s associata al tuo account.", line=msisdn.mask(number)), "success")
    return redirect(url_for("account.page"))


def _rate_limited_message(error: ratelimit.RateLimited) -> str:
    if error.retry_after < 90:
        return _("Hai fatto troppe richieste. Riprova tra %(seconds)d secondi.", seconds=error.retry_after)
    return _("Hai fatto troppe richieste. Riprova tra %(minutes)d minuti.", minutes=(error.retry_after + 59) // 60)


def _limit_page():
    return render_template("flows/sim_association/limit.html", title=_("Associa SIM"),
                           max_sims=registration.MAX_SIMS), 409


# views --------------------------------------------------------------------------------------------------------

@bp.post("/start")
def start():
    sso, account = logged_in()
    if account is None:
        return login_required_page()
    if not may_change_sims(sso):
        return step_up_page()
    if registration.sim_count(account.id) >= registration.MAX_SIMS:
        return _limit_page()
    flow = SimAssociationFlow.start(account_id=account.id, sid=sso.sid)
    return redirect(url_for("sim_association.step", flow_id=flow.id))


def _load(flow_id: str):
    """``(flow, account, None)`` for the session that started the flow, else ``(None, None, refusal page)``."""
    sso, account = logged_in()
    if account is None:
        return None, None, login_required_page()
    try:
        flow = SimAssociationFlow.load(flow_id)
    except FlowExpired:
        return None, None, (render_template("flows/expired.html"), 410)
    if flow.data.get("account_id") != account.id or flow.data.get("sid") != sso.sid:
        # another session's flow: as if it did not exist
        return None, None, (render_template("flows/expired.html"), 410)
    return flow, account, None


@bp.route("/<flow_id>", methods=["GET", "POST"])
def step(flow_id: str):
    flow, account, refusal = _load(flow_id)
    if refusal is not None:
        return refusal
    handler = {"line": _line, "code": _code, "pin": _pin}.get(flow.state)
    if handler is None:
        return render_template("flows/expired.html"), 410
    return handler(flow, account)


def _line(flow: SimAssociationFlow, account):
    form = LineForm()
    error = None
    if form.validate_on_submit():
        number = msisdn.try_normalise(form.line.data)
        if number is None:
            error = _("Inserisci il numero di una linea mobile, ad esempio 333 123 4567.")
        elif registration.sim_count(account.id) >= registration.MAX_SIMS:
            return _limit_page()
        elif form.sim_type.data == "data":
            try:
                flow.advance("pin", line=number, sim_type="data")
            except (FlowConflict, FlowExpired):
                pass
            return redirect(url_for("sim_association.step", flow_id=flow.id))
        else:
            try:
                otp.check_send_limits(number, client_address())
            except ratelimit.RateLimited as exc:
                error = _rate_limited_message(exc)
            else:
                try:  # the state moves first, so a double submit sends one SMS only
                    flow.advance("code", line=number, sim_type="voice")
                except (FlowConflict, FlowExpired):
                    return redirect(url_for("sim_association.step", flow_id=flow.id))
                try:
                    _send_code(flow, account, number)
                except senders.DeliveryFailed:
                    _delivery_failed()
                return redirect(url_for("sim_association.step", flow_id=flow.id))
    elif form.is_submitted():
        error = _("Inserisci il numero della SIM e scegli il tipo di SIM.")
    return render_template("flows/sim_association/line.html", title=_("Associa SIM"), form=form, flow=flow,
                           error=error)


def _code(flow: SimAssociationFlow, account):
    form = CodeForm()
    error = None
    number = flow.data["line"]
    if form.validate_on_submit():
        try:
            otp.verify(SimAssociationFlow._key(flow.id), PURPOSE, number, form.code.data)
        except otp.OtpExhausted:
            signals.emit(signals.CODE_WRONG, "failure", account_id=account.id, line=number, flow=flow.kind,
                         exhausted=True)
            flow.finish()
            flash(_("Codice errato troppe volte: la richiesta è stata annullata. Puoi ricominciare da "
                    "«Associa SIM»."), "warning")
            return redirect(url_for("account.page"))
        except otp.OtpError:
            signals.emit(signals.CODE_WRONG, "failure", account_id=account.id, line=number, flow=flow.kind)
            error = _("Codice non corretto o scaduto. Controlla l'SMS o chiedi un nuovo codice.")
        else:
            if not line_is_eligible(account, number, "voice"):
                # only if the line changed since the code was sent (an ineligible line never receives one)
                flow.finish()
                flash(_("Non è stato possibile associare questa linea al tuo account."), "warning")
                return redirect(url_for("account.page"))
            return _associate(flow, account)
    elif form.is_submitted():
        error = _("Inserisci il codice ricevuto via SMS.")
    return render_template("flows/sim_association/code.html", title=_("Associa SIM"), form=form, flow=flow,
                           resend_form=ResendForm(), line=msisdn.mask(number), error=error)


def _pin(flow: SimAssociationFlow, account):
    form = PinForm()
    error = None
    number = flow.data["line"]
    if form.validate_on_submit():
        config = current_app.config
        try:
            flow.count_attempt()
            ratelimit.hit("sim-pin", number, int(config["SIM_PIN_ATTEMPTS_PER_LINE_PER_DAY"]), 86400)
        except TooManyAttempts:
            flash(_("PIN errato troppe volte: la richiesta è stata annullata."), "warning")
            return redirect(url_for("account.page"))
        except ratelimit.RateLimited:
            flow.finish()
            flash(_("Troppi tentativi con il PIN di questa SIM: riprova domani."), "warning")
            return redirect(url_for("account.page"))
        pin_right = directory().check_sim_pin(number, form.pin.data)  # constant work, any line
        if pin_right and line_is_eligible(account, number, "data"):
            return _associate(flow, account)
        signals.emit(signals.SIM_PIN_WRONG, "failure", account_id=account.id, line=number, flow=flow.kind)
        if flow.attempts_left() == 0:
            flow.finish()
            flash(_("PIN errato troppe volte: la richiesta è stata annullata."), "warning")
            return redirect(url_for("account.page"))
        error = _("PIN non corretto. Tentativi rimasti: %(left)d.", left=flow.attempts_left())
    elif form.is_submitted():
        error = _("Inserisci il PIN della SIM.")
    return render_template("flows/sim_association/pin.html", title=_("Associa SIM"), form=form, flow=flow,
                           line=msisdn.mask(number), error=error)


@bp.post("/<flow_id>/resend")
def resend(flow_id: str):
    flow, account, refusal = _load(flow_id)
    if refusal is not None:
        return refusal
    if flow.state != "code":
        return redirect(url_for("sim_association.step", flow_id=flow.id))
    number = flow.data["line"]
    try:
        otp.check_send_limits(number, client_address())
        _send_code(flow, account, number)
    except ratelimit.RateLimited as exc:
        flash(_rate_limited_message(exc), "warning")
    except senders.DeliveryFailed:
        _delivery_failed()
    else:
        flash(_("Se la linea è idonea riceverai un nuovo SMS con il codice."), "info")
    return redirect(url_for("sim_association.step", flow_id=flow.id))
