"""The worker's metrics of what committed, and of the models it serves (``docs/observability.md``).

Each committed record counts under one outcome (``catalogue.OUTCOMES``); an answered one also gives its
latencies, all taken from what its item already carries: the record's Kafka timestamp and fetch time,
its inference call's start, its unit's reply time, and its device's fallback report
(``pipeline/contract/fallbacks.py``). Nothing here allocates per record beyond the floats it observes;
a unit's results are observed together, per (model, version) (``WorkerMetrics.answered_many``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import NamedTuple

from edgestream.pipeline.contract.fallbacks import reported_fallbacks
from edgestream.pipeline.errors import ContractError, EdgestreamError, ReplayedRequest, StaleCapture
from edgestream.pipeline.observability.metrics import WorkerMetrics
from edgestream.pipeline.serving.served import ModelCatalog, ModelKey
from edgestream.workers.edge.admission import Item


def outcome_of(err: EdgestreamError) -> str:
    """The outcome a dead letter counts under: ``replayed``; ``refused`` when it is the device's fault
    (a contract error: bad input, unauthentic, misplaced, unknown model, over its rate); else
    ``dead_letter`` (the system's: stale by the time it was read, inference or output failures)."""
    if isinstance(err, ReplayedRequest):
        return "replayed"
    if isinstance(err, ContractError) and not isinstance(err, StaleCapture):
        return "refused"
    return "dead_letter"


def observe_committed(
    metrics: WorkerMetrics, items: Iterable[Item], started_s: float | None, replied_ms: float | None
) -> None:
    """Count ``items``, whose outputs just committed: a unit whose processing started at monotonic
    ``started_s`` (None: unknown) and whose replies were sent at wall-clock ``replied_ms`` (None: none
    sent)."""
    now_ms = time.time() * 1000.0
    now_s = time.monotonic()
    mono_to_wall_ms = now_ms - now_s * 1000.0  # a monotonic time in s, as wall-clock ms
    any_item = False
    answered: dict[ModelKey, _Durations] = {}  # observed per (model, version) once the unit is counted
    for item in items:
        any_item = True
        env, served, answer, err = item.envelope, item.model, item.answer, item.error
        if err is None and env is not None and served is not None:
            durations = answered.get(served.key)
            if durations is None:
                durations = answered[served.key] = _Durations([], [], [], [])
            capture_ms = env.capture_time_ms
            durations.end_to_end.append((now_ms - capture_ms) / 1000.0)
            if replied_ms is not None:
                durations.round_trip.append((replied_ms - capture_ms) / 1000.0)
            durations.queue_wait.append(
                (item.arrived_s * 1000.0 + mono_to_wall_ms - item.timestamp_ms) / 1000.0
            )
            durations.batch_wait.append(
                answer.started_s - item.arrived_s if answer and answer.started_s else 0.0
            )
            if item.headers:
                metrics.device_fallbacks(served.key[0], reported_fallbacks(item.headers))
        elif err is not None:
            metrics.dead_letter(err.reason, outcome_of(err))
    for (name, version), durations in answered.items():
        metrics.answered_many(
            name,
            version,
            end_to_end_s=durations.end_to_end,
            round_trip_s=None if replied_ms is None else durations.round_trip,
            queue_wait_s=durations.queue_wait,
            batch_wait_s=durations.batch_wait,
        )
    if any_item and started_s is not None:
        metrics.unit(now_s - started_s)


class _Durations(NamedTuple):
    """The durations of a unit's committed results of one (model, version), in seconds."""

    end_to_end: list[float]
    round_trip: list[float]
    queue_wait: list[float]
    batch_wait: list[float]


def note_models(metrics: WorkerMetrics, catalog: ModelCatalog) -> None:
    """The models ``catalog`` serves now (``model_info``) and the registry revision applied of each."""
    for served in catalog.models.values():
        a = served.artifact
        metrics.model_info(a.name, a.version, a.sha256, served.session.providers_in_use[0])
        metrics.revisions.set(a.name, catalog.revision(a.name))
