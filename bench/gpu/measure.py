"""Bare onnxruntime per model, execution provider and batch size: items/s and p99 of a batch's run."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.models import ModelStore, load_dataset
from edgestream.pipeline.models.vision import IMAGE_SHAPE, parameter_count, resnet_graph
from edgestream.pipeline.serving.inference import available_providers, open_session, run_bound
from edgestream.pipeline.serving.providers import CUDA, TENSORRT, Execution, TensorRtOptions, output_device
from edgestream.pipeline.serving.runtime import WHEEL, ort
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND

BATCH_SIZES = (1, 8, 32, 64)
"""Batch sizes timed: one request alone up to the worker's default ``max_batch``."""
BUDGET_S = 1.0
"""Seconds of timed runs per point (after its warm-up), at least ``MIN_RUNS`` runs."""
MIN_RUNS = 20
"""Fewest timed runs of a point, so its p99 is not one sample."""
WARM_UP_RUNS = 5
"""Untimed runs per point first: allocations, cuDNN's algorithm search, TensorRT's engine build."""
RESNET = "resnet50-shaped"
"""The vision graph's name in the results."""


@dataclass(frozen=True, slots=True)
class Case:
    """One model to time: its bytes and a source of input batches."""

    name: str
    """Name in the results."""
    model_bytes: bytes
    """The ONNX graph."""
    item_shape: tuple[int, ...]
    """One input item's shape (no batch dimension)."""
    batch: Callable[[int], npt.NDArray[np.generic]]
    """A batch of ``n`` items of the model's input dtype."""
    facts: dict[str, Any]
    """What the results say about the model (input, parameters)."""


@dataclass(frozen=True, slots=True)
class Point:
    """One model, provider set and batch size."""

    batch: int
    """Items per run."""
    runs: int
    """Timed runs."""
    items_per_s: float
    """Items over the timed runs' total time."""
    p50_ms: float
    """Median of one run, milliseconds."""
    p99_ms: float
    """99th percentile of one run, milliseconds."""


def p50(sorted_ms: Sequence[float]) -> float:
    """The median of ``sorted_ms``, rounded as the results hold it."""
    return round(statistics.median(sorted_ms), 4)


def p99(sorted_ms: Sequence[float]) -> float:
    """The 99th percentile of ``sorted_ms`` (ascending): the sample at 99% of the count."""
    return round(sorted_ms[min(len(sorted_ms) - 1, int(0.99 * len(sorted_ms)))], 4)


def has_cuda() -> bool:
    """True when this onnxruntime build offers the CUDA execution provider."""
    return CUDA in available_providers()


def gpu_targets(home: Path, max_batch: int) -> dict[str, Execution]:
    """The provider sets timed on a GPU: CUDA, and TensorRT FP16 (engines cached under ``home``) where
    this build has it; each with IO binding and no CPU fallback."""
    targets = {"cuda": Execution(providers=(CUDA,), io_binding="always", max_batch=max_batch)}
    if TENSORRT in available_providers():
        targets["tensorrt_fp16"] = Execution(
            providers=(TENSORRT,),
            tensorrt=TensorRtOptions(fp16=True),
            home=home,
            io_binding="always",
            max_batch=max_batch,
        )
    return targets


def zoo_cases(home: Path, model_size: str) -> list[Case]:
    """The models the worker serves by default, at ``model_size``, fed their held-out items."""
    store = ModelStore(home / "models")
    cases = []
    for kind, name in MODEL_FOR_KIND.items():
        artifact = store.get(name, model_size)
        items = load_dataset(kind).X_test
        cases.append(
            Case(
                f"{name}/{model_size}",
                artifact.path.read_bytes(),
                artifact.spec.input_shape,
                _cycling(items),
                {"input": [artifact.spec.input_dtype, list(artifact.spec.input_shape)]},
            )
        )
    return cases


def _cycling(items: npt.NDArray[np.generic]) -> Callable[[int], npt.NDArray[np.generic]]:
    """Batches of ``n`` items taken from ``items`` in order, repeated as needed."""

    def batch(n: int) -> npt.NDArray[np.generic]:
        return np.ascontiguousarray(np.resize(items, (n, *items.shape[1:])))

    return batch


