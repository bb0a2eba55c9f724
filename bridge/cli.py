"""`iotbridge`: an MQTT bridge for LRS T7470 guest pagers (CoAP) and Sensaphone.net schedules.

Commands: run, check-config, schema, sim pager|sensaphone, demo. `iotbridge <command> --help`
says what each does and which settings it reads.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import yaml

from bridge import __version__, config
from bridge.errors import ConfigError

CONFIG_HELP = """\
Configuration comes from a YAML file (--config, or IOTBRIDGE_CONFIG) and IOTBRIDGE_*
environment variables, the environment winning: every setting is
IOTBRIDGE_<SECTION>_<FIELD>, e.g. IOTBRIDGE_PAGER_TIMEOUT=5. The ones most deployments set:
  IOTBRIDGE_MQTT_URL          broker, mqtt://host:1883 (mqtts://, ws://, wss:// too)
  IOTBRIDGE_MQTT_CLIENT_ID    fixed id of the persistent session (default iotbridge-<host>)
  IOTBRIDGE_PAGER_URL         the T7470, coap://host:5683
  IOTBRIDGE_SENSAPHONE_URL, IOTBRIDGE_SENSAPHONE_USER, IOTBRIDGE_SENSAPHONE_PASSWORD(_FILE)
  IOTBRIDGE_TOPIC_PREFIX      prefix of every topic
  IOTBRIDGE_HTTP_ADDR         /metrics, /livez, /readyz (default 127.0.0.1:9464)
`iotbridge check-config` prints the effective settings; the README lists them all.
"""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The flags are the environment variables by another name (the environment is what
    # config.load() reads), so both spellings behave the same everywhere.
    if getattr(args, "config", None):
        os.environ["IOTBRIDGE_CONFIG"] = args.config
    if getattr(args, "log_level", None):
        os.environ["IOTBRIDGE_LOG_LEVEL"] = args.log_level
    commands: dict[str, Callable[[], int]] = {
        "run": _run,
        "check-config": _check_config,
        "schema": lambda: _schema(Path(args.out), check=args.check),
        "sim": lambda: _sim(args),
        "demo": lambda: _demo(args),
    }
    try:
        return commands[args.command]()
    except ConfigError as exc:
        for line in exc.message.splitlines():
            print(f"iotbridge: {line}", file=sys.stderr)  # noqa: T201
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iotbridge", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"iotbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = _command(
        sub,
        "run",
        "run the bridge until SIGTERM or Ctrl-C",
        "Connects to the broker, serves the commands of every configured site, republishes\n"
        "state, and serves /metrics, /livez and /readyz. SIGTERM drains in-flight commands,\n"
        "publishes offline and exits 0. A bad setting exits 2 with one line per mistake.",
    )
    run.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="same as IOTBRIDGE_LOG_LEVEL",
    )
    _command(
        sub,
        "check-config",
        "validate and print the effective configuration",
        "Prints the settings the bridge would use (defaults filled in, secrets as ***), or\n"
        "every mistake in them, one line each, with exit code 2.",
    )
    schema = sub.add_parser(
        "schema",
        help="write the JSON Schemas of every MQTT payload",
        description="Writes schemas/*.json and schemas/asyncapi.yaml from the models (--check:\n"
        "exit 1 if the committed files differ). Reads no configuration.",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    schema.add_argument("--out", default="schemas", help="directory (default: schemas)")
    schema.add_argument("--check", action="store_true", help="fail if the files differ")
    sim = sub.add_parser(
        "sim",
        help="run an upstream simulator",
        description="The simulators of both upstreams, for tests, the demo and trying the bridge\n"
        "without the hardware. Read no configuration: options only.",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    kinds = sim.add_subparsers(dest="kind", required=True)
    pager = kinds.add_parser(
        "pager",
        help="LRS T7470 over CoAP/UDP",
        description="An LRS T7470 transmitter over CoAP/UDP (aiocoap): sessions, history,\n"
        "statistics, settings, Observe. Point the bridge at it with\n"
        "IOTBRIDGE_PAGER_URL=coap://HOST:PORT.",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    pager.add_argument("--host", default="127.0.0.1")
    pager.add_argument("--port", type=int, default=5683)
    pager.add_argument("--max-number", type=int, default=999)
    pager.add_argument("--ping-interval", type=float, default=30.0)
    pager.add_argument("--latency", type=float, default=0.0, help="seconds added to each reply")
    pager.add_argument(
        "--count", type=int, default=1, help="this many transmitters, on consecutive ports"
    )
    pager.add_argument(
        "--event-loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="asyncio (aiocoap's udp6 transport: observers that vanish are dropped on the ICMP "
        "error) or uvloop (cheaper, simplesocketserver: dropped after retransmissions)",
    )
    sens = kinds.add_parser(
        "sensaphone",
        help="Sensaphone.net REST API over HTTP(S)",
        description="The Sensaphone.net REST API (login and schedule time ranges) over HTTP, or\n"
        "HTTPS with --cert/--key; the demo account is user 'demo', password\n"
        "'demo-password'. Point the bridge at it with\n"
        "IOTBRIDGE_SENSAPHONE_URL=https://HOST:PORT/api/v1, or for plain HTTP\n"
        "IOTBRIDGE_SENSAPHONE_URL=http://HOST:PORT/api/v1 and\n"
        "IOTBRIDGE_SENSAPHONE_ALLOW_INSECURE=true.",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    sens.add_argument("--host", default="127.0.0.1")
    sens.add_argument("--port", type=int, default=8443)
    sens.add_argument("--session-lifetime", type=float, default=3600.0)
    sens.add_argument("--latency", type=float, default=0.0)
    sens.add_argument("--cert", help="TLS certificate (PEM); serves HTTPS when given")
    sens.add_argument("--key", help="TLS private key (PEM)")
    demo = sub.add_parser(
        "demo",
        help="broker, both simulators and the bridge in one command",
        description="Starts Mosquitto, the T7470 and Sensaphone simulators and the bridge, each\n"
        "its own process, prints how to drive them, and stops them all on Ctrl-C, SIGTERM\n"
        "or SIGHUP. Ignores IOTBRIDGE_CONFIG: the demo configures its own bridge.",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    demo.add_argument("--mqtt-port", type=int, default=1883, help="0 or taken: pick a free one")
    demo.add_argument("--http-port", type=int, default=9464)
    return parser


def _command(sub: Any, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    """A subcommand that reads the configuration: --config, and the settings it honours."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=f"{description}\n\n{CONFIG_HELP}",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file; same as IOTBRIDGE_CONFIG")
    return parser


