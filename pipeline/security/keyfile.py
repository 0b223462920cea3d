"""Device keys: HKDF-SHA256 from a region master key, the key ring the edge derives them from, and the
key file whose key ids rotate and whose enrolled devices can be forgotten.

A device holds only its own 32-byte key; the edge holds each region's master keys (by key id) and
derives a device's key on demand. ``rotate`` adds a master key with the next id and makes it current;
the previous id stays accepted for a window, then is refused as ``retired_key``; ``retire`` deletes a
key's bytes from the file and keeps its id, so the file proves it. ``enroll`` gives a device a secret
random HKDF salt of its own; ``forget`` deletes it (crypto-shredding): without the salt no one, master
key or not, can derive that device's key again, so every envelope of it still retained is unreadable.
The derivation is specified byte for byte in ``docs/contract.md`` ("Device keys"), the key file in its
"Key file" section.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

from edgestream.pipeline.contract.envelope import MAX_DEVICE_ID_BYTES, MAX_KEY_ID
from edgestream.pipeline.errors import ConfigError, ForgottenDevice, RetiredKey, UnknownKeyId
from edgestream.pipeline.security.derive import (
    HKDF_SALT,
    MASTER_KEY_BYTES,
    derive_device_key,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

log = logging.getLogger(__name__)

DEVICE_SALT_BYTES: Final = 32
"""Length of an enrolled device's secret HKDF salt: the key material ``forget`` deletes."""
DEFAULT_CACHE_ENTRIES: Final = 10_000
"""Derived keys a ``KeyRing`` keeps (about 150 bytes each)."""
KEY_FILE_VERSION: Final = 2
"""The key file version this build writes; it reads version 1 (a hex string per key id) unchanged."""
KEY_FILE_MODE: Final = 0o600
"""Key files, and the lock file beside them, are private to their owner."""


KeyState = Literal["current", "active", "accepted", "expired", "retired"]
"""current: devices seal with it. active: accepted, no end set. accepted: accepted until its window
ends. expired: its window ended (refused) but its bytes are still in the file. retired: bytes deleted."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class MasterKey:
    """One key id of a region, as the key file records it. ``repr`` never shows the key bytes."""

    master: bytes | None = field(repr=False)
    """The 32-byte master key; None once retired (the file keeps only the id and its state)."""
    created_at_ms: int | None = None
    """When it was made (Unix ms); None for keys from a version-1 file."""
    retire_at_ms: int | None = None
    """End of its rotation window (Unix ms): accepted before it, refused from it on. None: no end."""
    retired_at_ms: int | None = None
    """When it stopped being accepted and its bytes were deleted (Unix ms); only on a retired key."""

    @property
    def retired(self) -> bool:
        """True once its bytes are deleted."""
        return self.master is None


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A device enrolled in a region, as the key file records it. ``repr`` never shows the salt."""

    salt: bytes | None = field(repr=False)
    """Its secret 32-byte HKDF salt, the device's own key material; None once forgotten."""
    enrolled_at_ms: int | None = None
    """When it was enrolled (Unix ms); not kept once it is forgotten."""
    forgotten_at_ms: int | None = None
    """When its salt was deleted (Unix ms); only on a forgotten device."""

    @property
    def forgotten(self) -> bool:
        """True once its salt is deleted: its key can never be derived again."""
        return self.salt is None


class KeyStatus(NamedTuple):
    """A key id of a region and its state, as ``status`` reports it."""

    region: str
    """The region."""
    key_id: int
    """The key id."""
    state: KeyState
    """current, active, accepted (until ``until_ms``), expired (at ``until_ms``) or retired."""
    created_at_ms: int | None
    """When it was made (Unix ms); None for keys from a version-1 file."""
    until_ms: int | None
    """accepted: end of its window; expired: when the window ended; retired: when; else None."""


