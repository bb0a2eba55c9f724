"""JSON Schema of every MQTT payload, generated from the models (`iotbridge schema`).

Also the AsyncAPI document of the whole contract (`asyncapi.yaml`, from `bridge.contract.asyncapi`).

The files in `schemas/` are this module's output; a test fails when they drift from the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from bridge.contract import models, t7470
from bridge.pager import observer

# File name -> (type, title). One file per topic payload in the contract.
DOCUMENTS: dict[str, tuple[Any, str]] = {
    "pager-action.json": (models.PagerCommand, "Command on pager/<number>/action"),
    "pager-base-action.json": (models.BaseCommand, "Command on pager/base/action"),
    "schedule-timerange.json": (models.TimerangeCommand, "Command on schedule/<id>/timerange"),
    "result.json": (models.Result, "Result on <command topic>/result"),
    "pager-event.json": (models.Event, "Event on pager/<number>/event"),
    "pager-session.json": (t7470.Session, "Retained pager/<number>/session"),
    "pager-statistics.json": (models.PagerStatistics, "Retained pager/statistics"),
    "schedule-timeranges.json": (models.ScheduleRanges, "Retained schedule/<id>/timeranges"),
    "bridge-state.json": (models.BridgeState, "Retained bridge/state"),
    "bridge-deadletter.json": (models.DeadLetter, "bridge/deadletter"),
    "bridge-observer.json": (observer.Claim, "Retained bridge/observer (replicas)"),
    "t7470-envelope.json": (t7470.Envelope, "T7470 CoAP reply envelope (upstream)"),
}


def render() -> dict[str, str]:
    """File name -> file text, deterministic (sorted keys, trailing newline)."""
    out = {}
    for name, (kind, title) in DOCUMENTS.items():
        schema = msgspec.json.schema(kind)
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": title,
        } | schema
        out[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    # Imported here: bridge.contract.asyncapi builds on DOCUMENTS above.
    from bridge.contract import asyncapi  # noqa: PLC0415

    out["asyncapi.yaml"] = asyncapi.render()
    return out


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
