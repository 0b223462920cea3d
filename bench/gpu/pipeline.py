"""The edge worker's per-unit path on a GPU beside bare onnxruntime, model by model, at equal batch sizes.

Bare onnxruntime (``measure.time_point``) times only ``run`` with IO binding on one prepared batch. The
worker's path here is what ``EdgeWorker`` does per unit once records are fetched: admission (decode the
envelope, open it with the device's key, decode the tensor, check it against the model), the
micro-batcher, the replay and rate checks, inference on the same providers, and the unit's outputs
(result records, a reply sealed to each device, audit records chained, cloud samples), then the unit's
accounting. Units are run one after another with ``max_batch`` equal to the batch size, records of
one model only, so a unit is exactly one onnxruntime call of that size, and overlapped as the worker
overlaps them: while a unit's call runs in the inference thread, the next unit's records are admitted
on the event loop (the worker's fetch loop does this); its outputs follow the call. Not included:
aiokafka's fetch and produce, TLS and the transaction's commit (the pipeline bench measures those
with a real broker).

The ResNet-50-shaped graph is served as a user's model would be: a :class:`SignedArtifact` with a
declared classification signature (uint8 frames of 224x224x3 on the wire, 150,528 bytes each before
compression), the zoo's models as the worker serves them by default.
"""

from __future__ import annotations

import asyncio
import gc
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

from bench.gpu.measure import MIN_RUNS, WARM_UP_RUNS, p50, p99, time_point
from edgestream.pipeline.contract.codec import encode_tensor
from edgestream.pipeline.contract.envelope import Kind, new_request_id, seal
from edgestream.pipeline.contract.partitioner import partition_for
from edgestream.pipeline.files import sha256_hex
from edgestream.pipeline.models import load_dataset, spec
from edgestream.pipeline.models.signature import ModelSignature, SignedArtifact, parse_signature
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
    """Median wall time of one unit, the start of its admission to the end of its accounting."""
    p99_ms: float
    infer_share: float
    """Fraction of the wall time the event loop awaited inference (the next unit's admission runs
    meanwhile); the rest is the worker's own work on the loop."""


