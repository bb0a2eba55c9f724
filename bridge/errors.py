"""The bridge's one error tree, all of it here. Each class carries the `error.code` its result
publishes, from the documented vocabulary (README, "Results and error codes").

    BridgeError                     code
    ├── InvalidTopic                invalid_topic
    ├── InvalidPayload              invalid_payload
    ├── UnknownAction               unknown_action
    ├── Expired                     expired
    ├── Overloaded                  overloaded
    ├── NotConfigured               not_configured    the site is not configured for this command
    ├── ConfigError                 (never published: the process exits with its message)
    └── UpstreamError               upstream_error    the upstream answered with an error
        ├── PublishRefused          upstream_error    the broker refused a publish (PUBACK >= 0x80)
        ├── UpstreamTimeout         upstream_timeout  no answer in time
        ├── UpstreamUnavailable     upstream_unavailable  unreachable
        │   ├── CircuitOpen         upstream_unavailable  refused by an open circuit, never sent
        │   └── LinkDown            upstream_unavailable  the broker link closed before a PUBACK
        └── AuthFailed              auth_failed       the upstream refused our credentials

Lower-layer errors (CoAP and MQTT protocol errors, httpx, socket errors) are mapped to these in
the package that owns each protocol (`bridge.coap.client`, `bridge.mqtt`,
`bridge.schedules.transport`),
with `raise ... from exc`, so nothing above the seams knows those libraries. `BridgeError` itself
is never raised: anything unexpected is mapped to the vocabulary where it is caught.
"""

from __future__ import annotations

from typing import Any, ClassVar


class BridgeError(Exception):
    """Base of every error the bridge reports. `message` is safe to publish: no secrets."""

    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        # Extra, JSON-serialisable facts for the result (e.g. the device's code and body).
        self.detail = detail
        # How many times the upstream was asked before this was given up (retries exhausted
        # when more than one): such a command goes to the dead-letter topic.
        self.attempts = 1


class InvalidTopic(BridgeError):
    code = "invalid_topic"


class InvalidPayload(BridgeError):
    code = "invalid_payload"


class UnknownAction(BridgeError):
    code = "unknown_action"


class Expired(BridgeError):
    code = "expired"


class Overloaded(BridgeError):
    code = "overloaded"


class NotConfigured(BridgeError):
    """A command the site cannot carry out as configured (a schedule command on a site with
    no Sensaphone account): neither bad input nor an upstream failure, and no retry helps."""

    code = "not_configured"


class ConfigError(BridgeError):
    code = "config_error"


class UpstreamError(BridgeError):
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class AuthFailed(UpstreamError):
    code = "auth_failed"


class PublishRefused(UpstreamError):
    """The broker answered a publish with a PUBACK reason code of 0x80 or more."""


class CircuitOpen(UpstreamUnavailable):
    """Refused by an open circuit: not a failure of the upstream, so not counted as one."""


class LinkDown(UpstreamUnavailable):
    """The broker link was closed before the broker acknowledged a publish."""


def published_codes() -> tuple[str, ...]:
    """Every `error.code` a result can carry, in the tree's order (the documented vocabulary:
    README "Results and error codes", the AsyncAPI document)."""
    codes: list[str] = []
    pending: list[type[BridgeError]] = list(BridgeError.__subclasses__())
    while pending:
        kind = pending.pop(0)
        if kind is not ConfigError and kind.code not in codes:
            codes.append(kind.code)
        pending[:0] = kind.__subclasses__()
    return tuple(codes)
