"""Fast replies: a device gets its answer as soon as it exists, not when its unit commits.

Each answer's result record, sealed to its device (``sealing.py``), is also sent at once to the
region's replies topic, not transactionally; the device reads that topic and opens its own replies
(``docs/contract.md``, "Replies" and "Sealed replies"). The transactional result, the audit record and
the cloud records commit as before, for backends and the audit. A reply is at least once: after a
failed commit or a crash its request is answered again (the same request id, possibly from another
worker or model version), and a device keeps the first copy.

The worker sends a unit's replies itself, not through aiokafka's producer (as it fetches itself:
``fetching.py``): one record batch per partition, built with aiokafka's batch builder, and one produce
request per leader, sent at once through the client and awaited in a task of its own, so a unit never
waits for an earlier unit's acknowledgement. aiokafka's producer sends at most one request per broker
at a time, and each goes through its sender task: a wake-up, a walk of every waiting batch, a task and
an ``asyncio.wait`` per request, a future per batch. The producer is not idempotent: a retried request
may write a reply twice, which the device drops as it drops any second copy (the request id). A
partition the broker refuses for a reason that may pass (its leader moved, too few replicas in sync, a
lost connection) is sent again after ``retry_backoff_s`` with the metadata refreshed, until
``request_timeout_ms`` after its first try; a reply that cannot be sent (no metadata for its topic,
larger than a request may be, refused for good or for too long) is counted and logged, never raised:
its committed result still lands, and the device falls back when its deadline passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any, Final

from aiokafka import TopicPartition
from aiokafka import errors as Errors
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from edgestream.pipeline import kafka
from edgestream.pipeline.contract.limits import PRODUCER_MAX_REQUEST_BYTES
from edgestream.pipeline.contract.partitioner import memo_partitioner
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.sinks import Output, PartitionWork

log = logging.getLogger(__name__)

BATCH_BYTES: Final = 256 * 1024
"""Most bytes of one built batch of replies (a unit's replies to one partition: a few hundred bytes
each); a unit with more to one partition sends the rest in a second request."""
ALONE_BYTES: Final = 16 * 1024
"""A reply whose value and key take more than this is sent in a batch of its own, so that a reply the
broker refuses as too large takes no other reply with it."""
MAX_REQUESTS: Final = 64
"""Produce requests of replies in flight at once; past this, ``send`` waits for one to end (a broker
that stopped answering holds the worker's units here, as a full producer buffer held them)."""
ACKS_ALL: Final = -1
"""Every in-sync replica, as every producer of ours (``pipeline/kafka.py``)."""
RECORD_MAGIC: Final = 2
NO_COMPRESSION: Final = 0
NO_PRODUCER: Final = -1
"""Producer id, epoch and base sequence of a record batch from a producer that is not idempotent."""
_NO_HEADERS: Final[list[tuple[str, bytes]]] = []  # read, never written, by the batch builder


class _Batch:
    """One partition's built batch of replies, and when it stops being worth sending."""

    __slots__ = ("data", "deadline_s", "replies", "tp")

    def __init__(self, tp: TopicPartition, data: bytes, replies: int, deadline_s: float) -> None:
        self.tp = tp
        self.data = data
        self.replies = replies
        self.deadline_s = deadline_s


class _Building:
    """A partition's batch being filled."""

    __slots__ = ("builder", "count")

    def __init__(self) -> None:
        self.builder = DefaultRecordBatchBuilder(
            RECORD_MAGIC, NO_COMPRESSION, 0, NO_PRODUCER, NO_PRODUCER, NO_PRODUCER, BATCH_BYTES
        )
        self.count = 0

    def append(self, reply: Output) -> bool:
        """Append ``reply`` (timestamped now); False when the batch is full (it takes its first record
        whatever its size)."""
        headers = list(reply.headers) if reply.headers else _NO_HEADERS
        if self.builder.append(self.count, None, reply.key, reply.value, headers) is None:
            return False
        self.count += 1
        return True


class ReplySender:
    """Sends the fast replies of built units without waiting for their acknowledgements."""

    def __init__(
        self,
        connection: KafkaSettings,
        client_id: str,
        *,
        retry_backoff_s: float = 0.1,
        max_requests: int = MAX_REQUESTS,
    ) -> None:
        self.client: AIOKafkaClient = kafka.client(connection, f"{client_id}-replies")
        """The connections and metadata the replies go through."""
        self.sent = 0
        """Replies handed to a request (once each, however often it is sent again)."""
        self.failed = 0
        """Replies given up on: never sent, refused, or not acknowledged in time."""
        self._timeout_ms = connection.request_timeout_ms
        self._retry_backoff_s = retry_backoff_s
        self._max_requests = max_requests
        self._partitions: dict[str, tuple[list[TopicPartition], list[int]]] = {}
        """Per topic, its partitions in order and their indices (`_partitions_of`)."""
        self._requests: set[asyncio.Task[None]] = set()
        """Requests in flight, each with its own retries (`_round_trip`)."""

    async def start(self) -> None:
        """Connect: read the cluster's metadata."""
        await self.client.bootstrap()

    async def stop(self) -> None:
        """Wait for the requests in flight (each at most until its replies' deadline), then close.
        Idempotent."""
        deadline_s = time.monotonic() + self._timeout_ms / 1000.0
        while self._requests and (left_s := deadline_s - time.monotonic()) > 0:
            await asyncio.wait(set(self._requests), timeout=left_s)  # a retry starts a new one
        late = list(self._requests)
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.close()

    async def send(self, work: Iterable[PartitionWork]) -> None:
        """Send every reply of ``work``: one batch per partition (in the order given), one request per
        leader, not awaited; acknowledgements and failures are counted as they come."""
        building: dict[TopicPartition, _Building] = {}
        full: list[tuple[TopicPartition, _Building]] = []
        looked_up: dict[str, tuple[list[TopicPartition], list[int]]] = {}
        for part in work:
            for reply in part.replies:
                try:
                    partitions = looked_up.get(reply.topic)
                    if partitions is None:
                        partitions = looked_up[reply.topic] = await self._partitions_of(reply.topic)
                except Errors.KafkaError as err:  # no metadata (a broker restart, an unknown topic)
                    self._count_failed(err)
                    continue
                tps, indices = partitions
                tp = tps[memo_partitioner(reply.key, indices, indices)]
                size = len(reply.value) + len(reply.key or b"")
                if size > PRODUCER_MAX_REQUEST_BYTES:
                    self._count_failed(Errors.MessageSizeTooLargeError(f"a reply of {size} bytes"))
                    continue
                if size > ALONE_BYTES:
                    alone = _Building()
                    alone.append(reply)
                    full.append((tp, alone))
                else:
                    batch = building.get(tp)
                    if batch is None:
                        batch = building[tp] = _Building()
                    if not batch.append(reply):
                        full.append((tp, batch))
                        batch = building[tp] = _Building()
                        batch.append(reply)
                self.sent += 1
        if not building and not full:
            return
        deadline_s = time.monotonic() + self._timeout_ms / 1000.0
        batches = [
            _Batch(tp, bytes(b.builder.build()), b.count, deadline_s) for tp, b in (*full, *building.items())
        ]
        while len(self._requests) >= self._max_requests:
            await asyncio.wait(self._requests, return_when=asyncio.FIRST_COMPLETED)
        self._dispatch(batches)

    async def _partitions_of(self, topic: str) -> tuple[list[TopicPartition], list[int]]:
        """The topic's partitions in order and their indices, as the cluster's metadata has them now
        (waiting for it if there is none yet, as aiokafka's ``send`` does): the partitioner picks an
        index as it would pick a partition id from the ids in order. Looked up once per ``send``, so a
        topic given more partitions is sent to as the devices' own partitioner maps their keys then;
        built again only when the count changed (a topic's partitions only ever grow)."""
        ids = await self.client._wait_on_metadata(topic)
        if not ids:
            raise Errors.UnknownTopicOrPartitionError(f"{topic} has no partitions")
        known = self._partitions.get(topic)
        if known is None or len(known[1]) != len(ids):
            known = self._partitions[topic] = (
                [TopicPartition(topic, p) for p in sorted(ids)],
                list(range(len(ids))),
            )
        return known

    def _dispatch(self, batches: list[_Batch]) -> None:
        """Start a request per leader, each with at most one batch per partition (a produce request
        carries one batch per partition); batches whose leader is not known wait for the metadata."""
        by_node: dict[int, list[list[_Batch]]] = {}
        unknown: list[_Batch] = []
        cluster = self.client.cluster
        for batch in batches:
            node_id = cluster.leader_for_partition(batch.tp)
            if node_id is None or node_id < 0:
                unknown.append(batch)
                continue
            requests = by_node.setdefault(node_id, [])
            for request in requests:
                if all(b.tp != batch.tp for b in request):
                    request.append(batch)
                    break
            else:
                requests.append([batch])
        for node_id, requests in by_node.items():
            for request in requests:
                self._start(self._round_trip(node_id, request))
        if unknown:
            self._start(self._retry(unknown, Errors.LeaderNotAvailableError("no leader known")))

    def _start(self, request: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(request)
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _round_trip(self, node_id: int, batches: list[_Batch]) -> None:
        """Send ``batches`` to ``node_id`` and count what its answer refuses; send again what may pass."""
        topics: dict[str, list[tuple[int, bytes]]] = {}
        for batch in batches:
            topics.setdefault(batch.tp.topic, []).append((batch.tp.partition, batch.data))
        request = ProduceRequest(None, ACKS_ALL, self._timeout_ms, list(topics.items()))
        try:
            response = await self.client.send(node_id, request)
        except Errors.KafkaError as err:  # no connection, timed out: the whole request may go again
            await self._retry(batches, err)
            return
        except asyncio.CancelledError:  # stopped while it was in flight
            self._count_failed(None, sum(b.replies for b in batches))
            raise
        except Exception as err:  # anything else the client raises: these replies' loss, never the worker's
            log.warning("a produce request of fast replies failed", exc_info=True)
            self._count_failed(err, sum(b.replies for b in batches))
            return
        by_tp = {b.tp: b for b in batches}
        again: list[_Batch] = []
        refused: BaseException | None = None
        for topic, partitions in response.topics:
            for partition, error_code, *_ in partitions:
                answered = by_tp.pop(TopicPartition(topic, partition), None)
                if answered is None or error_code == 0:
                    continue
                error = Errors.for_code(error_code)
                if error.retriable:
                    again.append(answered)
                    refused = error()
                else:
                    self._count_failed(error(), answered.replies)
        for unanswered in by_tp.values():  # not answered for (never seen from a broker)
            self._count_failed(Errors.KafkaError("no answer for its partition"), unanswered.replies)
        if again:
            await self._retry(again, refused)

    async def _retry(self, batches: list[_Batch], err: BaseException | None) -> None:
        """Send ``batches`` again after the backoff, with the metadata refreshed where the answer says
        it is stale; those past their deadline are counted instead."""
        now_s = time.monotonic()
        live = [b for b in batches if b.deadline_s > now_s + self._retry_backoff_s]
        for late in batches:
            if late not in live:
                self._count_failed(err, late.replies)
        if not live:
            return
        log.debug("replies to %d partitions refused (%r); sending them again", len(live), err)
        if (
            err is None
            or getattr(err, "invalid_metadata", False)
            or isinstance(
                err, Errors.KafkaConnectionError | Errors.NodeNotReadyError | Errors.RequestTimedOutError
            )
        ):
            self.client.force_metadata_update()
        try:
            await asyncio.sleep(self._retry_backoff_s)
        except asyncio.CancelledError:  # stopped meanwhile
            self._count_failed(err, sum(b.replies for b in live))
            raise
        self._dispatch(live)

    def _count_failed(self, err: BaseException | None, replies: int = 1) -> None:
        before = self.failed
        self.failed += replies
        if before == 0 or before // 1000 != self.failed // 1000:
            log.warning("%d fast replies not sent (latest: %r)", self.failed, err)
