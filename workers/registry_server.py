"""``edgestream registry serve``: the registry's artifact store over mutual TLS 1.3, so that workers on
any host can load what a rollout names (``pipeline/registry/artifactserver.py``).

Settings ``EDGESTREAM_REGISTRY_SERVER_*``. The server presents the PKI's ``registry`` identity (issue it
with ``edgestream certs issue registry --host <name workers use>``) and accepts clients whose
certificates the same CA signed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgestream.pipeline.registry.artifacts import LocalArtifactStore
from edgestream.pipeline.registry.artifactserver import ArtifactServer
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki, TlsFiles
from edgestream.pipeline.security.tls import server_context
from edgestream.pipeline.settings import DEFAULT_HOME

log = logging.getLogger(__name__)


class RegistryServerSettings(BaseSettings):
    """Settings of the registry's artifact server (``EDGESTREAM_REGISTRY_SERVER_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_REGISTRY_SERVER_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    home: Path = DEFAULT_HOME
    """Local state directory: the PKI (``<home>/tls``) and the registry (``<home>/registry``)."""
    artifacts_dir: Path | None = None
    """The content-addressed store served (``sha256/ab/<hash>``); defaults to
    ``<home>/registry/artifacts``. Read only."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0 in a container)."""
    port: int = Field(default=8443, ge=0, le=65535)
    """Port; 0 picks a free one."""
    ca_file: Path | None = None
    """Trust bundle client certificates must chain to; defaults to the PKI's."""
    cert_file: Path | None = None
    """The server's certificate; defaults to the PKI's ``registry`` pair."""
    key_file: Path | None = None
    """Its private key."""
    read_timeout_s: float = Field(default=10.0, gt=0)
    """Time a client has for its TLS handshake and its request head."""
    write_timeout_s: float = Field(default=300.0, gt=0)
    """Time a client has to take an artifact."""
    max_connections: int = Field(default=32, ge=1)
    """Connections served at once (each may hold one artifact in memory)."""

    def tls_files(self) -> TlsFiles:
        """The server's TLS files: those given, else the PKI's ``registry`` identity."""
        if self.ca_file is not None and self.cert_file is not None and self.key_file is not None:
            return TlsFiles(self.ca_file, self.cert_file, self.key_file)
        return Pki.in_home(self.home).files(Identity.registry())

    def artifacts_path(self) -> Path:
        """The store served."""
        return self.artifacts_dir or self.home / "registry" / "artifacts"


def artifact_server(settings: RegistryServerSettings) -> ArtifactServer:
    """The server ``settings`` describe (not started). :class:`ConfigError` for missing TLS files."""
    return ArtifactServer(
        LocalArtifactStore(settings.artifacts_path()),
        server_context(settings.tls_files()),
        host=settings.host,
        port=settings.port,
        read_timeout_s=settings.read_timeout_s,
        write_timeout_s=settings.write_timeout_s,
        max_connections=settings.max_connections,
    )


async def serve(settings: RegistryServerSettings, on_started: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT; ``on_started`` hears the port bound."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with artifact_server(settings) as server:
        log.info("serving %s on port %d", settings.artifacts_path(), server.port)
        if on_started is not None:
            on_started(server.port)
        await stop.wait()
