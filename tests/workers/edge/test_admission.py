"""Admission's stateful checks, without a broker: the order of rate limit and replay memory, and one
device's flood against everyone else's records."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
from aiokafka import TopicPartition

from edgestream.pipeline.contract.envelope import Envelope, new_request_id
from edgestream.pipeline.contract.partitioner import partition_for
from edgestream.pipeline.errors import WrongPartition
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.serving.served import ModelCatalog
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.catalogue import ingest_topic
from edgestream.workers.edge import admission as admission_module
from edgestream.workers.edge.admission import Admission, Item
from edgestream.workers.edge.replaymemory import ReplayMemory
from edgestream.workers.edge.settings import WorkerSettings

REGION = "eu-west"
TP = TopicPartition(ingest_topic(REGION, "embedding"), 0)


def _admission(**overrides: Any) -> Admission:
    settings = WorkerSettings(
        region=REGION, kafka=KafkaSettings(bootstrap_servers="localhost:9"), **overrides
    )
    return Admission(settings, cast(ModelCatalog, None))  # check() never resolves a model


def _item(device: str, capture_ms: int, request_id: bytes | None = None) -> Item:
    envelope = Envelope(
        1,
        request_id or new_request_id(),
        device,
        capture_ms,
        "embedding",
        "embedding-scorer",
        None,
        1,
        "none",
        bytes(12),
        bytes(16),
    )
    return Item(TP, 1, 0, capture_ms, device.encode(), (), b"", time.monotonic(), envelope)


def _reasons(items: list[Item]) -> list[str]:
    return [it.error.reason if it.error is not None else "ok" for it in items]


class _Clock:
    """Admission's clocks (wall and monotonic), standing still unless moved."""

    def __init__(self) -> None:
        self.now_s = time.time()

    def time(self) -> float:
        return self.now_s

    def monotonic(self) -> float:
        return self.now_s


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(admission_module, "time", fake)
    return fake


def test_a_flood_from_one_device_never_makes_another_devices_envelope_stale(clock: _Clock) -> None:
    # Issue 12: request ids were remembered before the rate check, per partition, and evicting them
    # raised a partition-wide floor. With the defaults (200,000 ids), one device's 200,100 envelopes
    # captured 4.9 s ahead made every honest envelope on the partition `stale`.
    admission = _admission()
    ahead_ms = int(clock.now_s * 1000) + 4_900
    flood = [_item("dev-flood", ahead_ms) for _ in range(200_100)]
    for start in range(0, len(flood), 10_000):
        admission.check(flood[start : start + 10_000])
        admission.replays.commit(TP)
    now_ms = int(clock.now_s * 1000)
    honest = [_item(f"dev-honest-{n}", now_ms) for n in range(50)]
    admission.check(honest)
    assert _reasons(honest) == ["ok"] * 50
    reasons = _reasons(flood)  # its burst; the rest were refused by its rate, and left no trace
    assert (reasons.count("ok"), reasons.count("rate_limited")) == (100, len(flood) - 100)


def test_a_rate_limited_record_leaves_no_replay_trace(clock: _Clock) -> None:
    admission = _admission(device_burst=1)  # 50/s: a token every 20 ms
    now_ms = int(clock.now_s * 1000)
    first, second = _item("dev-a", now_ms), _item("dev-a", now_ms)
    admission.check([first, second])
    assert _reasons([first, second]) == ["ok", "rate_limited"]
    admission.replays.commit(TP)
    clock.now_s += 0.05  # a token again
    retried = _item("dev-a", now_ms, second.envelope.request_id if second.envelope else None)
    admission.check([retried])
    assert _reasons([retried]) == ["ok"]  # not `replayed`: the refused copy was never remembered


def test_replays_of_a_devices_envelope_do_not_spend_its_rate(clock: _Clock) -> None:
    admission = _admission(device_burst=2, device_rate_per_s=0.001)
    now_ms = int(clock.now_s * 1000)
    original = _item("dev-victim", now_ms)
    admission.check([original])
    admission.replays.commit(TP)
    rid = original.envelope.request_id if original.envelope else b""
    replays = [_item("dev-victim", now_ms, rid) for _ in range(100)]
    admission.check(replays)
    assert set(_reasons(replays)) == {"replayed"}
    fresh = _item("dev-victim", now_ms)
    admission.check([fresh])
    assert _reasons([fresh]) == ["ok"]  # its second token is still there


