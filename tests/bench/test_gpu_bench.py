"""The GPU bench: without CUDA it says so and writes nothing; its measurement, run on the CPU (IO
binding included), gives every model, target and batch size a point; on a GPU it writes gpu.json."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from bench.gpu.__main__ import main, plot
from bench.gpu.measure import BATCH_SIZES, has_cuda, measure, resnet_case, zoo_cases
from bench.gpu.pipeline import RESNET_MODEL, compare, resnet_signed
from edgestream.pipeline.serving.providers import CPU, Execution

if TYPE_CHECKING:
    from pathlib import Path


def test_without_cuda_it_says_so_exits_0_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if has_cuda():
        pytest.skip("CUDA is available here")
    assert main(["--out-dir", str(tmp_path / "results"), "--home", str(tmp_path / "home")]) == 0
    assert "no CUDAExecutionProvider" in capsys.readouterr().out
    assert not (tmp_path / "results").exists()


def test_the_measurement_on_the_cpu_with_io_binding(tmp_path: Path) -> None:
    cases = [resnet_case((1, 1, 1, 1), base_width=8), *zoo_cases(tmp_path, "tiny")]
    targets = {"cpu_bound": Execution(io_binding="always")}
    models = measure(cases, targets, (1, 4), budget_s=0.0)
    assert set(models) == {"resnet-1-1-1-1-w8", "embedding-scorer/tiny", "frame-classifier/tiny"}
    assert models["resnet-1-1-1-1-w8"]["input"] == ["uint8", [224, 224, 3]]
    for model in models.values():
        result = model["targets"]["cpu_bound"]
        assert result["providers"] == [CPU]
        assert [p["batch"] for p in result["points"]] == [1, 4]
        for point in result["points"]:
            assert point["runs"] >= 20
            assert point["items_per_s"] > 0
            assert 0 < point["p50_ms"] <= point["p99_ms"]
    document = {"onnxruntime": "x", "device": "CPU", "models": models}
    plot(document, tmp_path / "gpu.png")
    assert (tmp_path / "gpu.png").stat().st_size > 0


@pytest.mark.gpu
def test_on_a_gpu_it_writes_every_model_at_every_batch_size(tmp_path: Path) -> None:
    if not has_cuda():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here")
    out = tmp_path / "results"
    home = str(tmp_path / "home")
    assert main(["--out-dir", str(out), "--home", home, "--budget-s", "0.05", "--processes", "2"]) == 0
    document = json.loads((out / "gpu.json").read_text())
    assert document["wheel"] == "onnxruntime-gpu"
    for model in document["models"].values():
        assert model["targets"]["cuda"]["providers"][0] == "CUDAExecutionProvider"
        for label, result in model["targets"].items():
            if label != "cuda" and "error" in result:  # TensorRT listed, its libraries not installed
                assert "TensorrtExecutionProvider" in result["error"]
                assert result["points"] == []
                continue
            assert [p["batch"] for p in result["points"]] == list(BATCH_SIZES)
    for name, compared in document["pipeline_vs_bare"].items():
        assert compared["providers"][0] == "CUDAExecutionProvider", name
        assert [p["batch"] for p in compared["points"]] == list(BATCH_SIZES)
        for point in compared["points"]:
            path, bare = point["pipeline"], point["bare"]
            assert 0 < point["ratio"] == round(path["items_per_s"] / bare["items_per_s"], 3)
            assert [s["processes"] for s in point.get("shared", [])] == ([2] if name == RESNET_MODEL else [])
    assert (out / "gpu-pipeline.png").stat().st_size > 0


def test_a_target_that_cannot_open_is_recorded_with_its_reason(tmp_path: Path) -> None:
    """A provider this build lacks (as TensorRT is where its libraries are missing): no points, the reason."""
    cases = [resnet_case((1, 1, 1, 1), base_width=8)]
    targets = {"cpu": Execution(), "missing": Execution(providers=("NoSuchExecutionProvider",))}
    models = measure(cases, targets, (1,), budget_s=0.0)
    result = models["resnet-1-1-1-1-w8"]["targets"]
    assert result["missing"]["points"] == []
    assert "NoSuchExecutionProvider" in result["missing"]["error"]
    assert [p["batch"] for p in result["cpu"]["points"]] == [1]


def test_the_worker_path_beside_bare_onnxruntime_on_the_cpu(tmp_path: Path) -> None:
    """Every model (the user's ResNet-shaped one by its signature, the zoo's) at every batch size: the
    worker's path answered every record, and the ratio is its items/s over bare onnxruntime's."""
    home = tmp_path / "home"
    resnet = resnet_signed(home, blocks=(1, 1, 1, 1), base_width=8)
    compared = compare(
        home, Execution(), model_size="tiny", batch_sizes=(1, 4), budget_s=0.0, resnet=resnet, processes=(2,)
    )
    assert set(compared) == {RESNET_MODEL, "frame-classifier", "embedding-scorer"}
    for name, model in compared.items():
        assert model["providers"] == [CPU], name
        assert [p["batch"] for p in model["points"]] == [1, 4]
        for point in model["points"]:
            path, bare = point["pipeline"], point["bare"]
            assert path["batch"] == bare["batch"] == point["batch"]
            assert path["units"] >= 20  # MIN_RUNS timed units (a warm-up unit per fresh state besides)
            assert 0 < path["p50_ms"] <= path["p99_ms"]
            assert 0 < path["infer_share"] < 1
            assert point["ratio"] == round(path["items_per_s"] / bare["items_per_s"], 3)
            if name != RESNET_MODEL:
                assert "shared" not in point
                continue
            (shared,) = point["shared"]  # two processes, each its own session, at once
            assert (shared["processes"], shared["batch"]) == (2, point["batch"])
            assert shared["items"] % (2 * point["batch"]) == 0
            assert shared["items"] >= 2 * point["batch"] * 20
            assert 0 < shared["p50_ms"] <= shared["p99_ms"]
            assert shared["ratio"] == round(shared["items_per_s"] / bare["items_per_s"], 3)
