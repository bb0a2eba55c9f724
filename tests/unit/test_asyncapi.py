"""The AsyncAPI document: committed copy in sync, valid AsyncAPI 3.0.0, faithful to the contract.

The AsyncAPI 3.0.0 JSON Schema comes from the npm package `@asyncapi/specs` (pinned in
package.json; `npm ci` installs it). No PyPI package ships it.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bridge.contract import asyncapi, documents, models

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0.json"
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(asyncapi.render())
    return loaded


def spec() -> dict[str, Any]:
    if not SPEC.exists():
        pytest.fail(
            f"{SPEC.relative_to(ROOT)} is missing: run `npm ci` (or scripts/setup) in {ROOT} "
            "to install @asyncapi/specs, the AsyncAPI 3.0.0 JSON Schema this test validates with"
        )
    loaded: dict[str, Any] = json.loads(SPEC.read_text(encoding="utf-8"))
    return loaded


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def address(doc: dict[str, Any], channel_ref: str) -> str:
    found: str = resolve(doc, channel_ref)["address"]
    return found


def test_committed_file_is_in_sync() -> None:
    assert "asyncapi.yaml" in documents.render()
    assert "asyncapi.yaml" not in documents.drift(ROOT / "schemas"), (
        "schemas/asyncapi.yaml differs from the models: run `iotbridge schema`"
    )


def test_render_is_deterministic() -> None:
    assert asyncapi.render() == asyncapi.render()


def test_valid_against_the_asyncapi_3_0_0_json_schema(doc: dict[str, Any]) -> None:
    meta = spec()
    assert meta["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    validator = jsonschema.Draft7Validator(meta)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("operations", "sendBridgeState", "action"), "publish"),  # AsyncAPI 2's verb
        (("operations", "sendBridgeState", "bindings", "mqtt", "qos"), 3),
        (("components", "schemas", "BridgeState", "type"), 5),
        # What msgspec emits for tagged unions (OpenAPI style); AsyncAPI wants a bare name.
        (("components", "schemas", "BridgeState", "discriminator"), {"propertyName": "state"}),
    ],
)
def test_the_validator_reaches_deep_enough_to_catch_mistakes(
    doc: dict[str, Any], path: tuple[str, ...], value: Any
) -> None:
    broken = copy.deepcopy(doc)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert not jsonschema.Draft7Validator(spec()).is_valid(broken)


def test_every_local_reference_resolves(doc: dict[str, Any]) -> None:
    found = list(refs(doc))
    assert found
    for ref in found:
        assert ref.startswith("#/"), ref
        resolve(doc, ref)  # KeyError if it points nowhere
    assert not any("$defs" in ref for ref in found)


def test_every_topic_in_the_readme_is_a_channel(doc: dict[str, Any]) -> None:
    table = README.read_text(encoding="utf-8").split("## Topics", 1)[1].split("\n### ", 1)[0]
    topics = set(re.findall(r"^\| (?:in|out)[^|]*\| `([^`]+)` \|", table, flags=re.MULTILINE))
    readme = {re.sub(r"<(\w+)>", r"{\1}", t) for t in topics if not t.startswith("<")}
    addresses = {c["address"] for c in doc["channels"].values()}
    assert readme
    assert readme <= addresses
    commands = {t for t in readme if t.endswith(("/action", "/timerange"))}
    assert {f"{t}/result" for t in commands} <= addresses


def test_operations_and_bindings(doc: dict[str, Any]) -> None:
    ops = doc["operations"]
    received = {
        address(doc, o["channel"]["$ref"]): o for o in ops.values() if o["action"] == "receive"
    }
    assert set(received) == {
        "pager/{number}/action",
        "pager/base/action",
        "schedule/{schedule_id}/timerange",
    }
    for op in received.values():
        assert op["reply"]["channel"]["$ref"].endswith("Result")
    retained = {
        address(doc, o["channel"]["$ref"]) for o in ops.values() if o["bindings"]["mqtt"]["retain"]
    }
    assert retained == {
        "pager/{number}/session",
        "pager/statistics",
        "schedule/{schedule_id}/timeranges",
        "bridge/state",
        "bridge/observer",
    }
    assert all(o["bindings"]["mqtt"]["qos"] == 1 for o in ops.values())
    assert doc["servers"]["local"]["protocol"] == "mqtt"


def test_parameters_are_declared_for_every_placeholder(doc: dict[str, Any]) -> None:
    for channel in doc["channels"].values():
        placeholders = set(re.findall(r"\{(\w+)\}", channel["address"]))
        assert placeholders == set(channel.get("parameters", {})), channel["address"]


def payload_validator(doc: dict[str, Any], message: str) -> jsonschema.Draft7Validator:
    ref = doc["components"]["messages"][message]["payload"]["$ref"]
    return jsonschema.Draft7Validator({"$ref": ref, "components": doc["components"]})


@pytest.mark.parametrize(
    ("message", "payload", "valid"),
    [
        ("bridgeState", json.loads(models.ONLINE), True),
        ("bridgeState", {"state": "asleep"}, False),
        ("pagerAction", {"action": "page", "pageMode": "Vibe1"}, True),
        ("pagerAction", {"action": "start", "goal": 300, "label": "Sarah", "partySize": 4}, True),
        ("pagerAction", {"action": "start", "partySize": 0}, False),
        ("pagerBaseAction", {"action": "set_settings", "settings": {"systemId": 3}}, True),
        ("scheduleTimerange", {"action": "delete", "range_id": 5}, True),
        ("scheduleTimerange", {"action": "delete"}, False),
        ("result", {"status": "error", "error": {"code": "expired", "message": "late"}}, True),
        ("pagerEvent", {"event": "paged", "number": 66, "session": {"id": 1}}, True),
        ("pagerStatistics", {"guestsServed": 3, "percentLate": 12.5}, True),
    ],
)
def test_payload_schemas_accept_and_refuse_as_the_bridge_does(
    doc: dict[str, Any], message: str, payload: Any, valid: bool
) -> None:
    assert payload_validator(doc, message).is_valid(payload) is valid
