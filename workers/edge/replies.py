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
``request_timeout_ms`` after its first try (a connection being made is never awaited past that
deadline; a request on an open one, at most a request timeout); a reply that cannot be sent (no
metadata for its topic, larger than a request may be, refused for good or for too long) is counted and
logged, never raised: its committed result still lands, and the device falls back when its deadline
passes.

A unit never waits for room. At most ``MAX_REQUESTS_PER_NODE`` requests are in flight to one broker;
past that, and while a partition has no leader or waits out a retry's backoff, its batches wait (at
most ``MAX_WAITING_BYTES`` of them; past that they are counted and dropped) and go as soon as a
request to their broker ends, or at the latest when one task sends them again every backoff. So a
broker that stops answering, or a partition without a leader, costs only the replies to it; the
replies to the others and the worker's units go on (the first version held every unit once 64
requests were in flight, and a host that drops packets held each of them in the client's connect, one
after another: found in review, 2026-12-07).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable
from typing import Final

from aiokafka import TopicPartition
from aiokafka import errors as Errors
from aiokafka.client import AIOKafkaClient, ConnectionGroup
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
MAX_REQUESTS_PER_NODE: Final = 64
"""Produce requests of replies in flight to one broker at once; past this, that broker's batches wait
(`MAX_WAITING_BYTES`) and go as its requests end. A unit never waits for room: a broker that stops
answering costs the replies to it, not the worker's units or the replies to the other brokers."""
MAX_WAITING_BYTES: Final = 8 * 1024 * 1024
"""Most bytes of batches waiting at once: for a leader, for room at their broker or for a retry's
backoff. A batch that would wait past this is dropped and counted (thousands of units' replies to one
partition: its broker has not answered for seconds, and the devices have long fallen back)."""
ACKS_ALL: Final = -1
"""Every in-sync replica, as every producer of ours (``pipeline/kafka.py``)."""
RECORD_MAGIC: Final = 2
NO_COMPRESSION: Final = 0
NO_PRODUCER: Final = -1
"""Producer id, epoch and base sequence of a record batch from a producer that is not idempotent."""
_NO_HEADERS: Final[list[tuple[str, bytes]]] = []  # read, never written, by the batch builder


