"""The per-worker transactional sink (KIP-447): TxnOffsetCommit v3 on the wire, its answers, the
membership it sends, and against the real broker that a zombie's transaction is refused and invisible."""

from __future__ import annotations

import asyncio
import time
import uuid
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.producer.transaction_manager import TransactionManager, TransactionState
from aiokafka.structs import OffsetAndMetadata

from edgestream.pipeline import kafka
from edgestream.pipeline.contract.partitioner import partition_for
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.serving.served import load_models
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.acls import edge_transactional_id_prefix
from edgestream.topics.catalogue import ingest_topic, results_topic
from edgestream.workers.edge.offsets import Committed, stable_committed
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.edge.sinks import (
    SIZE_REFUSALS,
    Output,
    OutputsRefused,
    PartitionWork,
    TransactionalSink,
)
from edgestream.workers.edge.txnsink import (
    ILLEGAL_GENERATION,
    TXN_BATCH_BYTES,
    UNKNOWN_MEMBER_ID,
    GenerationRefused,
    GroupFencedTxnOffsetCommitHandler,
    GroupTxnOffsetCommitRequest,
    Membership,
    TxnOffsetCommitRequest_v3,
    TxnOffsetCommitResponse_v3,
    WorkerTransactionalSink,
    membership_of,
    send_batched,
)
from edgestream.workers.edge.worker import EdgeWorker

from ..conftest import EdgeRegion, set_topic_config

MEMBER = Membership(7, "worker-1-abc", None)
TP_A, TP_B = TopicPartition("a", 0), TopicPartition("b", 1)


def _request(membership: Membership = MEMBER) -> GroupTxnOffsetCommitRequest:
    return GroupTxnOffsetCommitRequest(
        transactional_id="g-node",
        group_id="g",
        producer_id=42,
        producer_epoch=3,
        membership=membership,
        offsets={TP_B: OffsetAndMetadata(9, "head-9"), TP_A: OffsetAndMetadata(5, "")},
    )


def test_the_offset_commit_is_v3_flexible_and_carries_the_group_membership() -> None:
    struct = _request().prepare({28: (0, 5)})
    assert isinstance(struct, TxnOffsetCommitRequest_v3)
    assert struct.FLEXIBLE_VERSION
    decoded = TxnOffsetCommitRequest_v3.decode(BytesIO(struct.encode()))
    assert (decoded.transactional_id, decoded.group_id) == ("g-node", "g")
    assert (decoded.producer_id, decoded.producer_epoch) == (42, 3)
    assert (decoded.generation_id, decoded.member_id, decoded.group_instance_id) == (7, "worker-1-abc", None)
    assert [(name, [p[:4] for p in parts]) for name, parts, _ in decoded.topics] == [
        ("a", [(0, 5, -1, "")]),
        ("b", [(1, 9, -1, "head-9")]),
    ]
    static = _request(Membership(7, "m", "pod-3")).prepare({28: (0, 5)})
    assert TxnOffsetCommitRequest_v3.decode(BytesIO(static.encode())).group_instance_id == "pod-3"


def test_a_broker_without_v3_is_refused_rather_than_sent_an_unfenced_v0() -> None:
    with pytest.raises(NotImplementedError):
        _request().prepare({28: (0, 2)})


def test_only_a_real_membership_counts_as_known() -> None:
    assert MEMBER.known
    assert not Membership(-1, "").known, "v3 with -1 and no member is accepted from anyone, like v0"
    assert not Membership(3, "").known


def _answer(codes: dict[TopicPartition, int]) -> Any:
    by_topic: dict[str, list[tuple[int, int, dict[int, bytes]]]] = {}
    for tp, code in codes.items():
        by_topic.setdefault(tp.topic, []).append((tp.partition, code, {}))
    built = TxnOffsetCommitResponse_v3(0, [(t, parts, {}) for t, parts in by_topic.items()], {})
    return TxnOffsetCommitResponse_v3.decode(BytesIO(built.encode()))