async def test_a_rebuild_that_cannot_finish_in_time_holds_the_partition_at_a_floor() -> None:
    admission = _admission(replay_rebuild_timeout_s=0.3)  # nothing listens on localhost:9
    memory = ReplayMemory(admission._settings, admission, lambda: cast(KeyRing, None), "node")
    nothing_committed = TopicPartition(ingest_topic(REGION, "frame"), 1)
    assert await memory.rebuild({TP: 10, nothing_committed: 0}) == {nothing_committed}
    assert admission.replays.floor_ms(TP, "dev-a") is None  # not served yet: tried again next round
    await asyncio.sleep(0.3)
    before_ms = int(time.time() * 1000)
    assert await memory.rebuild({TP: 10}) == {TP}  # out of time: served, at a floor
    floor_ms = admission.replays.floor_ms(TP, "dev-a")
    assert floor_ms is not None
    assert floor_ms >= before_ms + admission._settings.max_future_skew_ms
    assert memory.unfinished == 1


def test_the_retry_rule_the_same_envelope_resent_is_answered_once(clock: _Clock) -> None:
    # Contract section 9, "Retries": a device that has no answer resends the same envelope unchanged.
    # Whatever copies arrive, exactly one is answered; a resend after the replay window is stale.
    admission = _admission()
    now_ms = int(clock.now_s * 1000)
    first = _item("dev-a", now_ms)
    rid = first.envelope.request_id if first.envelope else b""

    def resend() -> Item:
        return _item("dev-a", now_ms, rid)

    in_the_same_unit = resend()
    admission.check([first, in_the_same_unit])
    assert _reasons([first, in_the_same_unit]) == ["ok", "replayed"]
    admission.replays.abort(TP)  # the unit's transaction aborted: its records come again
    redelivered, resent = resend(), resend()
    admission.check([redelivered, resent])
    assert _reasons([redelivered, resent]) == ["ok", "replayed"]  # answered once, not zero times
    admission.replays.commit(TP)
    clock.now_s += 30.0  # inside max_age_ms: remembered
    late = resend()
    admission.check([late])
    assert _reasons([late]) == ["replayed"]
    settings = admission._settings
    clock.now_s += (settings.max_age_ms + settings.max_future_skew_ms) / 1000.0  # past the window
    too_late = resend()
    admission.check([too_late])
    assert _reasons([too_late]) == ["stale"]  # forgotten by then, and refused all the same


def test_a_retry_whose_first_copy_never_arrived_is_answered(clock: _Clock) -> None:
    admission = _admission()
    captured_ms = int(clock.now_s * 1000)
    clock.now_s += 20.0  # the first copy was lost; the device resends 20 s after capture
    resent = _item("dev-a", captured_ms)
    admission.check([resent])
    assert _reasons([resent]) == ["ok"]


def test_a_device_keys_cipher_is_built_once_and_the_cache_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admission_module, "MAX_CIPHERS", 2)
    admission = _admission()
    first = admission._cipher(b"a" * 32)
    assert admission._cipher(b"a" * 32) is first  # not built again
    admission._cipher(b"b" * 32)
    admission._cipher(b"c" * 32)  # the full cache starts over
    assert len(admission._ciphers) == 1
    assert admission._cipher(b"a" * 32) is not first
    assert admission._cipher(b"short") == b"short"  # left for open_envelope to refuse


def test_a_topics_partition_count_is_looked_up_once_a_fetch() -> None:
    """Each record's placement is checked against the topic's partition count in the metadata, looked
    up once per fetch: a count that changes is seen by the next fetch's records."""
    partitions = [3]
    lookups: list[str] = []

    def partitions_of(topic: str) -> set[int]:
        lookups.append(topic)
        return set(range(partitions[0]))

    settings = WorkerSettings(region=REGION, kafka=KafkaSettings(bootstrap_servers="localhost:9"))
    admission = Admission(settings, cast(ModelCatalog, None), partitions_of)
    device = next(
        d
        for d in (f"sensor-{i}" for i in range(100))
        if partition_for(d.encode(), 3) != partition_for(d.encode(), 6)
    )
    envelope = _item(device, 0).envelope
    assert envelope is not None
    placed = TopicPartition(TP.topic, partition_for(device.encode(), 3))
    admission.new_fetch()
    for _ in range(3):
        admission._check_placement(placed, device.encode(), envelope)
    assert lookups == [TP.topic]
    partitions[0] = 6  # the topic grew: this fetch's records are still judged by its count
    admission._check_placement(placed, device.encode(), envelope)
    admission.new_fetch()
    with pytest.raises(WrongPartition):
        admission._check_placement(placed, device.encode(), envelope)
    assert lookups == [TP.topic, TP.topic]
