"""One measuring process of ``bench.workercpu``: the worker's per-record path, in process, no broker.

Run by the bench's parent as ``python measure.py HOME SIZE RECORDS UNIT SEED`` with the tree to
measure first on ``sys.path`` (the parent runs this very file against the code before and after a
change, both at once, and asks each in turn for a measurement: ``main``). Imports only
``edgestream`` (and what it imports), so
the same file measures any tree whose functions it calls keep their signatures.

Envelopes are made the way the fleet makes them (``workers/local/fleet.py``: a held-out row of the
kind's data set, ``encode_tensor`` in the model's wire dtype, ``seal`` with the device's key, keyed by
its device id on the partition its id maps to); half frames, half embeddings, from 60 devices (the
pipeline bench's fleet at 1,000 req/s). Each round builds a fresh worker's state (admission, replay
memory, rate limits, audit chains, metrics) around the same loaded models and feeds every record
through what ``EdgeWorker`` calls per unit, in units of ``UNIT`` records. Process CPU time
(``time.process_time_ns``: the inference thread's included, other processes' load not) per stage.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgestream.pipeline.contract.codec import decode_tensor, encode_tensor
from edgestream.pipeline.contract.envelope import Kind, decode_envelope, new_request_id, open_envelope, seal
from edgestream.pipeline.contract.partitioner import partition_for
from edgestream.pipeline.contract.records import AuditRecord, ResultRecord
from edgestream.pipeline.contract.reply import ReplyHeader, ReplyKey, open_reply
from edgestream.pipeline.models import load_dataset, spec
from edgestream.pipeline.observability.metrics import WorkerMetrics
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.serving.auditchain import AuditChain, chain_id
from edgestream.pipeline.serving.batching import MicroBatcher, ServiceTimeEstimate
from edgestream.pipeline.serving.served import load_models
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.catalogue import ingest_topic, parse_topic
from edgestream.workers.edge.admission import Admission, Item
from edgestream.workers.edge.catalog import worker_catalog
from edgestream.workers.edge.commits import StagedUnit, merge
from edgestream.workers.edge.inference import UnitInference
from edgestream.workers.edge.outputs import UnitOutputs
from edgestream.workers.edge.sealing import ReplySealer
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.edge.status import WorkerStats, count_unit

REGION = "eu-west"
DEVICES = 60
MODEL_FOR_KIND: dict[Kind, str] = {"embedding": "embedding-scorer", "frame": "frame-classifier"}
NODE = "bench-worker"
UNITS_PER_COMMIT = 20
"""Units merged into one commit (``commits.merge``): the pipeline bench's worker at 1,000 req/s commits
every 100 ms, ~20 units of ~5 records."""
FRESH_S = 20.0
"""Records are sealed again (new request ids, capture times now) once they are this old: well inside
the worker's ``max_age_ms`` (60 s), so every round answers every record."""


def _records(keyring: KeyRing, n: int, seed: int) -> tuple[list[tuple[TopicPartition, Any]], dict[str, Any]]:
    """``n`` records as the fleet makes them (fleet order), and the fleet's own CPU per request."""
    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed + 1)
    key_id = keyring.current_key_id(REGION)
    devices = [f"dev-{REGION}-{i:05d}" for i in range(DEVICES)]
    keys = {d: keyring.device_key(REGION, d, key_id) for d in devices}
    data = {kind: load_dataset(kind) for kind in MODEL_FOR_KIND}
    dtypes = {kind: spec(name).input_dtype for kind, name in MODEL_FOR_KIND.items()}
    picks = []
    for i in range(n):
        kind: Kind = "frame" if pyrng.random() < 0.5 else "embedding"
        x = data[kind].X_test[int(rng.integers(len(data[kind].y_test)))]
        picks.append((devices[i % DEVICES], kind, x))
    gc.collect()
    started = time.process_time_ns()
    sealed = []
    for device, kind, x in picks:  # what the fleet's _send_one computes per request
        body = encode_tensor(x, dtypes[kind])
        sealed.append(
            seal(
                body,
                device_key=keys[device],
                device_id=device,
                key_id=key_id,
                kind=kind,
                model=MODEL_FOR_KIND[kind],
                capture_time_ms=int(time.time() * 1000),
                request_id=new_request_id(),
            )
        )
    seal_us = (time.process_time_ns() - started) / 1000 / n
    ciphers = {d: AESGCM(k) for d, k in keys.items()}  # what the fleet keeps per device
    gc.collect()
    started = time.process_time_ns()
    for device, kind, x in picks:
        seal(
            encode_tensor(x, dtypes[kind]),
            device_key=ciphers[device],
            device_id=device,
            key_id=key_id,
            kind=kind,
            model=MODEL_FOR_KIND[kind],
            capture_time_ms=int(time.time() * 1000),
            request_id=new_request_id(),
        )
    seal_cipher_us = (time.process_time_ns() - started) / 1000 / n
    offsets: dict[TopicPartition, int] = defaultdict(int)
    records = []
    now_ms = int(time.time() * 1000)
    for (device, kind, _), value in zip(picks, sealed, strict=True):
        topic = ingest_topic(REGION, kind)
        key = device.encode()
        tp = TopicPartition(topic, partition_for(key, parse_topic(topic).spec.partitions))
        record = ConsumerRecord(
            topic, tp.partition, offsets[tp], now_ms, 0, key, value, None, len(key), len(value), ()
        )
        offsets[tp] += 1
        records.append((tp, record))
    return records, {
        "seal_us": seal_us,
        "seal_cipher_us": seal_cipher_us,
        "reply_keys": {d.encode(): ReplyKey(k) for d, k in keys.items()},
    }


