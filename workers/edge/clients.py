"""The edge worker's Kafka clients: the region group's consumer, its rebalance listener and the sink of
its delivery mode."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError
from aiokafka.structs import OffsetAndMetadata

from edgestream.pipeline import kafka
from edgestream.topics.catalogue import edge_group
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.edge.sinks import AckSink, Sink, TransactionalSink
from edgestream.workers.edge.txnsink import WorkerTransactionalSink, membership_of, worker_transactional_id

log = logging.getLogger(__name__)

CommitOffsets = Callable[[dict[TopicPartition, OffsetAndMetadata]], Awaitable[None]]
"""Commits consumed offsets through the group's consumer (the at-least-once sink's last step)."""


def consumer_of(settings: WorkerSettings, node_id: str) -> AIOKafkaConsumer:
    """The region group's consumer: the factory's manual commits and read_committed, fetches bounded
    for backpressure, a short session so that a dead worker's partitions move on quickly."""
    return kafka.consumer(
        settings.kafka,
        node_id,
        group_id=edge_group(settings.region),
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_poll_records=settings.fetch_max_records,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=2_000,
    )


def sink_of(
    settings: WorkerSettings,
    node_id: str,
    *,
    commit: CommitOffsets,
    consumer: AIOKafkaConsumer,
) -> Sink:
    """The sink of ``settings.delivery`` (and ``settings.transactions``); ``commit`` commits consumed
    offsets (at-least-once only); ``consumer`` is the group member whose generation fences per_worker
    transactions."""
    if settings.delivery == "at_least_once":
        return AckSink(connection=settings.kafka, client_id=node_id, commit=commit)
    if settings.transactions == "per_worker":
        return WorkerTransactionalSink(
            connection=settings.kafka,
            group_id=edge_group(settings.region),
            transactional_id=worker_transactional_id(settings.region, node_id),
            client_id=node_id,
            transaction_timeout_ms=settings.resolved_transaction_timeout_ms(),
            membership=lambda: membership_of(consumer),
        )
    return TransactionalSink(
        connection=settings.kafka,
        group_id=edge_group(settings.region),
        client_id=node_id,
        transaction_timeout_ms=settings.resolved_transaction_timeout_ms(),
    )


def owned_commit(consumer: AIOKafkaConsumer) -> CommitOffsets:
    """Commits, through ``consumer``, the offsets of the partitions it still owns; a commit refused
    after a rebalance is logged, not raised (the new owner re-reads from the last commit)."""

    async def commit(positions: dict[TopicPartition, OffsetAndMetadata]) -> None:
        owned = {tp: pos for tp, pos in positions.items() if tp in consumer.assignment()}
        if not owned:
            return
        try:
            await consumer.commit(owned)
        except CommitFailedError as err:
            log.warning("commit refused after a rebalance, records will be redelivered: %s", err)

    return commit


Partitions = Callable[[set[TopicPartition]], Awaitable[None]]
"""A rebalance callback: the partitions revoked or assigned."""


class FailingListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Calls the worker on a rebalance. aiokafka logs and swallows a listener's exception; this one
    hands it to ``fail`` first, which ends the worker: a partition without its producer or position
    cannot be served safely."""

    def __init__(
        self, on_revoked: Partitions, on_assigned: Partitions, fail: Callable[[BaseException], None]
    ) -> None:
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned
        self._fail = fail

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            await self._on_revoked(revoked)
        except Exception as err:
            self._fail(err)
            raise

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        try:
            await self._on_assigned(assigned)
        except Exception as err:
            self._fail(err)
            raise
