"""The gateway's settings (``EDGESTREAM_GATEWAY_*``, nested with ``__``): region, brokers, where it
listens, its files (server certificate, device directory, catalogue, artifacts) and its limits."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgestream.pipeline.contract.limits import DEFAULT_MAX_ENVELOPE_BYTES
from edgestream.pipeline.registry.s3config import S3Settings, one_artifact_source
from edgestream.pipeline.security.identities import GATEWAY_SERVER_NODE, Identity
from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.settings import DEFAULT_HOME, KafkaSettings

DIRECTORY_FILE = "directory.json"
"""The device directory's file name, in ``<home>/gateway/<region>/``."""
CATALOGUE_FILE = "device-catalogue.json"
"""The signed device catalogue's file name, in ``<home>/registry/``."""


class GatewaySettings(BaseSettings):
    """Settings of one gateway process (``EDGESTREAM_GATEWAY_*``, nested with ``__``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_GATEWAY_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    region: str = "eu-west"
    """The region this gateway serves."""
    node_id: str | None = None
    """Its name in hello frames and metrics; defaults to ``gateway-<region>-<host>-<pid>``."""
    kafka: KafkaSettings
    """How to reach the brokers, as ``gateway-<region>``; required."""
    home: Path = DEFAULT_HOME
    """Local state directory: the PKI, the directory, the registry's files."""
    host: str = "127.0.0.1"
    """Address the WebSocket server listens on (0.0.0.0 in a pod)."""
    port: int = Field(default=8443, ge=0, le=65535)
    """Its port; 0 picks a free one."""
    server_cert_file: Path | None = None
    """PEM certificate devices see; defaults to the PKI's ``gateway-<region>/wss`` pair."""
    server_key_file: Path | None = None
    """Its private key."""
    directory_file: Path | None = None
    """The device directory (public auth keys); defaults to ``<home>/gateway/<region>/directory.json``.
    Re-read when its modification time changes."""
    catalogue_file: Path | None = None
    """The signed device catalogue, served verbatim; defaults to ``<home>/registry/device-catalogue.json``."""
    artifacts_dir: Path | None = None
    """The registry's artifact store (``sha256/ab/<hash>``); defaults to ``<home>/registry/artifacts``.
    Not read with ``registry_url`` or ``registry_s3``."""
    registry_url: str | None = Field(default=None, pattern=r"^https://[^/?#]+/?$")
    """``https://host[:port]`` of ``edgestream registry serve``: fetch the artifacts the catalogue names
    from there (mutual TLS as the gateway's Kafka identity, ``kafka.ssl_*``), verified by hash and cached
    in ``registry_cache_dir``, instead of reading ``artifacts_dir``: a gateway on any host."""
    registry_ca_file: Path | None = None
    """CA bundle the artifact server's certificate must chain to; defaults to ``kafka.ssl_ca_file``."""
    registry_s3: S3Settings | None = None
    """The registry's artifacts in an S3-compatible bucket instead
    (``EDGESTREAM_GATEWAY_REGISTRY_S3__URL=s3://bucket/prefix``, and the endpoint, credentials and CA
    beside it: ``pipeline/registry/s3config.py``), verified by hash and cached in ``registry_cache_dir``.
    Not with ``registry_url``: one source of artifacts."""
    registry_cache_dir: Path | None = None
    """Where fetched artifacts are cached; defaults to ``<home>/gateway/<region>/artifacts``."""
    registry_timeout_s: float = Field(default=30.0, gt=0)
    """Bound on connecting to ``registry_url`` and on each read from it."""
    registry_attempts: int = Field(default=3, ge=1)
    """Tries of one artifact fetch; then the device is answered ``not_found``."""
    auth_timeout_s: float = Field(default=10.0, gt=0)
    """Time a device has to authenticate after the hello (else ``auth_timeout``); also the longest a
    connection may take from its TCP accept to the end of its WebSocket upgrade, TLS handshake
    included (a peer that opens TCP connections and says nothing is cut then)."""
    hold_s: float = Field(default=60.0, gt=0)
    """How long a reply is held for its device until acknowledged."""
    hold_max: int = Field(default=256, ge=1)
    """Most replies held per device; the oldest is dropped (and counted) beyond it."""
    max_sessions: int = Field(default=20_000, ge=1)
    """Authenticated sessions at once; a device that authenticates past it is refused ``overloaded``
    (one that replaces its own session is not)."""
    max_pending: int = Field(default=4096, ge=1)
    """Connections not yet authenticated, at once; more are refused ``overloaded`` before their hello.
    Counted apart from ``max_sessions``: before, anyone able to connect held slots of authenticated
    devices by connecting and not authenticating. About ``auth_timeout_s`` times the handshakes a
    second the gateway can do (2-3 ms of CPU each)."""
    max_pending_per_source: int = Field(default=256, ge=1)
    """Connections not yet authenticated from one source address; more are refused ``overloaded``, so
    one host cannot take every pending slot. Devices behind one carrier NAT share an address: raise it
    (up to ``max_pending``) where many connect at once through one."""
    rate_per_s: float = Field(default=50.0, gt=0)
    """Envelopes and reports per second per device (token bucket, shared by its sessions on this
    gateway: one that reconnects continues with the bucket it left); beyond it ``rate_limited``."""
    burst: int = Field(default=100, ge=1)
    """The bucket's size."""
    frames_per_s: float = Field(default=200.0, gt=0)
    """Frames of any kind read per second per session (acks, clock syncs, gets, bad frames too); a
    session sending faster is read more slowly (nothing is refused: its socket's buffers fill and TCP
    holds it back). Before, only envelopes and reports were limited: a device sending empty acks at
    under 1 MB/s raised the gateway's loop lag p99 to 50-131 ms (2026-12-07)."""
    frame_burst: int = Field(default=400, ge=1)
    """Frames read at once before ``frames_per_s`` paces a session."""
    bytes_per_s: float = Field(default=16 * 1024 * 1024, gt=0)
    """Bytes of frames read per second per session, paced as ``frames_per_s`` is: 200 frames of 2 MiB
    a second were 400 MiB/s of TLS and msgpack for the gateway to read from one device. Well above a
    device at its envelope rate with frames of a few hundred KiB."""
    byte_burst: int = Field(default=8 * 1024 * 1024, ge=4096)
    """Bytes read at once before ``bytes_per_s`` paces a session."""
    max_envelope_bytes: int = Field(default=DEFAULT_MAX_ENVELOPE_BYTES, ge=256)
    """Largest envelope produced (the edge's limit); larger ones are ``too_large``."""
    max_frame_bytes: int = Field(default=2 * 1024 * 1024, ge=4096)
    """Largest WebSocket message read; a larger one closes the connection (code 1009)."""
    max_outbox: int = Field(default=1024, ge=16)
    """Frames queued for one device's socket; a device that stops reading is disconnected beyond it
    (its replies stay held for its next session)."""
    max_outbox_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    """Bytes queued for one device's socket; past it (with a frame already queued) the device is
    disconnected as for ``max_outbox``. Counted in frames only, a device that asked for a file again
    and again without reading held a copy of each (228 MiB for 60 asks of 4 MiB, 2026-12-07)."""
    linger_ms: int = Field(default=0, ge=0, le=1000)
    """How long the producer waits to batch envelopes of many devices into one request (0: none)."""
    ping_interval_s: float | None = Field(default=20.0, gt=0)
    """WebSocket keepalive pings (None: off); a device that misses one is disconnected."""
    directory_poll_s: float = Field(default=2.0, gt=0)
    """How often the directory's modification time is checked."""
    health_host: str = "127.0.0.1"
    """Where /livez, /readyz and /metrics listen."""
    health_port: int | None = None
    """Port of the health and metrics server: None for none, 0 for any free port."""

    @field_validator("registry_s3")
    @classmethod
    def _one_artifact_source(cls, value: S3Settings | None, info: ValidationInfo) -> S3Settings | None:
        one_artifact_source(info.data.get("registry_url"), value)
        return value

    @property
    def node(self) -> str:
        """This gateway's name."""
        return self.node_id or f"gateway-{self.region}-{socket.gethostname()}-{os.getpid()}"

    def server_files(self) -> tuple[Path, Path]:
        """The WebSocket server's certificate and key files."""
        if self.server_cert_file is not None and self.server_key_file is not None:
            return self.server_cert_file, self.server_key_file
        files = Pki.in_home(self.home).files(Identity.gateway(self.region, GATEWAY_SERVER_NODE))
        return files.cert_file, files.key_file

    def directory_path(self) -> Path:
        """Where the device directory is."""
        return self.directory_file or self.home / "gateway" / self.region / DIRECTORY_FILE

    def catalogue_path(self) -> Path:
        """Where the signed device catalogue is."""
        return self.catalogue_file or self.home / "registry" / CATALOGUE_FILE

    def artifacts_path(self) -> Path:
        """Where the registry's artifacts are (without ``registry_url`` or ``registry_s3``)."""
        return self.artifacts_dir or self.home / "registry" / "artifacts"

    def artifacts_cache_path(self) -> Path:
        """Where artifacts fetched from ``registry_url`` or ``registry_s3`` are cached."""
        return self.registry_cache_dir or self.home / "gateway" / self.region / "artifacts"
