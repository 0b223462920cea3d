"""Topic admin over aiokafka's admin client: idempotent create, verify, list, describe, delete.

Each call opens one admin client, uses it and closes it. Three habits of ``AIOKafkaAdminClient``
(aiokafka 0.14) shape this module:

- ``create_topics``, ``delete_topics``, ``describe_configs`` and ``describe_topics`` return raw
  responses and raise nothing for per-topic error codes; every code is checked here.
- ``describe_topics(names)`` sends a Metadata request that allows auto-creation, so on a broker with
  ``auto.create.topics.enable=true`` (Kafka's default) describing a missing topic creates it with the
  broker's defaults. Only all-topics metadata is read here, which never creates anything.
- A topic is in the metadata a moment before its configs can be described and its partitions have
  leaders, so a topic that is new (ours or another process's) is waited for, within ``timeout_ms``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
    for_code,
)

from edgestream.pipeline import kafka
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.catalogue import CLEANUP_POLICY, Topic, is_catalogue_topic, parse_topic
from edgestream.topics.errors import (
    BrokerUnavailable,
    SettingDifference,
    TopicAdminError,
    TopicConfigMismatch,
    TopicsNotFound,
)
from edgestream.topics.replication import MIN_INSYNC_REPLICAS, min_insync_replicas, replication_factor

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
    from contextlib import AbstractAsyncContextManager

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS: Final = 30_000
"""Bound on each broker request and on waiting for new topics to become usable."""
UNSET: Final = "<unset>"
"""Shown as the broker's value of a managed config it does not report."""

_CLIENT_ID: Final = "edgestream-topics"
_FIRST_BACKOFF_S: Final = 0.02
_MAX_BACKOFF_S: Final = 0.5


@dataclass(frozen=True, slots=True)
class EnsureReport:
    """What `ensure_topics` did, in the order the topics were given."""

    created: list[str]
    """Topics this call created."""
    existing: list[str]
    """Topics that already existed (or another process created meanwhile) and match the catalogue."""


@dataclass(frozen=True, slots=True)
class TopicDescription:
    """A topic as the broker has it, beside its catalogue entry."""

    name: str
    """The topic's name."""
    partitions: int
    """Partition count on the broker."""
    replication_factor: int
    """Replicas of the first partition on the broker."""
    configs: Mapping[str, str] = field(hash=False)
    """The broker's values of the configs the catalogue manages (`UNSET` where it reports none)."""
    topic: Topic
    """The catalogue entry the name parses to."""

    def differences(self) -> list[SettingDifference]:
        """Every managed setting whose broker value differs from the catalogue's."""
        diffs = []
        if self.partitions != self.topic.spec.partitions:
            diffs.append(
                SettingDifference(
                    self.name, "partitions", str(self.topic.spec.partitions), str(self.partitions)
                )
            )
        for key, expected in self.topic.spec.topic_configs().items():
            actual = self.configs.get(key, UNSET)
            if not _same_config(key, expected, actual):
                diffs.append(SettingDifference(self.name, key, expected, actual))
        return diffs


@dataclass(frozen=True, slots=True)
class _Metadata:
    """One topic in the cluster metadata."""

    partitions: int
    """Partition count."""
    replication_factor: int
    """Replicas of the first partition."""
    ready: bool
    """No error on the topic or any partition, and every partition has a leader."""


def _same_config(key: str, expected: str, actual: str) -> bool:
    if key == CLEANUP_POLICY:  # a list: "compact,delete" == "delete,compact"
        return {p.strip() for p in expected.split(",")} == {p.strip() for p in actual.split(",")}
    return expected == actual


def _unique(topics: Iterable[Topic]) -> list[Topic]:
    return list({topic.name: topic for topic in topics}.values())


