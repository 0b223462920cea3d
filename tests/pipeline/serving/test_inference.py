"""The onnxruntime session wrapper: batching, validation, providers, IO binding, errors, threads, GPU."""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import pytest

from edgestream.pipeline.errors import ConfigError, InferenceFailed, ProviderUnavailable, ShapeMismatch
from edgestream.pipeline.models import ModelArtifact, ModelStore, load_dataset
from edgestream.pipeline.serving import inference
from edgestream.pipeline.serving.inference import InferenceSession, available_providers
from edgestream.pipeline.serving.providers import CPU, CUDA, TENSORRT, CudaOptions, Execution
from edgestream.pipeline.serving.served import load_models
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.settings import WorkerSettings

if TYPE_CHECKING:
    from pathlib import Path

    import numpy.typing as npt

MODELS = [(name, size) for name in ("embedding-scorer", "frame-classifier") for size in ("tiny", "medium")]


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """A model root for this test session; only the sizes used here get built (about a second)."""
    built = ModelStore(tmp_path_factory.mktemp("inference-models"))
    for name, size in MODELS:
        built.get(name, size)
    return built


def _test_items(artifact: ModelArtifact, count: int) -> npt.NDArray[np.generic]:
    return load_dataset(artifact.spec.kind).X_test[:count]


@pytest.mark.parametrize(("name", "size"), MODELS)
@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_batched_rows_equal_row_by_row(store: ModelStore, name: str, size: str, batch_size: int) -> None:
    artifact = store.get(name, size)
    session = InferenceSession(artifact)
    batch = _test_items(artifact, batch_size)
    labels, probs = session.run(batch)
    assert labels.shape == (batch_size,)
    assert labels.dtype == np.int64
    assert probs.shape == (batch_size, artifact.spec.n_classes)
    assert probs.dtype == np.float32
    for row in range(batch_size):
        row_labels, row_probs = session.run(batch[row : row + 1])
        assert row_labels[0] == labels[row]
        np.testing.assert_allclose(row_probs[0], probs[row], rtol=1e-5, atol=1e-6)


def test_dynamic_batch_sizes_on_one_session(store: ModelStore) -> None:
    artifact = store.get("frame-classifier", "medium")
    session = InferenceSession(artifact)
    items = _test_items(artifact, 100)
    for batch_size in (3, 100, 1, 32, 57):
        labels, probs = session.run(items[:batch_size])
        assert labels.shape == (batch_size,)
        assert probs.shape == (batch_size, 10)
        np.testing.assert_array_equal(labels, probs.argmax(axis=1))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["frame-classifier", "embedding-scorer"])
def test_warm_up_runs_the_model_and_leaves_answers_unchanged(store: ModelStore, name: str) -> None:
    artifact = store.get(name, "tiny")
    items = _test_items(artifact, 20)
    cold = InferenceSession(artifact).run(items)
    session = InferenceSession(artifact)
    assert session.warm_up((1, 4)) > 0
    warm = session.run(items)
    np.testing.assert_array_equal(cold[0], warm[0])
    np.testing.assert_allclose(cold[1], warm[1])
    with pytest.raises(ValueError, match="negative dimensions"):
        session.warm_up((-1,))


def test_empty_batch(store: ModelStore) -> None:
    session = InferenceSession(store.get("embedding-scorer", "tiny"))
    labels, probs = session.run(np.empty((0, 30), dtype=np.float16))
    assert labels.shape == (0,)
    assert probs.shape == (0, 2)


def test_non_contiguous_batch(store: ModelStore) -> None:
    artifact = store.get("embedding-scorer", "medium")
    session = InferenceSession(artifact)
    items = _test_items(artifact, 20)
    every_other = items[::2]
    assert not every_other.flags.c_contiguous
    np.testing.assert_array_equal(session.run(every_other)[0], session.run(items[::2].copy())[0])


