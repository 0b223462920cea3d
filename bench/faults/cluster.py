"""The cluster fault scenario: a region's workers on a local 3-node KRaft cluster while one node is
killed (SIGKILL) and started again later, first a node that is not the active controller, then the
active controller. Exactly-once is judged as in every scenario (``checker.check``); recovery is timed
from each kill to the group's first commit after it, and from each restart until no partition (internal
topics included) is under-replicated."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Literal

from bench.faults.env import FaultEnv, make_corpus, make_region, wait_for
from bench.faults.scenarios import ScenarioReport, _finish, _scenario
from bench.faults.traffic import GroupProbe, good_traffic
from edgestream.pipeline.errors import BrokerError
from edgestream.workers.local.broker.cluster import LocalCluster
from edgestream.workers.local.broker.settings import BrokerSettings

log = logging.getLogger(__name__)

Target = Literal["follower", "controller"]
"""Which node a kill hits: one that is not the active controller, or the active controller."""
RECOVERY_TIMEOUT_S = 180.0
"""How long the cluster may take to list every broker again with nothing under-replicated."""


async def _pick(cluster: LocalCluster, target: Target) -> tuple[int, int]:
    """(node to kill, the active controller now)."""
    health = await asyncio.to_thread(cluster.health)
    leader = health.quorum.leader_id
    if target == "controller":
        return leader, leader
    plan = cluster.plan()
    assert plan is not None
    return next(n.node_id for n in plan.nodes if n.node_id != leader), leader


async def _fully_replicated(cluster: LocalCluster, nodes: int) -> float:
    """Wait until the metadata lists ``nodes`` brokers and no partition is under-replicated."""

    async def replicated() -> bool:
        try:
            health = await asyncio.to_thread(cluster.health)
        except BrokerError:
            return False
        return len(health.brokers) == nodes and not health.under_replicated

    return await wait_for("every partition fully replicated", replicated, RECOVERY_TIMEOUT_S, 0.5)


async def _kill_and_restart(
    env: FaultEnv, cluster: LocalCluster, probe: GroupProbe, target: Target, outage_s: float
) -> dict[str, Any]:
    """One kill: SIGKILL the node, time the group's first commit after it, keep the node down for
    ``outage_s`` in all, start it again, time until every partition is fully replicated."""
    node, controller = await _pick(cluster, target)
    plan = cluster.plan()
    assert plan is not None
    t0 = time.monotonic()
    await asyncio.to_thread(cluster.kill_node, node)
    env.on_event(f"cluster: killed node {node} ({target}; the controller was {controller})")
    await probe.progress(f"the workers commit after node {node} was killed", timeout_s=120)
    first_commit_s = time.monotonic() - t0
    await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - t0)))
    down_s = time.monotonic() - t0
    await asyncio.to_thread(cluster.start_node, node, 120)
    restarted_s = time.monotonic() - t0
    env.on_event(f"cluster: node {node} back after {restarted_s:.1f} s; waiting for full replication")
    replicated_after_s = await _fully_replicated(cluster, len(plan.nodes))
    health = await asyncio.to_thread(cluster.health)
    return {
        "target": target,
        "node": node,
        "controller_before": controller,
        "controller_after": health.quorum.leader_id,
        "first_commit_after_kill_s": round(first_commit_s, 2),
        "down_s": round(down_s, 2),
        "restart_s": round(restarted_s - down_s, 2),
        "fully_replicated_after_restart_s": round(replicated_after_s, 2),
    }


async def cluster_kill(
    env: FaultEnv,
    cluster: LocalCluster,
    *,
    rate_per_s: float = 100.0,
    targets: tuple[Target, ...] = ("follower", "controller"),
    outage_s: float = 5.0,
    after_s: float = 3.0,
) -> ScenarioReport:
    """Two workers of a fresh region on the running local ``cluster``, steady traffic; for each of
    ``targets``, SIGKILL that node at a random point of the stream, start it again after ``outage_s``,
    wait for full replication and ``after_s`` more. A worker that exits is counted and started again."""
    started = time.monotonic()
    state = cluster.status()
    if state is None:
        raise BrokerError(f"no local cluster runs in {cluster.root}")
    rng = random.Random(env.seed)
    client_log = logging.getLogger("aiokafka")  # its clients' reconnects to the killed node, thousands
    client_level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        region = await make_region(env, state.kafka(), prefix="c", tls_root=state.tls_root)
        corpus = make_corpus(env, region)
        async with _scenario("cluster kill", env, region, good_traffic(corpus), rate_per_s) as (
            workers,
            traffic,
            probe,
        ):
            pair = [workers.start("a"), workers.start("b")]
            await asyncio.gather(*(w.ready() for w in pair))
            async with traffic:
                kills = []
                for target in targets:
                    await probe.progress("the workers commit")
                    await asyncio.sleep(rng.uniform(0.5, 2.0))  # a random point of the stream
                    kills.append(await _kill_and_restart(env, cluster, probe, target, outage_s))
                    await asyncio.sleep(after_s)  # traffic flows on the whole cluster again
                return await _finish(
                    "cluster kill",
                    env,
                    region,
                    workers,
                    traffic,
                    started,
                    kills=kills,
                    send_failures=len(traffic.failed),
                )
    finally:
        client_log.setLevel(client_level)


def _node_usage(cluster: LocalCluster) -> dict[str, dict[str, float]]:
    """Each running node's resident memory (MiB) and CPU time so far (s), from ``/proc``."""
    state = cluster.status()
    usage: dict[str, dict[str, float]] = {}
    for node_id, node in (state.nodes if state is not None else {}).items():
        if node is None:
            continue
        try:
            status = Path(f"/proc/{node.pid}/status").read_text()
            fields = Path(f"/proc/{node.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        rss_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        ticks = os.sysconf("SC_CLK_TCK")
        usage[str(node_id)] = {
            "rss_mib": round(rss_kib / 1024, 1),
            "cpu_s": round((int(fields[11]) + int(fields[12])) / ticks, 1),
        }
    return usage


async def cluster_kill_on_own_cluster(
    env: FaultEnv, *, rate_per_s: float = 100.0, outage_s: float = 5.0, after_s: float = 3.0
) -> ScenarioReport:
    """``cluster_kill`` on a 3-node cluster of its own (``<run_dir>/cluster``), started and stopped
    here; the report adds the cluster's start time and each node's memory and CPU time, measured
    right after the start and at the end."""
    cluster = LocalCluster(BrokerSettings(home=env.run_dir / "cluster", brokers=3))
    env.on_event("cluster kill: starting a 3-node cluster")
    t0 = time.monotonic()
    state = await asyncio.to_thread(cluster.start, 180)
    start_s = time.monotonic() - t0
    at_start = _node_usage(cluster)
    try:
        own = dataclasses.replace(env, bootstrap=state.kafka(), tls_root=state.tls_root)
        report = await cluster_kill(own, cluster, rate_per_s=rate_per_s, outage_s=outage_s, after_s=after_s)
        report.extra.update(
            cluster_start_s=round(start_s, 2),
            node_heap_mb=cluster.settings.node_heap_mb,
            nodes_after_start=at_start,
            nodes_at_end=_node_usage(cluster),
        )
        return report
    finally:
        await asyncio.to_thread(cluster.stop)