class KeyRing:
    """Region master keys by key id with their rotation state, the devices enrolled in each region,
    and a bounded cache of the device keys derived from them.

    Immutable apart from the cache, and thread-safe: a changed key file makes a new ring (see
    ``KeyFileWatcher``). Never logs or shows key bytes or salts: ``repr`` lists regions and key ids,
    and counts devices.
    """

    __slots__ = ("_cache", "_cache_entries", "_current", "_devices", "_keys", "_lock")

    def __init__(
        self,
        regions: Mapping[str, Mapping[int, bytes | MasterKey]],
        current: Mapping[str, int] | None = None,
        *,
        devices: Mapping[str, Mapping[str, Enrolment]] | None = None,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
    ) -> None:
        """``regions``: region -> {key id: 32-byte master key, or a ``MasterKey`` with its state}.
        ``current``: the key id devices of a region seal with (default: its highest key id that is
        neither retired nor in a rotation window). ``devices``: region -> {device id: its enrolment};
        a device not in it derives its key with the public salt. Raises ConfigError on a bad key, id,
        state or enrolment."""
        if cache_entries < 0:
            raise ConfigError("cache_entries must be >= 0")
        keys: dict[str, dict[int, MasterKey]] = {}
        for region, entries in regions.items():
            if not isinstance(region, str) or not region:
                raise ConfigError("region names must be non-empty strings")
            if not entries:
                raise ConfigError(f"region {region!r} has no master keys")
            keys[region] = {key_id: _checked_key(region, key_id, entry) for key_id, entry in entries.items()}
        chosen = dict(current or {})
        for region, key_id in chosen.items():
            entry = keys.get(region, {}).get(key_id)
            if entry is None:
                raise ConfigError(f"current key {key_id!r} of region {region!r} is not in the key ring")
            if entry.master is None or entry.retire_at_ms is not None:
                raise ConfigError(f"current key {key_id} of region {region!r} is retired or being retired")
        for region, entries in keys.items():
            if region not in chosen:
                active = [k for k, e in entries.items() if e.master is not None and e.retire_at_ms is None]
                if not active:
                    raise ConfigError(f"region {region!r} has no active master key to seal with")
                chosen[region] = max(active)
        self._keys = keys
        self._current = {region: chosen[region] for region in keys}
        self._devices: dict[str, dict[str, Enrolment]] = {}
        for region, enrolled in (devices or {}).items():
            if region not in keys:
                raise ConfigError(f"devices are enrolled in region {region!r}, which has no master keys")
            if enrolled:
                self._devices[region] = {
                    device_id: _checked_enrolment(region, device_id, entry)
                    for device_id, entry in enrolled.items()
                }
        self._cache: OrderedDict[tuple[str, int, str], bytes] = OrderedDict()
        self._cache_entries = cache_entries
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        key_ids = {
            r: sorted(k for k, e in keys.items() if e.master is not None) for r, keys in self._keys.items()
        }
        retired = {
            r: sorted(k for k, e in keys.items() if e.master is None) for r, keys in self._keys.items()
        }
        retired = {r: ids for r, ids in retired.items() if ids}
        shown = f"KeyRing(key_ids={key_ids!r}, retired={retired!r}, current={self._current!r}"
        if self._devices:
            enrolled = {r: sum(not e.forgotten for e in d.values()) for r, d in self._devices.items()}
            forgotten = {r: sum(e.forgotten for e in d.values()) for r, d in self._devices.items()}
            shown += f", enrolled={enrolled!r}, forgotten={forgotten!r}"
        return shown + ")"

    @property
    def regions(self) -> tuple[str, ...]:
        """Regions with master keys, in the order given."""
        return tuple(self._keys)

    def key_ids(self, region: str) -> tuple[int, ...]:
        """Key ids of ``region`` whose master key the ring holds (not retired), ascending; empty for an
        unknown region. A key in a window that has ended is still listed: see ``key_state``."""
        return tuple(sorted(k for k, e in self._keys.get(region, {}).items() if e.master is not None))

    def keys(self, region: str) -> dict[int, MasterKey]:
        """Every key id of ``region`` (retired ones too) with its state, ascending; empty if unknown."""
        return dict(sorted(self._keys.get(region, {}).items()))

    def current_key_id(self, region: str) -> int:
        """The key id devices in ``region`` seal with now. Raises ConfigError for an unknown region."""
        try:
            return self._current[region]
        except KeyError as e:
            raise ConfigError(f"no master keys for region {region!r}") from e

    def key_state(self, region: str, key_id: int, now_ms: float | None = None) -> KeyState:
        """The state of ``key_id`` at ``now_ms`` (default: now). Raises UnknownKeyId if never seen."""
        entry = self._keys.get(region, {}).get(key_id)
        if entry is None:
            raise UnknownKeyId(region, key_id)
        if entry.master is None:
            return "retired"
        if key_id == self._current[region]:
            return "current"
        if entry.retire_at_ms is None:
            return "active"
        return "accepted" if (_now_ms() if now_ms is None else now_ms) < entry.retire_at_ms else "expired"

    def devices(self, region: str) -> dict[str, Enrolment]:
        """The devices enrolled in ``region`` (forgotten ones too) by id, sorted; empty if none."""
        return dict(sorted(self._devices.get(region, {}).items()))

    def enrolment(self, region: str, device_id: str) -> Enrolment | None:
        """``device_id``'s enrolment in ``region``, or None if it was never enrolled there."""
        return self._devices.get(region, {}).get(device_id)

    def status(self, now_ms: float | None = None) -> list[KeyStatus]:
        """Every key id of every region with its state at ``now_ms`` (default: now)."""
        now = _now_ms() if now_ms is None else now_ms
        rows = []
        for region in self._keys:
            for key_id, entry in self.keys(region).items():
                state = self.key_state(region, key_id, now)
                until = entry.retired_at_ms if state == "retired" else entry.retire_at_ms
                rows.append(KeyStatus(region, key_id, state, entry.created_at_ms, until))
        return rows

    def device_key(self, region: str, device_id: str, key_id: int, now_ms: float | None = None) -> bytes:
        """The 32-byte key of ``device_id`` under master key ``key_id`` of ``region``.

        An enrolled device's key is derived with its own salt, any other device's with the public one.
        Raises UnknownKeyId when the region never had that key id; RetiredKey when it is retired or
        its rotation window ended at or before ``now_ms`` (Unix ms; default: the wall clock, read only
        for a key in a window); ForgottenDevice when the device was forgotten. States are checked
        before the cache: a retired key or a forgotten device's key is never served.
        """
        entry = self._keys.get(region, {}).get(key_id)
        if entry is None:
            raise UnknownKeyId(region, key_id)
        if entry.master is None:
            raise RetiredKey(region, key_id, entry.retired_at_ms)
        if entry.retire_at_ms is not None and (_now_ms() if now_ms is None else now_ms) >= entry.retire_at_ms:
            raise RetiredKey(region, key_id, entry.retire_at_ms)
        enrolment = self._devices.get(region, {}).get(device_id)
        if enrolment is not None and enrolment.salt is None:
            raise ForgottenDevice(region, device_id, enrolment.forgotten_at_ms)
        cache_key = (region, key_id, device_id)
        with self._lock:
            key = self._cache.get(cache_key)
            if key is not None:
                self._cache.move_to_end(cache_key)
                return key
        salt = HKDF_SALT if enrolment is None or enrolment.salt is None else enrolment.salt
        key = derive_device_key(entry.master, device_id, key_id, salt=salt)
        if self._cache_entries:
            with self._lock:
                self._cache[cache_key] = key
                if len(self._cache) > self._cache_entries:
                    self._cache.popitem(last=False)
        return key

    # -- rotation: pure, a new ring each ------------------------------------------------------------

    def rotated(self, region: str, window_ms: int, now_ms: int) -> KeyRing:
        """A new random master key with the next key id becomes current in ``region``; the previous
        current key is accepted until ``now_ms + window_ms`` (a window of 0 retires it now). Keys whose
        window has ended are retired. Raises ConfigError."""
        if window_ms < 0:
            raise ConfigError(f"the rotation window must be >= 0 ms, got {window_ms}")
        keys = self._swept(now_ms)
        entries = self._region_keys(keys, region)
        new_id = max(entries) + 1
        if new_id > MAX_KEY_ID:
            raise ConfigError(f"region {region!r} has used every key id up to {MAX_KEY_ID}")
        previous_id = self._current[region]
        previous = entries[previous_id]
        if window_ms == 0:
            entries[previous_id] = MasterKey(None, previous.created_at_ms, retired_at_ms=now_ms)
        else:
            entries[previous_id] = replace(previous, retire_at_ms=now_ms + window_ms)
        entries[new_id] = MasterKey(os.urandom(MASTER_KEY_BYTES), created_at_ms=now_ms)
        return KeyRing(
            keys, {**self._current, region: new_id}, devices=self._devices, cache_entries=self._cache_entries
        )

    def retired(self, region: str, key_id: int, now_ms: int) -> KeyRing:
        """``key_id`` of ``region`` retired now: its bytes deleted, its id kept. Keys whose window has
        ended are retired too. Raises ConfigError for the current key or an id the region never had."""
        keys = self._swept(now_ms)
        entries = self._region_keys(keys, region)
        entry = entries.get(key_id)
        if entry is None:
            raise ConfigError(f"region {region!r} has no key id {key_id}")
        if key_id == self._current[region]:
            raise ConfigError(
                f"key {key_id} is the current key of region {region!r}: rotate first, then retire it"
            )
        if entry.master is not None:
            entries[key_id] = MasterKey(None, entry.created_at_ms, retired_at_ms=now_ms)
        return KeyRing(keys, self._current, devices=self._devices, cache_entries=self._cache_entries)

    # -- enrolment: pure, a new ring each (or this one when nothing changes) ----------------------------

    def enrolled(self, region: str, device_ids: Iterable[str], now_ms: int) -> KeyRing:
        """The devices given get a fresh random salt in ``region``; one already enrolled keeps its own
        (this ring itself is returned when every one is). Raises ConfigError for an unknown region, a
        bad device id, or a device that was forgotten: its id stays retired, enrol it under a new one."""
        self._region_keys(self._keys, region)
        enrolled = dict(self._devices.get(region, {}))
        for device_id in device_ids:
            entry = enrolled.get(device_id)
            if entry is None:
                enrolled[device_id] = Enrolment(os.urandom(DEVICE_SALT_BYTES), enrolled_at_ms=now_ms)
            elif entry.forgotten:
                raise ConfigError(
                    f"device {device_id!r} of region {region!r} was forgotten: its id cannot be enrolled "
                    "again (its retained envelopes must stay unreadable); enrol the device under a new id"
                )
        if len(enrolled) == len(self._devices.get(region, {})):
            return self
        return self._with_devices(region, enrolled)

    def forgotten(self, region: str, device_id: str, now_ms: int) -> KeyRing:
        """``device_id`` of ``region`` forgotten now: its salt deleted, a tombstone kept (this ring
        itself if it already was). Raises ConfigError for an unknown region or a device that was never
        enrolled: its key derives from the master key alone, and only retiring the key id erases it."""
        self._region_keys(self._keys, region)
        entry = self._devices.get(region, {}).get(device_id)
        if entry is None:
            raise ConfigError(
                f"device {device_id!r} was never enrolled in region {region!r}: its key derives from the "
                "master key alone and cannot be erased on its own (only by retiring the key ids it used)"
            )
        if entry.forgotten:
            return self
        enrolled = dict(self._devices[region])
        enrolled[device_id] = Enrolment(None, forgotten_at_ms=now_ms)
        return self._with_devices(region, enrolled)

    def _with_devices(self, region: str, enrolled: dict[str, Enrolment]) -> KeyRing:
        devices = {**self._devices, region: enrolled}
        return KeyRing(self._keys, self._current, devices=devices, cache_entries=self._cache_entries)

    def _swept(self, now_ms: int) -> dict[str, dict[int, MasterKey]]:
        """A copy of the keys in which every key whose window ended by ``now_ms`` is retired."""
        keys: dict[str, dict[int, MasterKey]] = {}
        for region, entries in self._keys.items():
            keys[region] = {}
            for key_id, entry in entries.items():
                if (
                    entry.master is not None
                    and entry.retire_at_ms is not None
                    and entry.retire_at_ms <= now_ms
                ):
                    entry = MasterKey(None, entry.created_at_ms, retired_at_ms=entry.retire_at_ms)
                keys[region][key_id] = entry
        return keys

    @staticmethod
    def _region_keys(keys: dict[str, dict[int, MasterKey]], region: str) -> dict[int, MasterKey]:
        try:
            return keys[region]
        except KeyError as e:
            raise ConfigError(f"no region {region!r} in the key ring") from e

    def _adopt_cache(self, old: KeyRing) -> None:
        """Keep ``old``'s derived keys whose master key and device enrolment this ring holds unchanged
        (never a retired key's, never a forgotten device's)."""
        if not self._cache_entries:
            return
        with old._lock:
            cached = list(old._cache.items())
        kept = []
        for (region, key_id, device_id), key in cached:
            entry = self._keys.get(region, {}).get(key_id)
            enrolment = self.enrolment(region, device_id)
            if (
                entry is not None
                and entry.master is not None
                and entry.master == old._keys[region][key_id].master
                and (enrolment is None or not enrolment.forgotten)
                and enrolment == old.enrolment(region, device_id)
            ):
                kept.append(((region, key_id, device_id), key))
        with self._lock:
            self._cache.update(kept[-self._cache_entries :])

    # -- key file and secret --------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path, *, cache_entries: int = DEFAULT_CACHE_ENTRIES) -> KeyRing:
        """Read a key file, version 1 or 2, with its enrolled devices (format in ``docs/contract.md``).
        Raises ConfigError naming the file."""
        return cls._of_document(_read_key_file(path), f"key file {path}", cache_entries)

    @classmethod
    def from_secret(cls, text: SecretStr, *, cache_entries: int = DEFAULT_CACHE_ENTRIES) -> KeyRing:
        """Read the key file's JSON from a secret (``EDGESTREAM_KEYS``). Raises ConfigError, which never
        quotes the secret."""
        try:
            document = json.loads(text.get_secret_value())
        except json.JSONDecodeError as e:
            problem = f"{e.msg} at character {e.pos}"
        else:
            return cls._of_document(document, "key secret", cache_entries)
        # Raised outside the handler on purpose: a JSONDecodeError holds the whole secret in its ``doc``
        # attribute, and neither ``__cause__`` nor ``__context__`` may keep it alive in a traceback.
        raise ConfigError(f"key secret: not JSON ({problem})")

    @classmethod
    def _of_document(cls, document: object, where: str, cache_entries: int) -> KeyRing:
        try:
            regions, current, devices = _parse_key_file(document)
            return cls(regions, current, devices=devices, cache_entries=cache_entries)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e

    @classmethod
    def create(
        cls,
        path: Path,
        regions: Iterable[str],
        *,
        key_id: int = 1,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        now_ms: int | None = None,
    ) -> KeyRing:
        """Make a fresh random master key per region and write them to ``path`` (mode 0600).

        Refuses to overwrite an existing file (ConfigError): losing a master key orphans every device
        keyed from it.
        """
        created_at_ms = _now_ms() if now_ms is None else now_ms
        masters = {
            region: {key_id: MasterKey(os.urandom(MASTER_KEY_BYTES), created_at_ms)} for region in regions
        }
        ring = cls(masters, cache_entries=cache_entries)
        data = _key_file_bytes(ring)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
        except OSError as e:
            raise ConfigError(f"cannot create key file {path}: {e}") from e
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        except OSError as e:
            path.unlink(missing_ok=True)
            raise ConfigError(f"cannot write key file {path}: {e}") from e
        return ring


