"""The edge worker's per-unit path on a GPU beside bare onnxruntime, model by model, at equal batch sizes.

Bare onnxruntime (``measure.time_point``) times only ``run`` with IO binding on one prepared batch. The
worker's path here is what ``EdgeWorker`` does per unit once records are fetched: admission (decode the
envelope, open it with the device's key, decode the tensor, check it against the model), the
micro-batcher, the replay and rate checks, inference on the same providers, and the unit's outputs
(result records, a reply sealed to each device, audit records chained, cloud samples), then the unit's
accounting. Units are run one after another with ``max_batch`` equal to the batch size, records of
one model only, so a unit is exactly one onnxruntime call of that size. Not included: aiokafka's fetch
and produce, TLS and the transaction's commit (the pipeline bench measures those with a real broker);
nothing overlaps here, so the figure is a floor for a worker that fetches the next unit while this
one infers.

The ResNet-50-shaped graph is served as a user's model would be: a :class:`SignedArtifact` with a
declared classification signature (uint8 frames of 224x224x3 on the wire, 150,528 bytes each before
compression), the zoo's models as the worker serves them by default.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from bench.gpu.measure import MIN_RUNS, WARM_UP_RUNS, time_point
from edgestream.pipeline.contract.codec import encode_tensor
from edgestream.pipeline.contract.envelope import Kind, new_request_id, seal
from edgestream.pipeline.contract.partitioner import partition_for
from edgestream.pipeline.files import sha256_hex
from edgestream.pipeline.models import load_dataset, spec
from edgestream.pipeline.models.signature import SignedArtifact, parse_signature
from edgestream.pipeline.models.vision import CLASSES, IMAGE_SHAPE, resnet_graph
from edgestream.pipeline.models.zoo import GRAPH_INPUT, GRAPH_LABEL, GRAPH_PROBS
from edgestream.pipeline.observability.metrics import WorkerMetrics
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.serving.auditchain import AuditChain, chain_id
from edgestream.pipeline.serving.batching import MicroBatcher, ServiceTimeEstimate
from edgestream.pipeline.serving.inference import open_session
from edgestream.pipeline.serving.providers import Execution, output_device
from edgestream.pipeline.serving.served import ServedModel, load_models, open_model
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.catalogue import ingest_topic, parse_topic
from edgestream.workers.edge.admission import Admission, Item
from edgestream.workers.edge.catalog import worker_catalog
from edgestream.workers.edge.commits import StagedUnit
from edgestream.workers.edge.inference import UnitInference
from edgestream.workers.edge.outputs import UnitOutputs
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.edge.status import WorkerStats, count_unit

REGION = "eu-west"
NODE = "gpu-bench-worker"
DEVICES = 64
"""Devices the records come from (each its own key; the rate limit is not what is measured)."""
RESNET_MODEL = "resnet50-user"
"""The name the ResNet-50-shaped graph is served under, as a user's model."""
ZOO_KINDS: dict[str, Kind] = {"frame-classifier": "frame", "embedding-scorer": "embedding"}


@dataclass(frozen=True, slots=True)
class Served:
    """One model to compare: how the worker serves it, and what its devices send."""

    name: str
    """The model name envelopes carry."""
    kind: Kind
    """Its ingest kind."""
    wire_dtype: str
    """The dtype a device encodes its tensor in."""
    items: npt.NDArray[np.generic]
    """Inputs to cycle through (one item per row)."""
    model_bytes: bytes
    """The ONNX graph, for the bare session."""


@dataclass(frozen=True, slots=True)
class PathPoint:
    """The worker's path at one batch size."""

    batch: int
    units: int
    items_per_s: float
    """Items over the units' total wall time."""
    p50_ms: float
    """Median wall time of one unit, admission to accounting."""
    p99_ms: float
    infer_share: float
    """Fraction of the wall time spent in inference (the rest is the worker's own per-record work)."""


def resnet_signed(home: Path, blocks: Sequence[int] | None = None, base_width: int = 64) -> SignedArtifact:
    """The ResNet-50-shaped graph (or a cheaper one) written under ``home`` with its signature."""
    graph = (
        resnet_graph(base_width=base_width) if blocks is None else resnet_graph(blocks, base_width=base_width)
    )
    onnx_bytes = graph.SerializeToString()
    path = home / "gpu-bench" / f"{sha256_hex(onnx_bytes)}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(onnx_bytes)
    signature = parse_signature(
        {
            "ingest": "frame",
            "input": {"name": GRAPH_INPUT, "dtype": "uint8", "shape": [None, *IMAGE_SHAPE]},
            "outputs": {
                "kind": "classification",
                "probabilities": GRAPH_PROBS,
                "label": GRAPH_LABEL,
                "classes": [f"class-{i}" for i in range(CLASSES)],
            },
        }
    )
    return SignedArtifact(RESNET_MODEL, 1, path, sha256_hex(onnx_bytes), signature)


