"""A real Home Assistant for the tests: found, installed, started, onboarded, given MQTT.

Home Assistant is not a dependency of the project: it needs Python 3.13 or newer, and it is
hundreds of packages. So the tier installs it on demand into a virtualenv of its own, outside
the repository (`~/.cache/iotbridge/homeassistant-<version>-py<x.y>`, `XDG_CACHE_HOME`
honoured), once: later runs reuse it. What is installed:

- `homeassistant==HA_VERSION`, the newest release that Python 3.13.0 accepts (later ones ask
  for 3.13.2 or newer); `IOTBRIDGE_HA_VERSION` picks another;
- the requirements of the integrations Home Assistant always loads, and of MQTT's, read from
  the installed release's own manifests and pinned by its own `package_constraints.txt`, so
  that `hass` runs with `--skip-pip` and never installs anything at run time.

`hass` then runs on a free loopback port with a minimal configuration; the tier onboards it
over the REST API (the user step, the analytics and integration steps; the core-config step
is left out, because it sets up the weather, radio and translation integrations, which reach
the internet) and adds the MQTT integration through its config flow, pointed at the tier's
Mosquitto. Nothing here contacts anything but PyPI (to install) and 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

from bridge.dev.mosquitto import free_port

HA_VERSION = os.environ.get("IOTBRIDGE_HA_VERSION", "2025.4.4")
MINIMUM_PYTHON = (3, 13, 0)
PYTHON_VARIABLE = "IOTBRIDGE_HA_PYTHON"
START_TIMEOUT = 180.0
USER, PASSWORD = "iotbridge", "iotbridge-test-password"

# Run by the Home Assistant virtualenv's Python: the requirements of every integration `hass`
# will load (its defaults, MQTT, and their dependencies), and the release's constraints file.
_REQUIREMENTS = """
import json, pathlib, homeassistant
from homeassistant import bootstrap
root = pathlib.Path(homeassistant.__file__).parent
todo = set(bootstrap.DEFAULT_INTEGRATIONS) | set(bootstrap.CORE_INTEGRATIONS)
todo |= set(bootstrap.LOGGING_AND_HTTP_DEPS_INTEGRATIONS) - {"sentry"}
todo |= {"mqtt", "api", "config", "websocket_api", "onboarding"}
seen, requirements = set(), set()
while todo:
    domain = todo.pop()
    if domain in seen:
        continue
    seen.add(domain)
    manifest = json.loads((root / "components" / domain / "manifest.json").read_text())
    requirements.update(manifest.get("requirements", []))
    todo.update(manifest.get("dependencies", []))
print(json.dumps({"requirements": sorted(requirements),
                  "constraints": str(root / "package_constraints.txt")}))