# -- operations on a key file -------------------------------------------------------------------------


def rotate(path: Path, region: str, window_ms: int, *, now_ms: int | None = None) -> KeyRing:
    """``KeyRing.rotated`` on the key file at ``path``: rewritten atomically (mode 0600) under a lock.
    Returns the new ring. Raises ConfigError."""
    now = _now_ms() if now_ms is None else now_ms
    return _edit_key_file(path, lambda ring: ring.rotated(region, window_ms, now))


def retire(path: Path, region: str, key_id: int, *, now_ms: int | None = None) -> KeyRing:
    """``KeyRing.retired`` on the key file at ``path``: rewritten atomically (mode 0600) under a lock.
    Returns the new ring. Raises ConfigError."""
    now = _now_ms() if now_ms is None else now_ms
    return _edit_key_file(path, lambda ring: ring.retired(region, key_id, now))


def status(path: Path, *, now_ms: int | None = None) -> list[KeyStatus]:
    """Every key id in the key file at ``path`` with its state at ``now_ms``. Raises ConfigError."""
    return KeyRing.load(path, cache_entries=0).status(now_ms)


def enroll(
    path: Path, region: str, device_id: str, *, key_id: int | None = None, now_ms: int | None = None
) -> bytes:
    """Enrol ``device_id`` in ``region`` of the key file at ``path`` and return the key the device is
    provisioned with: under ``key_id`` (default: the region's current key id), derived with its own
    secret salt. Idempotent: an enrolled device keeps its salt, so the same key comes back. Raises
    ConfigError, for a forgotten device too (its id is never enrolled again)."""
    return enroll_devices(path, region, [device_id], key_id=key_id, now_ms=now_ms)[device_id]


