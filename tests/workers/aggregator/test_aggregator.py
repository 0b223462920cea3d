"""The aggregator: window arithmetic and the join (pure), and on the real TLS broker, as
``User:aggregator``, that a kill -9 mid-window and a restart lose and double no counts."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from hypothesis import example, given
from hypothesis import strategies as st

from edgestream.pipeline.contract.cloud import (
    LATENCY_BOUNDS_MS,
    SCORE_BINS,
    Label,
    PartialSummary,
    Sample,
    merge,
    percentile_ms,
)
from edgestream.pipeline.contract.limits import PRODUCER_MAX_REQUEST_BYTES
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.acl_admin import apply_policy
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import (
    AGGREGATOR_GROUP,
    CLOUD_SUMMARIES,
    LABELS_TOPIC,
    SAMPLES_TOPIC,
    SUMMARIES_TOPIC,
    shared_topics,
)
from edgestream.workers.aggregator import windows as w
from edgestream.workers.aggregator.app import VIEW_PATH, AggregatorSettings, build_app, with_replication
from edgestream.workers.aggregator.view import window_rows
from edgestream.workers.local.broker.config import free_port
from edgestream.workers.local.broker.state import BrokerState
from edgestream.workers.local.processes import Child, edgestream_command

# -- pure ---------------------------------------------------------------------------------------------


def _summary(region: str, at_ms: int, results: int, node: str = "n") -> PartialSummary:
    summary = PartialSummary(region, node, "embedding-scorer", 2, at_ms)
    for i in range(results):
        summary.add_result(i % 2, 0.55 + 0.04 * i, 3.0 * i)
    summary.add_dead_letter("bad_tag")
    return summary


def test_windows_add_up_and_skip_redelivered_offsets() -> None:
    state = w.new_window("eu", "embedding-scorer", 2, 60_000, 60_000)
    parts = [_summary("eu", 61_000, n) for n in (3, 5, 1)]
    for offset, part in enumerate(parts):
        assert not w.seen(state, SUMMARIES_TOPIC, 1, offset)
        w.add_summary(state, part)
    assert w.seen(state, SUMMARIES_TOPIC, 1, 1)  # a redelivery after a crash
    assert not w.seen(state, SUMMARIES_TOPIC, 2, 0)  # another partition has its own offsets
    total = merge(parts)
    assert state["results"] == total["results"] == 9
    assert state["latency"] == total["latency"]
    assert state["dead_letters"] == {"bad_tag": 3}
    assert state["labels"] == {str(k): v for k, v in total["labels"].items()}
    assert w.window_start(119_999, 60_000) == 60_000
    assert w.parse_window_key(w.window_key("eu", "m", 2, 60_000)) == ("eu", "m", 2, 60_000)


def test_a_window_counts_at_most_a_thousand_labels_apart_and_the_rest_together() -> None:
    """A model with tens of thousands of labels (its graph's own label output) made one window's value
    over 1 MB, which faust's changelog refuses: past 1,000 distinct labels the counts go to "other",
    every answer still counted once."""
    state = w.new_window("eu", "extreme", 1, 60_000, 60_000)
    for part in range(21):
        summary = PartialSummary("eu", "n", "extreme", 1, 61_000)
        for i in range(2048):
            summary.add_result(part * 2048 + i, 0.9, 3.0)
        w.add_summary(state, summary)
    labels = state["labels"]
    assert len(labels) == w.MAX_WINDOW_LABELS + 1
    assert sum(labels.values()) == state["results"] == 21 * 2048
    assert labels[w.OTHER_LABELS] == 21 * 2048 - w.MAX_WINDOW_LABELS
    assert len(json.dumps(state)) < 100_000
    known = dict(labels)
    again = PartialSummary("eu", "n", "extreme", 1, 61_000)
    again.add_result(0, 0.9, 3.0)  # a label counted apart already stays apart
    w.add_summary(state, again)
    assert labels["0"] == known["0"] + 1


@given(st.text(max_size=12), st.text(max_size=12), st.integers(0, 2**31), st.integers(-(2**62), 2**62))
@example("eu", "team/scorer", 1, 60_000)  # a model name with a '/': its key did not parse back
@example("eu/west", "m@2", 3, 0)
@example("eu", "m%2F", 1, 0)  # what the encoding writes, as a name of its own
def test_any_names_make_a_window_key_that_parses_back_and_names_one_series(
    region: str, model: str, version: int, start_ms: int
) -> None:
    key = w.window_key(region, model, version, start_ms)
    assert w.parse_window_key(key) == (region, model, version, start_ms)
    assert w.parse_window_key(w.parse_quality_key(w.quality_key(3, key))[1])[:2] == (region, model)
    # The summaries' expiry takes every key starting with the series' prefix as that series' own.
    series = key.rpartition("@")[0] + "@"
    for other in (w.window_key(region + "/x", model, version, 0), w.window_key(region, model + "@1", 1, 0)):
        assert not other.startswith(series)


def test_the_view_names_a_window_as_its_records_did_and_leaves_out_what_is_no_window() -> None:
    key = w.window_key("eu", "team/scorer", 1, 60_000)
    legacy = "eu/team/scorer/1@0"  # written before the names were encoded, restored from a changelog
    state = w.new_window("eu", "team/scorer", 1, 60_000, 60_000)
    w.add_summary(state, _summary("eu", 61_000, 3))
    rows = window_rows({key: state, legacy: state, "no window": state, "a/b@c": state}, [])
    assert [(r["region"], r["model"], r["version"], r["start_ms"], r["results"]) for r in rows] == [
        ("eu", "team/scorer", 1, 0, 3),
        ("eu", "team/scorer", 1, 60_000, 3),
    ]
    assert w.window_start_of("no window") is None
    assert w.window_start_of(legacy) == 0


def test_a_window_whose_counts_the_drift_tests_cannot_take_leaves_the_others_judged() -> None:
    """Counts each valid (<= 2**53 - 1), added up past 2**64 in one window: its drift raised out of
    the view, for every window (GET /windows answered 500, no window's drift was counted)."""
    scores = {0: [5] * SCORE_BINS, 60_000: [2**62] * SCORE_BINS}
    windows = {}
    for start, counts in scores.items():
        state = w.new_window("eu", "scorer", 1, start, 60_000)
        w.add_summary(state, PartialSummary("eu", "n", "scorer", 1, start, results=1, score_bins=counts))
        windows[w.window_key("eu", "scorer", 1, start)] = state
    first, second = window_rows(windows, [])
    assert (first["start_ms"], first["drift"]["pending"], "error" in first["drift"]) == (0, False, False)
    assert (second["start_ms"], second["drift"]["pending"], second["drift"]["flagged"]) == (
        60_000,
        True,
        False,
    )
    assert "error" in second["drift"]


def test_percentiles_are_upper_bucket_bounds() -> None:
    buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    buckets[0], buckets[4], buckets[-1] = 90, 9, 1
    assert percentile_ms(buckets, 50) == LATENCY_BOUNDS_MS[0]
    assert percentile_ms(buckets, 95) == LATENCY_BOUNDS_MS[4]
    assert percentile_ms(buckets, 99.5) == float("inf")
    assert percentile_ms([0] * len(buckets), 50) is None


class _Join:
    """The aggregator's join steps over one partition, as ``app._join`` runs them, with a way to lose
    the quality write of an event (a crash between the two changelog records)."""

    def __init__(self) -> None:
        self.buckets: dict[str, w.State] = {}
        self.quality: dict[str, w.State] = {}

    def event(self, topic: str, offset: int, rid: bytes, apply: Any, *, crash: bool = False) -> None:
        key = w.join_key(0, rid)
        state = self.buckets.setdefault(key, w.new_join())
        fresh = not w.seen(state, topic, 0, offset)
        update = apply(state, offset, fresh)
        if update is None or crash:
            return
        quality = self.quality.setdefault(w.quality_key(0, update.window), w.new_quality())
        if not w.seen(quality, topic, 0, offset):
            w.add_quality(quality, update, [])

    def sample(self, offset: int, sample: Sample, *, crash: bool = False) -> None:
        self.event(
            "by-rid",
            offset,
            sample.request_id,
            lambda state, o, fresh: w.add_sample(state, sample, o, 60_000, fresh=fresh),
            crash=crash,
        )

    def label(self, offset: int, label: Label, *, crash: bool = False) -> None:
        self.event(
            "labels",
            offset,
            label.request_id,
            lambda state, o, fresh: w.add_label(state, label, o, fresh=fresh),
            crash=crash,
        )

    def counts(self) -> tuple[int, int, int]:
        window = w.sum_quality(self.quality.items())[w.window_key("eu", "m", 1, 0)]
        return window["samples"], window["joined"], window["correct"]


def _samples(n: int) -> list[Sample]:
    rids = [bytes([i]) * 16 for i in range(n)]
    return [Sample(r, "eu", "m", 1, 1_000, b"d" * 16, (), 1, (0.2, 0.8)) for r in rids]


def test_join_counts_each_request_once_in_either_order() -> None:
    join = _Join()
    samples = _samples(4)
    join.label(0, Label(samples[0].request_id, "m", 1, 5))  # label before its sample
    join.sample(0, samples[0])
    join.sample(1, samples[1])
    join.label(1, Label(samples[1].request_id, "m", 0, 5))  # a wrong answer
    join.sample(2, samples[1])  # the same request again (the re-keying hop forwarded it twice)
    join.label(2, Label(samples[1].request_id, "m", 0, 5))
    join.sample(3, samples[2])  # never labelled
    join.sample(1, samples[1])  # redelivered offsets
    join.label(1, Label(samples[1].request_id, "m", 0, 5))
    assert join.counts() == (3, 2, 1)
    rows = window_rows({}, list(join.quality.items()))
    assert rows[0]["accuracy"] == 0.5
    assert rows[0]["joined"] == 2
    for state in join.buckets.values():
        assert w.expire_join(state, 90_000, 30_000) == 0  # the window ended at 60 s: still joinable
    assert sum(len(s["pending"]) for s in join.buckets.values()) == 3
    for state in join.buckets.values():
        w.expire_join(state, 90_001, 30_000)  # too soon after the last expiry: nothing is scanned
    assert sum(len(s["pending"]) for s in join.buckets.values()) == 3
    for state in join.buckets.values():
        w.expire_join(state, 90_001 + w.EXPIRE_EVERY_MS, 30_000)
    assert sum(len(s["pending"]) for s in join.buckets.values()) == 0


@pytest.mark.parametrize("lost", ["sample", "label"])
def test_a_crash_between_the_bucket_and_quality_writes_is_repaired_on_redelivery(lost: str) -> None:
    """The bucket's changelog record landed, the quality window's did not: the redelivered event
    (same offset) must still count, once."""
    join = _Join()
    sample = _samples(1)[0]
    label = Label(sample.request_id, "m", 1, 5)
    if lost == "sample":
        join.label(0, label)
        join.sample(0, sample, crash=True)
        assert sum(q["joined"] for q in join.quality.values()) == 0
        join.sample(0, sample)  # redelivered after the restart
        join.sample(0, sample)  # and once more: nothing more
    else:
        join.sample(0, sample)
        join.label(0, label, crash=True)
        assert join.counts() == (1, 0, 0)
        join.label(0, label)
        join.label(0, label)
    assert join.counts() == (1, 1, 1)


def test_join_buckets_spread_a_partitions_request_ids_evenly() -> None:
    keys = [w.join_key(3, i.to_bytes(16, "big")) for i in range(256 * w.JOIN_BUCKETS)]
    per_bucket = Counter(keys)
    assert len(per_bucket) == w.JOIN_BUCKETS
    assert all(k.startswith("3/") for k in per_bucket)
    expected = len(keys) / w.JOIN_BUCKETS
    assert all(0.6 * expected < n < 1.4 * expected for n in per_bucket.values()), per_bucket


# -- on the broker ------------------------------------------------------------------------------------


def _view(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url + VIEW_PATH, timeout=2) as response:
            view: dict[str, Any] = json.load(response)
            return view
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _region_totals(view: dict[str, Any] | None, region: str) -> dict[str, Any] | None:
    if view is None:
        return None
    rows = [row for row in view["windows"] if row["region"] == region]
    latency = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    dead: dict[str, int] = {}
    for row in rows:
        latency = [a + b for a, b in zip(latency, row["latency_buckets"], strict=True)]
        for reason, n in row["dead_letters"].items():
            dead[reason] = dead.get(reason, 0) + n
    return {
        "windows": len(rows),
        "summaries": sum(row["summaries"] for row in rows),
        "results": sum(row["results"] for row in rows),
        "dead_letters": dead,
        "latency": latency,
    }


async def _poll(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.1)


async def _topic_totals(kafka: KafkaSettings, region: str) -> dict[str, Any]:
    """The region's counts read straight from cloud.summaries (read_committed, start to end)."""
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(), group_id=None, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(SUMMARIES_TOPIC, p) for p in range(CLOUD_SUMMARIES.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        parts: list[PartialSummary] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                parts += [PartialSummary.from_bytes(r.value) for r in records if r.value is not None]
        mine = [p for p in parts if p.region == region]
        total = merge(mine)
        return {
            "windows": 1,
            "summaries": len(mine),
            "results": total["results"],
            "dead_letters": dict(total["dead_letters"]),
            "latency": list(total["latency"]),
        }
    finally:
        await consumer.stop()


class Aggregator:
    """``python -m edgestream aggregate run`` in a child process."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.child: Child | None = None

    def start(self) -> None:
        command = edgestream_command("aggregate", "run")
        self.child = Child.start("aggregator", command, env=self.env, log_file=self.log, append=True)

    def kill(self) -> None:
        """kill -9."""
        if self.child is not None:
            self.child.send_signal(signal.SIGKILL)
            self.child.proc.wait(timeout=30)
        self.child = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL past the bound."""
        if self.child is not None:
            self.child.stop()
        self.child = None


@pytest.fixture
async def aggregator_acls(bootstrap: KafkaSettings, kafka_broker: BrokerState) -> Any:
    """Cloud topics; the aggregator principal with its policy (faust's own topics included)."""
    await ensure_topics(bootstrap, shared_topics())
    if kafka_broker.security_protocol != "SSL":
        yield bootstrap
        return
    await apply_policy(bootstrap, [])  # the aggregator's rules, faust's own topics included
    yield kafka_broker.kafka(Identity.aggregator())


@pytest.fixture
def aggregator_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Aggregator] = []

    def make(kafka: KafkaSettings, **settings: str) -> Aggregator:
        env = {**os.environ, **kafka.to_env("EDGESTREAM_AGGREGATOR_KAFKA__")}
        env.update({f"EDGESTREAM_AGGREGATOR_{k.upper()}": v for k, v in settings.items()})
        env["EDGESTREAM_AGGREGATOR_HOME"] = str(tmp_path)
        aggregator = Aggregator(env, tmp_path / "aggregator.log")
        started.append(aggregator)
        return aggregator

    yield make
    for aggregator in started:
        aggregator.stop()


REJOIN_BUDGET_S = 45.0
"""How long a restarted aggregator may take to rejoin its group and catch up: the killed member's
session (10 s) or, killed during a rebalance, the rebalance timeout (20 s), then its reading; less than
faust's default session of 60 s, which the restart waited out before."""


@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_restart_mid_window_loses_and_doubles_nothing(
    how: str,
    bootstrap: KafkaSettings,
    aggregator_acls: KafkaSettings,
    aggregator_factory: Any,
    tmp_path: Path,
) -> None:
    """kill -9 or SIGTERM while summaries keep coming, then a restart: every summary counted once.
    After SIGTERM the restart lost one summary in 11 of 46 runs while faust's recovery emptied its
    stream queues after its seek (``workers/aggregator/flow.py``)."""
    region = f"t{uuid.uuid4().hex[:10]}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    aggregator = aggregator_factory(
        aggregator_acls,
        app_id=f"{AGGREGATOR_GROUP}-{region}",  # a fresh group and fresh tables for this test
        web_port=str(port),
        window_s="3600",  # every summary below lands in the window open now
    )
    producer = AIOKafkaProducer(**bootstrap.client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    rng = random.Random(5)
    sent = 0

    async def produce(n: int, pause_s: float = 0.0) -> None:
        nonlocal sent
        for _ in range(n):
            part = _summary(region, int(time.time() * 1000), rng.randint(0, 6), node=f"n{rng.randint(0, 4)}")
            await producer.send(SUMMARIES_TOPIC, part.to_bytes(), key=part.key)
            sent += 1
            if pause_s:
                await asyncio.sleep(pause_s)  # pacing the producer, not waiting for readiness
        await producer.flush()

    async def produce_aborted(n: int) -> None:
        aborting = AIOKafkaProducer(**bootstrap.client_kwargs(), transactional_id=f"aborting-{region}")
        await aborting.start()
        try:
            await aborting.begin_transaction()
            for _ in range(n):
                part = _summary(region, int(time.time() * 1000), rng.randint(0, 6), node="aborted")
                await aborting.send(SUMMARIES_TOPIC, part.to_bytes(), key=part.key)
            await aborting.abort_transaction()
        finally:
            await aborting.stop()

    try:
        await produce(200)
        aggregator.start()
        feeding = asyncio.create_task(produce(400, pause_s=0.005))

        def consumed_some() -> dict[str, Any] | None:
            totals = _region_totals(_view(url), region)
            return totals if totals and totals["summaries"] > 0 else None

        before_kill = await _poll(consumed_some, 120, "the aggregator counting")
        if how == "kill":
            aggregator.kill()  # kill -9 mid-window, while summaries keep coming
        else:
            # SIGTERM (faust commits, the group is left), waited for on this loop on purpose: the
            # feed stalls for faust's 2-3 s stop and then sends in a burst. That is how the lost
            # record showed (3 of 14 runs without flow.py, none of 14 with it); with the stop in a
            # thread it never did (14 runs).
            aggregator.stop()
        await feeding
        await produce_aborted(50)  # an edge transaction that aborted: its summaries count for nothing
        await produce(200)
        aggregator.start()
        restarted_s = time.monotonic()
        expected = await _topic_totals(bootstrap, region)
        assert expected["summaries"] == sent == 800

        def caught_up() -> dict[str, Any] | None:
            totals = _region_totals(_view(url), region)
            return totals if totals and totals["summaries"] >= expected["summaries"] else None

        await _poll(caught_up, REJOIN_BUDGET_S, "the restarted aggregator catching up")
        caught_up_s = time.monotonic() - restarted_s
        # Settle: nothing more must arrive (a double count would show up here).
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            assert _region_totals(await asyncio.to_thread(_view, url), region) == expected
            await asyncio.sleep(0.2)
        assert before_kill["summaries"] < expected["summaries"]
        _check_metrics(url, at_least=200)  # the restarted process read at least what came after the kill
        print(
            f"killed after {before_kill['summaries']} of {sent} summaries; caught up {caught_up_s:.1f} s"
            f" after the restart; {expected}"
        )
    finally:
        await producer.stop()


def test_a_retrained_version_is_judged_against_its_own_training_inputs() -> None:
    """The reference (v1, the zoo's training data) sees shifted inputs drift; a version retrained on
    shifted inputs carries their counts in its lineage and its windows are judged against them."""
    from edgestream.pipeline.learning.drift import training_reference
    from edgestream.pipeline.models import load_dataset
    from edgestream.pipeline.models.shift import shifted_pools
    from edgestream.workers.aggregator.references import version_reference

    base = training_reference("embedding")
    first, second = shifted_pools()
    lineage = {"drift_reference": base.window_counts(first.X)}
    own = version_reference("embedding-scorer", lineage)
    assert own is not None
    assert own.edges == base.edges
    assert own.samples == len(first.X)  # no lineage counts of distinct inputs: the count total
    total = len(first.X)
    copies = version_reference("embedding-scorer", {**lineage, "distinct": 100, "joined": 2 * total})
    assert copies is not None
    assert copies.samples == 50  # its share of the distinct inputs
    negative = [[-1, *c[1:]] for c in lineage["drift_reference"]]
    assert version_reference("embedding-scorer", {"drift_reference": negative}) is None
    assert version_reference("embedding-scorer", {}) is None
    assert version_reference("embedding-scorer", {"drift_reference": [[1, 2]]}) is None  # wrong shape
    assert version_reference("frame-classifier", lineage) is None  # frames carry no features
    # Lineage is free-form JSON: numbers past what the arrays and floats take make no reference (they
    # raised OverflowError out of the refresh, and no version of any model got its own reference).
    past_int64 = [[2**64, *c[1:]] for c in lineage["drift_reference"]]
    assert version_reference("embedding-scorer", {"drift_reference": past_int64}) is None
    # Each count fits int64 but they add up past it: numpy's sum wraps (here to a positive 2**63 - 3).
    wrapping = [[2**63 - 1] * 3 + [0] * (len(c) - 3) for c in lineage["drift_reference"]]
    assert version_reference("embedding-scorer", {"drift_reference": wrapping}) is None
    huge = version_reference("embedding-scorer", {**lineage, "distinct": 10**400, "joined": 1})
    assert huge is not None
    assert huge.samples == total  # the distinct count ignored

    def quality(version: int, X: Any) -> tuple[str, w.State]:
        state = w.new_quality()
        state["samples"] = len(X)
        state["features"] = base.window_counts(X)
        return w.quality_key(0, w.window_key("eu", "embedding-scorer", version, 0)), state

    windows = [quality(1, second.X), quality(2, second.X), quality(3, load_dataset("embedding").X_train)]
    rows = {r["version"]: r["drift"] for r in window_rows({}, windows, {("embedding-scorer", 2): own})}
    assert rows[1]["reference"] == rows[3]["reference"] == "training"
    assert rows[2]["reference"] == "version"
    assert rows[1]["flagged"], rows[1]["max_psi"]  # shifted inputs against the zoo's training data
    assert not rows[2]["flagged"], rows[2]["max_psi"]  # the same inputs against v2's own
    assert not rows[3]["flagged"], rows[3]["max_psi"]
    for drift in rows.values():  # each window says which thresholds it was judged by
        assert len(drift["feature_thresholds"]) == 30
        assert drift["threshold"] in drift["feature_thresholds"]
        assert drift["false_positive_rate"] == 0.05


async def test_records_whose_content_no_check_foresaw_cost_only_their_own_counts(
    bootstrap: KafkaSettings, aggregator_acls: KafkaSettings, aggregator_factory: Any
) -> None:
    """A model named ``team/scorer`` in two windows (its second summary made the summary agent parse the
    first window's key back; the view parsed every key), between good summaries, with a sample and its
    label of that model: every record is counted, under its own names, and the agents go on."""
    region = f"t{uuid.uuid4().hex[:10]}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    window_ms = 60_000
    aggregator = aggregator_factory(
        aggregator_acls, app_id=f"{AGGREGATOR_GROUP}-{region}", web_port=str(port), window_s="60"
    )
    now_ms = int(time.time() * 1000)
    odd = "team/scorer"
    older = PartialSummary(region, "n", odd, 1, now_ms - 2 * window_ms)
    newer = PartialSummary(region, "n", odd, 1, now_ms)
    for summary in (older, newer):
        summary.add_result(1, 0.9, 4.0)
    rid, big_rid = bytes(range(16)), bytes(range(1, 17))
    sample = Sample(rid, region, odd, 1, now_ms, b"d" * 16, (0.5, 0.25), 1, (0.1, 0.9))
    # Within what the edge's producers write (1 MiB) but over faust's default request size: it was
    # refused as the samples were forwarded by request id, and that agent stopped at it.
    big = Sample(big_rid, region, odd, 1, now_ms, b"d" * 16, (0.5,) * 112_000, 1, (0.1, 0.9))
    assert 1_000_000 < len(big.to_bytes()) < PRODUCER_MAX_REQUEST_BYTES - 1024
    producer = AIOKafkaProducer(**bootstrap.client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        # Only records the contract's schemas allow: other tests check every record of these shared
        # topics against them (the agents' skipping of undecodable ones is older, and logged).
        for value in (older.to_bytes(), _summary(region, now_ms, 2).to_bytes(), newer.to_bytes()):
            await producer.send_and_wait(SUMMARIES_TOPIC, value, key=region.encode())
        await producer.send_and_wait(SAMPLES_TOPIC, big.to_bytes(), key=big_rid)
        await producer.send_and_wait(SAMPLES_TOPIC, sample.to_bytes(), key=rid)
        await producer.send_and_wait(LABELS_TOPIC, Label(rid, odd, 1, now_ms).to_bytes(), key=rid)
        await producer.send_and_wait(LABELS_TOPIC, Label(big_rid, odd, 1, now_ms).to_bytes(), key=big_rid)
        for _ in range(2):  # after them: the agents went on
            await producer.send_and_wait(SUMMARIES_TOPIC, _summary(region, now_ms, 3).to_bytes())
        aggregator.start()

        def counted() -> list[dict[str, Any]] | None:
            view = _view(url)
            rows = [] if view is None else [r for r in view["windows"] if r["region"] == region]
            done = sum(r["summaries"] for r in rows) >= 5 and sum(r["joined"] for r in rows) >= 2
            return rows if done else None

        rows = await _poll(counted, 120, "the aggregator counting past the odd records")
    finally:
        await producer.stop()
    by = {(r["model"], r["start_ms"]): r for r in rows}
    start = w.window_start(now_ms, window_ms)
    assert set(by) == {
        (odd, w.window_start(older.at_ms, window_ms)),
        (odd, start),
        ("embedding-scorer", start),
    }
    assert [by[odd, start][k] for k in ("summaries", "results", "samples", "joined")] == [1, 1, 2, 2]
    assert by[odd, w.window_start(older.at_ms, window_ms)]["summaries"] == 1
    assert (by["embedding-scorer", start]["summaries"], by["embedding-scorer", start]["results"]) == (3, 8)


def _check_metrics(url: str, *, at_least: int) -> None:
    """The aggregator's live ``/metrics``: every name it declares, ready, and the summaries it read."""
    from prometheus_client.parser import text_string_to_metric_families

    from edgestream.pipeline.observability.catalogue import AGGREGATOR_RECORDS, METRICS_AGGREGATOR, READY

    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert set(METRICS_AGGREGATOR) <= {n.removesuffix("_total") for n in families} | declared
    assert [s.value for s in families[READY].samples] == [1.0]
    records = families[AGGREGATOR_RECORDS.removesuffix("_total")].samples
    read = sum(
        s.value for s in records if s.labels.get("topic") == SUMMARIES_TOPIC and s.name.endswith("_total")
    )
    assert read >= at_least


async def test_faust_topics_are_replicated_as_the_cluster_rule_says_as_the_aggregator_principal(
    aggregator_acls: KafkaSettings,
) -> None:
    settings = AggregatorSettings(kafka=aggregator_acls)
    decided = await asyncio.to_thread(with_replication, settings)  # its own loop, as at start
    assert decided.topic_replication_factor == 1  # the session's one broker
    assert build_app(decided).conf.topic_replication_factor == 1
    pinned = AggregatorSettings(
        kafka=aggregator_acls.model_copy(update={"bootstrap_servers": "127.0.0.1:1"}),
        topic_replication_factor=3,
    )
    assert with_replication(pinned) is pinned  # said: no broker asked (none listens there)
    assert build_app(pinned).conf.topic_replication_factor == 3
