"""`edgestream retrain` on the real broker: shifted samples and their labels on the cloud topics, a
registry with a stable reference version, and a retrained candidate published (not promoted) that
beats it on the held-out split.

The shift is ``pipeline.models.shift`` (a scanner with a 1.3x pixel pitch). The
test's records are told apart from other tests' by their window: ``at_ms`` stamps inside a window
opened and closed around this test's own produce.
"""

from __future__ import annotations

import asyncio
import csv
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner, Result

from edgestream.cli import app
from edgestream.pipeline.contract.cloud import Label, Sample
from edgestream.pipeline.models import ModelStore, load_dataset
from edgestream.pipeline.models.shift import scanner_shift
from edgestream.pipeline.registry import (
    LocalArtifactStore,
    ModelState,
    SigningKey,
    TrustedKeys,
    advance,
    rollback,
    start_canary,
)
from edgestream.pipeline.registry.client import RegistryClient
from edgestream.pipeline.registry.loader import verified_artifact
from edgestream.pipeline.registry.publishing import publish_artifact
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import LABELS_TOPIC, SAMPLES_TOPIC, shared_topics
from edgestream.workers.retrainer import CloudRecords, CloudTail, read_cloud

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.broker

MODEL = "embedding-scorer"
LABELLED = 400
UNLABELLED = 20
MIN_MARGIN = 0.05
"""Measured on this test's 120 held-out samples: see the report; pure-test margins are 0.12-0.14."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


async def _cli(bootstrap: KafkaSettings, *args: str) -> Result:
    kafka = bootstrap
    argv = [*args, "--bootstrap", kafka.bootstrap_servers]
    env = {"COLUMNS": "250", **kafka.to_env("EDGESTREAM_KAFKA_")}
    return await asyncio.to_thread(CliRunner().invoke, app, argv, env=env, catch_exceptions=False)


async def _stable_reference(bootstrap: KafkaSettings, home: Path, model_home: Path) -> ModelState:
    """Publish the zoo's medium reference model with this test's key and make it stable."""
    key = SigningKey.generate()
    key.save(home / "signing-key.pem")
    TrustedKeys({}).with_key(key.public_raw).save(home / "trusted-keys.json")
    client = RegistryClient(bootstrap, signer=key)
    state = (await client.read_states()).get(MODEL, ModelState(MODEL))
    if state.canary is not None:
        state = rollback(state, now_ms=_now_ms(), reason="retrain test")
        await client.publish_state(state)
    artifact = ModelStore(model_home / "models").get(MODEL, "medium")
    state = await publish_artifact(
        bootstrap,
        LocalArtifactStore(home / "artifacts"),
        key,
        artifact.spec,
        artifact.path.read_bytes(),
        metrics={"accuracy": artifact.accuracy},
        lineage={"test": "retrain reference"},
    )
    if state.stable != state.latest:
        state = start_canary(state, state.latest, now_ms=_now_ms(), stages=(0.5, 1.0))
        while state.canary is not None:
            state = advance(state, now_ms=_now_ms())
        await client.publish_state(state)
    assert state.stable == state.latest
    return state


async def _produce_shifted(producer: AIOKafkaProducer, start_ms: int) -> None:
    """LABELLED shifted samples with their true labels, UNLABELLED without, and labelled samples just
    before the window (which must be left out)."""
    data = load_dataset("embedding")
    X = scanner_shift(np.concatenate([data.X_train, data.X_test]))
    y = np.concatenate([data.y_train, data.y_test])
    rows = np.random.default_rng(11).permutation(len(y))
    run = uuid.uuid4().bytes[:8]
    for i, row in enumerate(rows[: LABELLED + UNLABELLED + 10]):
        rid = run + i.to_bytes(8)
        at_ms = start_ms - 5_000 if i >= LABELLED + UNLABELLED else start_ms + i
        sample = Sample(
            rid, "eu-west", MODEL, 1, at_ms, b"p" * 16, tuple(float(v) for v in X[row]), 0, (0.5, 0.5)
        )
        await producer.send(SAMPLES_TOPIC, sample.to_bytes(), key=sample.device)
        if i < LABELLED or i >= LABELLED + UNLABELLED:
            label = Label(rid, MODEL, int(y[row]), at_ms + 1)
            await producer.send(LABELS_TOPIC, label.to_bytes(), key=rid)
    await producer.flush()


async def test_retrain_publishes_a_candidate_that_beats_stable(
    bootstrap: KafkaSettings, producer: AIOKafkaProducer, model_home: Path, tmp_path: Path
) -> None:
    await ensure_topics(bootstrap, shared_topics())
    home = tmp_path / "registry"
    before = await _stable_reference(bootstrap, home, model_home)
    start_ms = _now_ms()
    await _produce_shifted(producer, start_ms)
    until_ms = max(_now_ms(), start_ms + LABELLED + UNLABELLED) + 1
    window = ["--since", _iso(start_ms), "--until", _iso(until_ms), "--home", str(home)]

    refused = await _cli(bootstrap, "retrain", MODEL, *window, "--min-samples", "401")
    assert refused.exit_code == 1
    assert "400 labelled samples" in refused.output
    assert "fewer than --min-samples 401" in refused.output

    dry = await _cli(bootstrap, "retrain", MODEL, *window, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "dry run: nothing published" in dry.output
    assert (await RegistryClient(bootstrap).read_states())[MODEL].latest == before.latest

    result = await _cli(bootstrap, "retrain", MODEL, *window)
    assert result.exit_code == 0, result.output
    print(result.output)
    state = (await RegistryClient(bootstrap).read_states())[MODEL]
    assert state.latest == before.latest + 1
    assert state.stable == before.stable  # a candidate: not promoted
    assert state.canary is None
    manifest = state.manifest(state.latest).manifest
    assert manifest.variant == "medium"
    lineage = manifest.lineage
    assert lineage["parent_version"] == before.stable
    assert lineage["windows"] == [{"since_ms": start_ms, "until_ms": until_ms}]
    assert (lineage["samples"], lineage["joined"]) == (LABELLED + UNLABELLED, LABELLED)
    assert lineage["labels"] >= LABELLED + 10
    assert (lineage["train_size"], lineage["holdout_size"]) == (280, 120)
    metrics = manifest.metrics
    assert metrics["accuracy"] - metrics["stable_accuracy"] == pytest.approx(metrics["margin"])
    assert metrics["margin"] >= MIN_MARGIN, metrics
    artifact = verified_artifact(
        LocalArtifactStore(home / "artifacts"),
        state.manifest(state.latest),
        TrustedKeys.load(home / "trusted-keys.json"),
        tmp_path / "cache",
    )
    assert artifact.version == state.latest
    assert artifact.accuracy == metrics["accuracy"]


EXPORT_FEATURES = 5
"""Features per sample of the exported model (one the zoo does not know)."""


async def _produce_for_export(
    producer: AIOKafkaProducer, model: str, start_ms: int
) -> list[tuple[Sample, int]]:
    """Samples and labels of ``model`` on the cloud topics: six labelled in the window (versions 1 and
    2, float32 features no float16 holds), and what the export must leave out (unlabelled, before the
    window, a shorter feature vector, a label of another model). The labelled ones, with their labels."""
    rng = np.random.default_rng(5)
    run = uuid.uuid4().bytes[:8]
    labelled: list[tuple[Sample, int]] = []
    for i in range(10):
        rid = run + i.to_bytes(8)
        at_ms = start_ms - 5_000 if i == 8 else start_ms + 10 * (9 - i)  # out of time order
        n = EXPORT_FEATURES - 1 if i == 9 else EXPORT_FEATURES
        x = tuple(float(v) for v in rng.normal(0, 1e3, n).astype(np.float32))
        sample = Sample(rid, "eu-west", model, 1 + i % 2, at_ms, b"q" * 16, x, 0, (0.9, 0.1))
        await producer.send(SAMPLES_TOPIC, sample.to_bytes(), key=sample.device)
        if i in (6, 7):
            continue  # unlabelled
        truth = int(rng.integers(0, 2))
        label = Label(rid, model, truth, at_ms + 1)
        await producer.send(LABELS_TOPIC, label.to_bytes(), key=rid)
        if i < 6:
            labelled.append((sample, truth))
    await producer.send(LABELS_TOPIC, Label(run, "embedding-scorer", 1, start_ms).to_bytes(), key=run)
    await producer.flush()
    return sorted(labelled, key=lambda row: (row[0].at_ms, row[0].request_id))


async def test_export_writes_the_labelled_samples_of_any_model_and_publishes_nothing(
    bootstrap: KafkaSettings, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    await ensure_topics(bootstrap, shared_topics())
    model = f"fraud-{uuid.uuid4().hex[:8]}"
    start_ms = _now_ms()
    written = await _produce_for_export(producer, model, start_ms)
    until_ms = max(_now_ms(), start_ms + 100) + 1
    window = ["--since", _iso(start_ms), "--until", _iso(until_ms)]

    npz_path, csv_path = tmp_path / "window.npz", tmp_path / "window.csv"
    for path in (npz_path, csv_path):
        result = await _cli(bootstrap, "retrain", model, *window, "--export", str(path))
        assert result.exit_code == 0, result.output
        assert f"exported 6 labelled samples of {model}" in result.output
        assert f"{EXPORT_FEATURES} features, versions [1, 2]" in result.output
        assert "(8 samples in the window" in result.output  # 6 labelled, 2 not; 1 skipped
    features = np.array([s.features for s, _ in written], dtype=np.float32)
    with np.load(npz_path, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["features"], features)
        assert npz["label"].tolist() == [truth for _, truth in written]
        assert npz["version"].tolist() == [s.model_version for s, _ in written]
        assert npz["time_ms"].tolist() == [s.at_ms for s, _ in written]
        assert npz["request_id"].tolist() == [s.request_id.hex() for s, _ in written]
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["request_id"] for row in rows] == [s.request_id.hex() for s, _ in written]
    assert [int(row["label"]) for row in rows] == [truth for _, truth in written]
    assert [int(row["version"]) for row in rows] == [s.model_version for s, _ in written]
    assert [int(row["time_ms"]) for row in rows] == [s.at_ms for s, _ in written]
    csv_features = np.array([[float(row[f"f{j}"]) for j in range(EXPORT_FEATURES)] for row in rows])
    np.testing.assert_array_equal(csv_features.astype(np.float32), features)

    empty = tmp_path / "empty.npz"
    before = ["--since", _iso(start_ms - 60_000), "--until", _iso(start_ms - 30_000)]
    refused = await _cli(bootstrap, "retrain", model, *before, "--export", str(empty))
    assert refused.exit_code == 1
    assert f"{model}: no labelled samples in" in refused.output
    assert not empty.exists()
    assert model not in await RegistryClient(bootstrap).read_states(), "an export publishes nothing"


async def test_the_cloud_tail_reads_each_record_once_and_the_new_ones_on_each_read(
    bootstrap: KafkaSettings, producer: AIOKafkaProducer
) -> None:
    """The story's poll for labelled samples: a tail opened at a window's start gives every sample and
    label of it, and on each read the new ones too, each once; read_cloud from the window's start reads
    the same. (Where the read starts is the broker's time index, ``test_kafka.py``: a lower bound, the
    window's filter is the join's.)"""
    await ensure_topics(bootstrap, shared_topics())
    start_ms = _now_ms()
    run = uuid.uuid4().bytes[:8]

    async def send(i: int, stamp_ms: int) -> bytes:
        rid = run + i.to_bytes(8)
        sample = Sample(rid, "eu-west", MODEL, 1, stamp_ms, b"p" * 16, (0.0,) * 16, 0, (0.5, 0.5))
        await producer.send(SAMPLES_TOPIC, sample.to_bytes(), key=sample.device, timestamp_ms=stamp_ms)
        label = Label(rid, MODEL, 1, stamp_ms + 1)
        await producer.send(LABELS_TOPIC, label.to_bytes(), key=rid, timestamp_ms=stamp_ms + 1)
        await producer.flush()
        return rid

    def ours(records: CloudRecords) -> tuple[list[bytes], list[bytes]]:
        samples = sorted(s.request_id for s in records.samples if s.request_id.startswith(run))
        labels = sorted(lb.request_id for lb in records.labels if lb.request_id.startswith(run))
        return samples, labels

    first = [await send(i, start_ms + i) for i in (1, 2)]
    async with CloudTail(bootstrap, start_ms) as tail:
        assert ours(await tail.read()) == (first, first)
        later = await send(3, start_ms + 3)
        assert ours(await tail.read()) == ([*first, later], [*first, later])
        assert ours(await tail.read()) == ([*first, later], [*first, later])
    assert ours(await read_cloud(bootstrap, since_ms=start_ms)) == ([*first, later], [*first, later])


async def test_a_cloud_tail_read_that_fails_half_way_starts_over_on_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Records a failed read consumed are not in the tail: the next read must start from the window
    again (not resume past them), and give each record once."""
    from aiokafka.structs import ConsumerRecord

    from edgestream.pipeline import kafka as clients
    from edgestream.pipeline.errors import KafkaTimeout

    def label(i: int) -> ConsumerRecord[bytes, bytes]:
        value = Label(i.to_bytes(16), MODEL, 1, 1_000 + i).to_bytes()
        return ConsumerRecord(LABELS_TOPIC, 0, i, 1_000 + i, 0, None, value, None, 0, len(value), ())

    calls: list[bool] = []

    async def read_to_end(*_a: object, resume: bool = False, **_k: object):  # type: ignore[no-untyped-def]
        calls.append(resume)
        if len(calls) == 1:  # the first read: record 0
            yield label(0)
        elif len(calls) == 2:  # a resumed read: record 1 comes, then the read fails
            yield label(1)
            raise KafkaTimeout("cloud.labels", 1)
        else:
            for i in (0, 1) if not resume else ():
                yield label(i)

    async def never_started(client: object) -> object:
        return client

    monkeypatch.setattr(clients, "read_to_end", read_to_end)
    monkeypatch.setattr(clients, "start_kept", never_started)
    tail = CloudTail(KafkaSettings(bootstrap_servers="127.0.0.1:1"), 1_000)  # never started
    ids = [i.to_bytes(16) for i in (0, 1)]
    try:
        assert [lb.request_id for lb in (await tail.read()).labels] == ids[:1]
        with pytest.raises(KafkaTimeout):
            await tail.read()
        assert [lb.request_id for lb in (await tail.read()).labels] == ids
        assert [lb.request_id for lb in (await tail.read()).labels] == ids
    finally:
        await tail.__aexit__(None, None, None)
    assert calls == [False, True, False, True]