def enroll_devices(
    path: Path,
    region: str,
    device_ids: Iterable[str],
    *,
    key_id: int | None = None,
    now_ms: int | None = None,
) -> dict[str, bytes]:
    """``enroll`` for many devices of one region, in one write of the file (none when every one is
    enrolled already): their keys by device id. Raises ConfigError."""
    ids = list(dict.fromkeys(device_ids))
    now = _now_ms() if now_ms is None else now_ms
    keys: dict[str, bytes] = {}

    def change(ring: KeyRing) -> KeyRing:
        enrolled = ring.enrolled(region, ids, now)
        chosen = enrolled.current_key_id(region) if key_id is None else key_id
        try:  # before the file is written: a key id devices cannot seal with enrols no one
            keys.update((device_id, enrolled.device_key(region, device_id, chosen, now)) for device_id in ids)
        except (UnknownKeyId, RetiredKey) as e:
            raise ConfigError(f"cannot provision devices with key {chosen} of region {region!r}: {e}") from e
        return enrolled

    _edit_key_file(path, change)
    return keys


def forget(path: Path, region: str, device_id: str, *, now_ms: int | None = None) -> Enrolment:
    """``KeyRing.forgotten`` on the key file at ``path``: the device's salt is deleted and a tombstone
    kept, rewritten atomically (mode 0600) under a lock. Returns the tombstone (the earlier one if it
    was forgotten before). Raises ConfigError, for a device never enrolled too."""
    now = _now_ms() if now_ms is None else now_ms
    ring = _edit_key_file(path, lambda ring: ring.forgotten(region, device_id, now))
    tombstone = ring.enrolment(region, device_id)
    assert tombstone is not None
    return tombstone


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
        ring._adopt_cache(self._ring)
        self._ring, self._signature, self._failed = ring, signature, None
        log.info("key file %s reloaded: %r", self._path, ring)
        return ring

    def _read(self, path: Path) -> KeyRing:
        ring = KeyRing.load(path, cache_entries=self._cache_entries)
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
            return KeyRing.from_secret(self.secret, cache_entries=cache_entries)
        assert self.file is not None
        return KeyRing.load(self.file, cache_entries=cache_entries)

    def watcher(
        self, *, required_regions: Iterable[str] = (), cache_entries: int = DEFAULT_CACHE_ENTRIES
    ) -> KeyFileWatcher:
        """A watcher of the key file (re-read on change), or of the secret (fixed). Raises ConfigError."""
        if self.secret is None:
            assert self.file is not None
            return KeyFileWatcher(self.file, required_regions=required_regions, cache_entries=cache_entries)
        ring = KeyRing.from_secret(self.secret, cache_entries=cache_entries)
        missing = [region for region in required_regions if region not in ring.regions]
        if missing:
            raise ConfigError(f"key secret has no keys for region(s) {', '.join(missing)}")
        return KeyFileWatcher.fixed(ring)


