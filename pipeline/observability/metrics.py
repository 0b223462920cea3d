"""Prometheus metrics of one edge worker process, kept in a registry of their own.

:class:`~edgestream.pipeline.observability.health.HealthServer` serves the registry on ``/metrics``.
Every series carries the worker's ``region`` and ``node`` as constant labels; the names are in
``catalogue.py`` and their meaning in ``docs/observability.md`` ("Metrics").

Hot path: the labelled children are created once and cached (per model and version, per reason, per
outcome), so a call costs a dictionary lookup and the client's own updates (a lock and an add each), not
a ``labels()`` resolution per record. Label values must come from bounded sets (served models and
versions, reason codes, outcomes, topics and partitions), never from devices or requests.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edgestream.pipeline.observability import catalogue as names
from edgestream.pipeline.observability.catalogue import CONSTANT_LABELS, OUTCOMES, REFUSAL_KINDS
from edgestream.pipeline.observability.lag import ConsumerLag
from edgestream.pipeline.observability.process import ProcessMetrics, RevisionGauge

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
"""Buckets of the latencies a request spends (end to end, round trip, queue and batch waits, a unit, a
commit): dense around the 50 ms SLA so its quantiles read true."""
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
MAX_FALLBACKS_PER_RECORD = 1000
"""Most fallbacks one record's report may add (the report is the device's word: bounded)."""


def observe_all(histogram: Histogram, values: Sequence[float]) -> None:
    """Observe each of ``values`` in ``histogram`` (a child, its labels resolved): the series exposed
    are those of ``histogram.observe`` per value (the sum up to float rounding), at one locked add per
    bucket touched and one for the sum instead of two per value. Uses the client's internals (its
    buckets' upper bounds, one value per bucket counting observations up to its bound and above the
    previous one, and the sum): a client without them is called per value; a NaN is observed alone."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total_value = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total_value is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    total = 0.0
    for value in values:
        if value != value:  # NaN: no bucket takes it (observe's own way)
            histogram.observe(value)
            continue
        counts[bisect_left(bounds, value)] += 1
        total += value
    total_value.inc(total)
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)


class _ModelSeries:
    """The cached children of one (model, version)."""

    __slots__ = ("batch_size", "batch_wait", "inference", "queue_wait", "results", "round_trip")

    def __init__(self, metrics: WorkerMetrics, labels: tuple[str, ...]) -> None:
        self.results = metrics._results_total.labels(*labels)
        self.round_trip = metrics._round_trip_seconds.labels(*labels)
        self.queue_wait = metrics._queue_wait_seconds.labels(*labels)
        self.batch_wait = metrics._batch_wait_seconds.labels(*labels)
        self.inference = metrics._inference_seconds.labels(*labels)
        self.batch_size = metrics._batch_size.labels(*labels)