async def _handler_in_transaction() -> tuple[GroupFencedTxnOffsetCommitHandler, TransactionManager, Any]:
    """aiokafka's own transaction manager, in a transaction whose offsets are being committed."""
    manager = TransactionManager("g-node", 60_000)
    manager.set_pid_and_epoch(42, 3)
    manager.begin_transaction()
    offsets = {TP_A: OffsetAndMetadata(5, ""), TP_B: OffsetAndMetadata(9, "")}
    pending = manager.add_offsets_to_txn(dict(offsets), "g")
    manager.consumer_group_added("g")
    sender = SimpleNamespace(_txn_manager=manager, _retry_backoff=0.01, _coordinator_dead=lambda _t: None)
    handler = GroupFencedTxnOffsetCommitHandler(sender, offsets, "g", lambda: MEMBER)
    return handler, manager, pending


@pytest.mark.parametrize("code", [ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID])
async def test_a_refused_generation_makes_the_transaction_abortable_not_the_producer_dead(code: int) -> None:
    handler, manager, pending = await _handler_in_transaction()
    assert handler.handle_response(_answer({TP_A: code, TP_B: code})) is None, "no retry"
    assert manager.state is TransactionState.ABORTABLE_ERROR
    with pytest.raises(GenerationRefused, match="generation 7"):
        await pending
    with pytest.raises(GenerationRefused):
        await manager.wait_for_transaction_end()  # what commit_transaction would raise


async def test_accepted_offsets_are_handed_to_aiokafka_as_committed() -> None:
    handler, manager, pending = await _handler_in_transaction()
    assert handler.handle_response(_answer({TP_A: 0, TP_B: 0})) is None
    await pending
    assert manager.state is TransactionState.IN_TRANSACTION


def _worker(home: Path, **overrides: Any) -> EdgeWorker:
    settings = WorkerSettings(
        region="eu-west", home=home, kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"), **overrides
    )
    return EdgeWorker(settings, keyring=KeyRing({"eu-west": {1: bytes(32)}}), models=load_models(settings))


async def test_the_setting_picks_the_sink_and_its_transaction_timeout(model_home: Path) -> None:
    per_partition = _worker(model_home, transactions="per_partition")
    await per_partition.stop()
    assert isinstance(per_partition.sink, TransactionalSink)
    assert per_partition.settings.resolved_transaction_timeout_ms() == 60_000
    worker = _worker(model_home, node_id="n-1")  # the default
    await worker.stop()
    sink = worker.sink
    assert isinstance(sink, WorkerTransactionalSink)
    assert sink.transactional_id == "edgestream-edge-eu-west-edge.eu-west.ingest.worker-n-1"
    assert sink.transactional_id.startswith(edge_transactional_id_prefix("eu-west")), "within the ACLs"
    assert worker.settings.resolved_transaction_timeout_ms() == 10_000
    producer = sink.make_producer()
    other = kafka.producer(worker.settings.kafka, "other", transactional_id="x")
    await asyncio.gather(producer.stop(), other.stop())
    assert producer._txn_manager.transaction_timeout_ms == 10_000
    assert "_do_txn_offset_commit" in vars(producer._sender), "the override is on this producer's sender"
    assert "_do_txn_offset_commit" not in vars(other._sender), "and on no other"


async def test_a_unit_read_under_another_membership_fails_whole_without_a_request(model_home: Path) -> None:
    """Once the consumer has left its generation (a zombie's heartbeat was refused, generation -1),
    nothing of a unit read before may commit; every partition of it is re-read."""
    now = [MEMBER]
    sink = WorkerTransactionalSink(
        connection=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        group_id="g",
        transactional_id="g-n",
        client_id="n",
        transaction_timeout_ms=10_000,
        membership=lambda: now[0],
    )
    sink._owned = {TP_A, TP_B}
    sink._assigned_as = MEMBER  # as assigned() records it (without starting a producer here)
    work = {TP_A: PartitionWork(next_offset=5), TP_B: PartitionWork(next_offset=9)}
    for later in (Membership(-1, ""), Membership(8, "worker-1-abc")):
        now[0] = later
        failed = await sink.publish(work)
        assert set(failed) == {TP_A, TP_B}
        assert all(isinstance(err, GenerationRefused) for err in failed.values())
    assert (sink.refused, sink.aborts, sink.transactions) == (2, 2, 0)
    with pytest.raises(RuntimeError, match="not assigned"):
        await sink.publish({TopicPartition("c", 0): PartitionWork()})


