"""The cluster's rolling TLS reload, planned and rolled without a broker: which node's resource and
store paths, in which order, one node applied before the next changes, a node that is down reported
(the others still reload), and a node that fails stopping the roll."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgestream.cli import app
from edgestream.pipeline.errors import BrokerError
from edgestream.pipeline.security.pki import TlsFiles
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.local.broker import reload
from edgestream.workers.local.broker.cluster import ClusterState, LocalCluster
from edgestream.workers.local.broker.plan import ClusterPlan, NodePorts
from edgestream.workers.local.broker.reload import NodeDown, NodeReload, ReloadReport, plan_reload, roll
from edgestream.workers.local.broker.state import BrokerState
from edgestream.workers.local.broker.tls import STORES_DIR, next_reload_stores, write_stores

PLAN = ClusterPlan("cid", (NodePorts(3, 9005, 9006), NodePorts(1, 9001, 9002), NodePorts(2, 9003, 9004)))


def _running(node_id: int) -> BrokerState:
    return BrokerState(f"127.0.0.1:900{2 * node_id - 1}", "", 100 + node_id, Path(), Path(), 0.0, "SSL")


def _own(tmp_path: Path, cert: bytes = b"C") -> TlsFiles:
    (tmp_path / "key.pem").write_bytes(b"K")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "bundle.pem").write_bytes(b"CA")
    return TlsFiles(tmp_path / "bundle.pem", tmp_path / "cert.pem", tmp_path / "key.pem")


def _steps(tmp_path: Path, nodes: Mapping[int, BrokerState | None]) -> list[NodeReload | NodeDown]:
    return plan_reload(PLAN, nodes, lambda node_id: tmp_path / f"node-{node_id}")


def test_each_running_node_gets_its_own_resource_and_next_generation_by_ascending_id(tmp_path: Path) -> None:
    write_stores(next_reload_stores(tmp_path / "node-3"), _own(tmp_path))  # node 3 reloaded once before
    steps = _steps(tmp_path, {1: _running(1), 2: None, 3: _running(3)})
    assert [step.node_id for step in steps] == [1, 2, 3]
    first, down, third = steps
    assert isinstance(first, NodeReload)
    assert isinstance(third, NodeReload)
    assert isinstance(down, NodeDown)
    assert (first.keystore, first.truststore) == (
        tmp_path / "node-1" / STORES_DIR / "keystore-1.pem",
        tmp_path / "node-1" / STORES_DIR / "truststore-1.pem",
    )
    assert third.keystore.name == "keystore-2.pem"
    assert third.root == tmp_path / "node-3"
    assert third.configs["listener.name.controller.ssl.truststore.location"] == str(third.truststore)
    assert not (tmp_path / "node-1").exists(), "planning writes nothing"


def test_a_node_that_is_down_says_which_and_what_to_do(tmp_path: Path) -> None:
    down = _steps(tmp_path, {1: _running(1), 3: _running(3)})[1]  # node 2 has no state at all
    assert isinstance(down, NodeDown)
    assert "node 2 (127.0.0.1:9003" in down.message
    assert str(tmp_path / "node-2") in down.message
    assert "edgestream broker start --brokers 3" in down.message


async def test_the_nodes_change_one_at_a_time_and_the_down_one_is_passed_over(tmp_path: Path) -> None:
    for node_id in (1, 3):
        write_stores(next_reload_stores(tmp_path / f"node-{node_id}"), _own(tmp_path, b"C-old"))
    events: list[str] = []

    async def apply(step: NodeReload) -> None:
        assert step.keystore.read_bytes() == b"KC-new", "the node's new stores are written first"
        events.append(f"start {step.node_id}")
        await asyncio.sleep(0)  # a real apply yields to the loop: nothing else may start meanwhile
        events.append(f"applied {step.node_id}")

    steps = _steps(tmp_path, {1: _running(1), 2: None, 3: _running(3)})
    report = await roll(steps, _own(tmp_path, b"C-new"), apply)
    assert events == ["start 1", "applied 1", "start 3", "applied 3"]
    assert report.reloaded == [1, 3]
    assert list(report.failed) == [2]
    assert "node 2" in report.failed[2]
    assert not report.ok
    for node_id in (1, 3):
        left = sorted(p.name for p in (tmp_path / f"node-{node_id}" / STORES_DIR).iterdir())
        assert left == ["keystore-2.pem", "truststore-2.pem"], "the older generation is pruned"
    assert not (tmp_path / "node-2").exists(), "nothing is written for a node that is down"


@pytest.mark.parametrize("failure", ["refused", "hangs"])
async def test_a_node_that_fails_keeps_its_stores_and_stops_the_roll(tmp_path: Path, failure: str) -> None:
    write_stores(next_reload_stores(tmp_path / "node-2"), _own(tmp_path, b"C-old"))
    applied: list[int] = []

    async def apply(step: NodeReload) -> None:
        if step.node_id == 2:
            if failure == "refused":
                raise BrokerError("broker 2 refused the new TLS stores: error 42: bad keystore")
            await asyncio.sleep(30)
        applied.append(step.node_id)

    steps = _steps(tmp_path, {n: _running(n) for n in (1, 2, 3)})
    down = NodeDown(4, "127.0.0.1:9007", tmp_path / "node-4", 4)
    steps.append(down)  # after the failed node: still reported as down, not as "not tried"
    report = await roll(steps, _own(tmp_path), apply, timeout_s=0.1)
    assert applied == [1]
    assert report.reloaded == [1]
    assert sorted(report.failed) == [2, 3, 4]
    assert report.failed[4] == down.message
    assert "node 2 (127.0.0.1:9003) did not take its new TLS stores" in report.failed[2]
    assert "run reload-tls again" in report.failed[2]
    assert ("bad keystore" if failure == "refused" else "TimeoutError") in report.failed[2]
    assert report.failed[3] == "node 3 (127.0.0.1:9005) was not tried: node 2 failed first"
    assert (tmp_path / "node-2" / STORES_DIR / "keystore-1.pem").exists(), "its configs may still name it"
    assert not (tmp_path / "node-3").exists()


async def test_applying_sets_the_nodes_own_broker_resource_and_waits_for_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[str, int, dict[str, str]]] = []

    async def alter(kafka: KafkaSettings, configs: Mapping[str, str], *, node_id: int) -> None:
        calls.append(("alter", node_id, dict(configs)))

    async def applied(kafka: KafkaSettings, configs: Mapping[str, str], node_id: int) -> None:
        calls.append(("applied", node_id, dict(configs)))

    monkeypatch.setattr(reload, "alter_with_retries", alter)
    monkeypatch.setattr(reload, "await_applied", applied)
    step = _steps(tmp_path, {n: _running(n) for n in (1, 2, 3)})[1]
    assert isinstance(step, NodeReload)
    await reload.apply_stores(KafkaSettings(bootstrap_servers=PLAN.bootstrap), step)
    assert calls == [("alter", 2, step.configs), ("applied", 2, step.configs)]


def test_the_command_reloads_a_running_cluster_and_exits_1_naming_a_node_that_is_down(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``broker reload-tls`` takes the cluster's path when a cluster runs (not the single broker's)."""
    down = NodeDown(2, "127.0.0.1:9003", tmp_path / "node-2", 3)
    state = ClusterState(PLAN, {1: _running(1), 2: None, 3: _running(3)})
    monkeypatch.setattr(LocalCluster, "plan", lambda self: PLAN)
    monkeypatch.setattr(LocalCluster, "status", lambda self: state)
    monkeypatch.setattr(LocalCluster, "reload_tls", lambda self: ReloadReport([1, 3], {2: down.message}))
    result = CliRunner().invoke(
        app, ["broker", "reload-tls", "--home", str(tmp_path)], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 1
    assert "node 1 re-read its trust bundle" in result.stdout
    assert "node 3 re-read its trust bundle" in result.stdout
    assert "node 2 (127.0.0.1:9003" in result.stderr
    assert "edgestream broker start --brokers 3" in result.stderr
