"""A Mosquitto broker in a child process, configured the way the bridge needs it.

Used by `iotbridge demo`, the end-to-end tests and the benchmarks. The settings below are the
ones the README asks of any broker in front of the bridge; each was measured on Mosquitto 2.0:
- `set_tcp_nodelay true`: off by default, and then every command waits 40-88 ms on delayed ACKs.
- `max_queued_messages`: 1000 by default, past which QoS 1 messages for a busy or offline
  subscriber are dropped silently. Raised well above the bridge's in-flight window.
- `max_inflight_messages`: 20 by default; a bridge that acknowledges a command only after its
  result is published can then hold only 20 commands at once. Raised to match `max_in_flight`.

`user` is set to whoever starts the broker: started as root, Mosquitto otherwise drops to the
`mosquitto` user, which cannot write the private temporary directory, so the log and the
persistence database were silently never written (and with `autosave_on_changes` the failing
saves stalled delivery altogether). As a non-root user the option has no effect.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

MOSQUITTO = "/usr/sbin/mosquitto"

BRIDGE_SETTINGS = """\
set_tcp_nodelay true
max_queued_messages 100000
max_inflight_messages 100
persistent_client_expiration 7d
"""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Mosquitto:
    """Start, kill and restart a Mosquitto on a loopback port, with persistence on disk."""

    def __init__(
        self,
        port: int = 0,
        *,
        extra: str = "",
        executable: str | None = None,
        tls: tuple[str, str] | None = None,
        password_file: str | None = None,
        acl_file: str | None = None,
    ) -> None:
        """`tls` is (certificate, key) PEM paths: the listener then speaks TLS only.

        `password_file` (made with `mosquitto_passwd`) turns anonymous access off; `acl_file`
        limits what each user may read and write. All three stay off by default (the demo).
        """
        self.port = port or free_port()
        self.extra = extra
        self.tls = tls
        self.password_file = password_file
        self.acl_file = acl_file
        self.executable = executable or shutil.which("mosquitto") or MOSQUITTO
        self._dir = Path(tempfile.mkdtemp(prefix="iotbridge-mosquitto-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self._dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self._dir / "mosquitto.log"

    def write_config(self) -> Path:
        self.config_path.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"{self._security()}"
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {self._dir}/\n"
            "autosave_interval 1\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"{BRIDGE_SETTINGS}{self.extra}",
            encoding="utf-8",
        )
        return self.config_path

    def _security(self) -> str:
        lines = []
        if self.tls is not None:
            lines += [f"certfile {self.tls[0]}", f"keyfile {self.tls[1]}"]
        if self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        return "".join(f"{line}\n" for line in lines)

    def start(self, timeout: float = 10.0) -> Self:
        if not Path(self.executable).exists():
            raise FileNotFoundError(
                f"{self.executable} not found: install Mosquitto (apt-get install mosquitto)"
            )
        self.write_config()
        self.process = subprocess.Popen(  # noqa: S603 - fixed executable, our own config
            [self.executable, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_listening(timeout)
        return self

    def _wait_listening(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process is not None and self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"mosquitto exited at start: {err.strip()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        raise TimeoutError(f"mosquitto did not listen on {self.port} within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