# -- key file format ----------------------------------------------------------------------------------

_ENTRY_FIELDS: Final = frozenset({"key", "retired", "created_at_ms", "retire_at_ms", "retired_at_ms"})
_ENROLMENT_FIELDS: Final = frozenset({"salt", "enrolled_at_ms"})
_TOMBSTONE_FIELDS: Final = frozenset({"forgotten_at_ms"})


def _checked_key(region: str, key_id: object, entry: object) -> MasterKey:
    if type(key_id) is not int or not 0 <= key_id <= MAX_KEY_ID:
        raise ConfigError(f"region {region!r}: key id {key_id!r} is not a uint32")
    if isinstance(entry, bytes):
        entry = MasterKey(entry)
    if not isinstance(entry, MasterKey) or (
        entry.master is not None
        and (not isinstance(entry.master, bytes) or len(entry.master) != MASTER_KEY_BYTES)
    ):
        raise ConfigError(f"region {region!r}: master key {key_id} is not {MASTER_KEY_BYTES} bytes")
    return entry


def _checked_enrolment(region: str, device_id: object, entry: object) -> Enrolment:
    if not isinstance(device_id, str):
        raise ConfigError(f"region {region!r}: device ids are strings, got {type(device_id).__name__}")
    size = len(device_id.encode())
    if not 1 <= size <= MAX_DEVICE_ID_BYTES:
        raise ConfigError(
            f"region {region!r}: device {device_id!r}: device id must be 1..{MAX_DEVICE_ID_BYTES} UTF-8 "
            f"bytes, got {size}"
        )
    if not isinstance(entry, Enrolment) or (
        entry.salt is not None and (not isinstance(entry.salt, bytes) or len(entry.salt) != DEVICE_SALT_BYTES)
    ):
        raise ConfigError(f"region {region!r}: device {device_id!r}: salt is not {DEVICE_SALT_BYTES} bytes")
    return entry


