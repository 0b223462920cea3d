"""aiokafka's defaults are unsafe for this job (acks=1, no idempotence, timed auto-commit,
read_uncommitted); the worker sets each one explicitly, and this checks the clients it builds."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from aiokafka import TopicPartition

from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.serving.served import load_models
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.edge.sinks import AckSink, TransactionalSink, transactional_id
from edgestream.workers.edge.worker import EdgeWorker

if TYPE_CHECKING:
    from pathlib import Path


def _worker(home: Path, **overrides: object) -> EdgeWorker:
    settings = WorkerSettings(
        region="eu-west",
        home=home,
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        **overrides,  # type: ignore[arg-type]
    )
    keyring = KeyRing({"eu-west": {1: bytes(32)}})
    return EdgeWorker(settings, keyring=keyring, models=load_models(settings))


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
async def test_consumer_commits_by_hand_and_reads_only_committed(model_home: Path, delivery: str) -> None:
    worker = _worker(model_home, delivery=delivery)
    await worker.stop()  # never started: closes the clients it built
    consumer = worker.consumer
    assert consumer._enable_auto_commit is False
    assert consumer._isolation_level == "read_committed"
    assert consumer._group_id == "edgestream-edge-eu-west"


async def test_exactly_once_producers_are_transactional_per_input_partition(model_home: Path) -> None:
    worker = _worker(model_home, transactions="per_partition")
    await worker.stop()
    sink = worker.sink
    assert isinstance(sink, TransactionalSink)
    tp = TopicPartition("edge.eu-west.ingest.frame", 2)
    producer = sink.make_producer(tp)
    await producer.stop()
    assert producer._sender._acks == -1  # acks=all
    assert producer._txn_manager is not None, "idempotence (and transactions) enabled"
    assert producer._txn_manager.transactional_id == "edgestream-edge-eu-west-edge.eu-west.ingest.frame-2"
    assert transactional_id("g", tp) != transactional_id("g", TopicPartition(tp.topic, 1))


async def test_at_least_once_producer_is_idempotent_with_acks_all(model_home: Path) -> None:
    worker = _worker(model_home, delivery="at_least_once")
    await worker.stop()
    sink = worker.sink
    assert isinstance(sink, AckSink)
    assert sink.producer._sender._acks == -1
    assert sink.producer._txn_manager is not None, "idempotent producer"
    assert sink.producer._txn_manager.transactional_id is None


@pytest.mark.parametrize(
    ("delivery", "transactions", "together"),
    [
        ("exactly_once", "per_worker", True),
        ("exactly_once", "per_partition", False),
        ("at_least_once", "per_worker", False),
    ],
)
async def test_cloud_summaries_span_partitions_only_where_they_commit_in_one_transaction(
    model_home: Path, delivery: str, transactions: str, together: bool
) -> None:
    worker = _worker(model_home, delivery=delivery, transactions=transactions)
    await worker.stop()
    assert worker.sink.one_commit is together
    assert worker.commits.one_commit is together, "the commit stage merges as its sink commits"
