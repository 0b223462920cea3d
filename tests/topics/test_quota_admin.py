"""Client quotas against the session broker: applied, checked, removed, refused without the right, and
enforced on a device's producer."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner, Result

from edgestream.cli import app
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.acl_admin import apply_policy
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import ingest_topic, region_topics
from edgestream.topics.quota_admin import (
    QuotaPermissionDenied,
    apply_quotas,
    check_quotas,
    describe_quotas,
)
from edgestream.topics.quotas import DeviceQuotas, QuotaEntity, QuotaKey
from edgestream.workers.local.broker.state import BrokerState
from edgestream.workers.local.rdkafka import rdkafka_config

pytestmark = pytest.mark.broker

SMALL = DeviceQuotas(producer_byte_rate=2048, consumer_byte_rate=None, request_percentage=30)
BYTES_ONLY = DeviceQuotas(producer_byte_rate=2048, consumer_byte_rate=None, request_percentage=None)


def _region() -> str:
    return f"q{uuid.uuid4().hex[:8]}"


async def test_apply_sets_exactly_the_policy_and_touches_no_other_entity(bootstrap: KafkaSettings) -> None:
    eu, us = _region(), _region()
    other = QuotaEntity(f"device-{_region()}")
    await apply_quotas(bootstrap, [other.user.removeprefix("device-")], DeviceQuotas(producer_byte_rate=5))
    try:
        changes = await apply_quotas(bootstrap, [eu, us], SMALL)
        assert {(c.entity.user, c.key) for c in changes} == {
            (f"device-{r}", k)
            for r in (eu, us)
            for k in (QuotaKey.PRODUCER_BYTE_RATE, QuotaKey.REQUEST_PERCENTAGE)
        }
        seen = await describe_quotas(bootstrap)
        assert seen[QuotaEntity(f"device-{eu}")] == {
            QuotaKey.PRODUCER_BYTE_RATE: 2048.0,
            QuotaKey.REQUEST_PERCENTAGE: 30.0,
        }
        assert seen[other][QuotaKey.PRODUCER_BYTE_RATE] == 5.0
        assert await apply_quotas(bootstrap, [eu, us], SMALL) == []  # nothing left to change

        wanted = DeviceQuotas(producer_byte_rate=4096, consumer_byte_rate=9, request_percentage=None)
        _, diff = await check_quotas(bootstrap, [eu], wanted)
        assert [(c.key, c.actual, c.wanted) for c in diff] == [
            (QuotaKey.PRODUCER_BYTE_RATE, 2048.0, 4096.0),
            (QuotaKey.CONSUMER_BYTE_RATE, None, 9.0),
            (QuotaKey.REQUEST_PERCENTAGE, 30.0, None),
        ]

        await apply_quotas(bootstrap, [eu], DeviceQuotas.none())
        seen = await describe_quotas(bootstrap)
        assert QuotaEntity(f"device-{eu}") not in seen
        assert QuotaEntity(f"device-{us}") in seen
        assert other in seen
    finally:
        await apply_quotas(bootstrap, [eu, us, other.user.removeprefix("device-")], DeviceQuotas.none())


async def test_a_principal_without_the_right_is_refused(
    kafka_broker: BrokerState, bootstrap: KafkaSettings
) -> None:
    region = _region()
    device = kafka_broker.kafka(Identity.device(region), request_timeout_ms=10_000)
    with pytest.raises(QuotaPermissionDenied, match="ALTER_CONFIGS"):
        await apply_quotas(device, [region], SMALL)
    assert QuotaEntity(f"device-{region}") not in await describe_quotas(bootstrap)


def _throttled_ms(kafka: KafkaSettings, topic: str, records: int, size: int) -> list[int]:
    """Produce as a device with librdkafka; the throttle times the broker's answers carried."""
    throttles: list[int] = []
    lock = threading.Lock()

    def on_throttle(event: Any) -> None:
        with lock:
            throttles.append(int(event.throttle_time * 1000))

    producer = Producer(
        {**rdkafka_config(kafka, "quota-test"), "throttle_cb": on_throttle, "linger.ms": 0, "acks": "all"}
    )
    for i in range(records):
        producer.produce(topic, b"x" * size, key=b"dev-%d" % i)
        producer.poll(0)
    assert producer.flush(30) == 0
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # throttle events are served by poll
        producer.poll(0.1)
    return throttles


