"""A rolling TLS reload of the local cluster (``edgestream broker reload-tls`` on three nodes).

Every node has its own directory, so its own generations of stores (``tls.next_reload_stores``), and
its own dynamic per-broker configs (AlterConfigs on the BROKER resource named by its id). The nodes
change one at a time, in ascending id order, and the next starts only once the previous one describes
its new stores as current: the cluster never has more than one node between its old and new stores.
A node that does not run is reported and skipped, the others still reload; a running node that fails
stops the roll, so a change Kafka refuses is not tried on the rest.

The nodes share the home's ``broker`` certificate (``Identity.broker``: CN broker, names localhost and
127.0.0.1); what differs per node is where its stores lie and which broker id its configs name.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgestream.pipeline.errors import BrokerError
from edgestream.workers.local.broker.tls import (
    alter_with_retries,
    await_applied,
    next_reload_stores,
    prune_reload_stores,
    reload_configs,
    write_stores,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping
    from pathlib import Path

    from edgestream.pipeline.security.pki import TlsFiles
    from edgestream.pipeline.settings import KafkaSettings
    from edgestream.workers.local.broker.plan import ClusterPlan
    from edgestream.workers.local.broker.state import BrokerState

log = logging.getLogger(__name__)

START_HINT = "edgestream broker start --brokers {size}"
"""What starts the nodes that do not run (a start loads the PKI's current files: no reload needed)."""


@dataclass(frozen=True, slots=True)
class NodeReload:
    """One running node's step: its new generation of stores and the configs that name them."""

    node_id: int
    """The node, and the BROKER config resource its configs are set on."""
    address: str
    """Its client listener, for messages."""
    root: Path
    """Its directory: the new stores go to ``<root>/stores``, its older generations are pruned there."""
    keystore: Path
    truststore: Path

    @property
    def configs(self) -> dict[str, str]:
        """The dynamic per-broker configs of this node: both listeners' store locations."""
        return reload_configs(self.keystore, self.truststore)


@dataclass(frozen=True, slots=True)
class NodeDown:
    """A node that does not run: nothing to reload there, and its stores are left as they are (its
    next start rewrites them from the PKI)."""

    node_id: int
    address: str
    root: Path
    size: int
    """Nodes in the cluster (for the start command to suggest)."""

    @property
    def message(self) -> str:
        """Which node, and what to do."""
        return (
            f"node {self.node_id} ({self.address}, {self.root}) is not running and was not reloaded; "
            f"start it ({START_HINT.format(size=self.size)}): a start loads the PKI's current trust "
            "bundle and certificate"
        )


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What a rolling reload did."""

    reloaded: list[int] = field(default_factory=list)
    """Nodes that run with their new stores, in the order they changed."""
    failed: dict[int, str] = field(default_factory=dict)
    """Node id -> why it was not reloaded and what to do."""

    @property
    def ok(self) -> bool:
        """Whether every node reloaded."""
        return not self.failed


def plan_reload(
    plan: ClusterPlan, nodes: Mapping[int, BrokerState | None], root_of: Callable[[int], Path]
) -> list[NodeReload | NodeDown]:
    """The steps of a rolling reload, by ascending node id: for a running node, the store paths of its
    next generation under ``root_of(id)``; for one that does not run (None in ``nodes``), a NodeDown.
    Writes nothing."""
    steps: list[NodeReload | NodeDown] = []
    for node in sorted(plan.nodes, key=lambda n: n.node_id):
        root = root_of(node.node_id)
        if nodes.get(node.node_id) is None:
            steps.append(NodeDown(node.node_id, node.bootstrap, root, len(plan.nodes)))
            continue
        keystore, truststore = next_reload_stores(root)
        steps.append(NodeReload(node.node_id, node.bootstrap, root, keystore, truststore))
    return steps


async def roll(
    steps: Iterable[NodeReload | NodeDown],
    own: TlsFiles,
    apply: Callable[[NodeReload], Awaitable[None]],
    timeout_s: float = 60,
) -> ReloadReport:
    """Run ``steps`` in order: write the node's stores, ``apply`` them (returns once the node runs
    with them), then prune its older generations. A NodeDown is reported and passed over; a node whose
    ``apply`` fails (or takes over ``timeout_s``) keeps its older stores on disk (its configs may still
    name them) and stops the roll: the nodes after it are reported as not tried."""
    from aiokafka.errors import KafkaError

    report = ReloadReport()
    pending = list(steps)
    while pending:
        step = pending.pop(0)
        if isinstance(step, NodeDown):
            log.warning("reload-tls: %s", step.message)
            report.failed[step.node_id] = step.message
            continue
        try:
            write_stores((step.keystore, step.truststore), own)
            await asyncio.wait_for(apply(step), timeout_s)
        except (BrokerError, KafkaError, OSError, TimeoutError) as err:
            why = repr(err) if isinstance(err, TimeoutError) else str(err)
            report.failed[step.node_id] = (
                f"node {step.node_id} ({step.address}) did not take its new TLS stores ({why}); it keeps "
                f"its previous ones: see {step.root}/logs/server.log, then run reload-tls again"
            )
            log.warning("reload-tls: %s", report.failed[step.node_id])
            for rest in pending:
                report.failed[rest.node_id] = _not_tried(rest, step.node_id)
            break
        prune_reload_stores(step.root, (step.keystore, step.truststore))
        report.reloaded.append(step.node_id)
        log.info("reload-tls: node %d (%s) runs with its new stores", step.node_id, step.address)
    return report


def _not_tried(step: NodeReload | NodeDown, failed_id: int) -> str:
    """Why a node after a failed one was not reloaded (a node that is down still says so)."""
    if isinstance(step, NodeDown):
        return step.message
    return f"node {step.node_id} ({step.address}) was not tried: node {failed_id} failed first"


async def apply_stores(kafka: KafkaSettings, step: NodeReload) -> None:
    """Set ``step``'s configs on its node through ``kafka`` (any node's bootstrap: the request goes
    to that node), retried while it swaps its engines, and wait until the node applied them."""
    configs = step.configs
    await alter_with_retries(kafka, configs, node_id=step.node_id)
    await await_applied(kafka, configs, step.node_id)
