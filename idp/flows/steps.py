"""Steps that several flows share (SPEC §3 points 4–8): choosing a new password with a security question.

Employee registration, the referent's first login, recovery and the password change all end on the same form and
the same checks (issue 3 points 9–10), so they live here once.
"""
from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import PasswordField, SelectField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from .. import passwords, security_questions


class NewCredentialsForm(FlaskForm):
    password = PasswordField(_l("Nuova password"), validators=[DataRequired(), Length(max=256)])
    confirm = PasswordField(_l("Ripeti la nuova password"),
                            validators=[DataRequired(), EqualTo("password", message=_l("Le due password non coincidono."))])
    question = SelectField(_l("Domanda di sicurezza"), validators=[DataRequired()])
    answer = StringField(_l("Risposta"), validators=[DataRequired(), Length(max=200)])

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.question.choices = security_questions.choices()


def credentials_problems(form: NewCredentialsForm, line: str | None, email: str | None) -> list[str]:
    """Everything wrong with the new password and answer, for the page; empty when they can be saved."""
    problems = [str(message) for errors in form.errors.values() for message in errors]
    if problems:
        return problems
    problems += passwords.password_problems(form.password.data, line=line, email=email)
    problems += passwords.answer_problems(form.answer.data, password=form.password.data, line=line, email=email)
    return problems
