"""Fault-tier fixtures: the end-to-end ones (simulators, bridge, peer) plus a durable broker.

`broker` is overridden here: Mosquitto saves its persistence database after every change
(`autosave_on_changes true` with `autosave_interval 1`) instead of once a second. Measured with
tests/faults/test_broker_restart.py: with the time-based default, a SIGKILL mid-load lost the
100-150 commands Mosquitto had acknowledged in its last second (2 runs of 3); with this, none.
`FAULTS_BROKER_EXTRA=""` runs the tier against the default to reproduce that.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.dev.mosquitto import Mosquitto
from bridge.sim.sensaphone.server import SensaphoneSimulator
from tests.e2e.conftest import bridge_at, bridge_settings, pager_sim, peer
from tests.faults.tools import SecureSetup

__all__ = [
    "bridge_at",
    "bridge_settings",
    "broker",
    "pager_sim",
    "peer",
    "secure",
    "secure_broker",
    "sensaphone",
]

DURABLE = os.environ.get("FAULTS_BROKER_EXTRA", "autosave_on_changes true\n")


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto(extra=DURABLE) as instance:
        yield instance


@pytest.fixture
def sensaphone() -> Iterator[SensaphoneSimulator]:
    with SensaphoneSimulator(session_lifetime=3600) as sim:
        yield sim


BRIDGE_PASSWORD = "mqtt-secret-bridge-5b1e"
CLIENT_PASSWORD = "mqtt-secret-client-77c2"


@pytest.fixture
def secure(tmp_path: Path) -> SecureSetup:
    return SecureSetup(tmp_path, {"bridge": BRIDGE_PASSWORD, "client": CLIENT_PASSWORD})


@pytest.fixture
def secure_broker(secure: SecureSetup) -> Iterator[Mosquitto]:
    """Mosquitto over TLS only, with a password file and the ACL in tests.faults.tools."""
    with Mosquitto(
        tls=(str(secure.cert_file), str(secure.key_file)),
        password_file=str(secure.password_file),
        acl_file=str(secure.acl_file),
        extra=DURABLE,
    ) as instance:
        yield instance
