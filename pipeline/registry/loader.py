"""What a worker calls to (re)load a model from the registry: verify, fetch, materialise.

:func:`verified_model` checks the manifest's signature, fetches the bytes and checks them against the
signed sha256, writes them under the worker's cache directory (``<cache_dir>/<sha256>.onnx``, atomic)
and returns what ``InferenceSession`` (a zoo model: :class:`ModelArtifact`) or ``SignedSession`` (a
model with a declared signature: :class:`SignedArtifact`) loads; both hash the file again before
loading, so bytes changed on disk after this call are refused too. A declared signature is checked
against the graph again here (``pipeline/models/graphcheck.py``), whatever the publisher checked. A
refusal raises :class:`ArtifactMismatch`, :class:`UntrustedSigner`, :class:`BadSignature`,
:class:`SignatureMismatch` or :class:`MalformedRegistryRecord` (the ``reason`` is what the worker logs
and counts); the worker keeps serving what it had.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydantic import ValidationError

from edgestream.pipeline.files import atomic_write, sha256_hex
from edgestream.pipeline.models.cache import ModelArtifact
from edgestream.pipeline.models.signature import ModelSignature, SignedArtifact, field_errors
from edgestream.pipeline.models.zoo import spec
from edgestream.pipeline.registry.errors import MalformedRegistryRecord
from edgestream.pipeline.registry.signing import load_verified

if TYPE_CHECKING:
    from pathlib import Path

    from edgestream.pipeline.registry.artifacts import ArtifactStore
    from edgestream.pipeline.registry.signing import Manifest, SignedManifest, TrustedKeys

log = logging.getLogger(__name__)


def manifest_signature(manifest: Manifest) -> ModelSignature:
    """The declared signature a manifest signs, consistent with its input fields;
    :class:`MalformedRegistryRecord` names the field that is not."""
    what = f"{manifest.model} v{manifest.version}"
    if manifest.signature is None:
        raise MalformedRegistryRecord(f"{what}: the manifest declares no signature")
    try:
        signature = ModelSignature.model_validate(dict(manifest.signature))
    except ValidationError as e:
        raise MalformedRegistryRecord(f"{what}: signature: {field_errors(e)}") from e
    declared = (signature.input.dtype, signature.input.item_shape)
    if (manifest.input_dtype, manifest.input_shape) != declared:
        raise MalformedRegistryRecord(
            f"{what}: manifest input {manifest.input_dtype}{list(manifest.input_shape)} differs from its "
            f"signature's {declared[0]}{list(declared[1])}"
        )
    return signature


def _materialise(cache_dir: Path, manifest: Manifest, data: bytes) -> Path:
    """``<cache_dir>/<sha256>.onnx`` holding ``data`` (written unless it already does)."""
    path = cache_dir / f"{manifest.sha256}.onnx"
    if not (path.is_file() and sha256_hex(path.read_bytes()) == manifest.sha256):
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
    return path


def verified_model(
    store: ArtifactStore, signed: SignedManifest, trusted: TrustedKeys, cache_dir: Path
) -> ModelArtifact | SignedArtifact:
    """The verified model of ``signed`` on local disk: a zoo artifact, or a user's model whose declared
    signature matches its graph."""
    manifest = signed.manifest
    if manifest.signature is None:
        return verified_artifact(store, signed, trusted, cache_dir)
    from edgestream.pipeline.models.graphcheck import check_graph  # onnxruntime: only when needed

    data = load_verified(store, signed, trusted)
    signature = manifest_signature(manifest)
    check_graph(data, signature, f"{manifest.model} v{manifest.version}")
    path = _materialise(cache_dir, manifest, data)
    log.info(
        "verified %s v%d (%s, signature checked) signed by %s",
        manifest.model,
        manifest.version,
        manifest.sha256[:12],
        signed.key_id,
    )
    return SignedArtifact(manifest.model, manifest.version, path, manifest.sha256, signature)


def verified_artifact(
    store: ArtifactStore, signed: SignedManifest, trusted: TrustedKeys, cache_dir: Path
) -> ModelArtifact:
    """The verified artifact of zoo model ``signed`` on local disk, ready for ``InferenceSession``."""
    data = load_verified(store, signed, trusted)
    manifest = signed.manifest
    model_spec = spec(manifest.model, manifest.variant)
    expected = (model_spec.input_dtype, tuple(model_spec.input_shape))
    if (manifest.input_dtype, manifest.input_shape) != expected:
        raise MalformedRegistryRecord(
            f"{manifest.model} v{manifest.version}: manifest input {manifest.input_dtype}"
            f"{list(manifest.input_shape)} differs from the model's {expected[0]}{list(expected[1])}"
        )
    path = _materialise(cache_dir, manifest, data)
    log.info(
        "verified %s v%d (%s) signed by %s",
        manifest.model,
        manifest.version,
        manifest.sha256[:12],
        signed.key_id,
    )
    return ModelArtifact(
        name=manifest.model,
        size=manifest.variant,
        version=manifest.version,
        path=path,
        sha256=manifest.sha256,
        accuracy=float(manifest.metrics.get("accuracy", float("nan"))),
        sklearn_accuracy=float(manifest.metrics.get("sklearn_accuracy", float("nan"))),
        spec=model_spec,
    )
