"""Execution providers: which are chosen, refused or dropped, and the options each one is opened with."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edgestream.pipeline.errors import ProviderUnavailable
from edgestream.pipeline.serving.providers import (
    CPU,
    CUDA,
    TENSORRT,
    CudaOptions,
    Execution,
    TensorRtOptions,
    binds_io,
    check_in_use,
    choose_providers,
    output_device,
    provider_options,
)
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.settings import WorkerSettings

GPU_BUILD = (TENSORRT, CUDA, CPU)
CPU_BUILD = (CPU,)


def test_available_providers_are_chosen_in_order_with_the_cpu_last() -> None:
    chosen = choose_providers((CUDA, TENSORRT, CUDA), GPU_BUILD, allow_cpu_fallback=False, what="m")
    assert chosen == (CUDA, TENSORRT, CPU)
    assert choose_providers((), CPU_BUILD, allow_cpu_fallback=False, what="m") == (CPU,)
    assert choose_providers((CPU, CUDA), GPU_BUILD, allow_cpu_fallback=False, what="m") == (CPU, CUDA)


def test_tensorrt_gets_cuda_behind_it() -> None:
    chosen = choose_providers((TENSORRT,), GPU_BUILD, allow_cpu_fallback=False, what="m")
    assert chosen == (TENSORRT, CUDA, CPU)


@pytest.mark.parametrize("requested", [(CUDA,), (TENSORRT,), (CUDA, CPU), ("NoSuchExecutionProvider",)])
def test_a_provider_this_build_lacks_is_refused(requested: tuple[str, ...]) -> None:
    with pytest.raises(ProviderUnavailable, match=r"frame-classifier/medium v1: .*ExecutionProvider") as e:
        choose_providers(requested, CPU_BUILD, allow_cpu_fallback=False, what="frame-classifier/medium v1")
    assert e.value.available == CPU_BUILD
    assert "CPUExecutionProvider" in str(e.value)
    assert "allow_cpu_fallback" in str(e.value)
    assert e.value.reason == "provider_unavailable"


def test_with_fallback_allowed_missing_providers_are_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="edgestream.pipeline.serving.providers"):
        chosen = choose_providers((TENSORRT,), (CUDA, CPU), allow_cpu_fallback=True, what="m")
    assert chosen == (CUDA, CPU)
    assert TENSORRT in caplog.text
    with caplog.at_level(logging.WARNING, logger="edgestream.pipeline.serving.providers"):
        assert choose_providers((CUDA,), CPU_BUILD, allow_cpu_fallback=True, what="m") == (CPU,)


def test_a_provider_the_session_did_not_register_is_refused_unless_allowed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    check_in_use((CUDA, CPU), (CUDA, CPU), allow_cpu_fallback=False, what="m")
    with pytest.raises(
        ProviderUnavailable, match=f"{CUDA} is not available .the session registered only {CPU}"
    ):
        check_in_use((CUDA, CPU), (CPU,), allow_cpu_fallback=False, what="m")
    with caplog.at_level(logging.WARNING, logger="edgestream.pipeline.serving.providers"):
        check_in_use((TENSORRT, CUDA, CPU), (CUDA, CPU), allow_cpu_fallback=True, what="m")
    assert TENSORRT in caplog.text


def test_cuda_options() -> None:
    execution = Execution(
        cuda=CudaOptions(
            device_id=1, gpu_mem_limit_bytes=2 << 30, cudnn_conv_algo_search="HEURISTIC", tf32=False
        )
    )
    ((name, options), (cpu, cpu_options)) = provider_options(
        execution, (CUDA, CPU), input_name="input", item_shape=(30,)
    )
    assert (name, cpu, cpu_options) == (CUDA, CPU, {})
    assert options == {
        "device_id": "1",
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": "1",
        "use_tf32": "0",
        "gpu_mem_limit": str(2 << 30),
    }
    default = provider_options(Execution(), (CUDA,), input_name="x", item_shape=())[0][1]
    assert "gpu_mem_limit" not in default
    assert default["use_tf32"] == "1"


def test_tensorrt_options_fp16_engine_cache_under_home_and_one_profile(tmp_path: Path) -> None:
    execution = Execution(providers=(TENSORRT,), home=tmp_path, max_batch=32, cuda=CudaOptions(device_id=2))
    ((name, options),) = provider_options(
        execution, (TENSORRT,), input_name="input", item_shape=(224, 224, 3)
    )
    assert name == TENSORRT
    assert options == {
        "device_id": "2",
        "trt_fp16_enable": "1",
        "trt_max_workspace_size": str(2 << 30),
        "trt_engine_cache_enable": "1",
        "trt_timing_cache_enable": "1",
        "trt_engine_cache_path": str(tmp_path / "tensorrt"),
        "trt_timing_cache_path": str(tmp_path / "tensorrt"),
        "trt_profile_min_shapes": "input:1x224x224x3",
        "trt_profile_opt_shapes": "input:32x224x224x3",
        "trt_profile_max_shapes": "input:32x224x224x3",
    }


def test_tensorrt_options_without_fp16_or_cache_and_an_explicit_cache_dir(tmp_path: Path) -> None:
    plain = Execution(tensorrt=TensorRtOptions(fp16=False, engine_cache=False))
    ((_, options),) = provider_options(plain, (TENSORRT,), input_name="input", item_shape=(30,))
    assert options["trt_fp16_enable"] == "0"
    assert options["trt_engine_cache_enable"] == "0"
    assert "trt_engine_cache_path" not in options
    assert options["trt_profile_max_shapes"] == "input:64x30"
    elsewhere = Execution(tensorrt=TensorRtOptions(engine_cache_dir=tmp_path / "engines"))
    assert elsewhere.engine_cache_dir() == tmp_path / "engines"


def test_io_binding_modes() -> None:
    assert binds_io("auto", (CUDA, CPU))
    assert binds_io("auto", (TENSORRT, CUDA, CPU))
    assert not binds_io("auto", (CPU,))
    assert binds_io("always", (CPU,))
    assert not binds_io("never", (CUDA, CPU))
    assert output_device((CUDA, CPU)) == "cuda"
    assert output_device((CPU,)) == "cpu"


def test_worker_settings_default_to_the_cpu_with_no_fallback() -> None:
    settings = WorkerSettings(kafka=KafkaSettings())
    assert (settings.providers, settings.allow_cpu_fallback, settings.io_binding) == ((CPU,), False, "auto")
    assert (settings.tensorrt.fp16, settings.tensorrt.engine_cache, settings.cuda.device_id) == (
        True,
        True,
        0,
    )


def test_worker_settings_carry_the_provider_options_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EDGESTREAM_WORKER_PROVIDERS", '["TensorrtExecutionProvider"]')
    monkeypatch.setenv("EDGESTREAM_WORKER_ALLOW_CPU_FALLBACK", "true")
    monkeypatch.setenv("EDGESTREAM_WORKER_CUDA__DEVICE_ID", "3")
    monkeypatch.setenv("EDGESTREAM_WORKER_TENSORRT__FP16", "false")
    monkeypatch.setenv("EDGESTREAM_WORKER_TENSORRT__ENGINE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("EDGESTREAM_WORKER_IO_BINDING", "always")
    settings = WorkerSettings(kafka=KafkaSettings())
    assert settings.providers == (TENSORRT,)
    assert settings.allow_cpu_fallback
    assert settings.cuda.device_id == 3
    assert not settings.tensorrt.fp16
    assert settings.tensorrt.engine_cache_dir == tmp_path
    assert settings.io_binding == "always"
