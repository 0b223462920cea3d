"""Inference of a unit: its answerable items grouped by (model, version), one onnxruntime call per group
in a worker thread (the event loop keeps fetching meanwhile); a batch that fails is retried one item at
a time, so one bad input costs only its own dead letter."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edgestream.pipeline.errors import InferenceFailed
from edgestream.pipeline.observability.metrics import WorkerMetrics
from edgestream.pipeline.serving.served import ModelKey, ServedModel
from edgestream.workers.edge.admission import Answer, Item
from edgestream.workers.edge.outputs import sampled
from edgestream.workers.edge.status import WorkerStats

log = logging.getLogger(__name__)


class UnitInference:
    """Answers the items of a unit, counting onnxruntime calls in the worker's stats and metrics."""

    def __init__(self, stats: WorkerStats, metrics: WorkerMetrics, *, sample_fraction: float) -> None:
        self._stats = stats
        self._metrics = metrics
        self._sample_fraction = sample_fraction
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")

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
            except InferenceFailed as err:
                log.warning(
                    "batch of %d for %s failed (%s); retrying one by one", len(group), served.key, err
                )
                for item in group:
                    try:
                        await self._infer(served, [item])
                    except InferenceFailed as single:
                        item.error = single

    async def _infer(self, served: ServedModel, items: Sequence[Item]) -> None:
        """One onnxruntime call of ``served`` for ``items``; keeps the inputs of sampled answers."""
        inputs = np.stack([it.tensor for it in items if it.tensor is not None])
        loop = asyncio.get_running_loop()
        started_s = time.monotonic()
        labels, probs = await loop.run_in_executor(self._executor, served.session.run, inputs)
        infer_s = time.monotonic() - started_s
        self._stats.infer_s += infer_s
        self._stats.batch_sizes[len(items)] += 1
        self._metrics.inference(served.key[0], len(items), infer_s)
        for item, label, scores in zip(items, labels.tolist(), probs.tolist(), strict=True):
            if item.tensor is not None and sampled(item, self._sample_fraction):
                item.features = tuple(float(x) for x in item.tensor.ravel())
            item.tensor = None  # the decrypted input is not needed past this point
            item.answer = Answer(int(label), tuple(float(s) for s in scores), infer_s * 1000.0, len(items))
