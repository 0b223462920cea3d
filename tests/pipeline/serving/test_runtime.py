"""The onnxruntime install check: one wheel, never both, never neither."""

from __future__ import annotations

import pytest

from edgestream.pipeline.errors import OnnxRuntimeInstall
from edgestream.pipeline.serving.runtime import CPU_WHEEL, GPU_WHEEL, WHEEL, VersionOf, check_install


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
