"""Retraining: a new version of a model from the labelled samples of chosen windows.

Join the samples and labels read from the cloud topics by request id, keeping the model's samples
whose ``at_ms`` is in ``[since_ms, until_ms)`` (:func:`join`; the reading is
``edgestream.workers.retrainer``). Split the joined set into a training part and a held-out part
(stratified, seeded, copies of one input on one side: :func:`holdout_split`), train with the zoo's own
training and ONNX export (:func:`train`), and measure the candidate and the current stable version on
the SAME held-out part by running both ONNX graphs with onnxruntime (:func:`evaluate`).
:func:`retrain` does all of it on data already read and returns a :class:`RetrainReport`, whose
``metrics()`` and ``lineage()`` are what the candidate's manifest signs.
Publishing (as a candidate, never promoted) is ``edgestream.pipeline.registry.publishing``.

Only ``embedding`` models can be retrained: frames are never sampled, so samples carry no frame.
The estimator's own seed is the zoo's ``TRAIN_SEED`` (builds stay reproducible); ``seed`` picks the
held-out split.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from edgestream.pipeline.contract.cloud import Label, Sample
from edgestream.pipeline.errors import ConfigError, EdgestreamError

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    from edgestream.pipeline.models.zoo import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_HOLDOUT: Final = 0.3
"""Share of the joined samples held out to compare the candidate with the stable version."""
DEFAULT_SEED: Final = 0
"""Seed of the held-out split."""

Features = npt.NDArray[np.float16]
Labels = npt.NDArray[np.int64]
Items = npt.NDArray[np.generic]
"""Inputs to train or evaluate on: anything numpy casts to the wire dtype."""


class RetrainError(EdgestreamError):
    """Retraining cannot go on: too few samples, a model that is not sampled, a read that timed out."""

    reason = "retrain"


@dataclass(frozen=True, slots=True)
class Window:
    """The training window: samples answered at ``since_ms <= at_ms < until_ms`` (unix ms)."""

    since_ms: int
    until_ms: int

    def __post_init__(self) -> None:
        if self.until_ms <= self.since_ms:
            raise ConfigError(f"empty window: until {self.until_ms} <= since {self.since_ms}")

    def __contains__(self, at_ms: object) -> bool:
        return isinstance(at_ms, int) and self.since_ms <= at_ms < self.until_ms


@dataclass(frozen=True, slots=True, eq=False)
class LabelledSet:
    """The model's labelled samples of one window, in the wire dtype, with the counts of the join."""

    model: str
    window: Window
    X: Features
    """Features, ``[joined, n_features]`` float16 (what the device sent)."""
    y: Labels
    """Ground-truth labels from ``cloud.labels``, ``[joined]``."""
    request_ids: tuple[bytes, ...]
    """Request id of each row."""
    samples: int
    """Samples of the model in the window (distinct request ids)."""
    labels: int
    """Labels of the model read (any window: a label is joined by request id, not by time)."""
    skipped: int
    """Records left out: undecodable, features of the wrong length or that a float16 cannot hold,
    labels that are not the model's classes."""

    @property
    def joined(self) -> int:
        """Samples of the window that have a label."""
        return len(self.y)


@dataclass(frozen=True, slots=True, eq=False)
class TrainedModel:
    """A candidate: the exported ONNX bytes and the scikit-learn estimator they came from."""

    onnx_bytes: bytes
    estimator: LogisticRegression | MLPClassifier
    mean: npt.NDArray[np.float32]
    """Per-feature training mean baked into the graph."""
    std: npt.NDArray[np.float32]
    """Per-feature training std baked into the graph."""
    converged: bool
    """False when scikit-learn reported non-convergence."""
    spec: ModelSpec

    def sklearn_accuracy(self, X: Items, y: Labels) -> float:
        """The estimator's own accuracy on ``X`` (to compare with the ONNX graph's)."""
        from edgestream.pipeline.models.build import features

        z = (features(self.spec, X) - self.mean) / self.std
        return float(self.estimator.score(z, y))


