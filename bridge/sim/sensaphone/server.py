"""A Sensaphone.net REST simulator: login, sessions and schedule timeranges, over HTTP or HTTPS.

Faithful to Sensaphone.net's REST API as documented for schedule timeranges:

- `POST {base}/login` -> acctid, session, login_timestamp, session_expiration.
- JSON mode: `POST {base}/device/default_schedule/timerange`, `.../device/device_schedule/...`,
  `.../user/contact/schedule/timerange`, with `request_type` and the parents nested as arrays.
- URI mode: `GET|POST|PUT|DELETE {base}/{acctid}/{session}/device/{id}/default_schedule/{id}/
  timerange[/{range_id}[/{field}/{value}]]` (and the device_schedule and user/contact forms);
  POST and PUT may carry `{"timerange": [{...}]}` as a JSON body.
- Every reply is the `{"result": {success, code, message}, "response": {...}}` envelope.
  Codes: 0 OK, 1 invalid request, 2 session expired (also for an unknown session), 3 invalid
  value, 4 not found, 7 invalid user name or password, 9 too many requests. The HTTP status
  varies (200, 400, 401, 404, 429) so that clients are tested not to rely on it.

The server is `http.server.ThreadingHTTPServer` (HTTP/1.1 keep-alive) on a background thread:
`start()` and `stop()` are synchronous and safe to call from async tests. Fault injection and
counters are thread-safe and can be changed while it runs. Accounts, sessions, schedules and
the API's semantics live in `bridge.sim.sensaphone.store`; this module adds HTTP and faults.
Faults (fail, throttle, stall) apply to timerange requests by default; `target="login"` or
`"any"` aims them at logins too. `reshape` makes it answer as another Sensaphone might (fields
as text, fields nobody documented, oversized bodies), for tests of the bridge's tolerance.
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Self

import msgspec

from bridge.sim.sensaphone.store import KIND_OF_KEYS, ScheduleKey, SensaphoneStore, SimError

log = logging.getLogger(__name__)

Target = Literal["any", "login", "timerange"]
_VERB_OF_METHOD: Final = {"GET": "read", "POST": "create", "PUT": "update", "DELETE": "delete"}
_HTTP_OF_CODE: Final = {1: 400, 2: 401, 3: 400, 4: 404, 7: 401, 9: 429}
_FAILED: Final = msgspec.json.encode(
    {"result": {"success": False, "code": 1, "message": "Internal error"}, "response": {}}
)


@dataclass
class _Faults:
    latency: float = 0.0
    # (HTTP status, with a `success: false` envelope rather than plain text), target
    fail: collections.deque[tuple[tuple[int, bool], Target]] = field(
        default_factory=collections.deque
    )
    throttle: collections.deque[tuple[float, Target]] = field(default_factory=collections.deque)
    stall: collections.deque[tuple[float, Target]] = field(default_factory=collections.deque)


class SensaphoneSimulator:
    """Start with `start()` (or `with`), stop with `stop()`; `url` includes the base path."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        session_lifetime: float = 3600,
        ssl_context: ssl.SSLContext | None = None,
        base_path: str = "/api/v1",
        accounts: dict[str, tuple[str, int]] | None = None,
        schedules: dict[ScheduleKey, list[dict[str, Any]]] | None = None,
        latency: float = 0.0,
    ) -> None:
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.base_path = "/" + base_path.strip("/")
        # Accounts, sessions and schedules; `store.logins`, `store.ranges_created` count.
        self.store = SensaphoneStore(accounts, schedules, session_lifetime)
        self._lock = threading.Lock()
        self._faults = _Faults(latency=latency)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # Requests received, by (mode, verb), mode json|uri|login, faulted ones included.
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        # Applied to every answer (login and timerange, refusals included; not to injected
        # faults) before it is sent: takes the envelope as JSON and returns JSON to send, bytes
        # to send as they are, or an iterable of bytes to stream without a Content-Length (the
        # end marked by closing the connection). Called on the server's threads.
        self.reshape: Callable[[dict[str, Any]], Any] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        server = _Server((self.host, self.port), _Handler)
        server.sim = self
        self._server, self.port = server, server.server_address[1]
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="sensaphone-sim"
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, release stalled requests, close every connection and join threads."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}{self.base_path}"

    # -- fault injection and state ---------------------------------------------------------

    @property
    def latency(self) -> float:
        return self._faults.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._faults.latency = seconds

    def fail_next(
        self, n: int, status: int = 500, *, target: Target = "timerange", envelope: bool = False
    ) -> None:
        """The next n matching requests get `status`, unprocessed: with a plain-text body, or
        with `envelope` a result envelope saying `success: false` (code 1, internal error)."""
        with self._lock:
            self._faults.fail.extend([((status, envelope), target)] * n)

    def throttle_next(
        self, n: int, retry_after: float = 1, *, target: Target = "timerange"
    ) -> None:
        """The next n matching requests get 429 + `Retry-After`, unprocessed."""
        with self._lock:
            self._faults.throttle.extend([(retry_after, target)] * n)

    def stall_next(self, n: int, seconds: float, *, target: Target = "timerange") -> None:
        """The next n matching requests are processed, then answered only after `seconds`."""
        with self._lock:
            self._faults.stall.extend([(seconds, target)] * n)

    def expire_sessions(self) -> None:
        """Every current session is expired from now on (replies code 2)."""
        self.store.expire_sessions()

    @property
    def logins(self) -> int:
        return self.store.logins

    @property
    def ranges_created(self) -> int:
        return self.store.ranges_created

    def count(self, mode: str, verb: str) -> None:
        with self._lock:
            self.requests[mode, verb] += 1

    def take_fault(self, name: Literal["fail", "throttle", "stall"], is_login: bool) -> Any:
        """Pop the next fault of this kind if it applies to this request, else None."""
        with self._lock:
            queue: collections.deque[tuple[Any, Target]] = getattr(self._faults, name)
            if queue and queue[0][1] in ("any", "login" if is_login else "timerange"):
                return queue.popleft()[0]
        return None

    def wait(self, seconds: float) -> None:
        """Sleep, but wake up at once when the simulator stops."""
        if seconds > 0:
            self._stopping.wait(seconds)


