"""The edge worker as a process: health and metrics endpoints, keys and models loaded, then the worker
run until asked to stop, with what its metrics need around it: the consumer lag timer and the refusals
observed (``pipeline/observability/``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from edgestream.pipeline.observability.health import HealthServer, Readiness
from edgestream.pipeline.observability.metrics import WorkerMetrics
from edgestream.pipeline.observability.refusals import RefusalLog, refusal_kind
from edgestream.pipeline.observability.tracing import tracing_from_env
from edgestream.pipeline.security.keysource import KeySource
from edgestream.pipeline.serving.served import load_models
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.edge.status import WorkerStats
from edgestream.workers.edge.worker import EdgeWorker

log = logging.getLogger(__name__)


async def serve(settings: WorkerSettings, stop: asyncio.Event) -> WorkerStats:
    """Load keys and models, run a worker until ``stop`` is set, return its counters.

    With ``health_port`` set, /livez, /readyz and /metrics answer from before the models load, so an
    orchestrator sees "not ready" rather than nothing while they do. Tracing is on when the ``OTEL_*``
    variables say so (``pipeline/observability/tracing.py``); a tracing setting it cannot honour
    stops it here, before anything is consumed.
    """
    readiness = Readiness(stall_after_s=settings.stall_after_s)
    metrics = WorkerMetrics(region=settings.region, node=settings.resolved_node_id())
    node = settings.resolved_node_id()
    tracing = tracing_from_env(
        "edgestream-worker", {"edgestream.region": settings.region, "service.instance.id": node}
    )
    async with contextlib.AsyncExitStack() as stack:
        if tracing is not None:
            stack.callback(tracing.shutdown)  # exports what is buffered
        stack.enter_context(RefusalLog(metrics.refusal))
        if settings.health_port is not None:
            server = HealthServer(
                live=readiness.live,
                ready=readiness.ready,
                registry=metrics.registry,
                host=settings.health_host,
                port=settings.health_port,
            )
            await stack.enter_async_context(server)
            log.info("health and metrics on http://%s:%d/", settings.health_host, server.port)
        source = KeySource.of(
            settings.key_file, settings.keys_secret, default_file=settings.home / "keys.json"
        )
        keyring = source.watcher(required_regions=[settings.region])
        models = await asyncio.to_thread(load_models, settings)
        worker = EdgeWorker(
            settings,
            keyring=keyring,
            models=models,
            metrics=metrics,
            readiness=readiness,
            tracer=None if tracing is None else tracing.tracer,
        )
        try:
            async with worker, _watching_lag(metrics, worker):
                await worker.run(stop)
        except BaseException as err:
            _count_refusal(metrics, err)
            raise
    return worker.stats


@contextlib.asynccontextmanager
async def _watching_lag(metrics: WorkerMetrics, worker: EdgeWorker) -> AsyncIterator[None]:
    """Update the consumer lag gauges on a timer while the worker runs."""
    task = asyncio.create_task(metrics.lag.watch(worker.fetches.offsets), name="lag")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _count_refusal(metrics: WorkerMetrics, err: BaseException) -> None:
    """Count the error that ended the worker if it is a refusal (authorization, TLS)."""
    kind = refusal_kind(err)
    if kind is not None:
        metrics.refusal(kind)
        log.error("refused: %s (%r)", kind, err)
