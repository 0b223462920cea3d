"""The commit stage: staged units commit in order, the ones staged during a commit together, and a
rewound partition's staged work is dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import TopicPartition

from edgestream.pipeline.contract.cloud import PartialSummary
from edgestream.topics.catalogue import SUMMARIES_TOPIC
from edgestream.workers.edge.commits import CommitStage, StagedUnit, merge
from edgestream.workers.edge.sinks import Output, PartitionWork

A = TopicPartition("edge.r.ingest.frame", 0)
B = TopicPartition("edge.r.ingest.frame", 1)


def _out(name: str) -> Output:
    return Output("edge.r.results", name.encode(), None)


def _unit(**parts: tuple[int, int, list[str]]) -> StagedUnit:
    """Parts by name ``a``/``b``: (epoch, next offset, output names); metadata names the offset."""
    tps = {"a": A, "b": B}
    work = {
        tps[name]: PartitionWork([_out(o) for o in outs], offset, f"head@{offset}", epoch)
        for name, (epoch, offset, outs) in parts.items()
    }
    items: list[Any] = [object()] * sum(len(outs) for _, _, outs in parts.values())
    return StagedUnit(items, work, "size")


def test_merge_keeps_output_order_and_takes_the_last_units_offset_and_head() -> None:
    units = [_unit(a=(1, 5, ["a1", "a2"]), b=(1, 3, ["b1"])), _unit(a=(1, 9, ["a3"]))]
    merged = merge(units, {A: 1, B: 1})
    assert [o.value for o in merged[A].outputs] == [b"a1", b"a2", b"a3"]
    assert (merged[A].next_offset, merged[A].metadata) == (9, "head@9")
    assert (merged[B].next_offset, merged[B].metadata, len(merged[B].outputs)) == (3, "head@3", 1)
    assert [o.value for o in units[0].work[A].outputs] == [b"a1", b"a2"], "the staged work is not changed"


def test_merge_drops_the_work_of_a_partition_rewound_since_it_was_built() -> None:
    units = [_unit(a=(1, 5, ["old"]), b=(1, 3, ["b1"])), _unit(a=(2, 7, ["new"]))]
    merged = merge(units, {A: 2, B: 1})
    assert [o.value for o in merged[A].outputs] == [b"new"]
    assert merged[A].next_offset == 7
    assert B in merged
    assert merge(units, {B: 1}).keys() == {B}, "a partition out of service commits nothing"


def _summary(model: str, at_ms: int, *labels: int) -> PartialSummary:
    summary = PartialSummary("r", "node", model, 1, at_ms)
    for label in labels:
        summary.add_result(label, 0.9, 12.0)
    return summary


def test_merge_adds_up_the_units_summaries_into_one_per_model_version_after_the_outputs() -> None:
    """One summary record per (model, version) per partition per commit, however many units it takes;
    each counts exactly its partition's records of those units, and a rewound partition's count none."""
    units = [_unit(a=(1, 5, ["a1"]), b=(1, 3, ["b1"])), _unit(a=(1, 9, ["a2"]), b=(0, 4, ["b-old"]))]
    units[0].work[A].summaries[("embedding-scorer", 1)] = _summary("embedding-scorer", 100, 1, 2)
    units[0].work[A].summaries[("frame-classifier", 1)] = _summary("frame-classifier", 100, 3)
    units[0].work[B].summaries[("embedding-scorer", 1)] = _summary("embedding-scorer", 100, 4)
    units[1].work[A].summaries[("embedding-scorer", 1)] = _summary("embedding-scorer", 200, 1)
    units[1].work[B].summaries[("embedding-scorer", 1)] = _summary("embedding-scorer", 200, 5)  # rewound
    merged = merge(units, {A: 1, B: 1})
    assert [o.value for o in merged[A].outputs[:2]] == [b"a1", b"a2"], "the unit outputs first, in order"
    on_a = {s.model: s for s in map(PartialSummary.from_bytes, (o.value for o in merged[A].outputs[2:]))}
    assert {o.topic for o in merged[A].outputs[2:]} == {SUMMARIES_TOPIC}
    assert (on_a["embedding-scorer"].results, on_a["embedding-scorer"].labels) == (3, {1: 2, 2: 1})
    assert (on_a["embedding-scorer"].at_ms, on_a["frame-classifier"].results) == (200, 1)
    assert [o.key for o in merged[A].outputs[2:]] == [b"r/embedding-scorer/1", b"r/frame-classifier/1"]
    (b_summary,) = [
        PartialSummary.from_bytes(o.value) for o in merged[B].outputs if o.topic == SUMMARIES_TOPIC
    ]
    assert (b_summary.results, b_summary.labels) == (1, {4: 1}), "not the rewound epoch's count"
    assert units[0].work[A].summaries[("embedding-scorer", 1)].results == 2, "the staged work is not changed"


def test_merge_for_one_commit_adds_up_the_summaries_of_every_partition_after_the_last_ones_outputs() -> None:
    """Partitions that commit in one transaction (per_worker) carry one summary per (model, version)
    among them, counting every partition's records of the units but a rewound one's."""
    units = [_unit(a=(1, 5, ["a1"]), b=(1, 3, ["b1"])), _unit(a=(1, 9, ["a2"]), b=(0, 4, ["b-old"]))]
    units[0].work[A].summaries[("embedding-scorer", 1)] = _summary("embedding-scorer", 100, 1, 2)
    units[0].work[A].summaries[("frame-classifier", 1)] = _summary("frame-classifier", 100, 3)
    units[0].work[B].summaries[("embedding-scorer", 1)] = _summary("embedding-scorer", 150, 4)
    units[1].work[A].summaries[("embedding-scorer", 1)] = _summary("embedding-scorer", 200, 1)
    units[1].work[B].summaries[("embedding-scorer", 1)] = _summary("embedding-scorer", 200, 5)  # rewound
    merged = merge(units, {A: 1, B: 1}, one_commit=True)
    every = [o for part in merged.values() for o in part.outputs]
    assert [o.value for o in every if o.topic != SUMMARIES_TOPIC] == [b"a1", b"a2", b"b1"]
    last = list(merged)[-1]
    assert [o.topic for o in merged[last].outputs[-2:]] == [SUMMARIES_TOPIC] * 2, "after the last outputs"
    summaries = {
        s.model: s for s in (PartialSummary.from_bytes(o.value) for o in every if o.topic == SUMMARIES_TOPIC)
    }
    assert len(summaries) == 2 == sum(o.topic == SUMMARIES_TOPIC for o in every), "one per model"
    assert (summaries["embedding-scorer"].results, summaries["embedding-scorer"].labels) == (
        4,
        {1: 2, 2: 1, 4: 1},
    ), "both partitions' counts, not the rewound epoch's"
    assert (summaries["embedding-scorer"].at_ms, summaries["frame-classifier"].results) == (200, 1)
    # Nothing to commit, nothing summarised; a lone partition's summary is its own.
    assert merge(units, {}, one_commit=True) == {}
    alone = merge(units[:1], {A: 1}, one_commit=True)
    assert sum(o.topic == SUMMARIES_TOPIC for o in alone[A].outputs) == 2


async def test_units_staged_during_a_commit_commit_together_in_order() -> None:
    gate = asyncio.Event()
    commits: list[list[bytes]] = []

    async def commit(units: Sequence[StagedUnit], work: dict[TopicPartition, PartitionWork]) -> None:
        commits.append([o.value for o in work[A].outputs])
        if len(commits) == 1:
            await gate.wait()

    stage = CommitStage({A: 1}, commit)
    runner = asyncio.create_task(stage.run())
    stage.stage(_unit(a=(1, 1, ["u1"])))
    await asyncio.sleep(0.01)  # the first commit is in flight, held at the gate
    stage.stage(_unit(a=(1, 2, ["u2"])))
    stage.stage(_unit(a=(1, 3, ["u3"])))
    assert stage.held() == 3, "the unit in flight and the two staged ones hold their records"
    gate.set()
    await stage.flush()
    assert commits == [[b"u1"], [b"u2", b"u3"]]
    assert (stage.commits, stage.units, stage.held()) == (2, 3, 0)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)


async def test_after_a_commit_raises_nothing_staged_behind_it_ever_commits() -> None:
    """A commit that raises leaves its records to the next owner: a later commit of the same
    partitions would move their offsets past records whose outputs never committed."""
    calls: list[list[bytes]] = []
    gate = asyncio.Event()

    async def commit(units: Sequence[StagedUnit], work: dict[TopicPartition, PartitionWork]) -> None:
        calls.append([o.value for o in work[A].outputs])
        await gate.wait()
        raise RuntimeError("broker gone")

    stage = CommitStage({A: 1}, commit)
    runner = asyncio.create_task(stage.run())
    stage.stage(_unit(a=(1, 1, ["u1"])))
    await asyncio.sleep(0.01)  # u1's commit in flight
    stage.stage(_unit(a=(1, 2, ["u2"])))
    waiting = asyncio.create_task(stage.flush())  # a rebalance or a drain, queued behind it
    await asyncio.sleep(0.01)
    gate.set()
    with pytest.raises(RuntimeError, match="broker gone"):
        await waiting
    assert calls == [[b"u1"]], "u2 was never committed"
    assert stage.held() == 0
    with pytest.raises(RuntimeError, match="broker gone"):
        stage.stage(_unit(a=(1, 3, ["u3"])))
    assert runner.done()
    with pytest.raises(RuntimeError, match="broker gone"):
        await runner


async def test_commits_start_at_most_once_per_interval_but_a_flush_does_not_wait() -> None:
    commits: list[list[bytes]] = []

    async def commit(units: Sequence[StagedUnit], work: dict[TopicPartition, PartitionWork]) -> None:
        commits.append([o.value for o in work[A].outputs])

    stage = CommitStage({A: 1}, commit, interval_ms=60_000)
    runner = asyncio.create_task(stage.run())
    stage.stage(_unit(a=(1, 1, ["u1"])))
    await asyncio.sleep(0.05)
    assert commits == [[b"u1"]], "the first commit starts at once"
    stage.stage(_unit(a=(1, 2, ["u2"])))
    stage.stage(_unit(a=(1, 3, ["u3"])))
    await asyncio.sleep(0.05)
    assert commits == [[b"u1"]], "the next waits for the interval"
    assert stage.held() == 2
    await stage.flush()  # a rebalance or a drain
    assert commits == [[b"u1"], [b"u2", b"u3"]]
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)


async def test_units_staged_during_a_commit_wait_for_the_interval_too() -> None:
    """A slow commit does not shorten the interval: what is staged while it runs is not committed the
    moment it ends (that made commits as frequent as they were slow: 17/s at a 100 ms interval)."""
    commits: list[list[bytes]] = []
    release = asyncio.Event()

    async def commit(units: Sequence[StagedUnit], work: dict[TopicPartition, PartitionWork]) -> None:
        commits.append([o.value for o in work[A].outputs])
        await release.wait()

    stage = CommitStage({A: 1}, commit, interval_ms=60_000)
    runner = asyncio.create_task(stage.run())
    stage.stage(_unit(a=(1, 1, ["u1"])))
    await asyncio.sleep(0.02)
    stage.stage(_unit(a=(1, 2, ["u2"])))  # staged while u1's commit is in flight
    release.set()
    await asyncio.sleep(0.05)
    assert commits == [[b"u1"]], "u2 waits for the interval, not just for u1's commit"
    assert stage.held() == 1
    await stage.flush()
    assert commits == [[b"u1"], [b"u2"]]
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
