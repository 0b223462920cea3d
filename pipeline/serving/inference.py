"""One onnxruntime session per model artifact: validated batches in, ``(labels, probs)`` out.

The worker calls :meth:`InferenceSession.run` from an executor thread (onnxruntime releases the GIL,
so the event loop keeps fetching meanwhile). onnxruntime documents ``InferenceSession.run`` as safe to
call from several threads at once, and this wrapper keeps no mutable state of its own, so it is
thread-safe too. Threads default to one: the edge box has two cores shared with a broker.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edgestream.pipeline.errors import ConfigError, InferenceFailed, ShapeMismatch
from edgestream.pipeline.files import sha256_hex

if TYPE_CHECKING:
    from collections.abc import Sequence

    from edgestream.pipeline.models.cache import ModelArtifact
    from edgestream.pipeline.models.zoo import ModelSpec

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
"""onnxruntime's CPU execution provider: always available, and the fallback for every other one."""
CUDA = "CUDAExecutionProvider"
"""onnxruntime's NVIDIA GPU execution provider (``onnxruntime-gpu``)."""
_OUTPUTS = ("label", "probs")


def available_providers() -> tuple[str, ...]:
    """Execution providers this onnxruntime build offers, in its order of preference."""
    return tuple(ort.get_available_providers())


class InferenceSession:
    """Runs batches of one :class:`ModelArtifact` on the requested execution providers.

    ``providers`` is an ordered preference; ones this onnxruntime build lacks are dropped with a
    warning, and the CPU provider is always last, so requesting ``("CUDAExecutionProvider",)`` on a
    machine without CUDA runs on the CPU. The artifact's bytes are checked against its sha256 before
    they are loaded.
    """

    def __init__(
        self,
        artifact: ModelArtifact,
        providers: Sequence[str] = (CPU,),
        *,
        intra_op_num_threads: int = 1,
    ) -> None:
        if intra_op_num_threads < 1:
            raise ConfigError(f"intra_op_num_threads must be >= 1, got {intra_op_num_threads}")
        self._artifact = artifact
        self._label = f"{artifact.name}/{artifact.size} v{artifact.version}"
        self._input_dtype = np.dtype(artifact.spec.input_dtype)
        try:
            model_bytes = artifact.path.read_bytes()
        except OSError as e:
            raise ConfigError(f"{self._label}: cannot read {artifact.path}: {e}") from e
        if sha256_hex(model_bytes) != artifact.sha256:
            raise ConfigError(f"{self._label}: {artifact.path} does not hash to {artifact.sha256[:12]}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        chosen = _choose_providers(providers)
        try:
            self._session = ort.InferenceSession(model_bytes, sess_options=options, providers=list(chosen))
        except Exception as e:  # onnxruntime's pybind errors derive from Exception only
            raise ConfigError(f"{self._label}: onnxruntime cannot load {artifact.path}: {e}") from e
        self._providers_in_use = tuple(self._session.get_providers())
        log.info(
            "loaded %s on %s with %d intra-op thread(s)",
            self._label,
            ", ".join(self._providers_in_use),
            intra_op_num_threads,
        )

    def warm_up(self, batch_sizes: Sequence[int] = (1, 8)) -> float:
        """Run batches of zeros of each size once, so the first real requests do not pay for the
        session's first runs (allocations, kernel selection; on a GPU, engine builds); seconds taken."""
        started = time.perf_counter()
        for n in batch_sizes:
            self.run(np.zeros((n, *self._artifact.spec.input_shape), dtype=self._input_dtype))
        return time.perf_counter() - started

    @property
    def artifact(self) -> ModelArtifact:
        """The artifact this session runs."""
        return self._artifact

    @property
    def spec(self) -> ModelSpec:
        """The model's input spec and classes."""
        return self._artifact.spec

    @property
    def providers_in_use(self) -> tuple[str, ...]:
        """Execution providers onnxruntime actually registered, in priority order."""
        return self._providers_in_use

    def run(self, batch: npt.NDArray[np.generic]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Infer ``batch`` (``[N, *input_shape]`` in the input dtype): ``(labels [N], probs [N, C])``.

        Raises :class:`ShapeMismatch` when the batch's dtype or per-item shape is not the model's,
        and :class:`InferenceFailed` (with onnxruntime's error as the cause) when onnxruntime fails.
        """
        model_spec = self._artifact.spec
        if batch.dtype != self._input_dtype or batch.shape[1:] != model_spec.input_shape:
            model_spec.check_input(str(batch.dtype), tuple(batch.shape[1:]))  # raises, naming both
            raise ShapeMismatch(f"{self._label}: unexpected batch {batch.dtype} {batch.shape}")
        if batch.shape[0] == 0:
            return np.empty((0,), dtype=np.int64), np.empty((0, model_spec.n_classes), dtype=np.float32)
        try:
            labels, probs = self._session.run(_OUTPUTS, {"input": np.ascontiguousarray(batch)})
        except Exception as e:  # onnxruntime's pybind errors derive from Exception only
            raise InferenceFailed(f"{self._label}: onnxruntime failed on a batch of {len(batch)}: {e}") from e
        return labels, probs


def _choose_providers(requested: Sequence[str]) -> tuple[str, ...]:
    """``requested`` filtered to what this build offers, CPU appended as the last resort."""
    available = available_providers()
    chosen = [provider for provider in dict.fromkeys(requested) if provider in available]
    missing = [provider for provider in requested if provider not in available]
    if missing:
        log.warning(
            "execution provider(s) %s not available in this onnxruntime build (has %s); using %s",
            ", ".join(missing),
            ", ".join(available),
            ", ".join([*chosen, CPU] if CPU not in chosen else chosen),
        )
    if CPU not in chosen:
        chosen.append(CPU)
    return tuple(chosen)
