"""Automatic rollout: judge a canary against stable from the edge's partial summaries, and advance its
stage or roll it back.

:class:`Bounds` (what counts as a regression), :class:`VersionStats` (one version's counts since the
canary started, from ``cloud.summaries``), :func:`judge` (advance, hold or rollback, with the reasons
and numbers). The process that reads the registry state and the summaries, judges and publishes the
transition is ``edgestream.workers.rollout_controller``.

Which dead letters are the version's fault (``MODEL_ERROR_REASONS``): only those that depend on the
version that answered, ``infer_failed`` (onnxruntime failed on the input) and ``bad_shape`` (the input
does not fit the version's spec: a candidate whose input spec changed fails here). ``bad_shape`` counts
only when the two versions' input specs differ (:func:`error_reasons`): with the same spec, a malformed
input fails on either version and says nothing about the one it was routed to. Every other reason is
decided before or regardless of the version (``replayed``, ``stale``, ``rate_limited``, ``bad_tag``,
``unknown_key``, ``retired_key``, ``forgotten_device``, ``bad_compression``, ``bad_body``,
``undecodable``, ``oversized``, ``unknown_model``, ``broker``...): those say something about the
device or the network, not the model, so they count neither as errors nor as requests of the version.
A version's *requests* are therefore its answers plus its model errors.

Accuracy needs labels: the answers of ``cloud.samples`` joined by request id with ``cloud.labels``
(:func:`accuracy_by_version`). It is judged only when both versions have ``min_labelled`` joined pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgestream.pipeline.contract.cloud import (
    LATENCY_BOUNDS_MS,
    Label,
    PartialSummary,
    Sample,
    merge,
    percentile_ms,
)
from edgestream.pipeline.registry.signing import SignedManifest
from edgestream.pipeline.registry.state import ModelState

MODEL_ERROR_REASONS: Final = frozenset({"infer_failed", "bad_shape"})
"""Dead-letter reasons that can be the answering version's fault (see the module docstring)."""
SAME_SPEC_ERROR_REASONS: Final = frozenset({"infer_failed"})
"""The version's fault when stable and canary take the same input spec."""


def error_reasons(stable: SignedManifest, canary: SignedManifest) -> frozenset[str]:
    """Which dead-letter reasons count against the versions: ``bad_shape`` only when their input specs
    (dtype and shape) differ."""
    a, b = stable.manifest, canary.manifest
    same = (a.input_dtype, tuple(a.input_shape)) == (b.input_dtype, tuple(b.input_shape))
    return SAME_SPEC_ERROR_REASONS if same else MODEL_ERROR_REASONS


Action = Literal["advance", "hold", "rollback"]


class Bounds(BaseModel):
    """What the canary may not do worse than stable, and how much evidence a verdict needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_error_rate_increase: float = Field(default=0.02, ge=0.0, le=1.0)
    """Canary error rate minus stable's (absolute: 0.02 = two points) above which it rolls back."""
    max_p99_ratio: float = Field(default=1.5, ge=1.0)
    """Canary p99 latency over stable's above which it rolls back (bucket upper bounds compared)."""
    max_accuracy_drop: float = Field(default=0.03, ge=0.0, le=1.0)
    """Stable accuracy minus canary's (absolute) above which it rolls back, when labels exist."""
    min_requests: int = Field(default=100, ge=1)
    """Requests each version must have (since the canary started) before either is judged."""
    min_latency_requests: int = Field(default=300, ge=1)
    """Requests each version must have before their p99 latencies are compared: the p99 of fewer is
    close to their slowest request, which one slow batch decides."""
    min_labelled: int = Field(default=100, ge=1)
    """Labelled answers each version must have before accuracy is judged."""
    stage_dwell_ms: int = Field(default=600_000, ge=0)
    """Time a stage must have served before the canary advances (a rollback does not wait)."""


