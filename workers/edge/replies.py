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
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from edgestream.pipeline import kafka
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.sinks import Output, PartitionWork
from edgestream.workers.edge.txnsink import SENT_ALONE_BYTES

log = logging.getLogger(__name__)


class ReplySender:
    """Sends the fast replies of built units without waiting for their acknowledgements."""

    def __init__(self, connection: KafkaSettings, client_id: str) -> None:
        self.producer: AIOKafkaProducer = kafka.producer(connection, f"{client_id}-replies")
        """The idempotent producer (not transactional: a reply does not wait for a commit)."""
        self.sent = 0
        """Replies handed to the producer."""
        self.failed = 0
        """Replies the broker did not acknowledge after the producer's retries."""

    async def start(self) -> None:
        """Connect the producer."""
        await self.producer.start()

    async def stop(self) -> None:
        """Flush what is queued and stop. Idempotent."""
        await self.producer.stop()

    async def send(self, work: Iterable[PartitionWork]) -> None:
        """Queue every reply of ``work``; acknowledgements are counted as they come."""
        known: dict[str, list[int]] = {}
        for part in work:
            for reply in part.replies:
                try:
                    delivery = await self._queue(reply, known)
                except KafkaError as err:  # no metadata or no buffer room (a broker restart): dropped
                    self._count_failed(err)
                    continue
                delivery.add_done_callback(self._acknowledged)
                self.sent += 1

    async def _queue(self, reply: Output, known: dict[str, list[int]]) -> asyncio.Future[Any]:
        """Append ``reply`` to its partition's waiting batch, as ``send`` does, and return its delivery.

        What ``send`` does per record and a reply does not need is skipped: a metadata check, a size
        estimate and two copies of the topic's partitions per record (``known`` keeps them for one
        ``send`` of this sender): 3.5-3.7 against 5.0-5.6 µs of CPU a reply in units of 6 and 20
        (``python -m bench.replies``). The partition is the producer's partitioner's, as ``send``
        picks it; a reply larger than `SENT_ALONE_BYTES` goes through ``send``, to meet the producer's
        size check."""
        producer = self.producer
        partitions = known.get(reply.topic)
        if partitions is None:  # waits for the topic's metadata if there is none yet, as send does
            partitions = known[reply.topic] = sorted(await producer.client._wait_on_metadata(reply.topic))
        headers = list(reply.headers)
        if len(reply.value) + len(reply.key or b"") > SENT_ALONE_BYTES:
            sent: asyncio.Future[Any] = await producer.send(
                reply.topic, reply.value, key=reply.key, headers=headers
            )
            return sent
        tp = TopicPartition(reply.topic, producer._partitioner(reply.key, partitions, partitions))
        queued: asyncio.Future[Any] = await producer._message_accumulator.add_message(
            tp, reply.key, reply.value, producer._request_timeout_ms / 1000, headers=headers
        )
        return queued

    def _acknowledged(self, delivery: asyncio.Future[object]) -> None:
        if delivery.cancelled() or delivery.exception() is None:
            return
        self._count_failed(delivery.exception())

    def _count_failed(self, err: BaseException | None) -> None:
        self.failed += 1
        if self.failed == 1 or self.failed % 1000 == 0:
            log.warning("%d fast replies not sent (latest: %r)", self.failed, err)
