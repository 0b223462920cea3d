"""How a unit of work's outputs and consumed offsets become durable, together.

``TransactionalSink`` (exactly-once): one transactional producer per *input partition*, with a
transactional id derived from the partition (faust's answer for clients without KIP-447: aiokafka 0.14
sends TxnOffsetCommit v0, so a per-instance id would not fence a zombie after a rebalance). Whoever owns
a partition now calls ``init_transactions`` with that partition's id, which bumps the epoch and fences
the previous owner. A partition's results, audit records, dead letters and its consumed offset commit in
one transaction or not at all; partitions commit concurrently.

``AckSink`` (at-least-once): one idempotent producer; offsets are committed through the consumer once
every output of the unit is acknowledged. A crash between the two repeats outputs; nothing is lost.

**Outputs the cluster refuses for their size.** Every output is built within the producer's 1 MiB, but
an operator may lower a topic's ``max.message.bytes`` below a record, or below a batch of records:
the broker then refuses the batch for good (`SIZE_REFUSALS`), the unit fails, and re-read it would fail
again, stopping its partitions. Such a failure makes the worker's settlement add the failed input
partitions to the sink's ``isolated``: their outputs are then sent each on its own, its delivery
awaited (`send_alone`), so that the refusal names its outputs (`OutputsRefused`, whose ``origin``
offsets the settlement hands to ``outputs.py``: those records are dead-lettered when read again). A
partition leaves ``isolated`` once a publish of it commits. As Java's producer splits a refused batch,
a batch too large for its topic is then sent record by record and commits. An idempotent producer
numbers each batch as it sends it and the broker never saw a refused one, so every later batch of that
producer to the same partition would fail as out of order: the at-least-once producer is replaced after
a refusal (a transactional one is, after every failed transaction).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordListTooLargeError,
)
from aiokafka.structs import OffsetAndMetadata

from edgestream.pipeline import kafka
from edgestream.pipeline.contract.cloud import PartialSummary
from edgestream.pipeline.errors import EdgestreamError
from edgestream.pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

SIZE_REFUSALS: Final = (MessageSizeTooLargeError, RecordListTooLargeError)
"""What the broker answers a batch larger than its topic's ``max.message.bytes`` (or a record the
producer finds larger than ``max_request_size``): refused for good, whatever the retries."""
_AFTER_A_REFUSAL: Final = (*SIZE_REFUSALS, OutOfOrderSequenceNumber)
"""A refusal, and what it causes: the idempotent producer's later batches to that partition."""


class Resettled(KafkaError):  # type: ignore[misc]  # aiokafka is untyped
    """A partition's producer was started late; its position was read before an in-doubt
    transaction settled, so the partition is re-read before anything of it commits."""

    retriable = True


class Fenced(EdgestreamError):
    """Another worker owns this partition's transactional id now: this process is a zombie."""

    reason = "fenced"
    stage = "produce"


@dataclass(slots=True)
class Output:
    """One record to produce."""

    topic: str
    """Destination topic."""
    value: bytes
    """Record value."""
    key: bytes | None
    """Record key."""
    headers: Sequence[tuple[str, bytes]] = ()
    """Record headers."""
    origin: int = field(default=-1, compare=False)
    """Offset of the input record it answers, in its input partition (-1: of no one record, as a cloud
    summary): a record whose output the cluster refuses is dead-lettered by it (`OutputsRefused`)."""


class OutputsRefused(KafkaError):  # type: ignore[misc]  # aiokafka is untyped
    """The cluster refused these outputs of a unit, each sent alone (`send_alone`), for their size: the
    records they answer are dead-lettered when read again."""

    def __init__(self, refused: Mapping[TopicPartition, Sequence[Output]]) -> None:
        count = sum(len(outputs) for outputs in refused.values())
        super().__init__(f"the cluster refused {count} output(s) for their size")
        self.refused = {tp: tuple(outputs) for tp, outputs in refused.items()}
        """Per input partition, the outputs refused."""


