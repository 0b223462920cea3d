"""The learning loop, told by the demo while its fleet runs: shift, drift, retrain, canary, rollback.

Before any worker starts, ``story_registry.prepare_registry`` makes the zoo's reference model the
stable version of the story's model; the workers follow ``control.models`` from then on.
:class:`Story` then runs beside the fleet (in a process of its own: ``story_process``) and moves on only
when the system itself says so:

1. the devices send the original inputs for ``baseline_s``;
2. their scanners change (``pipeline.models.shift``): embeddings come from the first half of the
   shifted data, until the aggregator flags a window of the model that began after the change for
   drift (PSI past its threshold);
3. once ``min_samples`` labelled samples answered since the shift are on the cloud topics, devices move
   to the second half of the shifted data (inputs the retrained model never sees in training) and the
   model is retrained on those samples; the candidate is published (signed) and put in canary;
4. the rollout controller (``workers.rollout_controller``) judges the canary from the edge's summaries and the
   labels, and advances it stage by stage (waiting for every worker to apply each stage) to stable;
5. a deliberately bad candidate (trained on inverted labels) is published and put in canary; the
   controller rolls it back on accuracy; the story waits until every worker has applied the rollback,
   then lets the fleet send ``tail_s`` more, so the summary can show that no device kept it.

Every wait is bounded (``step_timeout_s``): a step that does not happen ends the story early with the
reason (``StoryReport.stalled``), and the demo reports it rather than pretending.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from edgestream.pipeline import kafka
from edgestream.pipeline.errors import EdgestreamError
from edgestream.pipeline.learning.rollout import Bounds, Verdict
from edgestream.pipeline.registry.reports import TopicWorkerView
from edgestream.topics.catalogue import SUMMARIES_TOPIC
from edgestream.workers.local.stall import SUMMARY_PARTITIONS, Judged, summaries_held
from edgestream.workers.rollout_controller import Controller

if TYPE_CHECKING:
    from edgestream.pipeline.learning.retrain import LabelledSet, RetrainReport
    from edgestream.pipeline.registry.signing import SigningKey
    from edgestream.pipeline.settings import KafkaSettings
    from edgestream.workers.local.fleet_settings import Inputs

log = logging.getLogger(__name__)

T = TypeVar("T")

STORY_MODEL: Final = "embedding-scorer"
"""The model the story retrains: the one whose samples carry features."""
_HELD_LOG_S: Final = 20.0
"""How often a canary the controller keeps holding is logged, with why."""


class StorySettings(BaseModel):
    """Story settings (``EDGESTREAM_DEMO_STORY__*``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    """Tell the story; False: the fleet sends the original inputs for ``duration_s`` and nothing rolls
    out (the workers serve their locally built models)."""
    baseline_s: float = Field(default=20.0, ge=0)
    """How long the devices send the original inputs before their scanners change."""
    tail_s: float = Field(default=10.0, ge=0)
    """After every worker applied the rollback, how long the fleet keeps sending."""
    step_timeout_s: float = Field(default=150.0, gt=0)
    """Bound on each wait (drift flagged, samples gathered, a canary judged, a rollback applied)."""
    min_samples: int = Field(default=200, ge=20)
    """Labelled samples since the shift that retraining waits for."""
    stages: tuple[float, ...] = (0.2, 0.5, 1.0)
    """Canary stages of both candidates."""
    rollout: Bounds = Bounds(min_requests=60, min_labelled=40, stage_dwell_ms=5_000, max_p99_ratio=3.0)
    """The rollout controller's bounds: a demo's small evidence and short dwell, and a p99 bound wide
    enough for an overloaded 2-core box, where latency is queueing that every version shares."""
    controller_interval_s: float = Field(default=1.0, gt=0)
    """Time between the controller's steps."""


@dataclass(frozen=True, slots=True)
class StoryEvent:
    """Something that happened, for the summary and the plot."""

    t_s: float
    """Seconds since the fleet started."""
    kind: str
    """``shift``, ``drift``, ``retrained``, ``canary``, ``advance``, ``promote``, ``rollback``,
    ``applied``, ``bad-candidate``, ``end``."""
    text: str
    """One line for people."""
    version: int | None = None


@dataclass(slots=True)
class StoryReport:
    """What the story did and measured."""

    model: str
    reference: int
    """The stable version at the start (the zoo's reference model)."""
    retrained: int | None = None
    bad: int | None = None
    events: list[StoryEvent] = field(default_factory=list)
    verdicts: list[tuple[float, Verdict]] = field(default_factory=list)
    """The controller's advance/rollback verdicts (holds left out), with their time."""
    drift: dict[str, Any] | None = None
    """The first window flagged after the shift: region, version, start, samples, max PSI, feature."""
    retrain: dict[str, Any] | None = None
    """The retrained candidate's report (samples, split, accuracies, margin)."""
    bad_retrain: dict[str, Any] | None = None
    """The bad candidate's report."""
    rollback_s: float | None = None
    """Bad canary published -> rollback published, seconds."""
    rollback_applied_s: float | None = None
    """Rollback published -> every worker serving the rolled-back state, seconds."""
    rollback_applied_at_s: float | None = None
    """When every worker had applied the rollback, seconds since the fleet started."""
    shift_at_s: float | None = None
    switch_at_s: float | None = None
    """When devices moved to the second half of the shifted data."""
    stalled: str | None = None
    """The step that did not happen in time, when the story ended early."""
    drift_windows: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Region windows of the model wholly ``before`` and wholly ``after`` the shift: how many were
    judged (enough samples), how many of those flagged, the largest PSI judged (`count_drift`)."""

    def role(self, version: int) -> str:
        """``reference``, ``retrained`` or ``bad``: what ``version`` is in the story (else ``other``)."""
        roles = {self.reference: "reference", self.retrained: "retrained", self.bad: "bad"}
        return roles.get(version, "other")

    @property
    def completed(self) -> bool:
        """The whole story happened."""
        return self.stalled is None and self.rollback_applied_at_s is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "model": self.model,
            "versions": {"reference": self.reference, "retrained": self.retrained, "bad": self.bad},
            "events": [
                {"t_s": e.t_s, "kind": e.kind, "text": e.text, "version": e.version} for e in self.events
            ],
            "verdicts": [
                {"t_s": t, "action": v.action, "reasons": list(v.reasons), "revision": v.revision}
                for t, v in self.verdicts
            ],
            "drift": self.drift,
            "retrain": self.retrain,
            "bad_retrain": self.bad_retrain,
            "rollback_s": self.rollback_s,
            "rollback_applied_s": self.rollback_applied_s,
            "rollback_applied_at_s": self.rollback_applied_at_s,
            "shift_at_s": self.shift_at_s,
            "switch_at_s": self.switch_at_s,
            "stalled": self.stalled,
            "completed": self.completed,
            "drift_windows": self.drift_windows,
        }


class StoryStalled(EdgestreamError):
    """A step of the story did not happen within its bound."""

    reason = "story_stalled"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- the story --------------------------------------------------------------------------------------


class Story:
    """Runs the steps of the module docstring beside the fleet, which it tells which inputs to send through
    ``set_inputs``; sets ``stop`` when done (always). Times are counted from ``started_at`` (the fleet's
    start, unix seconds)."""

    def __init__(
        self,
        settings: StorySettings,
        *,
        kafka: KafkaSettings,
        home: Path,
        set_inputs: Callable[[Inputs], None],
        started_at: float,
        view_url: str,
        regions: frozenset[str],
        reference: int,
        model: str = STORY_MODEL,
        on_event: Callable[[StoryEvent], None] = lambda _e: None,
    ) -> None:
        self.settings = settings
        self._kafka = kafka
        self._home = home
        self._set_inputs = set_inputs
        self._started_at = started_at
        self._view_url = view_url
        self._workers = TopicWorkerView(kafka, regions=regions, max_age_s=30.0)
        self._regions = regions
        self._model = model
        self._on_event = on_event
        self._controller = Controller(
            kafka, settings.rollout, signer=self._signer(), workers=self._workers, regions=regions
        )
        from edgestream.pipeline.registry.client import RegistryClient

        self._registry = RegistryClient(kafka, signer=self._signer(), kept=True)
        """The story's own reads and writes of the registry: one consumer kept for the whole story."""
        self.report = StoryReport(model, reference)
        self._held: tuple[str, ...] = ()
        """Why the controller's last step held: named when a wait on a canary stalls."""
        self._judged = Judged()
        """What the controller's steps of the current wait read: named with a stall."""
        self._judging: int | None = None
        """The canary version the controller was last asked to judge."""

    def _signer(self) -> SigningKey:
        """The demo's registry key (``story_registry.prepare_registry`` made it): it signs every state
        the story publishes."""
        from edgestream.pipeline.registry.signing import SIGNING_KEY_FILE, SigningKey

        return SigningKey.load(self._home / "registry" / SIGNING_KEY_FILE)

    async def run(self, stop: asyncio.Event) -> StoryReport:
        """The whole story; ``stop`` is set when it ends, stalled or not (a cancel, e.g. because the
        fleet's time ran out first, is recorded as a stall too)."""
        try:
            await self._steps()
        except asyncio.CancelledError:
            self.report.stalled = "the fleet's time limit ended first"
            self._event("end", "stalled: the fleet's time limit ended first")
        except StoryStalled as e:
            self.report.stalled = str(e)
            self._event("end", f"stalled: {e}")
            log.warning("the story stalled: %s", e)
        finally:
            stop.set()
            async with contextlib.AsyncExitStack() as stack:  # each closed, even when one fails
                stack.push_async_callback(self._registry.close)
                stack.push_async_callback(self._workers.close)
                stack.push_async_callback(self._controller.close)
        return self.report

    # -- steps --------------------------------------------------------------------------------------

    async def _steps(self) -> None:
        s = self.settings
        await asyncio.sleep(s.baseline_s)
        shift_ms = _now_ms()
        self._set_inputs("shifted-a")
        self.report.shift_at_s = self._t()
        self._event("shift", "scanners change to a 1.3x pixel pitch (first half of the shifted data)")

        self.report.drift = await self._bounded("the aggregator to flag drift", self._drift_flagged(shift_ms))
        d = self.report.drift
        self._event(
            "drift",
            f"drift flagged: {d['region']} v{d['version']} window of {d['samples']} samples, "
            f"PSI {d['psi']:.2f} ({d['test']}) > calibrated threshold {d['threshold']:.2f}",
            d["version"],
        )

        data = await self._bounded(f"{s.min_samples} labelled samples", self._labelled(shift_ms))
        self._set_inputs("shifted-b")
        self.report.switch_at_s = self._t()
        good, report, _ = await self._retrain(data, inverted=False)
        self.report.retrained, self.report.retrain = good, _report_dict(report)
        self._event(
            "retrained",
            f"v{good} retrained on {report.joined} labelled samples ({report.distinct} distinct): "
            f"holdout {report.candidate_accuracy:.3f} vs v{report.stable_version} "
            f"{report.stable_accuracy:.3f}; devices now send inputs it never trained on",
            good,
        )
        await self._canary(good)
        await self._bounded(f"v{good}'s canary to end", self._judge_until_done(good))

        bad, bad_report, bad_onnx = await self._retrain(data, inverted=True)
        self.report.bad, self.report.bad_retrain = bad, _report_dict(bad_report)
        from edgestream.pipeline.learning.retrain import evaluate

        true_accuracy = await asyncio.to_thread(evaluate, bad_onnx, data.X, data.y)
        self.report.bad_retrain["true_accuracy"] = true_accuracy
        self._event(
            "bad-candidate",
            f"v{bad} trained on inverted labels (a label bug, on purpose): offline holdout "
            f"{bad_report.candidate_accuracy:.3f} against those labels, {true_accuracy:.3f} against the "
            "true ones",
            bad,
        )
        started = time.monotonic()
        await self._canary(bad)
        revision, rolled_back = await self._bounded(f"v{bad}'s canary to end", self._judge_until_done(bad))
        self.report.rollback_s = rolled_back - started
        await self._bounded("every worker to apply the rollback", self._workers_at(revision))
        self.report.rollback_applied_s = time.monotonic() - rolled_back
        self.report.rollback_applied_at_s = self._t()
        applied_s = self.report.rollback_applied_s
        self._event("applied", f"every worker serves revision {revision} ({applied_s:.1f} s after)")
        await asyncio.sleep(s.tail_s)
        self._event("end", "the story is over")

    async def _drift_flagged(self, shift_ms: int) -> dict[str, Any]:
        while True:
            view = await asyncio.to_thread(_get_json, self._view_url + "/windows")
            for row in (view or {}).get("windows", []):
                drift = row.get("drift") or {}
                if (
                    row.get("model") == self._model
                    and row.get("region") in self._regions
                    and int(row["start_ms"]) >= shift_ms  # wholly after: not a straddling one
                    and drift.get("flagged")
                ):
                    return {
                        "region": row["region"],
                        "version": row["version"],
                        "start_ms": row["start_ms"],
                        "samples": drift["samples"],
                        "max_psi": drift["max_psi"],
                        "psi": drift["worst_psi"],
                        "test": drift["worst_test"],
                        "worst_feature": drift["worst_feature"],
                        "threshold": drift["threshold"],
                    }
            await asyncio.sleep(1.0)

    async def _labelled(self, shift_ms: int) -> LabelledSet:
        from edgestream.workers.retrainer import CloudTail, labelled

        async with CloudTail(self._kafka, shift_ms) as tail:  # each record read once over the polls
            while True:
                data = labelled(await tail.read(), self._model, shift_ms, _now_ms())
                log.info("story: %d labelled samples since the shift", data.joined)
                if data.joined >= self.settings.min_samples:
                    return data
                await asyncio.sleep(2.0)

    async def _retrain(self, data: LabelledSet, *, inverted: bool) -> tuple[int, RetrainReport, bytes]:
        """Retrain on ``data`` (labels inverted for the bad candidate) and publish it: its version, the
        report, the ONNX bytes."""
        from edgestream.pipeline.learning.retrain import retrain
        from edgestream.pipeline.models import spec
        from edgestream.pipeline.registry import LocalArtifactStore, SigningKey, TrustedKeys
        from edgestream.pipeline.registry.publishing import publish_artifact
        from edgestream.pipeline.registry.signing import load_verified

        root = self._home / "registry"
        store = LocalArtifactStore(root / "artifacts")
        state = (await self._registry.read_states())[self._model]
        assert state.stable is not None
        stable = state.manifest(state.stable)
        stable_onnx = load_verified(store, stable, TrustedKeys.load(root / "trusted-keys.json"))
        if inverted:
            data = replace(data, y=1 - data.y)
        report, candidate = await asyncio.to_thread(
            retrain, data, stable.manifest.variant, state.stable, stable_onnx
        )
        lineage = report.lineage()
        if inverted:
            lineage["demo"] = "trained on inverted labels on purpose: the rollout must roll it back"
        published = await publish_artifact(
            self._kafka,
            store,
            SigningKey.load(root / "signing-key.pem"),
            spec(self._model, stable.manifest.variant),
            candidate.onnx_bytes,
            metrics=report.metrics(),
            lineage=lineage,
        )
        return published.latest, report, candidate.onnx_bytes

    async def _canary(self, version: int) -> None:
        from edgestream.pipeline.registry.state import start_canary

        state = (await self._registry.read_states())[self._model]
        state = start_canary(state, version, now_ms=_now_ms(), stages=self.settings.stages, reason="demo")
        await self._registry.publish_state(state)
        assert state.canary is not None
        self._event("canary", f"v{version} canary at {state.canary.fraction:.0%} of devices", version)

    async def _judge_until_done(self, version: int) -> tuple[int, float]:
        """Step the controller until ``version``'s canary ends; the revision that ended it and when it
        was published (``time.monotonic``)."""
        self._judging = version
        logged = time.monotonic()
        while True:
            began = time.monotonic()
            verdict = await self._controller.step(self._model)
            published = time.monotonic()
            self._held = verdict.reasons if verdict.action == "hold" else ()
            self._judged.step(self._controller.records_read.get("summaries", 0))
            if self._held and published - logged >= _HELD_LOG_S:
                logged = published
                parts = ", ".join(f"{k} {v:.1f}" for k, v in self._controller.timings.items())
                log.info(
                    "v%d held (step %.1f s: %s): %s", version, published - began, parts, "; ".join(self._held)
                )
            if verdict.action != "hold":
                self.report.verdicts.append((self._t(), verdict))
                action = verdict.action
                text = f"{action}: {verdict.reason}"
                if action == "advance" and verdict.canary is not None:
                    text = f"v{version} advances ({verdict.canary.describe()})"
                self._event(action, text, version)
                state = (await self._registry.read_states())[self._model]
                if state.canary is None:
                    if state.stable == version:
                        self._event("promote", f"v{version} is stable", version)
                    assert verdict.revision is not None
                    return verdict.revision, published
            await asyncio.sleep(self.settings.controller_interval_s)

    async def _workers_at(self, revision: int) -> None:
        while True:
            revisions = await self._workers.revisions(self._model)
            if revisions and all(r is not None and r >= revision for r in revisions):
                return
            await asyncio.sleep(0.5)

    # -- helpers ------------------------------------------------------------------------------------

    async def _bounded(self, what: str, step: Awaitable[T]) -> T:
        self._held, self._judged = (), Judged()
        try:
            return await asyncio.wait_for(step, self.settings.step_timeout_s)
        except TimeoutError:
            held = (
                f" (the controller held: {'; '.join(self._held)}; {await self._judging_facts()})"
                if self._held
                else ""
            )
            raise StoryStalled(f"waited {self.settings.step_timeout_s:g} s for {what}{held}") from None

    async def _judging_facts(self) -> str:
        """What a held canary's stall leaves to go on: what the controller read, the registry's revision
        and the workers' (a fact that cannot be had in a few seconds is named as missing)."""
        try:
            async with asyncio.timeout(5.0):
                revision = (await self._registry.read_states())[self._model].revision
                workers = await self._workers.revisions(self._model)
        except Exception as err:  # a diagnostic: never in the way of the stall it explains
            return f"{self._judged.describe()}; revisions not read ({type(err).__name__})"
        facts = f"{self._judged.describe()}; registry at revision {revision}, workers at {workers}"
        if self._judging is None:
            return facts
        try:
            async with asyncio.timeout(5.0):
                unstable = await kafka.unstable_records(
                    self._kafka,
                    kafka.partitions([(SUMMARIES_TOPIC, SUMMARY_PARTITIONS)]),
                    client_id="story-stall",
                )
        except Exception as err:
            return f"{facts}; {SUMMARIES_TOPIC}'s open transactions not read ({type(err).__name__})"
        return f"{facts}; {summaries_held(self._model, self._judging, self._regions, unstable)}"

    def _t(self) -> float:
        return time.time() - self._started_at

    def _event(self, kind: str, text: str, version: int | None = None) -> None:
        event = StoryEvent(round(self._t(), 2), kind, text, version)
        self.report.events.append(event)
        log.info("story %.1f s: %s", event.t_s, text)
        self._on_event(event)


def count_drift(
    story: StoryReport, windows: list[dict[str, Any]], started_at_s: float, window_s: float
) -> dict[str, dict[str, Any]]:
    """For the aggregator's ``windows`` of the story's model wholly before and wholly after the shift:
    judged (``MIN_SAMPLES`` or more), flagged among them, and the largest judged PSI."""
    from edgestream.pipeline.learning.drift import MIN_SAMPLES

    out: dict[str, dict[str, Any]] = {
        side: {"judged": 0, "flagged": 0, "max_psi": None} for side in ("before", "after")
    }
    if story.shift_at_s is None:
        return out
    shift_s = started_at_s + story.shift_at_s
    for row in windows:
        drift = row.get("drift") or {}
        if row.get("model") != story.model or int(drift.get("samples") or 0) < MIN_SAMPLES:
            continue
        start_s = int(row["start_ms"]) / 1000
        side = "before" if start_s + window_s <= shift_s else "after" if start_s >= shift_s else None
        if side is None:
            continue
        entry = out[side]
        entry["judged"] += 1
        entry["flagged"] += int(bool(drift.get("flagged")))
        psi = drift.get("max_psi")
        if psi is not None:
            entry["max_psi"] = psi if entry["max_psi"] is None else max(entry["max_psi"], psi)
    return out


def _report_dict(report: RetrainReport) -> dict[str, Any]:
    return {
        "joined": report.joined,
        "distinct": report.distinct,
        "train_size": report.train_size,
        "holdout_size": report.holdout_size,
        "candidate_accuracy": report.candidate_accuracy,
        "stable_version": report.stable_version,
        "stable_accuracy": report.stable_accuracy,
        "margin": report.margin,
    }


def _get_json(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            value = json.load(response)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