@asynccontextmanager
async def admin_session(
    connection: KafkaSettings,
    client_id: str,
    timeout_ms: int,
    *,
    client_kwargs: Mapping[str, Any] | None = None,
    error: type[TopicAdminError] = TopicAdminError,
    operation: str = "admin request",
) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client, closed on the way out; aiokafka's errors become edgestream's: the broker
    unreachable or silent is `BrokerUnavailable`, any other Kafka error ``error(operation, ...)``.

    ``client_kwargs`` go to `AIOKafkaAdminClient` as they are and win over those ``connection`` gives
    (e.g. SASL settings, which `KafkaSettings` does not model). The ACL and quota modules use it too.
    """
    bootstrap_servers = connection.bootstrap_servers
    client = kafka.admin(connection, client_id, request_timeout_ms=timeout_ms, **(client_kwargs or {}))
    try:
        await client.start()
        yield client
    except KafkaConnectionError as e:
        raise BrokerUnavailable(bootstrap_servers, str(e)) from e
    except TimeoutError as e:
        raise BrokerUnavailable(bootstrap_servers, f"no answer within {timeout_ms} ms") from e
    except KafkaError as e:
        raise error(operation, str(e)) from e
    finally:
        await client.close()


def _admin_client(
    connection: KafkaSettings, timeout_ms: int
) -> AbstractAsyncContextManager[AIOKafkaAdminClient]:
    """`admin_session` as the topic calls open it."""
    return admin_session(connection, _CLIENT_ID, timeout_ms)


async def _backoff(deadline: float, delay_s: float) -> float:
    """Sleep for ``delay_s`` (never past the deadline) and return the next, doubled, delay."""
    await asyncio.sleep(max(0.0, min(delay_s, deadline - time.monotonic())))
    return min(delay_s * 2, _MAX_BACKOFF_S)


async def _metadata(client: AIOKafkaAdminClient) -> dict[str, _Metadata]:
    """Every topic in the cluster. All-topics metadata: asking by name could auto-create the topic."""
    found: dict[str, _Metadata] = {}
    for entry in await client.describe_topics(None):
        partitions: list[dict[str, Any]] = entry["partitions"]
        ready = (
            entry["error_code"] == 0
            and bool(partitions)
            and all(p["error_code"] == 0 and p["leader"] >= 0 for p in partitions)
        )
        replicas = len(partitions[0]["replicas"]) if partitions else 0
        found[entry["topic"]] = _Metadata(len(partitions), replicas, ready)
    return found


async def _wait_ready(
    client: AIOKafkaAdminClient, names: Sequence[str], deadline: float
) -> dict[str, _Metadata]:
    """Cluster metadata once every name in it is ready (leaders elected), within the deadline."""
    delay_s = _FIRST_BACKOFF_S
    while True:
        metadata = await _metadata(client)
        pending = [name for name in names if name not in metadata or not metadata[name].ready]
        if not pending:
            return metadata
        if time.monotonic() >= deadline:
            raise TopicAdminError("wait for new topics", f"not ready in time: {', '.join(pending)}")
        log.debug("waiting for %d topic(s) to become ready: %s", len(pending), pending)
        delay_s = await _backoff(deadline, delay_s)


async def _configs(
    client: AIOKafkaAdminClient, topics: Sequence[Topic], deadline: float
) -> dict[str, dict[str, str]]:
    """The broker's values of each topic's managed configs; retries a topic the broker does not know
    yet (just created elsewhere) until the deadline."""
    found: dict[str, dict[str, str]] = {}
    pending = list(topics)
    delay_s = _FIRST_BACKOFF_S
    while pending:
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, t.name, dict.fromkeys(t.spec.topic_configs()))
            for t in pending
        ]
        retry: set[str] = set()
        failures: list[str] = []
        for response in await client.describe_configs(resources):
            for resource in response.to_object()["resources"]:
                name, code = resource["resource_name"], resource["error_code"]
                if code == UnknownTopicOrPartitionError.errno:
                    retry.add(name)
                elif code != 0:
                    failures.append(f"{name}: {for_code(code).__name__} {resource['error_message'] or ''}")
                else:
                    found[name] = {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
        if failures:
            raise TopicAdminError("describe configs", "; ".join(failures))
        pending = [t for t in pending if t.name in retry]
        if pending and time.monotonic() >= deadline:
            raise TopicsNotFound([t.name for t in pending])
        if pending:
            delay_s = await _backoff(deadline, delay_s)
    return found


async def _describe(
    client: AIOKafkaAdminClient, topics: Sequence[Topic], metadata: Mapping[str, _Metadata], deadline: float
) -> list[TopicDescription]:
    configs = await _configs(client, topics, deadline)
    return [
        TopicDescription(
            name=t.name,
            partitions=metadata[t.name].partitions,
            replication_factor=metadata[t.name].replication_factor,
            configs=MappingProxyType(configs[t.name]),
            topic=t,
        )
        for t in topics
    ]


async def _verify(
    client: AIOKafkaAdminClient, topics: Sequence[Topic], metadata: Mapping[str, _Metadata], deadline: float
) -> None:
    """Raise `TopicConfigMismatch` naming every differing setting of every given (existing) topic."""
    if not topics:
        return
    differences = [
        d for desc in await _describe(client, topics, metadata, deadline) for d in desc.differences()
    ]
    if differences:
        raise TopicConfigMismatch(differences)


async def _cluster_replication_factor(client: AIOKafkaAdminClient) -> int:
    """Replicas per partition for the brokers the cluster's metadata lists."""
    cluster = await client.describe_cluster()
    return replication_factor(max(1, len(cluster["brokers"])))


