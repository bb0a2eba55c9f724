"""Benchmark the bridge against the bare MQTT + CoAP round trips and a minimal reference bridge.

    .venv/bin/python -m benchmarks.run                 # defaults: about 4 minutes on 2 cores
    .venv/bin/python -m benchmarks.run --commands 20000 --inflight 1,100 --pagers 200 \\
        --transmitters 1,20 --sessions 10000 --out benchmarks/results/<date>.json

Every part is its own process on loopback: Mosquitto (bridge.dev.mosquitto settings, Nagle off), one
T7470 simulator per transmitter, the system under test (`python -m bridge run`, or
benchmarks/minimal_bridge.py) and the load generator (benchmarks/loadgen.py). See
docs/performance.md for what is measured and the targets.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import procstat, profile, report, scenarios
from benchmarks.scenarios import Options

DEFAULT_OUT = Path("benchmarks/results/latest.json")


def _ints(text: str) -> list[int]:
    return sorted({int(part) for part in text.split(",") if part.strip()})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--commands", type=int, default=6_000, help="per measured window with >1 in flight")
    add("--serial-commands", type=int, default=2_000, help="per measured window at 1 in flight")
    add("--floor-samples", type=int, default=3_000, help="round trips per floor measurement")
    add("--inflight", type=_ints, default=[1, 100], help="commands in flight (list)")
    add("--transmitters", type=_ints, default=[1, 20, 100], help="transmitters (list)")
    add(
        "--all-pairs",
        action="store_true",
        help="every in-flight x transmitters pair (default: the lowest in flight on 1"
        " transmitter, the highest on each transmitter count)",
    )
    add("--pagers", type=int, default=200, help="pagers the load cycles over (>= in flight)")
    add("--sessions", type=int, default=10_000, help="active sessions in the sessions scenario")
    add("--max-seconds", type=float, default=60.0, help="time bound of each measured window")
    add("--minimal-sessions", action="store_true", help="sessions scenario for the reference too")
    add("--profile", action="store_true", help="also profile the bridge with py-spy")
    add("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    add("--logdir", type=Path, help="child process logs (default: a temporary directory)")
    return parser


def _pairs(args: argparse.Namespace) -> list[tuple[int, int]]:
    if args.all_pairs:
        return list(itertools.product(args.inflight, args.transmitters))
    low, high = min(args.inflight), max(args.inflight)
    pairs = [(low, min(args.transmitters))]
    pairs += [(high, t) for t in args.transmitters if (high, t) not in pairs]
    return pairs


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logdir = args.logdir or Path(tempfile.mkdtemp(prefix="iotbridge-bench-"))
    opts = Options(
        commands=args.commands,
        serial_commands=args.serial_commands,
        floor_samples=args.floor_samples,
        pagers=max(args.pagers, *args.inflight),
        max_seconds=args.max_seconds,
        logdir=logdir,
        profile_out=args.out.with_name(f"{args.out.stem}-profile.txt") if args.profile else None,
    )
    started = time.monotonic()
    machine = procstat.machine()
    print("machine:", ", ".join(f"{k}={v}" for k, v in machine.items()))
    print(f"logs: {logdir}")
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
        "machine": machine,
        "options": {k: str(v) for k, v in vars(args).items()},
    }
    print("floor: MQTT echo round trip, CoAP round trip ...", flush=True)
    results["floor"] = scenarios.floors(opts)
    results["scenarios"] = []
    for inflight, transmitters in _pairs(args):
        scenario: dict[str, Any] = {
            "name": f"{inflight} inflight/{transmitters} tx",
            "inflight": inflight,
            "transmitters": transmitters,
        }
        for kind in ("bridge", "minimal"):
            print(f"{scenario['name']}: {kind} ...", flush=True)
            scenario[kind] = scenarios.load_scenario(opts, kind, inflight, transmitters)
            if "skipped" in scenario[kind]:
                print(f"  {scenario[kind]['skipped']}")
        results["scenarios"].append(scenario)
    if args.sessions:
        top = max(args.inflight)
        kinds = ("bridge", "minimal") if args.minimal_sessions else ("bridge",)
        results["sessions"] = {}
        for kind in kinds:
            few = max(top, scenarios.FEW_SESSIONS)
            print(f"sessions {few} -> {args.sessions}: {kind} ...", flush=True)
            results["sessions"][kind] = scenarios.sessions_scenario(opts, kind, top, args.sessions)
    if args.profile:
        print("profile: bridge under load with py-spy (not a measured window) ...", flush=True)
        # At the transmitter count of the throughput and CPU targets (20) when it is measured.
        tx = 20 if 20 in args.transmitters else max(args.transmitters)
        window = scenarios.load_scenario(opts, "bridge", max(args.inflight), tx, profiled=True)
        path = args.out.with_name(f"{args.out.stem}-profile.txt")
        results["profile"] = {"window": window, "raw": str(path)}
        if path.exists():
            results["profile"] |= profile.hot_spots(path)
    report.add_ratios(results)
    results["targets"] = report.targets(results)
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print()
    print(report.table(results))
    print()
    print(report.targets_table(results["targets"]))
    for line in report.warnings(results):
        print(line)
    if "profile" in results and "self_percent" in results["profile"]:
        print()
        print(profile.summary(results["profile"]))
    print(f"\nresults: {args.out} ({results['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
