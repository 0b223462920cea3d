"""Consumer lag: records behind the end, the age of the oldest unconsumed record bounded from the ends
seen and the last fetched timestamp, series removed with their partition, and the consumer's own state
read without an await."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from edgestream.pipeline.observability.lag import ConsumerLag, Offsets, consumer_offsets

TP = TopicPartition("edge.r.ingest.embedding", 3)
OTHER = TopicPartition("edge.r.ingest.frame", 0)


def lag() -> tuple[ConsumerLag, CollectorRegistry]:
    registry = CollectorRegistry()
    return ConsumerLag(registry, ("r", "n1")), registry


def value(registry: CollectorRegistry, name: str, tp: TopicPartition) -> float | None:
    labels = {"region": "r", "node": "n1", "topic": tp.topic, "partition": str(tp.partition)}
    return registry.get_sample_value(name, labels)


def test_caught_up_reads_zero_records_and_zero_seconds() -> None:
    gauges, registry = lag()
    gauges.fetched(TP, 1_000.0)
    gauges.update({TP: Offsets(position=50, end=50)}, now_ms=100_000.0)
    assert value(registry, "edgestream_consumer_lag_records", TP) == 0
    assert value(registry, "edgestream_consumer_lag_seconds", TP) == 0


def test_an_idle_partition_that_gets_a_record_reads_its_age_not_the_time_since_the_previous_one() -> None:
    gauges, registry = lag()
    gauges.fetched(TP, 1_000.0)  # the previous record, long ago
    gauges.update({TP: Offsets(50, 50)}, now_ms=100_000.0)
    gauges.update({TP: Offsets(50, 51)}, now_ms=101_000.0)  # a new record, seen in the log now
    gauges.update({TP: Offsets(50, 51)}, now_ms=103_500.0)  # still not consumed 2.5 s later
    assert value(registry, "edgestream_consumer_lag_records", TP) == 1
    assert value(registry, "edgestream_consumer_lag_seconds", TP) == pytest.approx(2.5)


def test_a_backlog_older_than_the_history_reads_the_last_fetched_timestamp() -> None:
    gauges, registry = lag()
    gauges.update({TP: Offsets(0, 1_000)}, now_ms=600_000.0)  # first look: 1,000 records already there
    gauges.fetched(TP, 10_000.0)  # the records being read are ten minutes old
    gauges.update({TP: Offsets(100, 1_000)}, now_ms=601_000.0)
    assert value(registry, "edgestream_consumer_lag_records", TP) == 900
    assert value(registry, "edgestream_consumer_lag_seconds", TP) == pytest.approx(591.0)


def test_without_a_fetch_the_first_sight_of_the_backlog_bounds_its_age() -> None:
    gauges, registry = lag()
    gauges.update({TP: Offsets(0, 10)}, now_ms=50_000.0)
    gauges.update({TP: Offsets(0, 10)}, now_ms=54_000.0)
    assert value(registry, "edgestream_consumer_lag_seconds", TP) == pytest.approx(4.0)


def test_the_age_follows_the_position_through_the_ends_seen() -> None:
    gauges, registry = lag()
    gauges.update({TP: Offsets(0, 0)}, now_ms=0.0)
    gauges.update({TP: Offsets(0, 10)}, now_ms=1_000.0)  # offsets 0..9 appeared by 1 s
    gauges.update({TP: Offsets(5, 20)}, now_ms=2_000.0)  # 10..19 by 2 s
    gauges.update({TP: Offsets(12, 20)}, now_ms=5_000.0)  # the next to consume, 12, appeared by 2 s
    assert value(registry, "edgestream_consumer_lag_records", TP) == 8
    assert value(registry, "edgestream_consumer_lag_seconds", TP) == pytest.approx(3.0)


def test_unknown_offsets_keep_the_series_and_revoked_partitions_lose_it() -> None:
    gauges, registry = lag()
    gauges.update({TP: Offsets(3, 8), OTHER: None}, now_ms=1_000.0)
    assert value(registry, "edgestream_consumer_lag_records", TP) == 5
    assert value(registry, "edgestream_consumer_lag_records", OTHER) == 0  # created, not yet known
    gauges.update({TP: None, OTHER: Offsets(1, 1)}, now_ms=2_000.0)
    assert value(registry, "edgestream_consumer_lag_records", TP) == 5
    gauges.update({OTHER: Offsets(1, 1)}, now_ms=3_000.0)
    assert value(registry, "edgestream_consumer_lag_records", TP) is None
    assert value(registry, "edgestream_consumer_lag_seconds", TP) is None


def test_a_device_clock_ahead_reads_zero_not_a_negative_age() -> None:
    gauges, registry = lag()
    gauges.update({TP: Offsets(0, 5)}, now_ms=10_000.0)
    gauges.fetched(TP, 20_000.0)  # a timestamp from the future
    gauges.update({TP: Offsets(1, 5)}, now_ms=10_500.0)
    assert value(registry, "edgestream_consumer_lag_seconds", TP) == pytest.approx(0.5)


async def test_consumer_offsets_reads_position_and_end_from_the_fetch_state() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", enable_auto_commit=False)
    try:
        assert consumer_offsets(consumer) == {}
        consumer.assign([TP])
        assert consumer_offsets(consumer) == {TP: None}  # no position, no end yet
        state = consumer._subscription.subscription.assignment.state_value(TP)
        state.seek(40)  # what consumer.seek does once started (no fetcher before)
        assert consumer_offsets(consumer) == {TP: None}  # no end before a fetch response
        state.highwater = 45
        assert consumer_offsets(consumer) == {TP: Offsets(40, 45)}
        state.lso = 43  # read_committed: the last stable offset is the end
        assert consumer_offsets(consumer) == {TP: Offsets(40, 43)}
    finally:
        await consumer.stop()
