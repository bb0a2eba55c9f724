"""Logging set-up: readable text by default, JSON lines by config; secrets scrubbed always.

The scrubber replaces every configured secret with *** in the final text of each record, whatever
logged it (our code or a library), so a password can never reach the log even by accident.
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


class _Scrubber(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if len(s) >= 3]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        text = record.getMessage()
        clean = text
        for secret in self._secrets:
            clean = clean.replace(secret, "***")
        if clean != text:
            record.msg, record.args = clean, None
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        cid = getattr(record, "correlation_id", "-")
        if cid != "-":
            entry["correlation_id"] = cid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
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
    handler.addFilter(_Scrubber(secrets))
    handler.addFilter(CorrelationFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        text = "%(asctime)s %(levelname)-7s %(name)s [%(correlation_id)s] %(message)s"
        handler.setFormatter(logging.Formatter(text))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter at info level would sit on the hot path; keep it to warnings.
    for noisy in ("httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # paho's debug lines are one per packet: kept out even of a debug log unless asked for
    # by name (logging.getLogger("bridge.mqtt.paho").setLevel(logging.DEBUG)).
    logging.getLogger("bridge.mqtt.paho").setLevel(max(logging.INFO, root.level))
