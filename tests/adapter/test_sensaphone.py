"""SensaphoneClient against the Sensaphone simulator over real HTTP and HTTPS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trustme

from bridge.config import SensaphoneSettings
from bridge.core.breaker import CircuitBreaker
from bridge.core.retry import Backoff
from bridge.errors import AuthFailed, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from bridge.ops.metrics import Metrics
from bridge.schedules.sensaphone import Parent, SensaphoneClient, TimeRange
from bridge.sim.sensaphone.server import SensaphoneSimulator
from tests.adapter.conftest import SENSAPHONE_PASSWORD, MakeClient, sensaphone_clients

PASSWORD = SENSAPHONE_PASSWORD
DEVICE = Parent("default_schedule", device_id=1234)
CONTACT = Parent("contact_schedule", user_id=55, contact_id=66)
SCHEDULES = [(28487, DEVICE), (300, CONTACT), (500, Parent("device_schedule", device_id=1234))]


class Recorder:
    """A SensaphoneObserver that remembers every call."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.logins: list[tuple[str, bool]] = []
        self.retries: list[tuple[str, str]] = []

    def request_done(self, operation: str, outcome: str, seconds: float) -> None:
        assert seconds >= 0
        self.requests.append((operation, outcome))

    def login(self, kind: str, ok: bool) -> None:
        self.logins.append((kind, ok))

    def retry(self, operation: str, reason: str) -> None:
        self.retries.append((operation, reason))


@pytest.fixture
def sim() -> Iterator[SensaphoneSimulator]:
    with SensaphoneSimulator() as simulator:
        yield simulator


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def make_client(sim: SensaphoneSimulator, recorder: Recorder) -> AsyncIterator[MakeClient]:
    """Build clients on `sim` (override any setting by keyword, `auth_backoff` as (first,
    longest) seconds); all are closed afterwards."""
    async with sensaphone_clients(sim.url, metrics=recorder) as make:

        def make_with(**overrides: Any) -> SensaphoneClient:
            first, longest = overrides.pop("auth_backoff", (5.0, 60.0))
            backoff = Backoff(initial=first, maximum=longest, jitter=0.0)
            return make({"auth_backoff": backoff}, **overrides)

        yield make_with


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_sim(ca: trustme.CA) -> Iterator[SensaphoneSimulator]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with SensaphoneSimulator(ssl_context=context) as simulator:
        yield simulator


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


# -- every operation, both modes --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["json", "uri"])
@pytest.mark.parametrize(("schedule_id", "parent"), SCHEDULES, ids=["default", "contact", "device"])
async def test_crud(
    make_client: MakeClient, sim: SensaphoneSimulator, mode: str, schedule_id: int, parent: Parent
) -> None:
    client = make_client(mode=mode)
    before = await client.read(schedule_id, parent)

    created = await client.create(schedule_id, parent, TimeRange(start="06:00", end="07:30"))
    assert len(created) == 1
    new = created[0]
    assert new.range_id is not None
    assert (new.start, new.end, new.interval) == ("06:00", "07:30", 127)
    assert await client.read(schedule_id, parent) == [*before, new]

    changed = TimeRange(range_id=new.range_id, interval=62)
    updated = await client.update(schedule_id, parent, changed)
    assert updated == [TimeRange(range_id=new.range_id, start="06:00", end="07:30", interval=62)]

    await client.delete(schedule_id, parent, new.range_id)
    assert await client.read(schedule_id, parent) == before
    verbs = {verb for (m, verb) in sim.requests if m == mode}
    assert verbs == {"read", "create", "update", "delete"}
    assert sim.logins == 1


async def test_read_matches_the_seed_doc_example(make_client: MakeClient) -> None:
    ranges = await make_client().read(28487, DEVICE)
    assert [(r.range_id, r.interval) for r in ranges] == [(58381, 127), (51587, 7)]


@pytest.mark.parametrize("mode", ["json", "uri"])
async def test_upstream_refusal_carries_sensaphone_code_and_message(
    make_client: MakeClient, mode: str
) -> None:
    client = make_client(mode=mode)
    with pytest.raises(UpstreamError) as info:
        await client.update(28487, DEVICE, TimeRange(range_id=424242, interval=1))
    assert type(info.value) is UpstreamError
    assert info.value.detail == {"code": 4, "message": "Not found: range 424242"}
    assert "Not found" in info.value.message
    with pytest.raises(UpstreamError) as info:
        await client.read(999, DEVICE)
    assert info.value.detail["code"] == 4


# -- HTTPS --------------------------------------------------------------------------------------