async def send_alone(
    producer: AIOKafkaProducer,
    outputs: Iterable[Output],
    deliveries: list[asyncio.Future[Any]],
    renew: Callable[[], Awaitable[AIOKafkaProducer]] | None = None,
) -> list[Output]:
    """Send each output on its own, its delivery awaited before the next is sent (so each is a batch of
    its own), appending the deliveries; return those refused for their size (`SIZE_REFUSALS`). After a
    refusal the rest go through ``renew()``'s producer when given (else later outputs to the refused
    one's partition fail as out of order, to be named in a later try). Other failures stay in their
    deliveries for the caller."""
    refused: list[Output] = []
    for o in outputs:
        try:
            future = await producer.send(o.topic, o.value, key=o.key, headers=list(o.headers))
        except SIZE_REFUSALS:
            refused.append(o)
            continue
        deliveries.append(future)
        await asyncio.wait([future])
        if not future.cancelled() and isinstance(future.exception(), SIZE_REFUSALS):
            refused.append(o)
            if renew is not None:
                producer = await renew()
    return refused


@dataclass(slots=True)
class PartitionWork:
    """Everything one input partition contributes to a unit."""

    outputs: list[Output] = field(default_factory=list)
    """Results, audit records and dead letters of the partition's records in this unit."""
    next_offset: int = 0
    """Offset to commit: one past the last record of the partition in this unit."""
    metadata: str = ""
    """Committed with the offset: the head of the partition's audit chain after this unit."""
    epoch: int = 0
    """The partition's service epoch its records were read in (`Partitions.serving`): work of an
    earlier epoch is dropped, since the partition was rewound and its records come again."""
    replies: list[Output] = field(default_factory=list)
    """Fast replies to the devices, sent at once and outside the transaction (never committed)."""
    summaries: dict[tuple[str, int], PartialSummary] = field(default_factory=dict)
    """The cloud's partial summary of the partition's records, per (model, version), not yet encoded:
    the commit stage adds up those of the units it commits together and encodes one per (model,
    version) into ``outputs`` (``commits.merge``), so each commits with exactly the records it counts."""

    def commit_point(self) -> OffsetAndMetadata:
        """The offset and metadata to commit for the partition."""
        return OffsetAndMetadata(self.next_offset, self.metadata)


