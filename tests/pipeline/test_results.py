"""The backends' subscriber without a broker: each request handled once, offsets committed only after
the handler returned, a record that does not decode sent to the error callback while the rest flow."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError
from aiokafka.structs import ConsumerRecord

from edgestream.pipeline.contract.deadletter import DeadLetter, dead_letter_headers
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.errors import EdgestreamError, UnknownKeyId
from edgestream.pipeline.results import Decoded, ResultSubscriber, SeenIds, decode
from edgestream.topics.catalogue import dlq_topic, ingest_topic, results_topic

REGION = "eu-west"
RESULTS = TopicPartition(results_topic(REGION), 0)
DLQ = TopicPartition(dlq_topic(REGION), 0)


def result(n: int) -> ResultRecord:
    """A result whose request id is ``n``'s 16 bytes."""
    return ResultRecord(
        request_id=n.to_bytes(16, "big"),
        device_id=f"dev-{n}",
        model="embedding-scorer",
        model_version=1,
        label=n % 3,
        scores=(0.2, 0.3, 0.5),
        queue_ms=0.1,
        infer_ms=0.2,
        total_ms=1.5,
        batch_size=4,
        node="eu-west-1",
        region=REGION,
        produced_at_ms=1_700_000_000_000 + n,
    )


def record(
    tp: TopicPartition, offset: int, value: bytes | None, headers: Any = ()
) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, b"k", value, None, 1, 1, tuple(headers))


def dead_letter_headers_for(origin_offset: int) -> list[tuple[str, bytes]]:
    return dead_letter_headers(
        error=UnknownKeyId(REGION, 7),
        origin_topic=ingest_topic(REGION, "embedding"),
        origin_partition=1,
        origin_offset=origin_offset,
        origin_timestamp_ms=1_700_000_000_000,
        group_id="edgestream-edge-eu-west",
        worker_id="eu-west-1",
        key_id=7,
        attempt=1,
        now_ms=1_700_000_000_100,
    )


class FakeConsumer:
    """Hands out the given batches one per fetch; records each commit with what was handled by then."""

    def __init__(self, batches: list[dict[TopicPartition, list[ConsumerRecord[Any, Any]]]]) -> None:
        self.batches = list(batches)
        self.commits: list[dict[TopicPartition, int]] = []
        self.handled_at_commit: list[int] = []
        self.handled = 0

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        del partitions, timeout_ms, max_records
        return self.batches.pop(0) if self.batches else {}

    async def commit(self, offsets: dict[TopicPartition, int] | None = None) -> None:
        assert offsets is not None
        self.commits.append(dict(offsets))
        self.handled_at_commit.append(self.handled)


def subscriber(
    consumer: FakeConsumer, seen: list[Decoded], errors: list[tuple[int, str]], **kw: Any
) -> ResultSubscriber:
    async def handle(decoded: Decoded) -> None:
        await asyncio.sleep(0)
        seen.append(decoded)
        consumer.handled += 1

    async def on_error(rec: ConsumerRecord[bytes, bytes], error: EdgestreamError) -> None:
        errors.append((rec.offset, error.reason))

    return ResultSubscriber(consumer, REGION, handle, on_error=on_error, **kw)


async def test_duplicates_are_dropped_by_request_id_across_fetches() -> None:
    first = [record(RESULTS, i, result(i).to_bytes()) for i in range(3)]
    again = [record(RESULTS, 3, result(1).to_bytes()), record(RESULTS, 4, result(3).to_bytes())]
    consumer = FakeConsumer([{RESULTS: first}, {RESULTS: again}])
    seen: list[Decoded] = []
    sub = subscriber(consumer, seen, [])
    assert await sub.poll() == 3
    assert await sub.poll() == 2
    assert [r.request_id for r in seen if isinstance(r, ResultRecord)] == [
        i.to_bytes(16, "big") for i in (0, 1, 2, 3)
    ]
    assert sub.stats.duplicates == 1
    assert consumer.commits == [{RESULTS: 3}, {RESULTS: 5}], "the duplicate is committed past too"


async def test_commits_come_after_the_handler_returned_for_every_record_of_the_fetch() -> None:
    batch = {RESULTS: [record(RESULTS, i, result(i).to_bytes()) for i in range(5)]}
    consumer = FakeConsumer([batch])
    sub = subscriber(consumer, [], [])
    await sub.poll()
    assert consumer.commits == [{RESULTS: 5}]
    assert consumer.handled_at_commit == [5]


