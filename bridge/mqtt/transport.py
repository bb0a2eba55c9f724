"""paho-mqtt driven on the asyncio loop: the socket, its readiness callbacks, and nothing else.

paho's `Client` is written for a loop of its own (`loop_start()` runs one in a thread). Its
documented alternative is to drive it from an external event loop through its socket callbacks
(`on_socket_open` / `on_socket_close` / `on_socket_register_write` /
`on_socket_unregister_write`) and `loop_read()`, `loop_write()` and `loop_misc()`: paho's own
`examples/loop_asyncio.py` and Home Assistant's MQTT client work this way. `PahoDriver` is that
glue, with Home Assistant's care for the hot path:

- paho reads a packet with three or more `recv()` calls (the first byte, the length bytes one
  by one, the rest) and writes each packet with its own `send()`. On loopback a system call
  costs more than everything else paho does for a packet, so paho's socket is a `BulkSocket`:
  one `recv()` fills a buffer that paho's small reads are served from, and what paho sends
  during one loop iteration goes out in one `send()` (measured in docs/performance.md).
- Reads: one `add_reader` for the life of the socket. `loop_read()` reads as many packets as
  paho has messages in flight (at least one); reading goes on while bytes wait in the buffer or
  inside the SSL object, where epoll cannot see them. `pause_reading()` takes the reader off
  the loop: the kernel's receive buffer then fills and TCP flow control makes the broker wait
  (back-pressure on the socket, not only in the bridge).
- Writes: paho asks for write readiness whenever it queued a packet. Instead of an
  `add_writer`/`remove_writer` pair (two epoll_ctl calls) for every batch, everything queued
  during one loop iteration is written by one `loop_write()` scheduled with `call_soon`; only a
  full socket buffer registers a writer.
- `loop_misc()` once a second: paho's keepalive (PINGREQ when idle, and the connection dropped
  when no PINGRESP comes back within the keepalive).

What paho does not do without blocking is connecting: `Client.connect()` / `reconnect()` call
`socket.create_connection()` and a blocking TLS handshake, which would stall every site in the
process while a broker is slow to answer. `open_socket()` does the DNS lookup, TCP connect and
TLS handshake on the loop instead, and `PreparedClient` hands that socket to paho in place of
the one paho would have made (`_create_socket_connection` is paho's single point for that; see
tests/adapter/test_mqtt_paho.py for the blocking it avoids). The one exception is the WebSocket
upgrade of `ws://` and `wss://` URLs: paho performs that HTTP exchange synchronously inside
`reconnect()`, so it costs one round trip to the broker with the loop held, bounded by
`connect_timeout`. That is paho's code, not ours: the bridge writes no MQTT, HTTP or WebSocket
bytes itself. (Over WebSockets paho's frames are read and written as paho does it, unbuffered.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho

log = logging.getLogger("bridge.mqtt")

MISC_INTERVAL = 1.0
READ_SIZE = 65536
# Packets read in one go before the answers they caused are written.
WRITE_EVERY = 128


class BulkSocket:
    """paho's socket, read and written in bulk (see the module docstring).

    paho uses the socket-like interface it documents (`recv`, `send`, `close`, `fileno`,
    `setblocking`); `send()` only collects, and `flush()` writes what was collected.
    """

    __slots__ = ("_in", "_out", "_pos", "raw")

    def __init__(self, raw: socket.socket) -> None:
        self.raw = raw
        self._in = b""
        self._pos = 0
        self._out = bytearray()

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._in):
            data = self.raw.recv(READ_SIZE)  # BlockingIOError, SSLWantReadError: paho's to handle
            if not data:
                return b""
            self._in, self._pos = data, 0
        start = self._pos
        self._pos = min(start + size, len(self._in))
        return self._in[start : self._pos]

    def pending(self) -> int:
        """Bytes read but not yet taken by paho, SSL's own buffer included."""
        waiting = len(self._in) - self._pos
        if isinstance(self.raw, ssl.SSLSocket):
            waiting += self.raw.pending()
        return waiting

    def send(self, data: bytes | bytearray) -> int:
        self._out += data
        return len(data)

    def flush(self) -> bool:
        """Write what was collected; False while some waits for the socket to drain. Raises
        OSError when the connection is broken."""
        out = self._out
        while out:
            try:
                sent = self.raw.send(out)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return False
            del out[:sent]
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.flush()  # a DISCONNECT paho just "sent" must not be lost with the socket
        self.raw.close()

    def fileno(self) -> int:
        return self.raw.fileno()

    def setblocking(self, flag: bool) -> None:
        self.raw.setblocking(flag)


