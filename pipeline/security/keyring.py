"""The key ring: region master keys by key id with their rotation states, the devices enrolled in each
region, and the device keys HKDF derives from them (``pipeline/security/derive.py``).

A device holds only its own 32-byte key; the edge holds each region's master keys (by key id) and
derives a device's key on demand. A ring is pure and in memory: its rotation and enrolment changes each
make a new ring, which the key file (``pipeline/security/keyfile.py``) stores and a worker's key source
(``pipeline/security/keysource.py``) follows. Key states and their meaning are specified in
``docs/contract.md`` ("Device keys").
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from edgestream.pipeline.contract.deviceid import device_id_problem, normal_device_id
from edgestream.pipeline.contract.envelope import MAX_DEVICE_ID_BYTES, MAX_KEY_ID
from edgestream.pipeline.errors import ConfigError, ForgottenDevice, RetiredKey, UnknownKeyId
from edgestream.pipeline.security.derive import (
    HKDF_SALT,
    MASTER_KEY_BYTES,
    derive_device_key,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

DEVICE_SALT_BYTES: Final = 32
"""Length of an enrolled device's secret HKDF salt: the key material ``forget`` deletes."""
DEFAULT_CACHE_ENTRIES: Final = 10_000
"""Derived keys a ``KeyRing`` keeps (about 150 bytes each)."""

KeyState = Literal["current", "active", "accepted", "expired", "retired"]
"""current: devices seal with it. active: accepted, no end set. accepted: accepted until its window
ends. expired: its window ended (refused) but its bytes are still in the file. retired: bytes deleted."""


def wall_clock_ms() -> int:
    """Now, in Unix ms: the clock of key windows and of every time the key file records."""
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
        return (
            "accepted" if (wall_clock_ms() if now_ms is None else now_ms) < entry.retire_at_ms else "expired"
        )

    def devices(self, region: str) -> dict[str, Enrolment]:
        """The devices enrolled in ``region`` (forgotten ones too) by id, sorted; empty if none."""
        return dict(sorted(self._devices.get(region, {}).items()))

    def enrolment(self, region: str, device_id: str) -> Enrolment | None:
        """``device_id``'s enrolment in ``region``, or None if it was never enrolled there."""
        return self._devices.get(region, {}).get(device_id)

    def status(self, now_ms: float | None = None) -> list[KeyStatus]:
        """Every key id of every region with its state at ``now_ms`` (default: now)."""
        now = wall_clock_ms() if now_ms is None else now_ms
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
        if (
            entry.retire_at_ms is not None
            and (wall_clock_ms() if now_ms is None else now_ms) >= entry.retire_at_ms
        ):
            raise RetiredKey(region, key_id, entry.retire_at_ms)
        enrolment = self._devices.get(region, {}).get(device_id)
        if enrolment is not None and enrolment.salt is None:
            raise ForgottenDevice(region, device_id, enrolment.forgotten_at_ms)
        cache_key = (region, key_id, device_id)
        # A hit takes no lock and does not reorder: one dict read (atomic), on every record the edge
        # admits. So a full cache forgets the key derived first (FIFO), not the one used least
        # recently: the same while a region's devices fit in it; past that, a busy device's key may be
        # derived again (~10 us) once per ``cache_entries`` keys derived after it.
        key = self._cache.get(cache_key)
        if key is not None:
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
        bad device id (one not in normal form too: NFC, no control characters), or a device that was
        forgotten: its id stays retired, enrol it under a new one."""
        self._region_keys(self._keys, region)
        enrolled = dict(self._devices.get(region, {}))
        for device_id in device_ids:
            entry = enrolled.get(device_id)
            problem = None if entry is not None else device_id_problem(device_id)
            if problem is not None:  # the edge would refuse its every envelope (bad_device_id)
                raise ConfigError(
                    f"device id {device_id!r} {problem}: enrol it as {normal_device_id(device_id)!r}"
                )
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

    def adopt_cache(self, old: KeyRing) -> None:
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