# -- against the broker ---------------------------------------------------------------------------


async def _member(region: EdgeRegion, group: str, name: str) -> AIOKafkaConsumer:
    consumer = kafka.consumer(
        region.bootstrap, name, group_id=group, heartbeat_interval_ms=100, session_timeout_ms=10_000
    )
    consumer.subscribe([ingest_topic(region.name, "embedding")])
    await consumer.start()
    return consumer


async def _until_assigned(*consumers: AIOKafkaConsumer, generation_above: int = 0) -> None:
    async def settled() -> None:
        while not all(
            c.assignment() and membership_of(c).generation_id > generation_above for c in consumers
        ):
            await asyncio.gather(*(c.getmany(timeout_ms=50) for c in consumers))

    await asyncio.wait_for(settled(), 60)


def _sink(region: EdgeRegion, group: str, node: str, membership: Any) -> WorkerTransactionalSink:
    return WorkerTransactionalSink(
        connection=region.bootstrap,
        group_id=group,
        transactional_id=f"{group}-{node}",
        client_id=node,
        transaction_timeout_ms=10_000,
        membership=membership,
    )


def _unit(region: EdgeRegion, tag: str) -> dict[TopicPartition, PartitionWork]:
    topic = ingest_topic(region.name, "embedding")
    results = results_topic(region.name)
    return {
        TopicPartition(topic, p): PartitionWork(
            outputs=[Output(results, f"{tag}-{p}-{i}".encode(), key=b"k") for i in range(3)],
            next_offset=10 + p,
            metadata=f"head-{p}",
        )
        for p in range(3)
    }


async def _read_committed(region: EdgeRegion, topic: str, expect: int) -> list[Any]:
    """``topic``'s records read_committed, read again until at least ``expect`` are there (20 s at most):
    a commit's markers reach the partitions after the producer's commit returns, and the last stable
    offset moves only then."""
    tps = kafka.partitions([(topic, 3)])
    deadline_s = time.monotonic() + 20.0
    while True:
        records = await kafka.read_all(region.bootstrap, tps, client_id="txnsink-check", timeout_ms=20_000)
        if len(records) >= expect or time.monotonic() > deadline_s:
            return records
        await asyncio.sleep(0.1)


def _isolated(sink: WorkerTransactionalSink) -> set[TopicPartition]:
    return sink.isolated


async def _committed_values(region: EdgeRegion, expect: int = 0) -> list[bytes]:
    """The results' values read_committed, once at least ``expect`` are there (`_read_committed`)."""
    records = await _read_committed(region, results_topic(region.name), expect)
    return sorted(r.value or b"" for r in records)


async def test_one_transaction_commits_every_partition_of_a_unit(edge_region: EdgeRegion) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = await _member(edge_region, group, "solo")
    sink = _sink(edge_region, group, "solo", lambda: membership_of(consumer))
    try:
        await _until_assigned(consumer)
        await sink.assigned(consumer.assignment())
        work = _unit(edge_region, "solo")
        assert await sink.publish(work) == {}
        assert (sink.transactions, sink.aborts) == (1, 0), "nine outputs and three offsets, one transaction"
        assert await _committed_values(edge_region, expect=9) == sorted(
            o.value for w in work.values() for o in w.outputs
        )
        committed = await stable_committed(consumer, work)
        assert committed == {tp: Committed(w.next_offset, w.metadata) for tp, w in work.items()}
    finally:
        await sink.stop()
        await consumer.stop()


