"""Device keys: HKDF-SHA256 from a region master key, and the key ring the edge derives them from.

A device holds only its own 32-byte key; the edge holds each region's master keys (by key id) and
derives a device's key on demand. Key ids make rotation possible: a new master key gets a new id,
devices move to it, the old id stays in the ring until no device uses it. The derivation is specified
byte for byte in ``docs/contract.md`` ("Device keys").
"""

from __future__ import annotations

import json
import logging
import os
import stat
import struct
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgestream.pipeline.contract import CONTRACT_VERSION, MAX_DEVICE_ID_BYTES, MAX_KEY_ID
from edgestream.pipeline.errors import ConfigError, UnknownKeyId

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

log = logging.getLogger(__name__)

MASTER_KEY_BYTES: Final = 32
"""Length of a region master key."""
DEVICE_KEY_BYTES: Final = 32
"""Length of a derived device key (AES-256)."""
HKDF_SALT: Final = b"edgestream/hkdf-salt/v1"
"""Fixed, public HKDF salt (23 ASCII bytes)."""
HKDF_INFO_LABEL: Final = b"edgestream/device-key"
"""Fixed first 21 bytes of the HKDF info; the rest binds contract version, key id and device id."""
DEFAULT_CACHE_ENTRIES: Final = 10_000
"""Derived keys a ``KeyRing`` keeps (about 150 bytes each)."""

_INFO_FIXED: Final = struct.Struct(">HIH")
"""contract version (u16), key id (u32), device id length (u16), all big-endian."""


def hkdf_info(device_id: str, key_id: int) -> bytes:
    """The HKDF ``info`` bytes: label, contract version, key id, length-prefixed UTF-8 device id."""
    device = device_id.encode()
    if not 1 <= len(device) <= MAX_DEVICE_ID_BYTES:
        raise ValueError(f"device id must be 1..{MAX_DEVICE_ID_BYTES} UTF-8 bytes, got {len(device)}")
    if not 0 <= key_id <= MAX_KEY_ID:
        raise ValueError(f"key id {key_id} is not a uint32")
    return HKDF_INFO_LABEL + _INFO_FIXED.pack(CONTRACT_VERSION, key_id, len(device)) + device


def derive_device_key(master_key: bytes, device_id: str, key_id: int) -> bytes:
    """HKDF-SHA256(ikm=master_key, salt=HKDF_SALT, info=hkdf_info(device_id, key_id)), 32 bytes."""
    if len(master_key) != MASTER_KEY_BYTES:
        raise ValueError(f"master keys are {MASTER_KEY_BYTES} bytes, got {len(master_key)}")
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=DEVICE_KEY_BYTES, salt=HKDF_SALT, info=hkdf_info(device_id, key_id)
    )
    return hkdf.derive(master_key)