def _read_key_file(path: Path) -> object:
    try:
        mode = path.stat().st_mode
        document: object = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read key file {path}: {e}") from e
    if stat.S_IMODE(mode) & 0o077:
        log.warning("key file %s is readable by group or others (mode %o)", path, stat.S_IMODE(mode))
    return document


def _parse_key_file(
    document: object,
) -> tuple[dict[str, dict[int, MasterKey]], dict[str, int], dict[str, dict[str, Enrolment]]]:
    if not isinstance(document, dict) or not isinstance(document.get("regions"), dict):
        raise ConfigError('expected {"regions": {region: {key id: key}}, "current": {region: key id}}')
    version = document.get("version", 1)
    if type(version) is not int or not 1 <= version <= KEY_FILE_VERSION:
        raise ConfigError(f"version {version!r} is not one this build reads (1 to {KEY_FILE_VERSION})")
    regions: dict[str, dict[int, MasterKey]] = {}
    for region, keys in document["regions"].items():
        if not isinstance(keys, dict):
            raise ConfigError(f"region {region!r}: expected a map of key id to master key")
        regions[region] = {}
        for key_id, value in keys.items():
            if not (isinstance(key_id, str) and key_id.isdecimal()):
                raise ConfigError(f"region {region!r}: key ids are decimal strings, keys hex strings")
            regions[region][int(key_id)] = _parse_key_entry(f"region {region!r}: master key {key_id}", value)
    current = document.get("current", {})
    if not isinstance(current, dict) or not all(type(v) is int for v in current.values()):
        raise ConfigError("current must map region names to integer key ids")
    return regions, current, _parse_devices(document.get("devices", {}))


