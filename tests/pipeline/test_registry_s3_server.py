"""The S3 artifact store against a real S3-compatible server (SeaweedFS, ``tests/seaweedfs.py``, over
TLS on loopback): a round trip, an idempotent put, a corrupt cache replaced, a tampered object refused and
never cached, a missing object and bucket, wrong credentials, a read-only key's write and a foreign
certificate refused with a clear message, and a model published into the bucket by ``registry publish``
that a worker on another host fetches, verifies (hash and signature) and caches.

``weed`` comes from ``deploy/s3/install-seaweedfs.sh`` (``make s3-tools``); without it these tests skip
and say so. Run last (the ``s3_tools`` marker), and allowed to wait for a background build of it."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from typer.testing import CliRunner

from edgestream.cli import app
from edgestream.pipeline.files import sha256_hex
from edgestream.pipeline.registry.errors import (
    ArtifactMismatch,
    ArtifactNotFound,
    ArtifactUnavailable,
    UntrustedSigner,
)
from edgestream.pipeline.registry.s3store import S3ArtifactStore, s3_store
from edgestream.pipeline.registry.signing import SigningKey, load_verified
from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.catalog import artifact_store, registry_loader, trusted_keys
from edgestream.workers.edge.settings import WorkerSettings
from tests.seaweedfs import BUCKET, BUILD_WAIT_S, PUBLISHER, READER, SeaweedS3, running_seaweedfs, weed_binary

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.s3_tools, pytest.mark.timeout(BUILD_WAIT_S + 300)]
"""Run last, and allowed to wait for a background build of weed beyond the suite's 300 s per test."""