@dataclass(frozen=True, slots=True)
class RetrainReport:
    """What a retraining run did and measured; ``metrics()`` and ``lineage()`` go into the manifest."""

    model: str
    variant: str
    """Zoo size (architecture) of the candidate: the stable version's."""
    window: Window
    samples: int
    labels: int
    joined: int
    distinct: int
    """Distinct inputs among the joined samples (copies of one input are kept on one side of the split)."""
    train_size: int
    holdout_size: int
    holdout_fraction: float
    seed: int
    candidate_accuracy: float
    """Held-out accuracy of the candidate's ONNX graph (onnxruntime)."""
    candidate_sklearn_accuracy: float
    """Held-out accuracy of the candidate's scikit-learn estimator."""
    stable_version: int
    stable_accuracy: float
    """Held-out accuracy of the stable version's ONNX graph on the same rows."""
    converged: bool
    reference: tuple[tuple[int, ...], ...] = ()
    """The training part's counts in the bins of the model kind's drift reference
    (``drift.training_reference``): what the aggregator judges this version's inputs against."""

    @property
    def margin(self) -> float:
        """Candidate minus stable accuracy on the held-out part (> 0: the candidate is better)."""
        return self.candidate_accuracy - self.stable_accuracy

    def metrics(self) -> dict[str, float]:
        """The manifest's metrics."""
        return {
            "accuracy": self.candidate_accuracy,
            "sklearn_accuracy": self.candidate_sklearn_accuracy,
            "stable_accuracy": self.stable_accuracy,
            "margin": self.margin,
        }

    def lineage(self) -> dict[str, Any]:
        """The manifest's lineage: windows, counts, parent version, split."""
        return {
            "parent_version": self.stable_version,
            "source": "retrain",
            "windows": [{"since_ms": self.window.since_ms, "until_ms": self.window.until_ms}],
            "samples": self.samples,
            "labels": self.labels,
            "joined": self.joined,
            "distinct": self.distinct,
            "train_size": self.train_size,
            "holdout_size": self.holdout_size,
            "holdout_fraction": self.holdout_fraction,
            "split_seed": self.seed,
            "converged": self.converged,
            "drift_reference": [list(c) for c in self.reference],
        }


@dataclass(frozen=True, slots=True, eq=False)
class Joined:
    """The labelled samples of one model and window, before any array is built: what :func:`join` and
    the export of a window (``learning.export``) share."""

    rows: tuple[tuple[Sample, int], ...]
    """Each labelled sample with its true label, by request id."""
    n_features: int
    """Length of every row's feature vector."""
    samples: int
    """Samples of the model in the window with ``n_features`` features (distinct request ids)."""
    labels: int
    """Labels of the model read (any window)."""
    skipped: int
    """Samples of the window left out: feature vectors not ``n_features`` long."""


def join_samples(
    samples: Iterable[Sample], labels: Iterable[Label], model: str, window: Window, n_features: int | None
) -> Joined:
    """The labelled samples of ``model`` answered in ``window``; the last record of a request id wins.

    A sample whose feature vector is not ``n_features`` long is left out and counted in ``skipped``;
    ``n_features`` None: the length most of the window's samples have (a model edgestream did not build
    has no zoo spec to say it; ties go to the shorter length), 0 when there are none.
    """
    by_request: dict[bytes, Sample] = {}
    for sample in samples:
        if sample.model == model and sample.at_ms in window:
            by_request[sample.request_id] = sample
    if n_features is None:
        lengths = Counter(len(s.features) for s in by_request.values())
        n_features = min(lengths, key=lambda n: (-lengths[n], n)) if lengths else 0
    kept = {rid: s for rid, s in by_request.items() if len(s.features) == n_features}
    truth = {label.request_id: label.label for label in labels if label.model == model}
    rows = tuple((sample, truth[rid]) for rid, sample in sorted(kept.items()) if rid in truth)
    return Joined(rows, n_features, len(kept), len(truth), len(by_request) - len(kept))


def join(
    samples: Iterable[Sample],
    labels: Iterable[Label],
    model: str,
    window: Window,
    n_features: int,
    n_classes: int | None = None,
) -> LabelledSet:
    """The labelled samples of ``model`` answered in ``window`` (:func:`join_samples`), as arrays in the
    wire dtype. Rows that cannot train the model are left out and counted in ``skipped``: features a
    float16 cannot hold (past +-65,504 they become infinite, and scikit-learn refused the whole set with
    a traceback) and labels that are not one of its ``n_classes`` classes (``0 .. n_classes - 1``; a
    backend's label is any integer: one out of range failed the export of the candidate)."""
    joined = join_samples(samples, labels, model, window, n_features)
    rows = [
        (sample, label)
        for sample, label in joined.rows
        if (n_classes is None or 0 <= label < n_classes) and _fits_float16(sample.features)
    ]
    X = np.array([s.features for s, _ in rows], dtype=np.float16).reshape(len(rows), n_features)
    y = np.array([label for _, label in rows], dtype=np.int64)
    return LabelledSet(
        model=model,
        window=window,
        X=X,
        y=y,
        request_ids=tuple(s.request_id for s, _ in rows),
        samples=joined.samples,
        labels=joined.labels,
        skipped=joined.skipped + len(joined.rows) - len(rows),
    )


_FLOAT16_OVERFLOW: Final = 65_520.0
"""The least magnitude a float16 rounds to infinity (its largest finite value is 65,504)."""


def _fits_float16(features: Sequence[float]) -> bool:
    """Whether every feature stays finite as a float16 (they are finite floats: the decoder's check)."""
    return all(-_FLOAT16_OVERFLOW < x < _FLOAT16_OVERFLOW for x in features)


def sampled_spec(model: str, size: str = "medium") -> ModelSpec:
    """The zoo spec of ``model`` in ``size``; :class:`RetrainError` unless it is sampled (an embedding
    model)."""
    from edgestream.pipeline.models.zoo import spec

    model_spec = spec(model, size)
    if model_spec.kind != "embedding":
        raise RetrainError(f"{model} is a {model_spec.kind} model: frames are never sampled")
    return model_spec


