"""A local KRaft cluster: three combined broker+controller nodes on loopback, from the same jars.

Each node is a ``LocalBroker`` with a ``ClusterMember``: its own directory ``<home>/cluster/node-<id>/``
(data, logs, ``server.properties``, state file), its own client and controller ports, the home's PKI,
ACL authorizer and super users. The plan (cluster id, every node's ports) is kept in
``<home>/cluster/cluster.json`` from the first start, so nodes restart where they were and any process
finds, inspects and stops them. The nodes are started together: none answers before a quorum of
controllers has elected a leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgestream.pipeline.errors import BrokerError
from edgestream.workers.local.broker.plan import ClusterPlan, read_plan, write_plan
from edgestream.workers.local.broker.posix import file_lock
from edgestream.workers.local.broker.probe import own_loop
from edgestream.workers.local.broker.process import ClusterMember, LocalBroker
from edgestream.workers.local.broker.quorum import ClusterHealth, cluster_health
from edgestream.workers.local.broker.reload import ReloadReport, apply_stores, plan_reload, roll

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from edgestream.pipeline.security.identities import Identity
    from edgestream.pipeline.settings import KafkaSettings
    from edgestream.workers.local.broker.settings import BrokerSettings
    from edgestream.workers.local.broker.state import BrokerState

log = logging.getLogger(__name__)

_POLL_INTERVAL_S = 0.25


@dataclass(frozen=True, slots=True)
class ClusterState:
    """The cluster as its files say: the plan, and each node's state (None: not running)."""

    plan: ClusterPlan
    nodes: dict[int, BrokerState | None]
    """Node id -> its running state, None for a node that does not run."""

    @property
    def bootstrap(self) -> str:
        """Every node's client listener: a client's ``bootstrap_servers``."""
        return self.plan.bootstrap

    @property
    def running(self) -> list[BrokerState]:
        """The states of the nodes that run."""
        return [state for state in self.nodes.values() if state is not None]

    @property
    def tls_root(self) -> Path | None:
        """The PKI directory the nodes trust (TLS clusters)."""
        return next((state.tls_root for state in self.running), None)

    def kafka(self, identity: Identity | None = None, **others: object) -> KafkaSettings:
        """Client settings for the whole cluster (every node in the bootstrap list), as ``identity``
        (default ``admin``); raises BrokerError when no node runs."""
        running = self.running
        if not running:
            raise BrokerError("no node of the local cluster runs")
        return dataclasses.replace(running[0], bootstrap=self.bootstrap).kafka(identity, **others)


