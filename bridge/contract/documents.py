"""The files of `schemas/`: every payload's JSON Schema and the AsyncAPI document of the whole
contract, written by `iotbridge schema` and checked for drift by the tests.
"""

from __future__ import annotations

from pathlib import Path

from bridge.contract import asyncapi, schema


def render() -> dict[str, str]:
    """File name -> file text."""
    return schema.render() | {"asyncapi.yaml": asyncapi.render()}


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def drift(directory: Path) -> list[str]:
    """Names of files that are missing or differ from what the models generate."""
    return [
        name
        for name, text in render().items()
        if not (directory / name).exists() or (directory / name).read_text(encoding="utf-8") != text
    ]
