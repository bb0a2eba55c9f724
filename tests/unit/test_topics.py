"""Topic parsing and building: the contract's topics, and nothing else, are accepted."""

from __future__ import annotations

import pytest

from bridge.contract.topics import BaseTopic, PagerTopic, ScheduleTopic, Topics
from bridge.errors import InvalidTopic
from bridge.mqtt.names import is_publishable


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("pager/66/action", PagerTopic(66)),
        ("pager/1/action", PagerTopic(1)),
        ("pager/999/action", PagerTopic(999)),
        ("pager/base/action", BaseTopic()),
        ("schedule/28487/timerange", ScheduleTopic(28487)),
    ],
)
def test_parses_command_topics(topic: str, expected: object) -> None:
    assert Topics().parse(topic) == expected


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("pager/abc/action", "pager number must be a positive integer, got 'abc'"),
        ("pager/-1/action", "pager number must be a positive integer, got '-1'"),
        ("pager/0/action", "pager number must be between 1 and 65535, got 0"),
        ("pager/65536/action", "pager number must be between 1 and 65535, got 65536"),
        ("pager/1e3/action", "pager number must be a positive integer, got '1e3'"),
        ("pager/٣/action", "pager number must be a positive integer"),
        ("pager/66/other", "not a command topic"),
        ("schedule/x/timerange", "schedule id must be a positive integer, got 'x'"),
        ("elsewhere/1/action", "not a command topic"),
    ],
)
def test_refuses_bad_segments(topic: str, message: str) -> None:
    with pytest.raises(InvalidTopic) as caught:
        Topics().parse(topic)
    assert message in caught.value.message


def test_prefix_applies_to_every_topic() -> None:
    topics = Topics("site-a")
    assert topics.parse("site-a/pager/5/action") == PagerTopic(5)
    with pytest.raises(InvalidTopic):
        topics.parse("pager/5/action")
    assert topics.bridge_state == "site-a/bridge/state"
    assert topics.statistics == "site-a/pager/statistics"
    assert topics.pager_session(5) == "site-a/pager/5/session"
    assert topics.pager_event(5) == "site-a/pager/5/event"
    assert topics.schedule_ranges(7) == "site-a/schedule/7/timeranges"
    assert topics.subscriptions() == ["site-a/pager/+/action", "site-a/schedule/+/timerange"]


def test_shared_subscription_filters() -> None:
    assert Topics().subscriptions("bridges") == [
        "$share/bridges/pager/+/action",
        "$share/bridges/schedule/+/timerange",
    ]


def test_every_number_the_contract_allows_by_default() -> None:
    # The vendor documents no range: 1200 and 4242 are real pagers somewhere.
    for number in (1, 1200, 4242, 65535):
        assert Topics().parse(f"pager/{number}/action") == PagerTopic(number)


def test_a_site_narrows_the_range() -> None:
    topics = Topics(min_number=100, max_number=199)
    assert topics.parse("pager/150/action") == PagerTopic(150)
    for number in (99, 200):
        with pytest.raises(InvalidTopic, match="between 100 and 199"):
            topics.parse(f"pager/{number}/action")


@pytest.mark.parametrize(
    ("topic", "ok"),
    [("a/b", True), ("a/+/b", False), ("a/#", False), ("$SYS/x", False), ("", False)],
)
def test_never_publishes_to_wildcards(topic: str, ok: bool) -> None:
    assert is_publishable(topic) is ok


def test_own_namespace() -> None:
    topics = Topics()
    assert topics.in_namespace("bridge/state")
    assert topics.in_namespace("pager/1/session")
    assert not topics.in_namespace("clients/me/replies")
