"""The one import of onnxruntime on the serving path, after checking which wheel provides it.

``onnxruntime`` (CPU) and ``onnxruntime-gpu`` install the same ``onnxruntime`` package; with both
installed, whichever was installed last owns the files and the CPU build silently shadows the CUDA
provider. The extras keep them apart (``edgestream[cpu]`` or ``edgestream[gpu]``, never both); this
module refuses to start on an environment that has both, or neither, with the command that fixes it.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata

from edgestream.pipeline.errors import OnnxRuntimeInstall

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


WHEEL = check_install()
"""The onnxruntime distribution this process runs on (checked once, at import)."""

import onnxruntime as ort  # noqa: E402  (only once the check above has passed)

__all__ = ["CPU_WHEEL", "GPU_WHEEL", "WHEEL", "VersionOf", "check_install", "installed_version", "ort"]
