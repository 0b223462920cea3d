"""On-disk cache of built reference models: ``<root>/<name>/<size>/v<version>/``.

Each directory holds ``model.onnx`` and ``manifest.json`` (name, size, version, sha256 of the ONNX
bytes, held-out accuracy measured by running the ONNX file with onnxruntime, scikit-learn's own
accuracy, split sizes, creation time, input spec). A cached model whose bytes do not hash to its
manifest's sha256, or whose manifest disagrees with the zoo, is rebuilt and the reason logged.

Files are written to a temporary file beside the target and moved into place with ``os.replace``, the
ONNX file first and the manifest last, and a per-directory ``flock`` serialises builders, so processes
that build at the same time (or crash half-way) never leave a manifest describing other bytes.
This module does not import scikit-learn: a worker that only reads the cache stays light.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.files import atomic_write, sha256_hex
from edgestream.pipeline.models.zoo import FAMILIES, SIZES, ModelSpec, spec

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

log = logging.getLogger(__name__)

MODEL_VERSION = 1
"""Version of the reference models this build produces (bumped when training or export changes)."""
MODEL_FILE = "model.onnx"
"""File name of the ONNX graph inside an artifact directory."""
MANIFEST_FILE = "manifest.json"
"""File name of the manifest inside an artifact directory."""
_LOCK_FILE = ".lock"
"""Held (flock) while an artifact is built, so concurrent builders make it once."""


@dataclass(frozen=True, slots=True)
class ModelArtifact:
    """A built model on disk, verified against its manifest."""

    name: str
    """Family name, e.g. ``frame-classifier``."""
    size: str
    """Size within the family: ``tiny``, ``medium`` or ``full``."""
    version: int
    """Model version; the directory is ``v<version>``."""
    path: Path
    """The ``model.onnx`` file."""
    sha256: str
    """Hex sha256 of the ONNX file's bytes."""
    accuracy: float
    """Held-out accuracy measured by running the exported ONNX graph with onnxruntime."""
    sklearn_accuracy: float
    """Held-out accuracy of the scikit-learn estimator the graph was exported from."""
    spec: ModelSpec
    """The zoo entry: input dtype and per-item shape, classes, architecture."""

    @property
    def manifest_path(self) -> Path:
        """The ``manifest.json`` beside the ONNX file."""
        return self.path.with_name(MANIFEST_FILE)


def artifact_dir(root: Path, name: str, size: str, version: int = MODEL_VERSION) -> Path:
    """Where the artifact of ``name``/``size``/``version`` lives under ``root``."""
    return root / name / size / f"v{version}"


def write_artifact(out_dir: Path, onnx_bytes: bytes, manifest: dict[str, Any]) -> Path:
    """Atomically write ``model.onnx`` then ``manifest.json`` into ``out_dir``; the ONNX path."""
    if manifest.get("sha256") != sha256_hex(onnx_bytes):
        raise ValueError("manifest sha256 does not match the ONNX bytes")
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_FILE
    atomic_write(model_path, onnx_bytes)
    atomic_write(out_dir / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    return model_path


def read_artifact(out_dir: Path, model_spec: ModelSpec) -> ModelArtifact:
    """The verified artifact of ``model_spec`` in ``out_dir``; :class:`ConfigError` says why not.

    Verified means: the manifest parses, names this model, version and input spec, and the ONNX
    file's bytes hash to the manifest's sha256.
    """
    model_path = out_dir / MODEL_FILE
    try:
        manifest = json.loads((out_dir / MANIFEST_FILE).read_text())
        onnx_bytes = model_path.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(f"{out_dir}: no cached model ({e.filename} missing)") from e
    except (OSError, ValueError) as e:
        raise ConfigError(f"{out_dir}: unreadable artifact: {e}") from e
    try:
        artifact = ModelArtifact(
            name=str(manifest["name"]),
            size=str(manifest["size"]),
            version=int(manifest["version"]),
            path=model_path,
            sha256=str(manifest["sha256"]),
            accuracy=float(manifest["accuracy"]),
            sklearn_accuracy=float(manifest["sklearn_accuracy"]),
            spec=model_spec,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"{out_dir}: malformed manifest: {e!r}") from e
    expected = (model_spec.name, model_spec.size, MODEL_VERSION, input_manifest(model_spec))
    found = (artifact.name, artifact.size, artifact.version, manifest.get("input"))
    if found != expected:
        raise ConfigError(f"{out_dir}: manifest describes {found}, expected {expected}")
    actual = sha256_hex(onnx_bytes)
    if actual != artifact.sha256:
        raise ConfigError(
            f"{model_path}: sha256 {actual[:12]} does not match manifest {artifact.sha256[:12]}"
        )
    return artifact


def input_manifest(model_spec: ModelSpec) -> dict[str, Any]:
    """The manifest's ``input`` entry for ``model_spec`` (JSON types: lists, ``None`` for the batch)."""
    return {"name": "input", "dtype": model_spec.input_dtype, "shape": [None, *model_spec.input_shape]}


class ModelStore:
    """Builds reference models on demand and caches them under ``root`` (e.g. ``.edgestream/models``)."""

    def __init__(self, root: Path) -> None:
        self._root = root

    @property
    def root(self) -> Path:
        """The cache directory."""
        return self._root

    def get(self, name: str, size: str = "medium", *, rebuild: bool = False) -> ModelArtifact:
        """The artifact of ``name``/``size``: from the cache when it verifies, else built now.

        ``rebuild=True`` builds even when a valid cached copy exists. Raises :class:`UnknownModel`
        for a name or size the zoo does not have.
        """
        model_spec = spec(name, size)
        out_dir = artifact_dir(self._root, name, size)
        out_dir.mkdir(parents=True, exist_ok=True)
        with _locked(out_dir / _LOCK_FILE):
            if not rebuild:
                try:
                    return read_artifact(out_dir, model_spec)
                except ConfigError as e:
                    if (out_dir / MANIFEST_FILE).exists() or (out_dir / MODEL_FILE).exists():
                        log.warning("rebuilding %s/%s: %s", name, size, e)
                    else:
                        log.info("building %s/%s: not cached yet", name, size)
            # Imported here: scikit-learn is heavy, and readers of the cache never need it.
            from edgestream.pipeline.models.build import build_model

            artifact = build_model(model_spec.name, model_spec.size, out_dir)
        return artifact

    def cached(self, name: str, size: str = "medium") -> ModelArtifact | None:
        """The cached artifact of ``name``/``size`` when it exists and verifies, else ``None``."""
        model_spec = spec(name, size)
        try:
            return read_artifact(artifact_dir(self._root, name, size), model_spec)
        except ConfigError as e:
            log.debug("%s/%s not usable from cache: %s", name, size, e)
            return None

    def entries(self) -> list[tuple[ModelSpec, ModelArtifact | None]]:
        """Every model of the zoo with its verified cached artifact, or ``None`` where there is none."""
        return [(spec(name, size), self.cached(name, size)) for name in FAMILIES for size in SIZES]


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
