"""Translations: Italian is the source language (the msgids), English a catalogue (idp/translations/en).

The catalogue tests fail when someone adds or changes an Italian string without translating it (run
``scripts/i18n``, translate, ``scripts/i18n compile``) or forgets to compile messages.mo. The behaviour tests
check the language choice: ``?lang=`` on the login page, then ``ui_locales`` of the authorization request,
then Accept-Language, else Italian.
"""
from __future__ import annotations

import io
import re
import shlex
from pathlib import Path

import pytest
from babel.messages.frontend import CommandLineInterface
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po

from .helpers import Journey

ROOT = Path(__file__).resolve().parent.parent
TRANSLATIONS = ROOT / "idp" / "translations"
PO = TRANSLATIONS / "en" / "LC_MESSAGES" / "messages.po"
MO = TRANSLATIONS / "en" / "LC_MESSAGES" / "messages.mo"


def _script_keywords() -> list[str]:
    """The extra extraction keywords of scripts/i18n, so the test extracts exactly as the script does."""
    text = (ROOT / "scripts" / "i18n").read_text(encoding="utf-8")
    match = re.search(r"^KEYWORDS=\(([^)]*)\)", text, re.M)
    assert match, "scripts/i18n has no KEYWORDS=(...) line"
    return shlex.split(match.group(1))


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    pot = tmp_path_factory.mktemp("i18n") / "messages.pot"
    CommandLineInterface().run(["pybabel", "-q", "extract", "-F", str(ROOT / "babel.cfg"),
                                *_script_keywords(), "-o", str(pot), str(ROOT)])
    with pot.open("rb") as f:
        catalog = read_po(f)
    ids = {message.id for message in catalog if message.id}
    assert ids, "the extraction found no strings: is babel.cfg right?"
    return ids


def _read_po():
    with PO.open("rb") as f:
        return read_po(f)


def _key(message):
    # read_mo gives a plural entry's id as a list (unhashable): make it a tuple, as read_po does
    msgid = tuple(message.id) if isinstance(message.id, (list, tuple)) else message.id
    return msgid, message.context


# catalogue --------------------------------------------------------------------------------------------------

def test_extraction_finds_templates_and_code(extracted):
    assert "Accedi" in extracted  # a template
    assert "Numero di linea o password non corretti." in extracted  # Python
    assert "per continuare su %(name)s" in extracted  # a template string with a placeholder


def test_every_extracted_string_has_an_english_translation(extracted):
    catalog = _read_po()
    problems = []
    for msgid in sorted(extracted, key=str):
        message = catalog.get(msgid)
        if message is None:
            problems.append(f"missing from messages.po: {msgid!r}")
        elif message.fuzzy:
            problems.append(f"fuzzy: {msgid!r}")
        elif not (all(message.string) if isinstance(message.string, tuple) else message.string):
            problems.append(f"untranslated: {msgid!r}")
    assert not problems, "run scripts/i18n and translate:\n" + "\n".join(problems)


def test_catalogue_has_no_stale_or_broken_entries(extracted):
    catalog = _read_po()
    stale = sorted({message.id for message in catalog if message.id} - extracted, key=str)
    assert not stale, f"messages.po translates strings the code no longer has (run scripts/i18n): {stale}"
    broken = [(message.id, [str(error) for error in errors]) for message, errors in catalog.check()]
    assert not broken, f"translations whose placeholders do not match their msgid: {broken}"
    assert str(catalog.locale) == "en"


def test_committed_mo_is_compiled_from_the_po():
    buffer = io.BytesIO()
    write_mo(buffer, _read_po())
    buffer.seek(0)
    compiled = {_key(message): message.string for message in read_mo(buffer)}
    with MO.open("rb") as f:
        committed = {_key(message): message.string for message in read_mo(f)}
    assert committed == compiled, "messages.mo is out of date: run scripts/i18n compile"


# behaviour --------------------------------------------------------------------------------------------------

def _login_page(client, factory, headers=None, **authorize):
    journey = Journey(client, factory.rp())
    if headers:
        journey.client = _WithHeaders(client, headers)
    response = journey.authorize(**authorize)
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith("/flows/login/"), location
    return journey, location


class _WithHeaders:
    """The test client, sending the same extra headers (Accept-Language) on every request."""

    def __init__(self, client, headers):
        self._client, self._headers = client, headers

    def get(self, *args, **kwargs):
        return self._client.get(*args, headers={**self._headers, **kwargs.pop("headers", {})}, **kwargs)

    def post(self, *args, **kwargs):
        return self._client.post(*args, headers={**self._headers, **kwargs.pop("headers", {})}, **kwargs)


