"""Execution providers: which ones a session asks for, with which options, and whether it got them.

A worker asked for a GPU provider it cannot have must not serve on the CPU by surprise: a GPU-sized
deployment on a CPU answers far too slowly, and nothing else would say why. So a provider that this
onnxruntime build lacks, or that a session did not register (CUDA, cuDNN or TensorRT libraries
missing), is a :class:`ProviderUnavailable` error that stops the model loading, unless
``allow_cpu_fallback`` is set: then the missing providers are dropped with a warning and the session
runs on what is left (the metrics' provider label says which).

Pure and light (no onnxruntime import): the caller passes what its onnxruntime offers. The session
itself is opened in :mod:`edgestream.pipeline.serving.inference`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgestream.pipeline.errors import ProviderUnavailable
from edgestream.pipeline.settings import DEFAULT_HOME

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
"""onnxruntime's CPU execution provider: in every build, and the last resort of every session."""
CUDA = "CUDAExecutionProvider"
"""onnxruntime's NVIDIA CUDA execution provider (``onnxruntime-gpu``)."""
TENSORRT = "TensorrtExecutionProvider"
"""onnxruntime's NVIDIA TensorRT execution provider (``onnxruntime-gpu`` with the TensorRT libraries)."""
DEVICE_PROVIDERS = (TENSORRT, CUDA)
"""Providers whose tensors live in GPU memory: batches run through IO binding on them."""

IoBinding = Literal["auto", "always", "never"]
"""When a batch runs through onnxruntime's IO binding: ``auto`` on a GPU provider, ``always`` also on
the CPU (same answers; the tests compare both paths), ``never`` plain ``run``."""
TENSORRT_CACHE_DIR = "tensorrt"
"""Folder under the worker's home that holds built TensorRT engines and timing caches by default."""


class CudaOptions(BaseModel):
    """Options of the CUDA execution provider (also the device TensorRT runs on)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: int = Field(default=0, ge=0)
    """Which GPU (as CUDA numbers them) the sessions run on."""
    gpu_mem_limit_bytes: int | None = Field(default=None, ge=1 << 20)
    """Upper bound of the CUDA memory arena per session; None: onnxruntime's default (no bound)."""
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kSameAsRequested"
    """How the arena grows: by what is asked (no power-of-two waste with a few fixed batch shapes)."""
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "EXHAUSTIVE"
    """How cuDNN picks a convolution algorithm per shape: EXHAUSTIVE times them all once (during the
    warm-up), then runs the fastest."""
    tf32: bool = True
    """TF32 tensor cores for float32 matrix products and convolutions on Ampere and newer GPUs (NVIDIA's
    and onnxruntime's default): faster, with a 10-bit mantissa inside those products. On an H200 the
    zoo's probabilities moved by up to 1.5e-4 against the CPU; false: float32 throughout."""


class TensorRtOptions(BaseModel):
    """Options of the TensorRT execution provider."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fp16: bool = True
    """Let TensorRT run layers in half precision where it is faster (answers move by about 1e-3)."""
    engine_cache: bool = True
    """Keep built engines (and timing caches) on disk, so a restart loads them instead of building
    them again (minutes for a vision model). An engine is tied to the GPU, TensorRT version and model."""
    engine_cache_dir: Path | None = None
    """Where engines are cached; defaults to ``<home>/tensorrt``."""
    max_workspace_bytes: int = Field(default=2 << 30, ge=1 << 20)
    """Scratch GPU memory TensorRT may use while it builds and runs an engine."""


@dataclass(frozen=True, slots=True)
class Execution:
    """Everything that decides where and how a session runs, besides its thread count."""

    providers: tuple[str, ...] = (CPU,)
    """Requested providers, most preferred first; the CPU is always added last."""
    cuda: CudaOptions = field(default_factory=CudaOptions)
    """CUDA (and device) options."""
    tensorrt: TensorRtOptions = field(default_factory=TensorRtOptions)
    """TensorRT options."""
    home: Path = DEFAULT_HOME
    """The process's home: the TensorRT engine cache defaults to ``<home>/tensorrt``."""
    allow_cpu_fallback: bool = False
    """Drop requested providers that are not available (with a warning) instead of refusing to load."""
    io_binding: IoBinding = "auto"
    """When batches run through IO binding."""
    max_batch: int = 64
    """Largest batch the sessions will see: the top of TensorRT's optimisation profile."""

    def engine_cache_dir(self) -> Path:
        """Where TensorRT engines are cached."""
        return self.tensorrt.engine_cache_dir or self.home / TENSORRT_CACHE_DIR


