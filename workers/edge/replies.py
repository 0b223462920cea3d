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

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from edgestream.pipeline import kafka
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.sinks import PartitionWork

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
        for part in work:
            for reply in part.replies:
                try:
                    if reply.headers:  # its request's traceparent (tracing on)
                        send = self.producer.send(
                            reply.topic, reply.value, key=reply.key, headers=list(reply.headers)
                        )
                    else:
                        send = self.producer.send(reply.topic, reply.value, key=reply.key)
                    delivery = await send
                except KafkaError as err:  # no metadata or no buffer room (a broker restart): dropped
                    self._count_failed(err)
                    continue
                delivery.add_done_callback(self._acknowledged)
                self.sent += 1

    def _acknowledged(self, delivery: asyncio.Future[object]) -> None:
        if delivery.cancelled() or delivery.exception() is None:
            return
        self._count_failed(delivery.exception())

    def _count_failed(self, err: BaseException | None) -> None:
        self.failed += 1
        if self.failed == 1 or self.failed % 1000 == 0:
            log.warning("%d fast replies not sent (latest: %r)", self.failed, err)