async def test_https_with_ca_file(
    tls_sim: SensaphoneSimulator, ca_file: str, recorder: Recorder
) -> None:
    settings = SensaphoneSettings(url=tls_sim.url, user="demo", password=PASSWORD, ca_file=ca_file)
    client = SensaphoneClient(settings, metrics=recorder)
    try:
        assert tls_sim.url.startswith("https://")
        assert len(await client.read(28487, DEVICE)) == 2
    finally:
        await client.close()


async def test_https_with_ssl_cert_file(
    tls_sim: SensaphoneSimulator, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    client = SensaphoneClient(SensaphoneSettings(url=tls_sim.url, user="demo", password=PASSWORD))
    try:
        assert len(await client.read(28487, DEVICE)) == 2
    finally:
        await client.close()


async def test_https_untrusted_fails_fast(
    tls_sim: SensaphoneSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    settings = SensaphoneSettings(url=tls_sim.url, user="demo", password=PASSWORD, deadline=10)
    client = SensaphoneClient(settings)
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamUnavailable, match="not trusted"):
            await client.read(28487, DEVICE)
    finally:
        await client.close()
    assert time.monotonic() - started < 2


# -- session ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["json", "uri"])
async def test_expired_session_logs_in_once_and_retries(
    make_client: MakeClient, sim: SensaphoneSimulator, recorder: Recorder, mode: str
) -> None:
    client = make_client(mode=mode)
    await client.read(28487, DEVICE)
    sim.expire_sessions()
    assert len(await client.read(28487, DEVICE)) == 2
    assert sim.logins == 2
    assert recorder.logins == [("initial", True), ("expired", True)]
    assert sim.requests[mode, "read"] == 3


async def test_concurrent_expiry_shares_one_relogin(
    make_client: MakeClient, sim: SensaphoneSimulator
) -> None:
    client = make_client()
    await client.read(28487, DEVICE)
    sim.expire_sessions()
    await asyncio.gather(*(client.read(28487, DEVICE) for _ in range(10)))
    assert sim.logins == 2


async def test_session_is_renewed_before_it_expires(
    make_client: MakeClient, sim: SensaphoneSimulator, recorder: Recorder
) -> None:
    sim.store.session_lifetime = 1.0  # renew_margin (60 s) is capped at half of it
    client = make_client()
    await client.read(28487, DEVICE)
    await asyncio.sleep(0.6)
    await client.read(28487, DEVICE)
    assert recorder.logins == [("initial", True), ("renew", True)]
    # Renewed proactively: no request was answered "session expired" first.
    assert sim.requests["json", "read"] == 2


async def test_concurrent_commands_share_one_login(
    make_client: MakeClient, sim: SensaphoneSimulator
) -> None:
    client = make_client()
    results = await asyncio.gather(*(client.read(28487, DEVICE) for _ in range(20)))
    assert all(len(r) == 2 for r in results)
    assert sim.logins == 1


async def test_wrong_password_backs_off_instead_of_looping(
    make_client: MakeClient, sim: SensaphoneSimulator, recorder: Recorder
) -> None:
    client = make_client(password="wrong-secret", auth_backoff=(0.3, 60.0))
    with pytest.raises(AuthFailed) as info:
        await client.read(28487, DEVICE)
    assert info.value.detail == {"code": 7, "message": "Invalid user name or password"}
    for _ in range(5):  # during the backoff: fail fast, no login attempt
        with pytest.raises(AuthFailed, match=r"next login attempt in 0\.\d s"):
            await client.read(28487, DEVICE)
    assert sim.logins == 1
    await asyncio.sleep(0.35)
    with pytest.raises(AuthFailed, match="next attempt in 1 s"):  # backoff doubled
        await asyncio.gather(*(client.read(28487, DEVICE) for _ in range(5)))
    assert sim.logins == 2
    assert ("login", "auth_failed") in recorder.requests
    assert recorder.logins == [("initial", False), ("initial", False)]


# -- retries ------------------------------------------------------------------------------------


async def test_server_error_then_success(
    make_client: MakeClient, sim: SensaphoneSimulator, recorder: Recorder
) -> None:
    client = make_client()
    sim.fail_next(2, status=500)
    assert len(await client.read(28487, DEVICE)) == 2
    assert sim.requests["json", "read"] == 3
    assert recorder.retries == [("read", "server_error")] * 2
    assert recorder.requests[-1] == ("read", "ok")


async def test_create_is_not_retried_after_a_server_error(
    make_client: MakeClient, sim: SensaphoneSimulator
) -> None:
    client = make_client()
    sim.fail_next(1, status=503)
    with pytest.raises(UpstreamUnavailable, match="HTTP 503"):
        await client.create(28487, DEVICE, TimeRange(interval=1))
    assert sim.requests["json", "create"] == 1


@pytest.mark.parametrize("op", ["read", "create"])
async def test_throttling_honours_retry_after(
    make_client: MakeClient, sim: SensaphoneSimulator, recorder: Recorder, op: str
) -> None:
    client = make_client()
    await client.read(28487, DEVICE)
    sim.throttle_next(1, retry_after=1)
    started = time.monotonic()
    if op == "read":
        await client.read(28487, DEVICE)
    else:  # 429 means "not processed": a create is retried too, and made once
        await client.create(28487, DEVICE, TimeRange(interval=3))
        assert sim.ranges_created == 1
    assert 1.0 <= time.monotonic() - started < 1.5
    assert recorder.retries == [(op, "throttled")]


async def test_stalled_create_is_never_sent_twice(
    make_client: MakeClient, sim: SensaphoneSimulator, recorder: Recorder
) -> None:
    client = make_client(timeout=0.3, deadline=3.0)
    await client.read(28487, DEVICE)
    sim.stall_next(1, 1.0)
    with pytest.raises(UpstreamTimeout):
        await client.create(28487, DEVICE, TimeRange(start="01:00"))
    assert sim.ranges_created == 1
    assert sim.requests["json", "create"] == 1
    assert recorder.retries == []
    assert recorder.requests[-1] == ("create", "timeout")


async def test_stalled_read_is_retried(make_client: MakeClient, sim: SensaphoneSimulator) -> None:
    client = make_client(timeout=0.3, deadline=3.0)
    await client.read(28487, DEVICE)
    sim.stall_next(1, 1.0)
    assert len(await client.read(28487, DEVICE)) == 2
    assert sim.requests["json", "read"] == 3


async def test_deadline_exceeded_is_a_timeout(
    make_client: MakeClient, sim: SensaphoneSimulator, recorder: Recorder
) -> None:
    client = make_client(timeout=5.0, deadline=0.8)
    await client.read(28487, DEVICE)
    sim.stall_next(5, 3.0)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await client.read(28487, DEVICE)
    assert time.monotonic() - started < 1.2
    assert recorder.requests[-1] == ("read", "timeout")


async def test_unreachable_is_unavailable_after_retries(recorder: Recorder) -> None:
    with SensaphoneSimulator() as gone:
        url = gone.url  # a port that nothing listens on once stopped
    settings = SensaphoneSettings(url=url, user="demo", password=PASSWORD, deadline=1.0)
    client = SensaphoneClient(settings, metrics=recorder)
    try:
        with pytest.raises(UpstreamUnavailable, match="could not connect"):
            await client.create(28487, DEVICE, TimeRange())
    finally:
        await client.close()
    assert ("login", "connect") in recorder.retries  # never sent, so retried


async def test_an_unanswering_sensaphone_opens_its_circuit(recorder: Recorder) -> None:
    """The README says each upstream has a circuit breaker; Sensaphone had none. Now requests
    that get no answer open it, and while it is open commands fail at once, unsent."""
    with SensaphoneSimulator() as gone:
        url = gone.url
    metrics = Metrics()
    breaker = CircuitBreaker("sensaphone", metrics, failures=3, cooldown=60)
    settings = SensaphoneSettings(url=url, user="demo", password=PASSWORD, deadline=5.0)
    client = SensaphoneClient(settings, metrics=recorder, breaker=breaker)
    try:
        with pytest.raises(UpstreamUnavailable, match="circuit open"):
            await client.read(28487, DEVICE)  # three refused connections, then no more tries
        retries = len(recorder.retries)
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable, match="circuit open"):
            await client.read(28487, DEVICE)
        assert time.monotonic() - started < 0.05
        assert len(recorder.retries) == retries
    finally:
        await client.close()
    assert breaker.state == "open"
    labels = {"site": "default", "upstream": "sensaphone"}
    assert metrics.registry.get_sample_value("iotbridge_circuit_state", labels) == 1


