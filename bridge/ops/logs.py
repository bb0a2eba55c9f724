"""Logging set-up: readable text by default, JSON lines by config; secrets scrubbed always.

- Every configured secret is replaced with *** in the final text of each record, traceback
  included, whatever logged it (our code or a library), so a password never reaches the log even
  by accident.
- In text format, control characters in a message are escaped (a newline becomes `\\n`): text
  that came from outside (a device's or Sensaphone's error message, a topic) cannot forge a log
  line. JSON lines escape them by construction.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar

import msgspec

_ENCODER = msgspec.json.Encoder()

# The command being worked on in this task, so every log line about it can be tied together.
correlation_id: ContextVar[str] = ContextVar("correlation_id", default="-")


class CorrelationFilter(logging.Filter):
    """Puts the current command's correlation id on every record (`correlation_id`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = correlation_id.get()
        return True


# C0 controls and DEL, escaped the way Python writes them in a string literal.
_CONTROLS = {c: repr(chr(c))[1:-1] for c in (*range(32), 127)}


class Scrubber:
    """Replaces each secret (three characters or more) with ***."""

    def __init__(self, secrets: list[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


def escape_controls(text: str) -> str:
    """`text` on one line: newlines, carriage returns and other control characters escaped."""
    return text.translate(_CONTROLS)


class _TextFormatter(logging.Formatter):
    def __init__(self, fmt: str, scrub: Scrubber) -> None:
        super().__init__(fmt)
        self._scrub = scrub

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_controls(record.message)
        # The correlation id is a command's transaction: the publisher's text, too.
        record.correlation_id = escape_controls(str(getattr(record, "correlation_id", "-")))
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        return self._scrub(super().format(record))


class _JsonFormatter(logging.Formatter):
    def __init__(self, scrub: Scrubber) -> None:
        super().__init__()
        self._scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self._scrub(record.getMessage()),
        }
        cid = getattr(record, "correlation_id", "-")
        if cid != "-":
            entry["correlation_id"] = cid
        if record.exc_info:
            entry["exception"] = self._scrub(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = self._scrub(self.formatStack(record.stack_info))
        return _ENCODER.encode(entry).decode()


class Budget:
    """At most `count` log lines per `period` seconds (a fixed window, cheap to check).

    `take()` returns None when the line must be dropped, else how many were dropped since the
    last one that went out, so the caller can say so once.
    """

    __slots__ = ("_clock", "_count", "_dropped", "_left", "_period", "_until")

    def __init__(
        self, count: int, period: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._count, self._period = count, period
        self._left, self._until, self._dropped = count, 0.0, 0

    def take(self) -> int | None:
        now = self._clock()
        if now >= self._until:
            self._left, self._until = self._count, now + self._period
        if self._left <= 0:
            self._dropped += 1
            return None
        self._left -= 1
        dropped, self._dropped = self._dropped, 0
        return dropped


def configure(level: str, fmt: str, secrets: list[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CorrelationFilter())
    scrub = Scrubber(secrets)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter(scrub))
    else:
        text = "%(asctime)s %(levelname)-7s %(name)s [%(correlation_id)s] %(message)s"
        handler.setFormatter(_TextFormatter(text, scrub))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter at info level would sit on the hot path; keep it to warnings.
    for noisy in ("httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # paho's debug lines are one per packet: kept out even of a debug log unless asked for
    # by name (logging.getLogger("bridge.mqtt.paho").setLevel(logging.DEBUG)).
    logging.getLogger("bridge.mqtt.paho").setLevel(max(logging.INFO, root.level))
