"""The edge worker against the real broker: every request answered once, bad records dead-lettered."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from prometheus_client.parser import text_string_to_metric_families

from bench.faults import wire
from edgestream.pipeline import kafka
from edgestream.pipeline.contract.cloud import PartialSummary, Sample, merge
from edgestream.pipeline.contract.codec import TensorBody, encode_tensor
from edgestream.pipeline.contract.deadletter import DeadLetter
from edgestream.pipeline.contract.envelope import decode_envelope, new_request_id, seal
from edgestream.pipeline.contract.limits import DEFAULT_MAX_ENVELOPE_BYTES, PRODUCER_MAX_REQUEST_BYTES
from edgestream.pipeline.contract.partitioner import partition_for
from edgestream.pipeline.contract.records import AuditRecord, ResultRecord
from edgestream.pipeline.contract.reply import ReplyAuthenticationFailed, open_reply
from edgestream.pipeline.models import ModelStore, load_dataset, spec
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.keyfile import retire, rotate
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.security.keysource import KeyFileWatcher
from edgestream.pipeline.serving.inference import InferenceSession
from edgestream.pipeline.serving.served import load_models
from edgestream.topics.admin import delete_topics, ensure_topics
from edgestream.topics.catalogue import (
    KINDS,
    SAMPLES_TOPIC,
    SUMMARIES_TOPIC,
    Kind,
    audit_topic,
    dlq_topic,
    edge_group,
    ingest_topic,
    parse_topic,
    region_topics,
    replies_topic,
    results_topic,
)
from edgestream.workers.edge.service import serve
from edgestream.workers.edge.worker import EdgeWorker
from edgestream.workers.ops.audit import verify_audit_log
from tests.pipeline.observability.served import http_get

from ..conftest import EdgeRegion, RunningWorker, eventually, read_topic

pytestmark = pytest.mark.broker

MODEL: dict[Kind, str] = {"embedding": "embedding-scorer", "frame": "frame-classifier"}


def _seal(region: EdgeRegion, device_id: str, kind: Kind, x: np.ndarray[Any, Any], **kw: Any) -> bytes:
    key_id = kw.pop("key_id", region.keyring.current_key_id(region.name))
    device_key = region.keyring.device_key(region.name, device_id, region.keyring.current_key_id(region.name))
    body = encode_tensor(x, kw.pop("dtype", spec(MODEL[kind]).input_dtype))
    return seal(
        body,
        device_key=device_key,
        device_id=device_id,
        key_id=key_id,
        kind=kind,
        model=kw.pop("model", MODEL[kind]),
        capture_time_ms=kw.pop("capture_time_ms", int(time.time() * 1000)),
        **kw,
    )


def _open_reply(region: EdgeRegion, sealed: bytes, device_id: str) -> ResultRecord:
    """A reply opened as ``device_id`` opens it: with its own device key (the region's current id)."""
    keyring = region.keyring
    key = keyring.device_key(region.name, device_id, keyring.current_key_id(region.name))
    return open_reply(sealed, key, region.name)


async def test_every_request_is_answered_once_with_the_models_own_output(
    edge_region: EdgeRegion, running_worker: RunningWorker, producer: AIOKafkaProducer
) -> None:
    worker = await running_worker(max_batch=16)
    sent: dict[bytes, tuple[Kind, np.ndarray[Any, Any]]] = {}
    for kind in KINDS:
        data = load_dataset(kind)
        for i in range(60):
            x = data.X_test[i]
            rid = new_request_id()
            device = f"dev-{i % 7}"
            envelope = _seal(edge_region, device, kind, x, request_id=rid)
            await producer.send(ingest_topic(edge_region.name, kind), envelope, key=device.encode())
            sent[rid] = (kind, x)
    await producer.flush()

    records = await read_topic(edge_region.bootstrap, results_topic(edge_region.name), expect=len(sent))
    results = [ResultRecord.from_bytes(r.value) for r in records]
    counts = Counter(r.request_id for r in results)
    assert set(counts) == set(sent), f"answered {len(counts)} of {len(sent)}; worker {worker.stats.as_dict()}"
    assert max(counts.values()) == 1, "nothing answered twice"

    # Each result equals the model run directly on the same input, one at a time.
    store = ModelStore(edge_region.home / "models")
    direct = {kind: InferenceSession(store.get(name, "medium")) for kind, name in MODEL.items()}
    for r in results:
        kind, x = sent[r.request_id]
        labels, probs = direct[kind].run(x[np.newaxis, ...])
        assert r.label == int(labels[0])
        np.testing.assert_allclose(r.scores, probs[0], rtol=1e-5, atol=1e-6)
        assert r.model == MODEL[kind]
        assert r.model_version == 1
        assert r.region == edge_region.name
        assert r.node == worker.node_id
        assert 1 <= r.batch_size <= 16
        assert r.total_ms >= r.infer_ms >= 0
    calls = sum(worker.stats.batch_sizes.values())
    assert calls < len(sent), "requests were micro-batched, not run one by one"
    assert worker.stats.results == len(sent)

    # The devices' fast replies carry the same records, each sent once when nothing failed, each
    # sealed to its own device: it opens under that device's key, and under no other device's.
    replies = await read_topic(edge_region.bootstrap, replies_topic(edge_region.name), expect=len(sent))
    opened = {}
    for reply in replies:
        record = _open_reply(edge_region, reply.value, reply.key.decode())
        assert record.device_id == reply.key.decode()
        other = "dev-0" if record.device_id != "dev-0" else "dev-1"
        with pytest.raises(ReplyAuthenticationFailed):
            _open_reply(edge_region, reply.value, other)
        opened[record.request_id] = record
    assert len(replies) == len(opened) == len(sent)
    assert opened == {r.request_id: r for r in results}
    assert {(r.key, r.partition) for r in replies} == {(r.key, r.partition) for r in records}

    audit = [
        AuditRecord.from_bytes(r.value)
        for r in await read_topic(edge_region.bootstrap, audit_topic(edge_region.name), expect=len(sent))
    ]
    assert Counter(a.request_id for a in audit) == counts
    assert {a.outcome for a in audit} == {"ok"}


async def test_bad_records_are_dead_lettered_with_their_reason_while_good_ones_flow(
    edge_region: EdgeRegion, running_worker: RunningWorker, producer: AIOKafkaProducer
) -> None:
    await running_worker(max_envelope_bytes=64 * 1024)
    region = edge_region.name
    x = load_dataset("embedding").X_test[0]
    device = "dev-poison"  # one key -> one partition: bad and good records share it
    good = _seal(edge_region, device, "embedding", x)
    ok_map = msgpack.unpackb(good, raw=False)
    wrong_version = msgpack.packb({**ok_map, "v": 2})
    tampered = bytearray(good)
    tampered[-1] ^= 0x80
    bad: dict[str, bytes] = {
        "undecodable": b"\x00garbage\xff" * 3,
        "bad_version": wrong_version,
        "bad_tag": bytes(tampered),
        "unknown_key": _seal(edge_region, device, "embedding", x, key_id=999),
        "unknown_model": _seal(edge_region, device, "embedding", x, model="no-such-model"),
        "bad_shape": _seal(edge_region, device, "embedding", np.concatenate([x, x])),
        "stale": _seal(
            edge_region, device, "embedding", x, capture_time_ms=int(time.time() * 1000) - 3_600_000
        ),
        "replayed": good,  # the same sealed bytes again, after the original below
        "oversized": _seal(
            edge_region, device, "frame", np.zeros((400, 400), dtype=np.uint8), compression="none"
        ),
    }
    topic = ingest_topic(region, "embedding")
    await producer.send(topic, good, key=device.encode())  # the original of the replay
    good_ids = [ok_map["rid"]]
    for reason, value in bad.items():
        rid = new_request_id()
        good_ids.append(rid)
        await producer.send(
            topic, _seal(edge_region, device, "embedding", x, request_id=rid), key=device.encode()
        )
        await producer.send(topic, value, key=device.encode(), headers=[("expect", reason.encode())])
    await producer.flush()

    dead = [
        DeadLetter.from_record(r)
        for r in await read_topic(edge_region.bootstrap, dlq_topic(region), expect=len(bad))
    ]
    by_reason = {d.reason: d for d in dead}
    assert set(by_reason) == set(bad)
    assert len(dead) == len(bad)
    for reason, letter in by_reason.items():
        assert letter.value == bad[reason], "the dead letter keeps the original bytes, still sealed"
        assert letter.origin_topic == topic
        assert letter.origin_offset >= 0
        assert letter.stage in {"decode", "decrypt", "decompress", "validate"}
        assert letter.exception_class
        assert letter.group_id == edge_group(region)
        assert letter.attempt == 1
    results = await read_topic(edge_region.bootstrap, results_topic(region), expect=len(good_ids))
    assert sorted(ResultRecord.from_bytes(r.value).request_id for r in results) == sorted(good_ids)


async def test_a_full_in_flight_queue_pauses_and_loses_nothing(
    edge_region: EdgeRegion, running_worker: RunningWorker, producer: AIOKafkaProducer
) -> None:
    worker = await running_worker(max_in_flight=8, fetch_max_records=8, max_batch=4)
    data = load_dataset("frame")
    ids = []
    for i in range(120):
        rid = new_request_id()
        ids.append(rid)
        envelope = _seal(edge_region, f"dev-{i % 3}", "frame", data.X_test[i], request_id=rid)
        await producer.send(ingest_topic(edge_region.name, "frame"), envelope, key=f"dev-{i % 3}".encode())
    await producer.flush()
    results = await read_topic(edge_region.bootstrap, results_topic(edge_region.name), expect=len(ids))
    assert Counter(ResultRecord.from_bytes(r.value).request_id for r in results) == Counter(ids)
    assert worker.stats.pauses >= 1


async def test_a_device_over_its_rate_is_dead_lettered_and_others_still_flow(
    edge_region: EdgeRegion, running_worker: RunningWorker, producer: AIOKafkaProducer
) -> None:
    await running_worker(device_rate_per_s=0.01, device_burst=5)
    x = load_dataset("embedding").X_test[0]
    topic = ingest_topic(edge_region.name, "embedding")
    for _ in range(12):
        await producer.send(topic, _seal(edge_region, "dev-noisy", "embedding", x), key=b"dev-noisy")
    for i in range(3):
        await producer.send(
            topic, _seal(edge_region, f"dev-calm-{i}", "embedding", x), key=f"dev-calm-{i}".encode()
        )
    await producer.flush()
    dead = [
        DeadLetter.from_record(r)
        for r in await read_topic(edge_region.bootstrap, dlq_topic(edge_region.name), expect=7)
    ]
    assert [d.reason for d in dead] == ["rate_limited"] * 7
    results = await read_topic(edge_region.bootstrap, results_topic(edge_region.name), expect=8)
    devices = Counter(ResultRecord.from_bytes(r.value).device_id for r in results)
    assert devices == {"dev-noisy": 5, "dev-calm-0": 1, "dev-calm-1": 1, "dev-calm-2": 1}


async def test_health_says_ready_once_serving_and_metrics_count_committed_results(
    edge_region: EdgeRegion, producer: AIOKafkaProducer
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = edge_region.settings(health_port=port)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    statuses: list[int] = []
    while True:
        try:
            status, _ = await http_get(port, "/readyz")
            statuses.append(status)
        except ConnectionRefusedError:
            status = 0
        if status == 200 or loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert status == 200, f"never ready: {statuses[-5:]}"
    assert (await http_get(port, "/livez"))[0] == 200

    x = load_dataset("embedding").X_test[0]
    topic = ingest_topic(edge_region.name, "embedding")
    for i in range(6):
        await producer.send(topic, _seal(edge_region, f"dev-{i}", "embedding", x), key=f"dev-{i}".encode())
    await producer.send(topic, b"garbage", key=b"dev-0")
    await producer.flush()
    await read_topic(edge_region.bootstrap, results_topic(edge_region.name), expect=6)
    await read_topic(edge_region.bootstrap, dlq_topic(edge_region.name), expect=1)

    _, text = await http_get(port, "/metrics")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    results = sum(v for (name, _), v in samples.items() if name == "edgestream_results_total")
    dead = sum(
        v
        for (name, labels), v in samples.items()
        if name == "edgestream_dead_letters_total" and ("reason", "undecodable") in labels
    )
    assert results == 6
    assert dead == 1
    stop.set()
    await task


async def test_audit_fails_closed_no_result_without_its_audit_record_and_nothing_lost(
    edge_region: EdgeRegion, running_worker: RunningWorker, producer: AIOKafkaProducer
) -> None:
    region = edge_region.name
    worker = await running_worker(
        kafka=edge_region.worker_kafka.model_copy(update={"request_timeout_ms": 3_000}),
        retry_backoff_max_ms=500,
    )
    await delete_topics(edge_region.bootstrap, [audit_topic(region)])
    x = load_dataset("embedding").X_test[0]
    topic = ingest_topic(region, "embedding")
    ids = []
    for i in range(10):
        rid = new_request_id()
        ids.append(rid)
        await producer.send(
            topic, _seal(edge_region, f"dev-{i}", "embedding", x, request_id=rid), key=f"dev-{i}".encode()
        )
    await producer.flush()
    retried = await eventually(lambda: worker.stats.rewinds > 0, timeout_s=60)
    assert retried, "the transaction without an audit topic was aborted and retried"
    early = await read_topic(edge_region.bootstrap, results_topic(region), expect=1, timeout_s=2.0)
    assert early == [], "no result is visible while its audit record cannot be written"
    # The devices were answered all the same: a fast reply does not wait for the transaction, and
    # each retry of the aborted unit answers again (the same request ids: a device keeps the first).
    replied = await read_topic(edge_region.bootstrap, replies_topic(region), expect=len(ids), timeout_s=30)
    assert {_open_reply(edge_region, r.value, r.key.decode()).request_id for r in replied} == set(ids)

    await ensure_topics(edge_region.bootstrap, region_topics(region))
    results = await read_topic(edge_region.bootstrap, results_topic(region), expect=len(ids), timeout_s=60.0)
    dead = await read_topic(edge_region.bootstrap, dlq_topic(region), expect=0, timeout_s=1.0)
    answered = Counter(ResultRecord.from_bytes(r.value).request_id for r in results)
    reasons = [DeadLetter.from_record(d).reason for d in dead]
    assert answered == Counter(ids), (
        f"missing {len(set(ids) - set(answered))}; dead letters {reasons}; worker {worker.stats.as_dict()}"
    )
    audit = await read_topic(edge_region.bootstrap, audit_topic(region), expect=len(ids), timeout_s=30.0)
    assert Counter(AuditRecord.from_bytes(r.value).request_id for r in audit) == Counter(ids)


async def _send_embeddings(
    region: EdgeRegion, producer: AIOKafkaProducer, keyring: KeyRing, key_id: int, count: int, tag: str
) -> list[bytes]:
    """``count`` embeddings sealed under ``key_id`` of ``keyring``; their request ids."""
    data = load_dataset("embedding")
    ids = []
    for i in range(count):
        device = f"dev-{tag}-{i % 5}"
        rid = new_request_id()
        body = encode_tensor(data.X_test[i], spec(MODEL["embedding"]).input_dtype)
        envelope = seal(
            body,
            device_key=keyring.device_key(region.name, device, key_id),
            device_id=device,
            key_id=key_id,
            kind="embedding",
            model=MODEL["embedding"],
            capture_time_ms=int(time.time() * 1000),
            request_id=rid,
        )
        await producer.send(ingest_topic(region.name, "embedding"), envelope, key=device.encode())
        ids.append(rid)
    await producer.flush()
    return ids


async def test_a_key_rotation_mid_traffic_answers_the_old_id_in_its_window_and_refuses_it_after(
    edge_region: EdgeRegion, running_worker: RunningWorker, producer: AIOKafkaProducer
) -> None:
    """Devices still on key 1 while the region rotates to key 2: answered while key 1 is in its window,
    dead-lettered as retired_key once it is retired; key 2 is answered throughout. The worker reads the
    rotation from its key file, without a restart."""
    key_file = edge_region.home / f"keys-{edge_region.name}.json"
    old_ring = keyfile.load(key_file)  # devices on key 1 keep their key after the file forgets it
    worker = await running_worker(keyring=KeyFileWatcher(key_file, required_regions=[edge_region.name]))

    def worker_sees(key_id: int, state: str) -> bool:
        ring = worker.keyring  # what the fetch loop admits with now
        return key_id in ring.keys(edge_region.name) and ring.key_state(edge_region.name, key_id) == state

    before = await _send_embeddings(edge_region, producer, old_ring, 1, 20, "before")
    rotate(key_file, edge_region.name, window_ms=10 * 60_000)
    new_ring = keyfile.load(key_file)
    assert await eventually(lambda: worker_sees(2, "current"), timeout_s=10)
    assert worker_sees(1, "accepted")
    in_window = await _send_embeddings(edge_region, producer, old_ring, 1, 20, "window")
    on_new = await _send_embeddings(edge_region, producer, new_ring, 2, 20, "new")
    # The window is judged when the worker processes a record: let it answer these before it closes.
    in_time = await read_topic(edge_region.bootstrap, results_topic(edge_region.name), expect=60)
    assert len(in_time) == 60, worker.stats.as_dict()
    retire(key_file, edge_region.name, 1)  # the window ends (early: the same as it running out)
    assert await eventually(lambda: worker_sees(1, "retired"), timeout_s=10)
    after = await _send_embeddings(edge_region, producer, old_ring, 1, 20, "after")
    also_new = await _send_embeddings(edge_region, producer, new_ring, 2, 20, "new2")

    answered_ids = {*before, *in_window, *on_new, *also_new}
    results = await read_topic(
        edge_region.bootstrap, results_topic(edge_region.name), expect=len(answered_ids)
    )
    answered = Counter(ResultRecord.from_bytes(r.value).request_id for r in results)
    assert set(answered) == answered_ids, "every record under a live key is answered, nothing else"
    assert max(answered.values()) == 1
    letters = [
        DeadLetter.from_record(r)
        for r in await read_topic(edge_region.bootstrap, dlq_topic(edge_region.name), expect=len(after))
    ]
    assert Counter(letter.reason for letter in letters) == {"retired_key": len(after)}
    refused = {decode_envelope(letter.value, max_envelope_bytes=1 << 20).request_id for letter in letters}
    assert refused == set(after)


async def _all_committed(worker: EdgeWorker, results: int) -> bool:
    return await eventually(lambda: worker.stats.results == results, timeout_s=30)


async def test_audit_records_form_one_verified_chain_per_partition_across_owners(
    edge_region: EdgeRegion, producer: AIOKafkaProducer
) -> None:
    """Two workers one after the other: the second continues each partition's chain from the head
    committed with the offsets (no new segment), and `audit verify` finds every record linked."""
    total = 0
    for node, tag in (("chain-1", "a"), ("chain-2", "b")):
        settings = edge_region.settings(node_id=node)
        worker = EdgeWorker(settings, keyring=edge_region.keyring, models=load_models(settings))
        await worker.start()
        stop = asyncio.Event()
        run = asyncio.create_task(worker.run(stop))
        try:
            ids = await _send_embeddings(edge_region, producer, edge_region.keyring, 1, 40, tag)
            total += len(ids)
            await read_topic(edge_region.bootstrap, results_topic(edge_region.name), expect=total)
            assert await _all_committed(worker, len(ids)), worker.stats.as_dict()
        finally:
            stop.set()
            await run
            await worker.stop()

    found, report = await verify_audit_log(edge_region.bootstrap, edge_region.name)
    assert report.ok, report.problems
    assert report.records == total
    assert report.legacy == 0, "every audit record is linked"
    assert {s.segment for s in report.segments} == {0}, "one segment per partition, continued by the second"
    assert sum(s.records for s in report.segments) == total
    assert all(s.head is not None and s.head.seq == s.last_seq for s in report.segments)
    nodes = {AuditRecord.from_bytes(raw).node for _pos, raw in found.entries}
    assert nodes == {"chain-1", "chain-2"}


async def _cloud_records(
    region: EdgeRegion, topic: str, done: Callable[[list[bytes]], bool], timeout_s: float = 30.0
) -> list[bytes]:
    """Values of ``topic`` (shared by every region) whose region field is ``region``, read_committed,
    until ``done`` holds for them or ``timeout_s`` passes."""
    mine: list[bytes] = []
    async with kafka.started(kafka.consumer(region.bootstrap, "test-cloud")) as consumer:
        tps = kafka.partitions([(topic, parse_topic(topic).spec.partitions)])
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        settle_until: float | None = None  # once done, read 1 s more: extras (doubles) would show
        while loop.time() < deadline and (settle_until is None or loop.time() < settle_until):
            if settle_until is None and done(mine):
                settle_until = loop.time() + 1.0
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    if msgpack.unpackb(r.value, strict_map_key=False).get("region") == region.name:
                        mine.append(r.value)
    return mine


async def test_the_cloud_gets_exact_partial_summaries_and_anonymised_samples(
    edge_region: EdgeRegion, running_worker: RunningWorker, producer: AIOKafkaProducer
) -> None:
    """Summaries, committed with the records they count, add up to exactly what the worker did; every
    answered embedding is sampled at fraction 1 with its input and a pseudonym, never a frame or an id."""
    worker = await running_worker(sample_fraction=1.0)
    embeddings = await _send_embeddings(edge_region, producer, edge_region.keyring, 1, 30, "cloud")
    data = load_dataset("frame")
    for i in range(10):
        envelope = _seal(edge_region, f"cam-{i % 3}", "frame", data.X_test[i])
        await producer.send(ingest_topic(edge_region.name, "frame"), envelope, key=f"cam-{i % 3}".encode())
    tampered = bytearray(_seal(edge_region, "dev-bad", "embedding", load_dataset("embedding").X_test[0]))
    tampered[-1] ^= 1
    for _ in range(4):
        await producer.send(ingest_topic(edge_region.name, "embedding"), bytes(tampered), key=b"dev-bad")
    await producer.flush()

    def counted(values: list[bytes]) -> bool:
        summaries = [PartialSummary.from_bytes(v) for v in values]
        return (
            sum(s.results for s in summaries) >= 40
            and sum(n for s in summaries for n in s.dead_letters.values()) >= 4
        )

    summaries = [
        PartialSummary.from_bytes(v) for v in await _cloud_records(edge_region, SUMMARIES_TOPIC, counted)
    ]
    by_model: dict[str, list[PartialSummary]] = {}
    for s in summaries:
        by_model.setdefault(s.model, []).append(s)
    embedding_totals = merge(by_model["embedding-scorer"])
    frame_totals = merge(by_model["frame-classifier"])
    assert embedding_totals["results"] == 30, "exact: not more, not less"
    assert frame_totals["results"] == 10
    assert embedding_totals["dead_letters"] == {"bad_tag": 4}
    assert sum(embedding_totals["latency"]) == 30
    assert sum(frame_totals["scores"]) == 10
    assert sum(embedding_totals["labels"].values()) == 30
    assert worker.stats.results == 40

    samples = [
        Sample.from_bytes(v)
        for v in await _cloud_records(edge_region, SAMPLES_TOPIC, lambda values: len(values) >= 30)
    ]
    assert sorted(s.request_id for s in samples) == sorted(embeddings), "every embedding, no frame"
    assert {s.model for s in samples} == {"embedding-scorer"}
    inputs = load_dataset("embedding").X_test.astype(spec(MODEL["embedding"]).input_dtype)
    rows = {tuple(float(x) for x in row) for row in inputs[:30]}
    assert all(s.features in rows for s in samples), "each sample carries the input the device sent"
    devices = {s.device for s in samples}
    assert len(devices) == 5, "one pseudonym per device (5 devices sent)"
    assert all(len(d) == 16 and b"dev-" not in d for d in devices), "pseudonyms, not ids"
    assert all(s.region == edge_region.name for s in samples)


def _sized_envelope(region: EdgeRegion, device: str, size: int) -> bytes:
    """A sealed embedding envelope of exactly ``size`` bytes (its tensor has the wrong shape)."""
    n = size - 300
    for _ in range(3):
        body = encode_tensor(np.zeros(n, dtype=np.uint8), "uint8")
        key = region.keyring.device_key(region.name, device, region.keyring.current_key_id(region.name))
        value = seal(
            body,
            device_key=key,
            device_id=device,
            key_id=region.keyring.current_key_id(region.name),
            kind="embedding",
            model=MODEL["embedding"],
            compression="none",
        )
        n += size - len(value)
    assert len(value) == size
    return value


async def test_poison_records_are_dead_lettered_with_default_settings_and_the_partition_flows(
    edge_region: EdgeRegion, running_worker: RunningWorker, producer: AIOKafkaProducer
) -> None:
    """Issue 12, items 1 and 2, with the default worker settings: a NaN or +Inf float16 embedding (it
    crashed every worker in turn) and envelopes near the size limits (their dead letters were over the
    producer's limit: the partition rewound forever) are each dead-lettered with their reason, and the
    good envelope after them on the same partition is answered; no rewind, no exit."""
    worker = await running_worker()
    limit = worker.settings.max_envelope_bytes
    assert limit == DEFAULT_MAX_ENVELOPE_BYTES
    region, device = edge_region.name, "dev-poison"
    topic = ingest_topic(region, "embedding")
    nan, inf = (np.full(30, 0.5, dtype="<f2") for _ in range(2))
    nan[0], inf[7] = np.nan, np.inf
    just_admitted = _sized_envelope(edge_region, device, limit - 10)
    over = _sized_envelope(edge_region, device, PRODUCER_MAX_REQUEST_BYTES - 200)  # all a producer sends
    bad = {
        "nan": _seal_raw(edge_region, device, nan),
        "inf": _seal_raw(edge_region, device, inf),
        "bad_shape": just_admitted,
        "oversized": over,
    }
    for value in bad.values():
        await producer.send(topic, value, key=device.encode())
    rid = new_request_id()
    x = load_dataset("embedding").X_test[0]
    await producer.send(
        topic, _seal(edge_region, device, "embedding", x, request_id=rid), key=device.encode()
    )
    await producer.flush()

    results = await read_topic(edge_region.bootstrap, results_topic(region), expect=1)
    assert [ResultRecord.from_bytes(r.value).request_id for r in results] == [rid]
    dead = [
        DeadLetter.from_record(r)
        for r in await read_topic(edge_region.bootstrap, dlq_topic(region), expect=4)
    ]
    assert [d.reason for d in dead] == ["non_finite", "non_finite", "bad_shape", "oversized"]
    assert [d.value for d in dead[:3]] == [bad["nan"], bad["inf"], bad["bad_shape"]], "whole copies"
    assert all(d.replayable for d in dead[:3])
    cut = dead[3]
    assert cut.truncated == ("value",)
    assert (cut.original_size, cut.original_sha256) == (len(over), hashlib.sha256(over).hexdigest())
    assert over.startswith(cut.value)
    assert worker.stats.rewinds == 0
    assert worker.sink.aborts == 0  # type: ignore[attr-defined]
    assert worker.stats.dead_letters == {"non_finite": 2, "bad_shape": 1, "oversized": 1}


async def test_a_header_key_that_is_not_utf8_stops_nothing_and_is_read_as_kafkas_client_reads_it(
    edge_region: EdgeRegion, running_worker: RunningWorker, producer: AIOKafkaProducer
) -> None:
    """A device that speaks the Kafka protocol itself writes a batch whose records' header keys are not
    UTF-8 (the broker takes it as sent): aiokafka refused every fetch of the partition from there on,
    and the worker stopped, again at every restart. Now the valid envelope in that batch is answered,
    the garbage beside it is dead-lettered with its headers (U+FFFD in their keys, as Kafka's Java
    client reads them), and the record after the batch is answered; no rewind, no exit."""
    worker = await running_worker()
    region, device = edge_region.name, "dev-raw-headers"
    topic = ingest_topic(region, "embedding")
    tp = TopicPartition(topic, partition_for(device.encode(), parse_topic(topic).spec.partitions))
    x = load_dataset("embedding").X_test[0]
    rids = [new_request_id(), new_request_id()]
    good = _seal(edge_region, device, "embedding", x, request_id=rids[0])
    records: list[wire.Raw] = [
        (device.encode(), good, [(b"\xff\xfe", b"1")]),
        (device.encode(), b"garbage", [(b"\xc3(", b"2"), (b"fine", b"3")]),
    ]
    base = await wire.produce_raw(producer, tp, wire.batch(records))
    after = _seal(edge_region, device, "embedding", x, request_id=rids[1])
    await producer.send_and_wait(topic, after, key=device.encode())

    dead = await _answered_and_one_dead_letter(edge_region, rids)
    assert (dead.value, dead.origin_offset) == (b"garbage", base + 1)
    assert dead.origin_headers == (("\ufffd(", b"2"), ("fine", b"3"))
    assert worker.stats.rewinds == 0
    assert worker.stats.dead_letters == {"undecodable": 1}


async def test_a_compressed_bomb_is_one_oversized_dead_letter_and_the_partition_flows(
    edge_region: EdgeRegion, running_worker: RunningWorker, producer: AIOKafkaProducer
) -> None:
    """A device's client sends a zstd batch of a few KiB that inflates to 32 MiB (the broker bounds only
    what is on the wire): aiokafka would have inflated it whole, and a larger one would have failed the
    worker for memory at every restart. It is dead-lettered once, as ``oversized``, with the first
    bytes of the batch as it came and its offsets in the message; a good envelope in a zstd batch and
    one after are answered; no rewind, no exit."""
    worker = await running_worker()
    region, device = edge_region.name, "dev-bomb"
    topic = ingest_topic(region, "embedding")
    tp = TopicPartition(topic, partition_for(device.encode(), parse_topic(topic).spec.partitions))
    x = load_dataset("embedding").X_test[0]
    rids = [new_request_id(), new_request_id()]
    bomb = DefaultRecordBatchBuilder(2, 4, 0, -1, -1, -1, 1 << 30)
    for i in range(16):
        bomb.append(i, int(time.time() * 1000), device.encode(), bytes(2 << 20), [])
    bomb_batch = bytes(bomb.build())
    assert len(bomb_batch) < 64 * 1024
    good = DefaultRecordBatchBuilder(2, 4, 0, -1, -1, -1, 1 << 20)
    good.append(0, int(time.time() * 1000), device.encode(), _seal(edge_region, device, "embedding", x,
                request_id=rids[0]), [])  # fmt: skip
    base = await wire.produce_raw(producer, tp, bomb_batch)
    await wire.produce_raw(producer, tp, bytes(good.build()))
    after = _seal(edge_region, device, "embedding", x, request_id=rids[1])
    await producer.send_and_wait(topic, after, key=device.encode())

    dead = await _answered_and_one_dead_letter(edge_region, rids)
    assert dead.reason == "oversized"
    assert dead.origin_offset == base + 15, "at the batch's last offset"
    assert dead.value[61:] == bomb_batch[61 : len(dead.value)], "as it came (the broker set its header)"
    assert f"a compressed batch of offsets {base}-{base + 15}" in dead.message
    assert (dead.truncated, dead.original_size) == (("value",), len(bomb_batch)), "a batch, never replayed"
    assert worker.stats.rewinds == 0
    assert worker.stats.dead_letters == {"oversized": 1}


async def _answered_and_one_dead_letter(region: EdgeRegion, rids: list[bytes]) -> DeadLetter:
    """The region's results are exactly ``rids``, in order, and it has one dead letter: that one."""
    results = await read_topic(region.bootstrap, results_topic(region.name), expect=len(rids))
    assert [ResultRecord.from_bytes(r.value).request_id for r in results] == rids
    letters = await read_topic(region.bootstrap, dlq_topic(region.name), expect=1)
    [dead] = [DeadLetter.from_record(r) for r in letters]
    return dead


def _seal_raw(region: EdgeRegion, device: str, data: np.ndarray[Any, Any]) -> bytes:
    """A float16 embedding sealed as is: ``encode_tensor`` would refuse its NaN or infinity."""
    key_id = region.keyring.current_key_id(region.name)
    return seal(
        TensorBody(data=data.tobytes(), dtype="float16", shape=data.shape),
        device_key=region.keyring.device_key(region.name, device, key_id),
        device_id=device,
        key_id=key_id,
        kind="embedding",
        model=MODEL["embedding"],
    )


async def test_steady_traffic_is_fetched_paced_and_every_request_answered_once(
    edge_region: EdgeRegion, running_worker: RunningWorker, producer: AIOKafkaProducer
) -> None:
    """Records arriving several to a fetch interval (over the pacing floor) are fetched with pauses
    between fetches: far fewer fetches than records, nothing lost or answered twice; the worker sends
    the fetches itself, aiokafka's own fetcher kept idle (every partition paused in it)."""
    worker = await running_worker(fetch_interval_ms=25.0, fetch_pacing_from_per_s=100.0)
    data = load_dataset("embedding")
    topic = ingest_topic(edge_region.name, "embedding")
    ids = []
    for i in range(400):  # ~200/s: ~5 records an interval
        device = f"dev-paced-{i % 8}"
        rid = new_request_id()
        ids.append(rid)
        await producer.send(
            topic,
            _seal(edge_region, device, "embedding", data.X_test[i % len(data.X_test)], request_id=rid),
            key=device.encode(),
        )
        await asyncio.sleep(0.005)
    await producer.flush()
    results = await read_topic(edge_region.bootstrap, results_topic(edge_region.name), expect=len(ids))
    assert Counter(ResultRecord.from_bytes(r.value).request_id for r in results) == Counter(ids)
    assert worker.stats.paced > 0
    assert worker.stats.fetches < len(ids) / 2, worker.stats.as_dict()
    assert worker.consumer.paused() == worker.consumer.assignment()
    assert not worker.consumer._fetcher._records  # aiokafka's fetcher buffered nothing of them
