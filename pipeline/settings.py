"""Typed settings shared by the processes: one frozen pydantic-settings model per process.

Every process builds its settings once at start (``EDGESTREAM_`` prefix, ``__`` for nesting) and passes
typed objects down; library code never reads ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from edgestream.pipeline.security.pki import TlsFiles

DEFAULT_HOME = Path(".edgestream")
"""Where local state lives (broker data and logs, keys, model cache, demo output): git-ignored."""


class Region(BaseModel):
    """A region an edge node serves, with the location used for nearest-region routing."""

    model_config = ConfigDict(frozen=True)

    name: str
    """Region name as it appears in topic names, e.g. ``eu-west``."""
    lat: float = Field(ge=-90, le=90)
    """Latitude of the region's edge site, degrees."""
    lon: float = Field(ge=-180, le=180)
    """Longitude of the region's edge site, degrees."""


DEFAULT_REGIONS: tuple[Region, ...] = (
    Region(name="eu-west", lat=53.35, lon=-6.26),
    Region(name="us-east", lat=38.9, lon=-77.04),
    Region(name="ap-south", lat=19.08, lon=72.88),
)


class KafkaSettings(BaseModel):
    """How a process reaches the brokers: where, and as whom (TLS 1.3 with a client certificate).

    Every Kafka client of the project is built from ``client_kwargs()``, so the security settings are
    spelled in one place.
    """

    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated ``host:port`` list; the local broker writes its own into its state file."""
    request_timeout_ms: int = Field(default=30_000, gt=0)
    """Upper bound for one broker request."""
    security_protocol: Literal["SSL", "PLAINTEXT"] = "PLAINTEXT"
    """``SSL``: TLS 1.3, the broker verified against ``ssl_ca_file`` and its host name, this process
    authenticated by ``ssl_cert_file``. ``PLAINTEXT`` only where a broker offers it on purpose."""
    ssl_ca_file: Path | None = None
    """Trust bundle (PEM) the broker's certificate must chain to."""
    ssl_cert_file: Path | None = None
    """This process's certificate (PEM); its subject is its Kafka principal."""
    ssl_key_file: Path | None = None
    """Its private key (PEM, mode 0600)."""

    @model_validator(mode="after")
    def _tls_files_given(self) -> KafkaSettings:
        missing = [
            name for name in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file") if getattr(self, name) is None
        ]
        if self.security_protocol == "SSL" and missing:
            raise ValueError(f"security_protocol SSL needs {', '.join(missing)}")
        return self

    @classmethod
    def tls(cls, bootstrap_servers: str, files: TlsFiles, **others: Any) -> KafkaSettings:
        """Settings for a TLS connection as the identity whose files these are."""
        return cls(
            bootstrap_servers=bootstrap_servers,
            security_protocol="SSL",
            ssl_ca_file=files.ca_file,
            ssl_cert_file=files.cert_file,
            ssl_key_file=files.key_file,
            **others,
        )

    @property
    def files(self) -> TlsFiles | None:
        """The TLS files, when the connection uses TLS."""
        from edgestream.pipeline.security.pki import TlsFiles  # certs imports this module

        if self.ssl_ca_file is None or self.ssl_cert_file is None or self.ssl_key_file is None:
            return None
        return TlsFiles(self.ssl_ca_file, self.ssl_cert_file, self.ssl_key_file)

    def __str__(self) -> str:
        if self.security_protocol == "SSL":
            return f"{self.bootstrap_servers} (TLS, as {self.ssl_cert_file})"
        return self.bootstrap_servers

    def to_env(self, prefix: str) -> dict[str, str]:
        """These settings as environment variables for a child process, e.g. ``prefix`` =
        ``EDGESTREAM_WORKER_KAFKA__``."""
        return {
            f"{prefix}{name.upper()}": str(value)
            for name, value in self.model_dump().items()
            if value is not None
        }

    def client_kwargs(self) -> dict[str, Any]:
        """``bootstrap_servers``, ``security_protocol`` and (TLS) ``ssl_context`` for an aiokafka client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        files = self.files
        if self.security_protocol == "SSL" and files is not None:
            from edgestream.pipeline.security.tls import client_context

            kwargs["ssl_context"] = client_context(files)
        return kwargs


class KafkaEnv(BaseSettings):
    """How operator commands reach a cluster named by ``--bootstrap``: ``EDGESTREAM_KAFKA_*``."""

    model_config = SettingsConfigDict(env_prefix="EDGESTREAM_KAFKA_", frozen=True, extra="ignore")

    security_protocol: Literal["SSL", "PLAINTEXT"] = "PLAINTEXT"
    """As ``KafkaSettings.security_protocol``."""
    ssl_ca_file: Path | None = None
    """As ``KafkaSettings.ssl_ca_file``."""
    ssl_cert_file: Path | None = None
    """As ``KafkaSettings.ssl_cert_file``."""
    ssl_key_file: Path | None = None
    """As ``KafkaSettings.ssl_key_file``."""

    def settings(self, bootstrap_servers: str) -> KafkaSettings:
        """Client settings for ``bootstrap_servers`` with this protocol and these files."""
        return KafkaSettings(bootstrap_servers=bootstrap_servers, **self.model_dump())
