"""One onnxruntime session per model artifact: validated batches in, ``(labels, probs)`` out.

The worker calls :meth:`InferenceSession.run` from an executor thread (onnxruntime releases the GIL,
so the event loop keeps fetching meanwhile). onnxruntime documents ``InferenceSession.run`` as safe to
call from several threads at once, and this wrapper keeps no mutable state of its own (an IO binding
is made per batch), so it is thread-safe too. Threads default to one: the edge box has two cores
shared with a broker.

Where the session runs is an :class:`Execution` (``pipeline/serving/providers.py``): a GPU provider
that is asked for and not there stops the load unless CPU fallback is allowed. On a GPU, batches run
through IO binding: the input is bound from numpy, the outputs are allocated on the device and copied
back once, after the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgestream.pipeline.errors import ConfigError, InferenceFailed, ShapeMismatch
from edgestream.pipeline.files import sha256_hex
from edgestream.pipeline.models.zoo import GRAPH_INPUT, GRAPH_LABEL, GRAPH_PROBS
from edgestream.pipeline.serving.providers import (
    TENSORRT,
    Execution,
    binds_io,
    check_in_use,
    choose_providers,
    output_device,
    provider_options,
)
from edgestream.pipeline.serving.runtime import ort

if TYPE_CHECKING:
    from edgestream.pipeline.models.cache import ModelArtifact
    from edgestream.pipeline.models.zoo import ModelSpec

log = logging.getLogger(__name__)

INPUT = GRAPH_INPUT
"""The graph input every model of the project takes (batch first)."""
OUTPUTS = (GRAPH_LABEL, GRAPH_PROBS)
"""The graph outputs every model of the project gives, in the order :meth:`InferenceSession.run` returns."""
CPU_ONLY = Execution()
"""The CPU provider alone, plain ``run``: the default of a session."""


def available_providers() -> tuple[str, ...]:
    """Execution providers this onnxruntime build offers, in its order of preference."""
    return tuple(ort.get_available_providers())


def open_session(
    model_bytes: bytes,
    execution: Execution,
    *,
    what: str,
    item_shape: tuple[int, ...],
    intra_op_num_threads: int = 1,
    input_name: str = INPUT,
) -> Any:
    """An ``onnxruntime.InferenceSession`` of ``model_bytes`` on ``execution``'s providers, each with its
    options; raises :class:`ProviderUnavailable` when one is missing (before or after the session is
    made) unless CPU fallback is allowed, and :class:`ConfigError` when onnxruntime cannot load it."""
    if intra_op_num_threads < 1:
        raise ConfigError(f"intra_op_num_threads must be >= 1, got {intra_op_num_threads}")
    allow = execution.allow_cpu_fallback
    chosen = choose_providers(execution.providers, available_providers(), allow_cpu_fallback=allow, what=what)
    if TENSORRT in chosen and execution.tensorrt.engine_cache:
        execution.engine_cache_dir().mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_num_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = provider_options(execution, chosen, input_name=input_name, item_shape=item_shape)
    try:
        session = ort.InferenceSession(model_bytes, sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime's pybind errors derive from Exception only
        raise ConfigError(f"{what}: onnxruntime cannot load the model: {e}") from e
    check_in_use(chosen, session.get_providers(), allow_cpu_fallback=allow, what=what)
    return session


def run_bound(
    session: Any,
    batch: npt.NDArray[np.generic],
    *,
    device: str,
    device_id: int = 0,
    input_name: str = INPUT,
    outputs: Sequence[str] = OUTPUTS,
) -> list[npt.NDArray[Any]]:
    """One run of ``session`` through an IO binding: ``batch`` bound as the input (onnxruntime copies it
    to the device), the outputs allocated on ``device`` and copied to numpy once, after the run."""
    binding = session.io_binding()
    binding.bind_cpu_input(input_name, batch)
    for name in outputs:
        binding.bind_output(name, device, device_id)
    session.run_with_iobinding(binding)
    values: list[npt.NDArray[Any]] = binding.copy_outputs_to_cpu()
    return values


class InferenceSession:
    """Runs batches of one :class:`ModelArtifact` where ``execution`` says (the CPU by default).

    The artifact's bytes are checked against its sha256 before they are loaded; a requested provider
    that is not available raises :class:`ProviderUnavailable` unless ``execution.allow_cpu_fallback``.
    """

    def __init__(
        self,
        artifact: ModelArtifact,
        execution: Execution = CPU_ONLY,
        *,
        intra_op_num_threads: int = 1,
    ) -> None:
        self._artifact = artifact
        self._label = f"{artifact.name}/{artifact.size} v{artifact.version}"
        self._input_dtype = np.dtype(artifact.spec.input_dtype)
        try:
            model_bytes = artifact.path.read_bytes()
        except OSError as e:
            raise ConfigError(f"{self._label}: cannot read {artifact.path}: {e}") from e
        if sha256_hex(model_bytes) != artifact.sha256:
            raise ConfigError(f"{self._label}: {artifact.path} does not hash to {artifact.sha256[:12]}")
        self._session = open_session(
            model_bytes,
            execution,
            what=self._label,
            item_shape=artifact.spec.input_shape,
            intra_op_num_threads=intra_op_num_threads,
        )
        self._providers_in_use = tuple(self._session.get_providers())
        self._bound = binds_io(execution.io_binding, self._providers_in_use)
        self._device = output_device(self._providers_in_use)
        self._device_id = execution.cuda.device_id if self._device == "cuda" else 0
        log.info(
            "loaded %s on %s with %d intra-op thread(s)%s",
            self._label,
            ", ".join(self._providers_in_use),
            intra_op_num_threads,
            f", IO binding to {self._device}" if self._bound else "",
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

    @property
    def io_bound(self) -> bool:
        """True when batches run through IO binding."""
        return self._bound

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
        contiguous = np.ascontiguousarray(batch)
        try:
            if self._bound:
                labels, probs = run_bound(
                    self._session, contiguous, device=self._device, device_id=self._device_id
                )
            else:
                labels, probs = self._session.run(OUTPUTS, {INPUT: contiguous})
        except Exception as e:  # onnxruntime's pybind errors derive from Exception only
            raise InferenceFailed(f"{self._label}: onnxruntime failed on a batch of {len(batch)}: {e}") from e
        return labels, probs
