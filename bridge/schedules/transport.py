"""Below the Sensaphone seam: send one prepared request with TLS, timeouts and retries.

`bridge.schedules.sensaphone` decides what to send (shapes, session, login); this module only
carries a
prepared `HttpRequest` and returns the result envelope, like an httpx transport under a client.

Each failed attempt is given a reason, and `bridge.core.retry.SENSAPHONE` says which reasons are
retried (some only when the request is idempotent) and how long to wait, within the command's
deadline: `connect` (connect errors, connect and pool timeouts: the request never left),
`throttled` (429, with its Retry-After), `timeout` (read/write timeouts), `transport` (other
transport errors), `server_error` (5xx), `untrusted` (a refused TLS certificate), `error` (an
answer that is no envelope), `too_large` (a body past `sensaphone.max_reply_bytes`: read no
further, answered `upstream_error`, counted in `iotbridge_limits_reached_total{limit=
"sensaphone_reply"}`).

A circuit breaker (bridge.core.breaker) sits in front of every attempt: requests that get no answer
(connect errors, timeouts, broken connections) open it, and while it is open commands fail at once
with `upstream_unavailable`, unsent and not retried; any HTTP answer closes it.

Mapped errors: no answer in time -> UpstreamTimeout; unreachable or 5xx without an envelope ->
UpstreamUnavailable; no envelope, or a body past the cap -> UpstreamError; an envelope with
`success: false` is returned, not raised: the caller decides (code 2 means log in again).
Envelopes are read tolerantly (`parse_envelope`): a code or a success flag written as text is
understood, and `response` is kept as sent for bridge.schedules.replies to read.
"""

from __future__ import annotations

import email.utils
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import certifi
import httpx
import msgspec

from bridge.config import SensaphoneSettings
from bridge.contract.lenient import as_int
from bridge.core import retry
from bridge.core.breaker import CircuitBreaker
from bridge.core.retry import Failure
from bridge.errors import CircuitOpen, UpstreamError, UpstreamTimeout, UpstreamUnavailable

_DECODER: Final = msgspec.json.Decoder()


class Result(msgspec.Struct, frozen=True):
    """`result` as read (bridge.schedules.replies): `code` a number when it is one (`"2"` is 2),
    else the text sent; `message` text."""

    success: bool
    code: int | str = 0
    message: str = ""


class Envelope(msgspec.Struct, frozen=True):
    """Every Sensaphone reply: `{"result": {...}, "response": {...}}`; `response` as sent."""

    result: Result
    response: Any = None


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    body: dict[str, Any] | None  # sent as JSON; may hold the password: never log it


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
        on_limit: Callable[[str], None] = lambda _limit: None,
    ) -> None:
        """`on_limit(name)` counts a bound that refused a reply (`sensaphone_reply`)."""
        self._settings = settings
        self._http = client
        self._owns_http = client is None
        self._on_retry = on_retry
        self._breaker = breaker
        self._on_limit = on_limit

    async def close(self) -> None:
        if self._http is not None and self._owns_http:
            await self._http.aclose()
        self._http = None

    async def exchange(
        self, op: str, request: HttpRequest, deadline: float, *, idempotent: bool
    ) -> Envelope:
        """Send `request` until it gets an envelope, retrying as the module docstring says.

        `deadline` is a time.monotonic() value; no retry starts after it.
        """

        async def attempt() -> Envelope:
            outcome = await self._guarded(op, request, deadline)
            if isinstance(outcome, Failure):
                raise outcome
            return outcome

        return await retry.call(
            retry.SENSAPHONE,
            attempt,
            operation=op,
            deadline=deadline,
            idempotent=idempotent,
            on_retry=self._on_retry,
        )

    async def _guarded(self, op: str, request: HttpRequest, deadline: float) -> Envelope | Failure:
        """One attempt through the circuit breaker: refused unsent (not retried) while Sensaphone
        keeps not answering; any HTTP answer, even an error, says it is up."""
        breaker = self._breaker
        if breaker is None:
            return await self._attempt(op, request, deadline)
        try:
            breaker.before()
        except CircuitOpen as exc:
            return Failure(exc, retry.CIRCUIT_OPEN, sent=False)
        try:
            outcome = await self._attempt(op, request, deadline)
        except BaseException:
            breaker.release()
            raise
        if isinstance(outcome, Failure) and outcome.reason in _NO_ANSWER:
            breaker.failure()
        else:
            breaker.success()
        return outcome

    async def _attempt(self, op: str, request: HttpRequest, deadline: float) -> Envelope | Failure:
        timeout = max(0.001, min(self._settings.timeout, deadline - time.monotonic()))
        cap = self._settings.max_reply_bytes
        try:
            async with self._client().stream(
                request.method, request.url, json=request.body, timeout=timeout
            ) as response:
                content = await _read_capped(response, cap)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            if _untrusted(exc):
                error = UpstreamUnavailable("Sensaphone's TLS certificate is not trusted")
                return Failure(error, "untrusted")
            return _failure(UpstreamUnavailable, op, "could not connect", "connect")
        except httpx.TimeoutException:
            return _failure(UpstreamTimeout, op, "no answer in time", "timeout")
        except httpx.TransportError as exc:
            what = f"connection failed ({type(exc).__name__})"
            return _failure(UpstreamUnavailable, op, what, "transport")
        if content is None:
            self._on_limit("sensaphone_reply")
            what = f"Sensaphone {op}: reply larger than {cap} bytes (sensaphone.max_reply_bytes)"
            detail = {"http_status": response.status_code, "limit": cap}
            return Failure(UpstreamError(what, detail=detail), "too_large")
        return _classify(op, response, content)

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


