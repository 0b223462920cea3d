"""DLQ inspection and replay: read a region's dead letters, and send those of one reason back to their
origin topics.

Both read the DLQ read_committed up to the end offsets it has when they start, then stop, so they
terminate while workers keep dead-lettering. :func:`inspect_dlq` reads from the beginning with no
consumer group and commits nothing. :func:`replay` keeps its position in one consumer group per
(region, reason), :func:`replay_group`: a replay of reason A passes over B's dead letters, and a group
shared by every reason would then hide them from a later replay of B. The re-sent records and the
group's new offsets commit in one Kafka transaction (transactional id = the group's name), so a dead
letter goes back once per reason across repeated runs and crashes, and a concurrent replay of the same
reason fences the older one.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from edgestream.pipeline.contract.deadletter import DeadLetter, MalformedDeadLetter
from edgestream.pipeline.errors import EdgestreamError
from edgestream.pipeline.settings import kafka_settings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from edgestream.pipeline.settings import Kafka

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS: Final = 30_000
"""Bound on reading the DLQ to the end offsets seen at start, and on each broker request."""

_REASON_RE: Final = re.compile(r"[a-z0-9_]{1,64}")
_FETCH_TIMEOUT_MS: Final = 200
_CLIENT_ID: Final = "edgestream-dlq"


class InvalidReason(EdgestreamError):
    """A reason code that cannot name a replay group: lowercase letters, digits and '_' only."""

    reason = "bad_reason"

    def __init__(self, reason_code: str) -> None:
        super().__init__(f"invalid reason code {reason_code!r}: use lowercase letters, digits and '_'")
        self.reason_code = reason_code


class DlqReadTimeout(EdgestreamError):
    """The DLQ was not read up to the end offsets seen at start within the time allowed."""

    reason = "dlq_timeout"
    retriable = True

    def __init__(self, topic: str, timeout_ms: int) -> None:
        super().__init__(f"{topic} was not read to its end within {timeout_ms} ms")
        self.topic = topic
        self.timeout_ms = timeout_ms


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


async def _partitions(kafka: Kafka, topic: str, timeout_ms: int) -> list[TopicPartition]:
    """The topic's partitions as the broker has them; `TopicsNotFound` when it is missing."""
    from aiokafka import TopicPartition

    from edgestream.topics.admin import describe_topics

    (description,) = await describe_topics(kafka, [topic], timeout_ms=timeout_ms)
    return [TopicPartition(topic, p) for p in range(description.partitions)]


async def _seek_start(consumer: AIOKafkaConsumer, tp: TopicPartition, group_id: str | None) -> None:
    committed = await consumer.committed(tp) if group_id is not None else None
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
    kafka: Kafka,
    region: str,
    *,
    group_id: str | None = None,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> AsyncIterator[DlqBatch]:
    """Read a region's DLQ up to the end offsets it has when the call starts, then stop.

    read_committed: aborted worker transactions are never seen, and the end offsets are the last stable
    ones. Without ``group_id`` it reads from the beginning and commits nothing; with one it starts at the
    group's committed offsets (the caller commits `DlqBatch.next_offset`). Records that arrive meanwhile
    are left for the next call. `DlqReadTimeout` if the end is not reached within ``timeout_ms``.
    """
    from aiokafka import AIOKafkaConsumer

    from edgestream.topics.catalogue import dlq_topic

    topic = dlq_topic(region)
    tps = await _partitions(kafka, topic, timeout_ms)
    consumer = AIOKafkaConsumer(
        **kafka_settings(kafka).client_kwargs(),
        group_id=group_id,
        client_id=_CLIENT_ID,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        request_timeout_ms=timeout_ms,
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        for tp in tps:
            await _seek_start(consumer, tp, group_id)
        pending = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        consumer.pause(*(set(tps) - pending))
        deadline_s = time.monotonic() + timeout_ms / 1000.0
        while pending:
            if time.monotonic() >= deadline_s:
                raise DlqReadTimeout(topic, timeout_ms)
            fetched = await consumer.getmany(*pending, timeout_ms=_FETCH_TIMEOUT_MS)
            for tp in sorted(pending, key=lambda t: t.partition):
                end = ends[tp]
                next_offset = min(await consumer.position(tp), end)
                if next_offset >= end:
                    pending.discard(tp)
                    consumer.pause(tp)
                if tp in fetched:
                    records = [r for r in fetched[tp] if r.offset < end]
                    yield DlqBatch(tp, [_parse(r) for r in records], next_offset)
    finally:
        await consumer.stop()


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
        for letter in letters:
            await producer.send(
                letter.origin_topic, letter.value, key=letter.key, headers=letter.replay_headers()
            )
        await producer.send_offsets_to_transaction({batch.tp: batch.next_offset}, group_id)
    for letter in letters:
        log.debug("replayed %s to %s", letter.dlq_position(), letter.origin_topic)


async def replay(
    kafka: Kafka,
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
    from aiokafka import AIOKafkaProducer

    group_id = replay_group(region, reason)
    report = ReplayReport(group_id)
    producer: AIOKafkaProducer | None = None
    if not dry_run:
        producer = AIOKafkaProducer(
            **kafka_settings(kafka).client_kwargs(),
            client_id=_CLIENT_ID,
            transactional_id=group_id,
            enable_idempotence=True,
            acks="all",
            request_timeout_ms=timeout_ms,
        )
        await producer.start()
    try:
        if producer is not None:
            # Initialise the transactional id (fencing an older replayer, whose open transaction the
            # broker aborts) before the group's committed offsets are read.
            async with producer.transaction():
                pass
        async for batch in read_dlq(kafka, region, group_id=group_id, timeout_ms=timeout_ms):
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
    kafka: Kafka,
    region: str,
    *,
    reason: str | None,
    since_ms: int | None,
    limit: int,
    timeout_ms: int,
) -> Inspection:
    """Read the whole DLQ once; keep counts for every match and the newest ``limit`` (0: all) entries."""
    found = Inspection(newest=deque(maxlen=limit or None))
    async for batch in read_dlq(kafka, region, timeout_ms=timeout_ms):
        for letter in batch.letters:
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
