"""The command line as a user runs it: exit codes and the one-line error."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from bridge.contract import documents

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
    drifted = documents.drift(ROOT / "schemas")
    assert drifted == [], f"run `iotbridge schema` to regenerate: {drifted}"
    done = iotbridge("schema", "--check")
    assert done.returncode == 0, done.stderr


def test_a_busy_metrics_port_is_one_line_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = iotbridge(
            "run", IOTBRIDGE_HTTP_ADDR=f"127.0.0.1:{port}", IOTBRIDGE_MQTT_URL="mqtt://127.0.0.1:1"
        )
    assert done.returncode == 2, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "iotbridge:" in line]
    assert line.startswith(
        f"iotbridge: configuration: http.addr: cannot listen on 127.0.0.1:{port}"
    )
    assert "IOTBRIDGE_HTTP_ADDR" in line
    assert "Traceback" not in done.stderr


def test_run_reads_the_file_named_by_config(tmp_path: Path) -> None:
    """`run --config FILE` reads FILE, in place of any IOTBRIDGE_CONFIG; the environment's
    settings still win over the file's."""
    flagged = tmp_path / "flagged.yaml"
    flagged.write_text("pager: {timeout: soon}\nmqtt: {url: 'ftp://flagged'}\n", encoding="utf-8")
    other = tmp_path / "other.yaml"
    other.write_text("pager: {max_number: lots}\n", encoding="utf-8")
    url = "mqtt.url: expected mqtt://host or mqtts://host or ws://host or wss://host"
    done = iotbridge("run", "--config", str(flagged), IOTBRIDGE_CONFIG=str(other))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "iotbridge: configuration: pager.timeout: Expected `float`, got `str`",
        f"iotbridge: configuration: {url}, got 'ftp://flagged'",
    ]
    overridden = iotbridge("run", "--config", str(flagged), IOTBRIDGE_PAGER_TIMEOUT="3")
    assert overridden.returncode == 2
    assert overridden.stderr.splitlines() == [
        f"iotbridge: configuration: {url}, got 'ftp://flagged'"
    ]
    missing = tmp_path / "missing.yaml"
    absent = iotbridge("run", "--config", str(missing), IOTBRIDGE_CONFIG=str(flagged))
    assert absent.returncode == 2
    assert absent.stderr.splitlines() == [
        f"iotbridge: configuration: cannot read {missing}: No such file or directory"
    ]


def test_log_level_decides_what_run_logs() -> None:
    """The start-up WARNING about a password over mqtt:// shows at the default level and at
    `--log-level warning`, not at `--log-level error`, whatever IOTBRIDGE_LOG_LEVEL says. A
    busy metrics port then ends the run, after logging is set up."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {
            "IOTBRIDGE_HTTP_ADDR": f"127.0.0.1:{taken.getsockname()[1]}",
            "IOTBRIDGE_MQTT_URL": "mqtt://bridge:hunter22@127.0.0.1:1",
        }
        default = iotbridge("run", **env)
        quiet = iotbridge("run", "--log-level", "error", **env, IOTBRIDGE_LOG_LEVEL="debug")
        loud = iotbridge("run", "--log-level", "warning", **env, IOTBRIDGE_LOG_LEVEL="error")
    warning = "WARNING bridge.config [-] insecure: mqtt.url: mqtt:// sends the MQTT password"
    assert [done.returncode for done in (default, quiet, loud)] == [2, 2, 2]
    assert warning in default.stderr
    assert warning in loud.stderr
    assert "WARNING" not in quiet.stderr
    assert "http.addr: cannot listen" in quiet.stderr


def test_check_config_lists_every_mistake_sites_included(tmp_path: Path) -> None:
    """Type and value mistakes, top level and every site, in one run: a value check runs on
    every field that has the right type, whatever is wrong beside it."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "mqtt: {url: 'ftp://q', reconnect_min: 40, reconnect_max: soon}\n"
        "pager: {timeout: soon, max_nubmer: 5}\n"
        "sites:\n"
        "  - {name: north, pager: {url: 'http://x'}}\n"
        "  - {name: south, pager: {timeout: 0, url: 'coap://h:99999'}}\n"
        "  - {pager: {timeout: -1, numbers: [0]}}\n"
        "  - {name: north, topic_prefix: 'a/#', sensaphone: {password_file: /nonexistent/pw}}\n",
        encoding="utf-8",
    )
    expected = [
        "sites[3].sensaphone.password_file: cannot read it (No such file or directory)",
        "mqtt.reconnect_max: Expected `float`, got `str`",
        "pager.timeout: Expected `float`, got `str`",
        "pager.max_nubmer: unknown field",
        "sites[1].pager.timeout: Expected `float` > 0.0",
        "sites[2].pager.timeout: Expected `float` > 0.0",
        "sites[2].name: required",
        "mqtt.url: expected mqtt://host or mqtts://host or ws://host or wss://host, got 'ftp://q'",
        "sites[0].pager.url: expected coap://host, got 'http://x'",
        "sites[1].pager.url: bad port in 'coap://h:99999'",
        "sites[2].pager.numbers: [0] not between 1 and 65535",
        "sites[3].name: 'north' is used by another site",
        "sites[3].topic_prefix: must not contain + # NUL or start with $",
    ]
    # Not "reconnect_min must not exceed reconnect_max": the max the user wrote is unreadable.
    for command in ("check-config", "run"):
        done = iotbridge(command, "--config", str(path))
        assert done.returncode == 2, command
        assert done.stderr.splitlines() == [f"iotbridge: configuration: {e}" for e in expected]


