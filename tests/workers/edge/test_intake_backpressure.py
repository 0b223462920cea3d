"""The intake under backpressure: paused, it waits for a commit to let records go, not for a fetch from
paused partitions to time out, and resumes at half (``intake.py``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.intake import FETCH_TIMEOUT_MS, Intake
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.edge.status import WorkerStats

TP = TopicPartition("edge.r.ingest.embedding", 0)


class Consumer:
    """What the intake asks of aiokafka's consumer, recording the fetches and the pauses."""

    def __init__(self) -> None:
        self.fetches = 0
        self._paused: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *tps: TopicPartition) -> None:
        self._paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._paused -= set(tps)

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        self.fetches += 1
        await asyncio.sleep(timeout_ms / 1000.0)  # nothing arrives: a fetch waits out its timeout
        return {}


async def _positioned() -> None:
    return None


def _intake(consumer: Consumer, held: list[int], released: asyncio.Event) -> Intake:
    settings = WorkerSettings(
        region="r",
        node_id="n",
        home=Path("/nonexistent"),
        kafka=KafkaSettings(bootstrap_servers="localhost:9"),
        max_in_flight=100,
    )
    quiet = SimpleNamespace(
        set_paused=lambda paused: None, set_in_flight=lambda n: None, consumed=lambda n: None
    )
    return Intake(
        consumer,
        settings,
        keys=SimpleNamespace(current=lambda: None),  # type: ignore[arg-type]
        admission=SimpleNamespace(),  # type: ignore[arg-type]
        partitions=SimpleNamespace(position_new=_positioned, serving={}),  # type: ignore[arg-type]
        open_unit=SimpleNamespace(),  # type: ignore[arg-type]
        stats=WorkerStats(),
        metrics=quiet,  # type: ignore[arg-type]
        readiness=SimpleNamespace(progress=lambda: None),  # type: ignore[arg-type]
        held=lambda: held[0],
        fetched=lambda: None,
        tick=lambda: None,
        released=released,
    )


@contextlib.asynccontextmanager
async def _running(intake: Intake) -> AsyncIterator[None]:
    """The intake's loop running for the block, cancelled after it."""
    task = asyncio.create_task(intake.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_paused_it_waits_for_a_release_and_resumes_at_half_without_fetching_meanwhile() -> None:
    consumer, held, released = Consumer(), [100], asyncio.Event()
    async with _running(_intake(consumer, held, released)):
        await asyncio.sleep(0.01)
        assert consumer.paused() == {TP}
        assert consumer.fetches == 0  # paused: no fetch that could only wait out its timeout

        held[0] = 70  # a commit let some go, not down to half: still paused
        released.set()
        await asyncio.sleep(0.01)
        assert consumer.paused() == {TP}
        assert consumer.fetches == 0

        held[0] = 50  # down to half: resumed at the commit's release, long before a fetch timeout
        released.set()
        await asyncio.sleep(0.01)
        assert consumer.paused() == set()
        assert consumer.fetches == 1


async def test_paused_without_a_release_it_looks_again_after_a_fetch_timeout() -> None:
    consumer, held, released = Consumer(), [100], asyncio.Event()
    async with _running(_intake(consumer, held, released)):
        await asyncio.sleep(0.01)
        held[0] = 10  # let go without a release being signalled (nothing may hang on one)
        await asyncio.sleep(2.5 * FETCH_TIMEOUT_MS / 1000.0)
        assert consumer.paused() == set()
        assert consumer.fetches >= 1
