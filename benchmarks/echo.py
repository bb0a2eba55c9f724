"""The MQTT floor's responder: republishes every `pager/+/action` payload on `<topic>/result`.

QoS 1 both ways through the same broker, so load generator -> echo -> load generator is the
MQTT request/response round trip a bridge cannot beat. Prints `ready` once subscribed.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import aiomqtt

NODELAY = ((6, 1, 1),)


async def serve(broker_port: int) -> None:
    tasks: set[asyncio.Task[None]] = set()
    client = aiomqtt.Client(
        "127.0.0.1",
        broker_port,
        identifier=f"bench-echo-{os.getpid()}",
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=NODELAY,
        max_inflight_messages=1000,
    )
    client.pending_calls_threshold = 10_000
    async with client:
        await client.subscribe("pager/+/action", qos=1)
        print("ready", flush=True)
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            task = asyncio.create_task(
                client.publish(f"{message.topic.value}/result", payload, qos=1)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.echo", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="broker port")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
