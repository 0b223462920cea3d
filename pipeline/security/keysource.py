"""Where a worker's key ring comes from: a key file it re-reads when the file changes, or the same JSON
in a secret, fixed for the process's life.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.keyring import DEFAULT_CACHE_ENTRIES

if TYPE_CHECKING:
    from collections.abc import Iterable

    from edgestream.pipeline.security.keyring import KeyRing

log = logging.getLogger(__name__)


class KeyFileWatcher:
    """The key ring of a key file, re-read when the file changes: one ``stat`` per ``current()``.

    A changed file that does not parse, or lacks a required region, keeps the previous ring and logs
    one error per bad version of the file: the worker never stops and never runs on half a file. Call
    it from one thread (the worker's fetch loop); the rings it returns are thread-safe.
    """

    __slots__ = ("_cache_entries", "_failed", "_path", "_required", "_ring", "_signature")

    def __init__(
        self,
        path: Path,
        *,
        required_regions: Iterable[str] = (),
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
    ) -> None:
        """Load ``path`` now; raises ConfigError if it cannot be used (a worker should not start)."""
        self._path: Path | None = path
        self._required = tuple(required_regions)
        self._cache_entries = cache_entries
        self._failed: tuple[int, ...] | None = None
        try:
            self._signature: tuple[int, ...] | None = _signature(path)
        except OSError as e:
            raise ConfigError(f"cannot read key file {path}: {e}") from e
        self._ring = self._read(path)

    @classmethod
    def fixed(cls, ring: KeyRing) -> KeyFileWatcher:
        """A watcher of keys that cannot change (a key secret): ``current()`` is always ``ring``."""
        watcher = cls.__new__(cls)
        watcher._path = None
        watcher._required = ()
        watcher._cache_entries = 0
        watcher._failed = None
        watcher._signature = None
        watcher._ring = ring
        return watcher

    def __repr__(self) -> str:
        return f"KeyFileWatcher(path={self._path!r}, ring={self._ring!r})"

    def current(self) -> KeyRing:
        """The ring of the file as it is now, or the last good one if the file changed for the worse."""
        if self._path is None:
            return self._ring
        try:
            signature = _signature(self._path)
        except OSError as e:
            signature = (-1, e.errno or 0)
            if signature != self._failed:
                log.error("key file %s cannot be read, keeping the previous keys: %s", self._path, e)
                self._failed = signature
            return self._ring
        if signature in (self._signature, self._failed):
            return self._ring
        try:
            ring = self._read(self._path)
        except ConfigError as e:
            log.error("key file %s changed but cannot be used, keeping the previous keys: %s", self._path, e)
            self._failed = signature
            return self._ring
        ring.adopt_cache(self._ring)
        self._ring, self._signature, self._failed = ring, signature, None
        log.info("key file %s reloaded: %r", self._path, ring)
        return ring

    def _read(self, path: Path) -> KeyRing:
        ring = keyfile.load(path, cache_entries=self._cache_entries)
        missing = [region for region in self._required if region not in ring.regions]
        if missing:
            raise ConfigError(f"key file {path} has no keys for region(s) {', '.join(missing)}")
        return ring


class KeySource(BaseModel):
    """Where the region master keys come from: a key file, or the same JSON in a secret."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    file: Path | None = None
    """Key file (JSON, mode 0600); a worker re-reads it when it changes."""
    secret: SecretStr | None = None
    """The key file's JSON itself, from a secret (``EDGESTREAM_KEYS``); fixed for the process's life."""

    @model_validator(mode="after")
    def _exactly_one(self) -> KeySource:
        if (self.file is None) == (self.secret is None):
            raise ValueError("give exactly one of a key file and a key secret")
        return self

    @classmethod
    def of(cls, file: Path | None, secret: SecretStr | None, *, default_file: Path) -> KeySource:
        """The secret if set, else ``file``, else ``default_file``. Raises ConfigError if both are set."""
        if file is not None and secret is not None:
            raise ConfigError("both a key file and a key secret (EDGESTREAM_KEYS) are set; set one")
        if secret is not None:
            return cls(secret=secret)
        return cls(file=file if file is not None else default_file)

    def load(self, *, cache_entries: int = DEFAULT_CACHE_ENTRIES) -> KeyRing:
        """The key ring now. Raises ConfigError."""
        if self.secret is not None:
            return keyfile.load_secret(self.secret, cache_entries=cache_entries)
        assert self.file is not None
        return keyfile.load(self.file, cache_entries=cache_entries)

    def watcher(
        self, *, required_regions: Iterable[str] = (), cache_entries: int = DEFAULT_CACHE_ENTRIES
    ) -> KeyFileWatcher:
        """A watcher of the key file (re-read on change), or of the secret (fixed). Raises ConfigError."""
        if self.secret is None:
            assert self.file is not None
            return KeyFileWatcher(self.file, required_regions=required_regions, cache_entries=cache_entries)
        ring = keyfile.load_secret(self.secret, cache_entries=cache_entries)
        missing = [region for region in required_regions if region not in ring.regions]
        if missing:
            raise ConfigError(f"key secret has no keys for region(s) {', '.join(missing)}")
        return KeyFileWatcher.fixed(ring)


def _signature(path: Path) -> tuple[int, ...]:
    """What changes when the file is replaced or rewritten: device, inode, size, times."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
