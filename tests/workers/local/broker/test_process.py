"""The broker process: stale and missing state (pure), and the real session broker."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from edgestream.pipeline.errors import BrokerError
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.local.broker.config import NODE_ID, new_cluster_id
from edgestream.workers.local.broker.probe import ping
from edgestream.workers.local.broker.process import LocalBroker
from edgestream.workers.local.broker.settings import BrokerSettings
from edgestream.workers.local.broker.state import BrokerState
from tests.workers.local.broker.helpers import settings_in


def _local_only(state: BrokerState) -> None:
    if state.pid < 0:
        pytest.skip("the session uses an external broker (EDGESTREAM_TEST_BOOTSTRAP)")


def _home_of(state: BrokerState) -> Path:
    return state.data_dir.parent.parent


def test_a_state_file_naming_another_process_is_not_a_running_broker(tmp_path: Path) -> None:
    broker = LocalBroker(settings_in(tmp_path))
    broker.root.mkdir(parents=True)
    this_process = BrokerState(
        "127.0.0.1:1", "127.0.0.1:2", os.getpid(), broker.log_dir, broker.data_dir, 0.0
    )
    broker.state_file.write_text(this_process.to_json())

    assert broker.status() is None
    assert broker.stop() is False
    assert not broker.state_file.exists()  # stale: removed, and this process was not signalled


def test_an_unreadable_state_file_is_no_broker(tmp_path: Path) -> None:
    broker = LocalBroker(settings_in(tmp_path))
    broker.root.mkdir(parents=True)
    broker.state_file.write_text("{not json")

    assert broker.status() is None
    assert broker.stop() is False


def test_stop_without_a_broker_is_a_no_op(tmp_path: Path) -> None:
    broker = LocalBroker(settings_in(tmp_path))

    assert broker.status() is None
    assert broker.stop() is False
    assert broker.stop() is False


def test_status_reports_the_running_broker(kafka_broker: BrokerState) -> None:
    _local_only(kafka_broker)
    broker = LocalBroker(BrokerSettings(home=_home_of(kafka_broker)))

    assert broker.status() == kafka_broker
    assert ping(kafka_broker.kafka(), cluster_id=broker.cluster_id())
    assert not ping(kafka_broker.kafka(), cluster_id=new_cluster_id())  # not our cluster: not ready
    assert broker.config_file.read_text().count(kafka_broker.bootstrap) == 2  # listeners + advertised


def test_start_again_returns_the_running_broker(kafka_broker: BrokerState) -> None:
    _local_only(kafka_broker)

    again = LocalBroker(BrokerSettings(home=_home_of(kafka_broker))).start(timeout_s=30)

    assert again == kafka_broker


async def test_the_broker_answers_a_metadata_request(bootstrap: KafkaSettings) -> None:
    admin = AIOKafkaAdminClient(**bootstrap.client_kwargs(), request_timeout_ms=10_000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()

    host, _, port = bootstrap.bootstrap_servers.rpartition(":")
    assert [(b["node_id"], b["host"], b["port"]) for b in cluster["brokers"]] == [(NODE_ID, host, int(port))]
    assert cluster["cluster_id"]
    assert ping(bootstrap)


async def test_transactions_and_consumer_groups_work_on_one_node(bootstrap: KafkaSettings) -> None:
    topic = f"test.broker.{uuid.uuid4().hex[:12]}"
    admin = AIOKafkaAdminClient(**bootstrap.client_kwargs(), request_timeout_ms=10_000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**bootstrap.client_kwargs(), transactional_id=f"{topic}.tx")
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"committed")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        **bootstrap.client_kwargs(),
        group_id=f"{topic}.group",
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            record = await consumer.getone()
    finally:
        await consumer.stop()

    assert record.value == b"committed"


def test_the_broker_logs_through_log4j2_into_its_log_dir(kafka_broker: BrokerState) -> None:
    _local_only(kafka_broker)

    text = kafka_broker.server_log.read_text()

    assert "Kafka Server started" in text
    assert kafka_broker.bootstrap in text


def test_a_start_that_cannot_bind_fails_with_the_brokers_log(
    kafka_broker: BrokerState, tmp_path: Path
) -> None:
    _local_only(kafka_broker)
    taken_port = int(kafka_broker.bootstrap.rpartition(":")[2])
    broker = LocalBroker(BrokerSettings(home=tmp_path / "home", port=taken_port, controller_port=0))

    try:
        with pytest.raises(BrokerError, match=r"(?s)could not bind.*Address already in use"):
            broker.start(timeout_s=60)
        assert broker.status() is None
        assert not broker.state_file.exists()
        server_log = (broker.log_dir / "server.log").read_text()
        assert server_log.count("Exiting Kafka due to fatal exception") == 1  # a fixed port: no retry
    finally:
        broker.stop()
