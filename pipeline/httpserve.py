"""What the project's two small HTTP servers share (``observability/health.py``: probes and metrics;
``registry/artifactserver.py``: model artifacts over mutual TLS): a strict parser of a request head,
and :class:`BoundedServer`, an asyncio server of one request per connection that serves at most
``max_connections`` at once and ends them all when stopped.

A request head must arrive within ``read_timeout_s`` (else 408) and fit in :data:`MAX_HEAD_BYTES` (else
431); a body is never read. Connections over the bound are closed at once, unanswered: reading a
request to refuse it would cost what the bound is there to limit. So slow or hostile clients cost
bounded memory and never hold up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Final, Self

if TYPE_CHECKING:
    import ssl

log = logging.getLogger(__name__)

MAX_HEAD_BYTES: Final = 8 * 1024
"""Most bytes of request line and headers read; more is answered 431."""
TEXT_CONTENT_TYPE: Final = "text/plain; charset=utf-8"
"""Content type of the servers' plain-text bodies."""
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_VERSION = re.compile(rb"HTTP/1\.[01]")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class BadRequest(Exception):
    """A request head that did not arrive or does not parse; ``status`` is the answer (400, 408 or
    431), the message its body."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


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


async def read_head(reader: asyncio.StreamReader, timeout_s: float) -> tuple[bytes, bytes]:
    """``(method, path)`` of the request head ``reader`` brings within ``timeout_s``; BadRequest (408,
    431 or 400) when it does not come in time, is too long, ends early or does not parse."""
    try:
        async with asyncio.timeout(timeout_s):
            head = await reader.readuntil(b"\r\n\r\n")
    except TimeoutError as err:
        raise BadRequest(408, "request not received in time") from err
    except asyncio.LimitOverrunError as err:
        raise BadRequest(431, "request line and headers exceed 8 KiB") from err
    except asyncio.IncompleteReadError as err:
        raise BadRequest(400, "incomplete request") from err
    return parse_head(head)


class BoundedServer(ABC):
    """Serves one request per connection, at most ``max_connections`` at once (counting those still
    closing: up to ``read_timeout_s`` after their answer, for a client that does not close its end);
    ``start()``/``stop()`` or ``async with``. A subclass answers a connection in ``_handle`` and names
    itself in ``what`` (logs and errors) and ``_listening`` (the line logged once bound)."""

    what: str = "server"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        read_timeout_s: float,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
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
        """Time a client has for its TLS handshake (with TLS), then for its request head."""
        self.max_connections = max_connections
        """Connections served at once; more are closed at once, unanswered."""
        self._ssl_context = ssl_context
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._stopping = False

    @property
    def port(self) -> int:
        """The port bound; only while started."""
        if self._port is None:
            raise RuntimeError(f"the {self.what} server is not started")
        return self._port

    @property
    def open_connections(self) -> int:
        """Connections being served now, or still closing."""
        return len(self._connections)

    async def start(self) -> None:
        """Bind and listen. Idempotent."""
        if self._server is not None:
            return
        self._stopping = False
        self._server = await asyncio.start_server(
            self._serve,
            self.host,
            self.requested_port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=None if self._ssl_context is None else self.read_timeout_s,
            limit=MAX_HEAD_BYTES,
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        log.info("%s", self._listening(self._port))

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

    @abstractmethod
    def _listening(self, port: int) -> str:
        """The line logged once bound to ``port``."""

    @abstractmethod
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read one request from ``reader`` and answer it on ``writer`` (which the server closes)."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._stopping or len(self._connections) >= self.max_connections:
            log.debug("%s connection refused: %d open", self.what, len(self._connections))
            writer.transport.abort()
            return
        self._connections[task] = writer
        try:
            await self._handle(reader, writer)
        except (ConnectionError, TimeoutError) as err:
            log.debug("%s client went away: %r", self.what, err)
        finally:
            try:  # still one of the connections (so stop() aborts and awaits it) until it is closed
                writer.close()
                with contextlib.suppress(ConnectionError, TimeoutError, OSError):
                    async with asyncio.timeout(self.read_timeout_s):
                        await writer.wait_closed()
            finally:
                del self._connections[task]