async def test_a_zombie_with_a_stale_generation_is_refused_and_nothing_of_it_is_visible(
    edge_region: EdgeRegion,
) -> None:
    """The zombie read its unit in generation G; a second worker joined and the group moved to G+1 (the
    zombie's consumer rejoined too, as a woken process does) while the zombie still believes in G. Its
    transaction (outputs and offsets of all three partitions) must be refused by the group coordinator,
    aborted, and invisible read_committed; the current owner then commits the same unit once."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    zombie_consumer = await _member(edge_region, group, "zombie")
    live_consumer: AIOKafkaConsumer | None = None
    await _until_assigned(zombie_consumer)
    frozen = membership_of(zombie_consumer)  # what the zombie believes when it wakes
    zombie = _sink(edge_region, group, "zombie", lambda: frozen)
    live = _sink(
        edge_region, group, "live", lambda: membership_of(live_consumer) if live_consumer else frozen
    )
    try:
        await zombie.assigned(zombie_consumer.assignment())
        live_consumer = await _member(edge_region, group, "live")
        await _until_assigned(zombie_consumer, live_consumer, generation_above=frozen.generation_id)
        assert membership_of(zombie_consumer).member_id == frozen.member_id, "the same member, rejoined"

        work = _unit(edge_region, "zombie")
        failed = await zombie.publish(work)
        assert set(failed) == set(work), "the whole unit failed"
        assert all(isinstance(err, GenerationRefused) for err in failed.values()), failed
        assert (zombie.refused, zombie.transactions) == (1, 0)
        assert await _committed_values(edge_region) == [], "nothing of the zombie's transaction is visible"
        assert await stable_committed(zombie_consumer, work) == dict.fromkeys(work), "no offset moved"

        # The same partitions' unit, committed by a member of the current generation (the coordinator
        # checks the membership, not which member owns which partition): exactly one copy is visible.
        await live.assigned(work)
        assert await live.publish(_unit(edge_region, "live")) == {}
        values = await _committed_values(edge_region, expect=9)
        assert len(values) == 9
        assert all(v.startswith(b"live-") for v in values)
    finally:
        await asyncio.gather(zombie.stop(), live.stop())
        await zombie_consumer.stop()
        if live_consumer is not None:
            await live_consumer.stop()


@pytest.mark.parametrize("batch_bytes", [16 * 1024, TXN_BATCH_BYTES])
async def test_batched_outputs_land_as_sent_records_would(edge_region: EdgeRegion, batch_bytes: int) -> None:
    """Each record on the partition its key hashes to, in order within it, with its key and headers;
    batches that fill up (aiokafka's default batch size) and a record over 16 KiB (sent alone, its
    partition's batch split around it) included. With the worker's batch size each partition's records
    go as one batch, but for the split."""
    topic = results_topic(edge_region.name)
    outputs = [
        Output(
            topic, f"{i}-".encode() * 100, key=f"device-{i % 7}".encode(), headers=[("n", str(i).encode())]
        )
        for i in range(300)
    ]
    outputs.insert(150, Output(topic, b"x" * 40_000, key=b"device-3", headers=[("n", b"big")]))
    producer = kafka.producer(
        edge_region.bootstrap,
        "batched",
        transactional_id=f"batched-{uuid.uuid4().hex}",
        max_batch_size=batch_bytes,
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        deliveries: list[asyncio.Future[Any]] = []
        await send_batched(producer, outputs, deliveries)
        await producer.commit_transaction()
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    assert len(deliveries) < len(outputs) / 10, "records went out in batches, not one by one"
    if batch_bytes == TXN_BATCH_BYTES:
        assert len(deliveries) == 3 + 2, "a batch per partition, the big record's split in two around it"
    records = await _read_committed(edge_region, topic, expect=len(outputs))
    got = {p: [(r.key, r.value, list(r.headers)) for r in records if r.partition == p] for p in range(3)}
    want = {
        p: [(o.key, o.value, list(o.headers)) for o in outputs if partition_for(o.key or b"", 3) == p]
        for p in range(3)
    }
    assert got == want


async def test_a_batch_refused_for_good_aborts_the_unit_and_moves_no_offset(edge_region: EdgeRegion) -> None:
    """The broker refuses one of the unit's batches for good (here: larger than its topic's
    ``max.message.bytes``, which an operator may lower). aiokafka would still commit the transaction
    (it sends EndTxn once the batches are settled, failed or not): the other partitions' outputs and
    every offset would commit without that batch's records, and re-reading from the committed offsets
    would skip them. The unit must fail whole: nothing of it visible, no offset moved. Sent again with
    its partitions ``isolated`` (as the settlement does after such a failure), the refusal names its
    output, and without it the unit commits and isolation ends."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = await _member(edge_region, group, "solo")
    sink = _sink(edge_region, group, "solo", lambda: membership_of(consumer))
    results = results_topic(edge_region.name)
    await set_topic_config(edge_region.bootstrap, results, "max.message.bytes", "4000")
    try:
        await _until_assigned(consumer)
        await sink.assigned(consumer.assignment())
        work = _unit(edge_region, "refused")
        first_tp, first = next(iter(work.items()))
        big = Output(results, b"x" * 6000, key=b"k", origin=7)
        first.outputs.append(big)  # in the batch of key b"k"
        failed = await sink.publish(work)
        assert set(failed) == set(work), "the whole unit failed"
        assert all(isinstance(err, SIZE_REFUSALS) for err in failed.values())
        assert (sink.transactions, sink.aborts) == (0, 1)
        assert await stable_committed(consumer, work) == dict.fromkeys(work), "no offset moved"
        assert await _committed_values(edge_region) == [], "nothing of the unit is visible"
        sink.isolated.update(failed)
        failed = await sink.publish(work)
        [refused] = {id(err): err for err in failed.values()}.values()
        assert isinstance(refused, OutputsRefused)
        assert refused.refused == {first_tp: (big,)}
        assert refused.refused[first_tp][0].origin == 7
        assert set(failed) == set(work), "still the whole unit"
        assert _isolated(sink) == set(work), "isolated until they commit"
        first.outputs.remove(big)  # read again, its record is dead-lettered instead (outputs.py)
        assert await sink.publish(work) == {}
        assert not _isolated(sink)
        assert len(await _committed_values(edge_region, expect=9)) == 9
    finally:
        await sink.stop()
        await consumer.stop()