@pytest.mark.parametrize(
    "batch",
    [
        np.zeros((4, 30), dtype=np.float32),
        np.zeros((4, 31), dtype=np.float16),
        np.zeros((30,), dtype=np.float16),
        np.zeros((4, 1, 30), dtype=np.float16),
    ],
    ids=["float32", "31-features", "no-batch-dim", "extra-dim"],
)
def test_wrong_input_is_a_shape_mismatch(store: ModelStore, batch: npt.NDArray[np.generic]) -> None:
    session = InferenceSession(store.get("embedding-scorer", "tiny"))
    with pytest.raises(ShapeMismatch):
        session.run(batch)


def test_onnxruntime_error_becomes_inference_failed(store: ModelStore) -> None:
    embedding = store.get("embedding-scorer", "tiny")
    frame_spec = store.get("frame-classifier", "tiny").spec
    # The embedding graph under a frame spec: validation passes, onnxruntime rejects the tensor.
    mislabelled = dataclasses.replace(embedding, spec=frame_spec)
    session = InferenceSession(mislabelled)
    with pytest.raises(InferenceFailed, match="embedding-scorer/tiny") as caught:
        session.run(np.zeros((2, 32, 32), dtype=np.uint8))
    assert caught.value.__cause__ is not None
    assert InferenceFailed.reason == "infer_failed"


def test_artifact_with_wrong_hash_is_refused(store: ModelStore) -> None:
    artifact = dataclasses.replace(store.get("embedding-scorer", "tiny"), sha256="0" * 64)
    with pytest.raises(ConfigError, match="does not hash"):
        InferenceSession(artifact)


def test_bad_thread_count_is_refused(store: ModelStore) -> None:
    with pytest.raises(ConfigError, match="intra_op_num_threads"):
        InferenceSession(store.get("embedding-scorer", "tiny"), intra_op_num_threads=0)


def test_cpu_is_available_and_default(store: ModelStore) -> None:
    assert CPU in available_providers()
    session = InferenceSession(store.get("embedding-scorer", "tiny"), intra_op_num_threads=2)
    assert session.providers_in_use == (CPU,)
    assert session.spec.name == "embedding-scorer"


@pytest.mark.parametrize("provider", ["NoSuchExecutionProvider", CUDA, TENSORRT])
def test_unavailable_provider_is_refused(store: ModelStore, provider: str) -> None:
    if provider in available_providers():
        pytest.skip(f"{provider} is available here")
    with pytest.raises(ProviderUnavailable, match=provider) as caught:
        InferenceSession(store.get("embedding-scorer", "tiny"), Execution(providers=(provider, CPU)))
    assert caught.value.reason == "provider_unavailable"
    assert CPU in str(caught.value)  # names what is available
    assert caught.value.provider == provider


def test_unavailable_provider_runs_on_the_cpu_when_fallback_is_allowed(
    store: ModelStore, caplog: pytest.LogCaptureFixture
) -> None:
    artifact = store.get("embedding-scorer", "tiny")
    execution = Execution(providers=("NoSuchExecutionProvider",), allow_cpu_fallback=True)
    with caplog.at_level(logging.WARNING, logger="edgestream.pipeline.serving.providers"):
        session = InferenceSession(artifact, execution)
    assert session.providers_in_use == (CPU,)
    assert "NoSuchExecutionProvider" in caplog.text
    assert "allow_cpu_fallback" in caplog.text
    items = _test_items(artifact, 8)
    np.testing.assert_array_equal(session.run(items)[1], InferenceSession(artifact).run(items)[1])


