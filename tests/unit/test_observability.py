"""The observability pack only speaks of metrics the bridge really exports.

Every PromQL expression in the Grafana dashboard and the Prometheus rules file is checked against
the sample names of a real `bridge.ops.metrics.Metrics()` registry, so renaming a metric without
updating the dashboard or the alerts fails here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from bridge.ops.metrics import Metrics

CHART = Path(__file__).resolve().parents[2] / "helm" / "iotbridge"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
RULES = CHART / "files" / "prometheus-rules.yaml"
# Sample names prometheus_client writes for each metric type (`_created` is turned off).
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "info": ("_info",),
}
# Series Prometheus adds itself for every scrape target.
PROMETHEUS_OWN = {"up"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip


def exported() -> set[str]:
    """Every sample name the bridge's registry can expose, labelled metrics included."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in panels(dashboard()) for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [r["expr"] for group in rules["groups"] for r in group["rules"]]


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|`[^`]*`', '""', expr)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions or keywords."""
    text = strip_strings(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = re.findall(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text)
    return {name for name in names if name.lower() not in PROMQL_WORDS}


def balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in strip_strings(expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


ALL = [("dashboard", e) for e in dashboard_exprs()] + [("rules", e) for e in rule_exprs()]


def test_the_name_extraction_itself() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{job=~"$job", x="y(z"}'
        "[$__rate_interval]))) / on (route) group_left b_total > bool 1 and up == 0"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "up"}
    assert balanced(expr)
    assert not balanced("sum(rate(x[5m])")
    assert not balanced("sum(rate(x[5m)])")


def test_both_files_have_expressions() -> None:
    assert len(dashboard_exprs()) >= 10
    assert len(rule_exprs()) >= 4


@pytest.mark.parametrize(("where", "expr"), ALL)
def test_every_metric_referenced_is_exported(where: str, expr: str) -> None:
    unknown = metric_names(expr) - exported() - PROMETHEUS_OWN
    assert not unknown, f"{where}: {sorted(unknown)} not exported by the bridge in: {expr}"
    assert metric_names(expr), f"{where}: no metric in: {expr}"


@pytest.mark.parametrize(("where", "expr"), ALL)
def test_every_expression_is_balanced(where: str, expr: str) -> None:
    assert balanced(expr), f"{where}: unbalanced brackets in: {expr}"


def test_up_is_allowed_and_used() -> None:
    assert "up" not in exported()
    assert any("up" in metric_names(e) for e in rule_exprs())


def test_dashboard_covers_what_operators_need() -> None:
    exprs = " ".join(" ".join(e.split()) for e in dashboard_exprs())
    for quantile in ("0.5", "0.95", "0.99"):
        latency = "sum by (le) (rate(iotbridge_command_duration_seconds_bucket"
        assert f"histogram_quantile({quantile}, {latency}" in exprs
    for needle in (
        "sum by (route, outcome) (rate(iotbridge_commands_total",
        "sum by (upstream, operation, le) (rate(iotbridge_upstream_request_duration_seconds_bucket",
        "iotbridge_upstream_request_duration_seconds_count",
        "iotbridge_mqtt_connected",
        "iotbridge_mqtt_reconnects_total",
        "iotbridge_commands_in_flight",
        "iotbridge_outbound_dropped_total",
        "iotbridge_sensaphone_logins_total",
        "iotbridge_upstream_retries_total",
        "iotbridge_pager_guests_served",
        "iotbridge_pager_percent_late",
        "iotbridge_pager_percent_on_time",
        "iotbridge_pager_average_time_served_seconds",
        "iotbridge_pager_sessions",
    ):
        assert needle in exprs, needle


def test_dashboard_uses_the_ds_prometheus_variable() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"])
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels(board))


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values=values, name="iotbridge", namespace="bridge")
    return [
        doc
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def test_dashboard_configmap_only_when_enabled() -> None:
    def dashboards(values: dict[str, Any]) -> list[dict[str, Any]]:
        return [d for d in render(values) if d["metadata"]["name"].endswith("-dashboard")]

    assert dashboards({}) == []
    [configmap] = dashboards({"grafanaDashboard": {"enabled": True}})
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["iotbridge.json"]) == dashboard()
    kubernetes_validate.validate(configmap, "1.35.0", strict=True)


def test_no_created_series() -> None:
    """`_created` timestamps (one per counter and histogram child) are not exported: noise."""
    metrics = Metrics()
    metrics.commands.labels("pager", "page", "ok").inc()
    metrics.command_seconds.labels("pager").observe(0.01)
    names = {s.name for family in metrics.registry.collect() for s in family.samples}
    assert names
    assert not [name for name in names if name.endswith("_created")]
