"""The one import of onnxruntime on the serving path, after checking which wheel provides it.

``onnxruntime`` (CPU) and ``onnxruntime-gpu`` install the same ``onnxruntime`` package; with both
installed, whichever was installed last owns the files and the CPU build silently shadows the CUDA
provider. The extras keep them apart (``edgestream[cpu]`` or ``edgestream[gpu]``, never both); this
module refuses to start on an environment that has both, or neither, with the command that fixes it.
With the GPU wheel it then preloads the CUDA and cuDNN libraries (``preload_cuda``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Callable
from importlib import metadata
from typing import Any

from edgestream.pipeline.errors import OnnxRuntimeInstall

log = logging.getLogger(__name__)

CPU_WHEEL = "onnxruntime"
"""The distribution of onnxruntime's CPU build (extra ``cpu``)."""
GPU_WHEEL = "onnxruntime-gpu"
"""The distribution of onnxruntime's CUDA and TensorRT build (extra ``gpu``)."""

VersionOf = Callable[[str], str | None]
"""A distribution's installed version, or None when it is not installed."""


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check_install(version_of: VersionOf = installed_version) -> str:
    """The one onnxruntime wheel installed (``onnxruntime`` or ``onnxruntime-gpu``); raises
    :class:`OnnxRuntimeInstall` naming what to uninstall when both are, and the extras when neither is."""
    cpu, gpu = version_of(CPU_WHEEL), version_of(GPU_WHEEL)
    if cpu is not None and gpu is not None:
        raise OnnxRuntimeInstall(
            f"both {CPU_WHEEL} {cpu} and {GPU_WHEEL} {gpu} are installed; they share one package, so "
            f"the CPU build shadows CUDA. For the GPU: pip uninstall -y {CPU_WHEEL} {GPU_WHEEL} && "
            f"pip install '{GPU_WHEEL}=={gpu}' (or pip uninstall -y {GPU_WHEEL} to stay on the CPU)"
        )
    if cpu is None and gpu is None:
        raise OnnxRuntimeInstall(
            "no onnxruntime is installed: pip install 'edgestream[cpu]' (CPU) or 'edgestream[gpu]' "
            "(NVIDIA CUDA and TensorRT), never both"
        )
    return GPU_WHEEL if gpu is not None else CPU_WHEEL


_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def preload_cuda(runtime: Any) -> list[str]:
    """Load the CUDA and cuDNN libraries ``runtime`` (onnxruntime-gpu) was built against, from the
    ``nvidia-*`` wheels beside it (``edgestream[gpu]`` installs them) or else the system's library path,
    before any session asks for them: onnxruntime's CUDA provider carries no search path of its own
    (no RUNPATH), so where CUDA comes only from pip it is found only once something has loaded it
    (onnxruntime's documentation: ``preload_dlls``, or ``import torch`` first). Returns what
    onnxruntime printed about libraries it could not load (logged as warnings); a CUDA session then
    fails to register its provider, which the worker refuses (``ProviderUnavailable``)."""
    preload = getattr(runtime, "preload_dlls", None)
    if preload is None:  # onnxruntime before 1.21
        return []
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            preload()
        except (OSError, RuntimeError) as err:
            print(f"preloading CUDA libraries failed: {err}")
    plain = _ANSI_COLOUR.sub("", printed.getvalue())  # its warnings come coloured for a terminal
    lines = [line.strip() for line in plain.splitlines() if line.strip()]
    for line in lines:
        log.warning("onnxruntime-gpu: %s", line)
    return lines


def preload_for(wheel: str, runtime: Any) -> list[str]:
    """:func:`preload_cuda` for the GPU wheel; nothing for the CPU one (it has no CUDA to load)."""
    return preload_cuda(runtime) if wheel == GPU_WHEEL else []


WHEEL = check_install()
"""The onnxruntime distribution this process runs on (checked once, at import)."""

import onnxruntime as ort  # noqa: E402  (only once the check above has passed)

PRELOAD_MESSAGES: list[str] = preload_for(WHEEL, ort)
"""What preloading the CUDA libraries reported (empty on the CPU wheel, or when all loaded)."""

__all__ = [
    "CPU_WHEEL",
    "GPU_WHEEL",
    "PRELOAD_MESSAGES",
    "WHEEL",
    "VersionOf",
    "check_install",
    "installed_version",
    "ort",
    "preload_cuda",
    "preload_for",
]
