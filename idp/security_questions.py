"""The catalogue of security questions (SPEC §2, §3 points 5–8; issue 3 point 9).

People choose one question from this list (never their own) and its answer is normalised and hashed like a password
(``passwords.normalise_answer`` + argon2id). The questions avoid facts found in public records. Keys are stored;
texts are translated at display time.
"""
from __future__ import annotations

from flask_babel import lazy_gettext as _l

QUESTIONS = {
    "first_pet": _l("Come si chiamava il tuo primo animale domestico?"),
    "childhood_friend": _l("Come si chiamava il tuo migliore amico d'infanzia?"),
    "first_teacher": _l("Come si chiamava la tua maestra o il tuo maestro delle elementari?"),
    "favourite_dish": _l("Qual è il piatto che preferisci tra quelli che cucinava tua nonna?"),
    "first_concert": _l("Qual è stato il primo concerto a cui hai assistito?"),
    "dream_job": _l("Che lavoro sognavi di fare da bambino?"),
    "first_holiday": _l("Dove hai trascorso la tua prima vacanza senza i genitori?"),
    "favourite_book": _l("Qual è il titolo del primo libro che ti è piaciuto davvero?"),
    "childhood_street": _l("In quale via abitava il tuo amico del cuore da bambino?"),
    "first_car": _l("Qual era il modello della tua prima auto o moto?"),
}

MIN_ANSWER_LENGTH = 3


def text(key: str) -> str:
    return str(QUESTIONS[key])


def choices() -> list[tuple[str, str]]:
    return [(key, str(label)) for key, label in QUESTIONS.items()]
