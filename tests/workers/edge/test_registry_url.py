"""A worker following the registry from another host: no artifact store on its disk, only the trusted
keys and ``registry_url``. It fetches the version ``control.models`` names from the artifact server over
mutual TLS (as its own ``edge-<region>`` identity), serves devices with it, and refuses a version the
server cannot give while it keeps serving."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.registry import ModelState, TrustedKeys, publish, rollback, start_canary
from edgestream.pipeline.registry.artifactserver import ArtifactServer
from edgestream.pipeline.registry.client import RegistryClient
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.security.tls import server_context
from edgestream.topics.catalogue import results_topic

from ..conftest import EdgeRegion, RunningWorker, eventually, read_topic
from .test_hot_swap import MODEL, Registry, _applied, _now_ms, _send, _stable_state

if TYPE_CHECKING:
    from pathlib import Path

    from aiokafka import AIOKafkaProducer

    from edgestream.workers.local.broker.state import BrokerState

pytestmark = pytest.mark.broker


async def test_a_worker_without_the_store_serves_what_it_fetches_from_the_artifact_server(
    edge_region: EdgeRegion,
    running_worker: RunningWorker,
    producer: AIOKafkaProducer,
    kafka_broker: BrokerState,
    tmp_path: Path,
) -> None:
    if kafka_broker.tls_root is None:
        pytest.skip("the artifact server needs the broker's PKI: the test broker runs without TLS")
    current = (await RegistryClient(edge_region.bootstrap).read_states()).get(MODEL, ModelState(MODEL))
    registry = Registry(tmp_path / "registry", edge_region, current)
    pki = Pki(kafka_broker.tls_root)
    server_files = pki.ensure([Identity.registry()])[Identity.registry()]
    trust = tmp_path / "worker-trust"  # all the worker has of the registry: its public keys
    TrustedKeys.load(registry.root / "trusted-keys.json").save(trust / "trusted-keys.json")

    async with ArtifactServer(registry.store, server_context(server_files)) as server:
        first = await _stable_state(registry)
        worker = await running_worker(
            registry=True,
            registry_home=trust,
            registry_url=f"https://localhost:{server.port}",
            registry_cache_dir=tmp_path / "worker-cache",
            registry_attempts=2,
        )
        assert await _applied(worker, first), worker.catalog.refused
        assert first.stable is not None
        sha256 = first.manifest(first.stable).manifest.sha256
        assert (tmp_path / "worker-cache" / "sha256" / sha256[:2] / sha256).is_file()

        sent = await _send(edge_region, producer, 1)
        results = await read_topic(edge_region.bootstrap, results_topic(edge_region.name), expect=len(sent))
        versions = {ResultRecord.from_bytes(r.value).model_version for r in results}
        assert versions == {first.stable}
        assert {ResultRecord.from_bytes(r.value).request_id for r in results} == set(sent)

        # A canary whose bytes the server does not hold (removed from its store): refused, not applied.
        missing = publish(first, registry.signed("medium"), now_ms=_now_ms())
        registry.store.path(missing.manifest(missing.latest).manifest.sha256).unlink()
        await registry.put(start_canary(missing, missing.latest, now_ms=_now_ms(), fraction=0.5))
        refused = await eventually(lambda: worker.catalog.refused.get("artifact_missing") == 1, timeout_s=30)
        assert refused, worker.catalog.refused
        assert worker.catalog.revision(MODEL) == first.revision
        assert worker.catalog.served_versions()[MODEL] == (first.stable,)
    await registry.put(rollback(registry.state, now_ms=_now_ms(), reason="test done"))  # leave no canary
