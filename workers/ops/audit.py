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
from typing import TYPE_CHECKING, Any, Final

from edgestream.pipeline.errors import EdgestreamError
from edgestream.pipeline.serving.auditchain import ChainHead, MalformedChainHead, chain_id
from edgestream.pipeline.serving.auditverify import ChainReport, Position, verify
from edgestream.pipeline.settings import kafka_settings

if TYPE_CHECKING:
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from edgestream.pipeline.settings import Kafka

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS: Final = 30_000
"""Bound on reading the audit topic to its end offsets, and on each broker request."""

_CLIENT_ID: Final = "edgestream-audit"
_FETCH_TIMEOUT_MS: Final = 200
_FIRST_BACKOFF_S: Final = 0.05
_MAX_BACKOFF_S: Final = 1.0


class AuditReadTimeout(EdgestreamError):
    """The audit topic was not read up to the end offsets seen at start within the time allowed."""

    reason = "audit_timeout"
    retriable = True

    def __init__(self, topic: str, timeout_ms: int) -> None:
        super().__init__(f"{topic} was not read to its end within {timeout_ms} ms")
        self.topic = topic
        self.timeout_ms = timeout_ms


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


def client_config(kafka: Kafka, timeout_ms: int) -> dict[str, Any]:
    """Keyword arguments of every Kafka client this command makes: the connection's (TLS included),
    this command's client id, the request bound."""
    return {
        **kafka_settings(kafka).client_kwargs(),
        "client_id": _CLIENT_ID,
        "request_timeout_ms": timeout_ms,
    }


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
    kafka: Kafka,
    region: str,
    *,
    topic: str | None = None,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> AuditLog:
    """The committed heads of the region's edge group, then ``topic`` (default: the region's audit
    topic) read_committed from its beginning up to the end offsets it has after the heads were read.
    `AuditReadTimeout` if that end is not reached within ``timeout_ms``."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient

    from edgestream.topics.catalogue import audit_topic, edge_group

    config = client_config(kafka, timeout_ms)
    found = AuditLog(topic or audit_topic(region), edge_group(region))
    deadline_s = time.monotonic() + timeout_ms / 1000.0
    admin = AIOKafkaAdminClient(**config)
    await admin.start()
    try:
        found.heads, found.bad_heads = await _committed_heads(admin, found.group_id, deadline_s)
        tps = await _partitions(admin, found.topic)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        **config,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        starts: dict[TopicPartition, int] = await consumer.beginning_offsets(tps)
        found.expired = any(starts[tp] > 0 for tp in tps)
        await consumer.seek_to_beginning(*tps)
        pending = {tp for tp in tps if starts[tp] < ends[tp]}
        consumer.pause(*(set(tps) - pending))
        while pending:
            if time.monotonic() >= deadline_s:
                raise AuditReadTimeout(found.topic, timeout_ms)
            fetched = await consumer.getmany(*pending, timeout_ms=_FETCH_TIMEOUT_MS)
            for tp, records in fetched.items():
                found.entries.extend(
                    (Position(tp.topic, tp.partition, r.offset), r.value or b"")
                    for r in records
                    if r.offset < ends[tp]
                )
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
    finally:
        await consumer.stop()
    log.debug("read %d audit records and %d heads", len(found.entries), len(found.heads))
    return found


async def verify_audit_log(
    kafka: Kafka,
    region: str,
    *,
    topic: str | None = None,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> tuple[AuditLog, ChainReport]:
    """``read_audit_log`` and ``verify`` it against its committed heads."""
    found = await read_audit_log(kafka, region, topic=topic, timeout_ms=timeout_ms)
    return found, verify(found.entries, heads=found.heads, expired=found.expired)