class _Batch:
    """One partition's built batch of replies, and when it stops being worth sending."""

    __slots__ = ("data", "deadline_s", "not_before_s", "replies", "tp")

    def __init__(self, tp: TopicPartition, data: bytes, replies: int, deadline_s: float) -> None:
        self.tp = tp
        self.data = data
        self.replies = replies
        self.deadline_s = deadline_s
        self.not_before_s = 0.0
        """While it waits: the earliest it may be sent again (a retry's backoff)."""


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
        max_requests_per_node: int = MAX_REQUESTS_PER_NODE,
        max_waiting_bytes: int = MAX_WAITING_BYTES,
    ) -> None:
        self.client: AIOKafkaClient = kafka.client(connection, f"{client_id}-replies")
        """The connections and metadata the replies go through."""
        self.sent = 0
        """Replies handed to a request (once each, however often it is sent again)."""
        self.failed = 0
        """Replies given up on: never sent, refused, not acknowledged in time, or dropped waiting."""
        self._timeout_ms = connection.request_timeout_ms
        self._retry_backoff_s = retry_backoff_s
        self._max_per_node = max_requests_per_node
        self._max_waiting_bytes = max_waiting_bytes
        self._partitions: dict[str, tuple[list[TopicPartition], list[int]]] = {}
        """Per topic, its partitions in order and their indices (`_partitions_of`)."""
        self._requests: dict[asyncio.Task[None], tuple[int, int]] = {}
        """Requests in flight (`_round_trip`): the broker each went to and the replies it carries."""
        self._per_node: dict[int, int] = {}
        """Requests in flight per broker."""
        self._waiting: list[_Batch] = []
        """Batches waiting for a leader, for room at their broker or for a retry's backoff."""
        self._waiting_bytes = 0
        self._earliest_s = math.inf
        """The earliest ``not_before_s`` of the waiting batches (inf: none wait): a request's end looks at
        them only once one is due, not at every end while a leaderless partition's batches wait out
        their backoff."""
        self._resender: asyncio.Task[None] | None = None
        """Sends the waiting batches again, every ``retry_backoff_s`` while there are any."""
        self._stopped = False

    async def start(self) -> None:
        """Connect: read the cluster's metadata."""
        await self.client.bootstrap()

    async def stop(self) -> None:
        """Wait for the requests in flight and the batches waiting (each at most until its replies'
        deadline), then close; what is left is counted. Replies sent from now on are counted, not sent.
        Idempotent."""
        self._stopped = True
        deadline_s = time.monotonic() + self._timeout_ms / 1000.0
        while (left_s := deadline_s - time.monotonic()) > 0:
            pending: set[asyncio.Task[None]] = set(self._requests)
            if self._resender is not None and self._waiting:
                pending.add(self._resender)
            if not pending:
                break
            await asyncio.wait(pending, timeout=left_s, return_when=asyncio.FIRST_COMPLETED)
        tasks = list(self._requests)
        if self._resender is not None:
            tasks.append(self._resender)
        for task in tasks:
            task.cancel()  # a request's replies are counted as it ends (`_ended`)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._resender = None
        waiting, self._waiting, self._waiting_bytes, self._earliest_s = self._waiting, [], 0, math.inf
        if waiting:
            self._count_failed(None, sum(b.replies for b in waiting))
        await self.client.close()

    async def send(self, work: Iterable[PartitionWork]) -> None:
        """Send every reply of ``work``: one batch per partition (in the order given), one request per
        leader, not awaited; acknowledgements and failures are counted as they come. Waits only for
        a topic's metadata where there is none yet."""
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
        if not building and not full:
            return
        deadline_s = time.monotonic() + self._timeout_ms / 1000.0
        batches = [
            _Batch(tp, bytes(b.builder.build()), b.count, deadline_s) for tp, b in (*full, *building.items())
        ]
        replies = sum(b.replies for b in batches)
        if self._stopped:
            self._count_failed(RuntimeError("the reply sender has stopped"), replies)
            return
        self.sent += replies  # here, with no await left: a unit cancelled before this sent nothing
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
        """Start a request per leader with room, each with at most one batch per partition (a produce
        request carries one batch per partition); batches past their deadline are counted, and those
        whose leader is not known or has no room wait (`_wait`)."""
        now_s = time.monotonic()
        by_node: dict[int, list[list[_Batch]]] = {}
        unknown = False
        cluster = self.client.cluster
        for batch in batches:
            if batch.deadline_s <= now_s:
                self._count_failed(Errors.RequestTimedOutError("not sent by its deadline"), batch.replies)
                continue
            node_id = cluster.leader_for_partition(batch.tp)
            if node_id is None or node_id < 0:
                unknown = True
                self._wait(batch, now_s + self._retry_backoff_s, Errors.LeaderNotAvailableError())
                continue
            requests = by_node.setdefault(node_id, [])
            for request in requests:
                if all(b.tp != batch.tp for b in request):
                    request.append(batch)
                    break
            else:
                requests.append([batch])
        if unknown:
            self.client.force_metadata_update()
        for node_id, requests in by_node.items():
            for request in requests:
                if self._per_node.get(node_id, 0) >= self._max_per_node:
                    for batch in request:  # its broker is slow to answer: the next round, if there is room
                        self._wait(batch, now_s, None)
                else:
                    self._start(node_id, request)

    def _start(self, node_id: int, batches: list[_Batch]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(self._round_trip(node_id, batches))
        self._requests[task] = (node_id, sum(b.replies for b in batches))
        self._per_node[node_id] = self._per_node.get(node_id, 0) + 1
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A request ended; one cancelled (stopped: even before it started) counts its replies."""
        node_id, replies = self._requests.pop(task)
        self._per_node[node_id] -= 1
        if task.cancelled():
            self._count_failed(None, replies)
        elif self._waiting and not self._stopped:
            # Room at a broker: what waits for it goes now, not at the next backoff (a draining worker
            # sends faster than a backoff's round of the waiting batches could).
            self._send_due()

    async def _round_trip(self, node_id: int, batches: list[_Batch]) -> None:
        """Send ``batches`` to ``node_id`` (no longer than until their deadline) and count what its
        answer refuses; what may pass waits to go again."""
        topics: dict[str, list[tuple[int, bytes]]] = {}
        for batch in batches:
            topics.setdefault(batch.tp.topic, []).append((batch.tp.partition, batch.data))
        request = ProduceRequest(None, ACKS_ALL, self._timeout_ms, list(topics.items()))
        try:
            conn = self.client._conns.get((node_id, ConnectionGroup.DEFAULT))
            if conn is not None and conn.connected():  # its answer is bounded by the request timeout
                response = await self.client.send(node_id, request)
            else:
                # Connecting is bounded by the replies' deadline: aiokafka connects under one lock for
                # the whole client, so a host that drops packets would hold every request to it there,
                # one after another (a timeout on every request cost 2.6 us a reply acknowledged).
                async with asyncio.timeout(max(b.deadline_s for b in batches) - time.monotonic()):
                    response = await self.client.send(node_id, request)
        except Errors.KafkaError as err:  # no connection, timed out: the whole request may go again
            self._again(batches, err)
            return
        except TimeoutError:  # not answered by the deadline
            self._again(batches, Errors.RequestTimedOutError("not answered by its deadline"))
            return
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
            self._again(again, refused)

    def _again(self, batches: list[_Batch], err: BaseException | None) -> None:
        """``batches`` go again after the backoff, with the metadata refreshed where the answer says it
        is stale; those that would be past their deadline by then are counted instead."""
        if (
            err is None
            or getattr(err, "invalid_metadata", False)
            or isinstance(
                err, Errors.KafkaConnectionError | Errors.NodeNotReadyError | Errors.RequestTimedOutError
            )
        ):
            self.client.force_metadata_update()
        log.debug("replies to %d partitions refused (%r); sending them again", len(batches), err)
        not_before_s = time.monotonic() + self._retry_backoff_s
        for batch in batches:
            if batch.deadline_s <= not_before_s:
                self._count_failed(err, batch.replies)
            else:
                self._wait(batch, not_before_s, err)

    def _wait(self, batch: _Batch, not_before_s: float, err: BaseException | None) -> None:
        """``batch`` waits until ``not_before_s`` at least (`_resend`); counted instead when the
        waiting batches already hold `MAX_WAITING_BYTES`."""
        size = len(batch.data)
        if self._waiting_bytes + size > self._max_waiting_bytes:
            self._count_failed(err or Errors.KafkaTimeoutError("too many replies waiting"), batch.replies)
            return
        batch.not_before_s = not_before_s
        self._waiting.append(batch)
        self._earliest_s = min(self._earliest_s, not_before_s)
        self._waiting_bytes += size
        if self._resender is None:
            self._resender = asyncio.ensure_future(self._resend())

    async def _resend(self) -> None:
        """While batches wait: every backoff, send those due again (`_dispatch`: those whose leader is
        still unknown or busy wait once more)."""
        try:
            while self._waiting:
                await asyncio.sleep(self._retry_backoff_s)
                self._send_due()
        finally:
            self._resender = None

    def _send_due(self) -> None:
        """Send the waiting batches whose backoff is over (`_dispatch`: those whose leader is still
        unknown or busy wait once more)."""
        now_s = time.monotonic()
        if self._earliest_s > now_s:
            return
        due = [b for b in self._waiting if b.not_before_s <= now_s]
        self._waiting = [b for b in self._waiting if b.not_before_s > now_s]
        self._earliest_s = min((b.not_before_s for b in self._waiting), default=math.inf)
        self._waiting_bytes -= sum(len(b.data) for b in due)
        self._dispatch(due)  # those that wait again set the earliest time again (`_wait`)

    def _count_failed(self, err: BaseException | None, replies: int = 1) -> None:
        before = self.failed
        self.failed += replies
        if before == 0 or before // 1000 != self.failed // 1000:
            log.warning("%d fast replies not sent (latest: %r)", self.failed, err)
