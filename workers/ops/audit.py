"""Audit chain verification: read a region's committed chain heads and audit records, and check the
tamper-evident hash chains.

:func:`read_audit_log` reads the committed chain heads first (the offset commit metadata of the
region's edge group), then the audit topic read_committed from its beginning to the end offsets it has
then; :func:`verify_audit_log` runs ``pipeline.serving.auditchain.verify`` on them (docs/contract.md,
"Audit chain"). Heads first: a head commits in the same transaction as the records it names, so those
records lie below end offsets read afterwards. Nothing is committed and no consumer group is joined.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from edgestream.pipeline import kafka
from edgestream.pipeline.serving.auditchain import ChainHead, MalformedChainHead, chain_id
from edgestream.pipeline.serving.auditverify import ChainReport, Position, verify

if TYPE_CHECKING:
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from edgestream.pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS: Final = 30_000
"""Bound on reading the audit topic to its end offsets, and on each broker request."""

_CLIENT_ID: Final = "edgestream-audit"
_FIRST_BACKOFF_S: Final = 0.05
_MAX_BACKOFF_S: Final = 1.0


@dataclass(slots=True)
class AuditLog:
    """An audit topic as read for verification, with the committed heads of its chains."""

    topic: str
    """The audit topic read."""
    group_id: str
    """The edge group whose committed offset metadata gave the heads."""
    entries: list[tuple[Position, bytes]] = field(default_factory=list)
    """Every committed value below the end offsets, with its position."""
    heads: dict[str, ChainHead] = field(default_factory=dict)
    """Committed head per chain id."""
    bad_heads: dict[str, MalformedChainHead] = field(default_factory=dict)
    """Chains whose committed metadata is ours but unreadable."""
    expired: bool = False
    """An audit partition starts past offset 0: retention (or a DeleteRecords) removed records."""


async def _committed_heads(
    admin: AIOKafkaAdminClient, group_id: str, deadline_s: float
) -> tuple[dict[str, ChainHead], dict[str, MalformedChainHead]]:
    """The chain heads in the group's committed offset metadata, and the garbled ones; retried while
    the group coordinator is not there yet (a fresh cluster makes ``__consumer_offsets`` on first use)."""
    from aiokafka.errors import KafkaError

    delay_s = _FIRST_BACKOFF_S
    while True:
        try:
            committed = await admin.list_consumer_group_offsets(group_id)
            break
        except KafkaError as e:
            if not e.retriable or time.monotonic() >= deadline_s:
                raise
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, _MAX_BACKOFF_S)
    heads: dict[str, ChainHead] = {}
    bad: dict[str, MalformedChainHead] = {}
    for tp, meta in sorted(committed.items()):
        if meta.offset < 0:
            continue
        chain = chain_id(tp.topic, tp.partition)
        try:
            head = ChainHead.from_metadata(meta.metadata)
        except MalformedChainHead as err:
            bad[chain] = err
            continue
        if head is not None:
            heads[chain] = head
    return heads, bad


async def _partitions(admin: AIOKafkaAdminClient, topic: str) -> list[TopicPartition]:
    """The topic's partitions, from all-topics metadata (asking by name could auto-create it)."""
    from aiokafka import TopicPartition

    from edgestream.topics.errors import TopicsNotFound

    for entry in await admin.describe_topics(None):
        if entry["topic"] == topic and entry["error_code"] == 0:
            return [TopicPartition(topic, i) for i in sorted(p["partition"] for p in entry["partitions"])]
    raise TopicsNotFound([topic])


async def read_audit_log(
    connection: KafkaSettings,
    region: str,
    *,
    topic: str | None = None,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> AuditLog:
    """The committed heads of the region's edge group, then ``topic`` (default: the region's audit
    topic) read_committed from its beginning up to the end offsets it has after the heads were read.
    `KafkaTimeout` if that end is not reached within ``timeout_ms`` (of the whole call)."""
    from edgestream.topics.catalogue import audit_topic, edge_group

    settings = connection
    found = AuditLog(topic or audit_topic(region), edge_group(region))
    deadline_s = time.monotonic() + timeout_ms / 1000.0
    async with kafka.started(kafka.admin(settings, _CLIENT_ID, request_timeout_ms=timeout_ms)) as admin:
        found.heads, found.bad_heads = await _committed_heads(admin, found.group_id, deadline_s)
        tps = await _partitions(admin, found.topic)
    client = kafka.consumer(settings, _CLIENT_ID, request_timeout_ms=timeout_ms)
    async with kafka.started(client) as consumer:
        starts: dict[TopicPartition, int] = await consumer.beginning_offsets(tps)
        found.expired = any(starts[tp] > 0 for tp in tps)
        left_ms = max(0, int((deadline_s - time.monotonic()) * 1000))
        async for r in kafka.read_to_end(consumer, tps, timeout_ms=left_ms, what=found.topic):
            found.entries.append((Position(r.topic, r.partition, r.offset), r.value or b""))
    log.debug("read %d audit records and %d heads", len(found.entries), len(found.heads))
    return found


async def verify_audit_log(
    kafka: KafkaSettings,
    region: str,
    *,
    topic: str | None = None,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> tuple[AuditLog, ChainReport]:
    """``read_audit_log`` and ``verify`` it against its committed heads."""
    found = await read_audit_log(kafka, region, topic=topic, timeout_ms=timeout_ms)
    return found, verify(found.entries, heads=found.heads, expired=found.expired)
