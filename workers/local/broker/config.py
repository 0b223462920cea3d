"""The broker's ``server.properties``, rendered from code: listeners, ports, and the config of a single node
or of one node of a local cluster (its id, the controller quorum, the replication of internal topics)."""

from __future__ import annotations

import base64
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from edgestream.pipeline.contract.limits import BROKER_MESSAGE_MAX_BYTES
from edgestream.topics.replication import min_insync_replicas, replication_factor

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from edgestream.workers.local.broker.settings import BrokerSettings

NODE_ID = 1
"""The single node's id; it is also the only controller quorum voter."""
LOOPBACK = "127.0.0.1"
"""The only address the local broker binds and advertises."""

SEGMENT_BYTES = 64 * 1024 * 1024
"""``log.segment.bytes``: a partition's log rolls to a new segment file at 64 MiB."""
INDEX_INTERVAL_BYTES = 4096
"""``log.index.interval.bytes`` (Kafka's default): at most one index entry per 4 KiB of log."""
INDEX_MAX_BYTES = 256 * 1024
"""``log.index.size.max.bytes``: each segment's offset and time index files are created this long
(sparse) and memory-mapped. Kafka's default, 10 MiB, sizes them for 1 GiB segments; ours are 64 MiB, so
at most 16,384 entries (128 KiB of offset index, 192 KiB of time index) ever fill them, and a full index
only rolls the segment early. The size matters because the first write into a freshly created index is
a page fault that reads its file ahead, zero-filling the holes: on the demo's box (a virtio disk read
ahead 8 MiB) that cost ~2 ms per 10 MiB file against ~0.06 ms at 256 KiB, and a profile of a broker on
a fresh home had 74% of its CPU in those faults (``memset`` under ``filemap_fault``, below
``OffsetIndex.append`` and ``TimeIndex.maybeAppend``) during the devices' first 3 s, while every
partition took its first records."""
DEDUPE_BUFFER_BYTES = 16 * 1024 * 1024
"""``log.cleaner.dedupe.buffer.size``: the log cleaner's key map for compacting topics, allocated on
the heap when the broker starts and kept for its life. Kafka's default, 128 MiB, was two thirds of the
demo broker's live heap (G1's log: 182 MiB left after each young collection against 70-125 MiB at 16
MiB) and half of a cluster node's 256 MiB heap; it held the old generation over G1's threshold for
concurrent marking, a cycle every ~6.5 s for the whole demo (16-20 per run). At 16 MiB most reused-home
demos had no cycle after the first seconds (2-6 per run), though a heap G1 had shrunk marked again (16
in one run). The demo's p99 did not follow: its spread between runs on the shared box is wider than
anything the collector changed (docs/broker.md). 16 MiB holds ~700,000 keys per cleaning pass (24
bytes each at Kafka's 0.9 load factor), far more than the local topics' compacted keys (groups'
offsets, transactions, the registry); more are cleaned in more passes."""

_PROPERTIES_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


@dataclass(frozen=True, slots=True)
class Listener:
    """One listener of the node. A TLS listener is one more entry with ``security_protocol="SSL"``."""

    name: str
    """Listener name, e.g. ``PLAINTEXT``, ``CONTROLLER``, later ``SSL``."""
    port: int
    """TCP port on ``host``."""
    security_protocol: str = "PLAINTEXT"
    """``PLAINTEXT`` or ``SSL`` (the ``ssl.*`` settings then go in the config's extras)."""
    host: str = LOOPBACK
    """Address the listener binds and advertises."""

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"


CLUSTER_FAILOVER: Mapping[str, str] = MappingProxyType(
    {
        # The controller fences a node that missed its heartbeats for this long; only then do its
        # partitions get new leaders and its transactions a new coordinator. A worker's transaction
        # (per_worker) times out after 10 s and is then aborted and its producer fenced: the failover
        # must fit well inside that. Kafka's defaults are 9 s and 2 s.
        "broker.session.timeout.ms": "4000",
        "broker.heartbeat.interval.ms": "1000",
        "unclean.leader.election.enable": "false",  # Kafka's default, said: no acknowledged write lost
    }
)
"""What a node of a multi-node cluster adds: a quicker failover, never an out-of-sync leader."""


def quorum_voters(controllers: Mapping[int, str]) -> str:
    """``controller.quorum.voters``: ``id@host:port`` of every controller, by node id."""
    return ",".join(f"{node_id}@{address}" for node_id, address in sorted(controllers.items()))


