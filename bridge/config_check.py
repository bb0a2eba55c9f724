"""Every mistake in a configuration, not only the first: what `iotbridge check-config` reports.

msgspec stops at the first field it cannot convert. A user fixing a file wants the whole list,
so the raw YAML-plus-environment mapping is sifted against the settings Structs field by field
(`sift`): each field that cannot be converted is a problem and is left out, and what remains
converts. The value checks then run on that (`semantic`): URL schemes, ports, addresses, ranges
that depend on other fields, for the top level and every `sites[]` entry alike, so type and
value mistakes are all reported in one run. A check that compares fields is skipped when one
of them was left out (its default would stand in for a value the user did write).
"""

from __future__ import annotations

import types
from collections.abc import Collection
from typing import TYPE_CHECKING, Annotated, Any, Union, get_args, get_origin
from urllib.parse import urlsplit

import msgspec

from bridge.mqtt.names import is_filter

if TYPE_CHECKING:
    from bridge.config import PagerSettings, SensaphoneSettings, Settings

_LEFT_OUT = object()


class Sifted(msgspec.Struct, kw_only=True):
    """`kept`: the raw data without what does not convert; `problems`: one line per mistake,
    "field.path: what is wrong"; `dropped`: the paths of the fields left out."""

    kept: Any
    problems: list[str] = msgspec.field(default_factory=list)
    dropped: set[str] = msgspec.field(default_factory=set)


def sift(raw: Any, target: Any) -> Sifted:
    """Walk `raw` against `target` (a Struct type) field by field, keeping what converts."""
    sifted = Sifted(kept=None)
    sifted.kept = _keep(raw, target, "", sifted)
    return sifted


def _keep(raw: Any, target: Any, path: str, sifted: Sifted) -> Any:
    """`raw` without its parts that do not convert to `target`, or _LEFT_OUT if none would."""
    target = _unoptional(target) if raw is not None else target
    origin = get_origin(target)
    if isinstance(target, type) and issubclass(target, msgspec.Struct) and isinstance(raw, dict):
        return _keep_fields(raw, target, path, sifted)
    if origin is list and isinstance(raw, list) and _is_struct(get_args(target)[0]):
        (item,) = get_args(target)
        kept = [_keep(value, item, f"{path}[{i}]", sifted) for i, value in enumerate(raw)]
        # An entry left out stays as an empty one, so every later entry keeps its index.
        return [{} if value is _LEFT_OUT else value for value in kept]
    if origin is dict and isinstance(raw, dict) and _is_struct(get_args(target)[1]):
        value_type = get_args(target)[1]
        kept_items = {k: _keep(v, value_type, f"{path}.{k}", sifted) for k, v in raw.items()}
        return {k: v for k, v in kept_items.items() if v is not _LEFT_OUT}
    try:
        msgspec.convert(raw, target, strict=False)
    except msgspec.ValidationError as exc:
        sifted.problems.append(describe(exc, path))
        sifted.dropped.add(path)
        return _LEFT_OUT
    return raw


def _keep_fields(
    raw: dict[str, Any], target: type[msgspec.Struct], path: str, sifted: Sifted
) -> dict[str, Any]:
    fields = {f.encode_name: f for f in msgspec.structs.fields(target)}
    kept = {}
    for key, value in raw.items():
        where = f"{path}.{key}" if path else str(key)
        field = fields.get(key)
        if field is None:
            sifted.problems.append(f"{where}: unknown field")
            continue
        converted = _keep(value, field.type, where, sifted)
        if converted is not _LEFT_OUT:
            kept[key] = converted
    for name, field in fields.items():
        if field.required and name not in raw:
            where = f"{path}.{name}" if path else name
            sifted.problems.append(f"{where}: required")
            sifted.dropped.add(where)
    return kept


