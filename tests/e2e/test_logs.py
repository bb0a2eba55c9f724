"""What the log says about commands: one line per failure, none per success, never a secret."""

from __future__ import annotations

import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import Bridge
from bridge.ops.logs import CorrelationFilter
from tests.support import Peer, http_get

pytestmark = pytest.mark.broker


async def test_each_failed_command_is_one_line_with_its_correlation_id(
    bridge: Bridge, peer: Peer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.core.dispatch")
    caplog.handler.addFilter(CorrelationFilter())
    ok = await peer.request("pager/66/action", {"action": "start", "transaction": "fine"})
    assert ok["status"] == "ok"
    refused = await peer.request("pager/66/action", {"action": "start", "label": "x" * 500})
    assert refused["error"]["code"] == "invalid_payload"
    failed = await peer.request("pager/77/action", {"action": "page"})  # no session there
    assert failed["error"]["code"] == "upstream_error"
    await peer.publish("pager/66/action", b"")
    await peer.wait_for(lambda m: m[0] == "pager/66/action/result" and b"empty payload" in m[1])

    lines = [r for r in caplog.records if r.name == "bridge.core.dispatch"]
    assert [(r.levelno, r.getMessage().split(": ")[1]) for r in lines] == [
        (logging.INFO, "invalid_payload"),
        (logging.WARNING, "upstream_error"),
        (logging.INFO, "invalid_payload"),
    ]
    assert lines[0].getMessage().startswith("command on pager/66/action failed: invalid_payload")
    assert getattr(lines[0], "correlation_id", None) == refused["transaction"]
    assert "transmitter answered 4.04" in lines[1].getMessage()
    assert "empty payload: send a JSON object or a bare action word" in lines[2].getMessage()

    samples = {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(await http_get(bridge, "/metrics"))
        for s in family.samples
        if s.name == "iotbridge_commands_total"
    }
    attempted = (("action", "start"), ("outcome", "invalid_payload"), ("route", "pager"))
    assert samples[attempted] == 1
