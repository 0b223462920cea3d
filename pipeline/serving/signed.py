"""Serving a model by its declared signature: its input from the wire, its outputs into result records.

Three pieces, each with the same shape as the zoo's so the worker's hot path does not branch on it:

* :meth:`SignedInput.check_input` checks a body's dtype and shape as ``ModelSpec.check_input`` does a
  zoo model's (admission, per record): a signed model accepts every wire dtype its signature lists.
  Its bodies are decoded dequantised (an int8 body becomes float32 with its scale; the others stay
  views of the decrypted bytes).
* :class:`SignedSession` runs batches like ``InferenceSession``: the batch is normalised (in float32)
  and cast to the graph dtype once per batch, the signature's outputs are read and turned into the
  ``(labels [N], scores [N, K])`` pair every session gives (``pipeline/contract/typed.py`` says what
  they hold per kind), so batching by (model, version), the non-finite check and the retry of a failed
  batch one item at a time work unchanged.
* :meth:`SignedSession.typed_result` turns one answer into its record's typed keys.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgestream.pipeline.contract.typed import NO_LABEL, TypedResult
from edgestream.pipeline.errors import ConfigError, InferenceFailed, ShapeMismatch
from edgestream.pipeline.files import sha256_hex
from edgestream.pipeline.models.signature import Classification, Named, Score, SignedArtifact
from edgestream.pipeline.serving.inference import CPU_ONLY, open_session, run_bound
from edgestream.pipeline.serving.providers import Execution, binds_io, output_device

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger(__name__)

Labels = npt.NDArray[np.int64]
"""One label per item."""
Scores = npt.NDArray[Any]
"""One row of floats per item."""


class SignedInput:
    """A signed model's input check: any of its wire dtypes, in its item shape."""

    __slots__ = ("_shape", "_what", "_wire")

    def __init__(self, artifact: SignedArtifact) -> None:
        spec = artifact.signature.input
        self._wire = frozenset(spec.wire)
        self._shape = spec.item_shape
        self._what = (
            f"{artifact.name} v{artifact.version} takes {'/'.join(spec.wire)} items of shape {self._shape}"
        )

    def check_input(self, dtype: str, shape: tuple[int, ...]) -> None:
        """:class:`ShapeMismatch` unless ``dtype`` is a declared wire dtype and ``shape`` the item's
        (the same call as the zoo's ``ModelSpec.check_input``)."""
        if dtype not in self._wire or shape != self._shape:
            raise ShapeMismatch(f"{self._what}, got {dtype} items of shape {shape}")