def _demo(args: argparse.Namespace) -> int:
    from bridge.dev.demo import run_demo  # noqa: PLC0415 - only the demo needs it

    return run_demo(mqtt_port=args.mqtt_port, http_port=args.http_port)


def _run() -> int:
    settings = config.load()  # first: a bad value is reported before anything else happens
    from bridge.app import Bridge  # noqa: PLC0415
    from bridge.ops import logs  # noqa: PLC0415 - keep `iotbridge --help` light

    logs.configure(settings.log.level, settings.log.format, config.secrets_of(settings))
    for warning in config.insecure(settings):
        logging.getLogger("bridge.config").warning("insecure: %s", warning)
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
    for warning in config.insecure(settings):
        print(f"warning: insecure: {warning}", file=sys.stderr)  # noqa: T201
    return 0


def _schema(out: Path, *, check: bool) -> int:
    from bridge.contract import documents  # noqa: PLC0415

    if check:
        drifted = documents.drift(out)
        for name in drifted:
            print(f"{out / name} differs from the models; run `iotbridge schema`", file=sys.stderr)  # noqa: T201
        return 1 if drifted else 0
    for path in documents.write(out):
        print(path)  # noqa: T201
    return 0


def _sim(args: argparse.Namespace) -> int:
    if args.kind == "pager":
        from bridge.sim.pager import server as pager  # noqa: PLC0415

        coro = pager.serve(
            args.host, args.port, args.max_number, args.ping_interval, args.latency, args.count
        )
        run_loop(coro, args.event_loop)
        return 0
    from bridge.sim.sensaphone import server as sensaphone  # noqa: PLC0415

    sensaphone.serve(args.host, args.port, args.session_lifetime, args.latency, args.cert, args.key)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
