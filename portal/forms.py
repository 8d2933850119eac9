"""WTForms forms; Flask-WTF adds and checks the CSRF token on every one."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, HiddenField, PasswordField, StringField
from wtforms.validators import DataRequired, Length, Optional, Regexp

# NUL and other control characters are never part of an address (and PostgreSQL refuses NUL).
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"


class LoginForm(FlaskForm):
    """Identifier first: the email decides whether the user goes to their organization's
    identity provider or is asked for a password here."""

    email = EmailField("Work email", validators=[DataRequired(), Length(max=320),
                                                 Regexp(NO_CONTROL_CHARACTERS)],
                       render_kw={"autocomplete": "username"})
    password = PasswordField("Password", validators=[Optional(), Length(max=1024)],
                             render_kw={"autocomplete": "current-password"})
    next = HiddenField()


class PostForm(FlaskForm):
    """A form with no fields: a CSRF-protected button such as "Sign out"."""


class LinkForm(FlaskForm):
    """Proves control of an existing account before a company sign-in is linked to it."""

    password = PasswordField("Password of your existing account",
                             validators=[DataRequired(), Length(max=1024)],
                             render_kw={"autocomplete": "current-password"})


def _new_password(label: str = "New password") -> PasswordField:
    return PasswordField(label, validators=[DataRequired(), Length(max=1024)],
                         render_kw={"autocomplete": "new-password"})


def _email() -> EmailField:
    return EmailField("Email", validators=[DataRequired(), Length(max=320),
                                           Regexp(NO_CONTROL_CHARACTERS)],
                      render_kw={"autocomplete": "email"})


class ForgotPasswordForm(FlaskForm):
    email = _email()


class ResetPasswordForm(FlaskForm):
    password = _new_password()
    confirm = _new_password("New password again")


class ChangePasswordForm(FlaskForm):
    # Optional: a recent sign-in stands in for it (the service decides).
    current = PasswordField("Current password", validators=[Optional(), Length(max=1024)],
                            render_kw={"autocomplete": "current-password"})
    password = _new_password()
    confirm = _new_password("New password again")


class RegisterForm(FlaskForm):
    email = _email()
    display_name = StringField("Your name", validators=[Optional(), Length(max=200),
                                                        Regexp(NO_CONTROL_CHARACTERS)],
                               render_kw={"autocomplete": "name"})
    password = _new_password("Password")
    confirm = _new_password("Password again")
    accept_terms = BooleanField("I accept the terms of use")
