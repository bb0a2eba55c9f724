"""`iotbridge demo` as a user runs it: the banner, and a stop signal that leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.broker


def _children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="utf-8")
    except OSError:
        return set()
    return {int(child) for child in text.split()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `nohup ... &` from a script leaves


@pytest.mark.parametrize(
    ("stop", "nohup"),
    [(signal.SIGTERM, False), (signal.SIGHUP, False), (signal.SIGINT, True)],
    ids=["sigterm", "sighup", "sigint-under-nohup"],
)
def test_a_stop_signal_stops_every_child_and_cleans_up(stop: int, nohup: bool) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("IOTBRIDGE_")}
        demo = subprocess.Popen(
            [sys.executable, "-m", "bridge", "demo", "--mqtt-port", str(busy), "--http-port", "0"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            preexec_fn=_ignore_sigint if nohup else None,  # noqa: PLW1509 - before exec only
        )
        try:
            assert demo.stdout is not None
            banner = ""
            while "Add a time range" not in banner:
                line = demo.stdout.readline()
                assert line, f"the demo ended early: {banner}"
                banner += line
            assert f"(port {busy} is taken, so the broker listens on" in banner
            http_port = int(re.search(r"http://127.0.0.1:(\d+)/metrics", banner)[1])  # type: ignore[index]
            config = Path(re.search(r"config (\S+)\)", banner)[1])  # type: ignore[index]
            end = time.monotonic() + 20
            while not _ready(http_port):
                assert time.monotonic() < end, "the demo's bridge never became ready"
                time.sleep(0.1)
            children = _children(demo.pid)
            assert len(children) == 4  # Mosquitto, two simulators, the bridge
            demo.send_signal(stop)
            assert demo.wait(15) == 0
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
    assert [pid for pid in children if _alive(pid)] == []
    assert not config.parent.exists()
    assert not _ready(http_port)
