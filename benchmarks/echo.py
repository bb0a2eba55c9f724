"""The MQTT floor's responder: republishes every `pager/+/action` payload on `<topic>/result`.

QoS 1 both ways through the same broker, so load generator -> echo -> load generator is the
MQTT request/response round trip a bridge cannot beat. It speaks MQTT the way the bridge does:
paho-mqtt driven on the event loop by the bridge's own glue (benchmarks/mqttclient.py), uvloop
by default, at most RECEIVE_MAXIMUM commands unacknowledged, each command acknowledged only
once the broker has acknowledged its result. Prints `ready` once subscribed.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from benchmarks.mqttclient import BareMqtt
from bridge.cli import run_loop

RECEIVE_MAXIMUM = 100  # as the bridge's MQTT link (bridge/mqtt/link.py)


class Echo:
    """Each command's result published from paho's callback; no task or future per message."""

    def __init__(self) -> None:
        self.mqtt = BareMqtt(
            f"bench-echo-{os.getpid()}",
            self._command,
            on_published=self._published,
            window=RECEIVE_MAXIMUM,
            receive_maximum=RECEIVE_MAXIMUM,
            manual_ack=True,
        )
        self._commands: dict[int, int] = {}  # our result's mid -> the command's mid

    def _command(self, topic: str, payload: bytes, mid: int) -> None:
        self._commands[self.mqtt.publish(f"{topic}/result", payload)] = mid

    def _published(self, mid: int) -> None:
        command = self._commands.pop(mid, None)
        if command is not None:
            self.mqtt.ack(command)


async def serve(broker_port: int) -> None:
    echo = Echo()
    await echo.mqtt.connect(broker_port)
    await echo.mqtt.subscribe(["pager/+/action"])
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()  # until the harness terminates us
    finally:
        echo.mqtt.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.echo", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="broker port")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args(argv)
    run_loop(serve(args.port), args.loop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
