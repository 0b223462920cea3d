"""Where an S3-compatible object store keeps the registry's artifacts, and how a process reaches it.

Pure configuration: ``s3store.py`` builds the client from it, so a process that never uses S3 never
imports boto3. One URL names the place, ``s3://bucket/prefix``; the blob named ``<sha256>`` is the
object ``<prefix>/sha256/<sha256>`` (:func:`object_key`: the layout ``LocalArtifactStore`` has under its
root, without the two-digit fan-out that a directory needs and an object store does not). The endpoint
(AWS's for the region, or a MinIO or SeaweedFS URL), the region, the credentials and the CA that the
endpoint's certificate must chain to come with it in :class:`S3Settings`: nested in the worker's and the
gateway's settings as ``registry_s3`` (one source of artifacts per process: :func:`one_artifact_source`),
and for the ``registry`` and ``retrain`` commands in :class:`RegistryS3Env` (``EDGESTREAM_REGISTRY_S3__*``).

Credentials are an access key pair in the settings (from the environment or a secret), or a profile of
an AWS-format credentials file (``credentials_file``), else the SDK's default chain (on EKS, the pod's
role). Both keys are :class:`SecretStr` and validation errors hide their input: they reach no log line
and no error message.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Final, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.registry.artifacts import check_sha256

_BUCKET_RE: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
"""S3's bucket names: 3-63 lowercase letters, digits, dots and hyphens, a letter or digit at each end."""
_SEGMENT_RE: Final = re.compile(r"[A-Za-z0-9!_.*'()-]+")
"""A prefix segment: S3's "safe" key characters, so a key needs no escaping anywhere it is written."""


class S3Location(NamedTuple):
    """A bucket and a key prefix inside it (no leading or trailing slash; empty for the bucket's root)."""

    bucket: str
    """The bucket's name."""
    prefix: str
    """Keys start with this and a slash (nothing when empty)."""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_s3_url(url: str) -> S3Location:
    """``s3://bucket`` or ``s3://bucket/some/prefix`` (a trailing slash is dropped), else
    :class:`ConfigError` saying what is wrong: another scheme, a bucket name S3 refuses, an empty, ``.``
    or ``..`` segment, or characters that would need escaping in a key."""
    scheme, sep, rest = url.partition("://")
    if scheme != "s3" or not sep:
        raise ConfigError(f"artifact store URL {url!r}: expected s3://bucket/prefix")
    bucket, _, prefix = rest.partition("/")
    if _BUCKET_RE.fullmatch(bucket) is None or ".." in bucket:
        raise ConfigError(
            f"artifact store URL {url!r}: bucket {bucket!r} is not an S3 bucket name "
            "(3-63 lowercase letters, digits, dots, hyphens)"
        )
    prefix = prefix.removesuffix("/")
    for segment in prefix.split("/") if prefix else ():
        if segment in (".", "..") or _SEGMENT_RE.fullmatch(segment) is None:
            raise ConfigError(
                f"artifact store URL {url!r}: prefix segment {segment!r} is empty, '.', '..', or has "
                "characters other than letters, digits and !_.*'()-"
            )
    return S3Location(bucket, prefix)


def object_key(prefix: str, sha256: str) -> str:
    """The key of the blob named ``sha256`` under ``prefix``: ``<prefix>/sha256/<sha256>``."""
    check_sha256(sha256)
    return f"{prefix}/sha256/{sha256}" if prefix else f"sha256/{sha256}"


class S3Credentials(NamedTuple):
    """An access key pair, as the client needs it."""

    access_key_id: str
    """The key's id."""
    secret_access_key: SecretStr
    """Its secret."""


AddressingStyle = Literal["path", "virtual", "auto"]
"""How the bucket is named in a request: in the path (MinIO, SeaweedFS), in the host name (AWS's
preference), or as the SDK decides."""


