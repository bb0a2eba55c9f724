"""Configuration: YAML plus environment, env winning; one clear line for a bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge import config
from bridge.errors import ConfigError


def test_defaults() -> None:
    settings = config.load({})
    assert settings.mqtt.protocol == "5"
    assert settings.pager.url == "coap://127.0.0.1:5683"
    assert settings.sensaphone.mode == "json"


def test_env_wins_over_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("topic_prefix: from-file\npager:\n  max_number: 50\n  timeout: 3\n")
    settings = config.load(
        {
            "IOTBRIDGE_CONFIG": str(path),
            "IOTBRIDGE_TOPIC_PREFIX": "from-env",
            "IOTBRIDGE_PAGER_MAX_NUMBER": "70",
            "IOTBRIDGE_PAGER_NUMBERS": "1, 2,3",
            "IOTBRIDGE_HTTP_ADDR": "0.0.0.0:9464",
        }
    )
    assert settings.topic_prefix == "from-env"
    assert settings.pager.max_number == 70
    assert settings.pager.timeout == 3
    assert settings.pager.numbers == [1, 2, 3]
    assert settings.http.addr == "0.0.0.0:9464"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IOTBRIDGE_PAGER_MAX_NUMBER": "lots"}, "pager.max_number: Expected `int`, got `str`"),
        ({"IOTBRIDGE_PAGER_TIMEOUT": "-1"}, "pager.timeout: Expected `float` > 0.0"),
        ({"IOTBRIDGE_MQTT_PROTOCOL": "4"}, "mqtt.protocol: Invalid enum value '4'"),
        ({"IOTBRIDGE_MQTT_URL": "http://x"}, "mqtt.url: expected mqtt://host or mqtts://host"),
        ({"IOTBRIDGE_PAGER_URL": "coap://h:99999"}, "pager.url: bad port"),
        ({"IOTBRIDGE_HTTP_ADDR": "nowhere"}, "http.addr: expected host:port"),
        ({"IOTBRIDGE_TOPIC_PREFIX": "a/#"}, "topic_prefix: must not contain"),
        ({"IOTBRIDGE_SENSAPHONE_MODE": "xml"}, "sensaphone.mode"),
    ],
)
def test_bad_values_name_the_field(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(env)
    assert message in caught.value.message
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(
    ("env", "reported", "unsaid"),
    [
        (
            {"IOTBRIDGE_PAGER_TIMEOUT": "soon", "IOTBRIDGE_PAGER_URL": "http://x"},
            ["pager.timeout: Expected `float`, got `str`", "pager.url: expected coap://host"],
            [],
        ),
        (
            {"IOTBRIDGE_MQTT_KEEPALIVE": "1", "IOTBRIDGE_HTTP_ADDR": "nowhere"},
            ["mqtt.keepalive: Expected `int` >= 5", "http.addr: expected host:port"],
            [],
        ),
        # A check comparing two fields is left out when one of them could not be read.
        (
            {"IOTBRIDGE_MQTT_RECONNECT_MIN": "40", "IOTBRIDGE_MQTT_RECONNECT_MAX": "x"},
            ["mqtt.reconnect_max: Expected `float`, got `str`"],
            ["reconnect_min"],
        ),
        (
            {"IOTBRIDGE_PAGER_MIN_NUMBER": "9", "IOTBRIDGE_PAGER_MAX_NUMBER": "0"},
            ["pager.max_number: Expected `int` >= 1"],
            ["min_number"],
        ),
        (
            {"IOTBRIDGE_SENSAPHONE_URL": "http://s", "IOTBRIDGE_SENSAPHONE_ALLOW_INSECURE": "no?"},
            ["sensaphone.allow_insecure: Expected `bool`, got `str`"],
            ["in clear"],
        ),
    ],
)
def test_type_and_value_mistakes_together(
    env: dict[str, str], reported: list[str], unsaid: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(env)
    lines = caught.value.message.splitlines()
    assert len(lines) == len(reported), lines
    for line, expected in zip(lines, reported, strict=True):
        assert line.startswith(f"configuration: {expected}"), line
    for word in unsaid:
        assert word not in caught.value.message


def test_unknown_yaml_field_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("pager:\n  max_nubmer: 5\n")
    with pytest.raises(ConfigError, match="max_nubmer"):
        config.load({"IOTBRIDGE_CONFIG": str(path)})


def test_secrets_from_files_and_redaction(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret-sensa\n")
    settings = config.load(
        {
            "IOTBRIDGE_MQTT_URL": "mqtt://bridge:s3cret-mqtt@127.0.0.1:1883",
            "IOTBRIDGE_SENSAPHONE_PASSWORD_FILE": str(secret),
        }
    )
    assert settings.sensaphone.password == "s3cret-sensa"
    address = config.broker_address(settings.mqtt)
    assert (address.username, address.password) == ("bridge", "s3cret-mqtt")
    shown = repr(config.redacted(settings))
    assert "s3cret" not in shown
    assert "mqtt://bridge:***@127.0.0.1:1883" in shown
    assert sorted(config.secrets_of(settings)) == ["s3cret-mqtt", "s3cret-sensa"]


def test_missing_secret_file() -> None:
    with pytest.raises(ConfigError, match=r"sensaphone.password_file: cannot read it"):
        config.load({"IOTBRIDGE_SENSAPHONE_PASSWORD_FILE": "/nonexistent/pw"})


def test_client_id_is_stable() -> None:
    settings = config.load({})
    assert config.client_id_or_default(settings.mqtt) == config.client_id_or_default(
        config.load({}).mqtt
    )
    assert config.client_id_or_default(config.load({"IOTBRIDGE_MQTT_CLIENT_ID": "x"}).mqtt) == "x"


@pytest.mark.parametrize(
    ("url", "host", "port", "tls", "websocket", "path"),
    [
        ("mqtt://b", "b", 1883, False, False, "/mqtt"),
        ("mqtts://b", "b", 8883, True, False, "/mqtt"),
        ("ws://b", "b", 80, False, True, "/mqtt"),
        ("ws://b:9001/", "b", 9001, False, True, "/"),
        ("wss://user:pw@b/ws/mqtt?token=1", "b", 443, True, True, "/ws/mqtt?token=1"),
    ],
)
def test_broker_urls(url: str, host: str, port: int, tls: bool, websocket: bool, path: str) -> None:
    address = config.broker_address(config.load({"IOTBRIDGE_MQTT_URL": url}).mqtt)
    assert (address.host, address.port, address.tls) == (host, port, tls)
    assert (address.websocket, address.path) == (websocket, path)


def test_websocket_url_password_is_redacted() -> None:
    settings = config.load({"IOTBRIDGE_MQTT_URL": "wss://u:hunter2@b/mqtt"})
    assert config.redacted(settings)["mqtt"]["url"] == "wss://u:***@b/mqtt"
