"""The minimal reference bridge: `pager/+/action` -> CoAP to the simulator -> `<topic>/result`.

Nothing else on purpose: no validation, no ordering, no events or retained state, no metrics,
no dedup, acknowledged by paho on receipt. It is the yardstick for what the product's extra work
costs, built as the issue defines it: aiomqtt and aiocoap with their defaults (aiocoap's default
client transports, asyncio's own loop), not the transports or loop the bridge chose. Pager n
goes to transmitter n mod len(--coap-ports), as sites do in a multi-site bridge.
Prints `ready` on stdout once subscribed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

import aiomqtt
import msgspec

from benchmarks.coapclient import BareCoap
from benchmarks.workload import coap_request

NODELAY = ((6, 1, 1),)
_DECODE = msgspec.json.Decoder(dict[str, Any])
_ENCODE = msgspec.json.encode


async def serve(broker_port: int, ports: list[int], prefixes: list[str]) -> None:
    coap = BareCoap(transports=None, blockwise=True)  # aiocoap's defaults
    await coap.start()
    tasks: set[asyncio.Task[None]] = set()
    client = aiomqtt.Client(
        "127.0.0.1",
        broker_port,
        identifier=f"bench-minimal-{os.getpid()}",
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=NODELAY,
        max_inflight_messages=1000,
    )
    client.pending_calls_threshold = 10_000
    async with client:
        filters = [f"{p}/pager/+/action" for p in prefixes] or ["pager/+/action"]
        await client.subscribe([(f, 1) for f in filters])
        print("ready", flush=True)
        async for message in client.messages:
            task = asyncio.create_task(_handle(client, coap, ports, message))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


async def _handle(
    client: aiomqtt.Client, coap: BareCoap, ports: list[int], message: aiomqtt.Message
) -> None:
    topic = message.topic.value
    payload = message.payload if isinstance(message.payload, bytes) else b"{}"
    command = _DECODE.decode(payload)
    number = int(topic.rsplit("/", 2)[-2])
    method, query, body = coap_request(number, command)
    try:
        ok, reply = await coap.request(ports[number % len(ports)], method, query, body)
    except TimeoutError:
        ok, reply = False, b'"timeout"'
    status = b"ok" if ok else b"error"
    result = b'{"status":"%s","transaction":%s,"data":%s}' % (
        status,
        _ENCODE(command.get("transaction")),
        reply or b"null",
    )
    await client.publish(f"{topic}/result", result, qos=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.minimal_bridge", description=__doc__
    )
    parser.add_argument("--port", type=int, required=True, help="broker port")
    parser.add_argument("--coap-ports", required=True, help="simulator ports, comma-separated")
    parser.add_argument("--prefixes", default="", help="site topic prefixes, comma-separated")
    args = parser.parse_args(argv)
    ports = [int(p) for p in args.coap_ports.split(",")]
    prefixes = [p for p in args.prefixes.split(",") if p]
    asyncio.run(serve(args.port, ports, prefixes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
