"""Password recovery, "Non ricordi la password" (SPEC §3 point 7; issue 4 point 1).

State diagram::

    line ──▶ question ──(answer right)──▶ code ──(code right)──▶ new_credentials ──▶ done
              │  └──(wrong, tries left)──▶ question        └──(wrong)──▶ code
              └──(tries used up / throttled)──▶ flow ends, start again later

The registered line is asked first. A known line gets its own security question; an unknown or disabled line gets
a decoy question chosen by a keyed hash of the line, so it is stable across attempts and gives nothing away; its
answer is checked against a dummy hash (same time) and is never right. When the answer is right a control code is
sent on the channel chosen at registration (SMS to the line, or e-mail). After the new password and the new
security question are saved, every session and refresh token of the account ends, the person is told on their
channel, and they log in again themselves: a reset never logs anyone in. Wrong answers are throttled per line and
per client address in time windows; recovery never locks an account.
"""
from __future__ import annotations

import hashlib
import hmac

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import DataRequired, Length

from .. import accounts, msisdn, otp, passwords, ratelimit, security_questions, senders, signals
from .base import Flow, FlowConflict, TooManyAttempts, client_address
from .login import LoginFlow
from .steps import NewCredentialsForm, credentials_problems

bp = Blueprint("recovery", __name__, url_prefix="/flows/recovery")
PURPOSE = "recovery"


class RecoveryFlow(Flow):
    kind = "recovery"
    initial = "line"
    transitions = {"line": ("question",), "question": ("code",), "code": ("new_credentials",),
                   "new_credentials": ("done",)}
    attempts_setting = "RECOVERY_MAX_ANSWER_ATTEMPTS"


class LineForm(FlaskForm):
    username = StringField("username", validators=[DataRequired(), Length(max=32)])


class AnswerForm(FlaskForm):
    answer = StringField("answer", validators=[DataRequired(), Length(max=200)])


class CodeForm(FlaskForm):
    code = StringField("code", validators=[DataRequired(), Length(max=16)])


def decoy_question(line: str) -> str:
    """The same plausible question for the same unknown line, every time (keyed, so not predictable)."""
    keys = sorted(security_questions.QUESTIONS)
    digest = hmac.new(str(current_app.config["HMAC_KEY"]).encode(), ("decoy|" + line).encode(), hashlib.sha256)
    return keys[int.from_bytes(digest.digest()[:4], "big") % len(keys)]


def _account_for(line: str | None):
    account = accounts.by_username(line) if line else None
    return account if account is not None and account.is_active and account.security_answer_hash else None


def _page(flow: RecoveryFlow, template: str, **context):
    g.locale = flow.data.get("locale")
    return render_template(f"flows/recovery/{template}.html", flow=flow, **context)


