"""`iotbridge demo`: Mosquitto, both simulators and the bridge, each its own process.

Mosquitto rather than an embedded Python broker: it is what the tests and most deployments use,
it speaks MQTT 5 fully (Response Topic, Message Expiry, shared subscriptions), and the demo then
shows the broker settings the bridge needs (see bridge/dev/mosquitto.py).

Ctrl-C, SIGTERM and SIGHUP all stop every child and remove the broker's temporary directory,
exit code 0. The handlers are installed explicitly: a demo started with `nohup ... &` inherits
SIGINT ignored, and Python's default SIGTERM would leave every child running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bridge.dev.mosquitto import Mosquitto, free_port, port_is_free

DEMO_SCHEDULES = (
    "{'28487': {kind: default_schedule, device_id: 1234}, "
    "'300': {kind: contact_schedule, user_id: 55, contact_id: 66}}"
)
DEMO_PASSWORD = "demo-password"  # noqa: S105 - the simulator's built-in demo account
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _child(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bridge", *args], env=env)  # noqa: S603


class _Stop(Exception):
    """A stop signal arrived."""


def _stop(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


@contextlib.contextmanager
def _held() -> Iterator[None]:
    """A stop signal sent during the block waits for its end (then `_stop` runs as usual)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _port(wanted: int, what: str) -> tuple[int, str]:
    """`wanted`, or a free port when it is 0 or taken, with a note saying why it differs."""
    if wanted and port_is_free(wanted):
        return wanted, ""
    port = free_port()
    if not wanted:
        return port, ""
    return port, f"port {wanted} is taken, so the {what} listens on {port}"


def run_demo(*, mqtt_port: int = 1883, http_port: int = 9464) -> int:
    """Run until Ctrl-C, SIGTERM or SIGHUP; print how to drive the bridge from any MQTT client."""
    broker: Mosquitto | None = None
    children: list[subprocess.Popen[bytes]] = []
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, _stop)
        mqtt_port, mqtt_note = _port(mqtt_port, "broker")
        http_port, http_note = _port(http_port, "metrics server")
        coap_port = free_port()
        rest_port = free_port()
        # The constructor makes the broker's temporary directory: a stop signal is held until
        # `broker` names it, so that the cleanup below always finds it. (Not around starting a
        # process: a child would inherit the mask and ignore the SIGTERM that stops it.)
        with _held():
            # Save on every change: measured here, with the default once-a-second save a broker
            # crash lost up to a second of acknowledged commands (docs/reliability.md).
            broker = Mosquitto(mqtt_port, extra="autosave_on_changes true\n")
        broker.start()
        children += [
            _child("sim", "pager", "--port", str(coap_port), "--ping-interval", "30"),
            _child("sim", "sensaphone", "--port", str(rest_port), "--session-lifetime", "300"),
        ]
        time.sleep(0.5)
        children.append(_child("run", env=_bridge_env(mqtt_port, http_port, coap_port, rest_port)))
        notes = "".join(f"\n  ({note})" for note in (mqtt_note, http_note) if note)
        banner = _instructions(mqtt_port, http_port, broker.config_path, notes)
        print(banner, flush=True)  # noqa: T201
        while all(child.poll() is None for child in children):
            time.sleep(0.2)
    except _Stop:
        return 0
    else:
        print("a demo process exited; stopping the demo", file=sys.stderr)  # noqa: T201
        return 1
    finally:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        _stop_all(children)
        if broker is not None:
            broker.cleanup()


def _stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _bridge_env(mqtt_port: int, http_port: int, coap_port: int, rest_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTBRIDGE_")}
    env.update(
        IOTBRIDGE_MQTT_URL=f"mqtt://127.0.0.1:{mqtt_port}",
        IOTBRIDGE_MQTT_CLIENT_ID="iotbridge-demo",
        IOTBRIDGE_PAGER_URL=f"coap://127.0.0.1:{coap_port}",
        IOTBRIDGE_PAGER_NUMBERS="1,2,3,66",
        IOTBRIDGE_DISCOVERY_ENABLED="true",
        IOTBRIDGE_SENSAPHONE_URL=f"http://127.0.0.1:{rest_port}/api/v1",
        # The simulator, on loopback, with the demo account: plain HTTP is meant here.
        IOTBRIDGE_SENSAPHONE_ALLOW_INSECURE="true",
        IOTBRIDGE_SENSAPHONE_USER="demo",
        IOTBRIDGE_SENSAPHONE_PASSWORD=DEMO_PASSWORD,
        IOTBRIDGE_SENSAPHONE_SCHEDULES=DEMO_SCHEDULES,
        IOTBRIDGE_HTTP_ADDR=f"127.0.0.1:{http_port}",
    )
    return env


def _instructions(mqtt_port: int, http_port: int, broker_config: Path, notes: str) -> str:
    pub = f"mosquitto_pub -p {mqtt_port} -q 1"
    range_example = (
        '{"action":"create","start":"08:00","end":"17:00",'
        '"interval":{"days":["mon","tue","wed","thu","fri"]}}'
    )
    return f"""
iotbridge demo is running (Ctrl-C or SIGTERM stops it all)
  MQTT broker   mqtt://127.0.0.1:{mqtt_port}   (Mosquitto, config {broker_config})
  metrics       http://127.0.0.1:{http_port}/metrics   probes: /livez /readyz{notes}

Watch everything:   mosquitto_sub -p {mqtt_port} -v -t '#'
Start a session:    {pub} -t pager/66/action -m '{{"action":"start","label":"Sarah","partySize":4}}'
Page it:            {pub} -t pager/66/action -m page
Clear it:           {pub} -t pager/66/action -m clear
Statistics:         {pub} -t pager/base/action -m statistics
Read a schedule:    {pub} -t schedule/28487/timerange -m read
Add a time range:   {pub} -t schedule/28487/timerange -m '{range_example}'
"""
