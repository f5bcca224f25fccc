"""Regenerate the settings table in README.md from the Settings model."""

from __future__ import annotations

import re
from pathlib import Path

from glimpse.settings_doc import settings_markdown

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- settings-table -->", "<!-- /settings-table -->"


def main() -> None:
    text = README.read_text()
    block = f"{START}\n{settings_markdown()}{END}"
    pattern = re.compile(re.escape(START) + r".*?(" + re.escape(END) + r"|$)", re.S)
    text = text.replace(START, block) if END not in text else pattern.sub(lambda _: block, text, count=1)
    README.write_text(text)


if __name__ == "__main__":
    main()
