"""Prometheus metrics of one worker process, kept in a registry of their own.

Each :class:`WorkerMetrics` owns a ``CollectorRegistry`` (never the process-global one), so tests and
several workers in one process do not collide;
:class:`~edgestream.pipeline.observability.health.HealthServer` serves it on ``/metrics``. Every
series carries the worker's ``region`` and ``node`` as constant labels.

Hot path: the labelled children are created once and cached, so a call costs a dictionary lookup and
the client's own increment (a lock and an add), not a ``labels()`` resolution per record. Label values
must come from bounded sets (served models, reason codes), never from devices or requests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger(__name__)

END_TO_END_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)
"""Buckets of the end-to-end latency, dense around the 50 ms SLA so its quantiles read true."""
UNIT_BUCKETS_S: tuple[float, ...] = END_TO_END_BUCKETS_S
"""Buckets of a unit's duration (infer + commit): it spends the same budget."""
INFERENCE_BUCKETS_S: tuple[float, ...] = (
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
)
"""Buckets of one onnxruntime call: sub-millisecond for tiny models up to a second for a large batch."""
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
"""Buckets of the records in one onnxruntime call."""
CONSTANT_LABELS: tuple[str, str] = ("region", "node")
"""Labels every series carries, with the values given to :class:`WorkerMetrics`."""


