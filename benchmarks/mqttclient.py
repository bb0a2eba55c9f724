"""A bare paho-mqtt client for the load generator and the echo: no policy at all.

paho-mqtt is driven on the running asyncio loop exactly as the bridge drives it, with the
bridge's own glue (`bridge.mqtt.transport`): the loop opens the TCP socket with Nagle off
(`open_socket`), `PreparedClient` hands it to paho, and `PahoDriver` runs paho's reads, writes
and keepalive from the loop's readiness callbacks. So a round trip through the echo costs, per
packet, what the bridge's MQTT layer costs, and the load generator pays the same per command.

MQTT v5, clean start, QoS 1 both ways, on 127.0.0.1. No reconnect: a lost connection is
written to stderr and the load generator then counts unanswered commands as timeouts.

In-flight publishes: the caller bounds its own (`window`: the load generator's --inflight, the
echo's Receive Maximum), so paho's own limit is switched off (0). With a limit set, paho scans
every unacknowledged message on each PUBACK for one queued behind the limit
(`Client._update_inflight`), a cost per command that grows with the window (8 % of the load
generator's CPU at 100 in flight). A broker that takes fewer than `window` (its CONNACK's
Receive Maximum) is refused at connect.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.mqtt.transport import PahoDriver, PreparedClient, open_socket

HOST = "127.0.0.1"
KEEPALIVE = 60
SETUP_TIMEOUT = 30.0  # seconds for the connection, the CONNACK and the SUBACK
MQTT5_RECEIVE_MAXIMUM = 65535  # what a CONNACK without Receive Maximum means

# on_message(topic, payload, mid): a QoS 1 message; with manual_ack, `ack(mid)` PUBACKs it.
OnMessage = Callable[[str, bytes, int], None]
# on_published(mid): the broker acknowledged our publish `mid`.
OnPublished = Callable[[int], None]


class BareMqtt:
    """One connection: `connect()`, `subscribe()`, then `publish()` and (manual) `ack()`."""

    def __init__(
        self,
        client_id: str,
        on_message: OnMessage,
        *,
        window: int,
        on_published: OnPublished | None = None,
        receive_maximum: int | None = None,
        manual_ack: bool = False,
    ) -> None:
        """`window`: the most publishes the caller leaves unacknowledged at once;
        `receive_maximum`: the broker's messages unacknowledged at once (MQTT 5 CONNECT)."""
        self._on_message = on_message
        self._on_published = on_published
        self._window = window
        self._receive_maximum = receive_maximum
        client = PreparedClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        client.max_inflight_messages_set(0)  # no limit in paho: the caller keeps `window`
        client.on_connect = self._connack
        client.on_subscribe = self._suback
        client.on_message = self._message
        client.on_disconnect = self._disconnected
        if on_published is not None:  # paho skips the call (and its arguments) when unset
            client.on_publish = self._puback
        self._client = client
        self._driver: PahoDriver | None = None
        self._connected: asyncio.Future[tuple[ReasonCode, Any]] | None = None
        self._subscribed: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._closing = False

    async def connect(self, port: int) -> None:
        """Connect (clean start) and wait for a successful CONNACK; RuntimeError otherwise."""
        loop = asyncio.get_running_loop()
        self._connected = loop.create_future()
        properties = None
        if self._receive_maximum is not None:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.ReceiveMaximum = self._receive_maximum
        async with asyncio.timeout(SETUP_TIMEOUT):
            sock = await open_socket(HOST, port, None)
            self._driver = PahoDriver(self._client)
            self._client.connect_async(
                HOST, port, KEEPALIVE, clean_start=True, properties=properties
            )
            self._client.prepare(sock)
            self._client.reconnect()
            reason, props = await self._connected
        if reason.is_failure:
            raise RuntimeError(f"the broker refused {self._client_id}: {reason}")
        allowed = getattr(props, "ReceiveMaximum", MQTT5_RECEIVE_MAXIMUM)
        if allowed < self._window:
            raise RuntimeError(
                f"the broker takes {allowed} unacknowledged publishes at once, fewer than the"
                f" {self._window} asked for"
            )

    async def subscribe(self, filters: list[str]) -> None:
        """Subscribe to `filters` at QoS 1 in one SUBSCRIBE; RuntimeError if one is refused."""
        rc, mid = self._client.subscribe([(f, 1) for f in filters])
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise RuntimeError(f"cannot subscribe: {paho.error_string(rc)}")
        waiter = self._subscribed[mid] = asyncio.get_running_loop().create_future()
        async with asyncio.timeout(SETUP_TIMEOUT):
            codes = await waiter
        refused = [f for f, code in zip(filters, codes, strict=True) if code.is_failure]
        if refused:
            raise RuntimeError(f"the broker refused the subscriptions {refused}")

    def publish(self, topic: str, payload: bytes) -> int:
        """Hand a QoS 1 publish to paho (written in this loop iteration); its message id."""
        return self._client.publish(topic, payload, 1).mid

    def ack(self, mid: int) -> None:
        """PUBACK message `mid` (with `manual_ack`)."""
        self._client.ack(mid, 1)

    def close(self) -> None:
        """DISCONNECT, written at once (no loop iteration may follow)."""
        if self._driver is not None and self._driver.socket is not None:
            self._closing = True
            self._client.disconnect()
            self._driver.flush()

    @property
    def _client_id(self) -> str:
        return self._client._client_id.decode()  # noqa: SLF001 - for the error message only

    # -- paho's callbacks (inside loop_read, on the loop) -------------------------------------

    def _connack(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if self._connected is not None and not self._connected.done():
            self._connected.set_result((reason, props))

    def _suback(
        self, _client: paho.Client, _userdata: Any, mid: int, codes: list[ReasonCode], _p: Any
    ) -> None:
        waiter = self._subscribed.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(codes)

    def _message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        self._on_message(message.topic, bytes(message.payload), message.mid)

    def _puback(
        self, _client: paho.Client, _userdata: Any, mid: int, _reason: ReasonCode, _p: Any
    ) -> None:
        assert self._on_published is not None
        self._on_published(mid)

    def _disconnected(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if not self._closing:
            print(f"MQTT connection lost: {reason}", file=sys.stderr, flush=True)
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(RuntimeError(f"connection lost before CONNACK: {reason}"))
