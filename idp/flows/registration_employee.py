"""Employee registration (SPEC §3 points 5 and 6): by SMS on a voice SIM, or with a data-only SIM's PIN.

State diagram::

    start page: "con SMS" | "con SIM dati" (from the login page with ?login=<login flow id>)
        │ sms                                │ data
        ▼                                    ▼
      line ──(well-formed line)──▶ code ◀──(PIN right)── sim ──(PIN wrong, attempts left)──▶ sim
                                   │  │                  └──(flow / line-per-day PIN limit)──▶ restart | wait
           (wrong code, tries left)│  └──(resend: same limits, same page)──▶ code
                                   ▼
                      (code right) credentials ──(policy refusals)──▶ credentials
                                   │
                                   ▼ compare-and-set, then the account
                                 done: "registrazione completata", "Continua" → /authorize?<query>
    (wrong codes used up) ──▶ the flow ends; the start page again with a clear message

No oracle: on the SMS way every well-formed line reaches the same ``code`` page under the same send limits;
a code goes out only to an active voice line of a business customer not yet registered. For any other line a
code is still issued but bound to an undeliverable destination and thrown away, so the verification path
(attempts, exhaustion, messages) is the same and no code can ever match. On the data way an unknown line, a
voice line and a wrong PIN all answer "PIN non corretto" (``check_sim_pin`` costs one argon2id verification
either way); with the right PIN the same ``code`` page follows whether or not the line is eligible, and only
an eligible one gets the e-mail. Attempts are counted before checking: codes per flow (``OTP_MAX_ATTEMPTS``),
PINs per flow (``SIM_PIN_MAX_ATTEMPTS``) and per line per day (``SIM_PIN_ATTEMPTS_PER_LINE_PER_DAY``). The
database decides races: two completions for one line leave one account (``create_account`` raises
``RegistrationError`` for the loser).
"""
from __future__ import annotations

import time

import sqlalchemy.exc
from flask import Blueprint, current_app, flash, g, redirect, render_template, request, url_for
from flask_babel import force_locale, gettext as _, lazy_gettext as _l, ngettext
from flask_wtf import FlaskForm
from wtforms import HiddenField, PasswordField, StringField
from wtforms.validators import AnyOf, DataRequired, Length, Regexp

from .. import msisdn, otp, ratelimit, registration, senders, signals
from ..directory import LineInfo, directory
from ..store import store
from .base import _COUNT, _FLOW_ID, Flow, FlowConflict, FlowExpired, TooManyAttempts, client_address
from .login import LoginFlow
from .steps import NewCredentialsForm, credentials_problems

bp = Blueprint("registration_employee", __name__, url_prefix="/flows/registration_employee")

PURPOSE = "registration_employee"
SIM_TYPE = {"sms": "voice", "data": "data"}
OTP_CHANNEL = {"sms": "sms", "data": "email"}
# Codes for ineligible lines are bound to this destination, which no request can ever name, then discarded.
_NOWHERE = "\x00undeliverable"


class EmployeeRegistrationFlow(Flow):
    kind = "registration_employee"
    initial = "line"
    transitions = {
        "line": ("sim", "code"),  # "sim": the data way, chosen on the start page
        "sim": ("code",),
        "code": ("code", "credentials"),  # code → code: a resend
        "credentials": ("done",),
    }
    attempts_setting = "OTP_MAX_ATTEMPTS"  # wrong codes per flow, across resends

    def pin_attempt(self) -> int:
        """Count one SIM PIN attempt before checking it; past SIM_PIN_MAX_ATTEMPTS the flow ends.

        Counted like ``count_attempt``: only while the flow exists, in one Lua step.
        """
        ttl = max(1, self.expires_at - int(time.time()))
        used = store().script(_COUNT)(keys=[store().key(self._key(self.id)),
                                            store().key(self._key(self.id) + ":pin")], args=[ttl])
        if used == 0:
            raise FlowExpired(self.id)
        if used > int(current_app.config["SIM_PIN_MAX_ATTEMPTS"]):
            self.finish()
            raise TooManyAttempts(self.id)
        return used

    def finish(self) -> None:
        super().finish()
        store().destroy(self._key(self.id) + ":pin")

    @property
    def otp_key(self) -> str:
        return self._key(self.id)


# domain ----------------------------------------------------------------------------------------------------

def eligible_line(number: str, way: str) -> LineInfo | None:
    """The directory's line when it can be registered this way: active, the right SIM type, no account yet."""
    info = directory().line(number)
    if info is None or not info.is_active or info.sim_type != SIM_TYPE[way]:
        return None
    if registration.line_is_registered(number):
        return None
    return info