class WorkerMetrics:
    """The metrics of one edge worker, with cheap update methods for its hot path.

    Counters count what was *committed* (results, dead letters), except ``records_consumed`` (fetched)
    and ``transactions{outcome="aborted"}``/``rewinds`` (what failed). Not thread-safe beyond what
    ``prometheus_client`` guarantees (each update is atomic); the worker calls it from its event loop.
    """

    def __init__(
        self,
        *,
        region: str,
        node: str,
        dead_letter_reasons: Iterable[str] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        """Create every metric in ``registry`` (a fresh one by default).

        ``dead_letter_reasons`` are created at 0 so ``increase()`` sees a reason's first dead letter.
        """
        self.region = region
        """Value of the ``region`` label on every series."""
        self.node = node
        """Value of the ``node`` label on every series."""
        self.registry = registry if registry is not None else CollectorRegistry()
        """Where the metrics live; what ``/metrics`` exposes."""
        self._values = (region, node)
        self._create_counters(self.registry)
        self._create_histograms(self.registry)
        self._create_gauges(self.registry)
        self._create_children(dead_letter_reasons)

    def _create_counters(self, reg: CollectorRegistry) -> None:
        """The counter families: what was fetched, committed, aborted and re-read."""
        const = CONSTANT_LABELS
        self._consumed_total = Counter(
            "edgestream_records_consumed_total",
            "Records fetched from the ingest topics (before any validation).",
            const,
            registry=reg,
        )
        self._results_total = Counter(
            "edgestream_results_total",
            "Results committed, by model and model version.",
            (*const, "model", "version"),
            registry=reg,
        )
        self._dead_letters_total = Counter(
            "edgestream_dead_letters_total",
            "Dead letters committed, by reason code.",
            (*const, "reason"),
            registry=reg,
        )
        self._transactions_total = Counter(
            "edgestream_transactions_total",
            "Units of work whose outputs and offsets committed, or whose commit failed (aborted).",
            (*const, "outcome"),
            registry=reg,
        )
        self._rewinds_total = Counter(
            "edgestream_rewinds_total",
            "Partitions re-read from their committed offset after a failed commit.",
            const,
            registry=reg,
        )
        self._registry_refused_total = Counter(
            "edgestream_registry_refused_total",
            "Registry states (control.models) not applied, by reason: unsigned_state, untrusted_signer, "
            "bad_signature, stale_revision, bad_registry_record, artifact_mismatch...",
            (*const, "reason"),
            registry=reg,
        )

    def _create_histograms(self, reg: CollectorRegistry) -> None:
        """The histogram families: latencies, inference durations and batch sizes."""
        const = CONSTANT_LABELS
        self._end_to_end_seconds = Histogram(
            "edgestream_end_to_end_seconds",
            "Capture time on the device to result produced at the worker, of committed results.",
            const,
            registry=reg,
            buckets=END_TO_END_BUCKETS_S,
        )
        self._inference_seconds = Histogram(
            "edgestream_inference_seconds",
            "Duration of one onnxruntime call, by model.",
            (*const, "model"),
            registry=reg,
            buckets=INFERENCE_BUCKETS_S,
        )
        self._batch_size = Histogram(
            "edgestream_batch_size",
            "Records in one onnxruntime call, by model.",
            (*const, "model"),
            registry=reg,
            buckets=BATCH_SIZE_BUCKETS,
        )
        self._unit_seconds = Histogram(
            "edgestream_unit_seconds",
            "Duration of a whole unit of work: checks, inference, outputs and commit.",
            const,
            registry=reg,
            buckets=UNIT_BUCKETS_S,
        )

    def _create_gauges(self, reg: CollectorRegistry) -> None:
        """The gauge families: records held, partitions, backpressure and the models served."""
        const = CONSTANT_LABELS
        self._in_flight_records = Gauge(
            "edgestream_in_flight_records",
            "Records held: fetched and not yet committed.",
            const,
            registry=reg,
        )
        self._partitions_assigned = Gauge(
            "edgestream_partitions_assigned",
            "Input partitions assigned to this worker.",
            const,
            registry=reg,
        )
        self._paused = Gauge(
            "edgestream_paused",
            "1 while the worker has paused its partitions for backpressure, else 0.",
            const,
            registry=reg,
        )
        self._model_info = Gauge(
            "edgestream_model_info",
            "1 for each model served: its version, ONNX sha256 and onnxruntime execution provider.",
            (*const, "model", "version", "sha256", "provider"),
            registry=reg,
        )

    def _create_children(self, dead_letter_reasons: Iterable[str]) -> None:
        """The cached children of the series labelled by the constant labels only; the dead-letter
        reasons' series, at 0."""
        values = self._values
        self._consumed = self._consumed_total.labels(*values)
        self._committed = self._transactions_total.labels(*values, "committed")
        self._aborted = self._transactions_total.labels(*values, "aborted")
        self._rewinds = self._rewinds_total.labels(*values)
        self._end_to_end = self._end_to_end_seconds.labels(*values)
        self._unit = self._unit_seconds.labels(*values)
        self._in_flight = self._in_flight_records.labels(*values)
        self._partitions = self._partitions_assigned.labels(*values)
        self._paused_child = self._paused.labels(*values)
        self._paused_child.set(0)
        self._results: dict[tuple[str, int], Counter] = {}
        self._dead_letters: dict[str, Counter] = {}
        self._inference: dict[str, tuple[Histogram, Histogram]] = {}
        self._info_labels: dict[str, tuple[str, str, str]] = {}
        for reason in dead_letter_reasons:
            self._dead_letter_child(reason)

    # -- hot path ----------------------------------------------------------------------------------

    def consumed(self, n: int = 1) -> None:
        """``n`` records were fetched."""
        self._consumed.inc(n)

    def result(self, model: str, version: int, e2e_s: float) -> None:
        """A result of ``model`` v``version`` committed, ``e2e_s`` after its capture.

        A negative ``e2e_s`` (device clock ahead, within the allowed skew) is observed as 0 so the
        histogram's sum stays monotonic.
        """
        child = self._results.get((model, version))
        if child is None:
            child = self._result_child(model, version)
        child.inc()
        self._end_to_end.observe(e2e_s if e2e_s > 0.0 else 0.0)

    def dead_letter(self, reason: str) -> None:
        """A dead letter with reason code ``reason`` committed."""
        child = self._dead_letters.get(reason)
        if child is None:
            child = self._dead_letter_child(reason)
        child.inc()

    def unit(self, committed: bool, seconds: float) -> None:
        """A unit of work ended: committed (every partition's commit succeeded) or not, in ``seconds``."""
        (self._committed if committed else self._aborted).inc()
        self._unit.observe(seconds)

    def inference(self, model: str, batch_size: int, seconds: float) -> None:
        """One onnxruntime call of ``model`` on ``batch_size`` records took ``seconds``."""
        children = self._inference.get(model)
        if children is None:
            children = self._inference_children(model)
        children[0].observe(seconds)
        children[1].observe(batch_size)

    def rewind(self) -> None:
        """A partition was re-read from its committed offset."""
        self._rewinds.inc()

    def set_in_flight(self, n: int) -> None:
        """``n`` records are held (fetched, not yet committed)."""
        self._in_flight.set(n)

    def set_partitions(self, n: int) -> None:
        """``n`` input partitions are assigned."""
        self._partitions.set(n)

    def set_paused(self, paused: bool) -> None:
        """Whether the partitions are paused for backpressure."""
        self._paused_child.set(1 if paused else 0)

    # -- models ------------------------------------------------------------------------------------

    def registry_refused(self, reason: str) -> None:
        """A registry state was refused with reason code ``reason`` (the worker kept what it served)."""
        self._registry_refused_total.labels(*self._values, reason).inc()

    def model_info(self, model: str, version: int, sha256: str, provider: str) -> None:
        """``model`` is served as ``version`` (ONNX ``sha256``) on ``provider``.

        Replaces the model's previous info series, if any, so a model has one ``model_info`` series.
        Also creates the model's result and inference series at 0.
        """
        labels = (str(version), sha256, provider)
        previous = self._info_labels.get(model)
        if previous is not None and previous != labels:
            self._model_info.remove(*self._values, model, *previous)
        self._info_labels[model] = labels
        self._model_info.labels(*self._values, model, *labels).set(1)
        self._result_child(model, version)
        self._inference_children(model)
        log.debug("model_info %s v%d %s on %s", model, version, sha256[:12], provider)

    # -- children ----------------------------------------------------------------------------------

    def _result_child(self, model: str, version: int) -> Counter:
        child = self._results.get((model, version))
        if child is None:
            child = self._results_total.labels(*self._values, model, str(version))
            self._results[(model, version)] = child
        return child

    def _dead_letter_child(self, reason: str) -> Counter:
        child = self._dead_letters.get(reason)
        if child is None:
            child = self._dead_letters_total.labels(*self._values, reason)
            self._dead_letters[reason] = child
        return child

    def _inference_children(self, model: str) -> tuple[Histogram, Histogram]:
        children = self._inference.get(model)
        if children is None:
            children = (
                self._inference_seconds.labels(*self._values, model),
                self._batch_size.labels(*self._values, model),
            )
            self._inference[model] = children
        return children
