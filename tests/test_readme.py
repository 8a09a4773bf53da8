"""The README's settings table is generated from the settings class and must not drift."""

from __future__ import annotations

import re
from pathlib import Path

from pensu.settings import describe_settings, settings_table_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_settings_table_matches_the_settings_class() -> None:
    text = README.read_text()
    match = re.search(r"<!-- settings-table:start -->\n(.*?)<!-- settings-table:end -->", text, re.S)
    assert match, "README lost its settings-table markers"
    assert match.group(1).strip() == settings_table_markdown().strip(), (
        "README settings table is stale: regenerate it from pensu.settings.settings_table_markdown()")


def test_every_variable_is_documented() -> None:
    text = README.read_text()
    for variable, *_ in describe_settings():
        assert f"`{variable}`" in text


def test_quick_start_shows_the_two_commands_first() -> None:
    text = README.read_text()
    quick = text.index("## Quick start")
    block = text[quick:text.index("```", text.index("```", quick) + 3)]
    assert "make demo" in block and "make test" in block
