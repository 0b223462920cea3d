"""`edgestream devices ...`: enrol devices in the key file, list them, forget one (erasure by key).

An enrolled device's key derives from its region's master key *and* a secret random salt of its own
kept in the key file. ``forget`` deletes that salt (crypto-shredding): from then on no one can derive
the device's key, so every envelope of it still retained in Kafka is unreadable, and the edge refuses
its new ones as ``forgotten_device``. To say what that covered, ``forget`` then reads the region's
ingest topics (read_uncommitted: what devices wrote) and its DLQ (read_committed) from the beginning to
the end offsets they have when it starts, with no consumer group, and counts the records keyed by the
device by topic and key id. Devices never enrolled derive their key from the master key alone: only
retiring the key ids they used erases them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final, Literal, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgestream.commands.common import utc
from edgestream.commands.keys import DEFAULT_KEY_FILE, KeyFile
from edgestream.commands.topics import Bootstrap
from edgestream.pipeline.errors import ContractError, EdgestreamError

if TYPE_CHECKING:
    from aiokafka import TopicPartition

    from edgestream.pipeline.settings import Kafka

app = typer.Typer(
    help="Devices' own keys: enrol (a secret salt each), list, forget (erase every envelope of one).",
    no_args_is_help=True,
)

EXIT_ERROR: Final = 1
DEFAULT_TIMEOUT_MS: Final = 30_000
"""Bound on each broker request, and on reading a topic for that long without getting a record."""
MAX_SCANNED_ENVELOPE_BYTES: Final = 64 << 20
"""Records larger than this are counted as undecodable, not parsed (the broker's limit is far lower)."""

_FETCH_TIMEOUT_MS: Final = 200
_CLIENT_ID: Final = "edgestream-devices"

_out = Console(highlight=False, soft_wrap=True)
_err = Console(stderr=True, highlight=False, soft_wrap=True)

Region = Annotated[str, typer.Option("--region", "-r", help="The device's region.", show_default=False)]
DeviceId = Annotated[str, typer.Argument(help="The device id (its Kafka key).", show_default=False)]


class RetainedScanTimeout(EdgestreamError):
    """Reading a topic up to the end offsets seen at start got no record for the time allowed."""

    reason = "scan_timeout"
    retriable = True

    def __init__(self, topic: str, timeout_ms: int) -> None:
        super().__init__(f"{topic} gave no record for {timeout_ms} ms before its end was read")
        self.topic = topic
        self.timeout_ms = timeout_ms


# -- what Kafka still holds of a device ------------------------------------------------------------


@dataclass(slots=True)
class TopicRetained:
    """The records of one device that one topic still holds."""

    topic: str
    """The topic."""
    retention_ms: int | None
    """Its ``retention.ms`` on the broker; None: kept forever (or not reported)."""
    envelopes: int = 0
    """Records keyed by the device whose value decodes as an envelope sealed by it."""
    key_ids: Counter[int] = field(default_factory=Counter)
    """Those envelopes by the master key id they name."""
    undecodable: int = 0
    """Records keyed by the device whose value is not an envelope (counted, not opened)."""
    other_device: int = 0
    """Records keyed by the device whose envelope names another device (its key is not the one erased)."""
    newest_ms: int | None = None
    """Kafka timestamp of the newest of its envelopes here: the last to expire."""


@dataclass(slots=True)
class Retained:
    """What the region's ingest topics and DLQ hold of one device, as read by `retained_envelopes`."""

    region: str
    """The region."""
    device_id: str
    """The device."""
    topics: list[TopicRetained]
    """Ingest topics (one per kind), then the DLQ."""

    @property
    def envelopes(self) -> int:
        """Its envelopes in every topic."""
        return sum(t.envelopes for t in self.topics)

    @property
    def topics_holding(self) -> int:
        """Topics that hold at least one of its envelopes."""
        return sum(1 for t in self.topics if t.envelopes)


async def retained_envelopes(
    kafka: Kafka, region: str, device_id: str, *, timeout_ms: int = DEFAULT_TIMEOUT_MS
) -> Retained:
    """Count the records keyed by ``device_id`` in ``region``'s ingest topics and DLQ, by topic and by
    the key id their envelopes name.

    Each topic is read from its log start to the end offsets it has when the call starts (ingest
    read_uncommitted, the DLQ read_committed), with no consumer group; nothing is committed. Raises
    `TopicsNotFound` for a missing topic and `RetainedScanTimeout` when a read makes no progress for
    ``timeout_ms`` (a long topic takes as long as it takes: about 25,000 records/s on one broker).
    """
    from edgestream.topics.admin import describe_topics
    from edgestream.topics.catalogue import KINDS, RETENTION_MS, dlq_topic, ingest_topic

    ingest = [ingest_topic(region, kind) for kind in KINDS]
    dlq = dlq_topic(region)
    descriptions = await describe_topics(kafka, [*ingest, dlq], timeout_ms=timeout_ms)
    found = {d.name: TopicRetained(d.name, _retention_ms(d.configs.get(RETENTION_MS))) for d in descriptions}
    partitions = {d.name: d.partitions for d in descriptions}
    key = device_id.encode()
    await asyncio.gather(
        _scan(kafka, {t: partitions[t] for t in ingest}, "read_uncommitted", key, found, timeout_ms),
        _scan(kafka, {dlq: partitions[dlq]}, "read_committed", key, found, timeout_ms),
    )
    return Retained(region, device_id, [found[t] for t in (*ingest, dlq)])


def _retention_ms(value: str | None) -> int | None:
    try:
        ms = int(value) if value is not None else -1
    except ValueError:
        return None
    return ms if ms >= 0 else None


async def _scan(
    kafka: Kafka,
    partitions: dict[str, int],
    isolation_level: Literal["read_committed", "read_uncommitted"],
    key: bytes,
    found: dict[str, TopicRetained],
    timeout_ms: int,
) -> None:
    """Read ``partitions`` (topic -> count) from the beginning to their end offsets now; tally ``key``'s."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from edgestream.pipeline.settings import kafka_settings

    tps = [TopicPartition(topic, p) for topic, count in partitions.items() for p in range(count)]
    consumer = AIOKafkaConsumer(
        **kafka_settings(kafka).client_kwargs(),
        group_id=None,
        client_id=_CLIENT_ID,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation_level,
        request_timeout_ms=timeout_ms,
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        positions = {tp: await consumer.position(tp) for tp in tps}
        pending = {tp for tp in tps if positions[tp] < ends[tp]}
        consumer.pause(*(set(tps) - pending))
        deadline_s = time.monotonic() + timeout_ms / 1000.0
        while pending:
            if time.monotonic() >= deadline_s:
                raise RetainedScanTimeout(min(pending, key=_order).topic, timeout_ms)
            fetched = await consumer.getmany(*pending, timeout_ms=_FETCH_TIMEOUT_MS)
            for tp, records in fetched.items():
                for record in records:
                    if record.offset < ends[tp] and record.key == key:
                        _tally(found[tp.topic], key, record.value, record.timestamp)
            for tp in sorted(pending, key=_order):
                position = await consumer.position(tp)
                if position != positions[tp]:  # progress (aborted records too): the bound starts again
                    positions[tp] = position
                    deadline_s = time.monotonic() + timeout_ms / 1000.0
                if position >= ends[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
    finally:
        await consumer.stop()


def _order(tp: TopicPartition) -> tuple[str, int]:
    return tp.topic, tp.partition


def _tally(topic: TopicRetained, key: bytes, value: bytes | None, timestamp_ms: int) -> None:
    from edgestream.pipeline.contract.envelope import decode_envelope

    try:
        envelope = decode_envelope(value or b"", max_envelope_bytes=MAX_SCANNED_ENVELOPE_BYTES)
    except ContractError:
        topic.undecodable += 1
        return
    if envelope.device_id.encode() != key:
        topic.other_device += 1
        return
    topic.envelopes += 1
    topic.key_ids[envelope.key_id] += 1
    topic.newest_ms = timestamp_ms if topic.newest_ms is None else max(topic.newest_ms, timestamp_ms)


# -- commands --------------------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    _err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(EXIT_ERROR)


def _time(ms: int | None) -> str:
    return utc(ms)


def _duration(ms: int | None) -> str:
    if ms is None:
        return "forever"
    for unit_ms, unit in ((86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1000, "s")):
        if ms >= unit_ms and ms % unit_ms == 0:
            return f"{ms // unit_ms} {unit}"
    return f"{ms} ms"


def _write_key_out(path: Path, document: dict[str, object]) -> None:
    """Write the device's provisioning file: private (0600), never over an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        _fail(f"cannot create {path}: {e}")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(document, indent=2) + "\n")


@app.command()
def enroll(
    device_id: DeviceId,
    region: Region,
    path: KeyFile = DEFAULT_KEY_FILE,
    key_out: Annotated[
        Path | None,
        typer.Option(
            "--key-out",
            help="Write the device's key and key id to this new file (JSON, mode 0600) to provision it.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
) -> None:
    """Enrol DEVICE_ID in REGION: a secret salt of its own, so it can be forgotten later. Idempotent."""
    from edgestream.pipeline.errors import ConfigError
    from edgestream.pipeline.security import keyfile

    try:
        ring = keyfile.load(path, cache_entries=0)
        key_id = ring.current_key_id(region)
        before = ring.enrolment(region, device_id)
        key = keyfile.enroll(path, region, device_id, key_id=key_id)
    except ConfigError as e:
        _fail(str(e))
    shown = escape(device_id)
    if before is None:
        _out.print(f"{region}: device {shown} enrolled; it seals with key id {key_id}")
    else:
        _out.print(f"{region}: device {shown} was enrolled already (its key is unchanged); key id {key_id}")
    if key_out is not None:
        _write_key_out(
            key_out, {"region": region, "device_id": device_id, "key_id": key_id, "key": key.hex()}
        )
        _out.print(f"wrote its device key to {key_out}")
    else:
        _out.print("its device key was not written anywhere: run again with --key-out FILE to provision it")


@app.command("list")
def list_devices(region: Region, path: KeyFile = DEFAULT_KEY_FILE) -> None:
    """The devices enrolled in REGION, forgotten ones too (never their salts)."""
    from edgestream.pipeline.errors import ConfigError
    from edgestream.pipeline.security import keyfile

    try:
        ring = keyfile.load(path, cache_entries=0)
        ring.current_key_id(region)  # an unknown region fails here, not as an empty list
    except ConfigError as e:
        _fail(str(e))
    devices = ring.devices(region)
    table = Table(title=f"devices of {region} in {path}", title_justify="left")
    for column in ("device", "state", "enrolled", "forgotten"):
        table.add_column(column)
    for device_id, entry in devices.items():
        table.add_row(
            escape(device_id),
            "forgotten" if entry.forgotten else "enrolled",
            _time(entry.enrolled_at_ms),
            _time(entry.forgotten_at_ms),
            style="dim" if entry.forgotten else None,
        )
    _out.print(table)
    forgotten = sum(entry.forgotten for entry in devices.values())
    _out.print(
        f"{len(devices) - forgotten} enrolled, {forgotten} forgotten; a device not listed derives its key "
        "from the master key alone and cannot be forgotten"
    )


@app.command()
def forget(
    device_id: DeviceId,
    region: Region,
    path: KeyFile = DEFAULT_KEY_FILE,
    bootstrap: Bootstrap = None,
    timeout_ms: Annotated[
        int,
        typer.Option("--timeout-ms", min=1, help="Bound on each request and on a read that gets no record."),
    ] = DEFAULT_TIMEOUT_MS,
) -> None:
    """Forget DEVICE_ID of REGION: delete its salt, so none of its envelopes can be opened again.

    Then counts the envelopes of it the region's ingest topics and DLQ still hold (no consumer group).
    """
    from aiokafka.errors import KafkaError

    from edgestream.commands.topics import resolve_kafka
    from edgestream.pipeline.errors import ConfigError
    from edgestream.pipeline.security import keyfile

    try:
        before = keyfile.load(path, cache_entries=0).enrolment(region, device_id)
        tombstone = keyfile.forget(path, region, device_id)
    except ConfigError as e:
        _fail(str(e))
    shown = escape(device_id)
    when = _time(tombstone.forgotten_at_ms)
    if before is not None and before.forgotten:
        _out.print(f"{region}: device {shown} was forgotten already, at {when}")
    else:
        _out.print(f"{region}: device {shown} forgotten at {when}: its salt is deleted from {path}")
    kafka = resolve_kafka(bootstrap)
    try:
        retained = asyncio.run(retained_envelopes(kafka, region, device_id, timeout_ms=timeout_ms))
    except (EdgestreamError, KafkaError) as err:
        problem = str(err) if isinstance(err, EdgestreamError) else f"{type(err).__name__}: {err}"
        _fail(
            f"device {device_id!r} is forgotten, but its retained envelopes could not be counted: {problem}"
        )
    _out.print(_retained_table(retained))
    _out.print(
        f"device {shown} forgotten: {retained.envelopes} envelopes in {retained.topics_holding} topics are "
        "now unreadable (retained until their topic's retention expires)"
    )
    odd = sum(t.undecodable + t.other_device for t in retained.topics)
    if odd:
        _out.print(f"{odd} further record(s) keyed by it are not its envelopes (see the table)")
    _out.print(
        "[dim]its results and audit records are not sealed with its key: they stay readable until their "
        "topics' retention expires[/dim]"
    )


def _retained_table(retained: Retained) -> Table:
    table = Table(title=f"envelopes of {escape(retained.device_id)} still in Kafka", title_justify="left")
    table.add_column("topic")
    table.add_column("envelopes", justify="right")
    table.add_column("by key id")
    table.add_column("newest (UTC)")
    table.add_column("retention", justify="right")
    table.add_column("not envelopes", justify="right")
    table.add_column("sealed as another device", justify="right")
    for t in retained.topics:
        by_key_id = ", ".join(f"{kid}: {n}" for kid, n in sorted(t.key_ids.items())) or "-"
        table.add_row(
            t.topic,
            str(t.envelopes),
            by_key_id,
            _time(t.newest_ms),
            _duration(t.retention_ms),
            str(t.undecodable),
            str(t.other_device),
        )
    return table
