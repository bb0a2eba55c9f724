"""AsyncAPI 3.0.0 document of the whole MQTT contract, generated from the models.

Every payload schema is the one `bridge.contract.schema` writes for the same topic (same types, same
`msgspec.json.schema`), with each document's `$defs` gathered under `components.schemas` and its
`$ref`s rewritten to point there. Operations are seen from the bridge's side: it *receives*
commands (and replies on `<command topic>/result`) and *sends* state, events and statistics.
`bridge.contract.documents` writes this document as `schemas/asyncapi.yaml`, so the same
drift test covers it. The addresses of what the bridge sends are built by `Topics`, the same
builders that make the real topics, so the document cannot name a topic the bridge does not use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal, NamedTuple

import msgspec
import yaml

from bridge import __version__
from bridge.contract.commands import COMMANDS
from bridge.contract.schema import DOCUMENTS
from bridge.contract.topics import Topics
from bridge.errors import published_codes

MQTT_BINDING: Final = "0.2.0"
_HEADER: Final = (
    "# Generated from bridge/contract/models.py by `iotbridge schema`; do not edit by hand.\n"
)
_DEFS: Final = "#/$defs/"
_COMPONENT_SCHEMAS: Final = "#/components/schemas/"


class _Channel(NamedTuple):
    key: str
    address: str
    document: str  # a file name in bridge.contract.schema.DOCUMENTS
    action: Literal["send", "receive"]
    retained: bool
    description: str


_NUMBER: Final = {
    "description": "Pager number, 1 to 65535 by default (a site may narrow it: "
    "`pager.min_number`, `pager.max_number`)."
}
_SCHEDULE_ID: Final = {"description": "Sensaphone.net schedule id, a positive integer."}
# Addresses without the optional prefix (the description says every address takes it).
_TOPICS: Final = Topics()
# A parameter's value while its address is built; no fixed segment of any topic is a number.
_SAMPLE: Final = 4242


def _address(build: Callable[[int], str], parameter: str) -> str:
    """The address `build` makes for any value, with the value's segment named `{parameter}`."""
    built = build(_SAMPLE).split("/")
    return "/".join(f"{{{parameter}}}" if part == str(_SAMPLE) else part for part in built)


_COMMAND_CHANNELS: Final = tuple(
    _Channel(kind.channel, kind.address, kind.document, "receive", False, kind.description)
    for kind in COMMANDS
)
CHANNELS: Final = (
    *_COMMAND_CHANNELS,
    _Channel(
        "pagerSession",
        _address(_TOPICS.pager_session, "number"),
        "pager-session.json",
        "send",
        True,
        "The active session as the transmitter reports it; a zero-length retained message "
        "when it ends (cleared, removed or deleted), and, with Home Assistant discovery on, "
        "after each announcement for every announced pager with no session.",
    ),
    _Channel(
        "pagerEvent",
        _address(_TOPICS.pager_event, "number"),
        "pager-event.json",
        "send",
        False,
        "Each change of a session, whoever made it (the restaurant's console too), and each "
        "command on the pager that failed (`error`, before its result).",
    ),
    _Channel(
        "pagerStatistics",
        _TOPICS.statistics,
        "pager-statistics.json",
        "send",
        True,
        "The transmitter's latest statistics.",
    ),
    _Channel(
        "scheduleTimeranges",
        _address(_TOPICS.schedule_ranges, "schedule_id"),
        "schedule-timeranges.json",
        "send",
        True,
        "The schedule's ranges after each change, each interval also decoded.",
    ),
    _Channel(
        "bridgeState",
        _TOPICS.bridge_state,
        "bridge-state.json",
        "send",
        True,
        "`online` while the bridge runs; `offline` on shutdown and as its MQTT last will.",
    ),
    _Channel(
        "bridgeDeadletter",
        _TOPICS.deadletter,
        "bridge-deadletter.json",
        "send",
        False,
        "Commands that could not be carried out after retries.",
    ),
    _Channel(
        "bridgeObserver",
        _TOPICS.observer,
        "bridge-observer.json",
        "send",
        True,
        "With `mqtt.shared_group` only: the replica that observes the transmitter (a claim the "
        "replicas renew; empty when released).",
    ),
)
_RESULT_DOCUMENT: Final = "result.json"
_DESCRIPTION: Final = (
    """\
The MQTT interface of iotbridge, a bridge for LRS T7470 guest pagers (CoAP) and Sensaphone.net
schedules (REST). Every address takes the optional topic prefix (`IOTBRIDGE_TOPIC_PREFIX`):
`<prefix>/pager/66/action`, `<prefix>/bridge/state`, and so on. Payloads are JSON, QoS 1.
Every command gets exactly one result on `<command topic>/result`; with MQTT 5 the result also
goes to the request's Response Topic, with its Correlation Data, when that topic matches
`mqtt.response_topics` and lies in no namespace the bridge serves or announces. Error codes in
results: """
    + ", ".join(f"`{code}`" for code in published_codes())
    + ".\n"
)