def choose_providers(
    requested: Sequence[str], available: Sequence[str], *, allow_cpu_fallback: bool, what: str
) -> tuple[str, ...]:
    """The providers to open ``what`` with: ``requested`` without repeats, CUDA right after TensorRT
    (it runs what TensorRT cannot) and the CPU last. A requested provider missing from ``available``
    raises :class:`ProviderUnavailable`, or is dropped with a warning when ``allow_cpu_fallback``."""
    wanted = list(dict.fromkeys(requested))
    if TENSORRT in wanted and CUDA not in wanted:
        wanted.insert(wanted.index(TENSORRT) + 1, CUDA)
    chosen = [provider for provider in wanted if provider in available or provider == CPU]
    for provider in wanted:
        if provider not in chosen:
            _missing(what, provider, tuple(available), allow_cpu_fallback=allow_cpu_fallback)
    if CPU not in chosen:
        chosen.append(CPU)
    return tuple(chosen)


def check_in_use(
    chosen: Sequence[str], in_use: Sequence[str], *, allow_cpu_fallback: bool, what: str
) -> None:
    """Raise :class:`ProviderUnavailable` when a session of ``what`` did not register every provider it
    was opened with (onnxruntime falls back quietly when, say, cuDNN fails to load), unless
    ``allow_cpu_fallback``: then warn."""
    for provider in chosen:
        if provider not in in_use:
            _missing(
                what,
                provider,
                tuple(in_use),
                allow_cpu_fallback=allow_cpu_fallback,
                seen_by="the session registered only",
            )


def _missing(
    what: str,
    provider: str,
    available: tuple[str, ...],
    *,
    allow_cpu_fallback: bool,
    seen_by: str = "this onnxruntime offers",
) -> None:
    error = ProviderUnavailable(what, provider, available, seen_by)
    if not allow_cpu_fallback:
        raise error
    log.warning("%s; allow_cpu_fallback is set, so running without it", error)


def provider_options(
    execution: Execution, chosen: Sequence[str], *, input_name: str, item_shape: Sequence[int]
) -> list[tuple[str, dict[str, str]]]:
    """onnxruntime's ``providers`` argument for ``chosen``: each provider with its options (strings, as
    onnxruntime takes them). TensorRT gets one optimisation profile from a batch of 1 to
    ``execution.max_batch`` items of ``item_shape``, so no batch size makes it build another engine."""
    cuda = execution.cuda
    out: list[tuple[str, dict[str, str]]] = []
    for provider in chosen:
        options: dict[str, str] = {}
        if provider == CUDA:
            options = {
                "device_id": str(cuda.device_id),
                "arena_extend_strategy": cuda.arena_extend_strategy,
                "cudnn_conv_algo_search": cuda.cudnn_conv_algo_search,
                "do_copy_in_default_stream": "1",
                "use_tf32": _flag(cuda.tf32),
            }
            if cuda.gpu_mem_limit_bytes is not None:
                options["gpu_mem_limit"] = str(cuda.gpu_mem_limit_bytes)
        elif provider == TENSORRT:
            options = _tensorrt_options(execution, input_name, item_shape)
        out.append((provider, options))
    return out


def _tensorrt_options(execution: Execution, input_name: str, item_shape: Sequence[int]) -> dict[str, str]:
    trt = execution.tensorrt
    dims = "".join(f"x{d}" for d in item_shape)
    options = {
        "device_id": str(execution.cuda.device_id),
        "trt_fp16_enable": _flag(trt.fp16),
        "trt_max_workspace_size": str(trt.max_workspace_bytes),
        "trt_engine_cache_enable": _flag(trt.engine_cache),
        "trt_timing_cache_enable": _flag(trt.engine_cache),
        "trt_profile_min_shapes": f"{input_name}:1{dims}",
        "trt_profile_opt_shapes": f"{input_name}:{execution.max_batch}{dims}",
        "trt_profile_max_shapes": f"{input_name}:{execution.max_batch}{dims}",
    }
    if trt.engine_cache:
        cache = str(execution.engine_cache_dir())
        options["trt_engine_cache_path"] = cache
        options["trt_timing_cache_path"] = cache
    return options


def _flag(value: bool) -> str:
    return "1" if value else "0"


def binds_io(mode: IoBinding, in_use: Sequence[str]) -> bool:
    """Whether batches of a session running on ``in_use`` go through IO binding."""
    return mode == "always" or (mode == "auto" and bool(in_use) and in_use[0] in DEVICE_PROVIDERS)


def output_device(in_use: Sequence[str]) -> Literal["cuda", "cpu"]:
    """Where a bound session's outputs are allocated: on the GPU when its first provider is one."""
    return "cuda" if in_use and in_use[0] in DEVICE_PROVIDERS else "cpu"