async def test_exhausted_retries_report_the_requests_sent(
    make_client: MakeClient, sim: SensaphoneSimulator, recorder: Recorder
) -> None:
    client = make_client(deadline=1.0)
    await client.read(28487, DEVICE)
    before = sim.requests["json", "read"]
    sim.fail_next(1000, status=500)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable, match="HTTP 500") as raised:
        await client.read(28487, DEVICE)
    assert time.monotonic() - started < 1.0  # no retry starts after the deadline
    sent = sim.requests["json", "read"] - before
    assert raised.value.attempts == sent > 1
    assert recorder.retries == [("read", "server_error")] * (sent - 1)


async def test_a_retry_after_past_the_deadline_is_not_waited_for(
    make_client: MakeClient, sim: SensaphoneSimulator, recorder: Recorder
) -> None:
    client = make_client(deadline=1.0)
    await client.read(28487, DEVICE)
    sim.throttle_next(1, retry_after=5)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable, match="throttled") as raised:
        await client.read(28487, DEVICE)
    assert time.monotonic() - started < 0.5
    assert raised.value.attempts == 1
    assert recorder.retries == []


async def test_an_open_circuit_reports_the_requests_it_let_through(recorder: Recorder) -> None:
    """The refusal by the open circuit is not an attempt: the error counts the three connections
    that were tried (more than one, so the command is parked on the dead-letter topic)."""
    with SensaphoneSimulator() as gone:
        url = gone.url
    breaker = CircuitBreaker("sensaphone", Metrics(), failures=3, cooldown=60)
    settings = SensaphoneSettings(url=url, user="demo", password=PASSWORD, deadline=5.0)
    client = SensaphoneClient(settings, metrics=recorder, breaker=breaker)
    try:
        with pytest.raises(UpstreamUnavailable, match="circuit open") as raised:
            await client.read(28487, DEVICE)
    finally:
        await client.close()
    assert raised.value.attempts == 3
    assert recorder.retries == [("login", "connect")] * 3


