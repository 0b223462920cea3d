"""Topic admin against the real broker: idempotent create, verification, list, describe, delete.

Each test works in its own region (``t`` + 8 hex digits), so its topics never collide with another
test's, and deletes them afterwards. The shared cloud and control topics are only validated by the
broker (``validate_only``), never created, so these tests leave the broker as they found it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from edgestream.pipeline import kafka
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics import admin
from edgestream.topics.admin import (
    alter_topic_config,
    delete_topics,
    describe_topics,
    ensure_topics,
    list_topics,
)
from edgestream.topics.catalogue import (
    HOUR_MS,
    Topic,
    all_topics,
    audit_topic,
    dlq_topic,
    region_topics,
    results_topic,
    shared_topics,
)
from edgestream.topics.errors import (
    BrokerUnavailable,
    SettingDifference,
    TopicConfigMismatch,
    TopicsNotFound,
    UnknownTopic,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable


@pytest.fixture
async def region(bootstrap: KafkaSettings) -> AsyncIterator[str]:
    """A fresh region name; its topics are deleted after the test."""
    name = f"t{uuid.uuid4().hex[:8]}"
    yield name
    await delete_topics(bootstrap, [t.name for t in region_topics(name)])


@pytest.fixture
async def raw_admin(bootstrap: KafkaSettings) -> AsyncIterator[AIOKafkaAdminClient]:
    """A plain admin client, to set up wrong topics and check the broker independently."""
    async with kafka.started(kafka.admin(bootstrap, "test-topics")) as client:
        yield client


async def _create_raw(client: AIOKafkaAdminClient, topic: Topic, partitions: int, **configs: str) -> None:
    """Create a topic behind the catalogue's back: catalogue configs overridden by ``configs``."""
    wanted = topic.spec.topic_configs() | {key.replace("_", "."): value for key, value in configs.items()}
    response = await client.create_topics([NewTopic(topic.name, partitions, 1, topic_configs=wanted)])
    assert [e[1] for e in response.topic_errors] == [0]
    await _wait_visible(client, topic.name)


async def _wait_visible(client: AIOKafkaAdminClient, name: str) -> None:
    """Wait until the broker's metadata shows the topic with leaders, as for a topic made long ago."""
    async with asyncio.timeout(10):
        while True:
            found = {t["topic"]: t for t in await client.describe_topics()}  # all topics: no auto-create
            if name in found and all(p["leader"] >= 0 for p in found[name]["partitions"]):
                return
            await asyncio.sleep(0.02)


def _names(topics: list[Topic]) -> list[str]:
    return [t.name for t in topics]


async def test_create_is_idempotent(bootstrap: KafkaSettings, region: str) -> None:
    topics = region_topics(region)
    first = await ensure_topics(bootstrap, topics)
    assert first.created == _names(topics)
    assert first.existing == []
    second = await ensure_topics(bootstrap, topics)
    assert second.created == []
    assert second.existing == _names(topics)


async def test_broker_configs_equal_the_catalogue(
    bootstrap: KafkaSettings, region: str, raw_admin: AIOKafkaAdminClient
) -> None:
    topics = region_topics(region)
    await ensure_topics(bootstrap, topics)
    # Read back with aiokafka directly, all configs, not through the module under test.
    metadata = {t["topic"]: t for t in await raw_admin.describe_topics()}
    responses = await raw_admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, t.name) for t in topics]
    )
    broker_configs: dict[str, dict[str, Any]] = {
        r["resource_name"]: {e["config_names"]: e["config_value"] for e in r["config_entries"]}
        for response in responses
        for r in response.to_object()["resources"]
    }
    for topic in topics:
        assert len(metadata[topic.name]["partitions"]) == topic.spec.partitions
        configs = broker_configs[topic.name]
        for key, value in topic.spec.topic_configs().items():
            assert configs[key] == value, (topic.name, key)


async def test_list_and_describe_return_what_was_created(bootstrap: KafkaSettings, region: str) -> None:
    topics = region_topics(region)
    await ensure_topics(bootstrap, topics)
    listed = await list_topics(bootstrap)
    assert listed == sorted(listed)
    assert set(_names(topics)) <= set(listed)

    described = await describe_topics(bootstrap, _names(topics))
    assert [d.name for d in described] == _names(topics)
    for d, topic in zip(described, topics, strict=True):
        assert d.topic == topic
        assert d.partitions == topic.spec.partitions
        assert d.replication_factor == 1
        assert dict(d.configs) == topic.spec.topic_configs()
        assert d.differences() == []


TOPIC_ALREADY_EXISTS = 36


