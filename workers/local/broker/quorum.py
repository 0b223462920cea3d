"""What a running cluster says about itself: the KRaft quorum's leader (the active controller) from a
DescribeQuorum request, and the partitions whose in-sync replicas fall short of their replicas.

aiokafka has no DescribeQuorum (API key 55), so its v0 request and response are declared here with
aiokafka's own protocol types (the schema is Kafka's ``DescribeQuorumRequest.json``). The broker that
receives it forwards it to the active controller; it needs DESCRIBE on the cluster (``admin`` has it).
The controller id in a KRaft broker's metadata answer is any live broker, not the active controller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import CompactArray, CompactString, Int16, Int32, Int64, Schema, TaggedFields

from edgestream.pipeline import kafka as kafka_clients
from edgestream.pipeline.errors import BrokerError

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

    from edgestream.pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

METADATA_TOPIC = "__cluster_metadata"
"""The KRaft metadata log; its one partition's leader is the active controller."""

_REPLICA_STATE = CompactArray(("replica_id", Int32), ("log_end_offset", Int64), ("tags", TaggedFields))


class _DescribeQuorumResponse_v0(Response):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 55
    API_VERSION = 0
    SCHEMA = Schema(
        ("error_code", Int16),
        (
            "topics",
            CompactArray(
                ("topic_name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("error_code", Int16),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("high_watermark", Int64),
                        ("current_voters", _REPLICA_STATE),
                        ("observers", _REPLICA_STATE),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _DescribeQuorumRequest_v0(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 55
    API_VERSION = 0
    RESPONSE_TYPE = _DescribeQuorumResponse_v0
    SCHEMA = Schema(
        (
            "topics",
            CompactArray(
                ("topic_name", CompactString("utf-8")),
                ("partitions", CompactArray(("partition_index", Int32), ("tags", TaggedFields))),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


_DescribeQuorumStruct: TypeAlias = _DescribeQuorumRequest_v0


class _DescribeQuorumRequest(Request[_DescribeQuorumStruct]):  # type: ignore[misc]
    API_KEY: ClassVar[int] = 55

    def build(self, request_struct_class: type[_DescribeQuorumStruct]) -> _DescribeQuorumStruct:
        return request_struct_class([(METADATA_TOPIC, [(0, {})], {})], {})


@dataclass(frozen=True, slots=True)
class Quorum:
    """The KRaft controller quorum as its leader describes it."""

    leader_id: int
    """The active controller's node id."""
    leader_epoch: int
    """The leader's epoch: it grows with each election."""
    high_watermark: int
    """Committed end of the metadata log."""
    voters: dict[int, int]
    """Voter node id -> the log end offset the leader last saw from it (-1: never)."""

    def lagging(self) -> list[int]:
        """Voters whose metadata log is behind the high watermark (or unknown)."""
        return sorted(node for node, end in self.voters.items() if end < self.high_watermark)


@dataclass(frozen=True, slots=True)
class ClusterHealth:
    """The active controller, the brokers the metadata lists, and the under-replicated partitions."""

    quorum: Quorum
    brokers: list[int]
    """Node ids of the live (registered, unfenced) brokers."""
    under_replicated: list[str]
    """``topic[partition] isr [..] of replicas [..]`` for each partition with fewer in-sync replicas
    than replicas, internal topics included."""


def _parse_quorum(response: dict[str, Any]) -> Quorum:
    if response["error_code"]:
        raise BrokerError(f"DescribeQuorum failed: {for_code(response['error_code']).__name__}")
    for topic in response["topics"]:
        for partition in topic["partitions"]:
            if partition["error_code"]:
                raise BrokerError(f"DescribeQuorum failed: {for_code(partition['error_code']).__name__}")
            voters = {v["replica_id"]: v["log_end_offset"] for v in partition["current_voters"]}
            return Quorum(
                partition["leader_id"], partition["leader_epoch"], partition["high_watermark"], voters
            )
    raise BrokerError("DescribeQuorum answered without the metadata partition")


def under_replicated(topics: list[dict[str, Any]]) -> list[str]:
    """Partitions of a metadata answer (aiokafka's ``describe_topics``) whose ISR is shorter than their
    replica list, or that have no leader."""
    short = []
    for topic in topics:
        for p in sorted(topic["partitions"], key=lambda p: p["partition"]):
            if len(p["isr"]) < len(p["replicas"]) or p["leader"] < 0:
                short.append(
                    f"{topic['topic']}[{p['partition']}] isr {sorted(p['isr'])} of replicas {p['replicas']}"
                )
    return sorted(short)


async def _ask_any(admin: AIOKafkaAdminClient, nodes: list[int], request: Request) -> Any:
    """Send ``request`` to the first of ``nodes`` that takes a connection (the metadata may still list
    a node that was just killed). aiokafka has no public call for a request it does not know: its
    client sends it with the version negotiated against that node's ApiVersions."""
    client = admin._client
    for node_id in nodes:
        if await client.ready(node_id):
            return await client.send(node_id, request)
    raise BrokerError(f"none of the brokers {nodes} took a connection")


async def cluster_health(kafka: KafkaSettings, timeout_ms: int = 10_000) -> ClusterHealth:
    """Ask the cluster (any live node of ``kafka``'s bootstrap list) for its quorum and partitions.

    Right after a node dies the metadata still lists it for a while (until its session times out) and
    aiokafka may pick it for a request: such a failure is retried on a fresh client until ``timeout_ms``.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        try:
            return await _ask_health(kafka, timeout_ms)
        except KafkaError as err:
            if time.monotonic() >= deadline:
                raise BrokerError(f"the cluster did not describe itself: {err!r}") from err
            log.debug("cluster health: %r; asking again", err)
            await asyncio.sleep(0.2)


async def _ask_health(kafka: KafkaSettings, timeout_ms: int) -> ClusterHealth:
    admin = kafka_clients.admin(kafka, "edgestream-broker-status", request_timeout_ms=timeout_ms)
    async with kafka_clients.started(admin) as client:
        cluster = await client.describe_cluster()
        topics = await client.describe_topics(None)
        brokers = sorted(b["node_id"] for b in cluster["brokers"])
        answer = await _ask_any(client, brokers, _DescribeQuorumRequest())
    return ClusterHealth(
        quorum=_parse_quorum(answer.to_object()),
        brokers=brokers,
        under_replicated=under_replicated(topics),
    )
