"""What every long-running process's metrics share: a registry of their own, the constant labels
``region`` and ``node``, the ``edgestream_ready`` gauge and the registry revision gauge.

Each process (edge worker, aggregator, rollout controller) owns a ``CollectorRegistry`` (never the
process-global one), so tests and several workers in one process do not collide; its ``/metrics``
serves that registry.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge

from edgestream.pipeline.observability.catalogue import CONSTANT_LABELS, READY, REGISTRY_REVISION

ReadyProbe = Callable[[], tuple[bool, str]]
"""Asked at each scrape: (ready, reason), as the health server's ``/readyz`` asks it."""


class ProcessMetrics:
    """A process's registry, constant labels and ready gauge (0 until told otherwise)."""

    def __init__(self, *, region: str, node: str, registry: CollectorRegistry | None = None) -> None:
        self.region = region
        """Value of the ``region`` label on every series."""
        self.node = node
        """Value of the ``node`` label on every series."""
        self.registry = registry if registry is not None else CollectorRegistry()
        """Where the metrics live; what ``/metrics`` exposes."""
        self._values = (region, node)
        self._ready = Gauge(
            READY,
            "1 while the process is ready (as /readyz says), else 0.",
            CONSTANT_LABELS,
            registry=self.registry,
        ).labels(*self._values)
        self._ready.set(0)

    def watch_ready(self, probe: ReadyProbe) -> None:
        """Read readiness from ``probe`` at each scrape (what ``/readyz`` answers, so the two agree)."""
        self._ready.set_function(lambda: 1.0 if probe()[0] else 0.0)

    def set_ready(self, ready: bool) -> None:
        """Set readiness (for a process without a probe)."""
        self._ready.set(1 if ready else 0)


class RevisionGauge:
    """``edgestream_registry_revision{model}``: the registry revision applied (or read) per model."""

    def __init__(self, registry: CollectorRegistry, values: tuple[str, str], help_text: str) -> None:
        self._gauge = Gauge(REGISTRY_REVISION, help_text, (*CONSTANT_LABELS, "model"), registry=registry)
        self._values = values

    def set(self, model: str, revision: int | None) -> None:
        """``model``'s revision; None (none applied yet) leaves the series absent."""
        if revision is not None:
            self._gauge.labels(*self._values, model).set(revision)
