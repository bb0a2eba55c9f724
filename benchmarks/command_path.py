"""Which of the bridge's modules one pager command passes through, from the MQTT socket to the
acknowledgement: `python -m benchmarks.command_path`.

A Mosquitto, the T7470 simulator and the bridge run in this process's loop (the simulator's
modules and everything outside `bridge/` are left out of the count); after a warm-up, one
`start` is published and `sys.setprofile` records every call into the bridge's code until its
result arrives. Observation is off and polling slow, so only the command's own path is seen.
Printed: the modules, in the order first entered, and the calls that cross from one module to
another (distinct caller -> callee functions, and in all).
"""

from __future__ import annotations

import asyncio
import json
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bridge import config
from bridge.app import Bridge
from bridge.dev.mosquitto import Mosquitto
from bridge.sim.pager.server import PagerSimulator

PACKAGE = Path(__file__).resolve().parents[1] / "bridge"
SIMULATORS = PACKAGE / "sim"


def _module(code: types.CodeType) -> str | None:
    path = Path(code.co_filename)
    if not path.is_relative_to(PACKAGE) or path.is_relative_to(SIMULATORS):
        return None
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


class Recorder:
    def __init__(self) -> None:
        self.modules: dict[str, None] = {}
        self.crossings: Counter[tuple[str, str]] = Counter()

    def __call__(self, frame: types.FrameType, event: str, _arg: Any) -> None:
        if event != "call":
            return
        module = _module(frame.f_code)
        if module is None:
            return
        self.modules.setdefault(module, None)
        caller = frame.f_back
        while caller is not None and _module(caller.f_code) is None:
            caller = caller.f_back  # through asyncio, paho, aiocoap: who in the bridge
        if caller is None:
            return
        source = _module(caller.f_code)
        if source is not None and source != module:
            callee = f"{module}.{frame.f_code.co_qualname}"
            self.crossings[(f"{source}.{caller.f_code.co_qualname}", callee)] += 1


async def measure() -> Recorder:
    with Mosquitto() as broker:
        sim = PagerSimulator(port=0)
        await sim.start()
        env = {
            "IOTBRIDGE_HTTP_ADDR": "127.0.0.1:0",
            "IOTBRIDGE_MQTT_URL": f"mqtt://127.0.0.1:{broker.port}",
            "IOTBRIDGE_PAGER_URL": f"coap://127.0.0.1:{sim.port}",
            "IOTBRIDGE_PAGER_OBSERVE": "false",
            "IOTBRIDGE_PAGER_POLL_INTERVAL": "3600",
        }
        bridge = Bridge(config.load(env))
        task = asyncio.create_task(bridge.run(install_signals=False))
        try:
            while not bridge.ready:  # noqa: ASYNC110 - readiness is a property, not an event
                await asyncio.sleep(0.05)
            return await _one_command(broker.port)
        finally:
            bridge.stop()
            await task
            await sim.stop()


async def _one_command(port: int) -> Recorder:
    loop = asyncio.get_running_loop()
    results: asyncio.Queue[bytes] = asyncio.Queue()

    def received(_client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        loop.call_soon_threadsafe(results.put_nowait, bytes(message.payload))

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = received
    client.connect("127.0.0.1", port)
    client.subscribe("pager/+/action/result", qos=1)
    client.loop_start()  # the measuring client's own thread: not the bridge's code
    try:
        await asyncio.sleep(0.5)
        for number in (1, 2):  # warm-up: first-use imports and caches
            client.publish(f"pager/{number}/action", json.dumps({"action": "start"}), qos=1)
            await results.get()
        recorder = Recorder()
        sys.setprofile(recorder)
        client.publish("pager/3/action", json.dumps({"action": "start"}), qos=1)
        await results.get()
        await asyncio.sleep(0.2)  # the acknowledgement and the last PUBACKs
        sys.setprofile(None)
        return recorder
    finally:
        client.loop_stop()
        client.disconnect()


def main() -> None:
    recorder = asyncio.run(measure())
    modules = list(recorder.modules)
    print(f"{len(modules)} modules: {', '.join(modules)}")
    print(
        f"{len(recorder.crossings)} distinct cross-module calls, "
        f"{sum(recorder.crossings.values())} in all"
    )
    for (caller, callee), count in sorted(recorder.crossings.items()):
        print(f"  {count:3d}  {caller} -> {callee}")


if __name__ == "__main__":
    main()