def test_check_config_shows_effective_defaults_and_hides_site_passwords(tmp_path: Path) -> None:
    path = tmp_path / "sites.yaml"
    path.write_text(
        "sites:\n  - {name: north, sensaphone: {user: n, password: north-secret}}\n",
        encoding="utf-8",
    )
    done = iotbridge("check-config", "--config", str(path))
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["mqtt"]["client_id"] == f"iotbridge-{socket.gethostname()}"
    assert shown["sites"][0]["sensaphone"]["password"] == "***"
    assert "north-secret" not in done.stdout


def test_every_command_explains_itself() -> None:
    run = iotbridge("run", "--help")
    assert run.returncode == 0
    for word in ("--config", "--log-level", "IOTBRIDGE_CONFIG", "IOTBRIDGE_MQTT_URL", "SIGTERM"):
        assert word in run.stdout, word
    for command in (
        ["check-config"],
        ["demo"],
        ["schema"],
        ["sim", "pager"],
        ["sim", "sensaphone"],
    ):
        shown = iotbridge(*command, "--help")
        assert shown.returncode == 0
        assert shown.stdout.count("\n") > 4, command


def test_secrets_in_clear_are_refused_or_warned_about() -> None:
    """An http:// Sensaphone URL is refused unless allow_insecure says it is meant; a password
    over mqtt:// is allowed, and warned about by check-config and at every start."""
    refused = iotbridge("check-config", IOTBRIDGE_SENSAPHONE_URL="http://sensaphone.lan/api/v1")
    assert refused.returncode == 2
    assert "sensaphone.url: http:// would send the Sensaphone password in clear" in refused.stderr
    assert "sensaphone.allow_insecure: true" in refused.stderr
    allowed = iotbridge(
        "check-config",
        IOTBRIDGE_SENSAPHONE_URL="http://sensaphone.lan/api/v1",
        IOTBRIDGE_SENSAPHONE_ALLOW_INSECURE="true",
        IOTBRIDGE_MQTT_URL="mqtt://bridge:hunter22@broker.lan:1883",
    )
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stderr.splitlines() == [
        (
            "warning: insecure: mqtt.url: mqtt:// sends the MQTT password in clear to "
            "broker.lan:1883; use mqtts://"
        ),
        (
            "warning: insecure: sensaphone.url: http:// sends the Sensaphone password in clear "
            "(sensaphone.allow_insecure is set); use https://"
        ),
    ]
    assert "hunter22" not in allowed.stderr
    quiet = iotbridge("check-config", IOTBRIDGE_MQTT_URL="mqtts://bridge:hunter22@broker.lan")
    assert quiet.returncode == 0
    assert quiet.stderr == ""
