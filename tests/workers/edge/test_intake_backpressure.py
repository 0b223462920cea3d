"""The intake under backpressure: paused, it fetches nothing and waits for a commit to let records go,
not for a fetch to time out, and resumes at half (``intake.py``)."""

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


class Fetches:
    """What the intake asks of the worker's fetches (``fetching.py``), recording the fetches."""

    def __init__(self) -> None:
        self.fetches = 0

    async def fetch(self, timeout_s: float, max_records: int) -> dict[TopicPartition, list[Any]]:
        self.fetches += 1
        await asyncio.sleep(timeout_s)  # nothing arrives: a fetch waits out its timeout
        return {}


class Paused:
    """The intake's paused gauge, as the metrics are told it."""

    def __init__(self) -> None:
        self._now = False

    def set_paused(self, paused: bool) -> None:
        self._now = paused

    def now(self) -> bool:
        return self._now


async def _positioned() -> None:
    return None


def _intake(fetches: Fetches, paused: Paused, held: list[int], released: asyncio.Event) -> Intake:
    settings = WorkerSettings(
        region="r",
        node_id="n",
        home=Path("/nonexistent"),
        kafka=KafkaSettings(bootstrap_servers="localhost:9"),
        max_in_flight=100,
    )
    metrics = SimpleNamespace(
        set_paused=paused.set_paused, set_in_flight=lambda n: None, consumed=lambda n: None
    )
    return Intake(
        fetches,  # type: ignore[arg-type]
        settings,
        keys=SimpleNamespace(current=lambda: None),  # type: ignore[arg-type]
        admission=SimpleNamespace(),  # type: ignore[arg-type]
        partitions=SimpleNamespace(position_new=_positioned, serving={}),  # type: ignore[arg-type]
        open_unit=SimpleNamespace(),  # type: ignore[arg-type]
        stats=WorkerStats(),
        metrics=metrics,  # type: ignore[arg-type]
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
    fetches, paused, held, released = Fetches(), Paused(), [100], asyncio.Event()
    async with _running(_intake(fetches, paused, held, released)):
        await asyncio.sleep(0.01)
        assert paused.now()
        assert fetches.fetches == 0  # paused: no fetch that could only wait out its timeout

        held[0] = 70  # a commit let some go, not down to half: still paused
        released.set()
        await asyncio.sleep(0.01)
        assert paused.now()
        assert fetches.fetches == 0

        held[0] = 50  # down to half: resumed at the commit's release, long before a fetch timeout
        released.set()
        await asyncio.sleep(0.01)
        assert not paused.now()
        assert fetches.fetches == 1


async def test_paused_without_a_release_it_looks_again_after_a_fetch_timeout() -> None:
    fetches, paused, held, released = Fetches(), Paused(), [100], asyncio.Event()
    async with _running(_intake(fetches, paused, held, released)):
        await asyncio.sleep(0.01)
        assert paused.now()
        held[0] = 10  # let go without a release being signalled (nothing may hang on one)
        await asyncio.sleep(2.5 * FETCH_TIMEOUT_MS / 1000.0)
        assert not paused.now()
        assert fetches.fetches >= 1
