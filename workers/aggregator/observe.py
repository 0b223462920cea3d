"""The aggregator's metrics (``pipeline/observability/cloud.py``), served on its faust web server at
``/metrics``, beside the ``/windows`` view (same host and port: ``web_host``/``web_port``).

A faust sensor counts each record delivered to the agents, by topic, and notes its Kafka timestamp for
the consumer lag; a timer sets the lag from the consumer's fetch state (faust runs the aiokafka
consumer in a thread of its own; its state is read without an await). Another timer computes the view's
rows and counts each window flagged for drift once. Ready: partitions assigned, the tables recovered,
no rebalance in progress.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import faust
from faust.sensors import Sensor
from prometheus_client import generate_latest

from edgestream.pipeline.observability.cloud import AggregatorMetrics
from edgestream.pipeline.observability.health import METRICS_CONTENT_TYPE
from edgestream.pipeline.observability.lag import INTERVAL_S, consumer_offsets

log = logging.getLogger(__name__)

METRICS_PATH: Final = "/metrics"
"""Where the aggregator's web server serves its metrics."""
FLAG_INTERVAL_S: Final = 10.0
"""How often the windows are checked for new drift flags."""

Rows = Callable[[], Awaitable[list[dict[str, Any]]]]
"""The view's rows now (``view.joined_rows`` over the tables, once their drift thresholds are
simulated off the loop)."""


class _Counting(Sensor):
    """Counts each record delivered to a stream, by topic, and notes its timestamp for the lag."""

    def __init__(self, metrics: AggregatorMetrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._metrics = metrics

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        self._metrics.record(tp.topic)
        self._metrics.lag.fetched(tp, float(message.timestamp) * 1000.0)


class FlaggedWindows:
    """Counts each window flagged for drift once, while it is held."""

    def __init__(self, metrics: AggregatorMetrics) -> None:
        self._metrics = metrics
        self._counted: set[str] = set()

    def observe(self, rows: list[dict[str, Any]]) -> None:
        """Count the windows of ``rows`` flagged for the first time; forget windows no longer held."""
        held: set[str] = set()
        for row in rows:
            key = row["key"]
            held.add(key)
            if row["drift"].get("flagged") and key not in self._counted:
                self._counted.add(key)
                self._metrics.drift_flagged(row["region"], row["model"])
        self._counted &= held


def ready(app: faust.App) -> tuple[bool, str]:
    """Partitions assigned, tables recovered, no rebalance in progress: (ready, reason)."""
    try:
        if app.rebalancing:
            return False, "rebalancing"
        recovery: Any = getattr(app.tables, "recovery", None)
        if recovery is None or not recovery.completed.is_set():
            return False, "tables recovering"
        if not app.consumer.assignment():
            return False, "no partitions assigned"
    except Exception as err:  # not started yet, or stopping
        return False, f"not running: {err!r}"
    return True, "ok"


def _consumer(app: faust.App) -> Any:
    """The aiokafka consumer faust's consumer thread runs; None before it starts."""
    thread = getattr(app.consumer, "_thread", None)
    return getattr(thread, "_consumer", None)


def add_metrics(app: faust.App, metrics: AggregatorMetrics, rows: Rows) -> None:
    """The sensor, the timers and the ``/metrics`` page of ``metrics`` on ``app``."""
    app.sensors.add(_Counting(metrics))
    metrics.watch_ready(lambda: ready(app))
    flagged = FlaggedWindows(metrics)

    @app.page(METRICS_PATH)
    async def serve_metrics(web: Any, request: Any) -> Any:
        del request
        return web.bytes(generate_latest(metrics.registry), headers={"Content-Type": METRICS_CONTENT_TYPE})

    @app.timer(interval=INTERVAL_S)  # type: ignore[untyped-decorator]
    async def update_lag() -> None:
        consumer = _consumer(app)
        if consumer is not None:
            try:
                metrics.lag.update(consumer_offsets(consumer), time.time() * 1000.0)
            except Exception:  # the thread changed the assignment mid-read: the next tick reads again
                log.debug("consumer lag not updated", exc_info=True)

    @app.timer(interval=FLAG_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def count_flagged() -> None:
        # A timer that raises crashes the whole app (faust): one window the view could not judge
        # stopped the aggregator, and the changelog brought it back at every restart.
        try:
            flagged.observe(await rows())
        except Exception:  # judged again at the next tick
            log.exception("counting the windows flagged for drift failed")

    del serve_metrics, update_lag, count_flagged
