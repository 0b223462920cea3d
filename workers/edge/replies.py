"""Fast replies: a device gets its answer as soon as it exists, not when its unit commits.

Each answer's result record, sealed to its device (``sealing.py``), is also sent at once to the
region's replies topic by one idempotent, non-transactional producer; the device reads that topic and
opens its own replies (``docs/contract.md``, "Replies" and "Sealed replies"). The
transactional result, the audit record and the cloud records commit as before, for backends and the
audit. A reply is at least once: after a failed commit or a crash its request is answered again (the
same request id, possibly from another worker or model version), and a device keeps the first copy.
A reply that cannot be sent is counted and logged, never retried: its committed result still lands,
and the device falls back when its deadline passes.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterable
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerClosed, UnknownTopicOrPartitionError

from edgestream.pipeline import kafka
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.sinks import Output, PartitionWork
from edgestream.workers.edge.txnsink import SENT_ALONE_BYTES

log = logging.getLogger(__name__)


class _Appended:
    """The replies appended to one of the producer's batches without a delivery of their own."""

    __slots__ = ("batch", "replies")

    def __init__(self, batch: Any) -> None:
        self.batch = batch
        """aiokafka's ``MessageBatch``."""
        self.replies = 0
        """How many: what its failure counts."""


class ReplySender:
    """Sends the fast replies of built units without waiting for their acknowledgements."""

    def __init__(self, connection: KafkaSettings, client_id: str) -> None:
        self.producer: AIOKafkaProducer = kafka.producer(connection, f"{client_id}-replies")
        """The idempotent producer (not transactional: a reply does not wait for a commit)."""
        self.sent = 0
        """Replies handed to the producer."""
        self.failed = 0
        """Replies the broker did not acknowledge after the producer's retries."""
        self._appended: dict[TopicPartition, _Appended] = {}
        """Per partition, the batch replies were last appended to (`_append`)."""

    async def start(self) -> None:
        """Connect the producer."""
        await self.producer.start()

    async def stop(self) -> None:
        """Flush what is queued and stop. Idempotent."""
        await self.producer.stop()

    async def send(self, work: Iterable[PartitionWork]) -> None:
        """Queue every reply of ``work``; acknowledgements are counted as they come.

        A reply is appended to its partition's open batch in the producer, as ``send`` appends it, but
        without what ``send`` does per record and a reply does not need: a metadata check, a size
        estimate, copies of the topic's partitions, and a delivery future per record (with its
        metadata, its callback and the loop's turn to run it). The batch's own delivery counts its
        replies' failure (`_appended`). The partition is the producer's partitioner's, as ``send``
        picks it; where the partition's batch is full, aiokafka's own ``add_message`` waits for the
        sender to take it; a reply larger than `SENT_ALONE_BYTES` goes through ``send``, to meet the
        producer's size check."""
        known: dict[str, tuple[list[TopicPartition], list[int]]] = {}
        producer = self.producer
        partitioner = producer._partitioner
        for part in work:
            for reply in part.replies:
                try:
                    partitions = known.get(reply.topic)
                    if (
                        partitions is None
                    ):  # waits for the topic's metadata if there is none yet, as send does
                        partitions = known[reply.topic] = await self._partitions(reply.topic)
                    if len(reply.value) + len(reply.key or b"") > SENT_ALONE_BYTES:
                        delivery = await producer.send(
                            reply.topic, reply.value, key=reply.key, headers=list(reply.headers)
                        )
                        delivery.add_done_callback(self._acknowledged)
                    else:
                        tps, indices = partitions
                        tp = tps[partitioner(reply.key, indices, indices)]
                        if not self._append(tp, reply):
                            await self._append_waiting(tp, reply)
                except KafkaError as err:  # no metadata or no buffer room (a broker restart): dropped
                    self._count_failed(err)
                    continue
                self.sent += 1

    async def _partitions(self, topic: str) -> tuple[list[TopicPartition], list[int]]:
        """The topic's partitions in order, each as its ``TopicPartition``, and their indices: the
        partitioner picks an index as it would pick a partition id from the ids in order (made once per
        ``send``)."""
        ids = sorted(await self.producer.client._wait_on_metadata(topic))
        if not ids:
            raise UnknownTopicOrPartitionError(f"{topic} has no partitions")
        return [TopicPartition(topic, p) for p in ids], list(range(len(ids)))

    def _append(self, tp: TopicPartition, reply: Output) -> bool:
        """Append ``reply`` to ``tp``'s open batch in the producer (one is opened where none is, as
        ``add_message`` opens it); False when that batch is full. Raises what ``add_message`` raises
        for a closed or failed producer."""
        acc = self.producer._message_accumulator
        if acc._closed:
            raise ProducerClosed()
        if acc._exception is not None:
            raise copy.copy(acc._exception)
        queued = acc._batches.get(tp)
        batch = queued[-1] if queued else acc._append_batch(acc.create_builder(), tp)
        appended = self._appended.get(tp)
        if appended is None or appended.batch is not batch:
            appended = self._appended[tp] = _Appended(batch)
            batch.future.add_done_callback(partial(self._batch_delivered, appended))
        if (
            batch._builder.append(
                timestamp=None, key=reply.key, value=reply.value, headers=list(reply.headers)
            )
            is None
        ):
            return False
        appended.replies += 1
        return True

    async def _append_waiting(self, tp: TopicPartition, reply: Output) -> None:
        """``reply`` through aiokafka's ``add_message``, which waits (up to the request timeout) for
        the sender to take ``tp``'s full batch; its own delivery counts it."""
        producer = self.producer
        delivery: asyncio.Future[Any] = await producer._message_accumulator.add_message(
            tp, reply.key, reply.value, producer._request_timeout_ms / 1000, headers=list(reply.headers)
        )
        delivery.add_done_callback(self._acknowledged)

    def _batch_delivered(self, appended: _Appended, delivery: asyncio.Future[object]) -> None:
        if delivery.cancelled():
            self._count_failed(None, appended.replies)
        elif delivery.exception() is not None:  # also marks the exception as seen
            self._count_failed(delivery.exception(), appended.replies)

    def _acknowledged(self, delivery: asyncio.Future[object]) -> None:
        if delivery.cancelled() or delivery.exception() is None:
            return
        self._count_failed(delivery.exception())

    def _count_failed(self, err: BaseException | None, replies: int = 1) -> None:
        before = self.failed
        self.failed += replies
        if before == 0 or before // 1000 != self.failed // 1000:
            log.warning("%d fast replies not sent (latest: %r)", self.failed, err)
