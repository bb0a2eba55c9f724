"""Scenarios: each starts its own broker, simulators, system under test and load generator.

A window is measured by the load generator (latency, rate) while the harness reads every
process's CPU time from /proc before and after it; each window follows an unmeasured warm-up.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import processes, procstat, profile
from benchmarks.processes import Child
from bridge.dev.mosquitto import Mosquitto

READY_TIMEOUT = 30.0
SETTLE_LIMIT = 120.0  # seconds to wait for the bridge to go quiet after creating sessions
FEW_SESSIONS = 100  # sessions active in the "few" window: the load's own pagers
CREATE_CHUNK = 500  # sessions created at once, well under the bridge's notification backlog


@dataclass(frozen=True)
class Options:
    commands: int  # per measured window with a window > 1
    serial_commands: int  # per measured window at 1 in flight
    floor_samples: int
    pagers: int
    max_seconds: float  # per window
    logdir: Path
    max_number: int = 20_000
    profile_out: Path | None = None  # py-spy's collapsed stacks of the profiled window

    def count(self, inflight: int) -> int:
        return self.serial_commands if inflight == 1 else self.commands

    def warmup(self, inflight: int) -> int:
        return max(200, self.count(inflight) // 10)


class Stack(contextlib.ExitStack):
    """The processes of one scenario, all stopped (in reverse) when the block ends."""

    def __init__(self, logdir: Path) -> None:
        super().__init__()
        self.logdir = logdir
        logdir.mkdir(parents=True, exist_ok=True)
        self.pids: dict[str, int] = {}

    def broker(self) -> Mosquitto:
        broker = Mosquitto().start()
        self.callback(broker.cleanup)
        assert broker.process is not None
        self.pids["broker"] = broker.process.pid
        return broker

    def add(self, child: Child) -> Child:
        self.callback(child.stop)
        self.pids[child.name] = child.pid
        return child

    def sims(self, count: int, max_number: int) -> list[int]:
        started = [processes.pager_sim(self.logdir, i, max_number) for i in range(count)]
        for child, port in started:
            self.add(child)
            processes.wait_udp_bound(child, port)
        return [port for _, port in started]

    def ready(self, child: Child) -> Child:
        line = child.line(READY_TIMEOUT)
        if "ready" not in line:
            raise RuntimeError(f"{child.name} said {line!r} instead of ready")
        return child


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    return {name: procstat.cpu_seconds(pid) for name, pid in pids.items()}


def measure(
    stack: Stack,
    load: Child,
    count: int,
    max_seconds: float,
    target: str | None,
    during: Callable[[], Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """One measured window: the load generator's figures plus CPU per process, per command."""
    before = cpu_snapshot(stack.pids)
    stop = during() if during else None
    result = load.ask({"cmd": "run", "count": count, "max_seconds": max_seconds}, max_seconds + 60)
    if stop:
        stop()
    after = cpu_snapshot(stack.pids)
    commands = max(1, result["commands"])
    cpu = {name: round(after[name] - before[name], 3) for name in before}
    sims = sum(v for k, v in cpu.items() if k.startswith("sim-"))
    cpu = {k: v for k, v in cpu.items() if not k.startswith("sim-")} | {"sims": round(sims, 3)}
    result["cpu_s"] = cpu
    result["cpu_ms_per_command"] = {k: round(1000 * v / commands, 4) for k, v in cpu.items()}
    if target is not None:
        result["target"] = target
        result["log_warnings"] = warnings(stack.logdir / f"{target}.log")
        result["rss_mb"] = {
            k: round(v, 1) for k, v in procstat.memory_mb(stack.pids[target]).items()
        }
    return result


def warnings(log: Path, limit: int = 10) -> list[str]:
    """WARNING/ERROR lines the process logged so far (the bridge logs nothing per command)."""
    if not log.exists():
        return []
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    found = [line[:300] for line in lines if " WARNING " in line or " ERROR " in line]
    return found[:limit]


def floors(opts: Options) -> dict[str, Any]:
    """MQTT QoS 1 request/response via an echo process, and direct CoAP to the simulator."""
    with Stack(opts.logdir / "floor") as stack:
        broker = stack.broker()
        (port,) = stack.sims(1, opts.max_number)
        stack.ready(stack.add(processes.echo(stack.logdir, broker.port)))
        mqtt = stack.ready(
            stack.add(
                processes.loadgen(
                    stack.logdir, "loadgen", "--port", str(broker.port), "--inflight", "1"
                )
            )
        )
        coap = stack.ready(
            stack.add(
                processes.loadgen(
                    stack.logdir, "coapgen", "--mode", "coap", "--coap-ports", str(port)
                )
            )
        )
        out: dict[str, Any] = {}
        for name, load, target in (("mqtt", mqtt, "echo"), ("coap", coap, None)):
            load.ask({"cmd": "run", "count": 200, "max_seconds": opts.max_seconds}, 120)
            out[name] = measure(stack, load, opts.floor_samples, opts.max_seconds, target)
    floor = {}
    for key in ("p50_ms", "p99_ms", "p99.9_ms", "mean_ms"):
        floor[key] = round(out["mqtt"]["latency"][key] + out["coap"]["latency"][key], 4)
    return {"mqtt_rtt": out["mqtt"], "coap_rtt": out["coap"], "floor": floor}


