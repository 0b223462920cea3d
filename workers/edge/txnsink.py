"""Exactly-once with one transactional producer per worker, fenced by the consumer group (KIP-447).

``WorkerTransactionalSink`` commits a whole unit (every input partition's results, audit records, dead
letters and consumed offsets) in ONE transaction of ONE producer per worker process, whose transactional
id is stable per node (``<group>-<node_id>``). ``sinks.TransactionalSink`` instead needs a producer and a
transaction per input partition, because there the transactional id is what fences a previous owner.

Here the *consumer group* fences: the offsets go out as TxnOffsetCommit v3, which carries the group
generation, member id and group instance id of the consumer the unit was read with (aiokafka 0.14 only
sends v0, which carries none of them and which the group coordinator accepts from anyone). After a
rebalance the coordinator refuses a previous owner's commit (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID,
FENCED_INSTANCE_ID); the transaction is then aborted, nothing of it is visible to read_committed readers,
and every partition of the unit is re-read from its committed offset (``GenerationRefused``, not fatal).
A new owner reads its positions with OffsetFetch ``require_stable`` (``offsets.py``), so it waits for a
previous owner's transaction that already committed offsets to end before it reads from there.

The one change to aiokafka is on this sink's own producer instance (``fence_with_group``): its sender's
``_do_txn_offset_commit`` is replaced by one that sends v3 through a subclass of aiokafka's
``TxnOffsetCommitHandler``; aiokafka's module globals and every other producer are untouched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import CoordinationType
from aiokafka.errors import GroupAuthorizationFailedError, KafkaError, ProducerFenced
from aiokafka.producer.sender import TxnOffsetCommitHandler
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)
from aiokafka.structs import OffsetAndMetadata

from edgestream.pipeline import kafka
from edgestream.pipeline.contract.partitioner import remember_hashes
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.acls import edge_transactional_id_prefix
from edgestream.workers.edge.sinks import Fenced, Output, OutputsRefused, PartitionWork, send_alone

log = logging.getLogger(__name__)

TXN_OFFSET_COMMIT = 28
"""The TxnOffsetCommit API key."""
NO_LEADER_EPOCH = -1
ILLEGAL_GENERATION = 22
UNKNOWN_MEMBER_ID = 25
FENCED_INSTANCE_ID = 82
REFUSED_MEMBERSHIP = {ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID}
"""The group coordinator's answers to a commit from a member that no longer owns its partitions."""
TXN_BATCH_BYTES: Final = 512 * 1024
"""The transactional producer's record batch size. A produce request carries one batch per partition,
and a transaction's requests go one after another, so with aiokafka's 16 KiB a commit of a second's
backlog (about 100 KB of results per partition) took six or more round trips; this holds a commit's
records in one. Below the broker's ``message.max.bytes`` (``pipeline/contract/limits.py``) with room to
spare. Measured by draining a backlog of 30,000 (``bench/pipeline/capacity.py``, alternating pairs
against 16 KiB, 2026-12-06): with 1 MiB, four pairs, items/s 9,580-11,666 against 8,769-10,903; with
512 KiB, three pairs, 9,917-10,849 against 9,947-10,289 and the drained worker's produce requests
947-960 against 1,323-1,372. Over the seven pairs 6% more items/s on average (one pair the other way),
the broker's CPU an item 0.027-0.046 against 0.029-0.049 ms, the worker's about the same."""
SENT_ALONE_BYTES: Final = 16 * 1024
"""A record whose value and key take more than this goes through ``send`` instead of a built batch
(`send_batched`), so that the producer checks its size against its request limit. A built batch holds
only records this small (with their headers), and aiokafka lets a batch outgrow its size only by its
first record, so a built batch stays within `TXN_BATCH_BYTES`."""


class GenerationRefused(KafkaError):  # type: ignore[misc]  # aiokafka is untyped
    """The unit was read under a group generation that is no longer current (or not known): its
    transaction is aborted and its partitions are re-read from their committed offsets."""

    retriable = True


@dataclass(frozen=True, slots=True)
class Membership:
    """Who the consumer is in its group: what TxnOffsetCommit v3 carries for the coordinator to check."""

    generation_id: int
    """The group generation (-1 while not a member)."""
    member_id: str
    """The member id the coordinator gave ("" while not a member)."""
    group_instance_id: str | None = None
    """The static member id, when the consumer is configured with one."""

    @property
    def known(self) -> bool:
        """A membership the coordinator can check. A v3 commit with generation -1, no member id and no
        instance id is accepted from anyone, like v0: it must never be sent."""
        return self.generation_id >= 0 and bool(self.member_id)


def membership_of(consumer: AIOKafkaConsumer) -> Membership:
    """The consumer's membership now, from aiokafka's group coordinator."""
    coordinator = consumer._coordinator
    return Membership(coordinator.generation, coordinator.member_id, coordinator._group_instance_id)