def render() -> str:
    """The AsyncAPI document as YAML, deterministic for the same models."""
    return _HEADER + yaml.safe_dump(
        document(), sort_keys=False, allow_unicode=True, width=100, default_flow_style=False
    )


def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for channel in CHANNELS:
        name = _message_name(channel.document)
        messages[name] = _message(channel.document, schemas)
        channels[channel.key] = _channel(channel.address, name, channel.description)
        operations[_operation_name(channel)] = _operation(channel, name)
        if channel.action == "receive":
            result = f"{channel.key}Result"
            channels[result] = _channel(
                Topics.result(channel.address), "result", "Exactly one result per command."
            )
            operations[_operation_name(channel)]["reply"] = {
                "channel": {"$ref": f"#/channels/{result}"},
                "messages": [{"$ref": f"#/channels/{result}/messages/result"}],
            }
    messages["result"] = _message(_RESULT_DOCUMENT, schemas)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "iotbridge MQTT contract",
            "version": __version__,
            "description": " ".join(_DESCRIPTION.split()),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {"local": _server()},
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "messages": messages,
        },
    }


def _server() -> dict[str, Any]:
    return {
        "host": "localhost:1883",
        "protocol": "mqtt",
        "protocolVersion": "5.0",
        "description": "A local Mosquitto, as `iotbridge demo` starts it. MQTT 3.1.1 works too.",
        "bindings": {
            "mqtt": {
                # The bridge's own session: persistent, with `offline` as its last will.
                "cleanSession": False,
                "lastWill": {
                    "topic": _TOPICS.bridge_state,
                    "qos": 1,
                    "message": '{"state":"offline"}',
                    "retain": True,
                },
                "keepAlive": 30,
                "sessionExpiryInterval": 86400,
                "bindingVersion": MQTT_BINDING,
            }
        },
    }


def _channel(address: str, message: str, description: str) -> dict[str, Any]:
    out: dict[str, Any] = {"address": address, "description": description}
    out["messages"] = {message: {"$ref": f"#/components/messages/{message}"}}
    parameters = {}
    if "{number}" in address:
        parameters["number"] = dict(_NUMBER)
    if "{schedule_id}" in address:
        parameters["schedule_id"] = dict(_SCHEDULE_ID)
    if parameters:
        out["parameters"] = parameters
    return out


def _operation(channel: _Channel, message: str) -> dict[str, Any]:
    return {
        "action": channel.action,
        "channel": {"$ref": f"#/channels/{channel.key}"},
        "messages": [{"$ref": f"#/channels/{channel.key}/messages/{message}"}],
        "bindings": {
            "mqtt": {"qos": 1, "retain": channel.retained, "bindingVersion": MQTT_BINDING}
        },
    }


def _operation_name(channel: _Channel) -> str:
    verb = "receive" if channel.action == "receive" else "send"
    return verb + channel.key[0].upper() + channel.key[1:]


def _message_name(document_name: str) -> str:
    first, *rest = document_name.removesuffix(".json").split("-")
    return first + "".join(part.capitalize() for part in rest)


def _message(document_name: str, schemas: dict[str, Any]) -> dict[str, Any]:
    kind, title = DOCUMENTS[document_name]
    return {
        "name": _message_name(document_name),
        "title": title,
        "contentType": "application/json",
        "payload": _payload(document_name, kind, schemas),
    }


def _payload(document_name: str, kind: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    """The payload's schema as a `$ref` into `schemas`, which collects every definition."""
    generated: dict[str, Any] = _rewrite(msgspec.json.schema(kind))
    for name, definition in generated.pop("$defs", {}).items():
        _add(schemas, name, definition)
    if set(generated) == {"$ref"}:
        return generated
    # A tagged union has no name of its own: it is named after its topic's document.
    name = _message_name(document_name)
    name = name[0].upper() + name[1:]
    _add(schemas, name, generated)
    return {"$ref": _COMPONENT_SCHEMAS + name}


def _add(schemas: dict[str, Any], name: str, definition: Any) -> None:
    if schemas.setdefault(name, definition) != definition:
        raise ValueError(f"two different schemas are both named {name!r}")


def _rewrite(node: Any) -> Any:
    """Point `$ref`s at components; drop OpenAPI-style discriminators.

    msgspec emits `discriminator: {propertyName, mapping}` (OpenAPI); in an AsyncAPI Schema
    Object `discriminator` is a bare property name meant for `allOf` inheritance, so it is left
    out. Each variant already pins its tag with a one-value `enum`.
    """
    if isinstance(node, list):
        return [_rewrite(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "discriminator" and isinstance(value, dict) and "propertyName" in value:
            continue
        if key == "$ref" and isinstance(value, str) and value.startswith(_DEFS):
            out[key] = _COMPONENT_SCHEMAS + value.removeprefix(_DEFS)
        else:
            out[key] = _rewrite(value)
    return out
