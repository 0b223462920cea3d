"""The broker's ``server.properties``, rendered from code: listeners, ports and a single-node config."""

from __future__ import annotations

import base64
import re
import secrets
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgestream.pipeline.contract.limits import BROKER_MESSAGE_MAX_BYTES

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from edgestream.workers.local.broker.settings import BrokerSettings

NODE_ID = 1
"""The single node's id; it is also the only controller quorum voter."""
LOOPBACK = "127.0.0.1"
"""The only address the local broker binds and advertises."""

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


def broker_config(
    *,
    client_listeners: Sequence[Listener],
    controller: Listener,
    data_dir: Path,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The ``server.properties`` of a single combined broker+controller node, as a dict.

    The first client listener is the inter-broker one. Everything a single node needs for consumer groups
    and transactions is here (replication factors and min.isr of 1, no initial rebalance delay); topics
    are created explicitly (``auto.create.topics.enable=false``). ``extra`` wins over the defaults.
    """
    if not client_listeners:
        raise ValueError("a broker needs at least one client listener")
    listeners = [*client_listeners, controller]
    config = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{controller.address}",
        "controller.listener.names": controller.name,
        "listeners": ",".join(f"{item.name}://{item.address}" for item in listeners),
        "advertised.listeners": ",".join(f"{item.name}://{item.address}" for item in client_listeners),
        "listener.security.protocol.map": ",".join(
            f"{item.name}:{item.security_protocol}" for item in listeners
        ),
        "inter.broker.listener.name": client_listeners[0].name,
        "log.dirs": str(data_dir),
        "num.partitions": "3",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "3",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "message.max.bytes": str(BROKER_MESSAGE_MAX_BYTES),  # what the worker's record limits assume
        "log.segment.bytes": str(64 * 1024 * 1024),
        "log.retention.hours": "24",
        "log.retention.check.interval.ms": str(60_000),
        "num.network.threads": "2",
        "num.io.threads": "4",
    }
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
