"""DLQ inspection and replay: read a region's dead letters, and send those of one reason back to their
origin topics.

Both read the DLQ read_committed up to the end offsets it has when they start, then stop, so they
terminate while workers keep dead-lettering. :func:`inspect_dlq` reads from the beginning with no
consumer group and commits nothing (``pipeline.kafka.read_all``). :func:`replay` keeps its position
in one consumer group per (region, reason), :func:`replay_group`: a replay of reason A passes over B's
dead letters, and a group shared by every reason would then hide them from a later replay of B. The
re-sent records and the group's new offsets commit in one Kafka transaction (transactional id = the
group's name), so a dead letter goes back once per reason across repeated runs and crashes, and a
concurrent replay of the same reason fences the older one.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from edgestream.pipeline import kafka
from edgestream.pipeline.contract.deadletter import DeadLetter, MalformedDeadLetter
from edgestream.pipeline.errors import EdgestreamError, KafkaTimeout

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from edgestream.pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS: Final = 30_000
"""Bound on reading the DLQ to the end offsets seen at start, and on each broker request."""

_REASON_RE: Final = re.compile(r"[a-z0-9_]{1,64}")
_CLIENT_ID: Final = "edgestream-dlq"


class InvalidReason(EdgestreamError):
    """A reason code that cannot name a replay group: lowercase letters, digits and '_' only."""

    reason = "bad_reason"

    def __init__(self, reason_code: str) -> None:
        super().__init__(f"invalid reason code {reason_code!r}: use lowercase letters, digits and '_'")
        self.reason_code = reason_code


# -- reading the DLQ -------------------------------------------------------------------------------


def replay_group(region: str, reason: str) -> str:
    """Consumer group (and transactional id) of the replays of one reason in one region:
    ``dlq_replay_group_prefix(region)`` then the reason."""
    from edgestream.topics.catalogue import dlq_replay_group_prefix

    if _REASON_RE.fullmatch(reason) is None:
        raise InvalidReason(reason)
    return f"{dlq_replay_group_prefix(region)}{reason}"


@dataclass(slots=True)
class DlqBatch:
    """Records of one DLQ partition from one fetch, all below the end offset seen at start."""

    tp: TopicPartition
    """The DLQ partition."""
    letters: list[DeadLetter | MalformedDeadLetter]
    """Each record parsed, or why it could not be, in offset order."""
    next_offset: int
    """The partition's position after this batch, never past the end offset: what replay commits."""


async def _partitions(connection: KafkaSettings, topic: str, timeout_ms: int) -> list[TopicPartition]:
    """The topic's partitions as the broker has them; `TopicsNotFound` when it is missing."""
    from edgestream.topics.admin import describe_topics

    (description,) = await describe_topics(connection, [topic], timeout_ms=timeout_ms)
    return kafka.partitions([(topic, description.partitions)])


