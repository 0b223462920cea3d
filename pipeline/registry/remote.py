"""An :class:`ArtifactStore` on another host: the registry's artifact server, over mutual TLS 1.3.

:class:`RemoteArtifactStore` is what a worker on any host reads artifacts through. ``get`` answers from
a local cache (a :class:`LocalArtifactStore`: atomic writes, re-hashed on every read) and fetches on a
miss, or when the cached blob no longer matches its name (the corrupt file is replaced, never served):
``GET <url>/artifacts/sha256/<hash>`` (``artifactserver.py``), presenting the worker's own certificate
and checking the server's against the project's CA and the URL's host name. The bytes are hashed before
anything is cached: a body that differs from the hash it was asked by is :class:`ArtifactMismatch`,
and nothing is written. A connection that fails, times out, or a 5xx is tried again, ``attempts`` times
in all with a growing pause; a 404 is :class:`ArtifactNotFound`, a 403, a TLS verification failure or
an oversized body :class:`ArtifactUnavailable` at once. The signed manifest is checked by the caller
(``signing.load_verified``), as for any store. Calls block: the worker's loader runs them in a thread.
"""

from __future__ import annotations

import http.client
import logging
import ssl
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.files import sha256_hex
from edgestream.pipeline.registry.artifacts import LocalArtifactStore, through_cache
from edgestream.pipeline.registry.artifactserver import ARTIFACT_PATH
from edgestream.pipeline.registry.errors import ArtifactMismatch, ArtifactNotFound, ArtifactUnavailable
from edgestream.pipeline.security.tls import client_context

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from edgestream.pipeline.security.pki import TlsFiles

log = logging.getLogger(__name__)

DEFAULT_MAX_ARTIFACT_BYTES: Final = 2 * 1024**3
"""Largest artifact body read (2 GiB); a larger Content-Length is refused before reading."""
_CHUNK_BYTES: Final = 1024 * 1024


def remote_store(
    url: str,
    files: TlsFiles | None,
    cache_dir: Path,
    *,
    ca_file: Path | None = None,
    timeout_s: float = 30.0,
    attempts: int = 3,
) -> RemoteArtifactStore:
    """The store a process reads ``url`` through, presenting its own TLS identity ``files`` (checking
    the server against ``ca_file``, default ``files.ca_file``), caching in ``cache_dir``.
    :class:`ConfigError` when the process has no identity to present."""
    if files is None:
        raise ConfigError(
            f"fetching artifacts from {url} needs this process's TLS identity (kafka.ssl_ca_file, "
            "ssl_cert_file, ssl_key_file): the registry's server accepts only the project's certificates"
        )
    if ca_file is not None:
        files = replace(files, ca_file=ca_file)
    return RemoteArtifactStore(
        url,
        client_context(files),
        LocalArtifactStore(cache_dir),
        timeout_s=timeout_s,
        attempts=attempts,
    )


class _Retriable(Exception):
    """A failure worth another attempt (network, timeout, 5xx)."""


class RemoteArtifactStore:
    """Read-only :class:`ArtifactStore` fetching from ``url`` into a local ``cache``."""

    def __init__(
        self,
        url: str,
        context: ssl.SSLContext,
        cache: LocalArtifactStore,
        *,
        timeout_s: float = 30.0,
        attempts: int = 3,
        backoff_s: float = 0.5,
        max_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``url``: ``https://host[:port]`` of ``edgestream registry serve``. ``context``: a client
        context with the caller's certificate (``tls.client_context``). ``timeout_s`` bounds each
        connect and each read; ``attempts`` (>= 1) the tries of one fetch, ``backoff_s`` times the
        attempt number apart. :class:`ConfigError` for a URL that is not https with a host."""
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(f"registry URL {url!r}: expected https://host[:port]")
        if attempts < 1 or not timeout_s > 0 or max_bytes < 1:
            raise ValueError("attempts and max_bytes must be >= 1, timeout_s > 0")
        self.url = f"https://{parts.netloc}"
        """Where the artifacts are served."""
        self.cache = cache
        """The local copies, content-addressed."""
        self._host = parts.hostname
        self._port = parts.port or 443
        self._context = context
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._max_bytes = max_bytes
        self._sleep = sleep

    def put(self, data: bytes) -> str:
        """Refused: the registry's server is read-only; publish where the registry's store is."""
        raise ConfigError(f"{self.url} is read-only: publish with the registry's own store")

    def has(self, sha256: str) -> bool:
        """Whether a blob named ``sha256`` is cached here (the server is not asked)."""
        return self.cache.has(sha256)

    def get(self, sha256: str) -> bytes:
        """The verified bytes named ``sha256``: the cached copy when it verifies, else fetched and
        cached."""
        return through_cache(self.cache, sha256, self._fetch, self.url)

    def _fetch(self, sha256: str) -> bytes:
        last = ""
        for attempt in range(1, self._attempts + 1):
            try:
                data = self._get_once(sha256)
            except _Retriable as err:
                last = str(err)
                log.warning(
                    "fetching %s from %s (attempt %d/%d): %s",
                    sha256[:12],
                    self.url,
                    attempt,
                    self._attempts,
                    err,
                )
                if attempt < self._attempts:
                    self._sleep(self._backoff_s * attempt)
                continue
            actual = sha256_hex(data)
            if actual != sha256:
                raise ArtifactMismatch(sha256, actual, f"{self.url}{ARTIFACT_PATH}{sha256[:12]}…")
            log.info("fetched artifact %s (%d bytes) from %s", sha256[:12], len(data), self.url)
            return data
        raise ArtifactUnavailable(sha256, self.url, f"{self._attempts} attempts failed; last: {last}")

    def _get_once(self, sha256: str) -> bytes:
        connection = http.client.HTTPSConnection(
            self._host, self._port, context=self._context, timeout=self._timeout_s
        )
        try:
            connection.request(
                "GET", f"{ARTIFACT_PATH}{sha256}", headers={"Accept": "application/octet-stream"}
            )
            response = connection.getresponse()
            return self._body(sha256, response)
        except ssl.SSLCertVerificationError as err:
            raise ArtifactUnavailable(sha256, self.url, f"server certificate refused: {err}") from err
        except (OSError, http.client.HTTPException) as err:  # refused, reset, timeout, TLS alert
            raise _Retriable(f"{type(err).__name__}: {err}") from err
        finally:
            connection.close()

    def _body(self, sha256: str, response: http.client.HTTPResponse) -> bytes:
        if response.status == 404:
            raise ArtifactNotFound(sha256, self.url)
        if response.status >= 500:
            raise _Retriable(f"HTTP {response.status}: {_reason(response)}")
        if response.status != 200:
            raise ArtifactUnavailable(sha256, self.url, f"HTTP {response.status}: {_reason(response)}")
        length = response.getheader("Content-Length")
        if length is None or not length.isdigit():
            raise _Retriable("response without a Content-Length")
        if int(length) > self._max_bytes:
            raise ArtifactUnavailable(sha256, self.url, f"{length} bytes, over the {self._max_bytes} limit")
        chunks: list[bytes] = []
        remaining = int(length)
        while remaining > 0:
            chunk = response.read(min(remaining, _CHUNK_BYTES))
            if not chunk:
                raise _Retriable(f"connection closed with {remaining} bytes of the body unread")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)


def _reason(response: http.client.HTTPResponse) -> str:
    """The first line of a short error body, for the error message."""
    body = response.read(512).decode("utf-8", "replace").strip()
    return body.splitlines()[0] if body else response.reason