@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")
def test_provider_the_session_did_not_register_is_refused(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime lists CUDA yet opens the session on the CPU (e.g. cuDNN failed to load): refused."""
    if CUDA in available_providers():
        pytest.skip("CUDA really is available here")
    monkeypatch.setattr(inference, "available_providers", lambda: (CUDA, CPU))
    artifact = store.get("embedding-scorer", "tiny")
    with pytest.raises(ProviderUnavailable, match=CUDA):
        InferenceSession(artifact, Execution(providers=(CUDA,)))
    allowed = InferenceSession(artifact, Execution(providers=(CUDA,), allow_cpu_fallback=True))
    assert allowed.providers_in_use == (CPU,)


def test_a_worker_asked_for_cuda_without_it_does_not_load(tmp_path: Path) -> None:
    if CUDA in available_providers():
        pytest.skip("CUDA really is available here")

    def settings(allow_cpu_fallback: bool) -> WorkerSettings:
        return WorkerSettings(
            home=tmp_path,
            kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
            models=("embedding-scorer",),
            model_size="tiny",
            providers=(CUDA,),
            allow_cpu_fallback=allow_cpu_fallback,
        )

    with pytest.raises(ProviderUnavailable, match="embedding-scorer"):
        load_models(settings(allow_cpu_fallback=False))
    assert load_models(settings(allow_cpu_fallback=True))["embedding-scorer"].session.providers_in_use == (
        CPU,
    )


@pytest.mark.parametrize(("name", "size"), MODELS)
def test_io_binding_gives_exactly_the_plain_answers(store: ModelStore, name: str, size: str) -> None:
    artifact = store.get(name, size)
    plain = InferenceSession(artifact)
    bound = InferenceSession(artifact, Execution(io_binding="always"))
    assert not plain.io_bound
    assert bound.io_bound
    items = _test_items(artifact, 64)
    for batch in (items[:1], items[:7], items, items[::2]):
        plain_labels, plain_probs = plain.run(batch)
        bound_labels, bound_probs = bound.run(batch)
        assert bound_labels.dtype == np.int64
        assert bound_probs.dtype == np.float32
        np.testing.assert_array_equal(bound_labels, plain_labels)
        np.testing.assert_array_equal(bound_probs, plain_probs)


def test_io_binding_is_off_on_the_cpu_by_default_and_errors_stay_inference_failed(
    store: ModelStore,
) -> None:
    embedding = store.get("embedding-scorer", "tiny")
    assert not InferenceSession(embedding, Execution(io_binding="auto")).io_bound
    mislabelled = dataclasses.replace(embedding, spec=store.get("frame-classifier", "tiny").spec)
    bound = InferenceSession(mislabelled, Execution(io_binding="always"))
    with pytest.raises(InferenceFailed):
        bound.run(np.zeros((2, 32, 32), dtype=np.uint8))


def test_concurrent_runs_from_threads_match_sequential(store: ModelStore) -> None:
    artifact = store.get("frame-classifier", "medium")
    session = InferenceSession(artifact)
    items = _test_items(artifact, 64)
    batches = [items[start : start + 16] for start in range(0, 64, 4)]
    sequential = [session.run(batch) for batch in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(session.run, batches))
    for (labels, probs), (c_labels, c_probs) in zip(sequential, concurrent, strict=True):
        np.testing.assert_array_equal(labels, c_labels)
        np.testing.assert_array_equal(probs, c_probs)


@pytest.mark.gpu
@pytest.mark.parametrize(("name", "size"), MODELS)
@pytest.mark.parametrize(("tf32", "atol"), [(True, 1e-3), (False, 1e-5)])
def test_cuda_matches_cpu(store: ModelStore, name: str, size: str, tf32: bool, atol: float) -> None:
    """TF32 (the default) moves probabilities by about 1e-4 (1.5e-4 seen on an H200); float32 by
    rounding alone."""
    if CUDA not in available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here")
    artifact = store.get(name, size)
    gpu = InferenceSession(artifact, Execution(providers=(CUDA,), cuda=CudaOptions(tf32=tf32)))
    assert gpu.providers_in_use[0] == CUDA
    assert gpu.io_bound
    items = _test_items(artifact, 64)
    gpu_labels, gpu_probs = gpu.run(items)
    cpu_labels, cpu_probs = InferenceSession(artifact).run(items)
    np.testing.assert_allclose(gpu_probs, cpu_probs, atol=atol)
    assert np.mean(gpu_labels == cpu_labels) >= 0.98
