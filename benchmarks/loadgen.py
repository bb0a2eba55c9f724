"""The load generator: a separate process driven by the harness over stdin/stdout (JSON lines).

`--mode mqtt`: QoS 1 commands on `pager/<n>/action`, at most `--inflight` at once and never two
for the same pager (so each pager's start/page/update/clear cycle succeeds at the simulator);
latency is publish -> `<topic>/result` received, matched by transaction. MQTT v5 on paho-mqtt,
driven on the event loop as the bridge drives it (benchmarks/mqttclient.py). It shares the two
cores with what it measures, so it does as little as it can per command: every answer issues
the next command from inside paho's callback, with no task, future or timer per command.
`--mode coap`: the same cycle straight to the simulators over CoAP (aiocoap on the transport
the bridge's client uses), one request at a time.
`--loop`: uvloop (the bridge's default event loop) or asyncio's own.

Commands on stdin, one JSON object a line; each is answered by one JSON line on stdout:
- `{"cmd": "online", "timeout": s, "count": n}`: wait until n (default 1) `bridge/state` topics
  say online (mqtt; one per site).
- `{"cmd": "run", "count": n, "max_seconds": s}`: a window of at most n commands and s seconds.
- `{"cmd": "create", "first": n, "count": k}` (coap): start sessions n..n+k-1, unmeasured.
- `{"cmd": "quit"}`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import sys
import time
from typing import Any

import msgspec

from benchmarks import stats, workload
from benchmarks.coapclient import BRIDGE_TRANSPORTS, BareCoap
from benchmarks.mqttclient import BareMqtt
from bridge.cli import run_loop

MAX_TIMEOUTS = 50  # a window stops early after this many unanswered commands
MAX_ERROR_SAMPLES = 5


class Reply(msgspec.Struct):
    """What the load generator reads of a result (the echo responder's lacks `status`)."""

    transaction: int | None = None
    status: str = "ok"


_REPLY = msgspec.json.Decoder(Reply)


class Window:
    """Counters of one measured window, bounded in count, time and failures."""

    def __init__(self, count: int, max_seconds: float) -> None:
        self.count = count
        self.deadline = time.perf_counter() + max_seconds
        self.issued = 0
        self.ok = 0
        self.errors = 0
        self.timeouts = 0
        self.latencies: list[float] = []
        self.error_samples: list[str] = []
        self.started = time.perf_counter()
        self.finished = self.started

    def more(self) -> bool:
        return (
            self.issued < self.count
            and self.timeouts < MAX_TIMEOUTS
            and time.perf_counter() < self.deadline
        )

    def done(self, latency: float, ok: bool, payload: bytes) -> None:
        self.latencies.append(latency)
        self.finished = time.perf_counter()
        if ok:
            self.ok += 1
            return
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(payload[:300].decode("utf-8", "replace"))

    def report(self) -> dict[str, Any]:
        elapsed = self.finished - self.started
        answered = self.ok + self.errors
        return {
            "commands": answered,
            "ok": self.ok,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "elapsed_s": round(elapsed, 4),
            "per_second": round(answered / elapsed, 1) if elapsed > 0 else 0.0,
            "latency": stats.summary(self.latencies),
            "error_samples": self.error_samples,
        }


class Pagers:
    """Idle pagers, each with its position in the cycle; a busy pager is out of the deque."""

    def __init__(self, first: int, count: int) -> None:
        self.idle = collections.deque((n, 0) for n in range(first, first + count))

    def take(self) -> tuple[int, str]:
        number, step = self.idle.popleft()
        return number, workload.CYCLE[step]

    def give_back(self, number: int, action: str) -> None:
        step = (workload.CYCLE.index(action) + 1) % len(workload.CYCLE)
        self.idle.append((number, step))


class MqttLoad:
    """Windows of commands; each answer starts the next command, so nothing waits in a task."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.prefixes: tuple[str, ...] = tuple(p for p in args.prefixes.split(",") if p)
        self.pagers = Pagers(args.first_pager, args.pagers)
        self.inflight = min(args.inflight, args.pagers)
        self.transactions = itertools.count(1)
        # transaction -> (pager, action, sent at)
        self.pending: dict[int, tuple[int, str, float]] = {}
        self.online = asyncio.Event()
        self.online_sites: set[str] = set()
        self.online_wanted = 1
        self.window: Window | None = None
        self.finished = asyncio.Event()
        self.mqtt = BareMqtt(f"bench-loadgen-{os.getpid()}", self._message, window=self.inflight)

    async def serve(self) -> None:
        await self.mqtt.connect(self.args.port)
        results = [f"{p}/pager/+/action/result" for p in self.prefixes] or ["pager/+/action/result"]
        state = [f"{p}/bridge/state" for p in self.prefixes] or ["bridge/state"]
        await self.mqtt.subscribe(results + state)
        reaper = asyncio.create_task(self._reap())
        try:
            await control(self.handle)
        finally:
            reaper.cancel()
            self.mqtt.close()

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        if request["cmd"] == "online":
            self.online_wanted = request.get("count", 1)
            if len(self.online_sites) < self.online_wanted:
                self.online.clear()
            async with asyncio.timeout(request.get("timeout", 30)):
                await self.online.wait()
            return {"online": len(self.online_sites)}
        window = self.window = Window(request["count"], request["max_seconds"])
        self.finished.clear()
        for _ in range(self.inflight):
            self._issue(window)
        if self.pending:
            await self.finished.wait()
        self.window = None
        return window.report()

    def _issue(self, window: Window) -> None:
        if not window.more():
            if not self.pending:
                self.finished.set()
            return
        window.issued += 1
        number, action = self.pagers.take()
        transaction = next(self.transactions)
        self.pending[transaction] = (number, action, time.perf_counter())
        topic = workload.pager_topic(number, self.prefixes)
        self.mqtt.publish(topic, workload.command(action, transaction))

    def _message(self, topic: str, payload: bytes, _mid: int) -> None:
        received = time.perf_counter()
        if topic.endswith("bridge/state"):
            if b"online" in payload:
                self.online_sites.add(topic)
                if len(self.online_sites) >= self.online_wanted:
                    self.online.set()
            return
        try:
            reply = _REPLY.decode(payload)
        except msgspec.DecodeError:
            return
        entry = self.pending.pop(reply.transaction, None) if reply.transaction else None
        window = self.window
        if entry is None or window is None:
            return
        number, action, sent = entry
        window.done(received - sent, reply.status == "ok", payload)
        self.pagers.give_back(number, action)
        self._issue(window)

    async def _reap(self) -> None:
        """Count commands unanswered past `--timeout` as timeouts and move on."""
        while True:
            await asyncio.sleep(0.25)
            window = self.window
            if window is None:
                continue
            limit = time.perf_counter() - self.args.timeout
            for transaction, (number, action, sent) in list(self.pending.items()):
                if sent < limit:
                    del self.pending[transaction]
                    window.timeouts += 1
                    self.pagers.give_back(number, action)
                    self._issue(window)


class CoapLoad:
    """The CoAP floor: the same cycle, sequential, straight to the simulator(s)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.ports = [int(p) for p in args.coap_ports.split(",")]
        self.pagers = Pagers(args.first_pager, args.pagers)
        self.coap = BareCoap(args.timeout, transports=BRIDGE_TRANSPORTS, blockwise=False)

    async def serve(self) -> None:
        await self.coap.start()
        try:
            await control(self.handle)
        finally:
            await self.coap.close()

    def port_of(self, number: int) -> int:
        return self.ports[number % len(self.ports)]

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        if request["cmd"] == "create":
            return await self._create(request["first"], request["count"])
        window = Window(request["count"], request["max_seconds"])
        transactions = itertools.count(1)
        while window.more():
            window.issued += 1
            number, action = self.pagers.take()
            payload = json.loads(workload.command(action, next(transactions)))
            method, query, body = workload.coap_request(number, payload)
            sent = time.perf_counter()
            try:
                ok, reply = await self.coap.request(self.port_of(number), method, query, body)
            except TimeoutError:
                window.timeouts += 1
            else:
                window.done(time.perf_counter() - sent, ok, reply)
            self.pagers.give_back(number, action)
        return window.report()

    async def _create(self, first: int, count: int) -> dict[str, Any]:
        started, failed = time.perf_counter(), 0
        for number in range(first, first + count):
            body = workload.command("start", number)
            method, query, data = workload.coap_request(number, json.loads(body))
            ok, _ = await self.coap.request(self.port_of(number), method, query, data)
            failed += not ok
        return {
            "created": count - failed,
            "failed": failed,
            "seconds": time.perf_counter() - started,
        }


async def control(handle: Any) -> None:
    """Answer the harness's commands until `quit` or end of input."""
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.strip():
            return
        request = json.loads(line)
        if request["cmd"] == "quit":
            return
        print(json.dumps(await handle(request)), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    parser.add_argument("--mode", choices=("mqtt", "coap"), default="mqtt")
    parser.add_argument("--port", type=int, default=1883, help="broker port (mqtt)")
    parser.add_argument("--coap-ports", default="5683", help="simulator ports (coap)")
    parser.add_argument("--prefixes", default="", help="site topic prefixes, comma-separated")
    parser.add_argument("--inflight", type=int, default=1)
    parser.add_argument("--pagers", type=int, default=200)
    parser.add_argument("--first-pager", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=10.0, help="per command (s)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args(argv)
    run_loop(serve(args), args.loop)
    return 0


async def serve(args: argparse.Namespace) -> None:
    """Built inside the running loop: the MQTT client and its futures belong to it."""
    load = MqttLoad(args) if args.mode == "mqtt" else CoapLoad(args)
    await load.serve()


if __name__ == "__main__":
    raise SystemExit(main())
