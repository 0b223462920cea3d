"""The simulated devices' librdkafka clients, on the real TLS broker with the production ACLs: a
device's records land where the contract's partitioner says, its reader hands over every reply
produced after it started and none before, and a write its identity may not make fails its future."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from edgestream.pipeline import kafka
from edgestream.pipeline.contract.partitioner import partition_for
from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import TlsFiles
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.catalogue import (
    device_group_prefix,
    ingest_topic,
    parse_topic,
    replies_topic,
    results_topic,
)
from edgestream.workers.local.broker.state import BrokerState
from edgestream.workers.local.rdkafka import DeviceConsumer, DeviceProducer, SendFailed, rdkafka_config

from ..conftest import EdgeRegion


def test_the_config_carries_the_identity_and_verifies_the_brokers_name(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    config = rdkafka_config(KafkaSettings.tls("kafka-1:9093,kafka-2:9093", files), "dev-1")
    assert config["bootstrap.servers"] == "kafka-1:9093,kafka-2:9093"
    assert config["security.protocol"] == "SSL"
    assert (config["ssl.ca.location"], config["ssl.certificate.location"], config["ssl.key.location"]) == (
        str(files.ca_file),
        str(files.cert_file),
        str(files.key_file),
    )
    assert config["ssl.endpoint.identification.algorithm"] == "https"
    plain = rdkafka_config(KafkaSettings(bootstrap_servers="127.0.0.1:9092"), "dev-1")
    assert "security.protocol" not in plain
    assert not any(k.startswith("ssl.") for k in plain)


def _device(kafka_broker: BrokerState, edge_region: EdgeRegion) -> KafkaSettings:
    if kafka_broker.security_protocol != "SSL":
        return edge_region.bootstrap
    return kafka_broker.kafka(Identity.device(edge_region.name))


async def _wait_for(check: Any, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.broker
async def test_a_devices_records_land_on_the_contracts_partition(
    kafka_broker: BrokerState, edge_region: EdgeRegion
) -> None:
    topic = ingest_topic(edge_region.name, "embedding")
    partitions = parse_topic(topic).spec.partitions
    keys = [b"sensor-0042", *(f"terminal-{i}".encode() for i in range(40))]
    producer = DeviceProducer(_device(kafka_broker, edge_region), "test-rdkafka-producer")
    await producer.start()
    try:
        deliveries = [producer.send(topic, b"v-" + key, key=key) for key in keys]
        await asyncio.wait_for(asyncio.gather(*deliveries), 30)
    finally:
        await producer.stop()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    async with kafka.started(kafka.consumer(edge_region.bootstrap, "test-rdkafka-check")) as reader:
        where = {r.key: r.partition async for r in kafka.read_to_end(reader, tps, timeout_ms=30_000)}
    assert set(where) == set(keys)
    assert where == {key: partition_for(key, partitions) for key in keys}
    assert where[b"sensor-0042"] == 1  # the contract's worked example


@pytest.mark.broker
async def test_the_reader_hands_over_what_came_after_it_started_and_nothing_before(
    kafka_broker: BrokerState, edge_region: EdgeRegion
) -> None:
    topic = replies_topic(edge_region.name)
    got: list[tuple[bytes, bytes]] = []

    def on_records(records: list[Any], now_ms: float) -> None:
        assert now_ms > 0
        got.extend((r.key(), r.value()) for r in records)

    async with kafka.started(kafka.producer(edge_region.worker_kafka, "test-rdkafka-replies")) as edge:
        await edge.send_and_wait(topic, b"before", key=b"dev-0")
        reader = DeviceConsumer(
            _device(kafka_broker, edge_region),
            "test-rdkafka-reader",
            f"{device_group_prefix(edge_region.name)}test",
            on_records,
        )
        await reader.start_from_end(topic, parse_topic(topic).spec.partitions)
        try:
            sent = [(f"dev-{i % 7}".encode(), f"after-{i}".encode()) for i in range(60)]
            for key, value in sent:
                await edge.send(topic, value, key=key)
            await edge.flush()
            await _wait_for(lambda: len(got) >= len(sent))
            await asyncio.sleep(0.3)  # nothing more comes
        finally:
            await reader.stop()
    assert sorted(got) == sorted(sent)
    assert reader.failure is None


@pytest.mark.broker
async def test_a_write_the_identity_may_not_make_fails_its_future(
    kafka_broker: BrokerState, edge_region: EdgeRegion
) -> None:
    if kafka_broker.security_protocol != "SSL":
        pytest.skip("ACLs are enforced only on the TLS broker")
    producer = DeviceProducer(_device(kafka_broker, edge_region), "test-rdkafka-refused")
    await producer.start()
    try:
        allowed = producer.send(ingest_topic(edge_region.name, "frame"), b"ok", key=b"dev-1")
        refused = producer.send(results_topic(edge_region.name), b"no", key=b"dev-1")
        await asyncio.wait_for(allowed, 30)
        with pytest.raises(SendFailed, match="uthoriz"):
            await asyncio.wait_for(refused, 30)
    finally:
        await producer.stop()


async def test_unreadable_tls_files_are_a_config_error(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "ca.pem", tmp_path / "missing-cert.pem", tmp_path / "missing-key.pem")
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    kafka_settings = KafkaSettings.tls("127.0.0.1:9", files)
    with pytest.raises(ConfigError, match="edgestream-test-fleet"):
        await DeviceProducer(kafka_settings, "edgestream-test-fleet").start()
    reader = DeviceConsumer(
        kafka_settings, "edgestream-test-fleet", "edgestream-device-x.test", lambda r, t: None
    )
    with pytest.raises(ConfigError, match="edgestream-test-fleet"):
        await reader.start_from_end("edge.x.replies", 3)
