"""A local 3-node KRaft cluster, started for this module only: found, described and stopped from
other processes; topics with three replicas and min ISR 2; and exactly-once while a node that is not
the active controller, then the active controller, is killed (SIGKILL) and started again under traffic.

The counts are asserted (nothing lost, nothing doubled, no worker exit, full replication again), never
the recovery times: ``make faults`` reports those (scenario ``cluster_kill``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bench import REPO_ROOT
from bench.faults.cluster import cluster_kill
from bench.faults.env import FaultEnv, prepare_home
from edgestream.pipeline import kafka
from edgestream.topics.admin import cluster_replication_factor, describe_topics, ensure_topics
from edgestream.topics.catalogue import region_topics
from edgestream.workers.aggregator.app import AggregatorSettings, build_app, with_replication
from edgestream.workers.local.broker.cluster import ClusterState, LocalCluster
from edgestream.workers.local.broker.posix import pid_alive
from edgestream.workers.local.broker.settings import BrokerSettings
from tests.faults.test_faults import SEED, assert_exactly_once

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(BrokerSettings(home=tmp_path_factory.mktemp("cluster"), brokers=3))
    try:
        local.start(timeout_s=180)
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def running(cluster: LocalCluster) -> ClusterState:
    state = cluster.status()
    assert state is not None
    return state


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, "-m", "edgestream", "broker", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )


def test_three_nodes_with_their_own_ports_and_one_quorum(
    cluster: LocalCluster, running: ClusterState
) -> None:
    assert sorted(running.nodes) == [1, 2, 3]
    assert all(state is not None for state in running.nodes.values())
    ports = [p for n in running.plan.nodes for p in (n.port, n.controller_port)]
    assert len(set(ports)) == 6
    assert len({state.pid for state in running.running}) == 3
    assert len({state.data_dir for state in running.running}) == 3
    health = cluster.health()
    assert health.brokers == [1, 2, 3]
    assert sorted(health.quorum.voters) == [1, 2, 3]
    assert health.quorum.leader_id in (1, 2, 3)
    for node in running.plan.nodes:
        config = (cluster.root / f"node-{node.node_id}" / "server.properties").read_text()
        assert f"node.id={node.node_id}\n" in config
        assert "transaction.state.log.min.isr=2\n" in config
        assert "offsets.topic.replication.factor=3\n" in config
        assert "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n" in config


def test_another_process_sees_each_node_and_the_active_controller(
    cluster: LocalCluster, running: ClusterState
) -> None:
    done = _cli(cluster.settings.home, "status")
    assert done.returncode == 0, done.stderr
    leader = cluster.health().quorum.leader_id
    assert f"active controller: node {leader}" in done.stdout
    for state in running.running:
        assert str(state.pid) in done.stdout
    assert "under-replicated partitions: 0" in done.stdout


async def test_topics_on_the_cluster_get_three_replicas_and_min_isr_2(running: ClusterState) -> None:
    admin = running.kafka()
    topics = region_topics("cluster-rf")
    await ensure_topics(admin, topics)
    described = await describe_topics(admin, [t.name for t in topics])
    assert {d.replication_factor for d in described} == {3}
    async with kafka.started(kafka.admin(admin, "test-cluster")) as client:
        answers = await client.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t.name, {"min.insync.replicas": None}) for t in topics]
        )
    values = {
        entry["config_value"]
        for answer in answers
        for resource in answer.to_object()["resources"]
        for entry in resource["config_entries"]
    }
    assert values == {"2"}


async def test_the_aggregator_replicates_its_own_topics_three_times_on_the_cluster(
    running: ClusterState,
) -> None:
    assert await cluster_replication_factor(running.kafka()) == 3
    settings = await asyncio.to_thread(with_replication, AggregatorSettings(kafka=running.kafka()))
    assert build_app(settings).conf.topic_replication_factor == 3  # min ISR 2 refuses one replica


# A full suite run once failed here, after every count had held, on a garbage-collected socket and
# transport: a connection an aiokafka client in this process had open or opening to the node that was
# SIGKILLed (the same family as aiokafka #739 / #1130: a failed connect or start leaves its
# transport for the collector). It did not reproduce in the next run. Only those two unraisable
# warnings are let through, and only in this test; any other warning still fails it.
@pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <(socket\.socket|function _SelectorTransport\.__del__)"
    ":pytest.PytestUnraisableExceptionWarning"
)
async def test_killing_a_follower_then_the_controller_loses_and_doubles_nothing(
    cluster: LocalCluster, running: ClusterState, tmp_path: Path
) -> None:
    """SIGKILL a node that is not the active controller, start it again; then the same for the active
    controller; a few hundred requests through two workers meanwhile. Every input answered once (results,
    audit records, the cloud summaries' counts) and replied to, no worker exits, every partition fully
    replicated again (internal topics included), and the quorum elected another controller after the
    second kill."""
    home = tmp_path / "home"
    home.mkdir()
    env = FaultEnv(
        bootstrap=running.kafka(),
        home=home,
        run_dir=tmp_path / "runs",
        served_versions=await asyncio.to_thread(prepare_home, home),
        tls_root=running.tls_root,
        seed=SEED,
    )
    report = await cluster_kill(env, cluster, rate_per_s=10, outage_s=3.0, after_s=1.0)
    assert_exactly_once(report)
    assert report.unexpected_exits == []
    assert report.worker_restarts == 0
    assert 100 <= report.verdict.written == report.verdict.results, "traffic flowed throughout"
    replies = report.extra["replies"]  # sent again to the partitions' new leaders after each kill
    assert replies["results"] == report.verdict.results, replies
    assert replies["missing"] == replies["malformed"] == 0, replies
    follower, controller = report.extra["kills"]
    assert follower["node"] != follower["controller_before"]
    assert controller["node"] == controller["controller_before"]
    assert controller["controller_after"] != controller["node"], "the quorum moved on from the dead leader"
    health = await asyncio.to_thread(cluster.health)
    assert health.brokers == [1, 2, 3]
    assert health.under_replicated == []
    async with kafka.started(kafka.admin(running.kafka(), "test-cluster")) as client:
        internal = await client.describe_topics(["__consumer_offsets", "__transaction_state"])
    replicas = {t["topic"]: {len(p["replicas"]) for p in t["partitions"]} for t in internal}
    assert replicas == {"__consumer_offsets": {3}, "__transaction_state": {3}}


def test_stop_from_another_process_stops_every_node(cluster: LocalCluster, running: ClusterState) -> None:
    """Last in the module: the module's cluster is gone after it."""
    done = _cli(cluster.settings.home, "stop")
    assert done.returncode == 0, done.stderr
    assert "3 nodes were running" in done.stdout
    assert cluster.status() is None
    assert not any(pid_alive(state.pid) for state in running.running)
    again = _cli(cluster.settings.home, "status")
    assert again.returncode == 1
