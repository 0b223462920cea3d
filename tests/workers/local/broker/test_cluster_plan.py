"""The local cluster's plan and what its status reads (pure): ports, cluster id, the quorum answer,
under-replicated partitions, and the replication rule shared with the topics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from edgestream.pipeline.errors import BrokerError
from edgestream.topics.replication import min_insync_replicas, replication_factor
from edgestream.workers.local.broker.cluster import LocalCluster
from edgestream.workers.local.broker.plan import ClusterPlan, read_plan, write_plan
from edgestream.workers.local.broker.quorum import _parse_quorum, under_replicated
from tests.workers.local.broker.helpers import settings_in

if TYPE_CHECKING:
    from pathlib import Path


def test_a_new_plan_has_distinct_ports_and_survives_a_round_trip(tmp_path: Path) -> None:
    plan = ClusterPlan.new(3)

    assert [n.node_id for n in plan.nodes] == [1, 2, 3]
    assert len({p for n in plan.nodes for p in (n.port, n.controller_port)}) == 6
    assert plan.bootstrap == ",".join(f"127.0.0.1:{n.port}" for n in plan.nodes)
    assert plan.voters() == {n.node_id: f"127.0.0.1:{n.controller_port}" for n in plan.nodes}
    write_plan(tmp_path / "cluster.json", plan)
    assert read_plan(tmp_path / "cluster.json") == plan
    with pytest.raises(KeyError, match="no node 4"):
        plan.node(4)


def test_an_unreadable_plan_is_no_plan(tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text('{"cluster_id": "x", "nodes": []}')
    assert read_plan(tmp_path / "cluster.json") is None
    assert read_plan(tmp_path / "missing.json") is None


def test_a_home_without_a_cluster_has_nothing_to_stop_or_describe(tmp_path: Path) -> None:
    cluster = LocalCluster(settings_in(tmp_path, brokers=3))

    assert cluster.status() is None
    assert cluster.stop() == 0
    with pytest.raises(BrokerError, match="no node of the local cluster"):
        cluster.health()
    with pytest.raises(BrokerError, match="no cluster was ever started"):
        cluster.node(1)


def test_a_stale_node_state_is_no_running_cluster(tmp_path: Path) -> None:
    cluster = LocalCluster(settings_in(tmp_path, brokers=3))
    cluster.root.mkdir(parents=True)
    write_plan(cluster.plan_file, ClusterPlan.new(3))
    node = cluster.node(2)
    node.root.mkdir(parents=True)
    node.state_file.write_text(
        '{"bootstrap": "127.0.0.1:1", "controller": "127.0.0.1:2", "pid": 999999999, "log_dir": "l",'
        ' "data_dir": "d", "started_at": 0}'
    )

    assert cluster.status() is None
    assert cluster.stop() == 0
    assert not node.state_file.exists()


def _quorum_answer(error_code: int = 0) -> dict[str, object]:
    voters = [
        {"replica_id": 1, "log_end_offset": 40},
        {"replica_id": 2, "log_end_offset": 40},
        {"replica_id": 3, "log_end_offset": 31},
    ]
    partition = {
        "partition_index": 0,
        "error_code": error_code,
        "leader_id": 2,
        "leader_epoch": 5,
        "high_watermark": 40,
        "current_voters": voters,
        "observers": [],
    }
    return {"error_code": 0, "topics": [{"topic_name": "__cluster_metadata", "partitions": [partition]}]}


def test_the_quorum_answer_names_the_active_controller_and_the_lagging_voter() -> None:
    quorum = _parse_quorum(_quorum_answer())

    assert quorum.leader_id == 2
    assert quorum.leader_epoch == 5
    assert quorum.voters == {1: 40, 2: 40, 3: 31}
    assert quorum.lagging() == [3]
    with pytest.raises(BrokerError, match="DescribeQuorum failed"):
        _parse_quorum(_quorum_answer(error_code=6))


def test_under_replicated_partitions_are_those_with_a_short_isr_or_no_leader() -> None:
    topics = [
        {
            "topic": "edge.r.results",
            "partitions": [
                {"partition": 1, "leader": 1, "replicas": [1, 2, 3], "isr": [1, 3]},
                {"partition": 0, "leader": 2, "replicas": [2, 3, 1], "isr": [2, 3, 1]},
                {"partition": 2, "leader": -1, "replicas": [3], "isr": [3]},
            ],
        },
        {
            "topic": "__consumer_offsets",
            "partitions": [{"partition": 0, "leader": 3, "replicas": [3, 1, 2], "isr": [3]}],
        },
    ]

    assert under_replicated(topics) == [
        "__consumer_offsets[0] isr [3] of replicas [3, 1, 2]",
        "edge.r.results[1] isr [1, 3] of replicas [1, 2, 3]",
        "edge.r.results[2] isr [3] of replicas [3]",
    ]


@pytest.mark.parametrize(("brokers", "replicas", "min_isr"), [(1, 1, 1), (2, 2, 1), (3, 3, 2), (5, 3, 2)])
def test_replication_follows_the_cluster_size(brokers: int, replicas: int, min_isr: int) -> None:
    assert replication_factor(brokers) == replicas
    assert min_insync_replicas(replicas) == min_isr


def test_replication_refuses_an_empty_cluster() -> None:
    with pytest.raises(ValueError, match="at least one broker"):
        replication_factor(0)