# -- TxnOffsetCommit v3, from aiokafka's protocol primitives ------------------------------------------


class TxnOffsetCommitResponse_v3(Response):  # type: ignore[misc]
    API_KEY = TXN_OFFSET_COMMIT
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(("partition_index", Int32), ("error_code", Int16), ("tags", TaggedFields)),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitRequest_v3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = TXN_OFFSET_COMMIT
    API_VERSION = 3
    RESPONSE_TYPE = TxnOffsetCommitResponse_v3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),  # nullable: None encodes as null
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("committed_metadata", CompactString("utf-8")),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class GroupTxnOffsetCommitRequest(Request[TxnOffsetCommitRequest_v3]):  # type: ignore[misc]
    """TxnOffsetCommit v3 only: a broker without it (before Kafka 2.5) is refused, never asked v0."""

    API_KEY: ClassVar[int] = TXN_OFFSET_COMMIT

    def __init__(
        self,
        *,
        transactional_id: str,
        group_id: str,
        producer_id: int,
        producer_epoch: int,
        membership: Membership,
        offsets: Mapping[TopicPartition, OffsetAndMetadata],
    ) -> None:
        by_topic: dict[str, list[tuple[int, int, int, str, dict[int, bytes]]]] = {}
        for tp, point in sorted(offsets.items()):
            by_topic.setdefault(tp.topic, []).append(
                (tp.partition, point.offset, NO_LEADER_EPOCH, point.metadata, {})
            )
        self._fields: tuple[Any, ...] = (
            transactional_id,
            group_id,
            producer_id,
            producer_epoch,
            membership.generation_id,
            membership.member_id,
            membership.group_instance_id,
            [(topic, parts, {}) for topic, parts in by_topic.items()],
            {},
        )

    def build(self, request_struct_class: type[TxnOffsetCommitRequest_v3]) -> TxnOffsetCommitRequest_v3:
        return request_struct_class(*self._fields)


def partition_errors(response: Any) -> list[tuple[str, list[tuple[int, int]]]]:
    """A v3 answer's ``(topic, [(partition, error code)])``, as aiokafka's v0 handler reads them."""
    return [(name, [(index, code) for index, code, _tags in parts]) for name, parts, _tags in response.topics]


class GroupFencedTxnOffsetCommitHandler(TxnOffsetCommitHandler):  # type: ignore[misc]
    """aiokafka's handler, sending v3 with the unit's membership. A refused membership makes the
    transaction abortable (``GenerationRefused``); every other answer is handled as aiokafka does."""

    def __init__(
        self, sender: Any, offsets: Any, group_id: str, membership: Callable[[], Membership]
    ) -> None:
        super().__init__(sender, offsets, group_id)
        self._membership = membership

    def create_request(self) -> GroupTxnOffsetCommitRequest:
        txn_manager = self._sender._txn_manager
        return GroupTxnOffsetCommitRequest(
            transactional_id=txn_manager.transactional_id,
            group_id=self._group_id,
            producer_id=txn_manager.producer_id,
            producer_epoch=txn_manager.producer_epoch,
            membership=self._membership(),
            offsets=self._offsets,
        )

    def handle_response(self, response: Any) -> float | None:
        errors = partition_errors(response)
        refused = sorted({code for _, parts in errors for _, code in parts if code in REFUSED_MEMBERSHIP})
        if refused:
            membership = self._membership()
            self._sender._txn_manager.error_transaction(
                GenerationRefused(
                    f"group {self._group_id} refused the offsets of generation {membership.generation_id} "
                    f"(member {membership.member_id!r}): error codes {refused}"
                )
            )
            return None
        result: float | None = super().handle_response(SimpleNamespace(errors=errors))
        return result


def fence_with_group(producer: AIOKafkaProducer, membership: Callable[[], Membership]) -> None:
    """Make ``producer`` (this instance only) send its transactional offset commits as v3 with
    ``membership()``. It replaces the instance's ``Sender._do_txn_offset_commit``, which does what
    aiokafka's does (find the group coordinator, send, retry on the next sender round) with the v3
    handler; aiokafka calls it from ``Sender._maybe_do_transactional_request``."""
    sender = producer._sender

    async def txn_offset_commit(offsets: Any, group_id: str) -> None:
        if not offsets:
            return
        try:
            node_id = await sender._find_coordinator(CoordinationType.GROUP, group_id)
        except GroupAuthorizationFailedError as err:
            sender._txn_manager.error_transaction(err)
            return
        await GroupFencedTxnOffsetCommitHandler(sender, offsets, group_id, membership).do(node_id)

    sender._do_txn_offset_commit = txn_offset_commit