def send_code(flow: EmployeeRegistrationFlow, address: str) -> None:
    """Apply the send limits, issue the code and deliver it only when the line is eligible.

    Raises ``ratelimit.RateLimited`` (nothing issued) or ``senders.DeliveryFailed`` (the code exists but did
    not leave; a resend replaces it).
    """
    way = flow.data["way"]
    destination = flow.data["line"] if way == "sms" else flow.data["email"]
    otp.check_send_limits(destination, address)
    info = eligible_line(flow.data["line"], way)
    code = otp.issue(flow.otp_key, PURPOSE, destination if info is not None else _NOWHERE)
    if info is None:
        signals.emit(signals.REGISTRATION_REFUSED, "refused", line=flow.data["line"], purpose=PURPOSE,
                     way=way, reason="line_not_eligible")
        return
    locale = flow.data.get("locale")
    context = dict(code=code, minutes=max(1, int(current_app.config["OTP_TTL"]) // 60),
                   purpose=_l("completare la registrazione"))
    try:
        if way == "sms":
            senders.send_sms(destination, "otp", locale=locale, **context)
        else:
            with force_locale(locale or current_app.config["BABEL_DEFAULT_LOCALE"]):
                subject = _("Il tuo codice di conferma Selfcare Business")
            senders.send_email(destination, "otp", subject=subject, locale=locale, **context)
    except senders.DeliveryFailed as exc:
        current_app.logger.warning("registration code not delivered (%s): %s", way, exc)
        signals.emit(signals.CODE_SEND_FAILED, "failed", line=flow.data["line"], purpose=PURPOSE,
                     channel=OTP_CHANNEL[way])
        otp.delivery_failed(destination)
        raise
    signals.emit(signals.CODE_SENT, line=flow.data["line"], purpose=PURPOSE, channel=OTP_CHANNEL[way])


def check_code(flow: EmployeeRegistrationFlow, code: str) -> bool:
    """True for the code sent for this flow; anything else (wrong, expired, never sent) is False."""
    destination = flow.data["line"] if flow.data["way"] == "sms" else flow.data["email"]
    try:
        otp.verify(flow.otp_key, PURPOSE, destination, code)
    except otp.OtpError:
        signals.emit(signals.CODE_WRONG, "refused", line=flow.data["line"], purpose=PURPOSE)
        return False
    return True


def complete(flow: EmployeeRegistrationFlow, password: str, question: str, answer: str):
    """Create the employee's account; RegistrationError when the line is no longer eligible or was taken."""
    way, number = flow.data["way"], flow.data["line"]
    info = eligible_line(number, way)
    email = flow.data.get("email") if way == "data" else None
    try:
        if info is None:
            raise registration.RegistrationError("line not eligible any more")
        account = registration.create_account(number, info.customer.code, "employee", email, OTP_CHANNEL[way],
                                              password, question=question, answer=answer,
                                              email_verified=email is not None)
    except registration.RegistrationError:
        signals.emit(signals.REGISTRATION_REFUSED, "refused", line=number, purpose=PURPOSE, way=way,
                     reason="line_taken_or_not_eligible")
        raise
    signals.emit(signals.REGISTRATION_COMPLETED, account_id=account.id, line=number, role="employee", way=way,
                 channel=OTP_CHANNEL[way])
    return account


# forms -----------------------------------------------------------------------------------------------------

class WayForm(FlaskForm):
    way = StringField(validators=[DataRequired(), AnyOf(tuple(SIM_TYPE))])
    login = HiddenField(validators=[Length(max=64)])


class LineForm(FlaskForm):
    line = StringField(validators=[DataRequired(), Length(max=32)])


class SimForm(FlaskForm):
    line = StringField(validators=[DataRequired(), Length(max=32)])
    pin = PasswordField(validators=[DataRequired(), Length(max=16)])
    email = StringField(validators=[DataRequired(), Length(max=254),
                                    Regexp(r"^[^@\s\x00-\x1f\x7f]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,}$")])


class CodeForm(FlaskForm):
    code = StringField(validators=[DataRequired(), Length(max=16)])


# views -----------------------------------------------------------------------------------------------------

def _wait(seconds: int) -> str:
    if seconds < 90:
        return ngettext("%(num)d secondo", "%(num)d secondi", seconds)
    if seconds < 90 * 60:
        return ngettext("%(num)d minuto", "%(num)d minuti", round(seconds / 60))
    return ngettext("%(num)d ora", "%(num)d ore", round(seconds / 3600))


def _rate_limited(error: ratelimit.RateLimited) -> str:
    if error.name == "sim-pin":
        return _("Troppi tentativi di PIN per questa linea: riprova tra %(wait)s.",
                 wait=_wait(error.retry_after))
    return _("Hai richiesto troppi codici: potrai chiederne un altro tra %(wait)s.",
             wait=_wait(error.retry_after))


def _restart(flow: EmployeeRegistrationFlow, message: str):
    flash(message, "warning")
    return redirect(url_for(".start", login=flow.data.get("login_id") or None))


def _delivery_failed_message(way: str) -> str:
    if way == "sms":
        return _("Non è stato possibile inviare l'SMS in questo momento. "
                 "Riprova tra poco con «Invia di nuovo il codice».")
    return _("Non è stato possibile inviare l'e-mail in questo momento. "
             "Riprova tra poco con «Invia di nuovo il codice».")


def _login_flow(login_id: str | None) -> LoginFlow | None:
    try:
        return LoginFlow.load(login_id or "")
    except FlowExpired:
        return None


@bp.route("/", methods=["GET", "POST"])
def start():
    form = WayForm()
    login = _login_flow(request.values.get("login"))
    if login is not None:
        g.locale = login.data.get("locale")
    if form.validate_on_submit():
        origin = login.data if login else {}
        flow = EmployeeRegistrationFlow.start(
            way=form.way.data, login_id=login.id if login else None,
            authorize_query=origin.get("authorize_query"), locale=origin.get("locale"),
            client_name=origin.get("client_name"))
        if form.way.data == "data":
            flow.advance("sim")
        signals.emit(signals.REGISTRATION_STARTED, purpose=PURPOSE, way=form.way.data)
        return redirect(url_for(".step", flow_id=flow.id))
    return render_template("flows/registration_employee/start.html", form=form,
                           login_id=login.id if login else "",
                           client_name=login.data.get("client_name") if login else None)


@bp.route("/<flow_id>", methods=["GET", "POST"])
def step(flow_id: str):
    if request.method != "POST" or not _FLOW_ID.match(flow_id or ""):
        return _step(flow_id)
    # One submission of a flow at a time: a burst of the same POST (double clicks, a retrying client) is
    # answered "already sent" instead of each copy spending one of the flow's attempts, which would end the
    # flow under the one copy that was right. The one that runs loads the flow under the lock, in the state
    # the previous submission left.
    busy = EmployeeRegistrationFlow._key(flow_id) + ":busy"
    if not store().add(busy, 1, 30):
        return _already_submitted()
    try:
        return _step(flow_id)
    finally:
        store().destroy(busy)


def _step(flow_id: str):
    flow = EmployeeRegistrationFlow.load_for_page(flow_id)
    handler = {"line": _line, "sim": _sim, "code": _code, "credentials": _credentials}.get(flow.state)
    if handler is None:  # "done": a concurrent request is finishing this flow
        return _already_submitted()
    try:
        return handler(flow)
    except FlowConflict:
        return _already_submitted()
    except FlowExpired:
        return render_template("flows/expired.html"), 410


def _already_submitted():
    return render_template("error.html", title=_("Richiesta già inviata"),
                           message=_("Questa pagina è già stata inviata da un'altra finestra o con un "
                                     "doppio clic. Se la registrazione è andata a buon fine, accedi con la "
                                     "tua linea e la password che hai scelto.")), 409


def _render(flow: EmployeeRegistrationFlow, template: str, **context):
    return render_template(f"flows/registration_employee/{template}.html", flow=flow,
                           client_name=flow.data.get("client_name"), **context)


def _send_and_advance(flow: EmployeeRegistrationFlow):
    """Send (or pretend to send) the code and move to the code page; the same answer for every line."""
    try:
        send_code(flow, client_address())
    except senders.DeliveryFailed:
        flow.advance("code", undelivered=True)
    else:
        flow.advance("code", undelivered=False)
    return redirect(url_for(".step", flow_id=flow.id))


def _line(flow: EmployeeRegistrationFlow):
    form = LineForm()
    error = None
    if form.validate_on_submit():
        number = msisdn.try_normalise(form.line.data)
        if number is None:
            error = _("Inserisci un numero di cellulare valido, ad esempio 393 123 4567.")
        else:
            flow.data["line"] = number
            try:
                return _send_and_advance(flow)
            except ratelimit.RateLimited as exc:
                error = _rate_limited(exc)
    elif request.method == "POST":
        error = _("Inserisci il numero della tua linea mobile aziendale.")
    return _render(flow, "line", form=form, error=error)


def _sim(flow: EmployeeRegistrationFlow):
    form = SimForm()
    error = None
    if form.validate_on_submit():
        number = msisdn.try_normalise(form.line.data)
        pin = form.pin.data.strip()
        if number is None:
            error = _("Inserisci un numero di linea valido, ad esempio 393 123 4567.")
        elif not pin.isdigit() or not 4 <= len(pin) <= 8:
            error = _("Il PIN della SIM è formato da 4 a 8 cifre.")
        else:
            try:
                used = flow.pin_attempt()
                ratelimit.hit("sim-pin", number,
                              int(current_app.config["SIM_PIN_ATTEMPTS_PER_LINE_PER_DAY"]), 86400)
            except TooManyAttempts:
                return _restart(flow, _("Troppi PIN non corretti: ricomincia la registrazione."))
            except ratelimit.RateLimited as exc:
                error = _rate_limited(exc)
            else:
                if directory().check_sim_pin(number, pin):
                    flow.data.update(line=number, email=form.email.data.strip())
                    try:
                        return _send_and_advance(flow)
                    except ratelimit.RateLimited as exc:
                        return _render(flow, "sim", form=form, error=_rate_limited(exc))
                signals.emit(signals.SIM_PIN_WRONG, "refused", line=number, purpose=PURPOSE)
                left = int(current_app.config["SIM_PIN_MAX_ATTEMPTS"]) - used
                if left <= 0:
                    flow.finish()
                    return _restart(flow, _("Troppi PIN non corretti: ricomincia la registrazione."))
                error = _("PIN non corretto.") + " " + ngettext("Ti resta %(num)d tentativo.",
                                                                 "Ti restano %(num)d tentativi.", left)
    elif request.method == "POST":
        error = _("Inserisci il numero della SIM dati, il suo PIN e un indirizzo e-mail valido.")
    return _render(flow, "sim", form=form, error=error)


def _code(flow: EmployeeRegistrationFlow):
    form = CodeForm()
    error = None
    if request.method == "POST" and request.form.get("action") == "resend":
        try:
            send_code(flow, client_address())
        except ratelimit.RateLimited as exc:
            error = _rate_limited(exc)
        except senders.DeliveryFailed:
            flow.advance("code", undelivered=True)
        else:
            flow.advance("code", undelivered=False)
            if flow.data["way"] == "sms":
                flash(_("Se la linea è idonea ti abbiamo inviato un nuovo codice: "
                        "quello precedente non vale più."), "info")
            else:
                flash(_("Se i dati sono corretti ti abbiamo inviato un nuovo codice: "
                        "quello precedente non vale più."), "info")
            return redirect(url_for(".step", flow_id=flow.id))
    elif form.validate_on_submit():
        try:
            used = flow.count_attempt()
        except TooManyAttempts:
            return _restart(flow, _("Troppi codici non corretti: ricomincia la registrazione."))
        if check_code(flow, form.code.data):
            flow.advance("credentials")
            return redirect(url_for(".step", flow_id=flow.id))
        left = int(current_app.config["OTP_MAX_ATTEMPTS"]) - used
        if left <= 0:
            flow.finish()
            return _restart(flow, _("Troppi codici non corretti: ricomincia la registrazione."))
        error = _("Codice non corretto o scaduto.") + " " + ngettext("Ti resta %(num)d tentativo.",
                                                                      "Ti restano %(num)d tentativi.", left)
    elif request.method == "POST":
        error = _("Inserisci il codice che hai ricevuto.")
    if error is None and flow.data.get("undelivered"):
        error = _delivery_failed_message(flow.data["way"])
    return _render(flow, "code", form=form, error=error,
                   digits=int(current_app.config["OTP_DIGITS"]),
                   minutes=max(1, int(current_app.config["OTP_TTL"]) // 60))


_DATABASE_DOWN = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.TimeoutError)


def _reopen(flow: EmployeeRegistrationFlow) -> None:
    """Back from "done" to "credentials" after the database failed under ``complete`` (the 503 page says that
    what was entered is not lost). A commit whose answer was lost is harmless: sent again, the line is taken."""
    try:
        flow.state = "credentials"
        flow.save()
    except Exception:  # Redis is gone too, or the flow expired: the person starts again
        pass


def _credentials(flow: EmployeeRegistrationFlow):
    form = NewCredentialsForm()
    problems: list[str] = []
    if request.method == "POST":
        form.validate_on_submit()
        problems = credentials_problems(form, flow.data["line"], flow.data.get("email"))
        if not problems:
            flow.advance("done")  # compare-and-set: one submission of this flow goes on
            try:
                complete(flow, form.password.data, form.question.data, form.answer.data)
            except _DATABASE_DOWN:
                _reopen(flow)  # nothing was saved: the same page can be sent again once the service is back
                raise
            except registration.RegistrationError:
                flow.finish()
                return render_template("error.html", title=_("Registrazione non completata"),
                                       message=_("Questa linea risulta già registrata o non è più idonea "
                                                 "alla registrazione. Se hai già un account, accedi con la "
                                                 "linea e la password oppure recupera la password.")), 409
            flow.finish()
            authorize_query = flow.data.get("authorize_query")
            return _render(flow, "done", line=flow.data["line"],
                           continue_url=url_for("oauth.authorize") + "?" + authorize_query if authorize_query
                           else None)
    return _render(flow, "credentials", form=form, problems=problems)