async def test_per_partition_a_refused_batch_aborts_only_its_partitions_transaction(
    edge_region: EdgeRegion,
) -> None:
    """The same refusal with a transaction per input partition: that partition's transaction aborts and
    its offset stays; the other partitions commit."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    results = results_topic(edge_region.name)
    await set_topic_config(edge_region.bootstrap, results, "max.message.bytes", "4000")
    sink = TransactionalSink(
        connection=edge_region.bootstrap, group_id=group, client_id="solo", transaction_timeout_ms=10_000
    )
    work = _unit(edge_region, "refused")
    refused = next(iter(work))
    big = Output(results, b"x" * 6000, key=b"k", origin=3)
    work[refused].outputs.append(big)
    consumer = await _member(edge_region, group, "solo")
    try:
        await sink.assigned(work)
        failed = await sink.publish(work)
        assert set(failed) == {refused}
        assert (sink.transactions, sink.aborts) == (2, 1)
        sink.isolated.add(refused)
        again = await sink.publish({refused: work[refused]})
        assert isinstance(again[refused], OutputsRefused)
        assert again[refused].refused == {refused: (big,)}
        assert (sink.transactions, sink.aborts) == (2, 2)
        await _until_assigned(consumer)
        committed = await stable_committed(consumer, work)
        assert committed[refused] is None, "the refused partition's offset did not move"
        assert {tp: c for tp, c in committed.items() if tp != refused} == {
            tp: Committed(w.next_offset, w.metadata) for tp, w in work.items() if tp != refused
        }
        assert await _committed_values(edge_region, expect=6) == sorted(
            o.value for tp, w in work.items() if tp != refused for o in w.outputs
        )
    finally:
        await sink.stop()
        await consumer.stop()