async def test_the_broker_throttles_a_device_past_its_quota(
    kafka_broker: BrokerState, bootstrap: KafkaSettings
) -> None:
    limited, free = _region(), _region()
    for region in (limited, free):
        await ensure_topics(bootstrap, region_topics(region))
    await apply_policy(bootstrap, [limited, free])
    await apply_quotas(bootstrap, [limited], BYTES_ONLY)  # the byte rate alone throttles
    try:
        for region, throttled in ((limited, True), (free, False)):
            device = kafka_broker.kafka(Identity.device(region), request_timeout_ms=10_000)
            # 40 KiB against 2 KiB/s: Kafka measures over its ~10 s window, so 2.0x the quota
            seen = await asyncio.to_thread(_throttled_ms, device, ingest_topic(region, "embedding"), 40, 1024)
            assert (max(seen, default=0) > 0) is throttled, (region, seen)
    finally:
        await apply_quotas(bootstrap, [limited], DeviceQuotas.none())


async def _cli(bootstrap: KafkaSettings, *args: str, env: dict[str, str] | None = None) -> Result:
    """``edgestream topics quotas <args>`` against the session broker as admin, in a thread."""
    files = bootstrap.files
    assert files is not None
    tls = {
        "EDGESTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
        "EDGESTREAM_KAFKA_SSL_CA_FILE": str(files.ca_file),
        "EDGESTREAM_KAFKA_SSL_CERT_FILE": str(files.cert_file),
        "EDGESTREAM_KAFKA_SSL_KEY_FILE": str(files.key_file),
        "COLUMNS": "250",
    }
    argv = ["topics", "quotas", "--bootstrap", bootstrap.bootstrap_servers, *args]
    return await asyncio.to_thread(
        CliRunner().invoke, app, argv, env={**tls, **(env or {})}, catch_exceptions=False
    )


async def test_cli_apply_and_check(bootstrap: KafkaSettings) -> None:
    region = _region()
    try:
        result = await _cli(bootstrap, "--check", "-r", region)
        assert result.exit_code == 2, result.output
        assert "1 value(s) differ" in result.output  # the default: produce only

        result = await _cli(bootstrap, "-r", region, "--request-percentage", "40")
        assert result.exit_code == 0, result.output
        assert f"user=device-{region} producer_byte_rate: unset -> 4 MiB/s" in result.output
        assert "request_percentage: unset -> 40%" in result.output
        assert "2 quota value(s) changed" in result.output
        assert (await _cli(bootstrap, "--check", "-r", region)).exit_code == 2  # the default has no 40%

        env = {"EDGESTREAM_DEVICE_QUOTA_CONSUMER_BYTE_RATE": "4096"}
        result = await _cli(bootstrap, "-r", region, "--producer-byte-rate", "2048", env=env)
        assert result.exit_code == 0, result.output
        assert "producer_byte_rate: 4 MiB/s -> 2,048 B/s" in result.output
        assert "consumer_byte_rate: unset -> 4,096 B/s" in result.output
        assert "removed user=device-" in result.output
        assert "request_percentage: 40% -> unset" in result.output
        result = await _cli(bootstrap, "--check", "-r", region, "--producer-byte-rate", "2048", env=env)
        assert result.exit_code == 0, result.output
        assert "match the policy" in result.output
        seen = await describe_quotas(bootstrap)
        assert seen[QuotaEntity(f"device-{region}")] == {
            QuotaKey.PRODUCER_BYTE_RATE: 2048.0,
            QuotaKey.CONSUMER_BYTE_RATE: 4096.0,
        }

        result = await _cli(bootstrap, "-r", region, "--producer-byte-rate", "0")
        assert result.exit_code == 1
        assert "greater than 0" in result.output

        result = await _cli(bootstrap, "-r", region, "--unlimited", "--producer-byte-rate", "5")
        assert result.exit_code == 1
        assert "leave out the rates" in result.output
        assert (await _cli(bootstrap, "-r", region, "--unlimited")).exit_code == 0
        assert QuotaEntity(f"device-{region}") not in await describe_quotas(bootstrap)
    finally:
        await apply_quotas(bootstrap, [region], DeviceQuotas.none())