def _throttled(error: ratelimit.RateLimited, flow: RecoveryFlow | None = None):
    minutes = max(1, (error.retry_after + 59) // 60)
    message = _("Troppi tentativi. Riprova tra %(minutes)d minuti.", minutes=minutes)
    if flow is not None:
        g.locale = flow.data.get("locale")
    return render_template("error.html", title=_("Attendi un momento"), message=message), 429


@bp.route("/", methods=["GET", "POST"])
def start():
    """Ask the registered line; create the flow when it is submitted."""
    login = None
    login_id = request.args.get("login")
    if login_id:
        try:
            login = LoginFlow.load(login_id)
            g.locale = login.data.get("locale")
        except Exception:  # an expired login only loses the way back
            login = None
    form = LineForm()
    if request.method == "GET" and login is not None and login.data.get("login_hint"):
        form.username.data = login.data["login_hint"]
    if form.validate_on_submit():
        line = msisdn.try_normalise(form.username.data) or ""
        flow = RecoveryFlow.start(line=line, authorize_query=login.data["authorize_query"] if login else "",
                                  locale=login.data.get("locale") if login else g.get("locale"))
        account = _account_for(line)
        question = account.security_question if account else decoy_question(line or form.username.data)
        flow.advance("question", question=question)
        signals.emit(signals.RECOVERY_STARTED, account_id=account.id if account else None,
                     line=line or None, known=account is not None)
        return redirect(url_for("recovery.step", flow_id=flow.id))
    return render_template("flows/recovery/line.html", form=form)


@bp.route("/<flow_id>", methods=["GET", "POST"])
def step(flow_id: str):
    flow = RecoveryFlow.load(flow_id)
    handler = {"question": _question, "code": _code, "new_credentials": _new_credentials}.get(flow.state)
    if handler is None:
        return render_template("flows/expired.html"), 410
    return handler(flow)


def _question(flow: RecoveryFlow):
    form = AnswerForm()
    error = None
    if form.validate_on_submit():
        line = flow.data["line"]
        try:
            ratelimit.hit("recovery-answer-line", line or flow.id, int(current_app.config["RECOVERY_ANSWERS_PER_HOUR"]),
                          3600)
            ratelimit.hit("recovery-answer-address", client_address(),
                          int(current_app.config["RECOVERY_ANSWERS_PER_HOUR_ADDRESS"]), 3600)
            flow.count_attempt()
        except ratelimit.RateLimited as exc:
            return _throttled(exc, flow)
        except TooManyAttempts:
            return _page(flow, "ended")
        account = _account_for(line)
        right = passwords.verify_secret(account.security_answer_hash if account else None,
                                        passwords.normalise_answer(form.answer.data))
        if right and account is not None:
            return _send_code(flow, account)
        signals.emit(signals.RECOVERY_ANSWER_WRONG, "refused", account_id=account.id if account else None,
                     line=line or None)
        error = _("La risposta non è corretta.")
    return _page(flow, "question", form=form, error=error,
                 question=security_questions.text(flow.data["question"]))


def _send_code(flow: RecoveryFlow, account, resend: bool = False):
    channel = account.otp_channel if account.otp_channel == "sms" or account.email else "sms"
    destination = account.username if channel == "sms" else account.email
    try:
        otp.check_send_limits(destination, client_address())
    except ratelimit.RateLimited as exc:
        return _throttled(exc, flow)
    code = otp.issue(flow.id, PURPOSE, destination)
    minutes = int(current_app.config["OTP_TTL"]) // 60
    try:
        if channel == "sms":
            senders.send_sms(destination, "otp", locale=flow.data.get("locale"), code=code, minutes=minutes,
                             purpose=_("recuperare la password"))
        else:
            senders.send_email(destination, "otp", _("Il tuo codice di controllo"), locale=flow.data.get("locale"),
                               code=code, minutes=minutes, purpose=_("recuperare la password"))
    except senders.DeliveryFailed:
        signals.emit(signals.CODE_SEND_FAILED, "failed", account_id=account.id, line=account.username,
                     channel=channel, purpose=PURPOSE)
        otp.delivery_failed(destination)
        if not resend:
            flow.advance("code", channel=channel, account_id=account.id)
        return _page(flow, "code", form=CodeForm(formdata=None), channel=channel,
                     error=_("Non siamo riusciti a inviare il codice. Riprova tra poco con «Invia di nuovo»."))
    signals.emit(signals.CODE_SENT, account_id=account.id, line=account.username, channel=channel, purpose=PURPOSE)
    if not resend:
        flow.advance("code", channel=channel, account_id=account.id)
    return redirect(url_for("recovery.step", flow_id=flow.id))


@bp.post("/<flow_id>/resend")
def resend(flow_id: str):
    flow = RecoveryFlow.load(flow_id)
    if flow.state != "code":
        return render_template("flows/expired.html"), 410
    account = accounts.active_by_id(flow.data["account_id"])
    if account is None:
        return render_template("flows/expired.html"), 410
    return _send_code(flow, account, resend=True)


def _code(flow: RecoveryFlow):
    form = CodeForm()
    error = None
    channel = flow.data["channel"]
    if form.validate_on_submit():
        account = accounts.active_by_id(flow.data["account_id"])
        destination = (account.username if channel == "sms" else account.email) if account else ""
        try:
            otp.verify(flow.id, PURPOSE, destination, form.code.data)
        except otp.OtpExhausted:
            signals.emit(signals.CODE_WRONG, "refused", account_id=flow.data["account_id"], purpose=PURPOSE)
            flow.finish()
            return _page(flow, "ended")
        except otp.OtpError:
            signals.emit(signals.CODE_WRONG, "refused", account_id=flow.data["account_id"], purpose=PURPOSE)
            error = _("Il codice non è corretto o è scaduto.")
        else:
            try:
                flow.advance("new_credentials")
            except FlowConflict:
                pass
            return redirect(url_for("recovery.step", flow_id=flow.id))
    return _page(flow, "code", form=form, channel=channel, error=error)


def _new_credentials(flow: RecoveryFlow):
    account = accounts.active_by_id(flow.data["account_id"])
    if account is None:
        return render_template("flows/expired.html"), 410
    form = NewCredentialsForm()
    problems = []
    if form.validate_on_submit():
        problems = credentials_problems(form, account.username, account.email)
        if not problems:
            try:
                flow.advance("done")
            except FlowConflict:
                return render_template("flows/expired.html"), 410
            accounts.change_credentials(account, form.password.data, form.question.data, form.answer.data,
                                        reason=PURPOSE, locale=flow.data.get("locale"))
            flow.finish()
            return _page(flow, "done", continue_url=_continue_url(flow))
    elif request.method == "POST":
        problems = [str(m) for errors in form.errors.values() for m in errors]
    return _page(flow, "new_credentials", form=form, problems=problems)


def _continue_url(flow: RecoveryFlow) -> str:
    query = flow.data.get("authorize_query")
    return url_for("oauth.authorize") + "?" + query if query else url_for("oauth.home")
