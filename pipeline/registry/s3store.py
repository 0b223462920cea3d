"""An :class:`ArtifactStore` in an S3-compatible object store (AWS S3, MinIO, SeaweedFS), over boto3.

What the registry publishes to and what a worker or gateway on any host reads through, when the
artifacts live in a bucket rather than on the registry's disk or behind ``registry serve``. The blob
named ``<sha256>`` is the object ``<prefix>/sha256/<sha256>`` (``s3config.object_key``).

``get`` answers from a local cache (a :class:`LocalArtifactStore`, re-hashed on every read, a corrupt
copy replaced: ``artifacts.through_cache``) and fetches on a miss; the bytes are hashed before anything
is cached, so an object that differs from its name is :class:`ArtifactMismatch` and never cached (a
bucket is as trusted as a disk: not at all; the signed manifest is then checked by the caller,
``signing.load_verified``). ``put`` is idempotent: an object already there that verifies is left alone,
one that does not is replaced (and the repair logged). ``has`` asks the bucket.

Failures are the registry's errors, never the SDK's: a missing object is :class:`ArtifactNotFound`; a
connection that fails, a timeout or a 5xx is tried again, ``attempts`` times in all with a growing
pause (the SDK's own retries are off, so the bound is this one), then :class:`ArtifactUnavailable`;
refused credentials, a denied request, a missing bucket or a refused certificate are
:class:`ArtifactUnavailable` at once, with a message that says which and what to check. Calls block:
the worker's loader and the gateway run them in a thread.

boto3 (the AWS SDK, maintained by AWS, the S3 client MinIO and SeaweedFS test against) is imported here
and only here; :func:`s3_store` builds its client from :class:`S3Settings`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    SSLError,
)
from botocore.exceptions import ConnectionError as SdkConnectionError

from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.files import sha256_hex
from edgestream.pipeline.registry.artifacts import LocalArtifactStore, through_cache
from edgestream.pipeline.registry.errors import (
    ArtifactMismatch,
    ArtifactNotFound,
    ArtifactUnavailable,
    RegistryError,
)
from edgestream.pipeline.registry.remote import DEFAULT_MAX_ARTIFACT_BYTES
from edgestream.pipeline.registry.s3config import S3Location, S3Settings, object_key

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

log = logging.getLogger(__name__)

T = TypeVar("T")

_CHUNK_BYTES: Final = 1024 * 1024
_NOT_FOUND: Final = frozenset({"NoSuchKey", "404", "NotFound"})
"""Error codes of an object that is not there (a HEAD's 404 has no body, so its code is ``404``)."""
_RETRIABLE: Final = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"})
"""Error codes worth another attempt besides every 5xx."""
_HINTS: Final = {
    "InvalidAccessKeyId": "the store does not know this access key id: check the credentials",
    "SignatureDoesNotMatch": "the request's signature does not verify: check the secret access key",
    "AccessDenied": "access denied: these credentials may not do this in the bucket",
    "403": "refused (HTTP 403): the credentials are wrong or may not read the bucket",
    "NoSuchBucket": "the bucket does not exist",
    "ExpiredToken": "the credentials have expired",
    "InvalidToken": "the session token is not valid",
}
"""What to tell an operator for the refusals that mean a wrong setting rather than a bad moment."""


class S3Client(Protocol):
    """The calls of boto3's S3 client this store makes (keyword arguments, as boto3 takes them)."""

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        """The object's ``Body`` (a stream), ``ContentLength`` and headers."""
        ...

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        """The object's headers; a 404 when there is none."""
        ...

    def put_object(
        self, *, Bucket: str, Key: str, Body: bytes, ContentMD5: str, ContentType: str
    ) -> dict[str, Any]:
        """Store ``Body``; the server checks it against ``ContentMD5`` before keeping it."""
        ...


class _Retriable(Exception):
    """A failure worth another attempt (network, timeout, 5xx, throttling)."""


def s3_store(settings: S3Settings, cache_dir: Path) -> S3ArtifactStore:
    """The store in the bucket ``settings`` names, caching what it reads in ``cache_dir``.
    :class:`ConfigError` when the CA file or the credentials file cannot be used."""
    import boto3
    from botocore.config import Config

    if settings.ca_file is not None and not settings.ca_file.is_file():
        raise ConfigError(f"S3 ca_file {settings.ca_file}: no such file")
    credentials = settings.credentials()
    config = Config(
        connect_timeout=settings.timeout_s,
        read_timeout=settings.timeout_s,
        retries={"mode": "standard", "total_max_attempts": 1},  # ours are the bounded retries
        # The bytes are checked against their sha256 here; the SDK's default CRC checksums are not
        # spoken by every S3-compatible server.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": settings.resolved_addressing_style()},
        user_agent_extra="edgestream",
    )
    try:
        session = boto3.session.Session(
            aws_access_key_id=None if credentials is None else credentials.access_key_id,
            aws_secret_access_key=(
                None if credentials is None else credentials.secret_access_key.get_secret_value()
            ),
            region_name=settings.region,
        )
        client = session.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            verify=str(settings.ca_file) if settings.ca_file is not None else True,
            config=config,
        )
    except BotoCoreError as err:  # e.g. AWS_PROFILE naming a profile ~/.aws does not have
        raise ConfigError(f"S3 client for {settings}: {type(err).__name__}: {err}") from err
    return S3ArtifactStore(
        client,
        settings.location,
        LocalArtifactStore(cache_dir),
        where=str(settings),
        attempts=settings.attempts,
    )


