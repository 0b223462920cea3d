"""`edgestream dlq inspect|replay` against the real broker, on dead letters produced with our headers."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner, Result

from edgestream.cli import app
from edgestream.pipeline import kafka
from edgestream.pipeline.contract import deadletter as dl
from edgestream.pipeline.errors import AuthenticationFailed, EdgestreamError, UndecodableEnvelope
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import dlq_topic, edge_group, ingest_topic, region_topics, results_topic

from ..conftest import read_topic, set_topic_config

pytestmark = pytest.mark.broker

T0_MS = 1_750_000_000_000


@dataclass(frozen=True)
class Sent:
    """A dead letter this test produced, and where it landed."""

    reason: str
    origin_topic: str
    key: bytes | None
    value: bytes
    at_ms: int
    dlq_offset: int


@pytest.fixture
async def region(bootstrap: KafkaSettings) -> str:
    name = f"t{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, region_topics(name))
    return name


async def _cli(bootstrap: KafkaSettings, *args: str) -> Result:
    """Run ``edgestream <args> --bootstrap <bootstrap>`` in a thread (it runs its own event loop)."""
    runner = CliRunner()
    settings = bootstrap
    argv = [*args, "--bootstrap", settings.bootstrap_servers]
    env = {"COLUMNS": "250", **settings.to_env("EDGESTREAM_KAFKA_")}  # the TLS files of the admin identity
    return await asyncio.to_thread(runner.invoke, app, argv, env=env, catch_exceptions=False)


def _letter(
    region: str,
    error: EdgestreamError,
    origin_topic: str,
    *,
    at_ms: int,
    origin_offset: int = 0,
    attempt: int = 1,
) -> list[tuple[str, bytes]]:
    return dl.dead_letter_headers(
        error=error,
        origin_topic=origin_topic,
        origin_partition=1,
        origin_offset=origin_offset,
        origin_timestamp_ms=at_ms - 3,
        group_id=edge_group(region),
        worker_id=f"{region}-node-1",
        key_id=None if isinstance(error, UndecodableEnvelope) else 1,
        attempt=attempt,
        now_ms=at_ms,
        origin_headers=[("traceparent", f"00-{uuid.uuid4().hex}-{'0' * 16}-01".encode())],
    )


async def _put(
    producer: AIOKafkaProducer,
    region: str,
    reason_error: EdgestreamError,
    origin_topic: str,
    key: bytes | None,
    at_ms: int,
    **kw: Any,
) -> Sent:
    value = os.urandom(40) + b"\x00sealed"
    headers = _letter(region, reason_error, origin_topic, at_ms=at_ms, **kw)
    meta = await producer.send_and_wait(dlq_topic(region), value, key=key, headers=headers)
    return Sent(reason_error.reason, origin_topic, key, value, at_ms, meta.offset)


async def _put_mix(producer: AIOKafkaProducer, region: str) -> list[Sent]:
    """3 ``bad_tag`` from the embedding topic, 2 ``undecodable`` from the frame topic, interleaved."""
    emb, frame = ingest_topic(region, "embedding"), ingest_topic(region, "frame")
    sent = []
    for i in range(5):
        if i % 2 == 0:
            error: EdgestreamError = AuthenticationFailed("tag mismatch")
            sent.append(await _put(producer, region, error, emb, f"dev-{i}".encode(), T0_MS + 10 * i))
        else:
            error = UndecodableEnvelope("not a msgpack map")
            key = None if i == 3 else f"dev-{i}".encode()
            sent.append(await _put(producer, region, error, frame, key, T0_MS + 10 * i))
    return sent


async def _json_lines(bootstrap: KafkaSettings, region: str, *args: str) -> list[dict[str, Any]]:
    result = await _cli(bootstrap, "dlq", "inspect", "--region", region, "--json", *args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


async def test_inspect_summarises_by_reason_and_filters(
    bootstrap: KafkaSettings, region: str, producer: AIOKafkaProducer
) -> None:
    sent = await _put_mix(producer, region)
    await producer.send_and_wait(dlq_topic(region), b"not a dead letter", key=b"x")  # no headers

    result = await _cli(bootstrap, "dlq", "inspect", "--region", region)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "6 record(s), 5 matching, 1 malformed" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") == 6}
    assert rows["bad_tag"].split("│")[2].strip() == "3"
    assert rows["undecodable"].split("│")[2].strip() == "2"
    assert f"{ingest_topic(region, 'embedding')} (3)" in rows["bad_tag"]
    assert "2025-06-15 15:06:40.000Z" in rows["bad_tag"], "first dead-lettered-at, UTC"
    assert "is not an edgestream dead letter" in result.stderr

    entries = await _json_lines(bootstrap, region)
    assert [e["dlq_offset"] for e in entries] == [s.dlq_offset for s in sent]
    first = entries[0]
    assert first["reason"] == "bad_tag"
    assert first["stage"] == "decrypt"
    assert first["origin_topic"] == ingest_topic(region, "embedding")
    assert (first["origin_partition"], first["origin_offset"]) == (1, 0)
    assert first["origin_timestamp_ms"] == T0_MS - 3
    assert first["dead_lettered_at_ms"] == T0_MS
    assert first["group_id"] == edge_group(region)
    assert first["worker_id"] == f"{region}-node-1"
    assert first["exception_class"] == "edgestream.pipeline.errors.AuthenticationFailed"
    assert first["message"] == "tag mismatch"
    assert (first["key"], first["key_id"], first["attempt"]) == ("dev-0", 1, 1)
    assert first["value_bytes"] == len(sent[0].value)
    assert first["headers"] == ["traceparent"]
    assert entries[3]["key"] is None
    assert entries[3]["key_id"] is None

    by_reason = await _json_lines(bootstrap, region, "--reason", "undecodable")
    assert [e["dlq_offset"] for e in by_reason] == [sent[1].dlq_offset, sent[3].dlq_offset]
    since = await _json_lines(bootstrap, region, "--since-ms", str(T0_MS + 20))
    assert [e["dead_lettered_at_ms"] for e in since] == [T0_MS + 20, T0_MS + 30, T0_MS + 40]
    newest = await _json_lines(bootstrap, region, "--limit", "2")
    assert [e["dlq_offset"] for e in newest] == [sent[3].dlq_offset, sent[4].dlq_offset]
    none = await _cli(bootstrap, "dlq", "inspect", "--region", region, "--reason", "bad_shape")
    assert none.exit_code == 0
    assert "0 matching (reason bad_shape)" in none.stdout


async def test_inspect_reads_committed_transactions_only_and_stops_at_the_end(
    bootstrap: KafkaSettings, region: str
) -> None:
    client = kafka.producer(bootstrap, "test-dlq", transactional_id=f"test-{region}")
    async with kafka.started(client) as producer:
        origin = ingest_topic(region, "embedding")
        error = AuthenticationFailed("tag mismatch")
        async with producer.transaction():
            for i in range(2):
                headers = _letter(region, error, origin, at_ms=T0_MS + i)
                await producer.send(dlq_topic(region), b"committed", key=b"k", headers=headers)
        await producer.begin_transaction()
        headers = _letter(region, error, origin, at_ms=T0_MS + 2)
        await producer.send(dlq_topic(region), b"aborted", key=b"k", headers=headers)
        await producer.abort_transaction()
        async with producer.transaction():  # the log now ends with a commit marker
            headers = _letter(region, error, origin, at_ms=T0_MS + 3)
            await producer.send(dlq_topic(region), b"committed", key=b"k", headers=headers)

    started_s = time.monotonic()
    entries = await _json_lines(bootstrap, region, "--timeout-ms", "20000")
    assert time.monotonic() - started_s < 15, "stopped at the end, did not wait for the timeout"
    assert [e["dead_lettered_at_ms"] for e in entries] == [T0_MS, T0_MS + 1, T0_MS + 3]


async def test_replay_sends_the_matching_dead_letters_back_once(
    bootstrap: KafkaSettings, region: str, producer: AIOKafkaProducer
) -> None:
    sent = await _put_mix(producer, region)
    # A header pointing anywhere but the region's ingest topics is never followed.
    foreign = await _put(
        producer, region, AuthenticationFailed("x"), results_topic(region), b"dev-f", T0_MS + 99
    )
    bad_tag = [s for s in sent if s.reason == "bad_tag"]
    emb = ingest_topic(region, "embedding")

    result = await _cli(bootstrap, "dlq", "replay", "--region", region, "--reason", "bad_tag")
    assert result.exit_code == 0, result.output
    group = f"edgestream-dlq-replay-{region}-bad_tag"
    assert f"sent 3, skipped 3 (origin not an ingest topic: 1, reason undecodable: 2); group {group}" in (
        result.stdout
    )
    assert f"{dlq_topic(region)}[0]@{foreign.dlq_offset}" not in result.stdout

    replayed = await read_topic(bootstrap, emb, expect=3)
    assert len(replayed) == 3
    by_source = {dict(r.headers)[dl.REPLAYED_FROM].decode(): r for r in replayed}
    assert set(by_source) == {f"{dlq_topic(region)}[0]@{s.dlq_offset}" for s in bad_tag}
    for s in bad_tag:
        record = by_source[f"{dlq_topic(region)}[0]@{s.dlq_offset}"]
        assert record.value == s.value, "byte-identical, still sealed"
        assert record.key == s.key
        headers = dict(record.headers)
        assert headers[dl.DELIVERY_ATTEMPT] == b"2"
        assert dl.attempt_of(record.headers) == 2
        assert headers["traceparent"].startswith(b"00-")
        assert not any(name.startswith(dl.ERRORS_PREFIX) for name in headers)

    again = await _cli(bootstrap, "dlq", "replay", "--region", region, "--reason", "bad_tag")
    assert again.exit_code == 0, again.output
    assert "sent 0, skipped 0" in again.stdout
    assert len(await read_topic(bootstrap, emb, expect=3, settle_s=1.0)) == 3

    # The bad_tag replay passed over the undecodable ones; their own group still finds them.
    other = await _cli(bootstrap, "dlq", "replay", "--region", region, "--reason", "undecodable")
    assert other.exit_code == 0, other.output
    assert "sent 2, skipped 4 (reason bad_tag: 4)" in other.stdout
    frames = await read_topic(bootstrap, ingest_topic(region, "frame"), expect=2)
    undecodable = [s for s in sent if s.reason == "undecodable"]
    assert Counter((r.key, r.value) for r in frames) == Counter((s.key, s.value) for s in undecodable)

    # Newer dead letters (a replayed record that failed again, attempt 2) go back on the next run.
    repeat = await _put(
        producer, region, AuthenticationFailed("again"), emb, b"dev-0", T0_MS + 500, attempt=2
    )
    third = await _cli(bootstrap, "dlq", "replay", "--region", region, "--reason", "bad_tag")
    assert "sent 1, skipped 0" in third.stdout
    assert "2 -> 3" in third.stdout
    records = await read_topic(bootstrap, emb, expect=4)
    assert len(records) == 4
    (again_replayed,) = [r for r in records if r.value == repeat.value]
    assert dict(again_replayed.headers)[dl.DELIVERY_ATTEMPT] == b"3"


async def test_a_dry_run_sends_and_commits_nothing(
    bootstrap: KafkaSettings, region: str, producer: AIOKafkaProducer
) -> None:
    await _put_mix(producer, region)
    emb = ingest_topic(region, "embedding")

    dry = await _cli(bootstrap, "dlq", "replay", "--region", region, "--reason", "bad_tag", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would send 3, skipped 2" in dry.stdout
    assert "dry run: nothing sent or committed" in dry.stdout
    assert await read_topic(bootstrap, emb, expect=0, settle_s=1.0) == []

    real = await _cli(bootstrap, "dlq", "replay", "--region", region, "--reason", "bad_tag")
    assert "sent 3, skipped 2" in real.stdout
    assert len(await read_topic(bootstrap, emb, expect=3)) == 3


async def test_errors_are_one_line_and_exit_1(bootstrap: KafkaSettings) -> None:
    missing = await _cli(bootstrap, "dlq", "inspect", "--region", f"t{uuid.uuid4().hex[:8]}")
    assert missing.exit_code == 1
    assert "error:" in missing.stderr
    assert ".dlq" in missing.stderr
    bad_reason = await _cli(bootstrap, "dlq", "replay", "--region", "eu-west", "--reason", "Bad Reason")
    assert bad_reason.exit_code == 1
    assert "invalid reason code 'Bad Reason'" in bad_reason.stderr
    bad_region = await _cli(bootstrap, "dlq", "inspect", "--region", "Not_A_Region")
    assert bad_region.exit_code == 1
    assert "invalid region name" in bad_region.stderr


async def test_a_letter_its_origin_refuses_replays_nothing_of_its_batch_until_it_fits(
    bootstrap: KafkaSettings, region: str, producer: AIOKafkaProducer
) -> None:
    """A batch's letters and the group's offset past them are one transaction: when the origin topic
    refuses one letter for good (here larger than its ``max.message.bytes``), nothing of the batch is
    sent and the group stays before it, so the next run (the topic fixed) replays every letter once."""
    emb = ingest_topic(region, "embedding")
    small = await _put(producer, region, AuthenticationFailed("x"), emb, b"dev-1", T0_MS)
    headers = _letter(region, AuthenticationFailed("x"), emb, at_ms=T0_MS + 1)
    big_value = os.urandom(6000)
    await producer.send_and_wait(dlq_topic(region), big_value, key=b"dev-2", headers=headers)

    await set_topic_config(bootstrap, emb, "max.message.bytes", "4000")
    refused = await _cli(bootstrap, "dlq", "replay", "--region", region, "--reason", "bad_tag")
    assert refused.exit_code == 1, refused.output
    assert await read_topic(bootstrap, emb, expect=0, settle_s=1.0) == [], "nothing of the batch is visible"

    await set_topic_config(bootstrap, emb, "max.message.bytes", "1048588")
    fixed = await _cli(bootstrap, "dlq", "replay", "--region", region, "--reason", "bad_tag")
    assert fixed.exit_code == 0, fixed.output
    assert "sent 2, skipped 0" in fixed.stdout
    replayed = await read_topic(bootstrap, emb, expect=2)
    assert sorted(r.value for r in replayed) == sorted([small.value, big_value])