@dataclass(frozen=True, slots=True)
class VersionStats:
    """One version's counts since the canary started."""

    version: int
    """The model version."""
    results: int = 0
    """Requests answered."""
    dead_letters: Mapping[str, int] = field(default_factory=dict)
    """Dead letters by reason: model errors and input errors."""
    latency_buckets: Sequence[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))
    """Answers per latency bucket (``LATENCY_BOUNDS_MS``)."""
    labelled: int = 0
    """Answers joined with a label."""
    correct: int = 0
    """Of those, how many matched the label."""
    error_reasons: frozenset[str] = MODEL_ERROR_REASONS
    """The dead-letter reasons counted as the version's errors (:func:`error_reasons`)."""

    @property
    def model_errors(self) -> int:
        """Dead letters that are the version's fault (``error_reasons``)."""
        return sum(n for reason, n in self.dead_letters.items() if reason in self.error_reasons)

    @property
    def requests(self) -> int:
        """Requests the version was judged on: answers plus model errors."""
        return self.results + self.model_errors

    @property
    def error_rate(self) -> float:
        """Model errors over requests; 0.0 with no requests."""
        return self.model_errors / self.requests if self.requests else 0.0

    @property
    def p99_ms(self) -> float | None:
        """Upper bound of the bucket of the 99th-percentile answer (``inf`` past the last bound)."""
        return percentile_ms(self.latency_buckets, 99)

    @property
    def accuracy(self) -> float | None:
        """Correct over labelled answers; None without labels."""
        return self.correct / self.labelled if self.labelled else None

    def describe(self) -> str:
        """One line for logs and the CLI."""
        p99 = "-" if self.p99_ms is None else f"{self.p99_ms:g}ms"
        acc = "-" if self.accuracy is None else f"{self.accuracy:.3f} of {self.labelled}"
        return f"v{self.version}: {self.requests} req, error {self.error_rate:.2%}, p99 {p99}, accuracy {acc}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :func:`judge` decided, and why."""

    action: Action
    """``advance`` the stage, ``hold`` (not enough evidence yet), or ``rollback`` the canary."""
    reasons: tuple[str, ...]
    """Why, with the numbers: every bound broken for a rollback, what is missing for a hold."""
    stable: VersionStats | None = None
    """The stable version's stats judged (None when there was no canary)."""
    canary: VersionStats | None = None
    """The canary's stats judged."""
    revision: int | None = None
    """The registry revision published by the controller for this verdict, else None."""

    @property
    def reason(self) -> str:
        """The reasons as one history entry."""
        return "; ".join(self.reasons)


def judge(
    stable: VersionStats,
    canary: VersionStats,
    bounds: Bounds,
    *,
    stage_age_ms: int,
    worker_revisions: Sequence[int | None] | None = None,
    revision: int | None = None,
    labels: bool = False,
) -> Verdict:
    """Roll back on any broken bound (as soon as both versions have ``min_requests``; neither the dwell
    nor a lagging worker delays a rollback); advance when nothing is broken, the stage has served
    ``stage_dwell_ms`` and every worker reports ``revision`` (``worker_revisions`` None: not checked);
    else hold. ``labels``: labels are read for this model, so a stage advances only once each version
    has ``min_labelled`` labelled answers (a canary whose accuracy is not known yet is not promoted on
    its error rate alone); False where no labels ever come."""
    short = [s for s in (stable, canary) if s.requests < bounds.min_requests]
    if short:
        return Verdict(
            "hold",
            tuple(f"v{s.version} has {s.requests} of {bounds.min_requests} requests" for s in short),
            stable,
            canary,
        )
    broken = _regressions(stable, canary, bounds)
    if broken:
        return Verdict("rollback", tuple(broken), stable, canary)
    waiting: list[str] = []
    if stage_age_ms < bounds.stage_dwell_ms:
        waiting.append(f"stage served {stage_age_ms} of {bounds.stage_dwell_ms} ms")
    if labels:
        waiting.extend(
            f"v{s.version} has {s.labelled} of {bounds.min_labelled} labelled answers"
            for s in (stable, canary)
            if s.labelled < bounds.min_labelled
        )
    if worker_revisions is not None:
        if not worker_revisions:
            waiting.append("no worker reports the model")
        lagging = [r for r in worker_revisions if r != revision]
        if lagging:
            waiting.append(
                f"{len(lagging)} of {len(worker_revisions)} workers not at revision {revision} "
                f"(at {sorted(lagging, key=lambda r: -1 if r is None else r)})"
            )
    if waiting:
        return Verdict("hold", tuple(waiting), stable, canary)
    return Verdict("advance", (f"healthy: {canary.describe()} vs {stable.describe()}",), stable, canary)