BLOB = b"an onnx graph, as far as the store knows" * 1000
SHA = sha256_hex(BLOB)
SECRET = "do-not-print-this-secret-7f3a"
NO_BROKER = KafkaSettings(bootstrap_servers="127.0.0.1:9")
"""Never reached: the worker here reads artifacts only."""


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """SeaweedFS's S3 API on loopback over TLS, for this module's tests (skips when not built)."""
    weed = weed_binary()
    with running_seaweedfs(weed, tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


class Counting:
    """A client that counts the calls it passes on."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self.client, name)


def _store(server: SeaweedS3, prefix: str, cache: Path, **others: Any) -> S3ArtifactStore:
    return s3_store(server.settings(prefix, **others), cache)


def _prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_a_round_trip_through_the_bucket_and_a_put_that_finds_it_there(
    seaweed: SeaweedS3, tmp_path: Path
) -> None:
    prefix = _prefix()
    publisher = _store(seaweed, prefix, tmp_path / "publisher")
    assert not publisher.has(SHA)
    assert publisher.put(BLOB) == SHA
    assert publisher.has(SHA)
    stored = seaweed.client().get_object(Bucket=BUCKET, Key=f"{prefix}/sha256/{SHA}")
    assert stored["Body"].read() == BLOB  # the layout: <prefix>/sha256/<hash>

    counting = Counting(seaweed.client())
    again = S3ArtifactStore(counting, publisher.location, publisher.cache)
    assert again.put(BLOB) == SHA
    assert counting.calls == ["get_object"]  # found, verified, not written again

    reader = _store(seaweed, prefix, tmp_path / "reader", keys=READER)
    assert reader.get(SHA) == BLOB
    assert reader.cache.path(SHA).read_bytes() == BLOB
    reader.cache.path(SHA).write_bytes(BLOB[:-1] + b"!")  # the cache rots on the worker's disk
    assert reader.get(SHA) == BLOB
    assert reader.cache.get(SHA) == BLOB  # replaced by a verified copy


def test_a_tampered_object_is_refused_never_cached_and_repaired_by_a_put(
    seaweed: SeaweedS3, tmp_path: Path
) -> None:
    prefix = _prefix()
    publisher = _store(seaweed, prefix, tmp_path / "publisher")
    publisher.put(BLOB)
    seaweed.client().put_object(Bucket=BUCKET, Key=f"{prefix}/sha256/{SHA}", Body=b"evil" + BLOB)
    reader = _store(seaweed, prefix, tmp_path / "reader", keys=READER)
    with pytest.raises(ArtifactMismatch, match=f"s3://{BUCKET}/{prefix}/sha256/{SHA}"):
        reader.get(SHA)
    assert not reader.cache.has(SHA)
    assert publisher.put(BLOB) == SHA  # the publisher finds it corrupt and writes it again
    assert reader.get(SHA) == BLOB


def test_a_missing_object_is_not_found(seaweed: SeaweedS3, tmp_path: Path) -> None:
    store = _store(seaweed, _prefix(), tmp_path, keys=READER)
    with pytest.raises(ArtifactNotFound, match=BUCKET):
        store.get(SHA)
    assert not store.has(SHA)
    other_bucket = _store(seaweed, "p", tmp_path, keys=READER, bucket="no-such-bucket")
    with pytest.raises(ArtifactUnavailable, match="the bucket does not exist"):
        other_bucket.get(SHA)


def test_wrong_credentials_and_a_foreign_certificate_are_refused_at_once(
    seaweed: SeaweedS3, tmp_path: Path
) -> None:
    prefix = _prefix()
    _store(seaweed, prefix, tmp_path / "publisher").put(BLOB)
    unknown = _store(seaweed, prefix, tmp_path / "unknown", keys=("nobody", SECRET))
    with pytest.raises(
        ArtifactUnavailable, match=r"check the credentials \(InvalidAccessKeyId, HTTP 403\)"
    ) as e:
        unknown.get(SHA)
    assert SECRET not in str(e.value)
    wrong_secret = _store(seaweed, prefix, tmp_path / "wrong", keys=(READER[0], SECRET))
    with pytest.raises(ArtifactUnavailable, match="check the secret access key") as e:
        wrong_secret.get(SHA)
    assert SECRET not in str(e.value)
    with pytest.raises(ArtifactUnavailable, match="access denied"):
        _store(seaweed, prefix, tmp_path / "reader", keys=READER).put(b"a reader may not write")

    other_ca = Pki(tmp_path / "other-ca")
    other_ca.init()
    foreign = _store(seaweed, prefix, tmp_path / "foreign", ca_file=other_ca.ca_file)
    with pytest.raises(ArtifactUnavailable, match="certificate was refused"):
        foreign.get(SHA)
    assert not any(path.is_file() for path in (tmp_path / "foreign").rglob("*"))


async def _cli(env: dict[str, str], *args: str) -> Any:
    """``edgestream <args>`` in a thread (it runs its own event loop) with ``env`` set."""
    invoke = CliRunner().invoke
    return await asyncio.to_thread(
        invoke, app, list(args), env={"COLUMNS": "250", **env}, catch_exceptions=False
    )


async def test_a_model_published_into_the_bucket_is_fetched_verified_and_cached_by_a_worker(
    seaweed: SeaweedS3, bootstrap: KafkaSettings, tmp_path: Path
) -> None:
    from edgestream.pipeline.registry.client import RegistryClient
    from edgestream.topics.admin import ensure_topics
    from edgestream.topics.catalogue import MODELS_TOPIC, shared_topics
    from tests.pipeline.models.usermodels import fraud_model

    await ensure_topics(bootstrap, [t for t in shared_topics() if t.name == MODELS_TOPIC])
    prefix, home = _prefix(), tmp_path / "registry"
    env = {**bootstrap.to_env("EDGESTREAM_KAFKA_"), **seaweed.env(prefix, "EDGESTREAM_REGISTRY_S3__")}
    result = await _cli(env, "registry", "keygen", "--home", str(home))
    assert result.exit_code == 0, result.output
    model = fraud_model()
    onnx, sig = tmp_path / "fraud.onnx", tmp_path / "fraud.json"
    onnx.write_bytes(model.onnx)
    sig.write_text(json.dumps(model.signature))
    name = f"fraud-{uuid.uuid4().hex[:8]}"
    bootstrap_option = ("--home", str(home), "--bootstrap", bootstrap.bootstrap_servers)
    result = await _cli(
        env, "registry", "publish", name, "--onnx", str(onnx), "--signature", str(sig), *bootstrap_option
    )
    assert result.exit_code == 0, result.output
    assert not [p for p in (home / "artifacts").rglob("*") if p.is_file()]  # into the bucket, not the home
    result = await _cli(env, "registry", "catalogue", *bootstrap_option)
    assert result.exit_code == 0, result.output
    assert "artifact not in" not in result.output  # the catalogue found it in the bucket

    signed = (await RegistryClient(bootstrap).read_states())[name].manifest(1)
    sha256 = signed.manifest.sha256
    assert sha256 == sha256_hex(model.onnx)

    # Another host: the trusted keys, read-only credentials for the bucket, its own cache; no registry.
    worker_home = tmp_path / "worker-host"
    (worker_home / "trust").mkdir(parents=True)
    shutil.copy(home / "trusted-keys.json", worker_home / "trust" / "trusted-keys.json")
    settings = WorkerSettings(
        kafka=NO_BROKER,
        home=worker_home,
        registry=True,
        registry_home=worker_home / "trust",
        registry_cache_dir=worker_home / "cache",
        registry_s3=seaweed.settings(prefix, keys=READER),
    )
    loader = registry_loader(settings)
    assert loader is not None
    served = await asyncio.to_thread(loader, signed)
    assert served.artifact.sha256 == sha256
    assert served.artifact.path.read_bytes() == model.onnx
    assert served.artifact.path.is_relative_to(worker_home / "cache")
    store = artifact_store(settings)
    assert isinstance(store, S3ArtifactStore)
    assert store.cache.get(sha256) == model.onnx  # cached, verified, for the next load

    # The signature is checked whatever the store: a manifest signed by a key the worker does not
    # trust is refused before any byte is fetched.
    forged = SigningKey.generate().sign(signed.manifest)
    shutil.rmtree(worker_home / "cache")
    with pytest.raises(UntrustedSigner):
        load_verified(store, forged, trusted_keys(settings))
    assert not store.cache.has(sha256)
    assert PUBLISHER[1] not in result.output