def _start_target(
    stack: Stack, kind: str, broker_port: int, ports: list[int], opts: Options
) -> tuple[Child, tuple[str, ...]]:
    if kind == "bridge":
        config = processes.bridge_config(
            ports, broker_port, client_id="iotbridge-bench", max_number=opts.max_number
        )
        return stack.add(processes.bridge(stack.logdir, config)), config.prefixes
    prefixes: tuple[str, ...] = ()
    child = stack.ready(stack.add(processes.minimal(stack.logdir, broker_port, ports, prefixes)))
    return child, prefixes


@contextlib.contextmanager
def _setup(
    opts: Options, name: str, kind: str, inflight: int, transmitters: int, pagers: int
) -> Iterator[tuple[Stack, Child, Child, list[int]]]:
    with Stack(opts.logdir / name / kind) as stack:
        broker = stack.broker()
        ports = stack.sims(transmitters, opts.max_number)
        target, prefixes = _start_target(stack, kind, broker.port, ports, opts)
        args = ["--port", str(broker.port), "--inflight", str(inflight), "--pagers", str(pagers)]
        load = stack.ready(
            stack.add(
                processes.loadgen(stack.logdir, "loadgen", *args, "--prefixes", ",".join(prefixes))
            )
        )
        if kind == "bridge":
            load.ask({"cmd": "online", "timeout": READY_TIMEOUT}, READY_TIMEOUT + 5)
        yield stack, target, load, ports


def load_scenario(
    opts: Options, kind: str, inflight: int, transmitters: int, *, profiled: bool = False
) -> dict[str, Any]:
    """`kind` (bridge|minimal) under `inflight` commands at once across `transmitters` sims."""
    name = f"inflight{inflight}-tx{transmitters}" + ("-profile" if profiled else "")
    with _setup(opts, name, kind, inflight, transmitters, opts.pagers) as setup:
        stack, target, load, _ = setup
        count = opts.count(inflight)
        load.ask({"cmd": "run", "count": opts.warmup(inflight), "max_seconds": 60}, 120)
        during = None
        if profiled and opts.profile_out is not None:
            during = profile.attach(target.pid, opts.profile_out)
        return measure(stack, load, count, opts.max_seconds, target.name, during)


def sessions_scenario(opts: Options, kind: str, inflight: int, sessions: int) -> dict[str, Any]:
    """Cost per command with few sessions active, then with `sessions` active, same process.

    A pager has a session in 3 of its cycle's 4 steps, so 4/3 x FEW_SESSIONS pagers keep about
    FEW_SESSIONS active. There must also be idle pagers beyond the window: with exactly as many
    pagers as commands in flight, each answered pager is sent its next command at once, which
    then waits in the bridge for its predecessor's acknowledgement (same pager, same lane), so
    the window would measure that wait instead of the number of sessions.
    """
    pagers = max(-(-4 * FEW_SESSIONS // 3), -(-4 * inflight // 3))
    out: dict[str, Any] = {}
    with _setup(opts, f"sessions{sessions}", kind, inflight, 1, pagers) as setup:
        stack, target, load, ports = setup
        count = opts.commands // 2
        load.ask({"cmd": "run", "count": opts.warmup(inflight), "max_seconds": 60}, 120)
        out["few"] = measure(stack, load, count, opts.max_seconds, target.name)
        out["few"]["active_sessions"] = 3 * pagers // 4
        creator = stack.ready(
            stack.add(
                processes.loadgen(
                    stack.logdir, "creator", "--mode", "coap", "--coap-ports", str(ports[0])
                )
            )
        )
        # Numbers above the load's pagers, so that about `sessions` are active in all.
        total = sessions + pagers - 3 * pagers // 4
        out["created"], out["settle_s"] = create_sessions(creator, target.pid, pagers, total)
        load.ask({"cmd": "run", "count": opts.warmup(inflight), "max_seconds": 60}, 120)
        out["many"] = measure(stack, load, count, opts.max_seconds, target.name)
        out["many"]["active_sessions"] = sessions
    return out


def create_sessions(creator: Child, pid: int, first: int, total: int) -> tuple[int, float]:
    """Start sessions first+1..total at the simulator, in chunks the target can follow.

    The bridge hears of each one as an Observe notification and keeps at most 1000 of them
    unconsumed (bridge/coap/client.py OBSERVE_BACKLOG); a faster burst makes it drop the observation
    and re-read the whole list, which would then land in the measured window. So the sessions
    go in chunks well below that, each followed by a wait until the target is quiet again.
    Returns (sessions created, seconds spent waiting for quiet).
    """
    created, waited, number = 0, 0.0, first + 1
    while number <= total:
        count = min(CREATE_CHUNK, total - number + 1)
        reply = creator.ask({"cmd": "create", "first": number, "count": count}, 600)
        created += int(reply["created"])
        waited += settle(pid)
        number += count
    return created, round(waited, 1)


def settle(pid: int, quiet: float = 0.05, limit: float = SETTLE_LIMIT) -> float:
    """Wait until `pid` stays under `quiet` CPU s/s for a second; return seconds waited."""
    started = time.monotonic()
    last, calm = procstat.cpu_seconds(pid), 0
    while time.monotonic() - started < limit and calm < 4:
        time.sleep(0.25)
        now = procstat.cpu_seconds(pid)
        calm = calm + 1 if now - last < quiet / 4 else 0
        last = now
    return time.monotonic() - started
