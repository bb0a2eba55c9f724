"""The tests' second broker: aedes (Node.js, MQTT 3.1.1) in a child process on loopback ports.

The same shape as `bridge.dev.mosquitto.Mosquitto` (`port`, `start()`, `stop()`, `kill()`,
`restart()`
on the same ports, a context manager), plus `ws_port` (MQTT over WebSockets at `ws_path`) and,
given a certificate and key, `wss_port` (over TLS). The broker itself is
`tests/brokers/aedes.mjs` on the aedes and ws packages from the project's package.json
(`npm ci`, run by scripts/setup).

aedes keeps sessions in memory: while the process lives, a persistent (clean session 0) client's
subscriptions and queued QoS 1 messages wait for it; `kill()` or `restart()` forgets them all.
The child's stdout (`log()`) says when each client connected or was refused.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from bridge.dev.mosquitto import free_port

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "tests" / "brokers" / "aedes.mjs"
NEEDED = ("aedes", "ws")  # node_modules the launcher imports


class Aedes:
    """Start, kill and restart aedes on loopback: TCP, WebSockets and optionally WSS."""

    def __init__(
        self,
        port: int = 0,
        *,
        ws_port: int = 0,
        ws_path: str = "/mqtt",
        tls: tuple[str, str] | None = None,
        wss_port: int = 0,
        node: str | None = None,
    ) -> None:
        """`tls` is (certificate, key) PEM paths: a WSS listener is opened on `wss_port` too."""
        self.port = port or free_port()
        self.ws_port = ws_port or free_port()
        self.ws_path = ws_path
        self.tls = tls
        self.wss_port = (wss_port or free_port()) if tls is not None else None
        self.node = node or shutil.which("node")
        self._dir = Path(tempfile.mkdtemp(prefix="iotbridge-aedes-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self._dir / "aedes.log"

    def log(self) -> str:
        """Everything the broker printed so far, across restarts."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_logged(self, text: str, timeout: float = 10.0) -> None:
        """Block until the broker has printed `text` (run it in a thread from async code)."""
        end = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > end:
                raise TimeoutError(f"aedes did not log {text!r} within {timeout} s: {self.log()}")
            time.sleep(0.02)

    def command(self) -> list[str]:
        if self.node is None:
            raise FileNotFoundError("node not found on PATH: install Node.js 20 or later")
        missing = [name for name in NEEDED if not (ROOT / "node_modules" / name).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"node_modules/{', '.join(missing)} missing in {ROOT}: run `npm ci` (scripts/setup)"
            )
        args = [self.node, str(LAUNCHER), "--tcp", str(self.port), "--ws", str(self.ws_port)]
        args += ["--ws-path", self.ws_path]
        if self.tls is not None:
            args += ["--wss", str(self.wss_port), "--cert", self.tls[0], "--key", self.tls[1]]
        return args

    def start(self, timeout: float = 10.0) -> Self:
        args = self.command()
        with self.log_path.open("ab") as out:
            start = out.tell()
            self.process = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(start, timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self, start: int, timeout: float) -> None:
        """Until the launcher prints its ready line (every listener is up) or exits."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.log_path.open("rb") as out:
                out.seek(start)
                printed = out.read().decode(errors="replace")
            if "aedes ready" in printed:
                return
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"aedes exited at start: {printed.strip()}")
            time.sleep(0.02)
        raise TimeoutError(f"aedes did not get ready within {timeout} s: {self.log()}")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as in a crash; every session is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def restart(self) -> None:
        """Kill and start again on the same ports (with no memory of the previous run)."""
        self.kill()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.cleanup()  # no broker and no temporary directory left behind
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
