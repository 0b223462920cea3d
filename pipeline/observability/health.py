"""Liveness, readiness and ``/metrics`` of a worker process over a tiny, strict HTTP/1.1 server.

    GET /livez    200 "ok", or 503 and the reason: a fatal error, or a main loop that stopped turning
    GET /readyz   200 "ok", or 503 and the reason: models not loaded, no partitions, fatal, stalled
    GET /metrics  the worker's registry in the Prometheus text format (0.0.4)

One request per connection (``Connection: close``), GET only (405 otherwise), 404 for other paths,
400 for anything that does not parse. The request line and headers must arrive within
``read_timeout_s`` (else 408) and fit in :data:`MAX_HEAD_BYTES` (else 431); a body is never read. At
most ``max_connections`` are served at once (more are closed unanswered), so slow or hostile clients
cost bounded memory and never hold up the others. The server runs on the worker's event loop: if
that loop is blocked, probes time out, which is the truthful answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import NamedTuple, Self

from prometheus_client import CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Probe = Callable[[], tuple[bool, str]]
"""Asked on each probe request: (healthy, reason). The reason is the body of a 503."""

MAX_HEAD_BYTES = 8 * 1024
"""Most bytes of request line and headers read; more is answered 431."""
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""What ``generate_latest`` writes: the classic text format (prometheus_client's ``choose_encoder``
announces the same when the scraper asks for no other)."""
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
"""Content type of the probes' bodies."""
MAX_REASON_BYTES = 1024
"""A probe's reason is cut to this many bytes in the response body."""
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_VERSION = re.compile(rb"HTTP/1\.[01]")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
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


class BadRequest(Exception):
    """A request head that does not parse; ``status`` is the answer (400, or 431)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class HealthServer:
    """Serves ``/livez``, ``/readyz`` and ``/metrics``; ``start()``/``stop()`` or ``async with``."""

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
        if not read_timeout_s > 0:
            raise ValueError(f"read_timeout_s must be > 0, got {read_timeout_s}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.host = host
        """Address to listen on; a literal address (a name resolving to several binds several ports)."""
        self.requested_port = port
        """Port asked for; 0 picks a free one (see :attr:`port`)."""
        self.read_timeout_s = read_timeout_s
        """Time a client has to send its request line and headers, and to take the response."""
        self.max_connections = max_connections
        """Connections served at once; more are closed at once, unanswered."""
        self._live = live
        self._ready = ready
        self._registry = registry
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._stopping = False

    @property
    def port(self) -> int:
        """The port bound; only while started."""
        if self._port is None:
            raise RuntimeError("the health server is not started")
        return self._port

    async def start(self) -> None:
        """Bind and listen. Idempotent."""
        if self._server is not None:
            return
        self._stopping = False
        server = await asyncio.start_server(self._serve, self.host, self.requested_port, limit=MAX_HEAD_BYTES)
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1])
        log.info("health server on http://%s:%d (/livez /readyz /metrics)", self.host, self._port)

    async def stop(self) -> None:
        """Stop listening, end the connections in progress, free the port. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self._port = None
        self._stopping = True
        server.close()
        # Aborting the transports ends each handler's read or write with an error it handles, so
        # handlers finish on their own (cancelling them trips asyncio 3.11's connection callback).
        for writer in self._connections.values():
            writer.transport.abort()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._stopping or len(self._connections) >= self.max_connections:
            # Over the bound (or stopping): close at once; reading the request to answer it would
            # cost what the bound is there to limit.
            log.debug("health connection refused: %d open", len(self._connections))
            writer.transport.abort()
            writer.close()
            return
        self._connections[task] = writer
        try:
            response = await self._answer(reader)
            await self._write(writer, response)
        except (ConnectionError, TimeoutError) as err:
            log.debug("health client went away: %r", err)
        finally:
            del self._connections[task]
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(self.read_timeout_s):
                    await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> _Response:
        try:
            async with asyncio.timeout(self.read_timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path = parse_head(head)
        except TimeoutError:
            return _Response(408, b"request not received in time\n")
        except asyncio.LimitOverrunError:
            return _Response(431, b"request line and headers exceed 8 KiB\n")
        except asyncio.IncompleteReadError:
            return _Response(400, b"incomplete request\n")
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


def parse_head(head: bytes) -> tuple[bytes, bytes]:
    """``(method, path)`` of a request head (ending in an empty line), or raise BadRequest.

    Strict: ``METHOD SP /target SP HTTP/1.x``, header lines ``token: value`` without folding, a
    ``Host`` header for HTTP/1.1. The query string is ignored.
    """
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if _TOKEN.fullmatch(method) is None:
        raise BadRequest(400, "malformed method")
    if _TARGET.fullmatch(target) is None:
        raise BadRequest(400, "malformed target")
    if _VERSION.fullmatch(version) is None:
        raise BadRequest(400, "not HTTP/1.0 or HTTP/1.1")
    host = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            raise BadRequest(400, "malformed header")
        if _CONTROL.search(value) is not None:
            raise BadRequest(400, "control character in a header")
        host = host or name.lower() == b"host"
    if version == b"HTTP/1.1" and not host:
        raise BadRequest(400, "HTTP/1.1 request without Host")
    return method, target.partition(b"?")[0]
