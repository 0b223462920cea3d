"""Erasure by key: forget an enrolled device (delete its salt) and count what Kafka still holds of it.

An enrolled device's key derives from its region's master key *and* a secret random salt of its own
kept in the key file. :func:`forget_device` deletes that salt (crypto-shredding): from then on no one
can derive the device's key, so every envelope of it still retained in Kafka is unreadable, and the
edge refuses its new ones as ``forgotten_device``. To say what that covered, :func:`retained_envelopes`
reads the region's ingest topics (read_uncommitted: what devices wrote) and its DLQ (read_committed)
from the beginning to the end offsets they have when it starts, with no consumer group, and counts the
records keyed by the device by topic and key id. Devices never enrolled derive their key from the
master key alone: only retiring the key ids they used erases them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from edgestream.pipeline import kafka
from edgestream.pipeline.errors import ContractError

if TYPE_CHECKING:
    from pathlib import Path

    from edgestream.pipeline.security.keyring import Enrolment
    from edgestream.pipeline.settings import KafkaSettings

DEFAULT_TIMEOUT_MS: Final = 30_000
"""Bound on each broker request, and on reading a topic for that long without getting a record."""
MAX_SCANNED_ENVELOPE_BYTES: Final = 64 << 20
"""Records larger than this are counted as undecodable, not parsed (the broker's limit is far lower)."""

_CLIENT_ID: Final = "edgestream-devices"


# -- forgetting ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Forgotten:
    """A device's tombstone in the key file, and whether it was forgotten before this call."""

    tombstone: Enrolment
    """The tombstone: when its salt was deleted."""
    already: bool
    """It was forgotten before: the tombstone is the earlier one and nothing changed."""


def forget_device(path: Path, region: str, device_id: str) -> Forgotten:
    """Delete the salt of ``device_id`` of ``region`` from the key file at ``path`` (idempotent).

    Raises ConfigError for a bad key file, an unknown region, or a device never enrolled."""
    from edgestream.pipeline.security import keyfile

    before = keyfile.load(path, cache_entries=0).enrolment(region, device_id)
    tombstone = keyfile.forget(path, region, device_id)
    return Forgotten(tombstone, before is not None and before.forgotten)


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
    kafka: KafkaSettings, region: str, device_id: str, *, timeout_ms: int = DEFAULT_TIMEOUT_MS
) -> Retained:
    """Count the records keyed by ``device_id`` in ``region``'s ingest topics and DLQ, by topic and by
    the key id their envelopes name.

    Each topic is read from its log start to the end offsets it has when the call starts (ingest
    read_uncommitted, the DLQ read_committed), with no consumer group; nothing is committed. Raises
    `TopicsNotFound` for a missing topic and `KafkaTimeout` when a read makes no progress for
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
    connection: KafkaSettings,
    partitions: dict[str, int],
    isolation_level: Literal["read_committed", "read_uncommitted"],
    key: bytes,
    found: dict[str, TopicRetained],
    timeout_ms: int,
) -> None:
    """Read ``partitions`` (topic -> count) from the beginning to their end offsets now; tally ``key``'s."""

    tps = kafka.partitions(partitions.items())
    client = kafka.consumer(
        connection, _CLIENT_ID, isolation_level=isolation_level, request_timeout_ms=timeout_ms
    )
    async with kafka.started(client) as consumer:
        async for record in kafka.read_to_end(consumer, tps, timeout_ms=timeout_ms, idle=True):
            if record.key == key:
                _tally(found[record.topic], key, record.value, record.timestamp)


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