async def _create(
    client: AIOKafkaAdminClient, topics: Sequence[Topic], replication_factor: int, timeout_ms: int
) -> tuple[list[str], list[str]]:
    """Create the topics; returns (created, created meanwhile by someone else)."""
    if not topics:
        return [], []
    replicated = {}
    if replication_factor > 1:  # said on the topic, not left to the broker's default
        replicated[MIN_INSYNC_REPLICAS] = str(min_insync_replicas(replication_factor))
    new_topics = [
        NewTopic(
            t.name,
            t.spec.partitions,
            replication_factor,
            topic_configs={**t.spec.topic_configs(), **replicated},
        )
        for t in topics
    ]
    response = await client.create_topics(new_topics, timeout_ms=timeout_ms)
    codes = {e["topic"]: e for e in response.to_object()["topic_errors"]}
    created, raced, failures = [], [], []
    for t in topics:
        entry = codes.get(t.name)
        code = -1 if entry is None else entry["error_code"]
        if code == 0:
            created.append(t.name)
        elif code == TopicAlreadyExistsError.errno:
            raced.append(t.name)
        else:
            detail = (
                "no answer"
                if entry is None
                else f"{for_code(code).__name__} {entry.get('error_message') or ''}"
            )
            failures.append(f"{t.name}: {detail.strip()}")
    if created:
        log.info("created %d topic(s): %s", len(created), created)
    if raced:
        log.info("topic(s) created concurrently by another client: %s", raced)
    if failures:
        raise TopicAdminError("create topics", "; ".join(failures))
    return created, raced


