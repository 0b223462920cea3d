"""A model whose calls are cheaper than a thread hop runs on the event loop; a slow one, or every one
with ``inline_max_ms`` 0, in the inference thread, and both give the same answers."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from aiokafka import TopicPartition

from edgestream.pipeline.observability.metrics import WorkerMetrics
from edgestream.workers.edge.admission import Item
from edgestream.workers.edge.inference import InputBuffers, UnitInference
from edgestream.workers.edge.status import WorkerStats

TP = TopicPartition("edge.r.ingest.embedding", 0)


class _Session:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.threads: list[str] = []

    def run(self, x: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay_s)
        scores = np.stack([x.sum(axis=1), -x.sum(axis=1)], axis=1)
        return scores.argmax(axis=1), scores


class _Served:
    def __init__(self, delay_s: float) -> None:
        self.key = ("m", 1)
        self.session = _Session(delay_s)


def _items(served: _Served, n: int) -> list[Item]:
    items = []
    for i in range(n):
        item = Item(TP, 1, i, 0, b"d", (), b"", time.monotonic())
        item.tensor = np.full(4, float(i % 3 - 1), dtype=np.float32)
        item.model = served  # type: ignore[assignment]
        items.append(item)
    return items


async def _run(inline_max_ms: float, delay_s: float, calls: int) -> tuple[UnitInference, _Served, list[Item]]:
    inference = UnitInference(
        WorkerStats(), WorkerMetrics(region="r", node="n"), sample_fraction=0.0, inline_max_ms=inline_max_ms
    )
    served = _Served(delay_s)
    answered: list[Item] = []
    for _ in range(calls):
        items = _items(served, 3)
        await inference.infer(items)
        answered += items
    inference.shutdown()
    return inference, served, answered


@pytest.mark.parametrize(
    ("inline_max_ms", "delay_s", "inline"),
    # The fast case's bound is wide: its first call is timed through the thread hop, which a busy box
    # (the suite beside a broker) stretched past 5 ms.
    [(200.0, 0.0, True), (0.0, 0.0, False), (1.0, 0.02, False)],
    ids=["fast-model-inline", "never-inline", "slow-model-in-thread"],
)
async def test_where_a_model_call_runs(inline_max_ms: float, delay_s: float, inline: bool) -> None:
    inference, served, answered = await _run(inline_max_ms, delay_s, calls=4)
    main = threading.current_thread().name
    assert served.session.threads[0] != main, "the first call, of unknown cost, goes to the thread"
    later = served.session.threads[1:]
    assert all((t == main) == inline for t in later), later
    assert inference.inline_calls == (3 if inline else 0)
    assert [it.answer.label for it in answered if it.answer] == [
        0 if i % 3 - 1 >= 0 else 1 for i in range(3)
    ] * 4


def test_input_buffers_are_reused_and_grow_to_the_largest_batch() -> None:
    buffers = InputBuffers()
    first = buffers.take(4, (3,), np.dtype(np.float32))
    assert first.shape == (4, 3)
    assert buffers.take(2, (3,), np.dtype(np.float32)) is not first  # the first is still taken
    buffers.give_back(first)
    assert buffers.take(3, (3,), np.dtype(np.float32)) is first  # large enough: reused
    buffers.give_back(first)
    assert buffers.take(2, (3,), np.dtype(np.float16)) is not first  # another dtype
    larger = buffers.take(8, (3,), np.dtype(np.float32))  # too small: replaced by a larger one
    assert larger.shape == (8, 3)
    buffers.give_back(larger)
    assert buffers.held_bytes() == larger.nbytes
    assert buffers.take(5, (3,), np.dtype(np.float32)) is larger


async def test_a_reused_buffer_gives_every_call_its_own_answers() -> None:
    """Batches of changing size through one buffer: each call's answers are its own items' (no rows
    of an earlier, larger batch), and the scores are plain floats."""
    inference = UnitInference(
        WorkerStats(), WorkerMetrics(region="r", node="n"), sample_fraction=0.0, inline_max_ms=0.0
    )
    served = _Served(0.0)
    for n in (5, 2, 4, 1):
        items = _items(served, n)
        await inference.infer(items)
        for item in items:
            assert item.answer is not None
            assert item.tensor is None
            value = float(item.offset % 3 - 1) * 4
            assert item.answer.scores == (value, -value)
            assert all(type(s) is float for s in item.answer.scores)
            assert item.answer.batch_size == n
    inference.shutdown()


async def test_mixed_wire_dtypes_are_stacked_to_their_common_type_as_before() -> None:
    """A signature may accept float16 and float32 from the wire: a batch of both is stacked as float32
    (np.stack's common type), never squeezed into the first item's float16."""
    seen: list[np.dtype[Any]] = []

    class _Recording(_Session):
        def run(self, x: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
            seen.append(x.dtype)
            return super().run(x)

    served = _Served(0.0)
    served.session = _Recording(0.0)
    inference = UnitInference(
        WorkerStats(), WorkerMetrics(region="r", node="n"), sample_fraction=0.0, inline_max_ms=0.0
    )
    items = _items(served, 3)
    items[0].tensor = np.full(4, 1.0001, dtype=np.float16)
    items[1].tensor = np.full(4, 1.0001, dtype=np.float32)
    await inference.infer(items)
    inference.shutdown()
    assert seen == [np.dtype(np.float32)]
    assert all(it.answer is not None for it in items)
    assert items[1].answer is not None
    assert items[1].answer.scores[0] == pytest.approx(4 * 1.0001, rel=1e-6)  # float32, not float16


async def test_integer_outputs_become_float_scores() -> None:
    """A user's model may output integers (a vector of counts, say): its scores are floats still."""

    class _Counting(_Session):
        def run(self, x: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
            labels, scores = super().run(x)
            return labels, scores.astype(np.int64)

    served = _Served(0.0)
    served.session = _Counting(0.0)
    inference = UnitInference(
        WorkerStats(), WorkerMetrics(region="r", node="n"), sample_fraction=0.0, inline_max_ms=0.0
    )
    items = _items(served, 3)
    await inference.infer(items)
    inference.shutdown()
    for item in items:
        assert item.answer is not None
        assert all(type(s) is float for s in item.answer.scores), item.answer.scores
