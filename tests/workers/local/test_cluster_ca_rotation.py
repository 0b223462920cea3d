"""A CA rotation on a running 3-node cluster, with no restart: every node trusts both CAs, serves a
certificate from the new one, then stops trusting the old one, through ``reload-tls`` (a rolling
reload, node by node). A cluster of its own: the rotation changes what every node trusts, which would
break any later test that holds certificates from the first CA.

Each node is checked on its own client listener (a client that bootstraps from that node alone)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509

from bench import REPO_ROOT
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki
from edgestream.workers.local.broker.cluster import LocalCluster
from edgestream.workers.local.broker.settings import BrokerSettings
from edgestream.workers.local.broker.tls import STORES_DIR
from tests.workers.local.test_ca_rotation import _connects, _connects_soon, _refused_soon, _served_certificate

if TYPE_CHECKING:
    from collections.abc import Iterator

    from edgestream.workers.local.broker.state import BrokerState

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(BrokerSettings(home=tmp_path_factory.mktemp("cluster-ca-rotation"), brokers=3))
    try:
        cluster.start(timeout_s=180)
        yield cluster
    finally:
        cluster.stop()


def _reload_with_the_command(home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "edgestream", "broker", "reload-tls", "--home", str(home)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=180,
        check=False,
    )


async def _new_certificate_served(node: BrokerState, pki: Pki, serial: int) -> x509.Certificate | None:
    """The certificate ``node`` presents once it is another than ``serial`` (-1: any), verified
    against the bundle: a reload is applied asynchronously, and a handshake refused or timed out
    meanwhile counts as not yet. None when it still presents ``serial`` after 15 s."""
    for _ in range(30):
        with contextlib.suppress(OSError, TimeoutError):  # ssl.SSLError is an OSError
            served = await asyncio.wait_for(_served_certificate(node, pki.ca_file), 10)
            if served.serial_number != serial:
                return served
        await asyncio.sleep(0.5)
    return None


# Two runs in eight failed after every check had passed, on a garbage-collected socket and transport of
# an aiokafka connection a node had refused (the test makes a dozen such refusals on purpose: the old
# CA's certificates, handshakes during a swap). The same aiokafka leak of a failed connect as in
# tests/faults/test_cluster_faults.py (aiokafka #739 / #1130); only those two unraisable warnings are
# let through, and only here.
@pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <(socket\.socket|function _SelectorTransport\.__del__)"
    ":pytest.PytestUnraisableExceptionWarning"
)
async def test_a_ca_rotation_reloads_every_node_with_no_restart(own_cluster: LocalCluster) -> None:
    state = own_cluster.status()
    assert state is not None
    assert state.tls_root is not None
    nodes = state.running
    assert len(nodes) == 3
    pids = {node.pid for node in nodes}
    pki = Pki(state.tls_root)
    old_device = pki.issue(Identity.device("r", "old"))  # signed by the first CA

    # 1. A new CA, trusted beside the old one once every node re-reads the bundle.
    pki.rotate_ca()
    new_device = pki.issue(Identity.device("r", "new"))
    assert not await _connects(nodes[0], new_device), "node 1 does not trust the new CA before the reload"
    report = await asyncio.to_thread(own_cluster.reload_tls)
    assert report.reloaded == [1, 2, 3], f"one node after the other, by id; {report.failed}"
    for node in nodes:  # each check retried for a while: a loaded box may time a handshake out
        assert await _connects_soon(node, new_device), f"{node.bootstrap} trusts the new CA"
        assert await _connects_soon(node, old_device), f"{node.bootstrap} still trusts the old CA"

    # 2. The nodes' certificate (one `broker` identity for all three) moves to the new CA.
    before = {node.bootstrap: await _new_certificate_served(node, pki, serial=-1) for node in nodes}
    pki.issue(Identity.broker())
    pki.issue(Identity.admin())
    report = await asyncio.to_thread(own_cluster.reload_tls)
    assert report.reloaded == [1, 2, 3], report.failed
    for node in nodes:
        old = before[node.bootstrap]
        assert old is not None, f"{node.bootstrap} presents a certificate"
        served = await _new_certificate_served(node, pki, old.serial_number)
        assert served is not None, f"{node.bootstrap} serves its new certificate"
        assert served.issuer != old.issuer, "from the new CA"

    # 3. The old CA retired, reloaded with the command: every node refuses its certificates.
    pki.retire_ca()
    done = await asyncio.to_thread(_reload_with_the_command, own_cluster.settings.home)
    assert done.returncode == 0, done.stderr
    for node_id in (1, 2, 3):
        assert f"node {node_id} re-read its trust bundle" in done.stdout
    for node in nodes:
        assert await _refused_soon(node, old_device), f"{node.bootstrap} refuses the retired CA"
        assert await _connects_soon(node, new_device), f"{node.bootstrap} still accepts the new CA"

    after = own_cluster.status()
    assert after is not None
    assert {node.pid for node in after.running} == pids, "the same three processes throughout"
    for node_id in (1, 2, 3):
        stores = own_cluster.node(node_id).root / STORES_DIR
        assert sorted(p.name for p in stores.iterdir()) == ["keystore-3.pem", "truststore-3.pem"]