# -- the sink ------------------------------------------------------------------------------------


def worker_transactional_id(region: str, node_id: str) -> str:
    """``<group>-edge.<region>.ingest.worker-<node_id>``: stable per node, so a restart with the same
    node id fences (and aborts) its predecessor's open transaction at once (a new node id leaves that to
    the transaction timeout). It starts with the prefix the region's principal may use
    (``topics.acls.edge_transactional_id_prefix``), and no ingest kind is called ``worker-...``, so it
    never meets a per-partition id."""
    return f"{edge_transactional_id_prefix(region)}worker-{node_id}"


class WorkerTransactionalSink:
    """Exactly-once: one transactional producer per worker, one transaction per unit (KIP-447)."""

    one_commit = True  # the unit's partitions commit in one transaction, or all of them are re-read

    def __init__(
        self,
        *,
        connection: KafkaSettings,
        group_id: str,
        transactional_id: str,
        client_id: str,
        transaction_timeout_ms: int,
        membership: Callable[[], Membership],
    ) -> None:
        self._kafka = connection
        self._group_id = group_id
        self._client_id = client_id
        self.transactional_id = transactional_id
        """This worker's transactional id (``worker_transactional_id``)."""
        self._timeout_ms = transaction_timeout_ms
        self._membership = membership
        self._producer: AIOKafkaProducer | None = None
        self._owned: set[TopicPartition] = set()
        self._assigned_as: Membership | None = None  # the membership the owned partitions came with
        self.transactions = 0
        """Transactions committed."""
        self.aborts = 0
        """Units whose transaction failed or was not begun (every partition of them re-read)."""
        self.refused = 0
        """Of those, units refused for their group generation (a zombie's, or read before a rebalance)."""
        self.isolated: set[TopicPartition] = set()

    def make_producer(self) -> AIOKafkaProducer:
        """The (not yet started) transactional producer, its offset commits fenced by the group."""
        producer = kafka.producer(
            self._kafka,
            self._client_id,
            transactional_id=self.transactional_id,
            transaction_timeout_ms=self._timeout_ms,
            retry_backoff_ms=5,
            max_batch_size=TXN_BATCH_BYTES,
        )
        fence_with_group(producer, lambda: self._assigned_as or Membership(-1, ""))
        return producer

    async def start(self) -> None:
        """Start the producer (fencing an earlier process with this node id); if the broker cannot be
        reached now, the next assignment or unit tries again."""
        await self._ensure_started()

    async def stop(self) -> None:
        """Stop the producer. Idempotent."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await asyncio.gather(producer.stop(), return_exceptions=True)

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Note the partitions and the membership they were assigned with (called after each join)."""
        self._owned.update(partitions)
        self._assigned_as = self._membership()
        await self._ensure_started()

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Nothing to stop: the producer serves every partition."""
        tps = list(partitions)
        self._owned.difference_update(tps)
        self.isolated.difference_update(tps)

    async def _ensure_started(self) -> AIOKafkaProducer | None:
        if self._producer is None:
            producer = self.make_producer()
            try:
                # init_transactions: bumps the epoch of this transactional id and completes (aborts or
                # commits) its unfinished transaction before returning.
                await producer.start()
            except KafkaError as err:
                await asyncio.gather(producer.stop(), return_exceptions=True)
                if not err.retriable:  # e.g. not authorised for the transactional id: a setup error
                    raise
                log.warning("transactional producer %s not started yet: %r", self.transactional_id, err)
                return None
            except BaseException:
                await asyncio.gather(producer.stop(), return_exceptions=True)
                raise
            self._producer = producer
        return self._producer

    async def publish(self, work: Mapping[TopicPartition, PartitionWork]) -> dict[TopicPartition, KafkaError]:
        """One transaction for the whole unit; on any failure every partition of it failed."""
        if not work:
            return {}
        strangers = set(work) - self._owned
        if strangers:
            raise RuntimeError(f"{sorted(strangers)} are not assigned to this worker")
        now = self._membership()
        if not now.known or now != self._assigned_as:
            # Not a member now, or a member since another join: the unit was read under a generation
            # that is over (and generation -1 must never reach the coordinator, which would accept it).
            return self._failed(work, GenerationRefused(f"membership {now} since the unit's assignment"))
        producer = await self._ensure_started()
        if producer is None:
            return self._failed(work, KafkaError(f"producer {self.transactional_id} not started"))
        try:
            await self._transaction(producer, work)
        except ProducerFenced as err:
            raise Fenced(f"transactional id {self.transactional_id} is used by a newer process") from err
        except KafkaError as err:
            log.warning("transaction of %d partitions failed (%r); restarting the producer", len(work), err)
            # aiokafka sends no EndTxn after an abortable error (it forgets the transaction's
            # partitions): a fresh producer with the same id aborts the open transaction instead.
            await self.stop()
            await self._ensure_started()
            return self._failed(work, err)
        self.transactions += 1
        self.isolated.difference_update(work)
        return {}

    def _failed(
        self, work: Mapping[TopicPartition, PartitionWork], err: KafkaError
    ) -> dict[TopicPartition, KafkaError]:
        self.aborts += 1
        if isinstance(err, GenerationRefused):
            self.refused += 1
        return dict.fromkeys(work, err)

    async def _transaction(
        self, producer: AIOKafkaProducer, work: Mapping[TopicPartition, PartitionWork]
    ) -> None:
        await producer.begin_transaction()
        deliveries: list[asyncio.Future[Any]] = []
        try:
            batched = [o for tp, part in work.items() if tp not in self.isolated for o in part.outputs]
            await send_batched(producer, batched, deliveries)
            refused = {}
            for tp in self.isolated.intersection(work):
                if alone := await send_alone(producer, work[tp].outputs, deliveries):
                    refused[tp] = alone
            if refused:
                raise OutputsRefused(refused)
            offsets = {tp: part.commit_point() for tp, part in work.items()}
            await producer.send_offsets_to_transaction(offsets, self._group_id)
            await kafka.delivered(deliveries)  # a batch refused for good must not commit: it aborts
            await producer.commit_transaction()
        except BaseException:
            # The unit's outcome is the exception raised here; the deliveries and aiokafka's transaction
            # waiter end with it too and are dropped with the producer: not errors of their own.
            for future in [*deliveries, producer._txn_manager.wait_for_transaction_end()]:
                future.add_done_callback(_retrieved)
            raise


async def send_batched(
    producer: AIOKafkaProducer, outputs: Sequence[Output], deliveries: list[asyncio.Future[Any]]
) -> None:
    """Produce ``outputs`` as batches built here, one per destination partition (more where one fills),
    appending each batch's delivery to ``deliveries``: the records, their keys, headers, partitions
    (``producer``'s partitioner, as ``send`` picks them) and their order within a partition are what
    ``send`` per record gives, without its per-record future, metadata check and delivery metadata (a
    quarter of the worker's CPU at 1,000 req/s went to ``send``; ``bench/profile``). A record of more
    than `SENT_ALONE_BYTES` (or than a batch holds) goes through ``send``, after the batches before it
    on its partition, so that it meets the producer's size check; a built batch holds only records that
    small (`SENT_ALONE_BYTES` says why that bounds it)."""
    batches: dict[TopicPartition, list[Any]] = {}
    cluster = producer.client.cluster
    partitioner = producer._partitioner
    partitions: dict[str, tuple[list[int], list[int], dict[int, TopicPartition]]] = {}
    batch_bytes = min(SENT_ALONE_BYTES, producer._message_accumulator._batch_size)
    remember_hashes(o.key for o in outputs)  # the audit records' request ids, each new: as arrays
    for o in outputs:
        known = partitions.get(o.topic)
        if known is None:
            await producer.client._wait_on_metadata(o.topic)
            ids = sorted(cluster.partitions_for_topic(o.topic))
            available = list(cluster.available_partitions_for_topic(o.topic))
            known = partitions[o.topic] = (ids, available, {p: TopicPartition(o.topic, p) for p in ids})
        partition = partitioner(o.key, known[0], known[1])
        tp = known[2].get(partition) or TopicPartition(o.topic, partition)
        queued = batches.get(tp)
        if queued is None:
            queued = batches[tp] = []
        if len(o.value) + len(o.key or b"") > batch_bytes:
            for batch in queued:
                deliveries.append(await producer.send_batch(batch, tp.topic, partition=tp.partition))
            queued.clear()
            deliveries.append(
                await producer.send(
                    o.topic, o.value, key=o.key, headers=list(o.headers), partition=tp.partition
                )
            )
            continue
        headers = list(o.headers)
        if not queued or queued[-1].append(timestamp=None, key=o.key, value=o.value, headers=headers) is None:
            batch = producer.create_batch()
            if batch.append(timestamp=None, key=o.key, value=o.value, headers=headers) is None:
                raise RuntimeError(f"a {len(o.value)}-byte record did not fit an empty batch")
            queued.append(batch)
    # Each partition's first batch before any second one: aiokafka's send_batch waits for a partition's
    # previous batch to be drained into a request before it queues the next.
    rounds = max((len(q) for q in batches.values()), default=0)
    for i in range(rounds):
        for tp, queued in batches.items():
            if i < len(queued):
                deliveries.append(await producer.send_batch(queued[i], tp.topic, partition=tp.partition))


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark ``future``'s outcome as seen (asyncio logs an exception nobody retrieved)."""
    if not future.cancelled():
        future.exception()