class Sink(Protocol):
    """Makes a unit's outputs and offsets durable."""

    one_commit: bool
    """Whether a ``publish`` commits or fails all of its partitions together (one transaction), so that
    what spans partitions (a cloud summary) may be written once for all of them."""
    isolated: set[TopicPartition]
    """Input partitions whose outputs are sent each on its own (`send_alone`), naming those the cluster
    refuses (`OutputsRefused`): added by the settlement after a failure in `SIZE_REFUSALS`, removed by
    the sink once a publish of the partition commits."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def assigned(self, partitions: Iterable[TopicPartition]) -> None: ...
    async def revoked(self, partitions: Iterable[TopicPartition]) -> None: ...

    async def publish(self, work: Mapping[TopicPartition, PartitionWork]) -> dict[TopicPartition, KafkaError]:
        """Publish every partition's work; returns the partitions that failed (nothing of theirs is
        committed, and they must be re-read from their committed offset). Raises ``Fenced``."""
        ...


def transactional_id(group_id: str, tp: TopicPartition) -> str:
    """Stable per input partition, so the next owner of the partition fences the previous one."""
    return f"{group_id}-{tp.topic}-{tp.partition}"


class TransactionalSink:
    """Exactly-once: a transactional producer per assigned input partition."""

    one_commit = False  # a transaction per partition: each commits or fails on its own

    def __init__(
        self,
        *,
        connection: KafkaSettings,
        group_id: str,
        client_id: str,
        transaction_timeout_ms: int,
    ) -> None:
        self._kafka = connection
        self._config: dict[str, Any] = {
            "transaction_timeout_ms": transaction_timeout_ms,
            "retry_backoff_ms": 5,
        }
        self._group_id = group_id
        self._client_id = client_id
        self._producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self._owned: set[TopicPartition] = set()
        self.transactions = 0
        """Transactions committed."""
        self.aborts = 0
        """Transactions aborted (their partitions were rewound)."""
        self.isolated: set[TopicPartition] = set()

    async def start(self) -> None:
        """Producers are made per partition on assignment."""

    async def stop(self) -> None:
        """Stop every producer. Idempotent."""
        await self.revoked(list(self._owned | set(self._producers)))

    def make_producer(self, tp: TopicPartition) -> AIOKafkaProducer:
        """The (not yet started) transactional producer for input partition ``tp``."""
        return kafka.producer(
            self._kafka,
            f"{self._client_id}-{tp.topic}-{tp.partition}",
            transactional_id=transactional_id(self._group_id, tp),
            **self._config,
        )

    async def _new_producer(self, tp: TopicPartition) -> AIOKafkaProducer:
        producer = self.make_producer(tp)
        # init_transactions: fences any earlier producer with this id, and completes (commits or
        # aborts) its unfinished transaction before returning, so committed offsets are settled.
        try:
            await producer.start()
        except BaseException:
            await asyncio.gather(producer.stop(), return_exceptions=True)
            raise
        return producer

    async def _producer(self, tp: TopicPartition) -> AIOKafkaProducer:
        """The partition's producer. If an earlier start failed (broker unreachable), start it now and
        raise ``Resettled``: starting it may have settled an in-doubt transaction that moved the
        committed offset, and this unit was read from the position before that."""
        producer = self._producers.get(tp)
        if producer is None:
            if tp not in self._owned:
                raise RuntimeError(f"{tp} is not assigned to this worker")
            self._producers[tp] = await self._new_producer(tp)
            raise Resettled(f"{tp.topic}[{tp.partition}]: producer started late; re-reading")
        return producer

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Start a producer for each newly assigned partition (fencing its previous owner).

        A start that fails (the broker is restarting) is retried at the partition's first commit;
        nothing of the partition can commit before its producer has fenced the previous owner.
        """
        new = [tp for tp in partitions if tp not in self._producers]
        self._owned.update(new)
        started = await asyncio.gather(*(self._new_producer(tp) for tp in new), return_exceptions=True)
        for tp, outcome in zip(new, started, strict=True):
            if isinstance(outcome, AIOKafkaProducer):
                self._producers[tp] = outcome
            elif isinstance(outcome, KafkaError):
                log.warning("producer for %s[%d] not started yet: %r", tp.topic, tp.partition, outcome)
            else:
                raise outcome

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop the producers of partitions this worker no longer owns."""
        tps = list(partitions)
        self._owned.difference_update(tps)
        self.isolated.difference_update(tps)
        gone = [self._producers.pop(tp) for tp in tps if tp in self._producers]
        await asyncio.gather(*(p.stop() for p in gone), return_exceptions=True)

    async def publish(self, work: Mapping[TopicPartition, PartitionWork]) -> dict[TopicPartition, KafkaError]:
        """One transaction per partition, run concurrently."""
        tps = list(work)
        outcomes = await asyncio.gather(*(self._commit(tp, work[tp]) for tp in tps), return_exceptions=True)
        failed: dict[TopicPartition, KafkaError] = {}
        fenced: list[TopicPartition] = []
        for tp, outcome in zip(tps, outcomes, strict=True):
            if isinstance(outcome, ProducerFenced):
                fenced.append(tp)
            elif isinstance(outcome, KafkaError):
                failed[tp] = outcome
            elif isinstance(outcome, BaseException):
                raise outcome
        if fenced:
            raise Fenced(f"fenced on {sorted(f'{tp.topic}[{tp.partition}]' for tp in fenced)}")
        self.isolated.difference_update(tp for tp in tps if tp not in failed)
        return failed

    async def _commit(self, tp: TopicPartition, work: PartitionWork) -> None:
        try:
            producer = await self._producer(tp)
        except Resettled:
            self.aborts += 1
            raise
        try:
            await producer.begin_transaction()
            deliveries: list[asyncio.Future[Any]] = []
            if tp in self.isolated:
                refused = await send_alone(producer, work.outputs, deliveries)
                if refused:
                    raise OutputsRefused({tp: refused})
            else:
                deliveries = [
                    await producer.send(o.topic, o.value, key=o.key, headers=list(o.headers))
                    for o in work.outputs
                ]
            await producer.send_offsets_to_transaction({tp: work.commit_point()}, self._group_id)
            await kafka.delivered(deliveries)  # a batch refused for good must not commit: it aborts
            await producer.commit_transaction()
            self.transactions += 1
        except ProducerFenced:
            raise
        except KafkaError as err:
            self.aborts += 1
            log.warning(
                "transaction for %s[%d] failed (%r); recreating its producer", tp.topic, tp.partition, err
            )
            # A fresh producer with the same id completes the in-doubt transaction (init_transactions),
            # so reading the committed offset afterwards is exact. If it cannot start now, the
            # partition's next commit starts it (and the partition is re-read after that).
            await self._replace(tp)
            raise

    async def _replace(self, tp: TopicPartition) -> None:
        old = self._producers.pop(tp, None)
        if old is not None:
            await asyncio.gather(old.stop(), return_exceptions=True)
        try:
            self._producers[tp] = await self._new_producer(tp)
        except KafkaError as err:
            log.warning("producer for %s[%d] not restarted yet: %r", tp.topic, tp.partition, err)


async def _failures(deliveries: Sequence[asyncio.Future[Any]]) -> list[BaseException]:
    """The failures among ``deliveries``, once every one is settled."""
    outcomes = await asyncio.gather(*deliveries, return_exceptions=True)
    return [outcome for outcome in outcomes if isinstance(outcome, BaseException)]


class AckSink:
    """At-least-once: outputs acknowledged first, then offsets committed through the consumer."""

    one_commit = False  # what a partition's produce failed is re-read on its own

    def __init__(
        self,
        *,
        connection: KafkaSettings,
        client_id: str,
        commit: Callable[[dict[TopicPartition, OffsetAndMetadata]], Awaitable[None]],
    ) -> None:
        self._kafka, self._client_id = connection, client_id
        self.producer = kafka.producer(connection, client_id)
        """The one idempotent producer (exposed so its settings can be checked)."""
        self._commit = commit
        self._started = False
        self.isolated: set[TopicPartition] = set()

    async def start(self) -> None:
        """Connect the producer."""
        await self.producer.start()
        self._started = True

    async def stop(self) -> None:
        """Flush and stop the producer. Idempotent."""
        self._started = False
        await self.producer.stop()

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Nothing per partition."""

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget their isolation (their next owner finds its own)."""
        self.isolated.difference_update(partitions)

    async def publish(self, work: Mapping[TopicPartition, PartitionWork]) -> dict[TopicPartition, KafkaError]:
        """Send everything, wait for every acknowledgement, then commit the offsets.

        A produce that fails after the client's retries is raised: offsets past unacknowledged
        records are never committed, so a restart loses nothing. After one refused for its size
        (`SIZE_REFUSALS`) the producer is replaced, and the partitions whose outputs failed are re-read
        instead (those in ``isolated`` fail with `OutputsRefused` naming the outputs refused); the
        others commit.
        """
        deliveries: dict[TopicPartition, list[asyncio.Future[Any]]] = {tp: [] for tp in work}
        refused: dict[TopicPartition, list[Output]] = {}
        for tp in self.isolated.intersection(work):  # first: each refusal renews the producer
            if alone := await send_alone(self.producer, work[tp].outputs, deliveries[tp], self._renew):
                refused[tp] = alone
        for tp, w in work.items():
            if tp not in self.isolated:
                deliveries[tp] = [
                    await self.producer.send(o.topic, o.value, key=o.key, headers=list(o.headers))
                    for o in w.outputs
                ]
        errors = {tp: await _failures(futures) for tp, futures in deliveries.items()}
        sized = [tp for tp, errs in errors.items() if any(isinstance(e, SIZE_REFUSALS) for e in errs)]
        others = [e for errs in errors.values() for e in errs if not isinstance(e, _AFTER_A_REFUSAL)]
        if others or (not sized and any(errors.values())):  # not the refusal's own: the run ends, as before
            raise (others or [e for errs in errors.values() for e in errs])[0]
        if any(tp not in refused for tp in sized):  # refused in a batch: later ones are out of order
            await self._renew()
        failed: dict[TopicPartition, KafkaError] = {}
        if refused:
            named = OutputsRefused(refused)
            failed = dict.fromkeys(refused, named)
        for tp, errs in errors.items():
            if errs and tp not in failed:  # a size refusal, or one of its consequences
                failed[tp] = next((e for e in errs if isinstance(e, SIZE_REFUSALS)), errs[0])
        offsets = {tp: w.commit_point() for tp, w in work.items() if tp not in failed}
        if offsets:
            await self._commit(offsets)
            self.isolated.difference_update(offsets)
        return failed

    async def _renew(self) -> AIOKafkaProducer:
        """A new producer in place of the current one (new producer id: sequences start again); the old
        one is stopped only once the new one runs."""
        fresh = kafka.producer(self._kafka, self._client_id)
        try:
            await fresh.start()
        except BaseException:
            await asyncio.gather(fresh.stop(), return_exceptions=True)
            raise
        old, self.producer = self.producer, fresh
        await asyncio.gather(old.stop(), return_exceptions=True)
        return fresh
