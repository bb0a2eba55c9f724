"""`iotbridge demo`: Mosquitto, both simulators and the bridge, each its own process.

Mosquitto rather than an embedded Python broker: it is what the tests and most deployments use,
it speaks MQTT 5 fully (Response Topic, Message Expiry, shared subscriptions), and the demo then
shows the broker settings the bridge needs (see bridge/broker.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bridge.broker import Mosquitto, free_port, port_is_free

DEMO_SCHEDULES = (
    "{'28487': {kind: default_schedule, device_id: 1234}, "
    "'300': {kind: contact_schedule, user_id: 55, contact_id: 66}}"
)
DEMO_PASSWORD = "demo-password"  # noqa: S105 - the simulator's built-in demo account


def _child(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bridge", *args], env=env)  # noqa: S603


def run_demo(*, mqtt_port: int = 1883, http_port: int = 9464) -> int:
    """Run until Ctrl-C; print how to drive the bridge from any MQTT client."""
    if not mqtt_port or not port_is_free(mqtt_port):
        mqtt_port = free_port()
    if not http_port or not port_is_free(http_port):
        http_port = free_port()
    coap_port = free_port()
    rest_port = free_port()
    # Save on every change: measured here, with the default once-a-second save a broker crash
    # lost up to a second of acknowledged commands (docs/reliability.md).
    broker = Mosquitto(mqtt_port, extra="autosave_on_changes true\n").start()
    children = [
        _child("sim", "pager", "--port", str(coap_port), "--ping-interval", "30"),
        _child("sim", "sensaphone", "--port", str(rest_port), "--session-lifetime", "300"),
    ]
    env = dict(os.environ)
    env.update(
        IOTBRIDGE_MQTT_URL=f"mqtt://127.0.0.1:{mqtt_port}",
        IOTBRIDGE_MQTT_CLIENT_ID="iotbridge-demo",
        IOTBRIDGE_PAGER_URL=f"coap://127.0.0.1:{coap_port}",
        IOTBRIDGE_PAGER_NUMBERS="1,2,3,66",
        IOTBRIDGE_DISCOVERY_ENABLED="true",
        IOTBRIDGE_SENSAPHONE_URL=f"http://127.0.0.1:{rest_port}/api/v1",
        IOTBRIDGE_SENSAPHONE_USER="demo",
        IOTBRIDGE_SENSAPHONE_PASSWORD=DEMO_PASSWORD,
        IOTBRIDGE_SENSAPHONE_SCHEDULES=DEMO_SCHEDULES,
        IOTBRIDGE_HTTP_ADDR=f"127.0.0.1:{http_port}",
    )
    env.pop("IOTBRIDGE_CONFIG", None)
    time.sleep(0.5)
    children.append(_child("run", env=env))
    print(_instructions(mqtt_port, http_port, broker.config_path), flush=True)  # noqa: T201
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    else:
        print("a demo process exited; stopping the demo", file=sys.stderr)  # noqa: T201
        return 1
    finally:
        for child in reversed(children):
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        broker.cleanup()


def _instructions(mqtt_port: int, http_port: int, broker_config: Path) -> str:
    pub = f"mosquitto_pub -p {mqtt_port} -q 1"
    range_example = (
        '{"action":"create","start":"08:00","end":"17:00",'
        '"interval":{"days":["mon","tue","wed","thu","fri"]}}'
    )
    return f"""
iotbridge demo is running (Ctrl-C stops it)
  MQTT broker   mqtt://127.0.0.1:{mqtt_port}   (Mosquitto, config {broker_config})
  metrics       http://127.0.0.1:{http_port}/metrics   probes: /livez /readyz

Watch everything:   mosquitto_sub -p {mqtt_port} -v -t '#'
Start a session:    {pub} -t pager/66/action -m '{{"action":"start","label":"Sarah","partySize":4}}'
Page it:            {pub} -t pager/66/action -m page
Clear it:           {pub} -t pager/66/action -m clear
Statistics:         {pub} -t pager/base/action -m statistics
Read a schedule:    {pub} -t schedule/28487/timerange -m read
Add a time range:   {pub} -t schedule/28487/timerange -m '{range_example}'
"""