class _Clock:
    def __init__(self) -> None:
        self.stages: dict[str, int] = defaultdict(int)
        self._t = 0

    def start(self) -> None:
        self._t = time.process_time_ns()

    def lap(self, stage: str) -> None:
        now = time.process_time_ns()
        self.stages[stage] += now - self._t
        self._t = now


async def _round(
    settings: WorkerSettings,
    keyring: KeyRing,
    models: dict[str, Any],
    records: list[tuple[TopicPartition, Any]],
    unit_size: int,
) -> tuple[dict[str, int], list[tuple[bytes, bytes]], list[Item]]:
    """Every record through a fresh worker's per-unit path; CPU ns per stage, the replies, the items."""
    metrics = WorkerMetrics(region=REGION, node=NODE)
    stats = WorkerStats()
    catalog = worker_catalog(settings, models, keyring)
    # The consumer's cluster metadata (``partitions_for_topic``), as the worker passes it.
    counts = {tp.topic: parse_topic(tp.topic).spec.partitions for tp, _ in records}
    admission = Admission(settings, catalog, lambda topic: set(range(counts[topic])))
    chains = AuditChain()
    for tp in {tp for tp, _ in records}:
        chains.start(chain_id(tp.topic, tp.partition), None, offset=0)
    inference = UnitInference(
        stats, metrics, sample_fraction=settings.sample_fraction, inline_max_ms=settings.inline_inference_ms
    )
    outputs = UnitOutputs(REGION, NODE, chains, cloud=settings.cloud)
    estimate = ServiceTimeEstimate()
    batcher: MicroBatcher[Item] = MicroBatcher(settings.max_batch, settings.max_wait_ms, estimate)
    clock = _Clock()
    replies: list[tuple[bytes, bytes]] = []
    every: list[Item] = []
    to_commit: list[StagedUnit] = []
    serving = {tp: 1 for tp, _ in records}
    for begin in range(0, len(records), unit_size):
        chunk = records[begin : begin + unit_size]
        clock.start()
        now_s = time.monotonic()
        now_ms = time.time() * 1000.0
        admitted = []
        for tp, record in chunk:
            admitted.append(admission.admit(tp, 1, record, keyring, now_s, now_ms))
        metrics.consumed(len(chunk))
        clock.lap("admit")
        for item, deadline_s in admitted:
            batcher.add(item, now_s=now_s, deadline_s=deadline_s)
        units = batcher.drain()
        clock.lap("batch")
        for unit in units:
            items = unit.items
            started_s = time.monotonic()
            admission.check(items)
            clock.lap("check")
            await inference.infer(items)
            clock.lap("infer")
            work = outputs.build(items, started_s, keyring)
            clock.lap("outputs")
            replied_ms = time.time() * 1000.0
            staged = StagedUnit(items, work, unit.reason, started_s=started_s, replied_ms=replied_ms)
            for tp in work:
                admission.replays.commit(tp)
                chains.commit(chain_id(tp.topic, tp.partition))
            count_unit(stats, metrics, items, {}, staged)
            clock.lap("account")
            replies.extend((r.key or b"", r.value) for part in work.values() for r in part.replies)
            every.extend(items)
            to_commit.append(staged)
            if len(to_commit) >= UNITS_PER_COMMIT or begin + unit_size >= len(records):
                merge(to_commit, serving)
                to_commit = []
                clock.lap("commit")
    inference.shutdown()
    return dict(clock.stages), replies, every