def holdout_split(
    y: Labels,
    fraction: float = DEFAULT_HOLDOUT,
    *,
    seed: int = DEFAULT_SEED,
    groups: npt.NDArray[np.intp] | None = None,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Row indices ``(train, holdout)``: disjoint, together every row, the holdout ``fraction`` of each
    class (stratified), the same for the same labels and seed.

    ``groups`` (one id per row, e.g. from :func:`input_groups`): rows of one group land on the same side,
    so a held-out row never has a copy in the training part; the split is then made over the groups
    (stratified by each group's first label)."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"holdout fraction must be in (0, 1), got {fraction}")
    if groups is None:
        groups = np.arange(len(y))
    if len(groups) != len(y):
        raise ConfigError(f"{len(groups)} group ids for {len(y)} rows")
    ids, first = np.unique(groups, return_index=True)
    group_y = y[first]
    _, counts = np.unique(group_y, return_counts=True)
    if len(counts) < 2 or counts.min() < 2:
        raise RetrainError(f"need at least two distinct inputs of each of two classes, got {counts.tolist()}")
    train_ids, holdout_ids = train_test_split(ids, test_size=fraction, stratify=group_y, random_state=seed)
    rows = np.arange(len(y))
    return rows[np.isin(groups, train_ids)], rows[np.isin(groups, holdout_ids)]


def input_groups(X: Items) -> npt.NDArray[np.intp]:
    """One id per row of ``X``, equal for identical inputs, numbered by first occurrence."""
    flat = np.ascontiguousarray(X).reshape(len(X), -1)
    if len(flat) == 0:
        return np.zeros(0, dtype=np.intp)
    _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # unique's (sorted) group -> rank of its first occurrence
    return order[inverse.ravel()].astype(np.intp)


def train(model_spec: ModelSpec, X: Items, y: Labels) -> TrainedModel:
    """Train ``model_spec``'s architecture on ``X``/``y`` and export it, as the zoo builds it
    (standardiser baked in, same estimator, same graph)."""
    from edgestream.pipeline.models.build import _layers, _standardiser, _train, export_onnx, features

    train_features = features(model_spec, X)
    mean, std = _standardiser(train_features)
    estimator, converged = _train(model_spec, (train_features - mean) / std, y)
    graph = export_onnx(model_spec, mean, std, _layers(model_spec, estimator))
    return TrainedModel(graph.SerializeToString(), estimator, mean, std, converged, model_spec)


def evaluate(onnx_bytes: bytes, X: Items, y: Labels) -> float:
    """Accuracy of the ONNX graph on ``X``/``y``, run with onnxruntime on the CPU."""
    from edgestream.pipeline.models.build import _run_onnx

    if len(y) == 0:
        raise RetrainError("nothing to evaluate on")
    predicted, _ = _run_onnx(onnx_bytes, np.ascontiguousarray(X, dtype=np.float16))
    return float(np.mean(predicted == y))


def _reference_counts(model_spec: ModelSpec, X: Items) -> tuple[tuple[int, ...], ...]:
    from edgestream.pipeline.learning.drift import training_reference

    counts = training_reference(model_spec.kind).window_counts(np.asarray(X, dtype=np.float64))
    return tuple(tuple(int(n) for n in c) for c in counts)


def retrain(
    data: LabelledSet,
    variant: str,
    stable_version: int,
    stable_onnx: bytes,
    *,
    holdout_fraction: float = DEFAULT_HOLDOUT,
    seed: int = DEFAULT_SEED,
) -> tuple[RetrainReport, TrainedModel]:
    """Train a candidate of ``variant`` on the training part of ``data`` and compare it with the stable
    version's graph on the held-out part."""
    model_spec = sampled_spec(data.model, variant)
    groups = input_groups(data.X)
    train_rows, holdout_rows = holdout_split(data.y, holdout_fraction, seed=seed, groups=groups)
    candidate = train(model_spec, data.X[train_rows], data.y[train_rows])
    X_holdout, y_holdout = data.X[holdout_rows], data.y[holdout_rows]
    report = RetrainReport(
        model=data.model,
        variant=variant,
        window=data.window,
        samples=data.samples,
        labels=data.labels,
        joined=data.joined,
        distinct=int(groups.max()) + 1 if len(groups) else 0,
        train_size=len(train_rows),
        holdout_size=len(holdout_rows),
        holdout_fraction=holdout_fraction,
        seed=seed,
        candidate_accuracy=evaluate(candidate.onnx_bytes, X_holdout, y_holdout),
        candidate_sklearn_accuracy=candidate.sklearn_accuracy(X_holdout, y_holdout),
        stable_version=stable_version,
        stable_accuracy=evaluate(stable_onnx, X_holdout, y_holdout),
        converged=candidate.converged,
        reference=_reference_counts(model_spec, data.X[train_rows]),
    )
    log.info(
        "%s: candidate %.4f vs stable v%d %.4f on %d held-out samples (margin %+.4f)",
        data.model,
        report.candidate_accuracy,
        stable_version,
        report.stable_accuracy,
        report.holdout_size,
        report.margin,
    )
    return report, candidate