async def test_every_catalogue_entry_is_accepted_by_the_broker(
    bootstrap: KafkaSettings, region: str, raw_admin: AIOKafkaAdminClient
) -> None:
    topics = all_topics([region])
    new_topics = [
        NewTopic(t.name, t.spec.partitions, 1, topic_configs=t.spec.topic_configs()) for t in topics
    ]
    response = await raw_admin.create_topics(new_topics, validate_only=True)
    errors = {e[0]: e[1:] for e in response.topic_errors}
    shared = {t.name for t in shared_topics()}
    # The shared cloud and control topics may exist already (earlier tests of the session made them);
    # then ensure_topics, which refuses any difference from the catalogue, stands in for the validation.
    existing = {name for name, (code, _) in errors.items() if name in shared and code == TOPIC_ALREADY_EXISTS}
    await ensure_topics(bootstrap, [t for t in topics if t.name in existing])
    assert {n: e for n, e in errors.items() if n not in existing} == {
        t.name: (0, None) for t in topics if t.name not in existing
    }


async def test_different_partition_count_is_named(
    bootstrap: KafkaSettings, region: str, raw_admin: AIOKafkaAdminClient
) -> None:
    results = next(t for t in region_topics(region) if t.name == results_topic(region))
    await _create_raw(raw_admin, results, partitions=1)

    with pytest.raises(TopicConfigMismatch) as info:
        await ensure_topics(bootstrap, region_topics(region))
    assert info.value.differences == (SettingDifference(results.name, "partitions", "3", "1"),)
    assert info.value.reason == "topic_config_mismatch"
    assert results.name in str(info.value)
    assert "partitions expected 3, broker has 1" in str(info.value)
    # A mismatch may mean the wrong cluster: nothing else was created.
    assert [n for n in await list_topics(bootstrap) if region in n] == [results.name]


async def test_different_retention_is_named(
    bootstrap: KafkaSettings, region: str, raw_admin: AIOKafkaAdminClient
) -> None:
    audit = next(t for t in region_topics(region) if t.name == audit_topic(region))
    await _create_raw(raw_admin, audit, partitions=audit.spec.partitions, retention_ms=str(HOUR_MS))

    with pytest.raises(TopicConfigMismatch) as info:
        await ensure_topics(bootstrap, region_topics(region))
    expected = str(audit.spec.retention_ms)
    assert info.value.differences == (SettingDifference(audit.name, "retention.ms", expected, str(HOUR_MS)),)
    assert f"retention.ms expected {expected}, broker has {HOUR_MS}" in str(info.value)


async def test_a_lowered_message_limit_is_named(
    bootstrap: KafkaSettings, region: str, raw_admin: AIOKafkaAdminClient
) -> None:
    """Every bound of the contract is sized to the broker's default message limit: a results topic
    lowered below it is drift ``topics create`` names (the worker would dead-letter what it refuses)."""
    results = next(t for t in region_topics(region) if t.name == results_topic(region))
    await _create_raw(raw_admin, results, partitions=results.spec.partitions, max_message_bytes="4000")

    with pytest.raises(TopicConfigMismatch) as info:
        await ensure_topics(bootstrap, region_topics(region))
    assert info.value.differences == (
        SettingDifference(results.name, "max.message.bytes", "1048588", "4000"),
    )


async def test_altering_one_config_keeps_the_others_set_on_the_topic(
    bootstrap: KafkaSettings, region: str
) -> None:
    """AlterConfigs (aiokafka's) replaces a topic's whole set: altering one config must send the others
    too, or the topic loses its retention and segment settings."""
    await ensure_topics(bootstrap, region_topics(region))
    results = results_topic(region)
    await alter_topic_config(bootstrap, results, "max.message.bytes", "4000")
    [described] = await describe_topics(bootstrap, [results])
    assert described.differences() == [SettingDifference(results, "max.message.bytes", "1048588", "4000")]
    await alter_topic_config(bootstrap, results, "max.message.bytes", "1048588")
    [described] = await describe_topics(bootstrap, [results])
    assert described.differences() == []


async def test_mismatch_names_every_topic_and_every_setting(
    bootstrap: KafkaSettings, region: str, raw_admin: AIOKafkaAdminClient
) -> None:
    by_name = {t.name: t for t in region_topics(region)}
    dlq, audit = by_name[dlq_topic(region)], by_name[audit_topic(region)]
    await _create_raw(raw_admin, dlq, partitions=2, cleanup_policy="compact")
    await _create_raw(raw_admin, audit, partitions=1, retention_ms="1000")

    with pytest.raises(TopicConfigMismatch) as info:
        await ensure_topics(bootstrap, list(by_name.values()))
    assert info.value.topics == tuple(sorted([dlq.name, audit.name]))
    found = {(d.topic, d.setting): (d.expected, d.actual) for d in info.value.differences}
    assert found == {
        (dlq.name, "partitions"): ("1", "2"),
        (dlq.name, "cleanup.policy"): ("delete", "compact"),
        (audit.name, "partitions"): ("3", "1"),
        (audit.name, "retention.ms"): (str(audit.spec.retention_ms), "1000"),
    }
    for topic, setting in found:
        assert f"{topic}: {setting} expected" in str(info.value)