def resnet_signature() -> ModelSignature:
    """The ResNet-shaped graph's declared signature: uint8 frames in, 1,000 class probabilities out."""
    return parse_signature(
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


def resnet_signed(home: Path, blocks: Sequence[int] | None = None, base_width: int = 64) -> SignedArtifact:
    """The ResNet-50-shaped graph (or a cheaper one) written under ``home`` with its signature."""
    graph = (
        resnet_graph(base_width=base_width) if blocks is None else resnet_graph(blocks, base_width=base_width)
    )
    onnx_bytes = graph.SerializeToString()
    sha256 = sha256_hex(onnx_bytes)
    path = home / "gpu-bench" / f"{sha256}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(onnx_bytes)
    return SignedArtifact(RESNET_MODEL, 1, path, sha256, resnet_signature())


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


@dataclass(frozen=True, slots=True, repr=False)
class Run:
    """One fresh worker state's units, its first (warm-up) unit left out. No dataclass repr: Python
    3.11's ``asyncio.run`` formats its main task (this result included) when it restores the SIGINT
    handler, and the repr of every item cost seconds."""

    seconds: float
    """Wall time from the second unit's admission to the last unit's accounting."""
    units: int
    """Units timed."""
    latencies: list[float]
    """Per unit, seconds from the start of its admission to the end of its accounting."""
    infer_s: float
    """Seconds the timed units spent inside inference (the call, its stack and its answers)."""
    items: list[Item]
    """Every item of every unit, answered or not."""


async def run_units(
    settings: WorkerSettings,
    keyring: KeyRing,
    models: dict[str, ServedModel],
    records: Sequence[tuple[TopicPartition, ConsumerRecord[bytes, bytes]]],
) -> Run:
    """Every record through a fresh worker state in units of ``settings.max_batch``, overlapped as
    ``EdgeWorker`` overlaps them: the next unit's records are admitted (its fetch loop) while this
    unit's onnxruntime call runs in the inference thread; the outputs follow the call."""
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
    size = settings.max_batch
    chunks = [records[i : i + size] for i in range(0, len(records) - size + 1, size)]

    def admit(chunk: Sequence[tuple[TopicPartition, ConsumerRecord[bytes, bytes]]]) -> float:
        admitted_at = time.perf_counter()
        now_s, now_ms = time.monotonic(), time.time() * 1000.0
        for tp, record in chunk:
            item, deadline_s = admission.admit(tp, 1, record, keyring, now_s, now_ms)
            batcher.add(item, now_s=now_s, deadline_s=deadline_s)
        metrics.consumed(len(chunk))
        return admitted_at

    latencies: list[float] = []
    infer_s = 0.0
    every: list[Item] = []
    timed_from = 0.0
    try:
        admitted_at = admit(chunks[0])
        for k in range(len(chunks)):
            if k == 1:
                timed_from = admitted_at
            (unit,) = batcher.drain()
            items = unit.items
            started_s = time.monotonic()
            admission.check(items)
            before_infer = time.perf_counter()
            call = asyncio.ensure_future(inference.infer(items))
            await asyncio.sleep(0)  # the call is in the inference thread (or done, when inline)
            next_admitted_at = admit(chunks[k + 1]) if k + 1 < len(chunks) else 0.0
            await call
            if k > 0:
                infer_s += time.perf_counter() - before_infer
            work = outputs.build(items, started_s, keyring)
            staged = StagedUnit(items, work, unit.reason, started_s=started_s, replied_ms=time.time() * 1e3)
            for tp in work:
                admission.replays.commit(tp)
                chains.commit(chain_id(tp.topic, tp.partition))
            count_unit(stats, metrics, items, {}, staged)
            every.extend(items)
            if k > 0:
                latencies.append(time.perf_counter() - admitted_at)
            admitted_at = next_admitted_at
    finally:
        inference.shutdown()
    return Run(time.perf_counter() - timed_from, len(latencies), latencies, infer_s, every)


def path_point(
    settings: WorkerSettings,
    keyring: KeyRing,
    models: dict[str, ServedModel],
    served: Served,
    budget_s: float,
) -> PathPoint:
    """Warm up, then fresh worker states of ``MIN_RUNS + 1`` units each for about ``budget_s`` (at least
    ``MIN_RUNS`` units timed); every record must be answered, or the figure would be of another path."""
    size = settings.max_batch
    warm = sealed_records(served, keyring, size * WARM_UP_RUNS)
    asyncio.run(run_units(settings, keyring, models, warm))
    latencies: list[float] = []
    seconds = infer_s = 0.0
    end = time.monotonic() + budget_s
    while len(latencies) < MIN_RUNS or time.monotonic() < end:
        records = sealed_records(served, keyring, size * (MIN_RUNS + 1))
        gc.collect()
        run = asyncio.run(run_units(settings, keyring, models, records))
        refused = sorted({it.error.reason for it in run.items if it.error is not None})
        if refused or len(run.items) != len(records):
            raise RuntimeError(f"the worker's path did not answer every record ({refused}): not comparable")
        latencies += run.latencies
        seconds += run.seconds
        infer_s += run.infer_s
    ms = sorted(w * 1000.0 for w in latencies)
    return PathPoint(
        batch=size,
        units=len(ms),
        items_per_s=round(size * len(ms) / seconds, 1),
        p50_ms=p50(ms),
        p99_ms=p99(ms),
        infer_share=round(infer_s / seconds, 3),
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
    processes: Sequence[int] = (),
) -> dict[str, Any]:
    """Per model and batch size: bare onnxruntime and the worker's path on ``execution``, and their
    ratio (path items/s over bare items/s), measured one after the other in this process; for the
    ResNet-shaped model also ``processes`` workers sharing the device at once (``shared``)."""
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
            row: dict[str, Any] = {
                "batch": batch,
                "bare": asdict(bare),
                "pipeline": asdict(path),
                "ratio": round(path.items_per_s / bare.items_per_s, 3),
            }
            del session, models
            if served.name == RESNET_MODEL and processes:
                units = max(MIN_RUNS, int(SHARED_RUN_S * path.items_per_s / batch))
                shared = [
                    shared_gpu(home, execution, processes=n, batch=batch, units=units, resnet=resnet)
                    for n in processes
                ]
                row["shared"] = [
                    {**asdict(point), "ratio": round(point.items_per_s / bare.items_per_s, 3)}
                    for point in shared
                ]
            rows.append(row)
        out[served.name] = {"kind": served.kind, "providers": providers, "points": rows}
    return out


SHARED_RUN_S = 2.0
"""About how long each process of a shared-GPU measurement runs its units (sealed beforehand)."""


@dataclass(frozen=True, slots=True)
class SharedPoint:
    """Several worker processes, each its own onnxruntime session on the one GPU, at one batch size."""

    processes: int
    batch: int
    items: int
    """Items answered by all processes together."""
    items_per_s: float
    """All the items over the span from the first process's start to the last one's end."""
    p50_ms: float
    """Median unit latency over every process's units."""
    p99_ms: float


def _shared_child(
    barrier: Any,
    results: Any,
    home: Path,
    execution: Execution,
    batch: int,
    units: int,
    resnet_path: Path,
) -> None:
    """One worker process of :func:`shared_gpu`: load, seal every record, wait for the others, run."""
    resnet = SignedArtifact(RESNET_MODEL, 1, resnet_path, resnet_path.stem, resnet_signature())
    settings = worker_settings(home, execution, batch, ())
    models = {RESNET_MODEL: open_model(resnet, settings)}
    keyring = KeyRing({REGION: {1: bytes(range(32))}})
    images = np.random.default_rng(0).integers(0, 256, (64, *IMAGE_SHAPE), dtype=np.uint8)
    served = Served(RESNET_MODEL, "frame", "uint8", images, b"")
    asyncio.run(run_units(settings, keyring, models, sealed_records(served, keyring, batch * WARM_UP_RUNS)))
    records = sealed_records(served, keyring, batch * (units + 1))
    gc.collect()
    barrier.wait()
    started = time.time()
    run = asyncio.run(run_units(settings, keyring, models, records))
    ended = time.time()
    answered = sum(1 for it in run.items if it.error is None)
    results.put((started, ended, answered, run.latencies))


def shared_gpu(
    home: Path,
    execution: Execution,
    *,
    processes: int,
    batch: int,
    units: int,
    resnet: SignedArtifact,
) -> SharedPoint:
    """``processes`` worker paths at once, each in its own process with its own session on the GPU (as
    several workers of a region's consumer group on one host): their items/s together."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    children = [
        context.Process(
            target=_shared_child, args=(barrier, results, home, execution, batch, units, resnet.path)
        )
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=600) for _ in children]
    for child in children:
        child.join(timeout=60)
    if any(child.exitcode != 0 for child in children):
        raise RuntimeError(f"a shared-GPU process failed: exit codes {[c.exitcode for c in children]}")
    first = min(o[0] for o in outcomes)
    last = max(o[1] for o in outcomes)
    items = sum(o[2] for o in outcomes)
    if items != processes * batch * (units + 1):
        raise RuntimeError("a shared-GPU process did not answer every record: not comparable")
    ms = sorted(latency * 1000.0 for o in outcomes for latency in o[3])
    return SharedPoint(
        processes=processes,
        batch=batch,
        items=items,
        items_per_s=round(items / (last - first), 1),
        p50_ms=p50(ms),
        p99_ms=p99(ms),
    )