# Reasons that say nothing answered: they count towards opening the circuit. A refused
# certificate counts too: it will be refused again, so failing fast is right.
_NO_ANSWER: Final = frozenset({"connect", "untrusted", "timeout", "transport"})


async def _read_capped(response: httpx.Response, cap: int) -> bytes | None:
    """The (decoded) body, or None as soon as it is larger than `cap` bytes: the rest is not
    read, and leaving the stream closes the connection. A Content-Length past the cap is
    refused before reading anything."""
    declared = response.headers.get("Content-Length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > cap:
        return None
    body = bytearray()
    async for chunk in response.aiter_bytes():
        if len(body) + len(chunk) > cap:
            return None
        body += chunk
    return bytes(body)


def _classify(op: str, response: httpx.Response, content: bytes) -> Envelope | Failure:
    """An HTTP answer -> its envelope, or a failure. The status alone is never trusted."""
    envelope = parse_envelope(content)
    status = response.status_code
    if status == 429:
        delay = _retry_after(response.headers.get("Retry-After"))
        error = UpstreamUnavailable(f"Sensaphone {op}: throttled (HTTP 429)")
        return Failure(error, "throttled", delay=delay)
    if status >= 500:
        if envelope is not None and not envelope.result.success:
            return Failure(refused(op, envelope.result), "server_error")
        return _failure(UpstreamUnavailable, op, f"HTTP {status}", "server_error")
    if envelope is None:
        what = f"Sensaphone {op}: reply is not a result envelope (HTTP {status})"
        return Failure(UpstreamError(what, detail={"http_status": status}), "error")
    return envelope


def parse_envelope(content: bytes) -> Envelope | None:
    """The envelope in a reply, read tolerantly, or None when it is none: not a JSON object
    with a `result` object saying success (`true`/`false`, also as text or 1/0) or, failing
    that, a numeric `code` (0 is success)."""
    try:
        raw = _DECODER.decode(content)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        return None  # RecursionError: nested about 1,000 deep, more than msgspec's stack
    result = raw.get("result") if isinstance(raw, dict) else None
    if not isinstance(result, dict):
        return None
    raw_code, message = result.get("code"), result.get("message")
    number = as_int(raw_code)
    success = _flag(result.get("success"))
    if success is None:
        if number is None:
            return None
        success = number == 0
    code: int | str = number if number is not None else 0 if raw_code is None else _text(raw_code)
    text = "" if message is None else _text(message)
    return Envelope(Result(success, code, text), raw.get("response"))


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


def _text(value: Any) -> str:
    """A field passed on in messages: text as sent, anything else as its JSON."""
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


def refused(op: str, result: Result) -> UpstreamError:
    """The error for `success: false`, carrying Sensaphone's own code and message."""
    return UpstreamError(
        f"Sensaphone refused the {op}: {result.message} (code {result.code})",
        detail={"code": result.code, "message": result.message},
    )


def _failure(cls: type[UpstreamError], op: str, what: str, reason: str) -> Failure:
    return Failure(cls(f"Sensaphone {op}: {what}"), reason)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date); the policy adds jitter."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds)


def _untrusted(exc: BaseException) -> bool:
    # httpx wraps httpcore's error, which wraps ssl's: a refused certificate never gets better.
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
