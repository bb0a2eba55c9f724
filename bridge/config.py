"""Typed settings: a YAML file plus `IOTBRIDGE_*` environment variables, env winning.

Loaded once at start-up into frozen Structs and passed down; there is no global settings object.
Every field can be set from the environment as `IOTBRIDGE_<SECTION>_<FIELD>` (for example
`IOTBRIDGE_PAGER_MAX_NUMBER=500`), plus the documented short names in `_ALIASES`. Secrets can also
come from files (`*_FILE`, e.g. a Kubernetes Secret mount) and are redacted in every printout.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import msgspec
import yaml

from bridge.config_check import redact_url, semantic, sift
from bridge.errors import ConfigError

REDACTED = "***"

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Policy base of every settings section: immutable, named fields, typos refused.

    Subclasses repeat `frozen=True`: msgspec inherits it, but mypy's dataclass view does not.
    """


class MqttSettings(Section, frozen=True):
    url: str = "mqtt://127.0.0.1:1883"
    protocol: Literal["5", "3.1.1"] = "5"
    # Empty means derived from the host name, stable across restarts (see `client_id_or_default`).
    client_id: str = ""
    session_expiry: Annotated[int, msgspec.Meta(ge=0)] = 86400
    keepalive: Annotated[int, msgspec.Meta(ge=5, le=65535)] = 30
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # Shared subscription group: with it, several replicas split the command load.
    shared_group: str = ""
    reconnect_min: PositiveFloat = 0.5
    reconnect_max: PositiveFloat = 30.0
    # Seconds to wait for the broker's PUBACK/SUBACK before treating the link as broken.
    op_timeout: PositiveFloat = 10.0
    # Follow the broker's $SYS count of dropped messages (Mosquitto) as a metric.
    broker_stats: bool = True
    # Topic filters a request's MQTT 5 Response Topic may match to be answered there too
    # (IOTBRIDGE_MQTT_RESPONSE_TOPICS, comma-separated). Empty: Response Topics are ignored.
    # Never inside any namespace the bridge serves or announces, whatever the list says.
    response_topics: list[str] = msgspec.field(default_factory=list)


class PagerSettings(Section, frozen=True):
    url: str = "coap://127.0.0.1:5683"
    # Seconds to wait for one CoAP exchange before answering `upstream_timeout`.
    timeout: PositiveFloat = 10.0
    # Reads (get, list, history, statistics, settings) are retried within this many seconds;
    # anything that changes state is never retried (a page must not be sent twice).
    deadline: PositiveFloat = 30.0
    # Circuit breaker: open after this many timeouts/unreachables in a row, probe after cooldown.
    breaker_failures: Annotated[int, msgspec.Meta(ge=1)] = 5
    breaker_cooldown: PositiveFloat = 5.0
    # The vendor documents no range: every number the MQTT contract allows is passed on, and the
    # transmitter's answer decides. A site may narrow it.
    min_number: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 1
    max_number: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 65535
    page_modes: list[str] = msgspec.field(
        default_factory=lambda: ["Flash30Sec", "Vibe1", "Flash5Sec", "Beep", "Vibe3"]
    )
    max_label: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 64
    max_message: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 160
    observe: bool = True
    poll_interval: PositiveFloat = 5.0
    # CoAP message IDs are 16-bit and must not be reused within EXCHANGE_LIFETIME (247 s);
    # after this many requests the client moves to a fresh UDP endpoint (see bridge/coap/client.py).
    rotate_after: Annotated[int, msgspec.Meta(ge=16, le=60000)] = 30000
    # Pager numbers this site uses (for Home Assistant discovery); any valid number works.
    numbers: list[int] = msgspec.field(default_factory=list)


class ScheduleParent(Section, frozen=True):
    """Where a schedule lives in Sensaphone's resource tree."""

    kind: Literal["default_schedule", "device_schedule", "contact_schedule"] = "default_schedule"
    device_id: int | None = None
    user_id: int | None = None
    contact_id: int | None = None