def worker_settings(home: Path, execution: Execution, batch: int, models: tuple[str, ...]) -> WorkerSettings:
    """A worker's settings serving ``models`` on ``execution``'s providers, units of ``batch``."""
    return WorkerSettings(
        region=REGION,
        node_id=NODE,
        home=home,
        kafka=KafkaSettings(bootstrap_servers="localhost:9"),
        models=models,
        providers=execution.providers,
        tensorrt=execution.tensorrt,
        io_binding=execution.io_binding,
        max_batch=batch,
        max_wait_ms=0.0,
        intra_op_threads=1,
        device_rate_per_s=1e9,
        device_burst=1_000_000,
    )


def sealed_records(
    served: Served, keyring: KeyRing, n: int
) -> list[tuple[TopicPartition, ConsumerRecord[bytes, bytes]]]:
    """``n`` envelopes for ``served`` as devices seal them, as the worker's consumer hands them over."""
    key_id = keyring.current_key_id(REGION)
    devices = [f"dev-{REGION}-{i:05d}" for i in range(DEVICES)]
    keys = {d: keyring.device_key(REGION, d, key_id) for d in devices}
    topic = ingest_topic(REGION, served.kind)
    partitions = parse_topic(topic).spec.partitions
    offsets: dict[int, int] = defaultdict(int)
    now_ms = int(time.time() * 1000)
    records = []
    for i in range(n):
        device = devices[i % DEVICES]
        value = seal(
            encode_tensor(served.items[i % len(served.items)], served.wire_dtype),  # type: ignore[arg-type]
            device_key=keys[device],
            device_id=device,
            key_id=key_id,
            kind=served.kind,
            model=served.name,
            capture_time_ms=now_ms,
            request_id=new_request_id(),
        )
        key = device.encode()
        partition = partition_for(key, partitions)
        record = ConsumerRecord(
            topic, partition, offsets[partition], now_ms, 0, key, value, None, len(key), len(value), ()
        )
        offsets[partition] += 1
        records.append((TopicPartition(topic, partition), record))
    return records


async def run_units(
    settings: WorkerSettings,
    keyring: KeyRing,
    models: dict[str, ServedModel],
    records: Sequence[tuple[TopicPartition, ConsumerRecord[bytes, bytes]]],
) -> tuple[list[float], list[float], list[Item]]:
    """Every record through a fresh worker state, one unit of ``settings.max_batch`` at a time: the
    wall seconds of each unit, the seconds of each unit's inference, and every item (answered or not)."""
    metrics = WorkerMetrics(region=REGION, node=NODE)
    stats = WorkerStats()
    catalog = worker_catalog(settings, models, keyring)
    counts = {tp.topic: parse_topic(tp.topic).spec.partitions for tp, _ in records}
    admission = Admission(settings, catalog, lambda topic: set(range(counts[topic])))
    chains = AuditChain()
    for tp in {tp for tp, _ in records}:
        chains.start(chain_id(tp.topic, tp.partition), None, offset=0)
    inference = UnitInference(
        stats, metrics, sample_fraction=settings.sample_fraction, inline_max_ms=settings.inline_inference_ms
    )
    outputs = UnitOutputs(REGION, NODE, chains, cloud=settings.cloud)
    batcher: MicroBatcher[Item] = MicroBatcher(
        settings.max_batch, settings.max_wait_ms, ServiceTimeEstimate()
    )
    walls: list[float] = []
    infers: list[float] = []
    every: list[Item] = []
    size = settings.max_batch
    try:
        for begin in range(0, len(records) - size + 1, size):
            started = time.perf_counter()
            now_s, now_ms = time.monotonic(), time.time() * 1000.0
            for tp, record in records[begin : begin + size]:
                item, deadline_s = admission.admit(tp, 1, record, keyring, now_s, now_ms)
                batcher.add(item, now_s=now_s, deadline_s=deadline_s)
            metrics.consumed(size)
            for unit in batcher.drain():
                items = unit.items
                started_s = time.monotonic()
                admission.check(items)
                before_infer = time.perf_counter()
                await inference.infer(items)
                infers.append(time.perf_counter() - before_infer)
                work = outputs.build(items, started_s, keyring)
                staged = StagedUnit(
                    items, work, unit.reason, started_s=started_s, replied_ms=time.time() * 1e3
                )
                for tp in work:
                    admission.replays.commit(tp)
                    chains.commit(chain_id(tp.topic, tp.partition))
                count_unit(stats, metrics, items, {}, staged)
                every.extend(items)
            walls.append(time.perf_counter() - started)
    finally:
        inference.shutdown()
    return walls, infers, every


