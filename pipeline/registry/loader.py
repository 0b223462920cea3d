"""What a worker calls to (re)load a model from the registry: verify, fetch, materialise.

:func:`verified_artifact` checks the manifest's signature, fetches the bytes and checks them against the
signed sha256, writes them under the worker's cache directory (``<cache_dir>/<sha256>.onnx``, atomic)
and returns a :class:`ModelArtifact` that ``InferenceSession`` accepts (it hashes the file again
before loading, so bytes changed on disk after this call are refused too). A refusal raises
:class:`ArtifactMismatch`, :class:`UntrustedSigner` or :class:`BadSignature` (the ``reason`` is what the
worker logs and counts); the worker keeps serving what it had.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edgestream.pipeline.files import atomic_write, sha256_hex
from edgestream.pipeline.models.cache import ModelArtifact
from edgestream.pipeline.models.zoo import spec
from edgestream.pipeline.registry.errors import MalformedRegistryRecord
from edgestream.pipeline.registry.signing import load_verified

if TYPE_CHECKING:
    from pathlib import Path

    from edgestream.pipeline.registry.artifacts import ArtifactStore
    from edgestream.pipeline.registry.signing import SignedManifest, TrustedKeys

log = logging.getLogger(__name__)


def verified_artifact(
    store: ArtifactStore, signed: SignedManifest, trusted: TrustedKeys, cache_dir: Path
) -> ModelArtifact:
    """The verified artifact of ``signed`` on local disk, ready for ``InferenceSession``."""
    data = load_verified(store, signed, trusted)
    manifest = signed.manifest
    model_spec = spec(manifest.model, manifest.variant)
    expected = (model_spec.input_dtype, tuple(model_spec.input_shape))
    if (manifest.input_dtype, manifest.input_shape) != expected:
        raise MalformedRegistryRecord(
            f"{manifest.model} v{manifest.version}: manifest input {manifest.input_dtype}"
            f"{list(manifest.input_shape)} differs from the model's {expected[0]}{list(expected[1])}"
        )
    path = cache_dir / f"{manifest.sha256}.onnx"
    if not (path.is_file() and sha256_hex(path.read_bytes()) == manifest.sha256):
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
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
