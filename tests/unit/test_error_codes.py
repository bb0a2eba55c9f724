"""The error vocabulary is stated once, in bridge.errors; the README's table and the AsyncAPI
document name exactly those codes."""

from __future__ import annotations

import re
from pathlib import Path

from bridge.contract.asyncapi import document
from bridge.errors import published_codes

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_has_every_code_and_no_other() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("### Results and error codes", 1)[1].split("\n## ", 1)[0]
    table = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    assert sorted(table) == sorted(published_codes())


def test_the_asyncapi_document_names_every_code() -> None:
    description = document()["info"]["description"]
    for code in published_codes():
        assert f"`{code}`" in description