def resnet_case(blocks: Sequence[int] | None = None, base_width: int = 64) -> Case:
    """The ResNet-50-shaped graph (or a cheaper one of the same interface) fed random images."""
    model = (
        resnet_graph(base_width=base_width) if blocks is None else resnet_graph(blocks, base_width=base_width)
    )
    images = np.random.default_rng(0).integers(0, 256, (max(BATCH_SIZES), *IMAGE_SHAPE), dtype=np.uint8)
    return Case(
        RESNET if blocks is None else f"resnet-{'-'.join(map(str, blocks))}-w{base_width}",
        model.SerializeToString(),
        IMAGE_SHAPE,
        _cycling(images),
        {"input": ["uint8", list(IMAGE_SHAPE)], "parameters": parameter_count(model)},
    )


def time_point(
    session: Any, device: str, device_id: int, batch: npt.NDArray[np.generic], budget_s: float
) -> Point:
    """Warm up, then time bound runs of ``batch`` for ``budget_s`` (at least ``MIN_RUNS``)."""
    for _ in range(WARM_UP_RUNS):
        run_bound(session, batch, device=device, device_id=device_id)
    samples_ns: list[int] = []
    end_s = time.monotonic() + budget_s
    while len(samples_ns) < MIN_RUNS or time.monotonic() < end_s:
        start_ns = time.perf_counter_ns()
        run_bound(session, batch, device=device, device_id=device_id)
        samples_ns.append(time.perf_counter_ns() - start_ns)
    ms = sorted(s / 1e6 for s in samples_ns)
    return Point(
        batch=len(batch),
        runs=len(ms),
        items_per_s=round(len(batch) * len(ms) * 1000.0 / sum(ms), 1),
        p50_ms=p50(ms),
        p99_ms=p99(ms),
    )


def measure(
    cases: Sequence[Case], targets: dict[str, Execution], batch_sizes: Sequence[int], budget_s: float
) -> dict[str, Any]:
    """Per model and target: the providers in use and a :class:`Point` per batch size, or why the
    target could not open a session (no points)."""
    models: dict[str, Any] = {}
    for case in cases:
        per_target: dict[str, Any] = {}
        for label, execution in targets.items():
            try:
                session = open_session(
                    case.model_bytes, execution, what=case.name, item_shape=case.item_shape
                )
            except ConfigError as error:  # e.g. TensorRT listed, its libraries absent
                per_target[label] = {"providers": [], "points": [], "error": str(error)}
                continue
            in_use = tuple(session.get_providers())
            device = output_device(in_use)
            device_id = execution.cuda.device_id if device == "cuda" else 0
            points = [time_point(session, device, device_id, case.batch(n), budget_s) for n in batch_sizes]
            per_target[label] = {"providers": list(in_use), "points": [asdict(p) for p in points]}
        models[case.name] = {**case.facts, "targets": per_target}
    return models


def device_name() -> str:
    """The GPU's name from ``nvidia-smi``, else onnxruntime's device kind."""
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            done = subprocess.run(
                [smi, "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            done = None
        if done is not None and done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip().splitlines()[0]
    return str(ort.get_device())


def gpu_block(
    home: Path,
    *,
    model_size: str = "medium",
    batch_sizes: Sequence[int] = BATCH_SIZES,
    budget_s: float = BUDGET_S,
) -> dict[str, Any] | None:
    """The ``gpu`` block of a bench result: device, providers, and per model, target and batch size
    bare onnxruntime items/s and p99; None where this onnxruntime has no CUDA."""
    if not has_cuda():
        return None
    targets = gpu_targets(home, max(batch_sizes))
    cases = [resnet_case(), *zoo_cases(home, model_size)]
    return {
        "device": device_name(),
        "onnxruntime": ort.__version__,
        "wheel": WHEEL,
        "available_providers": list(available_providers()),
        "io_binding": True,
        "batch_sizes": list(batch_sizes),
        "budget_s_per_point": budget_s,
        "models": measure(cases, targets, batch_sizes, budget_s),
    }