class LocalCluster:
    """Start, stop, inspect (and, for fault scenarios, kill) the nodes of the home's local cluster."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.root = settings.home.expanduser().resolve() / "cluster"
        """The plan and every node's directory."""
        self.plan_file = self.root / "cluster.json"
        self._nodes: dict[int, LocalBroker] = {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with file_lock(self.root / "lock"):
            yield

    def jars_ready(self) -> bool:
        """Whether the broker's jars are cached (a first start resolves them with Maven)."""
        return LocalBroker(self.settings).jars.ready()

    def plan(self) -> ClusterPlan | None:
        """The plan saved at the first start; None before it (or after the directory was removed)."""
        return read_plan(self.plan_file)

    def node(self, node_id: int) -> LocalBroker:
        """The node with that id (one object per node, so a node this process started is reaped)."""
        if node_id not in self._nodes:
            plan = self.plan()
            if plan is None:
                raise BrokerError(f"no cluster was ever started in {self.root}")
            member = ClusterMember(plan, plan.node(node_id), self.root / f"node-{node_id}")
            self._nodes[node_id] = LocalBroker(self.settings, member)
        return self._nodes[node_id]

    def status(self) -> ClusterState | None:
        """The plan and each node's state; None when no node runs (stale state files count as none)."""
        plan = self.plan()
        if plan is None:
            return None
        nodes = {n.node_id: self.node(n.node_id).status() for n in plan.nodes}
        if not any(nodes.values()):
            return None
        return ClusterState(plan, nodes)

    def health(self, timeout_ms: int = 10_000) -> ClusterHealth:
        """The active controller, the live brokers and the under-replicated partitions, asked of the
        running nodes. Raises BrokerError when no node runs."""
        state = self.status()
        if state is None:
            raise BrokerError(f"no node of the local cluster in {self.root} runs")
        return asyncio.run(own_loop(cluster_health(state.kafka(), timeout_ms)))

    def reload_tls(self, timeout_s: float = 60) -> ReloadReport:
        """Have every running node re-read the trust bundle and the ``broker`` certificate, no restart,
        one node at a time (``reload.roll``): each gets a new generation of stores in its directory
        and the dynamic per-broker configs that name them, set through the cluster's bootstrap.

        Returns what each node did: a node that does not run is reported (start it: a start loads the
        PKI's current files), the others still reload. Raises BrokerError when no node of a TLS cluster
        runs. Holds the cluster's lock, so two reloads never pick the same generation."""
        from edgestream.pipeline.security.identities import Identity
        from edgestream.pipeline.security.pki import Pki

        with self._locked():
            state = self.status()
            if state is None or state.tls_root is None:
                raise BrokerError(f"no node of a TLS cluster runs in {self.root}")
            steps = plan_reload(state.plan, state.nodes, lambda node_id: self.node(node_id).root)
            own = Pki(state.tls_root).files(Identity.broker())
            apply = functools.partial(apply_stores, state.kafka())
            return asyncio.run(roll(steps, own, apply, timeout_s))

    # -- start and stop -----------------------------------------------------------------------------

    def start(self, timeout_s: float = 120) -> ClusterState:
        """Start every node that does not run (all at once) and return once each answers and the
        metadata lists every broker. Idempotent. The first start picks the ports and the cluster id."""
        single = LocalBroker(self.settings)
        if single.status() is not None:
            raise BrokerError(
                f"the single broker runs in {single.root}; stop it first (edgestream broker stop)"
            )
        with self._locked():
            plan = self.plan()
            if plan is None:
                plan = ClusterPlan.new(self.settings.brokers)
                write_plan(self.plan_file, plan)
                log.info(
                    "new local cluster %s of %d nodes in %s", plan.cluster_id, len(plan.nodes), self.root
                )
            elif len(plan.nodes) != self.settings.brokers:
                raise BrokerError(
                    f"the cluster in {self.root} has {len(plan.nodes)} nodes, not {self.settings.brokers}; "
                    f"stop it and remove {self.root} to start another"
                )
        deadline = time.monotonic() + timeout_s
        single.jars.fetch(quiet=True)  # once, before the nodes start in parallel
        ids = [n.node_id for n in plan.nodes]
        try:
            self._each(ids, lambda node: node.start(timeout_s))
            self.wait_brokers(len(ids), deadline)
        except BaseException:
            self.stop()
            raise
        state = self.status()
        if state is None:
            raise BrokerError(f"the cluster in {self.root} stopped right after its start")
        return state

    def start_node(self, node_id: int, timeout_s: float = 120) -> BrokerState:
        """Start one node (after a kill or a stop) on its ports; returns once it answers."""
        return self.node(node_id).start(timeout_s)

    def kill_node(self, node_id: int) -> bool:
        """SIGKILL one node, as a crash would; False when it was not running."""
        return self.node(node_id).kill()

    def stop(self, timeout_s: float = 30) -> int:
        """Stop every node (SIGTERM to all at once, SIGKILL after ``timeout_s``); how many ran."""
        plan = self.plan()
        if plan is None:
            return 0
        stopped = self._each([n.node_id for n in plan.nodes], lambda node: node.stop(timeout_s))
        return sum(bool(was_running) for was_running in stopped)

    def wait_brokers(self, count: int, deadline: float) -> ClusterHealth:
        """Poll until the metadata lists ``count`` live brokers; BrokerError at the deadline."""
        last: ClusterHealth | None = None
        while True:
            with contextlib.suppress(BrokerError, OSError, TimeoutError):
                last = self.health()
                if len(last.brokers) >= count:
                    return last
            if time.monotonic() >= deadline:
                seen = "no answer" if last is None else f"brokers {last.brokers}"
                raise BrokerError(f"the cluster in {self.root} did not list {count} brokers in time ({seen})")
            time.sleep(_POLL_INTERVAL_S)

    def _each(self, ids: list[int], call: Callable[[LocalBroker], object]) -> list[object]:
        """``call`` on every node at once (threads); the first error is raised after all have finished."""
        nodes = [self.node(node_id) for node_id in ids]
        with ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="cluster-node") as pool:
            futures = [pool.submit(call, node) for node in nodes]
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error
        return [f.result() for f in futures]
