"""`edgestream dlq ...`: inspect a region's dead letters and replay them to their origin topics.

Both commands read the DLQ read_committed up to the end offsets it has when they start, then stop, so
they terminate while workers keep dead-lettering. ``inspect`` reads from the beginning with no consumer
group and commits nothing. ``replay`` keeps its position in one consumer group per (region, reason),
``edgestream-dlq-replay-<region>-<reason>``: a replay of reason A passes over B's dead letters, and a
group shared by every reason would then hide them from a later replay of B. The re-sent records and
the group's new offsets commit in one Kafka transaction (transactional id = the group's name), so a
dead letter goes back once per reason across repeated runs and crashes, and a concurrent replay of
the same reason fences the older one.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgestream.commands.common import fail, run
from edgestream.commands.topics import Bootstrap
from edgestream.pipeline.contract.deadletter import DeadLetter, MalformedDeadLetter
from edgestream.pipeline.errors import EdgestreamError
from edgestream.pipeline.settings import kafka_settings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from edgestream.pipeline.settings import Kafka

log = logging.getLogger(__name__)
T = TypeVar("T")

app = typer.Typer(help="Inspect a region's dead letters and replay them.", no_args_is_help=True)

EXIT_ERROR: Final = 1
REPLAY_GROUP_PREFIX: Final = "edgestream-dlq-replay-"
"""Replay groups (and transactional ids) are ``edgestream-dlq-replay-<region>-<reason>``."""
DEFAULT_TIMEOUT_MS: Final = 30_000
"""Bound on reading the DLQ to the end offsets seen at start, and on each broker request."""
DEFAULT_LIMIT: Final = 20
"""Entries ``inspect`` shows by default."""

_REASON_RE: Final = re.compile(r"[a-z0-9_]{1,64}")
_FETCH_TIMEOUT_MS: Final = 200
_CLIENT_ID: Final = "edgestream-dlq"
_TABLE_MESSAGE_CHARS: Final = 120


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
    """Consumer group (and transactional id) of the replays of one reason in one region."""
    from edgestream.topics.catalogue import validate_region

    if _REASON_RE.fullmatch(reason) is None:
        raise InvalidReason(reason)
    return f"{REPLAY_GROUP_PREFIX}{validate_region(region)}-{reason}"


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
    """Records passed over, by why: ``reason <code>``, ``malformed``, ``origin not an ingest topic``."""


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


# -- output ----------------------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    fail(message, EXIT_ERROR)


def _bootstrap(option: str | None) -> Kafka:
    from edgestream.commands.topics import resolve_kafka

    return resolve_kafka(option)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return run(coro, EXIT_ERROR)


def _when(ms: int | None, *, with_ms: bool = True) -> str:
    if ms is None:
        return ""
    text = datetime.fromtimestamp(ms / 1000.0, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return (text[:-3] if with_ms else text[:-7]) + "Z"


def _shorten(text: str) -> str:
    return text if len(text) <= _TABLE_MESSAGE_CHARS else text[: _TABLE_MESSAGE_CHARS - 1] + "…"


def _key_text(key: bytes | None) -> str:
    return "" if key is None else key.decode("utf-8", errors="replace")


def _as_json(letter: DeadLetter) -> dict[str, Any]:
    key_text: str | None = None
    if letter.key is not None:
        try:
            key_text = letter.key.decode()
        except UnicodeDecodeError:
            key_text = None
    return {
        "dlq_topic": letter.dlq_topic,
        "dlq_partition": letter.dlq_partition,
        "dlq_offset": letter.dlq_offset,
        "reason": letter.reason,
        "stage": letter.stage,
        "origin_topic": letter.origin_topic,
        "origin_partition": letter.origin_partition,
        "origin_offset": letter.origin_offset,
        "origin_timestamp_ms": letter.origin_timestamp_ms,
        "group_id": letter.group_id,
        "worker_id": letter.worker_id,
        "exception_class": letter.exception_class,
        "message": letter.message,
        "key_id": letter.key_id,
        "attempt": letter.attempt,
        "dead_lettered_at_ms": letter.dead_lettered_at_ms,
        "key": key_text,
        "key_b64": None if letter.key is None else base64.b64encode(letter.key).decode(),
        "value_bytes": len(letter.value),
        "headers": [name for name, _ in letter.origin_headers],
    }


def _summary_table(title: str, found: Inspection) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("reason")
    table.add_column("count", justify="right")
    table.add_column("first (UTC)")
    table.add_column("last (UTC)")
    table.add_column("origin topics")
    by_count = sorted(found.by_reason.items(), key=lambda kv: (-kv[1].count, kv[0]))
    for code, s in by_count:
        origins = ", ".join(f"{t} ({n})" for t, n in s.origins.most_common())
        table.add_row(escape(code), str(s.count), _when(s.first_ms), _when(s.last_ms), escape(origins))
    return table


def _entries_table(title: str, letters: Sequence[DeadLetter]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("dlq offset", "dead-lettered (UTC)", "reason"):
        table.add_column(column)
    table.add_column("origin", overflow="fold")
    table.add_column("worker", overflow="fold")
    table.add_column("attempt", justify="right")
    table.add_column("message", overflow="fold")
    table.add_column("value", justify="right")
    for letter in letters:
        table.add_row(
            f"{letter.dlq_partition}@{letter.dlq_offset}",
            _when(letter.dead_lettered_at_ms, with_ms=False),
            escape(letter.reason),
            escape(letter.origin_position()),
            escape(letter.worker_id),
            str(letter.attempt),
            escape(_shorten(letter.message)),
            f"{len(letter.value)} B",
        )
    return table


Region = Annotated[str, typer.Option("--region", "-r", help="Region whose DLQ to read.", show_default=False)]
TimeoutMs = Annotated[
    int,
    typer.Option("--timeout-ms", min=1, help="Bound on reading the DLQ to its end and on each request."),
]


@app.command()
def inspect(
    region: Region,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Only this reason code.", show_default=False)
    ] = None,
    since_ms: Annotated[
        int | None,
        typer.Option("--since-ms", help="Only dead letters from this unix time (ms) on.", show_default=False),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="Newest entries to show (0: all).")] = (
        DEFAULT_LIMIT
    ),
    bootstrap: Bootstrap = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the entries as JSON lines (one object each), no tables.")
    ] = False,
    timeout_ms: TimeoutMs = DEFAULT_TIMEOUT_MS,
) -> None:
    """Summarise a region's dead letters by reason and list the newest ones.

    Reads the DLQ from the beginning to the end it has now (read_committed, no consumer group).
    """
    from edgestream.topics.catalogue import dlq_topic

    address = _bootstrap(bootstrap)
    found: Inspection = _run(
        inspect_dlq(address, region, reason=reason, since_ms=since_ms, limit=limit, timeout_ms=timeout_ms)
    )
    err = Console(stderr=True)
    for bad in found.malformed:
        err.print(f"[yellow]warning:[/yellow] {escape(str(bad))}", highlight=False, soft_wrap=True)
    if as_json:
        for letter in found.newest:
            typer.echo(json.dumps(_as_json(letter), ensure_ascii=False))
        return
    out = Console()
    matching = sum(s.count for s in found.by_reason.values())
    filters = [f"reason {reason}"] if reason is not None else []
    filters += [f"since {_when(since_ms)}"] if since_ms is not None else []
    shown = f" ({', '.join(filters)})" if filters else ""
    out.print(
        f"{dlq_topic(region)}: {found.total} record(s), {matching} matching{shown}, "
        f"{len(found.malformed)} malformed",
        highlight=False,
    )
    if not matching:
        return
    out.print(_summary_table("Dead letters by reason", found))
    out.print(_entries_table(f"Newest {len(found.newest)}", list(found.newest)))


@app.command("replay")
def replay_(
    region: Region,
    reason: Annotated[
        str,
        typer.Option("--reason", help="Reason code of the dead letters to send back.", show_default=False),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be sent; send and commit nothing.")
    ] = False,
    bootstrap: Bootstrap = None,
    timeout_ms: TimeoutMs = DEFAULT_TIMEOUT_MS,
) -> None:
    """Send a region's dead letters of one reason back to their origin topics, each once.

    The original key, bytes and headers go back with ``edgestream.replayed-from`` and the attempt count
    plus one. Progress is kept in the consumer group edgestream-dlq-replay-<region>-<reason>, committed
    in the same transaction as the re-sent records, so running it again sends only newer dead letters.
    """
    report: ReplayReport = _run(
        replay(_bootstrap(bootstrap), region, reason, dry_run=dry_run, timeout_ms=timeout_ms)
    )
    out = Console()
    verb = "would send" if dry_run else "sent"
    if report.sent:
        table = Table(title=f"{verb.capitalize()} to origin topics", title_justify="left")
        for column in ("dead letter", "to", "key", "value", "attempt"):
            table.add_column(column)
        for letter in report.sent:
            table.add_row(
                escape(letter.dlq_position()),
                escape(letter.origin_topic),
                escape(_key_text(letter.key)),
                f"{len(letter.value)} B",
                f"{letter.attempt} -> {letter.attempt + 1}",
            )
        out.print(table)
    skipped = ", ".join(f"{why}: {n}" for why, n in sorted(report.skipped.items()))
    out.print(
        f"{verb} {len(report.sent)}, skipped {sum(report.skipped.values())}"
        + (f" ({skipped})" if skipped else "")
        + f"; group {report.group_id}"
        + (" (dry run: nothing sent or committed)" if dry_run else ""),
        highlight=False,
    )