def _components(items: list[Item], keyring: KeyRing, repeat: int = 5) -> dict[str, float]:
    """CPU µs per answered item of the pieces inside ``admit`` and ``outputs``, each timed alone."""
    answered = [it for it in items if it.error is None and it.answer is not None and it.envelope is not None]
    raws = [it.raw for it in answered]
    envs = [it.envelope for it in answered]
    dkeys = [it.device_key for it in answered]
    out: dict[str, list[float]] = defaultdict(list)
    sealer = ReplySealer(REGION)
    for _ in range(repeat):
        t = time.process_time_ns()
        for raw in raws:
            decode_envelope(raw, max_envelope_bytes=1 << 20)
        out["admit.decode_envelope"].append(time.process_time_ns() - t)
        t = time.process_time_ns()
        bodies = [open_envelope(env, k, max_body_bytes=1 << 22) for env, k in zip(envs, dkeys, strict=True)]  # type: ignore[arg-type]
        out["admit.open_envelope"].append(time.process_time_ns() - t)
        t = time.process_time_ns()
        for body in bodies:
            decode_tensor(body)
        out["admit.decode_tensor"].append(time.process_time_ns() - t)
        results = []
        t = time.process_time_ns()
        for it in answered:
            env, ans = it.envelope, it.answer
            assert env is not None
            assert ans is not None
            assert it.model is not None
            results.append(
                ResultRecord(
                    env.request_id, env.device_id, it.model.key[0], it.model.key[1], ans.label, ans.scores,
                    1.0, ans.infer_ms, 2.0, ans.batch_size, NODE, REGION, 1, None,
                ).to_bytes()
            )  # fmt: skip
        out["outputs.result_record"].append(time.process_time_ns() - t)
        t = time.process_time_ns()
        for it, value in zip(answered, results, strict=True):
            assert it.envelope is not None
            assert it.model is not None
            assert it.device_key is not None
            header = ReplyHeader(it.envelope.request_id, it.envelope.key_id, *it.model.key)
            sealer.seal(value, it.device_key, header)
        out["outputs.reply_seal"].append(time.process_time_ns() - t)
        chains = AuditChain()
        t = time.process_time_ns()
        for it in answered:
            env = it.envelope
            assert env is not None
            assert it.model is not None
            cid = chain_id(it.tp.topic, it.tp.partition)
            if cid not in chains:
                chains.start(cid, None, offset=0)
            name, version = it.model.key
            audit = AuditRecord(1, env.request_id, NODE, REGION, env.device_id, name, version, "ok", None, 2)
            if hasattr(chains, "link_encoded"):  # encoded once, as this tree's outputs do
                chains.link_encoded(cid, audit)
            else:  # before: encoded to check it, to digest it, to send it
                audit.to_bytes()
                chains.link(cid, audit).to_bytes()
        out["outputs.audit_record"].append(time.process_time_ns() - t)
    n = max(1, len(answered))
    return {k: min(v) / 1000 / n for k, v in out.items()}


def _open_replies(replies: list[tuple[bytes, bytes]], reply_keys: dict[bytes, ReplyKey]) -> float:
    """The fleet's CPU µs per reply opened (``Fleet._on_records``: its device's reply key, its region)."""
    started = time.process_time_ns()
    for owner, sealed in replies:
        open_reply(sealed, reply_keys[owner], REGION)
    return (time.process_time_ns() - started) / 1000 / max(1, len(replies))


def main(argv: list[str]) -> None:
    """Set up, say ``ready``, then answer the parent's commands on stdin, one JSON line each:
    ``round`` (every record through a fresh worker's state: CPU µs per record per stage),
    ``components``, ``fleet`` (each piece timed alone), ``summary`` (what the last round decided)."""
    home, size, n, unit_size, seed = Path(argv[0]), argv[1], *map(int, argv[2:5])
    settings = WorkerSettings(
        region=REGION,
        node_id=NODE,
        home=home,
        kafka=KafkaSettings(bootstrap_servers="localhost:9"),
        model_size=size,  # type: ignore[arg-type]
        intra_op_threads=1,
    )
    keyring = KeyRing({REGION: {1: bytes(range(32))}})
    models = load_models(settings)
    records, fleet = _records(keyring, n, seed)
    sealed_s = time.monotonic()
    _, replies, items = asyncio.run(_round(settings, keyring, models, records, unit_size))  # warm up
    _reply({"ready": True})
    for line in sys.stdin:
        command = line.strip()
        gc.collect()
        if command == "round":
            if time.monotonic() - sealed_s > FRESH_S:  # sealed again before any could be stale
                records, fleet = _records(keyring, n, seed)
                sealed_s = time.monotonic()
            stages, replies, items = asyncio.run(_round(settings, keyring, models, records, unit_size))
            stages_us = {stage: ns / 1000 / n for stage, ns in stages.items()}
            if any(it.error is not None for it in items):
                reasons = sorted({it.error.reason for it in items if it.error is not None})
                raise SystemExit(f"a round dead-lettered records ({reasons}): it measured another path")
            _reply({**stages_us, "total": sum(stages_us.values())})
        elif command == "components":
            _reply(_components(items, keyring, repeat=1))
        elif command == "fleet":
            sealed = _records(keyring, n, seed)[1]
            opened_us = _open_replies(replies, fleet["reply_keys"])
            _reply(
                {
                    "seal": sealed["seal_us"],
                    "seal_kept_cipher": sealed["seal_cipher_us"],
                    "open_reply": opened_us,
                }
            )
        elif command == "summary":
            reasons = sorted({it.error.reason for it in items if it.error is not None})
            _reply({"records": n, "answered": sum(1 for it in items if it.error is None), "reasons": reasons})
        else:
            raise SystemExit(f"unknown command {command!r}")


def _reply(document: dict[str, Any]) -> None:
    print(json.dumps(document), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
