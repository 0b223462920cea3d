"""Bare onnxruntime: ``InferenceSession.run`` per model and batch size, no Kafka."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.pipeline.results import FloorPoint
from bench.pipeline.settings import FLOOR_BLOCK, BenchSettings
from edgestream.pipeline.models import ModelStore, load_dataset
from edgestream.pipeline.serving.inference import InferenceSession
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND


def onnx_floor(settings: BenchSettings, home: Path, sizes: Sequence[int]) -> dict[str, list[FloorPoint]]:
    """``InferenceSession.run`` per model and batch size: min and median over timed repeats.

    The points are timed round-robin, a short block each per round, so a slow spell of the shared
    machine spreads over every point instead of bending one of them.
    """
    store = ModelStore(home / "models")
    cases: list[tuple[str, int, InferenceSession, np.ndarray[Any, Any]]] = []
    for kind, name in MODEL_FOR_KIND.items():
        session = InferenceSession(
            store.get(name, settings.model_size), intra_op_num_threads=settings.intra_op_threads
        )
        data = load_dataset(kind).X_test
        for size in sizes:
            batch = np.ascontiguousarray(np.resize(data, (size, *data.shape[1:])))
            for _ in range(FLOOR_BLOCK):  # first runs of a shape allocate
                session.run(batch)
            cases.append((name, size, session, batch))
    times_ns: list[list[int]] = [[] for _ in cases]
    budget_end_s = time.monotonic() + settings.floor_budget_s * len(cases)
    while min(len(t) for t in times_ns) < settings.floor_min_repeats or time.monotonic() < budget_end_s:
        for (_, _, session, batch), samples in zip(cases, times_ns, strict=True):
            for _ in range(FLOOR_BLOCK):
                start_ns = time.perf_counter_ns()
                session.run(batch)
                samples.append(time.perf_counter_ns() - start_ns)
    floor: dict[str, list[FloorPoint]] = {}
    for (name, size, _, _), samples in zip(cases, times_ns, strict=True):
        min_us = min(samples) / 1000.0
        median_us = float(statistics.median(samples)) / 1000.0
        point = FloorPoint(size, len(samples), min_us, median_us, min_us / size, median_us / size)
        floor.setdefault(name, []).append(point)
    return floor


def batch_us_at(points: Sequence[FloorPoint], mean_batch: float) -> float:
    """Median per-batch microseconds at a (fractional) batch size, interpolated between measured sizes."""
    xs = [p.batch for p in points]
    ys = [p.median_us for p in points]
    return float(np.interp(mean_batch, xs, ys))
