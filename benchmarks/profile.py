"""py-spy on the bridge during a window, and the hot spots read from its collapsed stacks.

py-spy samples the process from outside (ptrace), so the bridge runs unmodified; it does slow
the bridge down, which is why the profiled window is separate from the measured ones.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

RATE = 100  # samples per second
# Frames every sample has (interpreter start-up, the event loop): left out of the inclusive list.
_WRAPPERS = (
    "<frozen runpy>",
    "bridge/cli.py",
    "bridge/__main__.py",
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "asyncio/events.py",
    "uvloop/__init__.py",  # uvloop.run(), the bridge's default loop (bridge/cli.py)
)
_WRAPPERS_SUFFIXES = tuple(f"({w})" for w in _WRAPPERS)
_IDLE = "EpollSelector.select (selectors.py)"


def executable() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def attach(pid: int, out: Path) -> Callable[[], Callable[[], None]]:
    """A starter for `measure(during=...)`: records until the returned stop() is called."""

    def start() -> Callable[[], None]:
        spy = executable()
        if spy is None:
            print("py-spy not installed: no profile (pip install py-spy)")
            return lambda: None
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [spy, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw"]
        process = subprocess.Popen(
            [*argv, "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def stop() -> None:
            process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

        return stop

    return start


def hot_spots(collapsed: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares per function, and self share per file, of the busy samples.

    Samples whose innermost frame is the selector's poll are the loop waiting, not work: they
    are counted apart (`idle_percent`) and every other share is of the busy samples only.
    """
    own: collections.Counter[str] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    busy = idle = 0
    for line in collapsed.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        if frames[-1] == _IDLE:
            idle += count
            continue
        busy += count
        own[frames[-1]] += count
        files[frames[-1].partition(" (")[2].rstrip(")")] += count
        for frame in set(frames):
            if not frame.endswith(_WRAPPERS_SUFFIXES):
                inclusive[frame] += count
    if not busy:
        return {"samples": idle, "busy_samples": 0}

    def shares(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / busy, 1)) for name, n in counter.most_common(top)]

    return {
        "samples": busy + idle,
        "busy_samples": busy,
        "idle_percent": round(100 * idle / (busy + idle), 1),
        "self_percent": shares(own),
        "self_by_file_percent": shares(files),
        "inclusive_percent": shares(inclusive),
    }


def _frame(frame: str) -> str:
    """`publish (aiomqtt/client.py:123)` -> `publish (aiomqtt/client.py)`, paths shortened."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"


def summary(spots: dict[str, Any]) -> str:
    """The hot spots as text: self time (where the CPU is) and inclusive (who causes it)."""
    head = f"profile: {spots['samples']} samples, {spots['idle_percent']} % waiting in epoll;"
    lines = [head + " shares below are of the busy samples"]
    for title, key in (
        ("self % (where the CPU goes)", "self_percent"),
        ("self % by file", "self_by_file_percent"),
        ("inclusive % (who causes it)", "inclusive_percent"),
    ):
        lines.append(f"  {title}:")
        lines.extend(f"    {share:5.1f}  {name}" for name, share in spots[key])
    return "\n".join(lines)
