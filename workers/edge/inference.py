"""Inference of a unit: its answerable items grouped by (model, version), one onnxruntime call per group
in a worker thread (the event loop keeps fetching meanwhile), or on the event loop itself when the
model's calls take less than a thread hop would cost (``inline_max_ms``); a batch that fails is
retried one item at a time, so one bad input costs only its own dead letter. An answer whose scores are
NaN or infinite is no answer: its item is dead-lettered ``non_finite``; an unexpected error for one
item, ``internal``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from edgestream.pipeline.errors import InferenceCrashed, InferenceFailed, NonFiniteOutput
from edgestream.pipeline.observability.metrics import WorkerMetrics
from edgestream.pipeline.serving.served import ModelKey, ServedModel
from edgestream.workers.edge.admission import Answer, Item
from edgestream.workers.edge.outputs import sampled
from edgestream.workers.edge.status import WorkerStats

log = logging.getLogger(__name__)


class UnitInference:
    """Answers the items of a unit, counting onnxruntime calls in the worker's stats and metrics."""

    def __init__(
        self, stats: WorkerStats, metrics: WorkerMetrics, *, sample_fraction: float, inline_max_ms: float
    ) -> None:
        self._stats = stats
        self._metrics = metrics
        self._sample_fraction = sample_fraction
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self._inline_max_s = inline_max_ms / 1000.0
        self._call_s: dict[ModelKey, float] = {}  # moving average of each model's call time
        self._inputs = InputBuffers()
        self.inline_calls = 0
        """Calls run on the event loop (the rest ran in the inference thread)."""

    def shutdown(self) -> None:
        """Wait for the call in flight, if any, and stop the inference thread."""
        self._executor.shutdown(wait=True)

    async def infer(self, items: Sequence[Item]) -> None:
        """Set the answer of every item still without an error (one whose own call fails gets that
        error instead); the decrypted inputs are dropped once answered."""
        groups: dict[ModelKey, list[Item]] = {}
        for item in items:
            if item.error is None and item.model is not None:
                groups.setdefault(item.model.key, []).append(item)
        for group in groups.values():
            served = group[0].model
            assert served is not None
            try:
                await self._infer(served, group)
            except Exception as err:
                log.warning(
                    "batch of %d for %s failed (%r); retrying one by one", len(group), served.key, err
                )
                for item in group:
                    if item.answer is None and item.error is None:  # not settled before it failed
                        await self._infer_alone(served, item)

    async def _infer_alone(self, served: ServedModel, item: Item) -> None:
        """Infer one item; whatever fails becomes its own error (and drops its input)."""
        try:
            await self._infer(served, [item])
        except InferenceFailed as err:
            item.error = err
        except Exception as err:
            log.warning("inferring %s[%d]@%d", item.tp.topic, item.tp.partition, item.offset, exc_info=True)
            item.error = InferenceCrashed("inferring", err)
        if item.error is not None:
            item.tensor = item.features = item.answer = None

    async def _infer(self, served: ServedModel, items: Sequence[Item]) -> None:
        """One onnxruntime call of ``served`` for ``items``; keeps the inputs of sampled answers."""
        tensors = [it.tensor for it in items if it.tensor is not None]
        first = tensors[0]
        if all(t.dtype == first.dtype and t.shape == first.shape for t in tensors):
            taken = self._inputs.take(len(tensors), first.shape, first.dtype)
            inputs = taken[: len(tensors)]
            for row, tensor in enumerate(tensors):  # np.stack(out=) checks and copies the same, 3x slower
                inputs[row] = tensor
            buffer: npt.NDArray[Any] | None = taken
        else:  # wire dtypes mixed (a signature may accept several): np.stack's common type, as before
            buffer = None
            inputs = np.stack(tensors)  # (items of other shapes raise here: retried one by one)
        expected_s = self._call_s.get(served.key)
        started_s = time.monotonic()
        try:
            if expected_s is not None and expected_s <= self._inline_max_s:
                labels, probs = served.session.run(inputs)
                self.inline_calls += 1
            else:
                loop = asyncio.get_running_loop()
                labels, probs = await loop.run_in_executor(self._executor, served.session.run, inputs)
        finally:
            if buffer is not None:
                self._inputs.give_back(buffer)
        infer_s = time.monotonic() - started_s
        self._call_s[served.key] = infer_s if expected_s is None else 0.8 * expected_s + 0.2 * infer_s
        self._stats.infer_s += infer_s
        self._stats.batch_sizes[len(items)] += 1
        self._metrics.inference(*served.key, len(items), infer_s)
        # One check of the whole batch; item by item only when something is not finite.
        finite: list[bool] = [True] * len(items)
        if not np.isfinite(probs).all():
            finite = [bool(np.isfinite(row).all()) for row in probs.reshape(len(items), -1)]
        # Scores are floats on the wire: a model's integer or boolean outputs become floats here.
        values = probs if probs.dtype.kind == "f" else probs.astype(np.float64)
        for item, label, scores, ok in zip(items, labels.tolist(), values.tolist(), finite, strict=True):
            if not ok:
                item.error = NonFiniteOutput(f"{served.key[0]} v{served.key[1]} scored NaN or infinity")
            elif item.tensor is not None and sampled(item, self._sample_fraction):
                item.features = tuple(float(x) for x in item.tensor.ravel())
            item.tensor = None  # the decrypted input is not needed past this point
            if ok:
                item.answer = Answer(int(label), tuple(scores), infer_s * 1000.0, len(items), started_s)


class InputBuffers:
    """Batch input arrays kept between onnxruntime calls, one free list per item shape and dtype.

    A fresh array of a vision model's batch (64 frames of 224x224x3: 9.6 MB) is fresh memory the
    kernel maps page by page as the stack writes it; reused, it is already mapped. A buffer is taken
    for one call and given back once the call has returned (onnxruntime keeps no reference to its
    inputs past ``run``); it holds as many items as the largest batch asked of its shape so far.
    """

    def __init__(self) -> None:
        self._free: dict[tuple[tuple[int, ...], np.dtype[Any]], list[npt.NDArray[Any]]] = {}

    def take(self, n: int, item_shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        """An array of at least ``n`` items of ``item_shape`` and ``dtype`` (its first ``n`` rows are
        the batch); a free one if one is large enough, else a new one."""
        free = self._free.setdefault((tuple(item_shape), np.dtype(dtype)), [])
        for i, buffer in enumerate(free):
            if len(buffer) >= n:
                return free.pop(i)
        if free:
            free.pop()  # too small for this batch: replaced by the larger one when it is given back
        return np.empty((n, *item_shape), dtype=dtype)

    def give_back(self, buffer: npt.NDArray[Any]) -> None:
        """``buffer`` may be handed out again."""
        self._free.setdefault((tuple(buffer.shape[1:]), buffer.dtype), []).append(buffer)

    def held_bytes(self) -> int:
        """Bytes of the free buffers."""
        return sum(b.nbytes for free in self._free.values() for b in free)
