"""Liveness, readiness and ``/metrics`` of a worker process over a tiny, strict HTTP/1.1 server.

    GET /livez    200 "ok", or 503 and the reason: a fatal error, or a main loop that stopped turning
    GET /readyz   200 "ok", or 503 and the reason: models not loaded, no partitions, fatal, stalled
    GET /metrics  the worker's registry in the Prometheus text format (0.0.4)

One request per connection (``Connection: close``), GET only (405 otherwise), 404 for other paths,
400 for anything that does not parse. The request line and headers must arrive within
``read_timeout_s`` (else 408) and fit in 8 KiB (else 431); a body is never read. At
most ``max_connections`` are served at once (more are closed unanswered), so slow or hostile clients
cost bounded memory and never hold up the others. The server runs on the worker's event loop: if
that loop is blocked, probes time out, which is the truthful answer. The connection handling and the
request parser are shared with the artifact server (``pipeline/httpserve.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from prometheus_client import CollectorRegistry, generate_latest

from edgestream.pipeline.httpserve import TEXT_CONTENT_TYPE, BadRequest, BoundedServer, read_head

log = logging.getLogger(__name__)

Probe = Callable[[], tuple[bool, str]]
"""Asked on each probe request: (healthy, reason). The reason is the body of a 503."""

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What ``generate_latest`` writes: the classic text format (prometheus_client's ``choose_encoder``
announces the same when the scraper asks for no other)."""
MAX_REASON_BYTES = 1024
"""A probe's reason is cut to this many bytes in the response body."""
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Readiness:
    """What the worker knows about its own health; it updates the fields, probes read them.

    **Ready** means: models loaded, at least one partition assigned, not fatal, not stalled. The
    partitions matter because a consumer-group worker that loaded its models but owns no partition
    (more workers than partitions, or mid-rebalance) serves nothing; Kubernetes must not count it as
    available capacity (rollouts, PodDisruptionBudgets, dashboards of ready replicas).

    **Live** means: not fatal, and the main loop made progress within ``stall_after_s``: a unit
    committed, or an idle poll found nothing to do. A loop that is wedged (a commit that never
    returns, a lock never released) is not live, and a restart is the cure. The clock starts at
    construction, so loading models counts against ``stall_after_s`` too; give Kubernetes a
    ``startupProbe`` if loading can take longer.
    """

    def __init__(self, *, stall_after_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not stall_after_s > 0:
            raise ValueError(f"stall_after_s must be > 0, got {stall_after_s}")
        self.stall_after_s = stall_after_s
        """Longest the main loop may go without progress and still be live."""
        self.models_loaded = False
        """Every served model is loaded."""
        self.partitions_assigned = 0
        """Input partitions currently assigned (and so served)."""
        self.fatal: str | None = None
        """Why the worker cannot go on; set once, never cleared (the process should exit)."""
        self._clock = clock
        self.last_progress_s = clock()
        """Monotonic time of the last committed unit or idle poll (construction time before either)."""

    def progress(self) -> None:
        """The main loop turned: a unit committed, or an idle poll found nothing to do."""
        self.last_progress_s = self._clock()

    def fail(self, reason: str) -> None:
        """Record a fatal error; the first one is kept."""
        if self.fatal is None:
            self.fatal = reason

    def live(self) -> tuple[bool, str]:
        """Not fatal, and progress within ``stall_after_s``."""
        if self.fatal is not None:
            return False, f"fatal: {self.fatal}"
        idle_s = self._clock() - self.last_progress_s
        if idle_s > self.stall_after_s:
            return False, f"stalled: no progress for {idle_s:.1f} s (limit {self.stall_after_s:.1f} s)"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """Live, models loaded and at least one partition assigned."""
        alive, reason = self.live()
        if not alive:
            return False, reason
        if not self.models_loaded:
            return False, "models not loaded"
        if self.partitions_assigned < 1:
            return False, "no partitions assigned"
        return True, "ok"


class _Response(NamedTuple):
    status: int
    """HTTP status code."""
    body: bytes
    """Response body."""
    content_type: str = TEXT_CONTENT_TYPE
    """Its content type."""
    allow: bool = False
    """Add ``Allow: GET`` (a 405)."""


class HealthServer(BoundedServer):
    """Serves ``/livez``, ``/readyz`` and ``/metrics``; ``start()``/``stop()`` or ``async with``."""

    what = "health"

    def __init__(
        self,
        *,
        live: Probe,
        ready: Probe,
        registry: CollectorRegistry,
        host: str = "127.0.0.1",
        port: int = 0,
        read_timeout_s: float = 5.0,
        max_connections: int = 64,
    ) -> None:
        super().__init__(host=host, port=port, read_timeout_s=read_timeout_s, max_connections=max_connections)
        self._live = live
        self._ready = ready
        self._registry = registry

    def _listening(self, port: int) -> str:
        return f"health server on http://{self.host}:{port} (/livez /readyz /metrics)"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        response = await self._answer(reader)
        await self._write(writer, response)

    async def _answer(self, reader: asyncio.StreamReader) -> _Response:
        try:
            method, path = await read_head(reader, self.read_timeout_s)
        except BadRequest as err:
            log.debug("bad health request: %s", err)
            return _Response(err.status, f"{err}\n".encode())
        if method != b"GET":
            return _Response(405, b"only GET\n", allow=True)
        return self._route(path)

    def _route(self, path: bytes) -> _Response:
        try:
            if path == b"/livez":
                return _probe(self._live())
            if path == b"/readyz":
                return _probe(self._ready())
            if path == b"/metrics":
                return _Response(200, generate_latest(self._registry), METRICS_CONTENT_TYPE)
        except Exception:
            log.exception("health endpoint %s failed", path.decode("ascii"))
            return _Response(500, b"internal error\n")
        return _Response(404, b"not found\n")

    async def _write(self, writer: asyncio.StreamWriter, response: _Response) -> None:
        head = [
            f"HTTP/1.1 {response.status} {_REASONS[response.status]}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        if response.allow:
            head.append("Allow: GET")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + response.body)
        async with asyncio.timeout(self.read_timeout_s):
            await writer.drain()


def _probe(answer: tuple[bool, str]) -> _Response:
    healthy, reason = answer
    if healthy:
        return _Response(200, b"ok\n")
    return _Response(503, reason.encode("utf-8", "replace")[:MAX_REASON_BYTES] + b"\n")