class PreparedClient(paho.Client):
    """paho's Client, connected over a socket the event loop opened (see the module docstring).

    `reconnect()` must be preceded by `prepare(sock)`; paho never opens a socket itself, so it
    can never block the loop on a connect.
    """

    _prepared: socket.socket | None = None

    def prepare(self, sock: socket.socket) -> None:
        self._prepared = sock

    def unread_packet_start(self) -> int | None:
        """The first byte of a packet paho began to read and never completed, if any: after a
        connection closed before CONNACK it tells a broker from a server speaking something
        else (an HTTP server answers 'H')."""
        first = int(self._in_packet["command"])
        return first or None

    def _create_socket_connection(self) -> Any:
        sock, self._prepared = self._prepared, None
        if sock is None:
            raise ConnectionError("no connected socket was prepared for paho")
        if self._transport == "tcp":
            return BulkSocket(sock)
        return sock  # paho's WebSocket wrapper does its own, blocking, handshake on it


async def open_socket(host: str, port: int, tls: ssl.SSLContext | None) -> socket.socket:
    """A connected, non-blocking TCP socket (TLS handshake done) with Nagle off.

    Nagle's algorithm delays a small write until the previous one is acknowledged: with it on,
    every command waited 40-88 ms on delayed ACKs. Raises OSError (ssl.SSLError is one); the
    caller bounds the time.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
            if tls is None:
                return sock
            return await _handshake(
                tls.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
            )
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    raise error


async def _handshake(sock: ssl.SSLSocket) -> ssl.SSLSocket:
    """The TLS handshake of a non-blocking socket, waiting on the loop (ssl module's own
    pattern: retry `do_handshake()` when the socket is readable or writable again)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            await _ready(loop.add_reader, loop.remove_reader, sock)
        except ssl.SSLWantWriteError:
            await _ready(loop.add_writer, loop.remove_writer, sock)
        else:
            return sock


async def _ready(
    add: Callable[..., Any], remove: Callable[[Any], Any], sock: socket.socket
) -> None:
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def ready() -> None:
        if not waiter.done():
            waiter.set_result(None)

    add(sock, ready)
    try:
        await waiter
    finally:
        remove(sock)


