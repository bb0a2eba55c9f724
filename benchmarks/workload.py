"""The command mix, shared by the load generator, the minimal bridge and the CoAP floor.

Each pager runs the cycle start -> page -> update -> clear, so every command succeeds at the
simulator as long as one pager never has two commands in flight (the load generator ensures it).
`coap_request` is the whole of the minimal bridge's "translation": the same mapping the product
documents (start = POST, page/clear/remove/update = PUT ?number=N, delete = DELETE).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

CYCLE: Final = ("start", "page", "update", "clear")
_FIELDS: Final[dict[str, dict[str, Any]]] = {
    "start": {"label": "Guest", "partySize": 2},
    "update": {"partySize": 3},
}
_ENCODE = msgspec.json.encode
SESSIONS: Final = ("v1", "sessions")


def command(action: str, transaction: int) -> bytes:
    """The MQTT payload of one command, as a user's client would publish it."""
    return _ENCODE({"action": action, "transaction": transaction, **_FIELDS.get(action, {})})


def pager_topic(number: int, prefixes: tuple[str, ...] = ()) -> str:
    """`pager/<n>/action`; with site prefixes, pager n belongs to site n mod len(prefixes)."""
    if not prefixes:
        return f"pager/{number}/action"
    return f"{prefixes[number % len(prefixes)]}/pager/{number}/action"


def coap_request(number: int, payload: dict[str, Any]) -> tuple[str, tuple[str, ...], bytes | None]:
    """(method, Uri-Query, body) for one command; the path is always /v1/sessions."""
    fields = {k: v for k, v in payload.items() if k not in ("action", "transaction")}
    action = payload.get("action")
    query = (f"number={number}",)
    if action == "start":
        return "POST", (), _ENCODE({"number": number, **fields})
    if action in ("page", "clear", "remove"):
        return "PUT", query, _ENCODE({**fields, "action": action})
    if action == "delete":
        return "DELETE", query, None
    return "PUT", query, _ENCODE(fields)