async def _seek_start(consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
    committed = await consumer.committed(tp)
    if committed is None:
        await consumer.seek_to_beginning(tp)
    else:
        consumer.seek(tp, committed)


def _parse(record: Any) -> DeadLetter | MalformedDeadLetter:
    try:
        return DeadLetter.from_record(record)
    except MalformedDeadLetter as err:
        return err


async def read_dlq(
    connection: KafkaSettings,
    region: str,
    *,
    group_id: str,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> AsyncGenerator[DlqBatch, None]:
    """Read a region's DLQ from ``group_id``'s committed offsets (the beginning where it has none) up to
    the end offsets it has when the call starts, then stop; the caller commits `DlqBatch.next_offset`.

    read_committed: aborted worker transactions are never seen, and the end offsets are the last stable
    ones. Records that arrive meanwhile are left for the next call. `KafkaTimeout` if the end is not
    reached within ``timeout_ms``.
    """
    from edgestream.topics.catalogue import dlq_topic

    topic = dlq_topic(region)
    tps = await _partitions(connection, topic, timeout_ms)
    client = kafka.consumer(connection, _CLIENT_ID, group_id=group_id, request_timeout_ms=timeout_ms)
    async with kafka.started(client) as consumer:
        consumer.assign(tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        for tp in tps:
            await _seek_start(consumer, tp)
        pending = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        consumer.pause(*(set(tps) - pending))
        deadline_s = time.monotonic() + timeout_ms / 1000.0
        while pending:
            if time.monotonic() >= deadline_s:
                raise KafkaTimeout(topic, timeout_ms)
            fetched = await consumer.getmany(*pending, timeout_ms=kafka.FETCH_WAIT_MS)
            for tp in sorted(pending, key=lambda t: t.partition):
                end = ends[tp]
                next_offset = min(await consumer.position(tp), end)
                if next_offset >= end:
                    pending.discard(tp)
                    consumer.pause(tp)
                if tp in fetched:
                    records = [r for r in fetched[tp] if r.offset < end]
                    yield DlqBatch(tp, [_parse(r) for r in records], next_offset)


# -- replay ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class ReplayReport:
    """What a replay sent and passed over."""

    group_id: str
    """The replay group whose position it used (and, unless a dry run, advanced)."""
    sent: list[DeadLetter] = field(default_factory=list)
    """Dead letters sent back to their origin topic (in a dry run: that would have been)."""
    skipped: Counter[str] = field(default_factory=Counter)
    """Records passed over, by why: ``reason <code>``, ``malformed``, ``origin not an ingest topic``,
    ``truncated: not the record as received`` (a dead letter cut to fit the producer's limit)."""


def _is_region_ingest(topic_name: str, region: str) -> bool:
    """Replay writes only to the region's own ingest topics, whatever a header says."""
    from edgestream.topics.catalogue import INGEST, is_catalogue_topic, parse_topic

    if not is_catalogue_topic(topic_name):
        return False
    topic = parse_topic(topic_name)
    return topic.spec is INGEST and topic.region == region


def _choose(batch: DlqBatch, region: str, reason: str, report: ReplayReport) -> list[DeadLetter]:
    chosen = []
    for letter in batch.letters:
        if isinstance(letter, MalformedDeadLetter):
            log.warning("skipped: %s", letter)
            report.skipped["malformed"] += 1
        elif letter.reason != reason:
            report.skipped[f"reason {letter.reason}"] += 1
        elif not letter.replayable:
            log.warning(
                "not replayed %s: truncated (%s cut; the original was %s bytes, sha256 %s)",
                letter.dlq_position(),
                ",".join(letter.truncated),
                letter.original_size,
                letter.original_sha256,
            )
            report.skipped["truncated: not the record as received"] += 1
        elif not _is_region_ingest(letter.origin_topic, region):
            log.warning(
                "skipped %s: origin %s is not an ingest topic of %s",
                letter.dlq_position(),
                letter.origin_topic,
                region,
            )
            report.skipped["origin not an ingest topic"] += 1
        else:
            chosen.append(letter)
    return chosen


async def _send_in_transaction(
    producer: AIOKafkaProducer, group_id: str, batch: DlqBatch, letters: Sequence[DeadLetter]
) -> None:
    """Re-send ``letters`` and commit the group past ``batch``, atomically."""
    async with producer.transaction():
        deliveries = [
            await producer.send(
                letter.origin_topic, letter.value, key=letter.key, headers=letter.replay_headers()
            )
            for letter in letters
        ]
        await producer.send_offsets_to_transaction({batch.tp: batch.next_offset}, group_id)
        await kafka.delivered(deliveries)  # a letter refused for good aborts the batch's transaction
    for letter in letters:
        log.debug("replayed %s to %s", letter.dlq_position(), letter.origin_topic)


async def replay(
    connection: KafkaSettings,
    region: str,
    reason: str,
    *,
    dry_run: bool = False,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> ReplayReport:
    """Send the region's dead letters of one reason back to their origin ingest topics, once each.

    Each fetched batch is one transaction: the re-sent records (key, original value, original headers,
    `REPLAYED_FROM` and the next `DELIVERY_ATTEMPT`) and the `replay_group`'s offset past the batch. A
    dry run reads from the group's position and sends and commits nothing.
    """
    group_id = replay_group(region, reason)
    report = ReplayReport(group_id)
    producer: AIOKafkaProducer | None = None
    if not dry_run:
        producer = kafka.producer(
            connection, _CLIENT_ID, transactional_id=group_id, request_timeout_ms=timeout_ms
        )
        await producer.start()
    try:
        if producer is not None:
            # Initialise the transactional id (fencing an older replayer, whose open transaction the
            # broker aborts) before the group's committed offsets are read.
            async with producer.transaction():
                pass
        # Closed on the way out, so that a batch whose transaction fails stops the reader's consumer
        # before the error leaves (it was left to the loop's shutdown, which closed its connections late).
        async with contextlib.aclosing(
            read_dlq(connection, region, group_id=group_id, timeout_ms=timeout_ms)
        ) as batches:
            async for batch in batches:
                letters = _choose(batch, region, reason, report)
                if producer is not None:
                    await _send_in_transaction(producer, group_id, batch, letters)
                report.sent.extend(letters)
    finally:
        if producer is not None:
            await producer.stop()
    return report


# -- inspect ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class ReasonSummary:
    """Dead letters of one reason code."""

    count: int = 0
    """How many."""
    first_ms: int | None = None
    """Earliest dead-lettered-at, unix ms."""
    last_ms: int | None = None
    """Latest dead-lettered-at, unix ms."""
    origins: Counter[str] = field(default_factory=Counter)
    """Origin topics, with counts."""

    def add(self, letter: DeadLetter) -> None:
        """Count one dead letter."""
        at_ms = letter.dead_lettered_at_ms
        self.count += 1
        self.first_ms = at_ms if self.first_ms is None else min(self.first_ms, at_ms)
        self.last_ms = at_ms if self.last_ms is None else max(self.last_ms, at_ms)
        self.origins[letter.origin_topic] += 1


@dataclass(slots=True)
class Inspection:
    """What ``inspect`` found: a summary by reason and the newest matching entries."""

    by_reason: dict[str, ReasonSummary] = field(default_factory=dict)
    """Matching dead letters by reason code."""
    newest: deque[DeadLetter] = field(default_factory=deque)
    """The newest matching dead letters, in DLQ order, at most the limit."""
    malformed: list[MalformedDeadLetter] = field(default_factory=list)
    """Records on the DLQ that are not edgestream dead letters."""
    total: int = 0
    """Records read."""


async def inspect_dlq(
    connection: KafkaSettings,
    region: str,
    *,
    reason: str | None,
    since_ms: int | None,
    limit: int,
    timeout_ms: int,
) -> Inspection:
    """Read the whole DLQ once; keep counts for every match and the newest ``limit`` (0: all) entries."""
    from edgestream.topics.catalogue import dlq_topic

    tps = await _partitions(connection, dlq_topic(region), timeout_ms)
    records = await kafka.read_all(
        connection,
        tps,
        client_id=_CLIENT_ID,
        timeout_ms=timeout_ms,
        request_timeout_ms=timeout_ms,
    )
    found = Inspection(newest=deque(maxlen=limit or None))
    for letter in map(_parse, records):
        found.total += 1
        if isinstance(letter, MalformedDeadLetter):
            found.malformed.append(letter)
            continue
        if reason is not None and letter.reason != reason:
            continue
        if since_ms is not None and letter.dead_lettered_at_ms < since_ms:
            continue
        found.by_reason.setdefault(letter.reason, ReasonSummary()).add(letter)
        found.newest.append(letter)
    return found
