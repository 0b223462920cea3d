"""The region's topics as a read_committed consumer sees them once the scenario is over."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from aiokafka import TopicPartition

from bench.faults.env import FaultRegion, FaultTimeout, wait_for
from edgestream.pipeline import kafka
from edgestream.pipeline.contract.cloud import PartialSummary
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.contract.reply import ReplyRefused, read_reply_header
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.catalogue import (
    KINDS,
    SUMMARIES_TOPIC,
    audit_topic,
    dlq_topic,
    ingest_topic,
    parse_topic,
    replies_topic,
    results_topic,
)

SETTLE_TIMEOUT_S = 90.0
"""How long open transactions may keep output partitions unsettled (transaction timeout: 60 s)."""


class Record(NamedTuple):
    """A record as read back (the fields ``DeadLetter.from_record`` reads)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]


@dataclass
class Observed:
    """The region's topics as a read_committed consumer sees them at the end."""

    ingest: list[Record]
    results: list[Record]
    audit: list[Record]
    dlq: list[Record]
    unsettled: dict[str, int]
    """Output partitions whose last stable offset stayed behind the high watermark (an open
    transaction), with the gap."""
    aborted: dict[str, int]
    """Records per output topic that only a read_uncommitted reader sees: written by transactions
    that aborted (a kill or a fence landed mid-transaction)."""
    summaries: list[PartialSummary] = field(default_factory=list)
    """The region's partial window summaries on ``cloud.summaries`` (shared by every region)."""
    replies: list[Record] = field(default_factory=list)
    """The fast replies on the region's replies topic (outside any transaction: every one sent)."""

    def replies_of_results(self) -> dict[str, int]:
        """How the committed results were replied to: ``results`` (distinct request ids answered),
        ``replied`` (of them, with at least one reply), ``missing``, ``copies`` (replies read; a
        request answered again after an aborted commit, or a request sent again, has two) and
        ``malformed`` (replies whose clear header does not read)."""
        replied: Counter[bytes] = Counter()
        malformed = 0
        for record in self.replies:
            try:
                header, _ = read_reply_header(record.value or b"")
            except ReplyRefused:
                malformed += 1
                continue
            replied[header.request_id] += 1
        answered = {ResultRecord.from_bytes(r.value or b"").request_id for r in self.results}
        have = sum(1 for rid in answered if rid in replied)
        return {
            "results": len(answered),
            "replied": have,
            "missing": len(answered) - have,
            "copies": sum(replied.values()),
            "malformed": malformed,
        }


async def _end_offsets(
    bootstrap: KafkaSettings, tps: list[TopicPartition], isolation: str
) -> dict[TopicPartition, int]:
    client = kafka.consumer(bootstrap, "faults-observe", isolation_level=isolation)
    async with kafka.started(client) as consumer:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        return ends


def _partitions(topic: str) -> list[TopicPartition]:
    return kafka.partitions([(topic, parse_topic(topic).spec.partitions)])


async def read_all(
    bootstrap: KafkaSettings, topic: str, timeout_s: float = 60.0, isolation: str = "read_committed"
) -> list[Record]:
    """Every record of ``topic`` up to its end (read_committed: its last stable offset)."""
    records = await kafka.read_all(
        bootstrap,
        _partitions(topic),
        client_id="faults-observe",
        timeout_ms=int(timeout_s * 1000),
        isolation_level=isolation,
        max_partition_fetch_bytes=8 << 20,
    )
    return [Record(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers)) for r in records]


async def observe(region: FaultRegion, settle_timeout_s: float = SETTLE_TIMEOUT_S) -> Observed:
    """Wait for open transactions on the outputs to finish (bounded), then read every topic."""
    outputs = [results_topic(region.name), audit_topic(region.name), dlq_topic(region.name)]
    tps = [tp for topic in outputs for tp in _partitions(topic)]
    gaps: dict[str, int] = {}

    async def settled() -> bool:
        nonlocal gaps
        stable = await _end_offsets(region.bootstrap, tps, "read_committed")
        high = await _end_offsets(region.bootstrap, tps, "read_uncommitted")
        gaps = {f"{tp.topic}[{tp.partition}]": high[tp] - stable[tp] for tp in tps if high[tp] != stable[tp]}
        return not gaps

    with contextlib.suppress(FaultTimeout):
        await wait_for("output partitions settle (no open transaction)", settled, settle_timeout_s, 0.5)
    ingest = [ingest_topic(region.name, kind) for kind in KINDS]
    ingest_records = [r for topic in ingest for r in await read_all(region.bootstrap, topic)]
    committed = {topic: await read_all(region.bootstrap, topic) for topic in outputs}
    aborted = {
        topic.rsplit(".", 1)[-1]: len(await read_all(region.bootstrap, topic, isolation="read_uncommitted"))
        - len(committed[topic])
        for topic in outputs
    }
    summaries = [
        summary
        for r in await read_all(region.bootstrap, SUMMARIES_TOPIC)
        if (summary := PartialSummary.from_bytes(r.value or b"")).region == region.name
    ]
    return Observed(
        ingest=ingest_records,
        results=committed[outputs[0]],
        audit=committed[outputs[1]],
        dlq=committed[outputs[2]],
        unsettled=gaps,
        aborted=aborted,
        summaries=summaries,
        replies=await read_all(region.bootstrap, replies_topic(region.name)),
    )
