"""Prometheus metrics of the cloud processes: the aggregator and the rollout controller.

Each serves its own registry on ``/metrics`` (the aggregator on its faust web server, beside
``/windows``; the rollout controller on the health server the worker uses), with the constant labels
``region="cloud"`` and ``node`` (the host). Names: ``catalogue.METRICS_AGGREGATOR`` and
``catalogue.METRICS_ROLLOUT``.

The aggregator's regions and models come from records other principals write (``cloud.summaries``),
not from a fixed list: :class:`BoundedLabel` keeps the first :data:`MAX_LABEL_VALUES` values of each and
counts the rest under ``other``, so no writer can grow the series without bound.
"""

from __future__ import annotations

import socket

from prometheus_client import CollectorRegistry, Counter, Gauge

from edgestream.pipeline.observability import catalogue as names
from edgestream.pipeline.observability.catalogue import CLOUD_REGION, CONSTANT_LABELS
from edgestream.pipeline.observability.lag import ConsumerLag
from edgestream.pipeline.observability.process import ProcessMetrics, RevisionGauge

MAX_LABEL_VALUES = 64
"""Most distinct values a :class:`BoundedLabel` keeps."""
OTHER = "other"
"""The value the rest count under."""


class BoundedLabel:
    """A label's values, the first ``limit`` as they are and any later one as :data:`OTHER`."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._limit = limit
        self._kept: set[str] = set()

    def __call__(self, value: str) -> str:
        """``value`` if kept (or room is left to keep it), else :data:`OTHER`."""
        if value in self._kept:
            return value
        if len(self._kept) < self._limit:
            self._kept.add(value)
            return value
        return OTHER


class AggregatorMetrics(ProcessMetrics):
    """Records read per topic, windows opened, windows flagged for drift, consumer lag, readiness."""

    def __init__(self, *, node: str | None = None, registry: CollectorRegistry | None = None) -> None:
        super().__init__(region=CLOUD_REGION, node=node or socket.gethostname(), registry=registry)
        const, reg = CONSTANT_LABELS, self.registry
        self._records = Counter(
            names.AGGREGATOR_RECORDS, "Records read, by topic.", (*const, "topic"), registry=reg
        )
        self._windows = Counter(
            names.AGGREGATOR_WINDOWS, "Windows opened, by region.", (*const, "region"), registry=reg
        )
        self._flagged = Counter(
            names.AGGREGATOR_DRIFT_FLAGGED,
            "Windows flagged for drift (each once), by region and model.",
            (*const, "region", "model"),
            registry=reg,
        )
        self.lag = ConsumerLag(reg, self._values)
        """Consumer lag of the aggregator's input partitions."""
        self._topics: dict[str, Counter] = {}
        self._regions = BoundedLabel()
        self._models = BoundedLabel()

    def record(self, topic: str) -> None:
        """A record of ``topic`` (one of the aggregator's own inputs: a bounded set) was read."""
        child = self._topics.get(topic)
        if child is None:
            child = self._topics[topic] = self._records.labels(*self._values, topic)
        child.inc()

    def window_opened(self, region: str) -> None:
        """A window of ``region`` was opened."""
        self._windows.labels(*self._values, self._regions(region)).inc()

    def drift_flagged(self, region: str, model: str) -> None:
        """A window of ``region`` and ``model`` was flagged for drift (for the first time)."""
        self._flagged.labels(*self._values, self._regions(region), self._models(model)).inc()


class RolloutMetrics(ProcessMetrics):
    """The stage of each version of the watched models, advances, rollbacks, revision read, readiness."""

    def __init__(self, *, node: str | None = None, registry: CollectorRegistry | None = None) -> None:
        super().__init__(region=CLOUD_REGION, node=node or socket.gethostname(), registry=registry)
        const, reg = CONSTANT_LABELS, self.registry
        self._stage = Gauge(
            names.ROLLOUT_STAGE,
            "Share of devices (0..1) routed to each served version of a model.",
            (*const, "model", "version"),
            registry=reg,
        )
        self._advances = Counter(
            names.ROLLOUT_ADVANCES, "Canary stages advanced.", (*const, "model"), registry=reg
        )
        self._rollbacks = Counter(
            names.ROLLOUT_ROLLBACKS, "Canaries rolled back.", (*const, "model"), registry=reg
        )
        self.revisions = RevisionGauge(reg, self._values, "Registry revision (control.models) last read.")
        """Registry revision the controller last read, per model."""
        self._staged: dict[str, set[str]] = {}

    def watch(self, model: str) -> None:
        """Create ``model``'s counters at 0 (so a first advance or rollback is an increase)."""
        self._advances.labels(*self._values, model)
        self._rollbacks.labels(*self._values, model)

    def state(self, model: str, revision: int, shares: dict[int, float]) -> None:
        """``model``'s state at ``revision`` routes ``shares`` of devices to each version; versions no
        longer routed to lose their series."""
        self.revisions.set(model, revision)
        versions = {str(v) for v in shares}
        for gone in self._staged.get(model, set()) - versions:
            self._stage.remove(*self._values, model, gone)
        self._staged[model] = versions
        for version, share in shares.items():
            self._stage.labels(*self._values, model, str(version)).set(share)

    def advanced(self, model: str) -> None:
        """The controller advanced ``model``'s canary."""
        self._advances.labels(*self._values, model).inc()

    def rolled_back(self, model: str) -> None:
        """The controller rolled ``model``'s canary back."""
        self._rollbacks.labels(*self._values, model).inc()