async def test_a_handler_that_raises_commits_only_what_was_handled_before_it() -> None:
    batch = {RESULTS: [record(RESULTS, 10 + i, result(i).to_bytes()) for i in range(4)]}
    consumer = FakeConsumer([batch])
    calls: list[int] = []

    async def handle(decoded: Decoded) -> None:
        assert isinstance(decoded, ResultRecord)
        calls.append(decoded.label)
        if len(calls) == 3:
            raise RuntimeError("the backend's database is down")

    sub = ResultSubscriber(consumer, REGION, handle)
    with pytest.raises(RuntimeError, match="database"):
        await sub.poll()
    assert consumer.commits == [{RESULTS: 12}], "offsets 10 and 11 handled; 12 will be delivered again"
    assert sub.stats.handled == 2


async def test_a_bad_record_goes_to_the_error_callback_and_the_rest_flow() -> None:
    batch = {
        RESULTS: [
            record(RESULTS, 0, result(0).to_bytes()),
            record(RESULTS, 1, b"\x00garbage\xff"),
            record(RESULTS, 2, None),
            record(RESULTS, 3, result(1).to_bytes()),
        ],
        DLQ: [
            record(DLQ, 0, b"sealed", dead_letter_headers_for(5)),
            record(DLQ, 1, b"sealed", [("edgestream.errors.reason", b"bad_tag")]),
            record(DLQ, 2, b"sealed", dead_letter_headers_for(5)),  # the same dead letter again
        ],
    }
    consumer = FakeConsumer([batch])
    seen: list[Decoded] = []
    errors: list[tuple[int, str]] = []
    sub = subscriber(consumer, seen, errors)
    assert await sub.poll() == 7
    assert [type(d).__name__ for d in seen] == ["ResultRecord", "ResultRecord", "DeadLetter"]
    dead = seen[2]
    assert isinstance(dead, DeadLetter)
    assert dead.reason == "unknown_key"
    assert errors == [(1, "undecodable_record"), (2, "undecodable_record"), (1, "bad_dead_letter")]
    assert consumer.commits == [{RESULTS: 4, DLQ: 3}]
    assert (sub.stats.handled, sub.stats.duplicates, sub.stats.undecodable) == (3, 1, 3)


async def test_a_commit_refused_by_a_rebalance_does_not_stop_the_subscriber() -> None:
    consumer = FakeConsumer([{RESULTS: [record(RESULTS, 0, result(0).to_bytes())]}] * 2)
    refusals = [CommitFailedError("rebalanced"), None]

    async def commit(offsets: dict[TopicPartition, int] | None = None) -> None:
        refusal = refusals.pop(0)
        if refusal is not None:
            raise refusal

    consumer.commit = commit  # type: ignore[method-assign]
    sub = subscriber(consumer, [], [])
    assert await sub.poll() == 1
    assert await sub.poll() == 1
    assert (sub.stats.commit_failures, sub.stats.commits, sub.stats.duplicates) == (1, 1, 1)


async def test_run_stops_when_asked() -> None:
    consumer = FakeConsumer([{RESULTS: [record(RESULTS, 0, result(0).to_bytes())]}])
    stop = asyncio.Event()
    seen: list[Decoded] = []

    async def handle(decoded: Decoded) -> None:
        seen.append(decoded)
        stop.set()

    await asyncio.wait_for(ResultSubscriber(consumer, REGION, handle).run(stop), timeout=5)
    assert len(seen) == 1


def test_seen_ids_forget_the_oldest_past_their_capacity() -> None:
    seen = SeenIds(2)
    for key in (b"a", b"b", b"a", b"c"):  # "a" touched again: "b" is the oldest
        seen.add(key)
    assert len(seen) == 2
    assert b"a" in seen
    assert b"c" in seen
    assert b"b" not in seen
    with pytest.raises(ValueError, match="capacity"):
        SeenIds(0)


def test_decode_never_raises_anything_but_an_edgestream_error() -> None:
    for value in (b"", b"\x81\xa1v\x01", b"\x91\x01", result(0).to_bytes()[:-3]):
        with pytest.raises(EdgestreamError):
            decode(record(RESULTS, 0, value), DLQ.topic)
