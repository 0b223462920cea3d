"""`edgestream audit verify` against the real broker: a chain written the way the edge worker writes it
(records and the head in the offset metadata, one transaction each), then doctored copies of it."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata
from typer.testing import CliRunner, Result

from edgestream.cli import app
from edgestream.pipeline import kafka
from edgestream.pipeline.contract.records import AuditRecord
from edgestream.pipeline.serving.auditchain import AuditChain, ChainHead, chain_id
from edgestream.pipeline.serving.auditverify import Position
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import audit_topic, edge_group, ingest_topic, parse_topic

from ..conftest import EdgeRegion, read_topic

pytestmark = pytest.mark.broker

T0_MS = 1_750_000_000_000
CHAIN_LENGTH = 50
TRANSACTION_RECORDS = 8
LEGACY = 2


@dataclass
class Written:
    """A chain this test wrote to a region's audit topic."""

    region: str
    chain: str
    records: list[AuditRecord]
    """Linked records, in seq order."""
    head: ChainHead
    """The head committed with the last transaction."""


def _audit(i: int, region: str) -> AuditRecord:
    return AuditRecord(
        timestamp_ms=T0_MS + i,
        request_id=i.to_bytes(16, "big"),
        node=f"{region}-node-1",
        region=region,
        device_id=f"dev-{i % 4}",
        model="frame-classifier",
        model_version=1,
        outcome="ok",
        reason=None,
        latency_ms=10.0 + i,
    )


async def _write_chain(bootstrap: KafkaSettings, region: str) -> Written:
    """Link ``CHAIN_LENGTH`` records of a dummy input partition, as an edge worker does: each
    transaction sends its records and commits the input offset with the head as metadata. One
    transaction aborts and its records are linked again. Two legacy records (no chain) go first."""
    audit, group = audit_topic(region), edge_group(region)
    source = TopicPartition(ingest_topic(region, "frame"), 1)
    chain = chain_id(source.topic, source.partition)
    chains = AuditChain()
    chains.start(chain, None, offset=0)
    records: list[AuditRecord] = []
    client = kafka.producer(bootstrap, "test-audit", transactional_id=f"test-audit-{region}")
    async with kafka.started(client) as producer:
        async with producer.transaction():
            for i in range(LEGACY):
                legacy = _audit(1000 + i, region)
                await producer.send(audit, legacy.to_bytes(), key=legacy.request_id)
        for first in range(0, CHAIN_LENGTH, TRANSACTION_RECORDS):
            batch = range(first, min(first + TRANSACTION_RECORDS, CHAIN_LENGTH))
            if first == 2 * TRANSACTION_RECORDS:  # this batch aborts once, then goes again
                await producer.begin_transaction()
                for i in batch:
                    doomed = chains.link(chain, replace(_audit(i, region), latency_ms=-1.0))
                    await producer.send(audit, doomed.to_bytes(), key=doomed.request_id)
                await producer.abort_transaction()
                chains.abort(chain)
            async with producer.transaction():
                for i in batch:
                    record = chains.link(chain, _audit(i, region))
                    await producer.send(audit, record.to_bytes(), key=record.request_id)
                    records.append(record)
                offset = OffsetAndMetadata(batch[-1] + 1, chains.metadata(chain))
                await producer.send_offsets_to_transaction({source: offset}, group)
            chains.commit(chain)
    head = chains.head(chain)
    assert head is not None
    return Written(region, chain, records, head)


@pytest.fixture
async def written(edge_region: EdgeRegion) -> Written:
    return await _write_chain(edge_region.bootstrap, edge_region.name)


async def _copy(
    bootstrap: KafkaSettings,
    written: Written,
    name: str,
    *,
    skip: int | None = None,
    alter: int | None = None,
) -> tuple[str, dict[int, Position]]:
    """Copy the region's audit topic, partition by partition, to the audit topic of region
    ``<region>-<name>``, leaving out record ``skip`` or changing record ``alter``; returns the copy's
    name and where each chained seq landed in it."""
    source = audit_topic(written.region)
    copy = audit_topic(f"{written.region}-{name}")
    await ensure_topics(bootstrap, [parse_topic(copy)])
    values = await read_topic(bootstrap, source, expect=CHAIN_LENGTH + LEGACY, settle_s=0.2)
    assert len(values) == CHAIN_LENGTH + LEGACY
    where: dict[int, Position] = {}
    async with kafka.started(kafka.producer(bootstrap, "test-audit")) as producer:
        for r in sorted(values, key=lambda r: (r.partition, r.offset)):
            record = AuditRecord.from_bytes(r.value)
            value = r.value
            if record.seq is not None and record.seq == skip:
                continue
            if record.seq is not None and record.seq == alter:
                value = replace(record, outcome="dead_letter", reason="stale").to_bytes()
            meta = await producer.send_and_wait(copy, value, key=r.key, partition=r.partition)
            if record.seq is not None:
                where[record.seq] = Position(copy, meta.partition, meta.offset)
    return copy, where