def path_point(
    settings: WorkerSettings,
    keyring: KeyRing,
    models: dict[str, ServedModel],
    served: Served,
    budget_s: float,
) -> PathPoint:
    """Warm up, then units of ``settings.max_batch`` for about ``budget_s`` (at least ``MIN_RUNS``
    units, each fresh worker state's first unit not counted); every record must be answered, or the
    figure would be of another path."""
    size = settings.max_batch
    warm = sealed_records(served, keyring, size * WARM_UP_RUNS)
    asyncio.run(run_units(settings, keyring, models, warm))
    walls: list[float] = []
    infer_s = 0.0
    end = time.monotonic() + budget_s
    while len(walls) < MIN_RUNS or time.monotonic() < end:
        records = sealed_records(served, keyring, size * MIN_RUNS)
        gc.collect()
        batch_walls, batch_infer, items = asyncio.run(run_units(settings, keyring, models, records))
        refused = sorted({it.error.reason for it in items if it.error is not None})
        if refused or len(items) != len(records):
            raise RuntimeError(f"the worker's path did not answer every record ({refused}): not comparable")
        walls += batch_walls[1:]  # a fresh state's first unit starts its inference thread
        infer_s += sum(batch_infer[1:])
    ms = sorted(w * 1000.0 for w in walls)
    total_s = sum(walls)
    return PathPoint(
        batch=size,
        units=len(ms),
        items_per_s=round(size * len(ms) / total_s, 1),
        p50_ms=round(statistics.median(ms), 4),
        p99_ms=round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 4),
        infer_share=round(infer_s / total_s, 3),
    )


def served_cases(home: Path, model_size: str, resnet: SignedArtifact) -> list[Served]:
    """The ResNet-50-shaped user's model and the zoo's models, with inputs their devices send."""
    images = np.random.default_rng(0).integers(0, 256, (64, *IMAGE_SHAPE), dtype=np.uint8)
    cases = [Served(RESNET_MODEL, "frame", "uint8", images, resnet.path.read_bytes())]
    for name, kind in ZOO_KINDS.items():
        model_spec = spec(name)
        onnx_path = _zoo_path(home, name, model_size)
        cases.append(
            Served(name, kind, model_spec.input_dtype, load_dataset(kind).X_test, onnx_path.read_bytes())
        )
    return cases


def _zoo_path(home: Path, name: str, model_size: str) -> Path:
    from edgestream.pipeline.models import ModelStore

    return ModelStore(home / "models").get(name, model_size).path


def compare(
    home: Path,
    execution: Execution,
    *,
    model_size: str = "medium",
    batch_sizes: Sequence[int],
    budget_s: float,
    resnet: SignedArtifact | None = None,
) -> dict[str, Any]:
    """Per model and batch size: bare onnxruntime and the worker's path on ``execution``, and their
    ratio (path items/s over bare items/s), measured one after the other in this process."""
    resnet = resnet if resnet is not None else resnet_signed(home)
    keyring = KeyRing({REGION: {1: bytes(range(32))}})
    out: dict[str, Any] = {}
    for served in served_cases(home, model_size, resnet):
        rows = []
        providers: list[str] = []
        for batch in batch_sizes:
            settings = worker_settings(home, execution, batch, tuple(ZOO_KINDS))
            models = load_models(settings)
            if served.name == RESNET_MODEL:
                models = {RESNET_MODEL: open_model(resnet, settings)}
            item_shape = tuple(int(d) for d in served.items.shape[1:])
            session = open_session(served.model_bytes, execution, what=served.name, item_shape=item_shape)
            in_use = tuple(session.get_providers())
            providers = list(in_use)
            device = output_device(in_use)
            device_id = execution.cuda.device_id if device == "cuda" else 0
            batch_items = np.ascontiguousarray(np.resize(served.items, (batch, *served.items.shape[1:])))
            if served.name != RESNET_MODEL:  # the zoo graphs take the wire dtype as it is
                batch_items = batch_items.astype(spec(served.name).input_dtype)
            bare = time_point(session, device, device_id, batch_items, budget_s)
            path = path_point(settings, keyring, models, served, budget_s)
            rows.append(
                {
                    "batch": batch,
                    "bare": asdict(bare),
                    "pipeline": asdict(path),
                    "ratio": round(path.items_per_s / bare.items_per_s, 3),
                }
            )
            del session, models
        out[served.name] = {"kind": served.kind, "providers": providers, "points": rows}
    return out
