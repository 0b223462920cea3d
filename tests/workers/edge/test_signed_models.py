"""Users' own models through a real worker: a gradient-boosted fraud classifier and a regression
scorer (skl2onnx exports, not zoo models) are published with their signatures, served through the
registry, and every result equals what onnxruntime gives run directly on the same inputs; a version
whose signature does not match its graph (an output it does not declare) is refused at publish and,
signed anyway, at load, while the worker keeps serving the version it had."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from edgestream.pipeline.contract.codec import TensorDtype, decode_tensor, encode_tensor
from edgestream.pipeline.contract.envelope import new_request_id, seal
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.models.signature import ModelSignature, parse_signature
from edgestream.pipeline.registry import (
    LocalArtifactStore,
    Manifest,
    ModelState,
    SigningKey,
    TrustedKeys,
    start_canary,
)
from edgestream.pipeline.registry import publish as publish_version
from edgestream.pipeline.registry.client import RegistryClient
from edgestream.pipeline.registry.errors import SignatureMismatch
from edgestream.pipeline.registry.publishing import SIGNED_VARIANT, publish_signed
from edgestream.pipeline.serving.runtime import ort
from edgestream.topics.catalogue import ingest_topic, results_topic
from tests.pipeline.models.usermodels import FRAUD_CLASSES, UserModel, fraud_model, regression_model

from ..conftest import EdgeRegion, RunningWorker, eventually, read_topic

pytestmark = pytest.mark.broker

ITEMS = 40
"""Requests per model."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _send(
    region: EdgeRegion,
    producer: AIOKafkaProducer,
    model: str,
    X: np.ndarray[Any, Any],
    wires: list[TensorDtype],
) -> dict[bytes, np.ndarray[Any, Any]]:
    """One request per row, the wire dtypes in turn; request id -> the input as the worker decodes it."""
    sent: dict[bytes, np.ndarray[Any, Any]] = {}
    kid = region.keyring.current_key_id(region.name)
    for i, row in enumerate(X):
        device = f"terminal-{i % 7}"
        body = encode_tensor(row, wires[i % len(wires)])
        rid = new_request_id()
        envelope = seal(
            body,
            device_key=region.keyring.device_key(region.name, device, kid),
            device_id=device,
            key_id=kid,
            kind="embedding",
            model=model,
            capture_time_ms=_now_ms(),
            request_id=rid,
        )
        await producer.send(ingest_topic(region.name, "embedding"), envelope, key=device.encode())
        sent[rid] = decode_tensor(body, dequantise=True).astype(np.float32)
    await producer.flush()
    return sent


def _direct(model: UserModel, signature: ModelSignature, x: np.ndarray[Any, Any]) -> list[Any]:
    """onnxruntime on the graph itself, with the signature's normalisation done here."""
    norm = signature.input.normalise
    if norm is not None:
        x = (x - np.asarray(norm.mean, np.float32)) / np.asarray(norm.std, np.float32)
    session = ort.InferenceSession(model.onnx, providers=["CPUExecutionProvider"])
    return list(session.run(None, {signature.input.name: x[None, :].astype(np.float32)}))


async def test_user_models_are_served_by_their_signatures(
    edge_region: EdgeRegion, running_worker: RunningWorker, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    store = LocalArtifactStore(root / "artifacts")
    key = SigningKey.generate()
    TrustedKeys({}).with_key(key.public_raw).save(root / "trusted-keys.json")
    suffix = uuid.uuid4().hex[:8]
    fraud, score = fraud_model(), regression_model()
    names = {"fraud": f"fraud-{suffix}", "score": f"score-{suffix}"}
    states: dict[str, ModelState] = {}
    for role, model in (("fraud", fraud), ("score", score)):
        signature = parse_signature(model.signature)
        states[role] = await publish_signed(
            edge_region.bootstrap, store, key, names[role], signature, model.onnx, metrics={}, lineage={}
        )

    # At publish: a signature that leaves the graph's label output undeclared is refused, nothing stored.
    undeclared = {**fraud.signature, "outputs": {**fraud.signature["outputs"], "label": None}}
    with pytest.raises(SignatureMismatch, match="undeclared output 'label'"):
        await publish_signed(
            edge_region.bootstrap,
            store,
            key,
            names["fraud"],
            parse_signature(undeclared),
            fraud.onnx,
            metrics={},
            lineage={},
        )

    worker = await running_worker(registry=True, registry_home=root, models=tuple(names.values()))
    wanted = {names[role]: state.revision for role, state in states.items()}

    def applied() -> bool:
        return all(worker.catalog.revision(name) == revision for name, revision in wanted.items())

    assert await eventually(applied, timeout_s=30), worker.catalog.refused

    sent = {
        "fraud": await _send(edge_region, producer, names["fraud"], fraud.X[:ITEMS], ["float32", "float16"]),
        "score": await _send(edge_region, producer, names["score"], score.X[:ITEMS], ["float32", "int8"]),
    }
    records = await read_topic(edge_region.bootstrap, results_topic(edge_region.name), expect=2 * ITEMS)
    results = {r.request_id: r for r in (ResultRecord.from_bytes(rec.value) for rec in records)}
    assert len(results) == 2 * ITEMS, f"{len(results)} results for {2 * ITEMS} requests"

    fraud_sig = parse_signature(fraud.signature)
    for rid, x in sent["fraud"].items():
        result = results[rid]
        label, probs = _direct(fraud, fraud_sig, x)
        assert (result.model, result.model_version) == (names["fraud"], 1)
        assert result.label == int(label[0])
        np.testing.assert_allclose(result.scores, probs[0], rtol=1e-6, atol=1e-7)
        assert result.typed is not None
        assert result.typed.kind == "classification"
        assert result.typed.class_name == FRAUD_CLASSES[result.label]
    score_sig = parse_signature(score.signature)
    for rid, x in sent["score"].items():
        result = results[rid]
        (value,) = _direct(score, score_sig, x)
        np.testing.assert_allclose(result.scores, value[0], rtol=1e-5, atol=1e-4)
        assert result.label == int(result.scores[0] >= 0.0)  # decided by the threshold
        if abs(value[0, 0]) > 1e-3:  # beyond rounding: the same decision as offline
            assert result.label == int(value[0, 0] >= 0.0)
        assert result.typed is not None
        assert (result.typed.kind, result.typed.threshold) == ("score", 0.0)

    # At load: the same mismatch, signed anyway (a publisher that skipped the check), as a canary: the
    # worker refuses the version and keeps serving v1.
    before = worker.catalog.refused.get("signature_mismatch", 0)
    sha256 = store.put(fraud.onnx)
    manifest = Manifest(
        model=names["fraud"],
        version=2,
        variant=SIGNED_VARIANT,
        sha256=sha256,
        size_bytes=len(fraud.onnx),
        input_dtype="float32",
        input_shape=fraud_sig.input.item_shape,
        signature=parse_signature(undeclared).to_json(),
    )
    state = publish_version(states["fraud"], key.sign(manifest), now_ms=_now_ms())
    canary = start_canary(state, 2, now_ms=_now_ms(), fraction=0.5)
    await RegistryClient(edge_region.bootstrap, signer=key).publish_state(canary)
    assert await eventually(
        lambda: worker.catalog.refused.get("signature_mismatch", 0) == before + 1, timeout_s=30
    )
    assert worker.catalog.revision(names["fraud"]) == states["fraud"].revision
    assert worker.catalog.served_versions()[names["fraud"]] == (1,)