def _parse_devices(devices: object) -> dict[str, dict[str, Enrolment]]:
    """``{region: {device id: {"salt": hex, "enrolled_at_ms": ms} or {"forgotten_at_ms": ms}}}``."""
    if not isinstance(devices, dict):
        raise ConfigError("devices must map region names to {device id: enrolment}")
    parsed: dict[str, dict[str, Enrolment]] = {}
    for region, enrolled in devices.items():
        if not isinstance(enrolled, dict):
            raise ConfigError(f"devices of region {region!r}: expected a map of device id to enrolment")
        parsed[region] = {
            device_id: _parse_enrolment(f"region {region!r}: device {device_id!r}", value)
            for device_id, value in enrolled.items()
        }
    return parsed


def _parse_enrolment(where: str, value: object) -> Enrolment:
    """``{"salt": hex, "enrolled_at_ms": ms}`` (enrolled) or ``{"forgotten_at_ms": ms}`` (a tombstone).
    Errors never quote the salt."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected an object")
    fields = set(value)
    if "salt" in fields:
        unknown = sorted(fields - _ENROLMENT_FIELDS)
    elif fields == _TOMBSTONE_FIELDS:
        unknown = []
    else:
        raise ConfigError(f'{where}: needs "salt" (64 hex digits) or, once forgotten, only "forgotten_at_ms"')
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
    times: dict[str, int | None] = {}
    for name in ("enrolled_at_ms", "forgotten_at_ms"):
        times[name] = value.get(name)
        if times[name] is not None and type(times[name]) is not int:
            raise ConfigError(f"{where}: {name} must be an integer (Unix ms)")
    if "salt" not in value:
        return Enrolment(None, forgotten_at_ms=times["forgotten_at_ms"])
    salt = _hex_key(f"{where}: salt", value["salt"])
    if len(salt) != DEVICE_SALT_BYTES:
        raise ConfigError(f"{where}: salt is not {DEVICE_SALT_BYTES} bytes")
    return Enrolment(salt, enrolled_at_ms=times["enrolled_at_ms"])


def _parse_key_entry(where: str, value: object) -> MasterKey:
    """Version 1: the hex key, active. Version 2: {"key": hex} or {"retired": true}, with times."""
    if isinstance(value, str):
        return MasterKey(_hex_key(where, value))
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a hex string or an object")
    unknown = sorted(set(value) - _ENTRY_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
    times: dict[str, int | None] = {}
    for name in ("created_at_ms", "retire_at_ms", "retired_at_ms"):
        times[name] = value.get(name)
        if times[name] is not None and type(times[name]) is not int:
            raise ConfigError(f"{where}: {name} must be an integer (Unix ms)")
    retired = value.get("retired", False)
    if type(retired) is not bool or retired == ("key" in value):
        raise ConfigError(f'{where}: needs exactly one of "key" (hex) and "retired": true')
    master = None if retired else _hex_key(where, value["key"])
    return MasterKey(master, times["created_at_ms"], times["retire_at_ms"], times["retired_at_ms"])


def _hex_key(where: str, text: object) -> bytes:
    if not isinstance(text, str):
        raise ConfigError(f"{where} is not a hex string")
    try:
        return bytes.fromhex(text)
    except ValueError as e:
        raise ConfigError(f"{where} is not hex") from e


def _key_file_bytes(ring: KeyRing) -> bytes:
    regions: dict[str, dict[str, dict[str, object]]] = {}
    for region in ring.regions:
        regions[region] = {}
        for key_id, entry in ring.keys(region).items():
            out: dict[str, object] = (
                {"retired": True} if entry.master is None else {"key": entry.master.hex()}
            )
            for name, value in (
                ("created_at_ms", entry.created_at_ms),
                ("retire_at_ms", entry.retire_at_ms),
                ("retired_at_ms", entry.retired_at_ms),
            ):
                if value is not None:
                    out[name] = value
            regions[region][str(key_id)] = out
    current = {region: ring.current_key_id(region) for region in ring.regions}
    document: dict[str, object] = {"version": KEY_FILE_VERSION, "regions": regions, "current": current}
    devices = {region: _enrolments_json(ring, region) for region in ring.regions if ring.devices(region)}
    if devices:  # a file without enrolments stays byte for byte what earlier builds wrote
        document["devices"] = devices
    return (json.dumps(document, indent=2) + "\n").encode()


def _enrolments_json(ring: KeyRing, region: str) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for device_id, entry in ring.devices(region).items():
        if entry.salt is None:
            out[device_id] = {"forgotten_at_ms": entry.forgotten_at_ms}
        else:
            out[device_id] = {"salt": entry.salt.hex()}
            if entry.enrolled_at_ms is not None:
                out[device_id]["enrolled_at_ms"] = entry.enrolled_at_ms
    return out


def _signature(path: Path) -> tuple[int, ...]:
    """What changes when the file is replaced or rewritten: device, inode, size, times."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _edit_key_file(path: Path, change: Callable[[KeyRing], KeyRing]) -> KeyRing:
    """Load ``path``, apply ``change`` and write the result atomically, under an exclusive lock. A
    ``change`` that returns the ring it was given writes nothing (watchers see no change)."""
    with _locked(path):
        before = KeyRing.load(path, cache_entries=0)
        ring = change(before)
        if ring is not before:
            _replace_key_file(path, _key_file_bytes(ring))
    return ring


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``.<name>.lock`` beside the key file (the file itself is replaced)."""
    lock_path = path.parent / f".{path.name}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, KEY_FILE_MODE)
    except OSError as e:
        raise ConfigError(f"cannot lock key file {path}: {e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _replace_key_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a private temporary file beside ``path`` and rename it over ``path``."""
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise ConfigError(f"cannot write key file {path}: {e}") from e
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), KEY_FILE_MODE)
            if os.geteuid() == 0:  # root editing a worker's file: keep its owner, or the worker is locked out
                with contextlib.suppress(FileNotFoundError):
                    owner = os.stat(path)
                    os.fchown(out.fileno(), owner.st_uid, owner.st_gid)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise ConfigError(f"cannot write key file {path}: {e}") from e