async def test_concurrent_creates_agree(bootstrap: KafkaSettings, region: str) -> None:
    topics = region_topics(region)
    reports = await asyncio.gather(*(ensure_topics(bootstrap, topics) for _ in range(4)))
    created = [name for report in reports for name in report.created]
    assert sorted(created) == sorted(_names(topics))  # each topic created exactly once
    for report in reports:
        assert sorted(report.created + report.existing) == sorted(_names(topics))


async def test_topic_created_by_another_process_meanwhile_counts_as_existing(
    bootstrap: KafkaSettings, region: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topics = region_topics(region)
    await ensure_topics(bootstrap, topics)
    _hide_region_once(monkeypatch, region)  # as if another process created them after our look

    report = await ensure_topics(bootstrap, topics)
    assert report.created == []
    assert report.existing == _names(topics)


async def test_topic_created_wrongly_meanwhile_is_still_verified(
    bootstrap: KafkaSettings, region: str, raw_admin: AIOKafkaAdminClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = next(t for t in region_topics(region) if t.name == results_topic(region))
    await _create_raw(raw_admin, results, partitions=2)
    _hide_region_once(monkeypatch, region)

    with pytest.raises(TopicConfigMismatch) as info:
        await ensure_topics(bootstrap, region_topics(region))
    assert info.value.differences == (SettingDifference(results.name, "partitions", "3", "2"),)


def _hide_region_once(monkeypatch: pytest.MonkeyPatch, region: str) -> None:
    """Make the first metadata read miss the region's topics: the create-create race, made certain."""
    real = admin._metadata
    calls = 0

    async def first_misses_region(client: AIOKafkaAdminClient) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        found = await real(client)
        if calls == 1:
            return {name: m for name, m in found.items() if f".{region}." not in name}
        return found

    monkeypatch.setattr(admin, "_metadata", first_misses_region)


async def test_foreign_topics_are_hidden_unless_asked(
    bootstrap: KafkaSettings, region: str, raw_admin: AIOKafkaAdminClient
) -> None:
    foreign = f"scratch_{region}"
    response = await raw_admin.create_topics([NewTopic(foreign, 1, 1)])
    assert [e[1] for e in response.topic_errors] == [0]
    try:
        await ensure_topics(bootstrap, region_topics(region))
        assert foreign not in await list_topics(bootstrap)
        everything = await list_topics(bootstrap, include_foreign=True)
        assert foreign in everything
        assert set(_names(region_topics(region))) <= set(everything)
        with pytest.raises(UnknownTopic):
            await delete_topics(bootstrap, [foreign])  # the admin never deletes foreign topics
    finally:
        await raw_admin.delete_topics([foreign])


async def test_describe_refuses_unknown_and_missing_topics(bootstrap: KafkaSettings, region: str) -> None:
    with pytest.raises(UnknownTopic):
        await describe_topics(bootstrap, ["not.a.catalogue.topic"])
    with pytest.raises(TopicsNotFound) as info:
        await describe_topics(bootstrap, [results_topic(region)])
    assert info.value.names == (results_topic(region),)
    # Describing a missing topic must not auto-create it.
    assert results_topic(region) not in await list_topics(bootstrap)


async def test_delete_is_idempotent(bootstrap: KafkaSettings, region: str) -> None:
    names = _names(region_topics(region))
    await ensure_topics(bootstrap, region_topics(region))
    assert sorted(await delete_topics(bootstrap, names)) == sorted(names)
    assert await delete_topics(bootstrap, names) == []


_NO_BROKER = KafkaSettings(bootstrap_servers="127.0.0.1:1")
_CALLS: dict[str, Callable[[], Awaitable[object]]] = {
    "ensure": lambda: ensure_topics(_NO_BROKER, region_topics("eu-west"), timeout_ms=2000),
    "list": lambda: list_topics(_NO_BROKER, timeout_ms=2000),
    "describe": lambda: describe_topics(_NO_BROKER, [results_topic("eu-west")], timeout_ms=2000),
}


@pytest.mark.parametrize("call", sorted(_CALLS))
async def test_unreachable_broker_is_a_clear_error(call: str) -> None:
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1") as info:
        await _CALLS[call]()
    assert info.value.retriable