async def _verify(bootstrap: KafkaSettings, region: str, *args: str) -> Result:
    """``edgestream audit verify`` in a thread (it runs its own event loop), connecting as the test
    does (the TLS files go in the environment, as an operator's would)."""
    settings = bootstrap
    argv = ["audit", "verify", "--region", region, "--bootstrap", settings.bootstrap_servers, *args]
    env = {"COLUMNS": "250", **settings.to_env("EDGESTREAM_KAFKA_")}
    return await asyncio.to_thread(CliRunner().invoke, app, argv, env=env, catch_exceptions=False)


async def test_offset_metadata_carries_the_head(bootstrap: KafkaSettings, written: Written) -> None:
    """aiokafka 0.14 sends OffsetAndMetadata in send_offsets_to_transaction, metadata included."""
    async with kafka.started(kafka.admin(bootstrap, "test-audit")) as admin:
        committed = await admin.list_consumer_group_offsets(edge_group(written.region))
    source = TopicPartition(ingest_topic(written.region, "frame"), 1)
    assert committed[source].offset == CHAIN_LENGTH
    assert ChainHead.from_metadata(committed[source].metadata) == written.head
    assert written.head.seq == CHAIN_LENGTH


async def test_an_intact_chain_verifies(bootstrap: KafkaSettings, written: Written) -> None:
    result = await _verify(bootstrap, written.region)
    assert result.exit_code == 0, result.output
    assert f"{CHAIN_LENGTH + LEGACY} record(s), {CHAIN_LENGTH} chained in 1 segment(s)" in result.stdout
    assert f"{LEGACY} without chain fields" in result.stdout
    assert "every chain is intact" in result.stdout

    as_json = await _verify(bootstrap, written.region, "--json")
    assert as_json.exit_code == 0, as_json.output
    report: dict[str, Any] = json.loads(as_json.stdout)
    assert report["ok"] is True
    assert report["problems"] == []
    assert report["segments"] == [
        {
            "chain": written.chain,
            "segment": 0,
            "records": CHAIN_LENGTH,
            "first_seq": 1,
            "last_seq": CHAIN_LENGTH,
            "head": {"segment": 0, "seq": CHAIN_LENGTH, "digest": written.head.digest.hex()},
        }
    ]


async def test_a_copy_missing_a_record_fails_naming_it(bootstrap: KafkaSettings, written: Written) -> None:
    copy, where = await _copy(bootstrap, written, "cut", skip=20)
    result = await _verify(bootstrap, written.region, "--topic", copy)
    assert result.exit_code == 1, result.output
    assert (
        f"gap record 20 of chain {written.chain} segment 0 is missing, between audit positions "
        f"{where[19]} and {where[21]}"
    ) in result.stdout
    assert "1 problem(s)" in result.stdout


async def test_a_copy_with_an_altered_record_fails_naming_it(
    bootstrap: KafkaSettings, written: Written
) -> None:
    copy, where = await _copy(bootstrap, written, "edit", alter=33)
    result = await _verify(bootstrap, written.region, "--topic", copy, "--json")
    assert result.exit_code == 1, result.output
    (problem,) = json.loads(result.stdout)["problems"]
    assert (problem["kind"], problem["first_seq"], problem["last_seq"]) == ("break", 33, 33)
    altered = {"topic": copy, "partition": where[33].partition, "offset": where[33].offset}
    assert problem["positions"][0] == altered
    assert (
        f"record 33 of chain {written.chain} segment 0 at {where[33]} no longer matches"
        in (problem["message"])
    )


async def test_a_copy_cut_short_fails_against_the_committed_head(
    bootstrap: KafkaSettings, written: Written
) -> None:
    copy, where = await _copy(bootstrap, written, "tail", skip=CHAIN_LENGTH)
    result = await _verify(bootstrap, written.region, "--topic", copy)
    assert result.exit_code == 1, result.output
    assert (
        f"truncated record {CHAIN_LENGTH} of chain {written.chain} segment 0 is missing after audit "
        f"position {where[CHAIN_LENGTH - 1]}: the committed head is at seq {CHAIN_LENGTH}"
    ) in result.stdout
