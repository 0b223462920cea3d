"""A worker on a host without the registry's disk: ``edgestream registry serve`` runs as its own process
on the registry's "host", and the worker's own loader (built from its settings: a URL, its TLS identity,
the trusted keys) fetches a published model over mutual TLS, verifies it and serves it; a version whose
bytes the registry cannot give, or gives wrong, is refused while the verified one goes on serving."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import numpy as np
import pytest

from edgestream.pipeline.files import sha256_hex
from edgestream.pipeline.models import ModelStore, load_dataset
from edgestream.pipeline.registry import (
    LocalArtifactStore,
    Manifest,
    ModelState,
    SigningKey,
    TrustedKeys,
    publish,
    start_canary,
)
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.serving.inference import InferenceSession
from edgestream.pipeline.serving.served import ModelCatalog
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.catalog import registry_loader
from edgestream.workers.edge.settings import WorkerSettings

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

MODEL = "embedding-scorer"
START_TIMEOUT_S = 60.0


def _manifest(version: int, data: bytes, artifact_spec: object, accuracy: float) -> Manifest:
    from edgestream.pipeline.models.zoo import ModelSpec

    assert isinstance(artifact_spec, ModelSpec)
    return Manifest(
        model=MODEL,
        version=version,
        variant="tiny",
        sha256=sha256_hex(data),
        size_bytes=len(data),
        input_dtype=artifact_spec.input_dtype,
        input_shape=artifact_spec.input_shape,
        metrics={"accuracy": accuracy},
        lineage={"test": "registry serve"},
        created_at_ms=time.time_ns() // 1_000_000,
    )


@pytest.fixture
def registry_host(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """The registry's home (PKI with the ``registry`` identity, the artifact store) and the port of
    ``edgestream registry serve`` running on it as a child process."""
    home = tmp_path / "registry-host"
    Pki.in_home(home).ensure([Identity.registry(), Identity.edge("eu-west")])
    (home / "registry" / "artifacts").mkdir(parents=True)
    command = [sys.executable, "-m", "edgestream", "registry", "serve", "--home", str(home), "--port", "0"]
    log = (tmp_path / "registry-serve.log").open("wb")
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=os.environ.copy())
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], START_TIMEOUT_S)
        line = child.stdout.readline().decode() if ready else ""
        assert line.startswith("serving "), line or "registry serve printed nothing"
        yield home, int(line.rsplit(":", 1)[1])
    finally:
        child.terminate()
        code = child.wait(timeout=30)
        assert child.stdout is not None
        child.stdout.close()
        log.close()
        assert code == 0, (tmp_path / "registry-serve.log").read_text()  # SIGTERM is a clean stop


async def test_a_worker_on_another_host_serves_a_model_fetched_from_registry_serve(
    registry_host: tuple[Path, int], model_home: Path, tmp_path: Path
) -> None:
    home, port = registry_host
    store = LocalArtifactStore(home / "registry" / "artifacts")
    key = SigningKey.generate()
    artifact = ModelStore(model_home / "models").get(MODEL, "tiny")
    data = artifact.path.read_bytes()
    store.put(data)
    v1 = key.sign(_manifest(1, data, artifact.spec, artifact.accuracy))

    # The worker's host: its own TLS identity, the trusted keys, a URL; no artifact store.
    worker_home = tmp_path / "worker-host"
    TrustedKeys({}).with_key(key.public_raw).save(worker_home / "trust" / "trusted-keys.json")
    tls = Pki.in_home(home).files(Identity.edge("eu-west"))
    settings = WorkerSettings(
        kafka=KafkaSettings(
            bootstrap_servers="127.0.0.1:9",  # not reached: only artifacts are fetched here
            security_protocol="SSL",
            ssl_ca_file=tls.ca_file,
            ssl_cert_file=tls.cert_file,
            ssl_key_file=tls.key_file,
        ),
        home=worker_home,
        models=(MODEL,),
        registry=True,
        registry_url=f"https://localhost:{port}",
        registry_home=worker_home / "trust",
        registry_cache_dir=worker_home / "cache",
        registry_attempts=2,
        registry_timeout_s=5,
    )
    catalog = ModelCatalog({}, loader=registry_loader(settings))

    now_ms = time.time_ns() // 1_000_000
    state = publish(ModelState(MODEL), v1, now_ms=now_ms)
    assert await catalog.apply(state), catalog.refused
    served = catalog.models[(MODEL, 1)]
    assert served.artifact.path.is_relative_to(worker_home / "cache")
    batch = load_dataset("embedding").X_test[:8].astype(artifact.spec.input_dtype)
    labels, scores = served.session.run(batch)
    want_labels, want_scores = InferenceSession(artifact).run(batch)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(scores, want_scores)

    # v2 is signed, but the registry's server never got its bytes: refused, v1 goes on serving.
    with_v2 = publish(state, key.sign(_manifest(2, data + b"\0", artifact.spec, 0.0)), now_ms=now_ms)
    assert not await catalog.apply(start_canary(with_v2, 2, now_ms=now_ms))
    assert catalog.refused == {"artifact_missing": 1}
    assert catalog.served_versions()[MODEL] == (1,)

    # v3's bytes rot on the registry's disk: the server will not serve them, the worker refuses.
    other = ModelStore(model_home / "models").get(MODEL, "medium").path.read_bytes()
    sha = store.put(other)
    store.path(sha).write_bytes(other[:-1] + bytes([other[-1] ^ 1]))
    with_v3 = publish(with_v2, key.sign(_manifest(3, other, artifact.spec, 0.0)), now_ms=now_ms)
    assert not await catalog.apply(start_canary(with_v3, 3, now_ms=now_ms))
    assert catalog.refused == {"artifact_missing": 1, "artifact_unavailable": 1}
    assert catalog.served_versions()[MODEL] == (1,)
    assert catalog.models[(MODEL, 1)] is served