class SensaphoneSettings(Section, frozen=True):
    url: str = "https://rest.sensaphone.net/api/v1"
    user: str = ""
    password: str | None = None
    password_file: str | None = None
    mode: Literal["json", "uri"] = "json"
    # An http:// URL sends the password in clear: refused unless this says it is meant (a
    # simulator, a test rig), and then warned about at every start.
    allow_insecure: bool = False
    # CA bundle for the API's certificate; SSL_CERT_FILE is honoured as well.
    ca_file: str | None = None
    timeout: PositiveFloat = 10.0
    # Total time a command may spend on retries before it is answered with an error.
    deadline: PositiveFloat = 30.0
    # Circuit breaker: open after this many requests in a row got no answer, probe after cooldown.
    breaker_failures: Annotated[int, msgspec.Meta(ge=1)] = 5
    breaker_cooldown: PositiveFloat = 5.0
    # Schedule id (as text) -> its parent.
    schedules: dict[str, ScheduleParent] = msgspec.field(default_factory=dict)
    # Renew the session this many seconds before Sensaphone says it expires.
    renew_margin: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    # A reply body (decoded) larger than this is read no further and answered `upstream_error`
    # (a schedule of 1,000 ranges is about 64 KB).
    max_reply_bytes: Annotated[int, msgspec.Meta(ge=4096, le=1 << 30)] = 4 << 20


class HttpSettings(Section, frozen=True):
    # Metrics and probes. Loopback by default; `0.0.0.0:9464` in a container.
    addr: str = "127.0.0.1:9464"


class LimitSettings(Section, frozen=True):
    max_payload: Annotated[int, msgspec.Meta(ge=64, le=1_048_576)] = 16384
    # Commands being carried out at once (each pager, the base station and each schedule one at
    # a time; the lanes waiting take turns, round-robin). Also the MQTT 5 Receive Maximum.
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 100
    # Commands accepted and not yet answered, all lanes together; past it the bridge stops
    # reading (back-pressure: QoS 1 commands wait at the broker, QoS 0 ones are `overloaded`).
    max_queued: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    # Commands waiting for one pager, the base station or one schedule; past it `overloaded`.
    # Well below max_in_flight (the MQTT 5 window): a flood of QoS 1 commands for one pager
    # then holds at most this much of the window, and the rest is answered and acknowledged.
    lane_depth: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 32
    # Commands per second a site takes (a token bucket holding `burst`); past it `overloaded`.
    # 0 turns the limit off.
    rate: Annotated[float, msgspec.Meta(ge=0)] = 1000.0
    burst: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 2000
    # A command whose `sent_at` is older than this (seconds) is answered `expired`, not carried
    # out: a page ten minutes late is worse than none. 0 turns the check off.
    max_age: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    # A redelivered command (same topic and transaction or correlation data) within this many
    # seconds is answered from its first outcome instead of being carried out again.
    dedup_window: Annotated[float, msgspec.Meta(ge=0)] = 600.0
    dedup_size: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 10000
    # ...and at most this many bytes of remembered results (a `list` of 10,000 sessions is
    # 2.3 MB): the oldest are forgotten first.
    dedup_bytes: Annotated[int, msgspec.Meta(ge=0, le=1 << 30)] = 16 << 20
    # SIGTERM: how long in-flight commands may take to finish before the bridge disconnects.
    drain_timeout: Annotated[float, msgspec.Meta(ge=0)] = 20.0


