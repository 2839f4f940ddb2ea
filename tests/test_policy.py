"""Password policy, security answers and phone numbers (issue 3 points 9–10; SPEC §2)."""
import pytest

from idp import msisdn, passwords, security_questions


@pytest.fixture
def ctx(app):
    with app.test_request_context():
        yield app


@pytest.mark.parametrize("password", ["corto1", "password123", "Juventus", "qwerty123", "aaaaaaaaaaaa",
                                      "Mia3931234567x", "x" * 200])
def test_refused_passwords(ctx, password):
    assert passwords.password_problems(password, line="+393931234567", email="mario@acme.example")


def test_good_password_passes(ctx):
    assert passwords.password_problems("Lampione-Verde-72", line="+393931234567") == []


def test_password_containing_the_email_name_is_refused(ctx):
    assert passwords.password_problems("mario.rossi-2026!", email="mario.rossi@acme.example")


def test_minimum_length_is_configurable(make_app):
    app = make_app(PASSWORD_MIN_LENGTH=14)
    with app.test_request_context():
        assert passwords.password_problems("Lampione-Verd")
        assert not passwords.password_problems("Lampione-Verde")


@pytest.mark.parametrize("typed,stored", [("Città di Castello", "città di castello"),
                                          ("  CITTA   di  castello ", "città di castello"),
                                          ("Ｆｕｆｆｙ", "fuffy"), ("Straße", "strasse")])
def test_answers_are_normalised(typed, stored):
    assert passwords.normalise_answer(typed) == passwords.normalise_answer(stored)


def test_answer_hash_verifies_loosely_and_is_argon2id(ctx):
    stored = passwords.hash_secret(passwords.normalise_answer("Fido Primo"))
    assert stored.startswith("$argon2id$")
    assert passwords.verify_secret(stored, passwords.normalise_answer("  fido   PRIMO "))
    assert not passwords.verify_secret(stored, passwords.normalise_answer("fido secondo"))


@pytest.mark.parametrize("answer", ["3931234567", "+39 393 123 4567", "mario", "Lampione-Verde-72", "ab"])
def test_refused_answers(ctx, answer):
    assert passwords.answer_problems(answer, password="Lampione-Verde-72", line="+393931234567",
                                     email="mario@acme.example")


def test_good_answer_passes(ctx):
    assert passwords.answer_problems("Fido", password="Lampione-Verde-72", line="+393931234567") == []


def test_catalogue_has_at_least_eight_italian_questions(ctx):
    choices = security_questions.choices()
    assert len(choices) >= 8 and all(text.endswith("?") for _key, text in choices)


@pytest.mark.parametrize("number", ["+393931234567", "+393401112233"])
def test_mask_shows_only_the_end(number):
    masked = msisdn.mask(number)
    assert masked.endswith(number[-4:]) and number[6:-4] not in masked.replace(" ", "")


def test_landlines_are_not_usernames():
    with pytest.raises(msisdn.InvalidMsisdn):
        msisdn.normalise("06 1234 5678")


@pytest.mark.parametrize("typed", ["333 123 4567", "+39 333 1234567", "0039 3331234567", "39 333 1234567"])
def test_typed_forms_of_a_mobile_line_are_one_username(typed):
    assert msisdn.normalise(typed) == "+393331234567"


def test_mobile_type_alone_decides_as_the_full_validity_check_did():
    """normalise looks the number's type up once; over many numbers, mobile-typed ones are exactly the valid mobiles."""
    import random

    import phonenumbers
    rnd = random.Random(5)
    for _ in range(3000):
        text = "+39" + str(rnd.randint(10 ** 7, 10 ** 11))
        number = phonenumbers.parse(text, "IT")
        expected = phonenumbers.is_valid_number(number) and phonenumbers.number_type(number) in msisdn._MOBILE_TYPES
        assert (msisdn.try_normalise(text) is not None) == expected, text
    for bad in ("", "   ", "+39", "abc", "1" * 40, "+39 06 1234 5678"):
        assert msisdn.try_normalise(bad) is None
        assert msisdn.try_normalise(bad) is None  # a failure is not remembered as a success
