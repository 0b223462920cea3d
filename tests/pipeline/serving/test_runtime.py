"""The onnxruntime install check: one wheel, never both, never neither."""

from __future__ import annotations

import pytest

from edgestream.pipeline.errors import OnnxRuntimeInstall
from edgestream.pipeline.serving.runtime import (
    CPU_WHEEL,
    GPU_WHEEL,
    WHEEL,
    VersionOf,
    check_install,
    preload_cuda,
    preload_for,
)


def _installed(**versions: str) -> VersionOf:
    """A lookup that finds only ``versions`` (keyword names with ``_`` for ``-``)."""
    found = {name.replace("_", "-"): version for name, version in versions.items()}
    return found.get


def test_one_wheel_is_accepted() -> None:
    assert check_install(_installed(onnxruntime="1.22.0")) == CPU_WHEEL
    assert check_install(_installed(onnxruntime_gpu="1.22.0")) == GPU_WHEEL


def test_both_wheels_are_refused_naming_what_to_uninstall() -> None:
    with pytest.raises(
        OnnxRuntimeInstall, match=r"both onnxruntime 1\.22\.0 and onnxruntime-gpu 1\.21\.1"
    ) as e:
        check_install(_installed(onnxruntime="1.22.0", onnxruntime_gpu="1.21.1"))
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in str(e.value)
    assert "onnxruntime-gpu==1.21.1" in str(e.value)
    assert e.value.reason == "onnxruntime_install"


def test_no_wheel_is_refused_naming_the_extras() -> None:
    with pytest.raises(OnnxRuntimeInstall, match=r"edgestream\[cpu\].*edgestream\[gpu\]"):
        check_install(_installed())


def test_this_environment_has_exactly_one() -> None:
    assert check_install() == WHEEL


class _Runtime:
    """An onnxruntime module as far as ``preload_cuda`` sees it."""

    def __init__(self, prints: str = "", raises: Exception | None = None) -> None:
        self.prints, self.raises, self.calls = prints, raises, 0

    def preload_dlls(self) -> None:
        self.calls += 1
        if self.prints:
            print(self.prints)
        if self.raises is not None:
            raise self.raises


def test_cuda_libraries_are_preloaded_and_failures_logged(caplog: pytest.LogCaptureFixture) -> None:
    quiet = _Runtime()
    assert preload_cuda(quiet) == []
    assert quiet.calls == 1
    missing = _Runtime(prints="Failed to load libcublas.so.13: cannot open shared object file\n")
    with caplog.at_level("WARNING", logger="edgestream.pipeline.serving.runtime"):
        assert preload_cuda(missing) == ["Failed to load libcublas.so.13: cannot open shared object file"]
    assert "onnxruntime-gpu: Failed to load libcublas.so.13" in caplog.text
    coloured = _Runtime(prints="\x1b[33mWARNING: Unable to parse CUDA version 'x'.\x1b[0m")
    assert preload_cuda(coloured) == ["WARNING: Unable to parse CUDA version 'x'."]
    broken = _Runtime(raises=RuntimeError("Invalid parameter of directory"))
    assert preload_cuda(broken) == ["preloading CUDA libraries failed: Invalid parameter of directory"]
    assert preload_cuda(object()) == []  # an onnxruntime without preload_dlls (before 1.21)


def test_only_the_gpu_wheel_preloads() -> None:
    cpu, gpu = _Runtime(), _Runtime(prints="Failed to load libcudnn.so.9: not found")
    assert preload_for(CPU_WHEEL, cpu) == []
    assert cpu.calls == 0
    assert preload_for(GPU_WHEEL, gpu) == ["Failed to load libcudnn.so.9: not found"]
    assert gpu.calls == 1