class _Server(http.server.ThreadingHTTPServer):
    # Handler threads are joined on close, so a stopped simulator leaves nothing running.
    daemon_threads = False
    block_on_close = True
    sim: SensaphoneSimulator

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.sim.ssl_context is not None:
            # The handshake runs on the handler's thread (first read), not the accept loop.
            sock = self.sim.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        with self.connections_lock:
            self.connections.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        # Idle keep-alive handlers block in readline(); shutting their sockets ends them.
        with self.connections_lock:
            for sock in self.connections:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ARG002
        # Clients that hang up (timeouts, refused TLS) are normal in fault tests: log quietly.
        log.debug("sensaphone sim: connection from %s ended with an error", client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_GET  # noqa: N815 - http.server's naming

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("sensaphone sim: %s", format % args)

    def _handle(self) -> None:
        sim = self.server.sim
        body_bytes = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?", 1)[0]
        is_login = path == sim.base_path + "/login"
        sim.count(*self._label(sim, path, is_login, body_bytes))
        sim.wait(sim.latency)
        if (retry_after := sim.take_fault("throttle", is_login)) is not None:
            envelope = _envelope(SimError(9, "Too many requests"), None)
            self._reply(429, envelope, {"Retry-After": f"{retry_after:g}"})
            return
        if (failure := sim.take_fault("fail", is_login)) is not None:
            status, envelope = failure
            if envelope:
                self._reply(status, _FAILED)
            else:
                self._reply(status, b"Internal Server Error", {"Content-Type": "text/plain"})
            return
        status, envelope = self._answer(sim, path, is_login, body_bytes)
        sim.wait(sim.take_fault("stall", is_login) or 0.0)
        reshape = sim.reshape
        if reshape is None:
            self._reply(status, envelope)
            return
        shaped = reshape(msgspec.json.decode(envelope))
        if isinstance(shaped, bytes):
            self._reply(status, shaped)
        elif isinstance(shaped, dict | list):
            self._reply(status, msgspec.json.encode(shaped))
        else:
            self._stream(status, shaped)

    def _label(
        self, sim: SensaphoneSimulator, path: str, is_login: bool, raw: bytes
    ) -> tuple[str, str]:
        """(mode, verb) for the request counters, counted before any fault is injected."""
        if is_login:
            return "login", "create"
        if path.endswith("/timerange") and KIND_OF_KEYS.get(
            tuple(path[len(sim.base_path) :].strip("/").split("/")[:-1])
        ):
            with contextlib.suppress(SimError):
                return "json", str(_body(raw).get("request_type"))
            return "json", "invalid"
        return "uri", _VERB_OF_METHOD[self.command]

    def _answer(
        self, sim: SensaphoneSimulator, path: str, is_login: bool, raw: bytes
    ) -> tuple[int, bytes]:
        try:
            body = _body(raw)
            response = sim.store.login(body) if is_login else self._timerange(sim, path, body)
        except SimError as exc:
            return _HTTP_OF_CODE.get(exc.code, 400), _envelope(exc, None)
        return 200, _envelope(None, response)

    def _timerange(self, sim: SensaphoneSimulator, path: str, body: dict[str, Any]) -> Any:
        if not path.startswith(sim.base_path + "/"):
            raise SimError(1, "Invalid request: unknown resource path")
        parts = path[len(sim.base_path) + 1 :].strip("/").split("/")
        kind = KIND_OF_KEYS.get(tuple(parts[:-1])) if parts[-1] == "timerange" else None
        if kind is None:
            return sim.store.uri_request(_VERB_OF_METHOD[self.command], parts, body)
        if self.command != "POST":
            raise SimError(1, "Invalid request: JSON mode requests are POSTs")
        return sim.store.json_request(kind, body)

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        if self.server.sim._stopping.is_set():  # noqa: SLF001 - released by stop(): hang up
            self.close_connection = True
            return
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, status: int, chunks: Iterable[bytes]) -> None:
        """A body of unannounced length: no Content-Length, the connection closed after it."""
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        with contextlib.suppress(OSError):  # the client hung up: stop writing
            for chunk in chunks:
                if self.server.sim._stopping.is_set():  # noqa: SLF001 - see _reply
                    return
                self.wfile.write(chunk)


def _body(raw: bytes) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(raw) if raw else {}
    except msgspec.DecodeError:
        raise SimError(1, "Invalid request: body is not JSON") from None
    if not isinstance(body, dict):
        raise SimError(1, "Invalid request: body must be an object")
    return body


def _envelope(error: SimError | None, response: Any) -> bytes:
    if error is not None:
        result = {"success": False, "code": error.code, "message": error.message}
        return msgspec.json.encode({"result": result})
    return msgspec.json.encode(
        {"result": {"success": True, "code": 0, "message": "OK"}, "response": response}
    )


def _server_context(tls_cert: str | None, tls_key: str | None) -> ssl.SSLContext | None:
    if not tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_cert, tls_key)
    return context


def serve(
    host: str = "127.0.0.1",
    port: int = 8443,
    session_lifetime: float = 3600,
    latency: float = 0.0,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> None:
    """Run the simulator in the foreground until Ctrl-C (for `iotbridge sim sensaphone`)."""
    sim = SensaphoneSimulator(
        host=host,
        port=port,
        session_lifetime=session_lifetime,
        latency=latency,
        ssl_context=_server_context(tls_cert, tls_key),
    )
    with sim:
        log.info("Sensaphone simulator listening on %s (user demo)", sim.url)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