class SignedSession:
    """Runs batches of a :class:`SignedArtifact` where ``execution`` says (the CPU by default)."""

    def __init__(
        self, artifact: SignedArtifact, execution: Execution = CPU_ONLY, *, intra_op_num_threads: int = 1
    ) -> None:
        self._artifact = artifact
        signature = artifact.signature
        self._label = f"{artifact.name} v{artifact.version}"
        try:
            model_bytes = artifact.path.read_bytes()
        except OSError as e:
            raise ConfigError(f"{self._label}: cannot read {artifact.path}: {e}") from e
        if sha256_hex(model_bytes) != artifact.sha256:
            raise ConfigError(f"{self._label}: {artifact.path} does not hash to {artifact.sha256[:12]}")
        spec = signature.input
        self._input = spec.name
        self._item_shape = spec.item_shape
        self._dtype = np.dtype(spec.dtype)
        norm = spec.normalise
        self._mean = None if norm is None else np.asarray(norm.mean, dtype=np.float32)
        self._std = None if norm is None else np.asarray(norm.std, dtype=np.float32)
        self._outputs = signature.outputs
        self._names = list(signature.outputs.names)
        self._widths: tuple[int, ...] | None = None
        self._session = open_session(
            model_bytes,
            execution,
            what=self._label,
            item_shape=spec.item_shape,
            intra_op_num_threads=intra_op_num_threads,
            input_name=spec.name,
        )
        self._providers_in_use = tuple(self._session.get_providers())
        self._bound = binds_io(execution.io_binding, self._providers_in_use)
        self._device = output_device(self._providers_in_use)
        self._device_id = execution.cuda.device_id if self._device == "cuda" else 0
        log.info("loaded %s (%s signature) on %s", self._label, self._outputs.kind, self._providers_in_use)

    @property
    def artifact(self) -> SignedArtifact:
        """The artifact this session runs."""
        return self._artifact

    @property
    def providers_in_use(self) -> tuple[str, ...]:
        """Execution providers onnxruntime actually registered, in priority order."""
        return self._providers_in_use

    @property
    def io_bound(self) -> bool:
        """True when batches run through IO binding."""
        return self._bound

    def warm_up(self, batch_sizes: Sequence[int] = (1, 8)) -> float:
        """Run batches of zeros of each size once (and learn a named signature's output widths)."""
        started = time.perf_counter()
        for n in batch_sizes:
            self.run(np.zeros((n, *self._item_shape), dtype=np.float32))
        return time.perf_counter() - started

    def _prepared(self, batch: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """``batch`` normalised (float32) and in the graph dtype, contiguous."""
        if batch.shape[1:] != self._item_shape:
            raise ShapeMismatch(f"{self._label}: items of shape {self._item_shape}, got {batch.shape[1:]}")
        if self._mean is not None and self._std is not None:
            batch = (batch.astype(np.float32) - self._mean) / self._std
        return np.ascontiguousarray(batch, dtype=self._dtype)

    def run(self, batch: npt.NDArray[Any]) -> tuple[Labels, Scores]:
        """Infer ``batch`` (``[N, *item_shape]``, any wire dtype): ``(labels [N], scores [N, K])``.

        Raises :class:`ShapeMismatch` for items of another shape and :class:`InferenceFailed` when
        onnxruntime fails or the outputs do not have the shapes the signature was checked with."""
        n = len(batch)
        if n == 0:
            return np.empty((0,), dtype=np.int64), np.empty((0, 0), dtype=np.float32)
        x = self._prepared(batch)
        try:
            if self._bound:
                outs = run_bound(
                    self._session,
                    x,
                    device=self._device,
                    device_id=self._device_id,
                    input_name=self._input,
                    outputs=self._names,
                )
            else:
                outs = self._session.run(self._names, {self._input: x})
            return self._combined(outs, n)
        except InferenceFailed:
            raise
        except Exception as e:  # onnxruntime's pybind errors derive from Exception only
            raise InferenceFailed(f"{self._label}: onnxruntime failed on a batch of {n}: {e}") from e

    def _combined(self, outs: list[npt.NDArray[Any]], n: int) -> tuple[Labels, Scores]:
        """The outputs as ``(labels, scores)`` by the signature's kind (ValueError on a bad shape)."""
        rows = [np.asarray(o).reshape(n, -1) for o in outs]
        outputs = self._outputs
        if isinstance(outputs, Classification):
            probs = rows[0]
            labels = probs.argmax(axis=1) if outputs.label is None else rows[1][:, 0]
            return labels.astype(np.int64, copy=False), probs
        if isinstance(outputs, Score):
            if rows[0].shape[1] != 1:
                raise InferenceFailed(f"{self._label}: {rows[0].shape[1]} values per item, a score is one")
            if outputs.threshold is None:
                return np.full(n, NO_LABEL, dtype=np.int64), rows[0]
            return (rows[0][:, 0] >= outputs.threshold).astype(np.int64), rows[0]
        if isinstance(outputs, Named):
            widths = tuple(r.shape[1] for r in rows)
            if self._widths is None:
                self._widths = widths
            elif widths != self._widths:
                raise InferenceFailed(f"{self._label}: output widths {widths}, earlier {self._widths}")
            return np.full(n, NO_LABEL, dtype=np.int64), np.concatenate(rows, axis=1, dtype=np.float64)
        return np.full(n, NO_LABEL, dtype=np.int64), rows[0]

    def typed_result(
        self, label: int, scores: tuple[float, ...]
    ) -> tuple[int, tuple[float, ...], TypedResult]:
        """One answer's ``label``, ``scores`` and typed keys, as its result record holds them."""
        outputs = self._outputs
        if isinstance(outputs, Classification):
            classes = outputs.classes
            name = classes[label] if 0 <= label < len(classes) else None
            return label, scores, TypedResult("classification", class_name=name)
        if isinstance(outputs, Score):
            return label, scores, TypedResult("score", threshold=outputs.threshold)
        if isinstance(outputs, Named):
            named: dict[str, tuple[float, ...]] = {}
            start = 0
            for name, width in zip(outputs.outputs, self._widths or (), strict=True):
                named[name] = scores[start : start + width]
                start += width
            return label, (), TypedResult("named", named=named)
        return label, scores, TypedResult("vector")