class PahoDriver:
    """Runs one paho client's I/O on the running asyncio loop (see the module docstring)."""

    def __init__(self, client: paho.Client) -> None:
        self._client = client
        self._loop = asyncio.get_running_loop()
        self._sock: Any = None  # what paho reads from: a BulkSocket, or its WebSocket wrapper
        self._bulk: BulkSocket | None = None
        self._raw: socket.socket | None = None  # the socket under it
        self._ssl: ssl.SSLSocket | None = None
        self._reading = False
        self._paused = self._closing = False
        self._paused_at = 0.0
        self._write_soon = False
        self._writer = False
        self._misc: asyncio.TimerHandle | None = None
        self.on_misc: Callable[[], None] | None = None
        client.on_socket_open = self._opened
        client.on_socket_close = self._closed
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._no_write

    @property
    def socket(self) -> socket.socket | None:
        """The socket paho talks over, or None between connections."""
        return self._raw

    @property
    def closing(self) -> bool:
        """`abort()` was called on this connection: what is still read from it is stale."""
        return self._closing

    def pause_reading(self) -> None:
        """Stop reading from the socket; the broker then waits on TCP flow control.

        A pause lasts at most half a keepalive at a time: paho must see the broker's PINGRESP,
        or it would take a busy bridge for a dead broker.
        """
        if self._closing or self._paused:
            return
        self._paused = True
        self._paused_at = self._loop.time()
        self._stop_reading()

    def resume_reading(self) -> None:
        self._paused = False
        if self._sock is not None and not self._reading:
            self._start_reading()
            # Bytes may already wait in the SSL object, where epoll would never report them.
            self._loop.call_soon(self._readable)

    def abort(self) -> None:
        """Drop the connection at once, without DISCONNECT (the broker publishes the will).

        paho notices on its next read (the socket reads as closed) and reports the loss
        through `on_disconnect`, exactly as for a connection the network dropped.
        """
        if self._raw is None:
            return
        with contextlib.suppress(OSError):
            self._raw.shutdown(socket.SHUT_RDWR)
        self._closing = True
        self._paused = False  # paho must read to see the end
        if not self._reading:
            self._start_reading()
        self._loop.call_soon(self._readable)

    def flush(self) -> None:
        """Write what paho has queued now (shutting down: no later loop iteration)."""
        if self._sock is not None:
            self._client.loop_write()
        if self._bulk is not None:
            with contextlib.suppress(OSError):
                self._bulk.flush()

    # -- paho's socket callbacks --------------------------------------------------------------

    def _opened(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._sock = sock
        self._bulk = sock if isinstance(sock, BulkSocket) else None
        # BulkSocket and paho's WebSocket wrapper both keep the socket they wrap.
        raw = sock.raw if self._bulk is not None else getattr(sock, "_socket", sock)
        self._raw = raw
        self._ssl = raw if isinstance(raw, ssl.SSLSocket) else None
        self._write_soon = self._writer = False
        # A pause belongs to the connection it was asked on (its inbox is gone with it).
        self._paused = self._closing = False
        self._start_reading()
        if self._misc is None:
            self._misc = self._loop.call_later(MISC_INTERVAL, self._tick)

    def _closed(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        if sock is not self._sock:
            return
        self._stop_reading()
        if self._writer and self._raw is not None:
            self._loop.remove_writer(self._raw)
        self._sock = self._bulk = self._raw = self._ssl = None
        self._write_soon = self._writer = False
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None

    def _want_write(self, _client: paho.Client, _userdata: Any, _sock: Any) -> None:
        # paho asks once and then queues quietly until it has written everything, so a request
        # is never dropped: with a BulkSocket paho's packets join our buffer even while it waits
        # for the socket to drain (tests/adapter/test_mqtt_link.py, socket full). Only paho's
        # own partial write (WebSocket) has a writer that calls it again by itself.
        if not self._write_soon and (self._bulk is not None or not self._writer):
            self._write_soon = True
            self._loop.call_soon(self._writable)

    def _no_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        # Only the WebSocket path hands paho's own partial writes to a writer; a BulkSocket's
        # writer waits for its buffer to drain, whatever paho believes.
        if self._writer and sock is self._sock and self._bulk is None and self._raw is not None:
            self._writer = False
            self._loop.remove_writer(self._raw)

    # -- readiness -----------------------------------------------------------------------------

    def _start_reading(self) -> None:
        if self._sock is not None:
            self._loop.add_reader(self._sock, self._readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading and self._sock is not None:
            self._loop.remove_reader(self._sock)
        self._reading = False

    def _readable(self) -> None:
        client = self._client
        count = 0
        while self._sock is not None and not self._paused:
            if client.loop_read() != paho.MQTT_ERR_SUCCESS:
                return  # paho closed the socket and reported it through on_disconnect
            if not self._unread():
                return
            count += 1
            if count % WRITE_EVERY == 0 and self._write_soon:
                # A long read (a flood, each message answered) writes as it goes, so what
                # paho queues meanwhile stays short.
                self._writable()

    def _unread(self) -> int:
        """Bytes that wait where epoll cannot see them (our buffer, the SSL object's)."""
        if self._bulk is not None:
            return self._bulk.pending()
        return self._ssl.pending() if self._ssl is not None else 0

    def _writable(self) -> None:
        self._write_soon = False
        sock = self._sock
        if sock is None:
            return
        self._client.loop_write()
        if self._bulk is not None:
            self._drain()
        # paho's own partial write (WebSocket): wait until the socket drains.
        elif self._sock is sock and self._client.want_write() and not self._writer:
            self._writer = True
            self._loop.add_writer(sock, self._writable_again)

    def _drain(self) -> None:
        bulk = self._bulk
        if bulk is None:
            return
        try:
            done = bulk.flush()
        except OSError:
            self.abort()  # paho believes it was sent: make it notice the broken connection
            return
        if done and self._writer and self._raw is not None:
            self._writer = False
            self._loop.remove_writer(self._raw)
        elif not done and not self._writer and self._raw is not None:
            self._writer = True
            self._loop.add_writer(self._raw, self._drain)

    def _writable_again(self) -> None:
        if self._sock is not None:
            self._client.loop_write()  # paho calls _no_write once everything is out

    def _tick(self) -> None:
        self._misc = None
        if self._sock is None:
            return
        keepalive = self._client.keepalive
        if self._paused and self._loop.time() - self._paused_at > keepalive / 2:
            self.resume_reading()
        self._client.loop_misc()
        if self.on_misc is not None:
            self.on_misc()
        if self._sock is not None and self._misc is None:
            self._misc = self._loop.call_later(MISC_INTERVAL, self._tick)
