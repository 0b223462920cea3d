"""A local cluster's plan, kept in ``<home>/cluster/cluster.json`` from its first start: the cluster id
every node's storage is formatted with, and each node's id and ports. The controller quorum names every
node's controller port, so the ports stay the same for the cluster's life (a node restarts where it was,
and clients' bootstrap lists stay valid)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgestream.workers.local.broker.config import LOOPBACK, free_port, new_cluster_id

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodePorts:
    """One node of the cluster: its id and its two ports on the loopback address."""

    node_id: int
    """``node.id``, 1-based; also its id as a quorum voter."""
    port: int
    """Client (and inter-broker) listener port."""
    controller_port: int
    """KRaft controller listener port."""

    @property
    def bootstrap(self) -> str:
        """``host:port`` of its client listener."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def controller(self) -> str:
        """``host:port`` of its controller listener."""
        return f"{LOOPBACK}:{self.controller_port}"


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    """The cluster id and the nodes, fixed at the first start."""

    cluster_id: str
    """The KRaft cluster id every node's storage is formatted with."""
    nodes: tuple[NodePorts, ...]
    """Every node, by ascending id."""

    @classmethod
    def new(cls, size: int) -> ClusterPlan:
        """A fresh plan: a new cluster id and ``size`` nodes on distinct free ports."""
        ports: list[int] = []
        while len(ports) < 2 * size:
            port = free_port()
            if port not in ports:
                ports.append(port)
        nodes = tuple(NodePorts(n + 1, ports[2 * n], ports[2 * n + 1]) for n in range(size))
        return cls(new_cluster_id(), nodes)

    @property
    def bootstrap(self) -> str:
        """Every node's client listener, comma-separated: a client's ``bootstrap_servers``."""
        return ",".join(node.bootstrap for node in self.nodes)

    def voters(self) -> dict[int, str]:
        """Node id -> controller address: ``controller.quorum.voters``."""
        return {node.node_id: node.controller for node in self.nodes}

    def node(self, node_id: int) -> NodePorts:
        """The node with that id; ``KeyError`` if the cluster has none."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(f"the cluster has no node {node_id} (nodes {[n.node_id for n in self.nodes]})")

    def to_json(self) -> str:
        """Serialise for ``cluster.json``."""
        nodes = [
            {"node_id": n.node_id, "port": n.port, "controller_port": n.controller_port} for n in self.nodes
        ]
        return json.dumps({"cluster_id": self.cluster_id, "nodes": nodes}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ClusterPlan:
        """Parse ``cluster.json``; ``ValueError`` (or ``KeyError``/``TypeError``) when it is not one."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("cluster plan is not a JSON object")
        nodes = tuple(
            NodePorts(int(n["node_id"]), int(n["port"]), int(n["controller_port"])) for n in raw["nodes"]
        )
        if not nodes:
            raise ValueError("cluster plan names no node")
        return cls(str(raw["cluster_id"]), tuple(sorted(nodes, key=lambda n: n.node_id)))


def read_plan(path: Path) -> ClusterPlan | None:
    """The plan saved in ``path``; None when there is none or it cannot be read (logged)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return ClusterPlan.from_json(text)
    except (ValueError, KeyError, TypeError) as err:
        log.warning("ignoring unreadable cluster plan %s: %s", path, err)
        return None


def write_plan(path: Path, plan: ClusterPlan) -> None:
    """Save ``plan`` in ``path`` atomically."""
    partial = path.with_suffix(".json.partial")
    partial.write_text(plan.to_json())
    partial.replace(path)