def replication_config(brokers: int) -> dict[str, str]:
    """Replication of new topics and of the broker's internal topics (consumer offsets, transaction
    state, share-group state) on a cluster of ``brokers``: 1 and 1 on one node, 3 and min ISR 2 on three."""
    replicas = replication_factor(brokers)
    min_isr = str(min_insync_replicas(replicas))
    return {
        "default.replication.factor": str(replicas),
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": min_isr,
    }


def broker_config(
    *,
    client_listeners: Sequence[Listener],
    controller: Listener,
    data_dir: Path,
    extra: Mapping[str, str] | None = None,
    node_id: int = NODE_ID,
    voters: Mapping[int, str] | None = None,
) -> dict[str, str]:
    """The ``server.properties`` of one combined broker+controller node, as a dict.

    Alone (``voters`` None) the node is the only quorum voter; in a cluster ``voters`` maps every
    controller's node id to its controller address, and internal topics are replicated as
    ``replication_config`` says for that many nodes (three copies, min ISR 2). The first client listener
    is the inter-broker one. Everything consumer groups and transactions need is here (no initial
    rebalance delay); topics are created explicitly (``auto.create.topics.enable=false``), and no
    out-of-sync replica is ever elected leader. ``extra`` wins over the defaults.
    """
    if not client_listeners:
        raise ValueError("a broker needs at least one client listener")
    controllers = {node_id: controller.address} if voters is None else dict(voters)
    if controllers.get(node_id) != controller.address:
        raise ValueError(f"node {node_id} must be a voter at its controller address {controller.address}")
    listeners = [*client_listeners, controller]
    config = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": quorum_voters(controllers),
        "controller.listener.names": controller.name,
        "listeners": ",".join(f"{item.name}://{item.address}" for item in listeners),
        "advertised.listeners": ",".join(f"{item.name}://{item.address}" for item in client_listeners),
        "listener.security.protocol.map": ",".join(
            f"{item.name}:{item.security_protocol}" for item in listeners
        ),
        "inter.broker.listener.name": client_listeners[0].name,
        "log.dirs": str(data_dir),
        "num.partitions": "3",
        **replication_config(len(controllers)),
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.num.partitions": "3",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "message.max.bytes": str(BROKER_MESSAGE_MAX_BYTES),  # what the worker's record limits assume
        "log.segment.bytes": str(SEGMENT_BYTES),
        "log.index.interval.bytes": str(INDEX_INTERVAL_BYTES),
        "log.index.size.max.bytes": str(INDEX_MAX_BYTES),
        "log.cleaner.dedupe.buffer.size": str(DEDUPE_BUFFER_BYTES),
        "log.retention.hours": "24",
        "log.retention.check.interval.ms": str(60_000),
        "num.network.threads": "2",
        "num.io.threads": "4",
    }
    if len(controllers) > 1:
        config.update(CLUSTER_FAILOVER)
    config.update(extra or {})
    return config


def _escape_properties(text: str, *, is_key: bool) -> str:
    escaped = "".join(_PROPERTIES_ESCAPES.get(char, char) for char in text)
    if is_key:
        escaped = re.sub(r"([=: ])", r"\\\1", escaped)
        if escaped[:1] in ("#", "!"):
            escaped = "\\" + escaped
    elif escaped[:1] == " ":
        escaped = "\\" + escaped
    return escaped


def render_properties(config: Mapping[str, str]) -> str:
    """Render a Java ``.properties`` file, keys sorted, with the escapes ``java.util.Properties`` reads."""
    lines = ["# Written by edgestream (workers/local/broker/config.py) at each start; edits are overwritten."]
    lines += [
        f"{_escape_properties(key, is_key=True)}={_escape_properties(value, is_key=False)}"
        for key, value in sorted(config.items())
    ]
    return "\n".join(lines) + "\n"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that is free right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def pick_ports(settings: BrokerSettings) -> tuple[int, int]:
    """The (client, controller) ports: the configured ones, free distinct ports for those set to 0."""
    port = settings.port
    controller_port = settings.controller_port
    while port == 0 or port == controller_port:
        port = free_port()
    while controller_port == 0 or controller_port == port:
        controller_port = free_port()
    return port, controller_port


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 random bytes, base64url without padding (22 characters)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):  # a leading dash reads as an option on the command line
            return cluster_id