class LogSettings(Section, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class DiscoverySettings(Section, frozen=True):
    # Home Assistant MQTT discovery: off unless asked for (the demo turns it on).
    enabled: bool = False
    prefix: str = "homeassistant"
    # Node id in discovery topics and unique ids; empty means the MQTT client id. With several
    # sites each site's is `<node>-<site>` (as its client id is `<client id>-<site>`).
    node: str = ""
    # Shown in front of every device name in Home Assistant ("north Pager 66"). Empty: the
    # topic prefix; with several sites, each site's name (after this text, when it is given).
    name: Annotated[str, msgspec.Meta(max_length=64)] = ""


class SiteSettings(Section, frozen=True):
    """One site of a multi-site process: its own transmitter, account, prefix and limits."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    # Defaults to the site's name: `<name>/pager/<number>/action`.
    topic_prefix: str | None = None
    pager: PagerSettings = msgspec.field(default_factory=PagerSettings)
    # Optional: a site without a Sensaphone account answers schedule commands with an error.
    sensaphone: SensaphoneSettings | None = None
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=10000)] | None = None


class Settings(Section, frozen=True):
    topic_prefix: str = ""
    # uvloop (the default where it is installed) or asyncio's own loop; see bridge/cli.py.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    mqtt: MqttSettings = msgspec.field(default_factory=MqttSettings)
    pager: PagerSettings = msgspec.field(default_factory=PagerSettings)
    sensaphone: SensaphoneSettings = msgspec.field(default_factory=SensaphoneSettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    discovery: DiscoverySettings = msgspec.field(default_factory=DiscoverySettings)
    # Many sites in one process. Empty (the default): one site from the settings above.
    sites: list[SiteSettings] = msgspec.field(default_factory=list)


_SECTIONS = ("mqtt", "pager", "sensaphone", "http", "limits", "log", "discovery")
# The short names the README documents, mapped to their place in the settings.
_ALIASES = {
    "IOTBRIDGE_TOPIC_PREFIX": ("topic_prefix",),
    "IOTBRIDGE_EVENT_LOOP": ("event_loop",),
    "IOTBRIDGE_HTTP_ADDR": ("http", "addr"),
}
_SECRET_FIELDS = {"password"}
_LIST_FIELDS = {("pager", "page_modes"), ("pager", "numbers"), ("mqtt", "response_topics")}
_MAPPING_FIELDS = {("sensaphone", "schedules")}


def load(environ: dict[str, str] | None = None) -> Settings:
    """Read the YAML file named by IOTBRIDGE_CONFIG (if any), overlay the environment, validate.

    Raises ConfigError listing every mistake, one line each, naming the field and what is wrong:
    the type mistakes and the value mistakes of every field that has the right type, at once.
    """
    env = dict(os.environ if environ is None else environ)
    raw: dict[str, Any] = {}
    path = env.get("IOTBRIDGE_CONFIG")
    if path:
        raw = _read_yaml(Path(path))
    _overlay_env(raw, env)
    problems = _read_secret_files(raw)
    sifted = sift(raw, Settings)
    settings = _salvaged(sifted.kept, sifted.dropped)
    problems += sifted.problems + semantic(settings, sifted.dropped)
    if problems:
        raise ConfigError("\n".join(f"configuration: {problem}" for problem in problems))
    return settings


def _salvaged(kept: dict[str, Any], dropped: set[str]) -> Settings:
    """The settings from every field that converted, defaults in place of the rest, so the
    value checks can run on them too. A site's name is the one required field: where it is
    missing or wrong, "-" stands in, and is marked dropped so no check compares it."""
    for i, site in enumerate(kept.get("sites", [])):
        if "name" not in site:
            site["name"] = "-"
            dropped.add(f"sites[{i}].name")
    return msgspec.convert(kept, Settings, strict=False)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"configuration: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration: {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"configuration: {path} must hold a mapping at the top level")
    return data


def _overlay_env(raw: dict[str, Any], env: dict[str, str]) -> None:
    for name, value in env.items():
        if not name.startswith("IOTBRIDGE_") or name == "IOTBRIDGE_CONFIG":
            continue
        place = _ALIASES.get(name) or _place_of(name)
        if place is None:
            continue
        target = raw
        for key in place[:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise ConfigError(f"configuration: {key} must be a mapping")
        target[place[-1]] = _env_value(place, value)


def _place_of(name: str) -> tuple[str, ...] | None:
    rest = name.removeprefix("IOTBRIDGE_").lower()
    for section in _SECTIONS:
        if rest.startswith(section + "_"):
            return (section, rest[len(section) + 1 :])
    return None


def _env_value(place: tuple[str, ...], value: str) -> Any:
    if place in _LIST_FIELDS:
        return [item.strip() for item in value.split(",") if item.strip()]
    if place in _MAPPING_FIELDS:
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"configuration: {'.'.join(place)}: not valid YAML/JSON") from None
    return value


def _read_secret_files(raw: dict[str, Any]) -> list[str]:
    """Fill `password` from `password_file` where only the file is given, top level and per
    site; a file that cannot be read is a problem of its own."""
    parts: list[tuple[str, Any]] = [(name, raw.get(name)) for name in ("mqtt", "sensaphone")]
    sites = raw.get("sites")
    if isinstance(sites, list):
        parts += [
            (f"sites[{i}].sensaphone", site.get("sensaphone"))
            for i, site in enumerate(sites)
            if isinstance(site, dict)
        ]
    problems = []
    for where, part in parts:
        if not isinstance(part, dict):
            continue
        secret_file = part.get("password_file")
        if secret_file and not part.get("password"):
            try:
                part["password"] = Path(secret_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                problems.append(f"{where}.password_file: cannot read it ({exc.strerror})")
    return problems


def per_site(settings: Settings) -> list[tuple[str, Settings]]:
    """Each site's complete settings, so a site is built exactly like a single-site bridge.

    A site gets its own MQTT client id (`<client id>-<site>`), so its persistent session, its
    back-pressure and its failures are its own: one slow transmitter never delays another site.
    Its Home Assistant discovery carries the site too (`_site_discovery`).
    """
    if not settings.sites:
        return [("default", settings)]
    base_id = client_id_or_default(settings.mqtt)
    out = []
    for site in settings.sites:
        limits = settings.limits
        if site.max_in_flight is not None:
            limits = msgspec.structs.replace(limits, max_in_flight=site.max_in_flight)
        out.append(
            (
                site.name,
                msgspec.structs.replace(
                    settings,
                    topic_prefix=site.name if site.topic_prefix is None else site.topic_prefix,
                    mqtt=msgspec.structs.replace(settings.mqtt, client_id=f"{base_id}-{site.name}"),
                    discovery=_site_discovery(settings.discovery, site.name),
                    pager=site.pager,
                    sensaphone=site.sensaphone or SensaphoneSettings(),
                    limits=limits,
                    sites=[],
                ),
            )
        )
    return out


def _site_discovery(discovery: DiscoverySettings, site: str) -> DiscoverySettings:
    """A site's discovery: its node and device names carry the site, so the sites of one
    process never share a discovery topic, a unique id or a device name in Home Assistant."""
    return msgspec.structs.replace(
        discovery,
        node=f"{discovery.node}-{site}" if discovery.node else "",
        name=f"{discovery.name} {site}" if discovery.name else site,
    )


class BrokerAddress(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None
    # MQTT over WebSockets (ws://, wss://): the HTTP path of the upgrade request.
    websocket: bool = False
    path: str = "/mqtt"


# Default port per URL scheme: MQTT's registered ports, and HTTP's for WebSockets.
_BROKER_PORTS = {"mqtt": 1883, "mqtts": 8883, "ws": 80, "wss": 443}


def broker_address(mqtt: MqttSettings) -> BrokerAddress:
    """Host, port, TLS, transport and credentials, from the URL with the explicit fields
    winning. `ws://host:port/path` and `wss://...` select MQTT over WebSockets; the path
    defaults to `/mqtt`, the one most brokers serve."""
    parts = urlsplit(mqtt.url)
    scheme = parts.scheme
    username = mqtt.username or (unquote(parts.username) if parts.username else None)
    password = mqtt.password or (unquote(parts.password) if parts.password else None)
    websocket = scheme in ("ws", "wss")
    path = parts.path or "/mqtt"
    if parts.query:
        path = f"{path}?{parts.query}"
    return BrokerAddress(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or _BROKER_PORTS.get(scheme, 1883),
        tls=scheme in ("mqtts", "wss"),
        username=username,
        password=password,
        websocket=websocket,
        path=path,
    )


def insecure(settings: Settings) -> list[str]:
    """What the configuration allows but sends a secret in clear: each a WARNING at start-up
    and a line of `check-config`."""
    found = []
    address = broker_address(settings.mqtt)
    if address.password and not address.tls:
        scheme = urlsplit(settings.mqtt.url).scheme
        found.append(
            f"mqtt.url: {scheme}:// sends the MQTT password in clear to "
            f"{address.host}:{address.port}; use {'wss' if address.websocket else 'mqtts'}://"
        )
    parts: list[tuple[str, SensaphoneSettings | None]] = [("sensaphone", settings.sensaphone)]
    parts += [(f"sites[{i}].sensaphone", s.sensaphone) for i, s in enumerate(settings.sites)]
    for where, sensaphone in parts:
        if sensaphone is not None and urlsplit(sensaphone.url).scheme == "http":
            found.append(
                f"{where}.url: http:// sends the Sensaphone password in clear "
                f"({where}.allow_insecure is set); use https://"
            )
    return found


def client_id_or_default(mqtt: MqttSettings) -> str:
    """A stable id, so the broker keeps our persistent session across restarts."""
    return mqtt.client_id or f"iotbridge-{socket.gethostname()}"


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, with every secret replaced by ***.

    Effective: the values the bridge will use, so a derived default (the client id from the
    host name) is shown as derived, not as the empty string that asks for it.
    """
    data: dict[str, Any] = msgspec.to_builtins(settings)
    client_id = client_id_or_default(settings.mqtt)
    data["mqtt"]["client_id"] = client_id
    data["discovery"]["node"] = settings.discovery.node or client_id
    _redact(data)
    return data


def _redact(value: Any) -> None:
    """Every `password` and every URL's password, at any depth (sites included)."""
    if isinstance(value, list):
        for item in value:
            _redact(item)
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        if key in _SECRET_FIELDS and item:
            value[key] = REDACTED
        elif key == "url" and isinstance(item, str):
            value[key] = redact_url(item)
        else:
            _redact(item)


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value in the settings (every site's too), for log scrubbing and tests."""
    values = [settings.mqtt.password, settings.sensaphone.password]
    values.append(broker_address(settings.mqtt).password)
    values += [site.sensaphone.password for site in settings.sites if site.sensaphone]
    return [v for v in values if v]