class KeyRing:
    """Region master keys by key id, and a bounded cache of the device keys derived from them.

    Thread-safe. Never logs or shows key bytes: ``repr`` lists regions and key ids only.
    """

    __slots__ = ("_cache", "_cache_entries", "_current", "_lock", "_masters")

    def __init__(
        self,
        regions: Mapping[str, Mapping[int, bytes]],
        current: Mapping[str, int] | None = None,
        *,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
    ) -> None:
        """``regions``: region -> {key id: 32-byte master key}. ``current``: the key id devices of a
        region seal with (default: its highest key id). Raises ConfigError on a bad key or id."""
        if cache_entries < 0:
            raise ConfigError("cache_entries must be >= 0")
        masters: dict[str, dict[int, bytes]] = {}
        for region, keys in regions.items():
            if not isinstance(region, str) or not region:
                raise ConfigError("region names must be non-empty strings")
            if not keys:
                raise ConfigError(f"region {region!r} has no master keys")
            checked: dict[int, bytes] = {}
            for key_id, master in keys.items():
                if type(key_id) is not int or not 0 <= key_id <= MAX_KEY_ID:
                    raise ConfigError(f"region {region!r}: key id {key_id!r} is not a uint32")
                if not isinstance(master, bytes) or len(master) != MASTER_KEY_BYTES:
                    raise ConfigError(
                        f"region {region!r}: master key {key_id} is not {MASTER_KEY_BYTES} bytes"
                    )
                checked[key_id] = master
            masters[region] = checked
        chosen = {region: max(keys) for region, keys in masters.items()}
        for region, key_id in (current or {}).items():
            if key_id not in masters.get(region, {}):
                raise ConfigError(f"current key {key_id!r} of region {region!r} is not in the key ring")
            chosen[region] = key_id
        self._masters = masters
        self._current = chosen
        self._cache: OrderedDict[tuple[str, int, str], bytes] = OrderedDict()
        self._cache_entries = cache_entries
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        key_ids = {region: sorted(keys) for region, keys in self._masters.items()}
        return f"KeyRing(key_ids={key_ids!r}, current={self._current!r})"

    @property
    def regions(self) -> tuple[str, ...]:
        """Regions with master keys, in the order given."""
        return tuple(self._masters)

    def key_ids(self, region: str) -> tuple[int, ...]:
        """Key ids configured for ``region`` (ascending); empty for an unknown region."""
        return tuple(sorted(self._masters.get(region, ())))

    def current_key_id(self, region: str) -> int:
        """The key id devices in ``region`` seal with now. Raises ConfigError for an unknown region."""
        try:
            return self._current[region]
        except KeyError as e:
            raise ConfigError(f"no master keys for region {region!r}") from e

    def device_key(self, region: str, device_id: str, key_id: int) -> bytes:
        """The 32-byte key of ``device_id`` under master key ``key_id`` of ``region``.

        Raises UnknownKeyId when the region has no such key id.
        """
        cache_key = (region, key_id, device_id)
        with self._lock:
            key = self._cache.get(cache_key)
            if key is not None:
                self._cache.move_to_end(cache_key)
                return key
        master = self._masters.get(region, {}).get(key_id)
        if master is None:
            raise UnknownKeyId(region, key_id)
        key = derive_device_key(master, device_id, key_id)
        if self._cache_entries:
            with self._lock:
                self._cache[cache_key] = key
                if len(self._cache) > self._cache_entries:
                    self._cache.popitem(last=False)
        return key

    # -- key file -----------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path, *, cache_entries: int = DEFAULT_CACHE_ENTRIES) -> KeyRing:
        """Read a key file (format in ``docs/contract.md``). Raises ConfigError naming the file."""
        try:
            mode = path.stat().st_mode
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read key file {path}: {e}") from e
        if stat.S_IMODE(mode) & 0o077:
            log.warning("key file %s is readable by group or others (mode %o)", path, stat.S_IMODE(mode))
        try:
            regions, current = _parse_key_file(document)
            return cls(regions, current, cache_entries=cache_entries)
        except ConfigError as e:
            raise ConfigError(f"key file {path}: {e}") from e

    @classmethod
    def create(
        cls,
        path: Path,
        regions: Iterable[str],
        *,
        key_id: int = 1,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
    ) -> KeyRing:
        """Make a fresh random master key per region and write them to ``path`` (mode 0600).

        Refuses to overwrite an existing file (ConfigError): losing a master key orphans every device
        keyed from it.
        """
        masters = {region: {key_id: os.urandom(MASTER_KEY_BYTES)} for region in regions}
        ring = cls(masters, cache_entries=cache_entries)
        document = {
            "regions": {r: {str(k): m.hex() for k, m in keys.items()} for r, keys in masters.items()},
            "current": ring._current,
        }
        data = (json.dumps(document, indent=2) + "\n").encode()
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
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


def _parse_key_file(document: object) -> tuple[dict[str, dict[int, bytes]], dict[str, int]]:
    if not isinstance(document, dict) or not isinstance(document.get("regions"), dict):
        raise ConfigError('expected {"regions": {region: {key id: hex}}, "current": {region: key id}}')
    regions: dict[str, dict[int, bytes]] = {}
    for region, keys in document["regions"].items():
        if not isinstance(keys, dict):
            raise ConfigError(f"region {region!r}: expected a map of key id to hex master key")
        regions[region] = {}
        for key_id, hex_key in keys.items():
            if not (isinstance(key_id, str) and key_id.isdecimal() and isinstance(hex_key, str)):
                raise ConfigError(f"region {region!r}: key ids are decimal strings, keys hex strings")
            try:
                regions[region][int(key_id)] = bytes.fromhex(hex_key)
            except ValueError as e:
                raise ConfigError(f"region {region!r}: master key {key_id} is not hex") from e
    current = document.get("current", {})
    if not isinstance(current, dict) or not all(type(v) is int for v in current.values()):
        raise ConfigError("current must map region names to integer key ids")
    return regions, current