async def ensure_topics(
    kafka: KafkaSettings,
    topics: Iterable[Topic],
    *,
    replication_factor: int | None = None,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> EnsureReport:
    """Make the cluster hold exactly the catalogue's topics, idempotently.

    New topics get ``replication_factor`` replicas; None: what ``replication.replication_factor`` says
    for the brokers the cluster's metadata lists (1 on a single broker, 3 on three or more), and with
    more than one replica, ``min.insync.replicas`` of all but one (2 of 3).

    Existing topics are verified first (partition count and every managed config); if any differs,
    `TopicConfigMismatch` names every topic and setting and nothing is created, since a mismatch may
    mean the wrong cluster. Then the missing topics are created; one that another process created
    meanwhile counts as existing and is verified too. Returns once every topic has partition leaders,
    so producers can use them at once. Existing topics are never altered.
    """
    wanted = _unique(topics)
    if not wanted:
        return EnsureReport(created=[], existing=[])
    deadline = time.monotonic() + timeout_ms / 1000
    async with _admin_client(kafka, timeout_ms) as client:
        metadata = await _metadata(client)
        existing = [t for t in wanted if t.name in metadata]
        await _verify(client, existing, metadata, deadline)
        missing = [t for t in wanted if t.name not in metadata]
        replicas = replication_factor
        if replicas is None and missing:
            replicas = await _cluster_replication_factor(client)
        created, raced = await _create(client, missing, replicas or 1, timeout_ms)
        metadata = await _wait_ready(client, created + raced, deadline)
        await _verify(client, [t for t in wanted if t.name in raced], metadata, deadline)
    already = {t.name for t in existing} | set(raced)
    return EnsureReport(created=created, existing=[t.name for t in wanted if t.name in already])


async def cluster_replication_factor(kafka: KafkaSettings, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> int:
    """Replicas per partition for the brokers the cluster's metadata lists (``replication.py``): for
    topics another library makes itself (faust's changelogs), which ``ensure_topics`` never sees."""
    async with _admin_client(kafka, timeout_ms) as client:
        return await _cluster_replication_factor(client)


async def list_topics(
    kafka: KafkaSettings, *, include_foreign: bool = False, timeout_ms: int = DEFAULT_TIMEOUT_MS
) -> list[str]:
    """Sorted names of the cluster's catalogue topics; with ``include_foreign``, of all its topics."""
    async with _admin_client(kafka, timeout_ms) as client:
        names: list[str] = await client.list_topics()
    return sorted(name for name in names if include_foreign or is_catalogue_topic(name))


async def describe_topics(
    kafka: KafkaSettings, names: Sequence[str], *, timeout_ms: int = DEFAULT_TIMEOUT_MS
) -> list[TopicDescription]:
    """How the broker has each named catalogue topic, in the given order.

    Raises `UnknownTopic` for a name outside the catalogue (before connecting) and `TopicsNotFound`
    for catalogue topics the cluster lacks.
    """
    topics = _unique(parse_topic(name) for name in names)
    if not topics:
        return []
    deadline = time.monotonic() + timeout_ms / 1000
    async with _admin_client(kafka, timeout_ms) as client:
        metadata = await _metadata(client)
        missing = [t.name for t in topics if t.name not in metadata]
        if missing:
            raise TopicsNotFound(missing)
        return await _describe(client, topics, metadata, deadline)


async def delete_topics(
    kafka: KafkaSettings, names: Sequence[str], *, timeout_ms: int = DEFAULT_TIMEOUT_MS
) -> list[str]:
    """Delete catalogue topics (tests and teardown); returns those deleted, skipping absent ones.

    Refuses names outside the catalogue with `UnknownTopic`, so it cannot delete foreign topics.
    """
    topics = _unique(parse_topic(name) for name in names)
    if not topics:
        return []
    async with _admin_client(kafka, timeout_ms) as client:
        response = await client.delete_topics([t.name for t in topics], timeout_ms=timeout_ms)
    deleted, failures = [], []
    for entry in response.to_object()["topic_error_codes"]:
        code = entry["error_code"]
        if code == 0:
            deleted.append(entry["topic"])
        elif code != UnknownTopicOrPartitionError.errno:
            failures.append(f"{entry['topic']}: {for_code(code).__name__}")
    if failures:
        raise TopicAdminError("delete topics", "; ".join(failures))
    if deleted:
        log.info("deleted %d topic(s): %s", len(deleted), deleted)
    return [t.name for t in topics if t.name in deleted]


_DYNAMIC_TOPIC_CONFIG: Final = 1
"""DescribeConfigs' ``config_source`` of a value set on the topic itself."""


def _set_on_topic(entry: Mapping[str, Any]) -> bool:
    """Whether a described config entry was set on the topic (not a default or the broker's)."""
    if "config_source" in entry:
        return bool(entry["config_source"] == _DYNAMIC_TOPIC_CONFIG)
    return not entry.get("is_default", True) and not entry.get("read_only", False)


async def _topic_values(client: AIOKafkaAdminClient, name: str, *, own: bool) -> dict[str, str]:
    """The topic's described configs (``own``: only those set on the topic itself)."""
    asked = [ConfigResource(ConfigResourceType.TOPIC, name)]
    return {
        entry["config_names"]: entry["config_value"]
        for response in await client.describe_configs(asked)
        for answer in response.to_object()["resources"]
        for entry in answer["config_entries"]
        if not own or _set_on_topic(entry)
    }


async def alter_topic_config(
    kafka: KafkaSettings, name: str, config: str, value: str, *, timeout_ms: int = DEFAULT_TIMEOUT_MS
) -> None:
    """Set one config of a catalogue topic (faults and tests: an operator's change, drift from the
    catalogue), keeping the others set on it (AlterConfigs, the request aiokafka sends, replaces the
    topic's whole set), and wait until the broker describes it so, then half a second more: the
    controller applies an alteration asynchronously and the broker's logs take it from the same
    metadata update, so a client that produced at once could meet the old value."""
    topic = parse_topic(name)
    deadline = time.monotonic() + timeout_ms / 1000.0
    async with _admin_client(kafka, timeout_ms) as client:
        configs = {**await _topic_values(client, topic.name, own=True), config: value}
        resource = ConfigResource(ConfigResourceType.TOPIC, topic.name, configs)
        for response in await client.alter_configs([resource]):
            for answer in response.to_object()["resources"]:
                if answer["error_code"] != 0:
                    error = for_code(answer["error_code"]).__name__
                    raise TopicAdminError(
                        "alter configs", f"{topic.name}: {error} {answer['error_message'] or ''}"
                    )
        delay_s = _FIRST_BACKOFF_S
        while (await _topic_values(client, topic.name, own=False)).get(config) != value:
            if time.monotonic() >= deadline:
                raise TopicAdminError(
                    "alter configs", f"{topic.name}: {config} not {value} in {timeout_ms} ms"
                )
            delay_s = await _backoff(deadline, delay_s)
        await asyncio.sleep(0.5)