def assert_italian(html: str):
    assert '<html lang="it">' in html
    assert "Accedi" in html
    assert "Username (linea mobile)" in html
    assert "Log in" not in html


def assert_english(html: str):
    assert '<html lang="en">' in html
    assert "Log in" in html
    assert "Username (mobile line)" in html
    assert "to continue to Portale di prova" in html
    assert "Accedi" not in html
    assert "Username (linea mobile)" not in html


def test_login_page_is_italian_by_default(client, factory):
    _journey, location = _login_page(client, factory)
    page = client.get(location)
    assert page.status_code == 200
    assert_italian(page.text)
    assert "per continuare su Portale di prova" in page.text


@pytest.mark.parametrize("ui_locales", ["en", "en-GB it", "fr en"])
def test_ui_locales_chooses_english(client, factory, ui_locales):
    _journey, location = _login_page(client, factory, ui_locales=ui_locales)
    assert_english(client.get(location).text)


def test_ui_locales_wins_over_accept_language(client, factory):
    _journey, location = _login_page(client, factory, ui_locales="it", headers={"Accept-Language": "en"})
    assert_italian(client.get(location, headers={"Accept-Language": "en"}).text)


def test_accept_language_english(client, factory):
    headers = {"Accept-Language": "en-US,en;q=0.9"}
    _journey, location = _login_page(client, factory, headers=headers)
    assert_english(client.get(location, headers=headers).text)


def test_unsupported_accept_language_falls_back_to_italian(client, factory):
    headers = {"Accept-Language": "fr"}
    _journey, location = _login_page(client, factory, headers=headers)
    assert_italian(client.get(location, headers=headers).text)


def test_lang_switch_on_the_login_page_sticks_to_the_flow(client, factory):
    _journey, location = _login_page(client, factory)
    assert_italian(client.get(location).text)
    assert_english(client.get(location + "?lang=en").text)
    assert_english(client.get(location).text)  # remembered by the flow, not only for that one request
    assert_italian(client.get(location + "?lang=it").text)
    assert_italian(client.get(location + "?lang=de").text)  # unsupported: ignored


def test_lang_switch_overrides_ui_locales(client, factory):
    _journey, location = _login_page(client, factory, ui_locales="en")
    assert_italian(client.get(location + "?lang=it").text)


@pytest.mark.parametrize("how, expected, not_expected", [
    ({}, "Numero di linea o password non corretti.", "Incorrect line number or password."),
    ({"ui_locales": "en"}, "Incorrect line number or password.", "Numero di linea o password non corretti."),
    ({"lang": "en"}, "Incorrect line number or password.", "Numero di linea o password non corretti."),
])
def test_wrong_password_message_is_translated(client, factory, how, expected, not_expected):
    factory.account()
    journey, location = _login_page(client, factory, ui_locales=how.get("ui_locales"))
    if "lang" in how:
        client.get(location + "?lang=" + how["lang"])
    response = journey.submit_login(location, password="Sbagliata-123")
    assert response.status_code == 200
    assert expected in response.text
    assert not_expected not in response.text
    assert f'<html lang="{"en" if how else "it"}">' in response.text


def test_missing_fields_message_is_translated(client, factory):
    from .helpers import csrf_of
    _journey, location = _login_page(client, factory, ui_locales="en")
    page = client.get(location)
    response = client.post(location, data={"csrf_token": csrf_of(page.text), "username": "", "password": ""})
    assert "Enter your line number and password." in response.text


@pytest.mark.parametrize("extra, headers, title, text", [
    ({}, {}, "Richiesta non valida", "Dettagli tecnici"),
    ({}, {"Accept-Language": "fr"}, "Richiesta non valida", "Dettagli tecnici"),
    ({"ui_locales": "en"}, {}, "Invalid request", "Technical details"),
    ({}, {"Accept-Language": "en-US,en;q=0.9"}, "Invalid request", "Technical details"),
])
def test_unknown_client_error_page(client, extra, headers, title, text):
    params = {"response_type": "code", "client_id": "no-such-client", "redirect_uri": "https://rp.example/cb",
              "scope": "openid", "state": "s", **extra}
    response = client.get("/authorize", query_string=params, headers=headers)
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert f"<h1>{title}</h1>" in response.text
    assert text in response.text
    lang = "en" if title == "Invalid request" else "it"
    assert f'<html lang="{lang}">' in response.text
    other = "Invalid request" if lang == "it" else "Richiesta non valida"
    assert other not in response.text


def test_not_found_page_is_translated(client):
    assert "La pagina richiesta non esiste." in client.get("/nope").text
    english = client.get("/nope", headers={"Accept-Language": "en"})
    assert english.status_code == 404
    assert "The page you requested does not exist." in english.text
