"""JSON Schema of every MQTT payload, generated from the models and the command table.

`bridge.contract.documents` writes these and the AsyncAPI document (`bridge.contract.asyncapi`)
to `schemas/` (`iotbridge schema`); a test fails when the committed files drift from the models.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from bridge.contract import models, t7470
from bridge.contract.commands import COMMANDS

# File name -> (type, title). One file per topic payload in the contract: the commands first,
# from the command table, then what the bridge publishes.
DOCUMENTS: dict[str, tuple[Any, str]] = {
    kind.document: (kind.payload, f"Command on {kind.address.replace('{', '<').replace('}', '>')}")
    for kind in COMMANDS
} | {
    "result.json": (models.Result, "Result on <command topic>/result"),
    "pager-event.json": (models.Event, "Event on pager/<number>/event"),
    "pager-session.json": (t7470.Session, "Retained pager/<number>/session"),
    "pager-statistics.json": (models.PagerStatistics, "Retained pager/statistics"),
    "schedule-timeranges.json": (models.ScheduleRanges, "Retained schedule/<id>/timeranges"),
    "bridge-state.json": (models.BridgeState, "Retained bridge/state"),
    "bridge-deadletter.json": (models.DeadLetter, "bridge/deadletter"),
    "bridge-observer.json": (models.Claim, "Retained bridge/observer (replicas)"),
    "t7470-envelope.json": (t7470.Envelope, "T7470 CoAP reply envelope (upstream)"),
}


def render() -> dict[str, str]:
    """File name -> JSON Schema text, deterministic (sorted keys, trailing newline)."""
    out = {}
    for name, (kind, title) in DOCUMENTS.items():
        schema = msgspec.json.schema(kind)
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": title,
        } | schema
        out[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out
