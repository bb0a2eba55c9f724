"""`iotbridge` command line: run, check-config, schema, sim pager|sensaphone, demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import yaml

from bridge import __version__, config
from bridge.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: str = args.command
    try:
        if command == "run":
            return _run()
        if command == "check-config":
            return _check_config()
        if command == "schema":
            return _schema(Path(args.out), check=args.check)
        if command == "sim":
            return _sim(args)
        if command == "demo":
            from bridge.demo import run_demo  # noqa: PLC0415 - only the demo needs it

            return run_demo(mqtt_port=args.mqtt_port, http_port=args.http_port)
    except ConfigError as exc:
        print(f"iotbridge: {exc.message}", file=sys.stderr)  # noqa: T201
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iotbridge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"iotbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the bridge (configuration: IOTBRIDGE_CONFIG + IOTBRIDGE_*)")
    sub.add_parser("check-config", help="validate and print the effective configuration")
    schema = sub.add_parser("schema", help="write the JSON Schemas of every MQTT payload")
    schema.add_argument("--out", default="schemas", help="directory (default: schemas)")
    schema.add_argument("--check", action="store_true", help="fail if the files differ")
    sim = sub.add_parser("sim", help="run an upstream simulator")
    kinds = sim.add_subparsers(dest="kind", required=True)
    pager = kinds.add_parser("pager", help="LRS T7470 over CoAP/UDP")
    pager.add_argument("--host", default="127.0.0.1")
    pager.add_argument("--port", type=int, default=5683)
    pager.add_argument("--max-number", type=int, default=999)
    pager.add_argument("--ping-interval", type=float, default=30.0)
    pager.add_argument("--latency", type=float, default=0.0, help="seconds added to each reply")
    pager.add_argument(
        "--count", type=int, default=1, help="this many transmitters, on consecutive ports"
    )
    sens = kinds.add_parser("sensaphone", help="Sensaphone.net REST API over HTTP(S)")
    sens.add_argument("--host", default="127.0.0.1")
    sens.add_argument("--port", type=int, default=8443)
    sens.add_argument("--session-lifetime", type=float, default=3600.0)
    sens.add_argument("--latency", type=float, default=0.0)
    sens.add_argument("--cert", help="TLS certificate (PEM); serves HTTPS when given")
    sens.add_argument("--key", help="TLS private key (PEM)")
    demo = sub.add_parser("demo", help="broker, both simulators and the bridge in one command")
    demo.add_argument("--mqtt-port", type=int, default=1883, help="0 or taken: pick a free one")
    demo.add_argument("--http-port", type=int, default=9464)
    return parser


def _run() -> int:
    settings = config.load()  # first: a bad value is reported before anything else happens
    from bridge import logs  # noqa: PLC0415 - keep `iotbridge --help` light
    from bridge.app import Bridge  # noqa: PLC0415

    logs.configure(settings.log.level, settings.log.format, config.secrets_of(settings))
    run_loop(Bridge(settings).run(), settings.event_loop)
    return 0


def run_loop(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """Run `main` on uvloop if asked for and installed, else on asyncio's own loop."""
    if event_loop == "uvloop":
        try:
            import uvloop  # noqa: PLC0415 - optional: not built for every platform
        except ImportError:
            logging.getLogger(__name__).warning("uvloop is not installed; using asyncio's loop")
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def _check_config() -> int:
    settings = config.load()
    text = yaml.safe_dump(config.redacted(settings), sort_keys=False, default_flow_style=False)
    print(text, end="")  # noqa: T201
    return 0


def _schema(out: Path, *, check: bool) -> int:
    from bridge import schema  # noqa: PLC0415

    if check:
        drifted = schema.drift(out)
        for name in drifted:
            print(f"{out / name} differs from the models; run `iotbridge schema`", file=sys.stderr)  # noqa: T201
        return 1 if drifted else 0
    for path in schema.write(out):
        print(path)  # noqa: T201
    return 0


def _sim(args: argparse.Namespace) -> int:
    if args.kind == "pager":
        from bridge.sim import pager  # noqa: PLC0415

        coro = pager.serve(
            args.host, args.port, args.max_number, args.ping_interval, args.latency, args.count
        )
        asyncio.run(coro)
        return 0
    from bridge.sim import sensaphone  # noqa: PLC0415

    sensaphone.serve(args.host, args.port, args.session_lifetime, args.latency, args.cert, args.key)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
