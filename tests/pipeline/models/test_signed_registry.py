"""A declared signature in the signed manifest: it is signed with the rest, zoo manifests keep their
bytes, and the loader checks the signature against the graph again (a mismatch or an undeclared
output is refused at load, whatever the publisher did)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgestream.pipeline.models.signature import SignedArtifact, parse_signature
from edgestream.pipeline.registry import LocalArtifactStore, Manifest, SigningKey, TrustedKeys
from edgestream.pipeline.registry.errors import BadSignature, MalformedRegistryRecord, SignatureMismatch
from edgestream.pipeline.registry.loader import verified_model
from edgestream.pipeline.registry.publishing import SIGNED_VARIANT
from edgestream.pipeline.registry.signing import SignedManifest, verify
from tests.pipeline.models.usermodels import FEATURES, UserModel, fraud_model


def _manifest(model: UserModel, store: LocalArtifactStore, signature: dict[str, Any] | None) -> Manifest:
    sha256 = store.put(model.onnx)
    return Manifest(
        model="fraud",
        version=1,
        variant=SIGNED_VARIANT,
        sha256=sha256,
        size_bytes=len(model.onnx),
        input_dtype="float32",
        input_shape=(FEATURES,),
        signature=None if signature is None else parse_signature(signature).to_json(),
    )


def test_the_signature_is_signed_and_round_trips(tmp_path: Path) -> None:
    model = fraud_model()
    key = SigningKey.generate()
    signed = key.sign(_manifest(model, LocalArtifactStore(tmp_path), model.signature))
    again = SignedManifest.from_dict(json.loads(json.dumps(signed.to_dict())))
    trusted = TrustedKeys().with_key(key.public_raw)
    assert verify(again, trusted).signature == signed.manifest.signature
    changed = dict(signed.manifest.signature or {}, sample_inputs=True)
    forged = SignedManifest(replace(signed.manifest, signature=changed), signed.signature, signed.key_id)
    with pytest.raises(BadSignature):
        verify(forged, trusted)


def test_a_zoo_manifest_has_no_signature_key(tmp_path: Path) -> None:
    manifest = _manifest(fraud_model(), LocalArtifactStore(tmp_path), None)
    assert "signature" not in manifest.to_dict()
    assert b"signature" not in manifest.canonical_bytes()


def test_the_loader_serves_a_matching_signature(tmp_path: Path) -> None:
    model = fraud_model()
    store = LocalArtifactStore(tmp_path / "store")
    key = SigningKey.generate()
    loaded = verified_model(
        store,
        key.sign(_manifest(model, store, model.signature)),
        TrustedKeys().with_key(key.public_raw),
        tmp_path / "cache",
    )
    assert isinstance(loaded, SignedArtifact)
    assert loaded.path.read_bytes() == model.onnx
    assert loaded.signature == parse_signature(model.signature)


@pytest.mark.parametrize(
    ("outputs", "difference"),
    [
        (
            {"kind": "classification", "probabilities": "probabilities", "classes": ["legit", "fraud"]},
            "undeclared output 'label'",
        ),
        (
            {
                "kind": "classification",
                "probabilities": "probabilities",
                "label": "label",
                "classes": ["a", "b", "c"],
            },
            "2 probabilities per item, 3 classes declared",
        ),
    ],
)
def test_the_loader_refuses_a_signature_that_does_not_match(
    tmp_path: Path, outputs: dict[str, Any], difference: str
) -> None:
    model = fraud_model()
    store = LocalArtifactStore(tmp_path / "store")
    key = SigningKey.generate()
    signed = key.sign(_manifest(model, store, {**model.signature, "outputs": outputs}))
    with pytest.raises(SignatureMismatch, match=difference) as info:
        verified_model(store, signed, TrustedKeys().with_key(key.public_raw), tmp_path / "cache")
    assert info.value.reason == "signature_mismatch"
    assert not (tmp_path / "cache").exists()


def test_the_loader_refuses_a_malformed_or_inconsistent_signature(tmp_path: Path) -> None:
    model = fraud_model()
    store = LocalArtifactStore(tmp_path / "store")
    key = SigningKey.generate()
    trusted = TrustedKeys().with_key(key.public_raw)
    manifest = _manifest(model, store, model.signature)
    broken = dict(manifest.signature or {}, outputs={"kind": "histogram"})
    with pytest.raises(MalformedRegistryRecord, match="signature: outputs"):
        verified_model(store, key.sign(replace(manifest, signature=broken)), trusted, tmp_path / "c")
    with pytest.raises(MalformedRegistryRecord, match="differs from its signature"):
        verified_model(store, key.sign(replace(manifest, input_shape=(3,))), trusted, tmp_path / "c")
