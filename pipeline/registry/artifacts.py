"""Content-addressed artifact storage: a blob's name is the sha256 of its bytes.

:class:`ArtifactStore` is what the registry needs from any store (a local directory today, an object
store behind the same three calls tomorrow); ``get`` re-hashes what it reads, so a store never hands
out bytes that differ from their name. :class:`LocalArtifactStore` keeps ``root/sha256/ab/abcdef…``
(the first two hex digits fan the files out), written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from edgestream.pipeline.files import atomic_write, sha256_hex
from edgestream.pipeline.registry.errors import (
    ArtifactMismatch,
    ArtifactNotFound,
    ArtifactUnavailable,
    MalformedRegistryRecord,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

log = logging.getLogger(__name__)

_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")


def check_sha256(sha256: str) -> str:
    """``sha256`` if it is 64 lowercase hex digits, else :class:`MalformedRegistryRecord`."""
    if _SHA256_RE.fullmatch(sha256) is None:
        raise MalformedRegistryRecord(f"not a sha256 (64 lowercase hex digits): {sha256!r}")
    return sha256


@runtime_checkable
class ArtifactStore(Protocol):
    """Where artifact bytes live, named by their sha256."""

    def put(self, data: bytes) -> str:
        """Store ``data`` (idempotent); its hex sha256."""
        ...

    def get(self, sha256: str) -> bytes:
        """The bytes named ``sha256``, re-hashed: :class:`ArtifactMismatch` when they differ,
        :class:`ArtifactNotFound` when there are none."""
        ...

    def has(self, sha256: str) -> bool:
        """Whether a blob named ``sha256`` is stored (not whether it verifies)."""
        ...


class LocalArtifactStore:
    """An :class:`ArtifactStore` in a local directory: ``root/sha256/ab/abcdef…``."""

    def __init__(self, root: Path) -> None:
        self._root = root

    @property
    def root(self) -> Path:
        """The store's directory."""
        return self._root

    def __str__(self) -> str:
        """The directory, as messages name the store."""
        return str(self._root)

    def path(self, sha256: str) -> Path:
        """Where the blob named ``sha256`` lives (whether or not it exists)."""
        check_sha256(sha256)
        return self._root / "sha256" / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        """Store ``data`` atomically; its hex sha256. A stored blob that no longer matches its name
        is replaced (and the repair logged)."""
        sha256 = sha256_hex(data)
        path = self.path(sha256)
        if path.exists():
            try:
                self.get(sha256)
                return sha256
            except ArtifactMismatch as e:
                log.warning("replacing corrupt blob %s: %s", path, e)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
        return sha256

    def get(self, sha256: str) -> bytes:
        """The verified bytes named ``sha256``."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise ArtifactNotFound(sha256, str(self._root)) from e
        actual = sha256_hex(data)
        if actual != sha256:
            raise ArtifactMismatch(sha256, actual, str(path))
        return data

    def has(self, sha256: str) -> bool:
        """Whether ``root/sha256/ab/<sha256>`` exists."""
        return self.path(sha256).is_file()


def through_cache(cache: LocalArtifactStore, sha256: str, fetch: Callable[[str], bytes], where: str) -> bytes:
    """The verified bytes named ``sha256``: ``cache``'s copy when it verifies, else ``fetch(sha256)``
    (which must verify what it returns) written to ``cache``. A cached copy that no longer matches its
    name is removed and fetched again, never served; a cache that cannot be written (full, read-only) is
    :class:`ArtifactUnavailable`, a refusal like any other rather than a process's exit. What the stores
    of another host (``remote.py``, ``s3store.py``) share."""
    check_sha256(sha256)
    if cache.has(sha256):
        try:
            return cache.get(sha256)
        except ArtifactMismatch as err:
            log.warning("cached artifact is corrupt, fetching it again: %s", err)
            cache.path(sha256).unlink(missing_ok=True)
        except ArtifactNotFound:
            pass  # removed since: fetch it
    data = fetch(sha256)
    try:
        cache.put(data)
    except OSError as err:
        raise ArtifactUnavailable(sha256, where, f"fetched, but not cached in {cache.root}: {err}") from err
    return data
