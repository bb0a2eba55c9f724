"""The README's metrics table is the operator's reference: it names every metric the bridge
exports, under the name Prometheus shows, and nothing the bridge does not export."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.metrics_core import Metric

from bridge.ops.metrics import Metrics

README = Path(__file__).resolve().parents[2] / "README.md"


def documented() -> set[str]:
    """Names in the first column of the table under "## Metrics"; `_x` abbreviates the row's
    first name's family (`iotbridge_pager_guests_served`, `_sessions`)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = re.findall(r"`([^`]+)`", line.split("|")[1])
        family = "_".join(cells[0].split("_")[:2])
        names.update(family + c if c.startswith("_") else c for c in cells)
    return names


def exported() -> set[str]:
    families: list[Metric] = list(Metrics().registry.collect())
    suffix = {"counter": "_total", "info": "_info"}
    return {f.name + suffix.get(f.type, "") for f in families}


def test_the_readme_names_every_metric_and_no_other() -> None:
    assert documented() == exported()