def _regressions(stable: VersionStats, canary: VersionStats, bounds: Bounds) -> list[str]:
    broken = []
    increase = canary.error_rate - stable.error_rate
    if increase > bounds.max_error_rate_increase:
        broken.append(
            f"error rate {canary.error_rate:.2%} vs stable {stable.error_rate:.2%} "
            f"(+{increase:.2%} > {bounds.max_error_rate_increase:.2%}; "
            f"{canary.model_errors} of {canary.requests}: {_model_errors(canary)})"
        )
    stable_p99, canary_p99 = stable.p99_ms, canary.p99_ms
    if (
        stable_p99 is not None
        and canary_p99 is not None
        and min(stable.requests, canary.requests) >= bounds.min_latency_requests
        and canary_p99 > stable_p99 * bounds.max_p99_ratio
    ):
        broken.append(
            f"p99 latency {canary_p99:g}ms vs stable {stable_p99:g}ms (> {bounds.max_p99_ratio:g}x)"
        )
    stable_acc, canary_acc = stable.accuracy, canary.accuracy
    if (
        stable_acc is not None
        and canary_acc is not None
        and min(stable.labelled, canary.labelled) >= bounds.min_labelled
        and stable_acc - canary_acc > bounds.max_accuracy_drop
    ):
        broken.append(
            f"accuracy {canary_acc:.3f} vs stable {stable_acc:.3f} "
            f"(-{stable_acc - canary_acc:.3f} > {bounds.max_accuracy_drop:.3f}; "
            f"{canary.labelled} labelled)"
        )
    return broken


def _model_errors(stats: VersionStats) -> str:
    return ", ".join(f"{r} {n}" for r, n in sorted(stats.dead_letters.items()) if r in stats.error_reasons)


def version_stats(
    summaries: Iterable[PartialSummary],
    model: str,
    version: int,
    *,
    since_ms: int,
    accuracy: Mapping[int, tuple[int, int]] | None = None,
    reasons: frozenset[str] = MODEL_ERROR_REASONS,
) -> VersionStats:
    """``version``'s summaries of ``model`` whose ``at_ms`` is at or after ``since_ms``, merged
    (``accuracy``: version -> (labelled, correct), from :func:`accuracy_by_version`; ``reasons``: the
    dead letters counted as its errors)."""
    picked = [s for s in summaries if s.model == model and s.model_version == version and s.at_ms >= since_ms]
    merged = merge(picked)
    labelled, correct = (accuracy or {}).get(version, (0, 0))
    return VersionStats(
        version=version,
        results=merged["results"],
        dead_letters=dict(merged["dead_letters"]),
        latency_buckets=list(merged["latency"]),
        labelled=labelled,
        correct=correct,
        error_reasons=reasons,
    )


def accuracy_by_version(
    samples: Iterable[Sample], labels: Iterable[Label], model: str, *, since_ms: int
) -> dict[int, tuple[int, int]]:
    """Per version of ``model``: (answers joined with a label, correct ones), over the samples answered
    at or after ``since_ms``; a request id seen twice counts once."""
    truth = {label.request_id: label.label for label in labels if label.model == model}
    seen: set[bytes] = set()
    out: dict[int, tuple[int, int]] = {}
    for sample in samples:
        if sample.model != model or sample.at_ms < since_ms or sample.request_id in seen:
            continue
        expected = truth.get(sample.request_id)
        if expected is None:
            continue
        seen.add(sample.request_id)
        labelled, correct = out.get(sample.model_version, (0, 0))
        out[sample.model_version] = (labelled + 1, correct + int(sample.label == expected))
    return out


def stage_started_ms(state: ModelState) -> int:
    """When the canary's current stage began: its last ``canary``/``advance`` history entry."""
    canary = state.canary
    assert canary is not None
    for entry in reversed(state.history):
        if entry.version == canary.version and entry.action in ("canary", "advance"):
            return entry.at_ms
    return canary.started_at_ms