class WorkerMetrics(ProcessMetrics):
    """The metrics of one edge worker, with cheap update methods for its hot path.

    Counters count what was *committed* (results, dead letters, records by outcome, device fallbacks),
    except ``records_consumed`` (fetched), ``transactions{outcome="aborted"}`` and ``rewinds`` (what
    failed) and ``refusals`` (when seen). Not thread-safe beyond what ``prometheus_client`` guarantees
    (each update is atomic); the worker calls it from its event loop.
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

        ``dead_letter_reasons`` are created at 0 so ``increase()`` sees a reason's first dead letter;
        so are every outcome and refusal kind.
        """
        super().__init__(region=region, node=node, registry=registry)
        self._create_counters()
        self._create_histograms()
        self._create_gauges(self.registry)
        self.lag = ConsumerLag(self.registry, self._values)
        """Consumer lag of the input partitions (updated on a timer by the process)."""
        self.revisions = RevisionGauge(
            self.registry, self._values, "Registry revision (control.models) applied, by model."
        )
        """Registry revision applied per model."""
        self._create_children(dead_letter_reasons)

    def _counter(self, name: str, help_text: str, *labels: str) -> Counter:
        return Counter(name, help_text, (*CONSTANT_LABELS, *labels), registry=self.registry)

    def _create_counters(self) -> None:
        """The counter families: what was fetched, committed, aborted, re-read, refused, reported."""
        self._consumed_total = self._counter(
            names.RECORDS_CONSUMED, "Records fetched from the ingest topics."
        )
        self._results_total = self._counter(
            names.RESULTS, "Results committed, by model and model version.", "model", "version"
        )
        self._dead_letters_total = self._counter(
            names.DEAD_LETTERS, "Dead letters committed, by reason.", "reason"
        )
        self._records_total = self._counter(
            names.RECORDS,
            "Records committed, by outcome: result, dead_letter (the system's fault), replayed, refused "
            "(the device's fault).",
            "outcome",
        )
        self._transactions_total = self._counter(
            names.TRANSACTIONS,
            "Commits of merged units whose outputs and offsets committed, or whose commit failed (aborted).",
            "outcome",
        )
        self._rewinds_total = self._counter(
            names.REWINDS, "Partitions re-read from their committed offset after a failed commit."
        )
        self._registry_refused_total = self._counter(
            names.REGISTRY_REFUSED,
            "Registry states (control.models) not applied, by reason: unsigned_state, untrusted_signer, "
            "bad_signature, stale_revision, bad_registry_record, artifact_mismatch...",
            "reason",
        )
        self._fallbacks_total = self._counter(
            names.DEVICE_FALLBACKS, "Fallbacks the devices report on their next record, by model.", "model"
        )
        self._refusals_total = self._counter(
            names.REFUSALS, "TLS and authorization refusals the worker observed, by kind.", "kind"
        )

    def _histogram(self, name: str, help_text: str, buckets: tuple[float, ...], *labels: str) -> Histogram:
        return Histogram(
            name, help_text, (*CONSTANT_LABELS, *labels), registry=self.registry, buckets=buckets
        )

    def _create_histograms(self) -> None:
        """The histogram families: latencies, inference durations and batch sizes."""
        mv = ("model", "version")
        b = END_TO_END_BUCKETS_S
        self._end_to_end_seconds = self._histogram(
            names.END_TO_END, "Capture time on the device to the commit of its result.", b
        )
        self._unit_seconds = self._histogram(names.UNIT, "A unit's processing start to its commit.", b)
        self._commit_seconds = self._histogram(
            names.COMMIT, "One commit (transaction) of the merged staged units.", b
        )
        self._round_trip_seconds = self._histogram(
            names.ROUND_TRIP, "Capture time on the device to the worker sending its reply.", b, *mv
        )
        self._queue_wait_seconds = self._histogram(
            names.QUEUE_WAIT, "A record's Kafka timestamp to its fetch by the worker.", b, *mv
        )
        self._batch_wait_seconds = self._histogram(
            names.BATCH_WAIT, "A record's fetch to the start of its inference call.", b, *mv
        )
        self._inference_seconds = self._histogram(
            names.INFERENCE, "Duration of one onnxruntime call.", INFERENCE_BUCKETS_S, *mv
        )
        self._batch_size = self._histogram(
            names.BATCH_SIZE, "Records in one onnxruntime call.", BATCH_SIZE_BUCKETS, *mv
        )

    def _create_gauges(self, reg: CollectorRegistry) -> None:
        """The gauge families: records held, partitions, backpressure and the models served."""
        const = CONSTANT_LABELS
        self._in_flight_records = Gauge(
            names.IN_FLIGHT, "Records held: fetched and not yet committed.", const, registry=reg
        )
        self._partitions_assigned = Gauge(
            names.PARTITIONS_ASSIGNED, "Input partitions assigned to this worker.", const, registry=reg
        )
        self._paused = Gauge(
            names.PAUSED,
            "1 while the worker has paused fetching for backpressure, else 0.",
            const,
            registry=reg,
        )
        self._model_info = Gauge(
            names.MODEL_INFO,
            "1 for each model served: its version, ONNX sha256 and onnxruntime execution provider.",
            (*const, "model", "version", "sha256", "provider"),
            registry=reg,
        )

    def _create_children(self, dead_letter_reasons: Iterable[str]) -> None:
        """The cached children of the series labelled by the constant labels only (and outcomes and
        refusal kinds); the dead-letter reasons' series, at 0."""
        values = self._values
        self._consumed = self._consumed_total.labels(*values)
        self._committed = self._transactions_total.labels(*values, "committed")
        self._aborted = self._transactions_total.labels(*values, "aborted")
        self._rewinds = self._rewinds_total.labels(*values)
        self._end_to_end = self._end_to_end_seconds.labels(*values)
        self._unit = self._unit_seconds.labels(*values)
        self._commit = self._commit_seconds.labels(*values)
        self._in_flight = self._in_flight_records.labels(*values)
        self._partitions = self._partitions_assigned.labels(*values)
        self._paused_child = self._paused.labels(*values)
        self._paused_child.set(0)
        self._outcomes = {outcome: self._records_total.labels(*values, outcome) for outcome in OUTCOMES}
        self._answered = self._outcomes["result"]
        for kind in REFUSAL_KINDS:
            self._refusals_total.labels(*values, kind)
        self._models: dict[tuple[str, int], _ModelSeries] = {}
        self._dead_letters: dict[str, Counter] = {}
        self._fallbacks: dict[str, Counter] = {}
        self._info_labels: dict[str, tuple[str, str, str]] = {}
        for reason in dead_letter_reasons:
            self._dead_letter_child(reason)

    # -- hot path ----------------------------------------------------------------------------------

    def consumed(self, n: int = 1) -> None:
        """``n`` records were fetched."""
        self._consumed.inc(n)

    def answered(
        self,
        model: str,
        version: int,
        *,
        end_to_end_s: float,
        round_trip_s: float | None,
        queue_wait_s: float,
        batch_wait_s: float,
    ) -> None:
        """A result of ``model`` v``version`` committed: ``end_to_end_s`` after its capture; its reply
        was sent ``round_trip_s`` after it (None: no reply); it waited ``queue_wait_s`` in Kafka and
        ``batch_wait_s`` in the worker before its inference call.

        A negative duration (a device clock ahead, within the allowed skew) is observed as 0 so each
        histogram's sum stays monotonic.
        """
        series = self._models.get((model, version))
        if series is None:
            series = self._model_series(model, version)
        series.results.inc()
        self._answered.inc()
        self._end_to_end.observe(end_to_end_s if end_to_end_s > 0.0 else 0.0)
        if round_trip_s is not None:
            series.round_trip.observe(round_trip_s if round_trip_s > 0.0 else 0.0)
        series.queue_wait.observe(queue_wait_s if queue_wait_s > 0.0 else 0.0)
        series.batch_wait.observe(batch_wait_s if batch_wait_s > 0.0 else 0.0)

    def answered_many(
        self,
        model: str,
        version: int,
        *,
        end_to_end_s: Sequence[float],
        round_trip_s: Sequence[float] | None,
        queue_wait_s: Sequence[float],
        batch_wait_s: Sequence[float],
    ) -> None:
        """`answered` for each of ``len(end_to_end_s)`` results of ``model`` v``version`` (the i-th
        result's durations at index i; ``round_trip_s`` None: no replies), at one update per bucket
        touched (`observe_all`) instead of one per result."""
        series = self._models.get((model, version))
        if series is None:
            series = self._model_series(model, version)
        series.results.inc(len(end_to_end_s))
        self._answered.inc(len(end_to_end_s))
        observe_all(self._end_to_end, [s if s > 0.0 else 0.0 for s in end_to_end_s])
        if round_trip_s is not None:
            observe_all(series.round_trip, [s if s > 0.0 else 0.0 for s in round_trip_s])
        observe_all(series.queue_wait, [s if s > 0.0 else 0.0 for s in queue_wait_s])
        observe_all(series.batch_wait, [s if s > 0.0 else 0.0 for s in batch_wait_s])

    def dead_letter(self, reason: str, outcome: str = "dead_letter") -> None:
        """A dead letter with reason code ``reason`` committed; ``outcome`` one of :data:`OUTCOMES`
        other than ``result``."""
        child = self._dead_letters.get(reason)
        if child is None:
            child = self._dead_letter_child(reason)
        child.inc()
        self._outcomes[outcome].inc()

    def device_fallbacks(self, model: str, n: int) -> None:
        """A committed record of ``model`` reported ``n`` fallbacks of its device (bounded here)."""
        if n <= 0:
            return
        child = self._fallbacks.get(model)
        if child is None:
            child = self._fallback_child(model)
        child.inc(min(n, MAX_FALLBACKS_PER_RECORD))

    def commit(self, committed: bool, seconds: float) -> None:
        """A commit of merged units ended: committed (every partition's commit succeeded) or not, in
        ``seconds``."""
        (self._committed if committed else self._aborted).inc()
        self._commit.observe(seconds)

    def unit(self, seconds: float) -> None:
        """A unit committed ``seconds`` after its processing started."""
        self._unit.observe(seconds if seconds > 0.0 else 0.0)

    def inference(self, model: str, version: int, batch_size: int, seconds: float) -> None:
        """One onnxruntime call of ``model`` v``version`` on ``batch_size`` records took ``seconds``."""
        series = self._models.get((model, version))
        if series is None:
            series = self._model_series(model, version)
        series.inference.observe(seconds)
        series.batch_size.observe(batch_size)

    def rewind(self) -> None:
        """A partition was re-read from its committed offset."""
        self._rewinds.inc()

    def refusal(self, kind: str) -> None:
        """A refusal of ``kind`` (``catalogue.REFUSAL_KINDS``) was observed."""
        self._refusals_total.labels(*self._values, kind).inc()

    def set_in_flight(self, n: int) -> None:
        """``n`` records are held (fetched, not yet committed)."""
        self._in_flight.set(n)

    def set_partitions(self, n: int) -> None:
        """``n`` input partitions are assigned."""
        self._partitions.set(n)

    def set_paused(self, paused: bool) -> None:
        """Whether fetching is paused for backpressure."""
        self._paused_child.set(1 if paused else 0)

    # -- models ------------------------------------------------------------------------------------

    def registry_refused(self, reason: str) -> None:
        """A registry state was refused with reason code ``reason`` (the worker kept what it served)."""
        self._registry_refused_total.labels(*self._values, reason).inc()

    def model_info(self, model: str, version: int, sha256: str, provider: str) -> None:
        """``model`` is served as ``version`` (ONNX ``sha256``) on ``provider``.

        Replaces the model's previous info series, if any, so a model has one ``model_info`` series.
        Also creates the version's result, latency and inference series and the model's fallbacks at 0.
        """
        labels = (str(version), sha256, provider)
        previous = self._info_labels.get(model)
        if previous is not None and previous != labels:
            self._model_info.remove(*self._values, model, *previous)
        self._info_labels[model] = labels
        self._model_info.labels(*self._values, model, *labels).set(1)
        self._model_series(model, version)
        self._fallback_child(model)
        log.debug("model_info %s v%d %s on %s", model, version, sha256[:12], provider)

    # -- children ----------------------------------------------------------------------------------

    def _model_series(self, model: str, version: int) -> _ModelSeries:
        series = self._models.get((model, version))
        if series is None:
            series = _ModelSeries(self, (*self._values, model, str(version)))
            self._models[(model, version)] = series
        return series

    def _fallback_child(self, model: str) -> Counter:
        child = self._fallbacks.get(model)
        if child is None:
            child = self._fallbacks[model] = self._fallbacks_total.labels(*self._values, model)
        return child

    def _dead_letter_child(self, reason: str) -> Counter:
        child = self._dead_letters.get(reason)
        if child is None:
            child = self._dead_letters_total.labels(*self._values, reason)
            self._dead_letters[reason] = child
        return child
