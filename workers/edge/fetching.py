"""The edge worker's fetch requests, sent by the worker itself: one request per leader, no background task.

aiokafka's consumer fetches in a background task that wakes on every event (a fetch answered, records
consumed, a partition paused or resumed), walks every assigned partition to decide what to fetch, and
starts a task per request; under the worker's pacing (``pacing.py``) each fetch also paused and resumed
every partition. A paced fetch cost the worker 0.77-0.79 ms of CPU that way and 0.41 ms sent directly
(2026-12-07: one consumer of 6 partitions on the real TLS broker, 1,000 records/s, a fetch every 5 ms,
records only counted; two runs each, alternating), and the worker makes one such fetch per unit.

The group stays aiokafka's: membership, the rebalance listener, the committed offsets. Its own fetcher
is kept idle (the worker pauses every partition in it as it is assigned: ``idle_aiokafka_fetcher``).
`Fetches` keeps each partition's position (set by the worker's positioning, ``positioning.py``), sends
aiokafka's own ``FetchRequest`` (``read_committed``) to each partition's leader through the consumer's
client and reads each partition's batches with aiokafka's ``PartitionRecords``: aborted transactions
and control batches skipped as aiokafka skips them, header keys read as Kafka's Java client reads them
(``pipeline/kafkarecords.py``). One request per leader is in flight at a time; an empty one waits at
the broker up to ``max_wait_ms`` (a long poll) and stays in flight across calls, so an idle worker
sends two a second, as before. A partition positioned meanwhile is fetched by the next request to its
leader, once the long poll returns (the broker answers a connection's requests one at a time, in
order, so a second request sent at once would wait for it too; aiokafka's fetcher waits the same); a
response for a partition whose position changed meanwhile is dropped.

Errors of a partition in a response: a leader that moved or a topic not known yet refreshes the
metadata and fetches again; an offset out of range resets the partition to its first offset (as
aiokafka's ``auto_offset_reset="earliest"`` does, logged); no authorisation raises aiokafka's
``TopicAuthorizationFailedError`` out of `fetch`, as ``getmany`` did; any other is logged and fetched
again. A request that fails (a connection lost, a timeout) is logged and tried again after
``retry_backoff_s``.

Each `fetch` does for the group what aiokafka's ``getmany`` did: it raises the errors the group's
background work holds for the user (no authorisation for the group, say), and it counts as the
consumer's poll for the group's ``max_poll_interval_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from itertools import islice
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka import errors as Errors
from aiokafka.consumer.fetcher import READ_COMMITTED, PartitionRecords
from aiokafka.protocol.fetch import FetchRequest

from edgestream.pipeline import kafkarecords
from edgestream.pipeline.observability.lag import Offsets

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

log = logging.getLogger(__name__)

MAX_PARTITION_BYTES: Final = 1024 * 1024
"""Most bytes a response carries for one partition (aiokafka's default ``max_partition_fetch_bytes``;
a batch bigger than this still comes, alone)."""
MAX_BYTES: Final = 50 * 1024 * 1024
"""Most bytes of one response (aiokafka's default ``fetch_max_bytes``)."""

Records = dict[TopicPartition, list["ConsumerRecord[bytes, bytes]"]]


class _Request(NamedTuple):
    task: asyncio.Task[Any]
    """The request's round trip: the response, or None where it failed (logged)."""
    offsets: dict[TopicPartition, int]
    """The offset each partition was fetched from."""


class Fetches:
    """A consumer's partitions fetched by the worker itself (see the module's docstring)."""

    def __init__(self, consumer: AIOKafkaConsumer, *, max_wait_ms: int, retry_backoff_s: float = 0.1) -> None:
        self._consumer = consumer
        self.max_wait_ms = max_wait_ms
        """Longest the broker holds a request that finds no records."""
        self._retry_backoff_s = retry_backoff_s
        self._positions: dict[TopicPartition, int] = {}
        """Offset each partition being fetched is fetched from next (while records of it are buffered:
        the offset their response was fetched from)."""
        self._buffered: dict[TopicPartition, PartitionRecords] = {}
        """A response's records of a partition not handed out yet, read as they are handed out."""
        self._ends: dict[TopicPartition, int] = {}
        """Each partition's last stable offset as of its last response (its end for read_committed)."""
        self._in_flight: dict[int, _Request] = {}
        self._to_reset: set[TopicPartition] = set()  # offset out of range: to their first offset
        self._polling: Callable[[], contextlib.AbstractContextManager[None]]
        self._polling = consumer._subscription.fetch_context
        """Marks a fetch as the consumer's poll. aiokafka's group member counts the time since its
        last ``getmany``/``getone`` ended and, past ``max_poll_interval_ms`` (5 min by default), takes
        the consumer for stuck: it leaves the group and does not join again until the next poll. The
        worker never calls them, so each of its fetches counts as one: without this every worker left
        its group five minutes after it started and fetched nothing more (a CI demo whose story ran
        longer than that, 2026-12-07). A worker whose fetching stops for that long (held by
        backpressure behind a stuck unit) leaves the group as a stuck Java consumer would."""

    # -- positions ---------------------------------------------------------------------------------

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Fetch ``tp`` from ``offset`` on: what was fetched of it and not taken is dropped, and so is
        its part of a response to a request already in flight."""
        self._positions[tp] = offset
        self._buffered.pop(tp, None)
        self._to_reset.discard(tp)

    async def seek_to_beginning(self, tp: TopicPartition) -> int:
        """Fetch ``tp`` from its first offset on; returns that offset."""
        first: dict[TopicPartition, int] = await self._consumer.beginning_offsets([tp])
        self.seek(tp, first[tp])
        return first[tp]

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Stop fetching ``tps`` (revoked, or waiting to be positioned again); what was fetched of them
        and not taken is dropped."""
        for tp in tps:
            self._positions.pop(tp, None)
            self._buffered.pop(tp, None)
            self._ends.pop(tp, None)
            self._to_reset.discard(tp)

    def offsets(self) -> dict[TopicPartition, Offsets | None]:
        """Position (the next record to hand out) and end of each partition being fetched, None where
        its end is not known yet: the consumer lag gauge's input (``pipeline/observability/lag.py``)."""
        out: dict[TopicPartition, Offsets | None] = {}
        for tp, position in self._positions.items():
            end = self._ends.get(tp)
            buffered = self._buffered.get(tp)
            at: int = position if buffered is None else buffered.next_fetch_offset
            out[tp] = None if end is None else Offsets(at, max(end, at))
        return out

    # -- fetching ----------------------------------------------------------------------------------

    async def fetch(self, timeout_s: float, max_records: int) -> Records:
        """At most ``max_records`` records, in offset order per partition: what is buffered from an
        earlier response, else what the next response brings (each leader without a request in flight
        is sent one), waiting at most ``timeout_s`` for one; {} when none came in time. With one leader
        to ask and nothing in flight (one broker, or partitions that share a leader), the request is
        awaited here, without a task or a timeout: an empty one returns when the broker's wait ends."""
        # What the group's background work could not get past (no authorisation for the group or a
        # topic, its coordination task failed) is raised here, as ``getmany`` raised it: aiokafka holds
        # its group coordination until the error is taken, so a worker that never took it would sit
        # outside its group, silent.
        self._consumer._coordinator.check_errors()
        with self._polling():  # the group's liveness: see `_polling`
            taken = self._take(max_records)
            if taken:
                return taken
            # Nothing buffered: ask.
            await self._reset_out_of_range()
            due = self._due()
            if len(due) == 1 and not self._in_flight:
                ((node_id, offsets),) = due.items()
                self._read(offsets, await self._round_trip(node_id, self._request(offsets)))
            else:
                for node_id, offsets in due.items():
                    task = asyncio.ensure_future(self._round_trip(node_id, self._request(offsets)))
                    self._in_flight[node_id] = _Request(task, offsets)
                await self._first_answer(timeout_s)
            return self._take(max_records)

    async def _first_answer(self, timeout_s: float) -> None:
        """Read the responses of the requests in flight that are answered within ``timeout_s`` (at
        least one unless the time runs out)."""
        if not self._in_flight:  # nothing to fetch from (nothing positioned, or no leader known yet)
            await asyncio.sleep(min(timeout_s, self._retry_backoff_s))
            return
        done, _ = await asyncio.wait(
            [r.task for r in self._in_flight.values()], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        for node_id, request in list(self._in_flight.items()):
            if request.task in done and not request.task.cancelled():
                del self._in_flight[node_id]
                self._read(request.offsets, request.task.result())

    async def close(self) -> None:
        """Cancel the requests in flight (their responses are dropped)."""
        for request in self._in_flight.values():
            request.task.cancel()
        for request in self._in_flight.values():
            with contextlib.suppress(asyncio.CancelledError):
                await request.task
        self._in_flight.clear()

    def _leader(self, tp: TopicPartition) -> int | None:
        node_id: int | None = self._consumer._client.cluster.leader_for_partition(tp)
        return None if node_id is None or node_id < 0 else node_id

    def _due(self) -> dict[int, dict[TopicPartition, int]]:
        """For each leader of a positioned partition that has no request in flight: the offsets to
        fetch its partitions from (those with nothing buffered)."""
        by_node: dict[int, dict[TopicPartition, int]] = {}
        unknown = False
        for tp, offset in self._positions.items():
            if tp in self._buffered or tp in self._to_reset:
                continue
            node_id = self._leader(tp)
            if node_id is None:
                unknown = True
            elif node_id not in self._in_flight:
                by_node.setdefault(node_id, {})[tp] = offset
        if unknown:
            self._consumer._client.force_metadata_update()
        return by_node

    def _request(self, offsets: dict[TopicPartition, int]) -> Any:
        topics: dict[str, list[tuple[int, int, int]]] = {}
        for tp, offset in offsets.items():
            topics.setdefault(tp.topic, []).append((tp.partition, offset, MAX_PARTITION_BYTES))
        return FetchRequest(self.max_wait_ms, 1, MAX_BYTES, READ_COMMITTED, list(topics.items()), rack_id="")

    async def _round_trip(self, node_id: int, request: Any) -> Any:
        try:
            return await self._consumer._client.send(node_id, request)
        except Errors.KafkaError as err:
            log.warning("fetch from node %d failed: %r; again in %.1f s", node_id, err, self._retry_backoff_s)
            self._consumer._client.force_metadata_update()  # the leaders may have moved
            await asyncio.sleep(self._retry_backoff_s)
            return None

    def _read(self, offsets: dict[TopicPartition, int], response: Any) -> None:
        """Buffer the records of each partition of ``response`` still fetched from the offset the
        request named and not buffered already (by another leader's response, after the partition's
        leader moved while both were in flight); its position moves as they are handed out."""
        if response is None:
            return
        version: int = response.API_VERSION
        for topic, partitions in response.topics:
            for partition, error_code, highwater, *data in partitions:
                tp = TopicPartition(topic, partition)
                offset = offsets.get(tp)
                if offset is None or self._positions.get(tp) != offset or tp in self._buffered:
                    continue  # sought, forgotten or fetched since the request left
                error = Errors.for_code(error_code)
                if error is Errors.NoError:
                    self._read_partition(tp, offset, version, highwater, data)
                else:
                    self._partition_error(tp, offset, error)

    def _read_partition(
        self, tp: TopicPartition, offset: int, version: int, highwater: int, data: list[Any]
    ) -> None:
        # After the high watermark: v4+ [last stable offset, (v5+ log start offset), aborted
        # transactions, (v11+ preferred read replica), records] (aiokafka's fetcher reads them so).
        if version >= 11:
            lso, aborted = data[0], data[2]
        elif version >= 4:
            lso, aborted = data[0], data[-2]
        else:
            lso, aborted = -1, None
        self._ends[tp] = lso if lso is not None and lso >= 0 else highwater
        records = kafkarecords.LenientMemoryRecords(data[-1])
        if not records.has_next():
            return
        self._buffered[tp] = PartitionRecords(tp, records, aborted, offset, None, None, True, READ_COMMITTED)

    def _partition_error(self, tp: TopicPartition, offset: int, error: type[Exception]) -> None:
        if error in (Errors.NotLeaderForPartitionError, Errors.UnknownTopicOrPartitionError):
            self._consumer._client.force_metadata_update()
        elif error is Errors.OffsetOutOfRangeError:
            log.warning(
                "%s[%d]: offset %d out of range; fetching from its first offset",
                tp.topic,
                tp.partition,
                offset,
            )
            self._to_reset.add(tp)
        elif error is Errors.TopicAuthorizationFailedError:
            raise Errors.TopicAuthorizationFailedError(tp.topic)
        else:
            log.warning("%s[%d]: fetch answered %s; fetching again", tp.topic, tp.partition, error.__name__)

    async def _reset_out_of_range(self) -> None:
        for tp in list(self._to_reset):
            try:
                await self.seek_to_beginning(tp)
            except Errors.KafkaError as err:
                log.warning("%s[%d]: first offset not found (%r); trying again", tp.topic, tp.partition, err)

    def _take(self, max_records: int) -> Records:
        """Up to ``max_records`` buffered records; a partition whose buffered records are all handed
        out is fetched again from where its response ended (past aborted batches and markers too)."""
        out: Records = {}
        left = max_records
        for tp, partition in list(self._buffered.items()):
            if left <= 0:
                break
            records = list(islice(partition, left))
            if len(records) < left:  # all handed out
                del self._buffered[tp]
                self._positions[tp] = partition.next_fetch_offset
            if records:
                out[tp] = records
                left -= len(records)
        return out


def idle_aiokafka_fetcher(consumer: AIOKafkaConsumer, assigned: Iterable[TopicPartition]) -> None:
    """Keep aiokafka's own fetcher from fetching ``assigned`` (the worker fetches them itself)."""
    consumer.pause(*assigned)
