"""The registry's artifacts over HTTPS: read-only, content-addressed, for the project's identities only.

    GET  /artifacts/sha256/<64 hex>   200 and the bytes (re-hashed on read), or 404
    HEAD /artifacts/sha256/<64 hex>   200 (with Content-Length) or 404, no body

Mutual TLS 1.3 from the project's PKI (``pipeline/security/tls.py``): a client must present a
certificate the CA signed (on Kubernetes: Strimzi's clients CA), or the handshake fails; a certificate
whose principal (OU, else CN) may not fetch (``identities.fetches_artifacts``: edge workers, gateways,
admin) is answered 403. Every other path is
404 without touching the disk: the hash is matched against ``[0-9a-f]{64}`` before it names a file, so
there is no directory listing and no way to name anything outside the store. A stored blob that no
longer hashes to its name is never served (500, logged). The request head is parsed by the strict
parser this server shares with the health server (``pipeline/httpserve.py``): it must arrive within
``read_timeout_s`` and fit in 8 KiB (else 408, 431); a request body is never read; one request per
connection; at most ``max_connections`` at once (more are closed unanswered), so memory is bounded by
that many artifacts. Blobs are read and hashed in a thread; the loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from edgestream.pipeline.httpserve import TEXT_CONTENT_TYPE, BadRequest, BoundedServer, read_head
from edgestream.pipeline.registry.errors import ArtifactMismatch, ArtifactNotFound
from edgestream.pipeline.security.identities import fetches_artifacts

if TYPE_CHECKING:
    import ssl

    from edgestream.pipeline.registry.artifacts import LocalArtifactStore

log = logging.getLogger(__name__)

ARTIFACT_PATH: Final = "/artifacts/sha256/"
"""The path an artifact's hex sha256 follows."""
_ARTIFACT_TARGET: Final = re.compile(rb"/artifacts/sha256/([0-9a-f]{64})")
_OCTETS: Final = "application/octet-stream"
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


class _Response(NamedTuple):
    status: int
    """HTTP status code."""
    body: bytes
    """Its body (for a HEAD, only its length is sent)."""
    content_type: str = TEXT_CONTENT_TYPE
    """Its content type."""
    etag: str | None = None
    """The artifact's sha256 (a 200)."""
    length: int | None = None
    """Content-Length when the body is not sent (a HEAD); else the body's length."""


def peer_principal(peercert: Any) -> str | None:
    """The principal of a verified peer certificate as ``SSLSocket.getpeercert()`` gives it: its OU
    (our PKI: ``CN=<name>,OU=<principal>``), else its CN (Strimzi's user certificates: ``CN=<user>``)."""
    if not isinstance(peercert, dict):
        return None
    names = {name: str(value) for rdn in peercert.get("subject", ()) for name, value in rdn}
    return names.get("organizationalUnitName") or names.get("commonName")


class ArtifactServer(BoundedServer):
    """Serves a :class:`LocalArtifactStore` over mutual TLS; ``start()``/``stop()`` or ``async with``."""

    what = "artifact"

    def __init__(
        self,
        store: LocalArtifactStore,
        context: ssl.SSLContext,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        read_timeout_s: float = 10.0,
        write_timeout_s: float = 300.0,
        max_connections: int = 32,
    ) -> None:
        """``context``: a server context that requires client certificates (``tls.server_context``)."""
        if not write_timeout_s > 0:
            raise ValueError(f"write_timeout_s must be > 0, got {write_timeout_s}")
        super().__init__(
            host=host,
            port=port,
            read_timeout_s=read_timeout_s,
            max_connections=max_connections,
            ssl_context=context,
        )
        self.store = store
        """What is served."""
        self.write_timeout_s = write_timeout_s
        """Time a client has to take a response (a model may be large)."""

    def _listening(self, port: int) -> str:
        return f"artifact server on https://{self.host}:{port}{ARTIFACT_PATH}<sha256>"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        principal = peer_principal(writer.get_extra_info("peercert"))
        head, response = await self._answer(reader, principal)
        await self._write(writer, response, head)

    async def _answer(self, reader: asyncio.StreamReader, principal: str | None) -> tuple[bool, _Response]:
        """``(head only, response)``."""
        try:
            method, target = await read_head(reader, self.read_timeout_s)
        except BadRequest as err:
            return False, _Response(err.status, f"{err}\n".encode())
        if method not in (b"GET", b"HEAD"):
            return False, _Response(405, b"only GET and HEAD\n")
        if principal is None or not fetches_artifacts(principal):
            log.warning("artifact fetch refused to principal %r", principal)
            return False, _Response(403, f"principal {principal!r} may not fetch artifacts\n".encode())
        return method == b"HEAD", await self._artifact(target, head=method == b"HEAD")

    async def _artifact(self, target: bytes, *, head: bool) -> _Response:
        match = _ARTIFACT_TARGET.fullmatch(target)
        if match is None:
            return _Response(404, b"not found: artifacts are at /artifacts/sha256/<64 lowercase hex>\n")
        sha256 = match.group(1).decode("ascii")
        try:
            if head:
                if not await asyncio.to_thread(self.store.has, sha256):
                    raise ArtifactNotFound(sha256, "the registry")
                size = (await asyncio.to_thread(self.store.path(sha256).stat)).st_size
                return _Response(200, b"", _OCTETS, sha256, length=size)
            data = await asyncio.to_thread(self.store.get, sha256)
        except ArtifactNotFound:
            return _Response(404, f"no artifact sha256 {sha256}\n".encode())
        except ArtifactMismatch as err:
            log.error("not serving a corrupt stored artifact: %s", err)
            return _Response(500, b"the stored artifact fails its hash; not served\n")
        except OSError as err:
            log.error("cannot read artifact %s: %s", sha256, err)
            return _Response(500, b"cannot read the artifact\n")
        return _Response(200, data, _OCTETS, sha256)

    async def _write(self, writer: asyncio.StreamWriter, response: _Response, head_only: bool) -> None:
        lines = [
            f"HTTP/1.1 {response.status} {_REASONS[response.status]}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body) if response.length is None else response.length}",
            "Connection: close",
        ]
        if response.etag is not None:
            lines += [f'ETag: "{response.etag}"', "Cache-Control: public, max-age=31536000, immutable"]
        else:
            lines.append("Cache-Control: no-store")
        if response.status == 405:
            lines.append("Allow: GET, HEAD")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        if not head_only:
            writer.write(response.body)
        async with asyncio.timeout(self.write_timeout_s):
            await writer.drain()
