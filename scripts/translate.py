"""Fill English translations into the catalogue from a JSON map {italian: english} and clear their fuzzy flags.

Usage: .venv/bin/python scripts/translate.py FILE.json   (then scripts/i18n compile)
"""
import json
import sys

from babel.messages.pofile import read_po, write_po

PATH = "idp/translations/en/LC_MESSAGES/messages.po"


def main(mapping_file: str) -> None:
    with open(mapping_file, encoding="utf-8") as fh:
        mapping = json.load(fh)
    with open(PATH, "rb") as fh:
        catalog = read_po(fh)
    done = 0
    for message in catalog:
        if message.id in mapping:
            message.string = mapping[message.id]
            message.flags.discard("fuzzy")
            message.previous_id = []
            done += 1
    with open(PATH, "wb") as fh:
        write_po(fh, catalog, width=110)
    print(f"{done} entries translated")


if __name__ == "__main__":
    main(sys.argv[1])