class S3ArtifactStore:
    """:class:`ArtifactStore` in ``location`` of an S3-compatible store, reading through ``cache``."""

    def __init__(
        self,
        client: S3Client,
        location: S3Location,
        cache: LocalArtifactStore,
        *,
        where: str | None = None,
        attempts: int = 3,
        backoff_s: float = 0.5,
        max_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``client``: boto3's S3 client (:func:`s3_store` makes one). ``where``: how messages name the
        store (default: the location). ``attempts`` (>= 1): tries of one request, ``backoff_s`` times the
        attempt number apart; ``max_bytes``: the largest object read."""
        if attempts < 1 or max_bytes < 1:
            raise ValueError("attempts and max_bytes must be >= 1")
        self.location = location
        """The bucket and prefix."""
        self.cache = cache
        """The local copies, content-addressed."""
        self.where = where or str(location)
        """How messages and logs name this store (never with credentials)."""
        self._client = client
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._max_bytes = max_bytes
        self._sleep = sleep

    def __str__(self) -> str:
        """``where``, as messages name the store."""
        return self.where

    def key(self, sha256: str) -> str:
        """The object key of the blob named ``sha256``."""
        return object_key(self.location.prefix, sha256)

    def put(self, data: bytes) -> str:
        """Store ``data`` under its sha256, which is returned. An object already there is read and
        hashed: left alone when it verifies, replaced (and the repair logged) when it does not."""
        sha256 = sha256_hex(data)
        try:
            self._fetch(sha256)
            return sha256
        except ArtifactNotFound:
            pass
        except ArtifactMismatch as err:
            log.warning("replacing a corrupt object in %s: %s", self.where, err)
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        bucket, key = self.location.bucket, self.key(sha256)
        self._retrying(
            sha256,
            "storing",
            lambda: self._client.put_object(
                Bucket=bucket, Key=key, Body=data, ContentMD5=md5, ContentType="application/octet-stream"
            ),
        )
        log.info("stored artifact %s (%d bytes) in %s", sha256[:12], len(data), self.where)
        return sha256

    def get(self, sha256: str) -> bytes:
        """The verified bytes named ``sha256``: the cached copy when it verifies, else fetched, hashed
        and cached."""
        return through_cache(self.cache, sha256, self._fetch, self.where)

    def has(self, sha256: str) -> bool:
        """Whether the bucket has an object for ``sha256`` (not whether it verifies)."""
        bucket, key = self.location.bucket, self.key(sha256)
        try:
            self._retrying(sha256, "looking up", lambda: self._client.head_object(Bucket=bucket, Key=key))
        except ArtifactNotFound:
            return False
        return True

    def _fetch(self, sha256: str) -> bytes:
        """The object of ``sha256``, read and hashed: :class:`ArtifactMismatch` when it differs."""
        key = self.key(sha256)
        data = self._retrying(sha256, "fetching", lambda: self._read(sha256, key))
        actual = sha256_hex(data)
        if actual != sha256:
            raise ArtifactMismatch(sha256, actual, f"s3://{self.location.bucket}/{key}")
        log.info("fetched artifact %s (%d bytes) from %s", sha256[:12], len(data), self.where)
        return data

    def _read(self, sha256: str, key: str) -> bytes:
        """One GET of ``key``'s whole body, bounded by ``max_bytes`` before and while it is read (a
        server may send no length, or a wrong one); a body cut short is worth another attempt."""
        response = self._client.get_object(Bucket=self.location.bucket, Key=key)
        body = response["Body"]
        try:
            length = int(response.get("ContentLength", -1))
            if length > self._max_bytes:
                raise ArtifactUnavailable(
                    sha256, self.where, f"{length} bytes, over the {self._max_bytes} limit"
                )
            chunks: list[bytes] = []
            read = 0
            while chunk := body.read(_CHUNK_BYTES):
                read += len(chunk)
                if read > self._max_bytes:
                    raise ArtifactUnavailable(sha256, self.where, f"over the {self._max_bytes} byte limit")
                chunks.append(chunk)
        finally:
            body.close()
        if length >= 0 and read != length:
            raise _Retriable(f"the connection closed after {read} of {length} bytes")
        return b"".join(chunks)

    def _retrying(self, sha256: str, doing: str, call: Callable[[], T]) -> T:
        """``call()``, tried again on a :class:`_Retriable` failure up to ``attempts`` times in all."""
        last = ""
        for attempt in range(1, self._attempts + 1):
            try:
                return _classified(sha256, self.where, call)
            except _Retriable as err:
                last = str(err)
                log.warning(
                    "%s %s in %s (attempt %d/%d): %s",
                    doing,
                    sha256[:12],
                    self.where,
                    attempt,
                    self._attempts,
                    err,
                )
                if attempt < self._attempts:
                    self._sleep(self._backoff_s * attempt)
        why = f"{doing}: {self._attempts} attempts failed; last: {last}"
        raise ArtifactUnavailable(sha256, self.where, why)


def _classified(sha256: str, where: str, call: Callable[[], T]) -> T:
    """``call()`` with the SDK's exceptions turned into the registry's errors or :class:`_Retriable`."""
    try:
        return call()
    except RegistryError:
        raise
    except ClientError as err:
        raise _client_error(sha256, where, err) from err
    except SSLError as err:
        raise ArtifactUnavailable(
            sha256, where, f"TLS: the endpoint's certificate was refused (check ca_file): {err}"
        ) from err
    except (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError) as err:
        raise ArtifactUnavailable(
            sha256,
            where,
            f"no usable credentials ({type(err).__name__}): set access_key_id and "
            "secret_access_key, or credentials_file",
        ) from err
    except (SdkConnectionError, HTTPClientError, IncompleteReadError) as err:  # timeouts, resets
        raise _Retriable(f"{type(err).__name__}: {err}") from err
    except BotoCoreError as err:
        raise ArtifactUnavailable(sha256, where, f"{type(err).__name__}: {err}") from err


def _client_error(sha256: str, where: str, err: ClientError) -> Exception:
    """What an error answer from the server means: not found, worth retrying, or a refusal."""
    error = err.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    if code in _NOT_FOUND:
        return ArtifactNotFound(sha256, where)
    if status >= 500 or code in _RETRIABLE:
        return _Retriable(f"{code or 'HTTP'} {status}: {str(error.get('Message', ''))[:200]}")
    hint = _HINTS.get(code) or f"refused: {str(error.get('Message', '')).strip()[:200] or 'no message'}"
    return ArtifactUnavailable(sha256, where, f"{hint} ({code or 'no code'}, HTTP {status})")
