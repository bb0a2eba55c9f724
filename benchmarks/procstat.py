"""What the kernel says about a process and the machine, read from /proc (no psutil needed)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads), in seconds; 10 ms resolution at 100 Hz."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / TICKS


def memory_mb(pid: int) -> dict[str, float]:
    """VmHWM (peak resident set) and VmRSS (current) of `pid`, in MiB."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            found[key] = int(value.split()[0]) / 1024
    return found


def machine() -> dict[str, object]:
    """The facts a reader needs to compare figures across machines."""
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    mhz = re.search(r"^cpu MHz\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model.group(1).strip() if model else "unknown",
        "cpu_mhz": float(mhz.group(1)) if mhz else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mosquitto": _mosquitto_version(),
        "aiomqtt": metadata.version("aiomqtt"),
        "paho-mqtt": metadata.version("paho-mqtt"),
        "aiocoap": metadata.version("aiocoap"),
        "msgspec": metadata.version("msgspec"),
        "uvloop": metadata.version("uvloop"),
        "iotbridge": metadata.version("iotbridge"),
    }


def _mosquitto_version() -> str:
    from bridge.dev.mosquitto import MOSQUITTO  # noqa: PLC0415 - keep this module free of bridge

    try:
        done = subprocess.run(
            [MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5, check=False
        )
    except OSError:
        return "not found"
    first = (done.stdout or done.stderr).splitlines()[:1]
    return first[0].removeprefix("mosquitto version ").strip() if first else "unknown"