def _unoptional(target: Any) -> Any:
    """`X | None` -> X (a None value is checked against the whole union instead)."""
    if get_origin(target) in (Union, types.UnionType):
        args = [a for a in get_args(target) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return target


def _is_struct(target: Any) -> bool:
    if get_origin(target) is Annotated:
        target = get_args(target)[0]
    return isinstance(target, type) and issubclass(target, msgspec.Struct)


def describe(exc: msgspec.ValidationError, path: str = "") -> str:
    """msgspec's "Expected `int`, got `str` - at `$.pager.max_number`" as
    "pager.max_number: Expected `int`, got `str`"."""
    text = str(exc)
    what, sep, where = text.rpartition(" - at `")
    if not sep:
        return f"{path}: {text}" if path else text
    inner = where.rstrip("`").removeprefix("$")
    field = f"{path}{inner}".removeprefix(".") or "(top level)"
    return f"{field}: {what}"


def semantic(settings: Settings, dropped: Collection[str] = ()) -> list[str]:
    """What the types cannot say, for the top level and each site. `dropped`: the fields
    `sift` left out (defaults stand in for them), which no check compares with another."""
    problems = _url(settings.mqtt.url, "mqtt.url", ("mqtt", "mqtts", "ws", "wss"))
    problems += _pager(settings.pager, "pager", dropped)
    problems += _sensaphone(settings.sensaphone, "sensaphone", dropped)
    problems += _prefix(settings.topic_prefix, "topic_prefix")
    _, sep, port = settings.http.addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        problems.append(f"http.addr: expected host:port, got {settings.http.addr!r}")
    problems += [
        f"mqtt.response_topics: {f!r} is not a topic filter"
        for f in settings.mqtt.response_topics
        if not is_filter(f)
    ]
    reconnect = {"mqtt.reconnect_min", "mqtt.reconnect_max"}
    if settings.mqtt.reconnect_min > settings.mqtt.reconnect_max and reconnect.isdisjoint(dropped):
        problems.append("mqtt.reconnect_min: must not exceed mqtt.reconnect_max")
    names: set[str] = set()
    for i, site in enumerate(settings.sites):
        where = f"sites[{i}]"
        if f"{where}.name" not in dropped:
            if site.name in names:
                problems.append(f"{where}.name: {site.name!r} is used by another site")
            names.add(site.name)
        problems += _pager(site.pager, f"{where}.pager", dropped)
        if site.sensaphone is not None:
            problems += _sensaphone(site.sensaphone, f"{where}.sensaphone", dropped)
        if site.topic_prefix is not None:
            problems += _prefix(site.topic_prefix, f"{where}.topic_prefix")
    return problems


def _pager(pager: PagerSettings, where: str, dropped: Collection[str]) -> list[str]:
    problems = _url(pager.url, f"{where}.url", ("coap",))
    low, top = pager.min_number, pager.max_number
    # A bound left out is its default, the widest: numbers outside it are wrong whatever
    # the user meant, but min against max compares a value the user did not write.
    if low > top and {f"{where}.min_number", f"{where}.max_number"}.isdisjoint(dropped):
        problems.append(f"{where}.min_number: {low} is above max_number ({top})")
    bad = [n for n in pager.numbers if not low <= n <= top]
    if bad:
        problems.append(f"{where}.numbers: {bad} not between {low} and {top}")
    return problems


def _sensaphone(sensaphone: SensaphoneSettings, where: str, dropped: Collection[str]) -> list[str]:
    problems = _url(sensaphone.url, f"{where}.url", ("http", "https"))
    insecure = urlsplit(sensaphone.url).scheme == "http" and not sensaphone.allow_insecure
    if not problems and insecure and f"{where}.allow_insecure" not in dropped:
        problems.append(
            f"{where}.url: http:// would send the Sensaphone password in clear; use https://, "
            f"or set {where}.allow_insecure: true where that is meant (a simulator, a test rig)"
        )
    problems += [
        f"{where}.schedules.{key}: ids are numbers"
        for key in sensaphone.schedules
        if not key.isdigit()
    ]
    return problems


def _prefix(prefix: str, where: str) -> list[str]:
    if any(c in prefix for c in "#+\0") or prefix.startswith("$"):
        return [f"{where}: must not contain + # NUL or start with $"]
    return []


def redact_url(url: str) -> str:
    """`url` with its password, if any, replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _url(url: str, field: str, schemes: tuple[str, ...]) -> list[str]:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        want = " or ".join(f"{s}://host" for s in schemes)
        return [f"{field}: expected {want}, got {redact_url(url)!r}"]
    try:
        _ = parts.port
    except ValueError:
        return [f"{field}: bad port in {redact_url(url)!r}"]
    return []
