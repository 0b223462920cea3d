"""What a gateway serves besides replies: the signed device catalogue, and the artifacts it names.

The catalogue file (written by ``edgestream registry catalogue``) is served verbatim: the device
verifies the registry's signature, the gateway does not need to. An artifact is served only when the
catalogue names its SHA-256 (``catalogue.models[*].sha256``), from the registry's content-addressed
store, which re-hashes it on read (or, with ``registry_url``, from the registry's artifact server, or
with ``registry_s3`` from an S3 bucket, through a verified cache: a gateway on any host): a gateway
never serves a file a device did not ask for by a hash the registry signed. Files are read in a thread;
the catalogue is cached until its file changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from edgestream.pipeline.contract.gatewayframes import Get, encode_frame
from edgestream.pipeline.errors import EdgestreamError
from edgestream.pipeline.registry.artifacts import LocalArtifactStore
from edgestream.pipeline.registry.remote import remote_store

if TYPE_CHECKING:
    from edgestream.pipeline.registry.artifacts import ArtifactStore
    from edgestream.workers.gateway.session import Session
    from edgestream.workers.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


def artifact_store(settings: GatewaySettings) -> ArtifactStore:
    """The registry's server at ``registry_url`` (fetched as the gateway's Kafka identity, cached), or
    the bucket of ``registry_s3`` (cached), else the store in ``artifacts_dir``. :class:`ConfigError` for
    a URL without a TLS identity, or S3 files that cannot be used."""
    if settings.registry_s3 is not None:
        from edgestream.pipeline.registry.s3store import s3_store  # boto3: only where a bucket is used

        return s3_store(settings.registry_s3, settings.artifacts_cache_path())
    if settings.registry_url is None:
        return LocalArtifactStore(settings.artifacts_path())
    return remote_store(
        settings.registry_url,
        settings.kafka.files,
        settings.artifacts_cache_path(),
        ca_file=settings.registry_ca_file,
        timeout_s=settings.registry_timeout_s,
        attempts=settings.registry_attempts,
    )


class FileServer:
    """Answers ``get`` frames."""

    def __init__(self, catalogue_file: Path, store: ArtifactStore) -> None:
        self.catalogue_file = catalogue_file
        """The signed device catalogue."""
        self.store = store
        """The registry's artifacts: its store on this disk, or its server (``artifact_store``)."""
        self._cached: tuple[int, bytes, frozenset[str]] | None = None

    def catalogue(self) -> tuple[bytes, frozenset[str]] | None:
        """The catalogue's bytes and the artifact hashes it names; None when there is no file."""
        try:
            mtime = self.catalogue_file.stat().st_mtime_ns
        except OSError:
            return None
        if self._cached is None or self._cached[0] != mtime:
            try:
                body = self.catalogue_file.read_bytes()
            except OSError:
                return None
            self._cached = (mtime, body, named_hashes(body))
        return self._cached[1], self._cached[2]

    async def answer(self, session: Session, get: Get) -> None:
        """Send what ``get`` asks for, or ``not_found``."""
        found = await asyncio.to_thread(self.catalogue)
        frame: bytes
        if found is None:
            frame = encode_frame("not_found", what=get.what)
        elif get.what == "catalogue":
            frame = encode_frame("catalogue", body=found[0])
        elif get.sha256 in found[1]:
            try:
                body = await asyncio.to_thread(self.store.get, get.sha256 or "")
                frame = encode_frame("artifact", sha256=get.sha256, body=body)
            except EdgestreamError as err:
                log.warning("artifact %s named by the catalogue is not served: %s", get.sha256, err)
                frame = encode_frame("not_found", what=f"artifact {get.sha256}")
        else:
            frame = encode_frame("not_found", what=f"artifact {get.sha256}")
        with contextlib.suppress(ConnectionClosed):
            session.send(frame)


def named_hashes(body: bytes) -> frozenset[str]:
    """The artifact hashes a catalogue names (``catalogue.models[*].sha256``); empty when it is not
    one (the device will refuse it; the gateway just serves no artifact)."""
    try:
        document: Any = json.loads(body)
        models = document["catalogue"]["models"]
        return frozenset(
            m["sha256"] for m in models if isinstance(m, dict) and isinstance(m.get("sha256"), str)
        )
    except (ValueError, KeyError, TypeError):
        return frozenset()
