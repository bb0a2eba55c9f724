"""The command line as a user runs it: exit codes and the one-line error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bridge import schema

ROOT = Path(__file__).resolve().parents[2]


def iotbridge(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IOTBRIDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        env=clean | env,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def test_check_config_prints_effective_settings_with_secrets_redacted() -> None:
    done = iotbridge(
        "check-config",
        IOTBRIDGE_MQTT_URL="mqtt://u:hunter22@127.0.0.1:1883",
        IOTBRIDGE_SENSAPHONE_PASSWORD="sensa-secret",
        IOTBRIDGE_PAGER_MAX_NUMBER="250",
    )
    assert done.returncode == 0, done.stderr
    assert "max_number: 250" in done.stdout
    assert "url: mqtt://u:***@127.0.0.1:1883" in done.stdout
    assert "hunter22" not in done.stdout
    assert "sensa-secret" not in done.stdout


def test_bad_value_exits_non_zero_with_one_line() -> None:
    done = iotbridge("check-config", IOTBRIDGE_PAGER_TIMEOUT="soon")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "iotbridge: configuration: pager.timeout: Expected `float`, got `str`"
    ]
    run = iotbridge("run", IOTBRIDGE_MQTT_URL="ftp://nowhere")
    assert run.returncode == 2
    assert "mqtt.url" in run.stderr


def test_committed_schemas_match_the_models() -> None:
    drifted = schema.drift(ROOT / "schemas")
    assert drifted == [], f"run `iotbridge schema` to regenerate: {drifted}"
    done = iotbridge("schema", "--check")
    assert done.returncode == 0, done.stderr