"""


class InstallFailed(Exception):
    """Installing Home Assistant failed: a test failure, never a skip."""


@functools.cache
def search() -> tuple[str, str] | InstallFailed | None:
    """`find_python()` once per run; its InstallFailed returned, not raised."""
    try:
        return find_python()
    except InstallFailed as exc:
        return exc


def find_python() -> tuple[str, str] | None:
    """A Python >= 3.13 that works (a pyenv shim may exist and fail): (path, version)."""
    chosen = os.environ.get(PYTHON_VARIABLE)
    if chosen:
        found = _version_of(chosen)
        if found is None or found[1] < MINIMUM_PYTHON:
            raise InstallFailed(f"{PYTHON_VARIABLE}={chosen} is not a working Python >= 3.13")
        return chosen, found[0]
    names = [f"python3.{minor}" for minor in range(20, 12, -1)] + ["python3"]
    candidates = [path for name in names if (path := shutil.which(name))]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += [str(p) for p in sorted(pyenv.glob("3.*/bin/python3"), reverse=True)]
    for candidate in candidates:
        found = _version_of(candidate)
        if found is not None and found[1] >= MINIMUM_PYTHON:
            return candidate, found[0]
    return None


def _version_of(executable: str) -> tuple[str, tuple[int, ...]] | None:
    probe = "import sys, venv; print('.'.join(map(str, sys.version_info[:3])))"
    try:
        done = subprocess.run(
            [executable, "-c", probe], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout.strip()
    if done.returncode != 0 or not text:
        return None
    return text, tuple(int(part) for part in text.split("."))


def venv_dir(python_version: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    short = ".".join(python_version.split(".")[:2])
    return cache / "iotbridge" / f"homeassistant-{HA_VERSION}-py{short}"


def installed(python: str, python_version: str) -> Path:
    """The virtualenv with Home Assistant, installed first if needed (under a lock)."""
    target = venv_dir(python_version)
    target.parent.mkdir(parents=True, exist_ok=True)
    marker = target / "iotbridge-ready"
    with (target.parent / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and (target / "bin" / "hass").exists():
            return target
        shutil.rmtree(target, ignore_errors=True)
        log = target.parent / f"{target.name}.install.log"
        try:
            _install(python, target, log)
        except InstallFailed:
            shutil.rmtree(target, ignore_errors=True)
            raise
        marker.write_text(f"homeassistant=={HA_VERSION}\n", encoding="utf-8")
    return target


def _install(python: str, target: Path, log: Path) -> None:
    with log.open("w", encoding="utf-8") as out:
        _run([python, "-m", "venv", str(target)], out, log)
        pip = [
            str(target / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
        ]
        _run([*pip, f"homeassistant=={HA_VERSION}"], out, log)
        listing = subprocess.run(
            [str(target / "bin" / "python"), "-c", _REQUIREMENTS],
            capture_output=True,
            text=True,
            check=False,
        )
        if listing.returncode != 0:
            raise InstallFailed(f"reading Home Assistant's manifests failed: {listing.stderr}")
        wanted = json.loads(listing.stdout)
        _run([*pip, "-c", wanted["constraints"], *wanted["requirements"]], out, log)


def _run(command: list[str], out: Any, log: Path) -> None:
    out.write(f"$ {' '.join(command)}\n")
    out.flush()
    code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        tail = "\n".join(line for line in lines[-40:] if "is ignored" not in line)
        raise InstallFailed(
            f"installing homeassistant=={HA_VERSION} failed ({command[-1]}: exit {code}); "
            f"log {log}:\n{tail}"
        )


def _time_zone() -> str:
    """The machine's IANA time zone: the simulator writes device times in local time."""
    if os.environ.get("TZ", "").strip(":"):
        return os.environ["TZ"].strip(":")
    with contextlib.suppress(OSError):
        return Path("/etc/timezone").read_text(encoding="utf-8").strip() or "UTC"
    with contextlib.suppress(OSError):
        return str(Path("/etc/localtime").resolve()).split("zoneinfo/", 1)[1]
    return "UTC"


CONFIGURATION = """\
homeassistant:
  name: iotbridge test
  latitude: 52.52
  longitude: 13.40
  elevation: 34
  unit_system: metric
  currency: EUR
  country: DE
  language: en
  time_zone: {time_zone}
  internal_url: http://127.0.0.1:{port}
http:
  server_host: 127.0.0.1
  server_port: {port}
# Where HA's automation editor (and the tests, through its REST API) keeps automations.
automation: !include automations.yaml
logger:
  default: warning
  logs:
    # The camera integration, imported by the frontend, wants the optional libturbojpeg.
    homeassistant.components.camera.img_util: critical
"""