class S3Settings(BaseModel):
    """How a process reaches the registry's artifacts in an S3-compatible object store."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    url: str
    """``s3://bucket/prefix``: the bucket, and the prefix the ``sha256/<hash>`` keys go under."""
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://[^/?#]+/?$")
    """``https://host[:port]`` of a MinIO, SeaweedFS or other S3-compatible server; None: AWS's endpoint
    for ``region``. Plain ``http://`` only on loopback or a network you trust: every artifact is checked
    against its signed sha256 whatever the transport, and a request's signature never carries the secret,
    but a listener would see what is fetched."""
    region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]{1,32}$")
    """The region requests are signed for (S3-compatible servers accept ``us-east-1``)."""
    access_key_id: SecretStr | None = None
    """Access key id; with ``secret_access_key``. Neither, and no ``credentials_file``: the SDK's default
    chain (``AWS_*`` variables, ``~/.aws``, a pod's role)."""
    secret_access_key: SecretStr | None = None
    """Its secret (``EDGESTREAM_..._S3__SECRET_ACCESS_KEY``, from a secret; never logged)."""
    credentials_file: Path | None = None
    """An AWS-format credentials file (``[profile]`` with ``aws_access_key_id`` and
    ``aws_secret_access_key``) instead of the two keys; read when the store is made."""
    profile: str = "default"
    """The section of ``credentials_file`` to read."""
    ca_file: Path | None = None
    """CA bundle (PEM) the endpoint's certificate must chain to; None: the system's trust store."""
    addressing_style: AddressingStyle | None = None
    """``path``, ``virtual`` or ``auto``; None: ``path`` with an ``endpoint_url`` (what MinIO and
    SeaweedFS serve without wildcard DNS), ``auto`` on AWS."""
    timeout_s: float = Field(default=30.0, gt=0)
    """Bound on connecting to the endpoint and on each read from it."""
    attempts: int = Field(default=3, ge=1)
    """Tries of one request that failed to connect, timed out or got a 5xx; refused credentials, a
    missing bucket or a refused certificate fail at once."""

    @field_validator("url")
    @classmethod
    def _parses(cls, url: str) -> str:
        try:
            parse_s3_url(url)
        except ConfigError as err:
            raise ValueError(str(err)) from err
        return url

    @model_validator(mode="after")
    def _one_credential_source(self) -> S3Settings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key go together: give both or neither")
        if self.access_key_id is not None and self.credentials_file is not None:
            raise ValueError("give either access_key_id/secret_access_key or credentials_file, not both")
        return self

    @property
    def location(self) -> S3Location:
        """The bucket and prefix of ``url``."""
        return parse_s3_url(self.url)

    def resolved_addressing_style(self) -> AddressingStyle:
        """``addressing_style``, or ``path`` with an endpoint and ``auto`` without."""
        if self.addressing_style is not None:
            return self.addressing_style
        return "path" if self.endpoint_url is not None else "auto"

    def credentials(self) -> S3Credentials | None:
        """The key pair from the settings or ``credentials_file``; None for the SDK's default chain.
        :class:`ConfigError` (naming the file and profile, never a key) when the file cannot give one."""
        if self.access_key_id is not None and self.secret_access_key is not None:
            return S3Credentials(self.access_key_id.get_secret_value(), self.secret_access_key)
        if self.credentials_file is None:
            return None
        return read_credentials_file(self.credentials_file, self.profile)

    def __str__(self) -> str:
        """Where, for messages and logs: the URL and the endpoint, nothing about the credentials."""
        return f"{self.location} at {self.endpoint_url or f'AWS {self.region}'}"


def read_credentials_file(path: Path, profile: str) -> S3Credentials:
    """``aws_access_key_id`` and ``aws_secret_access_key`` of section ``profile`` of an AWS-format
    credentials file; :class:`ConfigError` naming what is missing (never a value)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as fh:
            parser.read_file(fh)
    except (OSError, UnicodeDecodeError, configparser.Error) as err:
        raise ConfigError(f"S3 credentials file {path}: cannot read it: {type(err).__name__}") from err
    if not parser.has_section(profile):
        raise ConfigError(f"S3 credentials file {path}: no [{profile}] section")
    section = parser[profile]
    missing = [k for k in ("aws_access_key_id", "aws_secret_access_key") if not section.get(k, "").strip()]
    if missing:
        raise ConfigError(f"S3 credentials file {path}: [{profile}] has no {' or '.join(missing)}")
    return S3Credentials(
        section["aws_access_key_id"].strip(), SecretStr(section["aws_secret_access_key"].strip())
    )


def one_artifact_source(registry_url: str | None, registry_s3: S3Settings | None) -> None:
    """ValueError unless at most one of the registry's HTTPS server and an S3 bucket is where a
    process fetches artifacts: two sources would leave it unclear which one a version came from."""
    if registry_url is not None and registry_s3 is not None:
        raise ValueError(
            "registry_url and registry_s3 are mutually exclusive: artifacts come either from the "
            f"registry's HTTPS server ({registry_url}) or from the bucket {registry_s3.url}; set one"
        )


class RegistryS3Env(BaseSettings):
    """The ``registry`` and ``retrain`` commands' artifact store: ``EDGESTREAM_REGISTRY_S3__URL`` (and
    ``__ENDPOINT_URL``, ``__REGION``, ``__ACCESS_KEY_ID``, ``__SECRET_ACCESS_KEY``,
    ``__CREDENTIALS_FILE``, ``__CA_FILE``...) puts what they publish in that bucket instead of
    ``<home>/artifacts``."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_REGISTRY_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
        hide_input_in_errors=True,
    )

    s3: S3Settings | None = None
    """The bucket, when artifacts go to an object store."""