# -- secrets --------------------------------------------------------------------------------------


async def test_password_never_appears_in_errors_or_logs(
    make_client: MakeClient, sim: SensaphoneSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t-Pa55word"
    sim.store.accounts["demo"] = (secret, 987654)
    texts: list[str] = []
    wrong = make_client(password=secret + "-not", auth_backoff=(0.01, 0.01))
    good = make_client(password=secret, timeout=0.3, deadline=1.0)
    for action in (
        wrong.read(28487, DEVICE),
        good.read(28487, DEVICE),
        good.update(28487, DEVICE, TimeRange(range_id=1, interval=2)),
    ):
        try:
            await action
        except UpstreamError as exc:
            texts += [str(exc), repr(exc), msgspec.json.encode(exc.detail).decode()]
    sim.stall_next(3, 2.0, target="any")
    sim.expire_sessions()
    with pytest.raises(UpstreamTimeout) as info:
        await good.read(28487, DEVICE)
    texts.append(str(info.value))
    texts += [r.getMessage() for r in caplog.records]
    texts += [str(r.exc_info) for r in caplog.records if r.exc_info]
    assert len(texts) > 5
    assert not [t for t in texts if secret in t]


# -- the simulator's own fidelity -------------------------------------------------------------


async def test_simulator_speaks_the_documented_shapes(sim: SensaphoneSimulator) -> None:
    """Raw requests as the seed doc writes them: `uuid` in JSON mode, `/interval/N` in URI mode."""
    async with httpx.AsyncClient() as http:
        login = {"request_type": "create", "resource": "login", "user_name": "demo"}
        refused = await http.post(sim.url + "/login", json={**login, "password": "nope"})
        assert refused.json() == {
            "result": {"success": False, "code": 7, "message": "Invalid user name or password"}
        }
        reply = (await http.post(sim.url + "/login", json={**login, "password": PASSWORD})).json()
        acctid, session = reply["response"]["acctid"], reply["response"]["session"]
        assert reply["response"]["session_expiration"] == 3600
        body = {"acctid": acctid, "uuid": session, "request_type": "read"}
        body["device"] = [{"device_id": 1234, "default_schedule": [{"schedule_id": 28487}]}]
        read = (await http.post(sim.url + "/device/default_schedule/timerange", json=body)).json()
        schedule = read["response"]["device"][0]["default_schedule"][0]
        assert [r["range_id"] for r in schedule["timerange"]] == [58381, 51587]
        path = f"{sim.url}/{acctid}/{session}/device/1234/default_schedule/28487/timerange/51587"
        edited = (await http.put(path + "/interval/65")).json()
        assert edited["response"]["device"][0]["default_schedule"][0]["timerange"] == [
            {"range_id": 51587, "start": "17:00", "end": "22:00", "interval": 65}
        ]
        stale = await http.get(
            f"{sim.url}/{acctid}/bogus/device/1234/default_schedule/28487/timerange"
        )
        assert stale.json()["result"] == {"success": False, "code": 2, "message": "Session expired"}
