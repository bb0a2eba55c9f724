"""Child processes of a benchmark run, and the one place that configures the bridge under test.

Every part runs as its own process (broker, simulators, bridge or reference, load generator), so
each one's CPU time and memory can be read from /proc and nothing shares an event loop.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from bridge.dev.mosquitto import free_port

PYTHON = sys.executable


class BridgeConfig(NamedTuple):
    """How to start the bridge: environment, YAML for IOTBRIDGE_CONFIG (may be empty), and the
    site topic prefixes the load generator must publish under (empty: no prefix)."""

    env: dict[str, str]
    yaml_text: str
    prefixes: tuple[str, ...] = ()


def bridge_config(
    transmitter_ports: list[int], broker_port: int, *, client_id: str, max_number: int
) -> BridgeConfig:
    """The bridge's configuration for these transmitters.

    One transmitter: the plain single-site configuration. Several: one process with one site per
    transmitter (`sites:` in the YAML), site i with topic prefix f"site{i}"; pager n belongs to
    site n mod len(ports) (the load generator and the reference bridge agree).
    """
    env = {
        "IOTBRIDGE_MQTT_URL": f"mqtt://127.0.0.1:{broker_port}",
        "IOTBRIDGE_MQTT_CLIENT_ID": client_id,
        "IOTBRIDGE_PAGER_URL": f"coap://127.0.0.1:{transmitter_ports[0]}",
        "IOTBRIDGE_PAGER_MAX_NUMBER": str(max_number),
        "IOTBRIDGE_HTTP_ADDR": "127.0.0.1:0",
        # The benchmarks measure capacity: the per-site rate limit (1,000 commands/s by default,
        # a policy against floods) would cap the throughput scenario at the limit instead.
        "IOTBRIDGE_LIMITS_RATE": "0",
    }
    if len(transmitter_ports) == 1:
        return BridgeConfig(env, "")
    del env["IOTBRIDGE_PAGER_URL"], env["IOTBRIDGE_PAGER_MAX_NUMBER"]
    lines = ["sites:"]
    for i, port in enumerate(transmitter_ports):
        lines.append(f"  - name: site{i}")
        lines.append(f'    pager: {{url: "coap://127.0.0.1:{port}", max_number: {max_number}}}')
    prefixes = tuple(f"site{i}" for i in range(len(transmitter_ports)))
    return BridgeConfig(env, "\n".join(lines) + "\n", prefixes)


class Child:
    """A child process whose stdout is read line by line on a thread (for `ready` and replies).

    stderr goes to `<logdir>/<name>.log`, so a failure can be looked into afterwards.
    """

    def __init__(
        self, name: str, argv: list[str], logdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._lines: queue.Queue[str | None] = queue.Queue()
        base = {k: v for k, v in os.environ.items() if not k.startswith("IOTBRIDGE_")}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=base | (env or {}),
                text=True,
            )
        threading.Thread(target=self._pump, name=f"{name}-stdout", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def line(self, timeout: float) -> str:
        """The next line of stdout; RuntimeError if the process ended or `timeout` passed."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.name}: no output within {timeout:g} s") from None
        if line is None:
            raise RuntimeError(f"{self.name} exited ({self.process.poll()}); see {self.log_path}")
        return line.strip()

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one JSON command line, return the JSON reply line."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply: dict[str, Any] = json.loads(self.line(timeout))
        return reply

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()


def pager_sim(logdir: Path, index: int, max_number: int) -> tuple[Child, int]:
    port = free_port(socket.SOCK_DGRAM)
    argv = [PYTHON, "-m", "bridge", "sim", "pager", "--port", str(port)]
    # uvloop: the simulator's cheaper aiocoap transport. The simulator is on the same 2 cores
    # as what is measured, for the bridge and the reference alike.
    argv += ["--max-number", str(max_number), "--event-loop", "uvloop"]
    return Child(f"sim-{index}", argv, logdir), port


def wait_udp_bound(child: Child, port: int, timeout: float = 20.0) -> None:
    """The simulator prints nothing when ready: wait until /proc/net/udp* shows its port bound.

    (Probing by binding the port ourselves could race with the simulator's own bind.)
    """
    needle = f":{port:04X} "
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited; see {child.log_path}")
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            rows = Path(table).read_text(encoding="ascii").splitlines()[1:]
            if any(needle in row.split(None, 2)[1] + " " for row in rows):
                return
        time.sleep(0.05)
    raise RuntimeError(f"{child.name} did not bind UDP {port} within {timeout:g} s")


def bridge(logdir: Path, config: BridgeConfig) -> Child:
    env = dict(config.env)
    if config.yaml_text:
        path = logdir / "bridge.yaml"
        path.write_text(config.yaml_text, encoding="utf-8")
        env["IOTBRIDGE_CONFIG"] = str(path)
    return Child("bridge", [PYTHON, "-m", "bridge", "run"], logdir, env)


def minimal(logdir: Path, broker_port: int, ports: list[int], prefixes: tuple[str, ...]) -> Child:
    argv = [PYTHON, "-m", "benchmarks.minimal_bridge", "--port", str(broker_port)]
    argv += ["--coap-ports", ",".join(map(str, ports)), "--prefixes", ",".join(prefixes)]
    return Child("minimal", argv, logdir)


def echo(logdir: Path, broker_port: int) -> Child:
    return Child("echo", [PYTHON, "-m", "benchmarks.echo", "--port", str(broker_port)], logdir)


def loadgen(logdir: Path, name: str, *args: str) -> Child:
    return Child(name, [PYTHON, "-m", "benchmarks.loadgen", *args], logdir)
