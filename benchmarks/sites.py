"""What many sites cost one bridge process: start-up, memory, idle CPU, and CPU per command.

    .venv/bin/python -m benchmarks.sites --sites 100,1000 --out benchmarks/results/sites.json

For each site count N: Mosquitto (the bridge's settings), N simulated transmitters on
consecutive ports spread over a few simulator processes (`iotbridge sim pager --count`), and
one bridge process with N sites (`benchmarks/processes.py: bridge_config()`). Measured: seconds
from the bridge's start until every site's `bridge/state` is online; RSS then; the bridge's CPU
while idle (keepalives and the transmitters' Observe pings only) over `--idle-seconds`; and a
loaded window, `--inflight` commands at once spread over 2 pagers per site, with its rate and the
bridge's CPU per command. This is the measurement behind the sizing in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import processes, procstat
from benchmarks.processes import Child
from benchmarks.scenarios import Stack

PER_SIM_PROCESS = 250  # transmitters per simulator process
MAX_NUMBER = 20_000  # pager numbers go up to 2 x sites


def free_range(count: int, first: int = 20_000, last: int = 60_000) -> int:
    """The first port of `count` consecutive UDP ports that are free on 127.0.0.1."""
    base = first
    while base + count < last:
        taken = None
        for port in range(base, base + count):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    taken = port
                    break
        if taken is None:
            return base
        base = taken + 1
    raise RuntimeError(f"no {count} consecutive free UDP ports")


def fleet(stack: Stack, count: int) -> list[int]:
    """`count` simulated transmitters in processes of PER_SIM_PROCESS; their ports."""
    base = free_range(count)
    ports = list(range(base, base + count))
    for index, first in enumerate(range(0, count, PER_SIM_PROCESS)):
        size = min(PER_SIM_PROCESS, count - first)
        argv = [processes.PYTHON, "-m", "bridge", "sim", "pager", "--port", str(base + first)]
        argv += ["--count", str(size), "--max-number", str(MAX_NUMBER), "--event-loop", "uvloop"]
        child = stack.add(Child(f"sim-{index}", argv, stack.logdir))
        processes.wait_udp_bound(child, base + first + size - 1, timeout=60)
    return ports


def measure(sites: int, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    with Stack(logdir / f"sites{sites}") as stack:
        broker = stack.broker()
        ports = fleet(stack, sites)
        config = processes.bridge_config(
            ports, broker.port, client_id="iotbridge-sites", max_number=MAX_NUMBER
        )
        pagers = 2 * sites
        load_args = ["--port", str(broker.port), "--inflight", str(args.inflight)]
        load_args += ["--pagers", str(pagers), "--prefixes", ",".join(config.prefixes)]
        load = stack.ready(stack.add(processes.loadgen(stack.logdir, "loadgen", *load_args)))
        started = time.monotonic()
        bridge = stack.add(processes.bridge(stack.logdir, config))
        online = load.ask({"cmd": "online", "count": sites, "timeout": 300}, 310)
        startup = time.monotonic() - started
        time.sleep(2)  # the first full reads of every transmitter
        before = procstat.cpu_seconds(bridge.pid)
        time.sleep(args.idle_seconds)
        idle = (procstat.cpu_seconds(bridge.pid) - before) / args.idle_seconds
        settled = procstat.memory_mb(bridge.pid)
        warm = max(200, args.commands // 10)
        load.ask({"cmd": "run", "count": warm, "max_seconds": 120}, 180)
        before = procstat.cpu_seconds(bridge.pid)
        window = load.ask({"cmd": "run", "count": args.commands, "max_seconds": 120}, 180)
        used = procstat.cpu_seconds(bridge.pid) - before
        answered = max(1, window["commands"])
        return {
            "sites": sites,
            "online": online["online"],
            "startup_s": round(startup, 2),
            "rss_mb_idle": round(settled["VmRSS"], 1),
            "rss_mb_per_site": round(settled["VmRSS"] / sites, 3),
            "idle_cpu_percent": round(100 * idle, 2),
            "idle_cpu_ms_per_site_per_s": round(1000 * idle / sites, 4),
            "load": {
                "inflight": args.inflight,
                "per_second": window["per_second"],
                "errors": window["errors"],
                "timeouts": window["timeouts"],
                "latency": window["latency"],
                "bridge_cpu_ms_per_command": round(1000 * used / answered, 4),
                "rss_mb_peak": round(procstat.memory_mb(bridge.pid)["VmHWM"], 1),
            },
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sites", description=__doc__)
    parser.add_argument("--sites", default="100,1000", help="site counts (comma-separated)")
    parser.add_argument("--inflight", type=int, default=100)
    parser.add_argument("--commands", type=int, default=6000)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sites-latest.json"))
    args = parser.parse_args(argv)
    logdir = Path(tempfile.mkdtemp(prefix="iotbridge-sites-"))
    results: dict[str, Any] = {"machine": procstat.machine(), "runs": []}
    for sites in [int(n) for n in args.sites.split(",") if n.strip()]:
        print(f"{sites} sites ...", flush=True)
        run = measure(sites, args, logdir)
        results["runs"].append(run)
        load = run["load"]
        print(
            f"  online {run['online']} in {run['startup_s']} s; RSS {run['rss_mb_idle']} MB"
            f" ({run['rss_mb_per_site']} MB/site); idle CPU {run['idle_cpu_percent']} %;"
            f" under load {load['per_second']} cmd/s at {load['bridge_cpu_ms_per_command']}"
            f" ms CPU/cmd, p50 {load['latency']['p50_ms']:.1f} ms,"
            f" peak RSS {load['rss_mb_peak']} MB,"
            f" errors {load['errors']}, timeouts {load['timeouts']}",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"results: {args.out}; logs: {logdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
