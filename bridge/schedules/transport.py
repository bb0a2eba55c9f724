"""Below the Sensaphone seam: send one prepared request with TLS, timeouts and retries.

`bridge.schedules.sensaphone` decides what to send (shapes, session, login); this module only
carries a
prepared `Request` and returns the result envelope, like an httpx transport under a client.

Retries, with jittered exponential backoff, while the command's deadline allows:

- connect errors, connect and pool timeouts (the request provably never left): always;
- 429: always, after `Retry-After` (RFC 6585: the request was refused, not processed), so a
  create is retried on 429 too;
- read/write timeouts, other transport errors and 5xx: only when the request is idempotent
  (read, update, delete, login). A create is never retried on these: it may have been applied.

A circuit breaker (bridge.core.breaker) sits in front of every attempt: requests that get no answer
(connect errors, timeouts, broken connections) open it, and while it is open commands fail at once
with `upstream_unavailable`, unsent and not retried; any HTTP answer closes it.

A refused TLS certificate is not retried. Mapped errors: no answer in time -> UpstreamTimeout;
unreachable or 5xx without an envelope -> UpstreamUnavailable; an envelope with
`success: false` is returned, not raised: the caller decides (code 2 means log in again).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import certifi
import httpx
import msgspec

from bridge.config import SensaphoneSettings
from bridge.core.breaker import CircuitBreaker
from bridge.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable

log = logging.getLogger(__name__)

RETRY_BASE: Final = 0.2  # seconds; doubled per attempt, capped, then jittered
RETRY_CAP: Final = 5.0
_jitter = random.Random()  # noqa: S311 - retry jitter, not cryptography


class Result(msgspec.Struct):
    success: bool
    code: int = 0
    message: str = ""


class Envelope(msgspec.Struct):
    """Every Sensaphone reply: `{"result": {...}, "response": {...}}`."""

    result: Result
    response: Any = None


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    body: dict[str, Any] | None  # sent as JSON; may hold the password: never log it


@dataclass(frozen=True)
class _Failure:
    error: UpstreamError
    retriable: bool
    reason: str  # metric label: connect, timeout, transport, throttled, server_error
    delay: float | None = None  # the server's Retry-After, if it gave one


def ssl_context(ca_file: str | None, environ: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """Trust `ca_file` if set, else certifi's roots; plus SSL_CERT_FILE / SSL_CERT_DIR if set.

    httpx 0.28 reads SSL_CERT_FILE only when it builds the context itself (`verify=True`); we
    pass our own context (to honour `ca_file`), so the variables are applied here. Raises
    OSError or ssl.SSLError when a named file cannot be loaded.
    """
    env = os.environ if environ is None else environ
    cert_file, cert_dir = env.get("SSL_CERT_FILE") or None, env.get("SSL_CERT_DIR") or None
    if ca_file:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file or cert_dir:
            context.load_verify_locations(cafile=cert_file, capath=cert_dir)
    elif cert_file or cert_dir:
        context = ssl.create_default_context(cafile=cert_file, capath=cert_dir)
    else:
        context = ssl.create_default_context(cafile=certifi.where())
    return context


class Transport:
    """One shared keep-alive httpx client (created on first use) and the retry policy."""

    def __init__(
        self,
        settings: SensaphoneSettings,
        client: httpx.AsyncClient | None,
        on_retry: Callable[[str, str], None],
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._settings = settings
        self._http = client
        self._owns_http = client is None
        self._on_retry = on_retry
        self._breaker = breaker

    async def close(self) -> None:
        if self._http is not None and self._owns_http:
            await self._http.aclose()
        self._http = None

    async def exchange(
        self, op: str, request: Request, deadline: float, *, idempotent: bool
    ) -> Envelope:
        """Send `request` until it gets an envelope, retrying as the module docstring says.

        `deadline` is a time.monotonic() value; no retry starts that could not finish by then.
        """
        attempt = 0
        while True:
            outcome = await self._guarded(op, request, deadline)
            if isinstance(outcome, Envelope):
                return outcome
            delay = outcome.delay if outcome.delay is not None else _backoff(attempt)
            retriable = outcome.retriable and (idempotent or outcome.reason in _NEVER_SENT)
            if not retriable or time.monotonic() + delay >= deadline:
                outcome.error.attempts = attempt + 1
                raise outcome.error
            log.info(
                "Sensaphone %s: %s; retry %d in %.2f s", op, outcome.reason, attempt + 1, delay
            )
            self._on_retry(op, outcome.reason)
            await asyncio.sleep(delay)
            attempt += 1

    async def _guarded(self, op: str, request: Request, deadline: float) -> Envelope | _Failure:
        """One attempt through the circuit breaker: CircuitOpen (not retried) while Sensaphone
        keeps not answering; any HTTP answer, even an error, says it is up."""
        breaker = self._breaker
        if breaker is None:
            return await self._attempt(op, request, deadline)
        breaker.before()
        try:
            outcome = await self._attempt(op, request, deadline)
        except BaseException:
            breaker.release()
            raise
        if isinstance(outcome, _Failure) and outcome.reason in _NO_ANSWER:
            breaker.failure()
        else:
            breaker.success()
        return outcome

    async def _attempt(self, op: str, request: Request, deadline: float) -> Envelope | _Failure:
        timeout = max(0.001, min(self._settings.timeout, deadline - time.monotonic()))
        try:
            response = await self._client().request(
                request.method, request.url, json=request.body, timeout=timeout
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            if _untrusted(exc):
                error = UpstreamUnavailable("Sensaphone's TLS certificate is not trusted")
                return _Failure(error, retriable=False, reason="connect")
            return _failure(UpstreamUnavailable, op, "could not connect", "connect")
        except httpx.TimeoutException:
            return _failure(UpstreamTimeout, op, "no answer in time", "timeout")
        except httpx.TransportError as exc:
            what = f"connection failed ({type(exc).__name__})"
            return _failure(UpstreamUnavailable, op, what, "transport")
        return _classify(op, response)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            try:
                verify = ssl_context(self._settings.ca_file)
            except (OSError, ssl.SSLError) as exc:
                msg = f"Sensaphone TLS setup failed: cannot load the CA bundle ({exc})"
                raise UpstreamUnavailable(msg) from None
            self._http = httpx.AsyncClient(
                verify=verify,
                timeout=httpx.Timeout(self._settings.timeout),
                limits=httpx.Limits(max_connections=20, keepalive_expiry=30.0),
            )
        return self._http


# Reasons for which the request provably never reached the server: safe to retry a create.
# "throttled" is here on purpose: a 429 says the server refused it without processing.
_NEVER_SENT: Final = frozenset({"connect", "throttled"})
# Reasons that say nothing answered: they count towards opening the circuit.
_NO_ANSWER: Final = frozenset({"connect", "timeout", "transport"})


def _classify(op: str, response: httpx.Response) -> Envelope | _Failure:
    """An HTTP answer -> its envelope, or a failure. The status alone is never trusted."""
    envelope = parse_envelope(response.content)
    status = response.status_code
    if status == 429:
        delay = _retry_after(response.headers.get("Retry-After"))
        failure = _failure(UpstreamUnavailable, op, "throttled (HTTP 429)", "throttled")
        return _Failure(failure.error, retriable=True, reason="throttled", delay=delay)
    if status >= 500:
        if envelope is not None and not envelope.result.success:
            return _Failure(refused(op, envelope.result), retriable=True, reason="server_error")
        return _failure(UpstreamUnavailable, op, f"HTTP {status}", "server_error")
    if envelope is None:
        what = f"Sensaphone {op}: reply is not a result envelope (HTTP {status})"
        return _Failure(UpstreamError(what, detail={"http_status": status}), False, "error")
    return envelope


def parse_envelope(content: bytes) -> Envelope | None:
    try:
        return msgspec.json.decode(content, type=Envelope)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None  # RecursionError: nested about 1,000 deep, more than msgspec's stack


def refused(op: str, result: Result) -> UpstreamError:
    """The error for `success: false`, carrying Sensaphone's own code and message."""
    return UpstreamError(
        f"Sensaphone refused the {op}: {result.message} (code {result.code})",
        detail={"code": result.code, "message": result.message},
    )


def _failure(cls: type[UpstreamError], op: str, what: str, reason: str) -> _Failure:
    return _Failure(cls(f"Sensaphone {op}: {what}"), retriable=True, reason=reason)


def _backoff(attempt: int) -> float:
    ceiling = min(RETRY_CAP, RETRY_BASE * 2**attempt)
    return _jitter.uniform(ceiling / 2, ceiling)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), plus up to 10 % jitter."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    seconds = max(0.0, seconds)
    return seconds + _jitter.uniform(0, seconds / 10)


def _untrusted(exc: BaseException) -> bool:
    # httpx wraps httpcore's error, which wraps ssl's: a refused certificate never gets better.
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