class HomeAssistantServer:
    """One `hass` process for the whole tier; `token` is an admin's long-lived token."""

    def __init__(self, venv: Path, config_dir: Path, mqtt_port: int) -> None:
        self.venv = venv
        self.config_dir = config_dir
        self.mqtt_port = mqtt_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self.mqtt_entry = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.started_in = 0.0

    @property
    def log_path(self) -> Path:
        return self.config_dir / "home-assistant.log"

    def start(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "configuration.yaml").write_text(
            CONFIGURATION.format(port=self.port, time_zone=_time_zone()), encoding="utf-8"
        )
        (self.config_dir / "automations.yaml").write_text("[]\n", encoding="utf-8")
        # Home Assistant's network settings, as its UI stores them: the loopback adapter only,
        # so that nothing (mDNS for one) listens or announces on the machine's other networks.
        storage = self.config_dir / ".storage"
        storage.mkdir(exist_ok=True)
        network = {"configured_adapters": ["lo"]}
        (storage / "core.network").write_text(
            json.dumps({"version": 1, "minor_version": 1, "key": "core.network", "data": network}),
            encoding="utf-8",
        )
        began = time.monotonic()
        with (self.config_dir / "hass.stdout").open("wb") as out:
            self.process = subprocess.Popen(
                [str(self.venv / "bin" / "hass"), "-c", str(self.config_dir), "--skip-pip"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
        self._wait_http()
        self._onboard()
        self._add_mqtt()
        self.started_in = time.monotonic() - began

    def _wait_http(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"hass exited with {self.process.returncode}: {self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/onboarding", timeout=2).status_code == 200:
                    return
            time.sleep(0.25)
        raise RuntimeError(f"hass did not answer within {START_TIMEOUT:g} s: {self.tail()}")

    def _onboard(self) -> None:
        client_id = f"{self.url}/"
        user = {
            "client_id": client_id,
            "name": "iotbridge tests",
            "username": USER,
            "password": PASSWORD,
            "language": "en",
        }
        code = _ok(httpx.post(f"{self.url}/api/onboarding/users", json=user))["auth_code"]
        grant = {"grant_type": "authorization_code", "code": code, "client_id": client_id}
        access = _ok(httpx.post(f"{self.url}/auth/token", data=grant))["access_token"]
        headers = {"Authorization": f"Bearer {access}"}
        _ok(httpx.post(f"{self.url}/api/onboarding/analytics", headers=headers))
        step = {"client_id": client_id, "redirect_uri": f"{client_id}?auth_callback=1"}
        _ok(httpx.post(f"{self.url}/api/onboarding/integration", json=step, headers=headers))
        # A long-lived token: the tier may outlast the 30 minutes of an access token.
        with connect(f"ws://127.0.0.1:{self.port}/api/websocket") as socket:
            json.loads(socket.recv())
            socket.send(json.dumps({"type": "auth", "access_token": access}))
            assert json.loads(socket.recv())["type"] == "auth_ok"
            ask = {"id": 1, "type": "auth/long_lived_access_token", "client_name": "iotbridge"}
            socket.send(json.dumps({**ask, "lifespan": 1}))
            self.token = json.loads(socket.recv())["result"]

    def _add_mqtt(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        flows = f"{self.url}/api/config/config_entries/flow"
        form = _ok(httpx.post(flows, json={"handler": "mqtt"}, headers=headers))
        assert form["step_id"] == "broker", form
        broker = {"broker": "127.0.0.1", "port": self.mqtt_port}
        made = _ok(httpx.post(f"{flows}/{form['flow_id']}", json=broker, headers=headers))
        assert made["type"] == "create_entry", made
        self.mqtt_entry = made["result"]["entry_id"]

    def tail(self, lines: int = 60) -> str:
        text = ""
        for path in (self.config_dir / "hass.stdout", self.log_path):
            with contextlib.suppress(OSError):
                text += path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def log_lines(self) -> list[str]:
        """Home Assistant's log, warnings and errors only (the configured level)."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return []

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def _ok(response: httpx.Response) -> Any:
    if response.status_code >= 300:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")
    return response.json()


@contextlib.contextmanager
def running(venv: Path, config_dir: Path, mqtt_port: int) -> Iterator[HomeAssistantServer]:
    server = HomeAssistantServer(venv, config_dir, mqtt_port)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def describe_missing_python() -> str:
    return (
        "Home Assistant tier skipped: no Python >= 3.13 found (looked for python3.13+ on "
        f"PATH and in pyenv; set {PYTHON_VARIABLE}); Home Assistant {HA_VERSION} needs it"
    )
