"""The key file: the JSON a region's master keys and enrolled devices live in, and the operations on
it, each an atomic rewrite under a lock.

``rotate`` adds a master key with the next id and makes it current; the previous id stays accepted for
a window, then is refused as ``retired_key``; ``retire`` deletes a key's bytes from the file and keeps
its id, so the file proves it. ``enroll`` gives a device a secret random HKDF salt of its own;
``forget`` deletes it (crypto-shredding): without the salt no one, master key or not, can derive that
device's key again, so every envelope of it still retained is unreadable. The format is specified in
the "Key file" section of ``docs/contract.md``; the ring it holds is ``pipeline/security/keyring.py``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import tempfile
from typing import TYPE_CHECKING, Final

from edgestream.pipeline.errors import ConfigError, RetiredKey, UnknownKeyId
from edgestream.pipeline.security.derive import MASTER_KEY_BYTES
from edgestream.pipeline.security.keyring import (
    DEFAULT_CACHE_ENTRIES,
    DEVICE_SALT_BYTES,
    Enrolment,
    KeyRing,
    KeyStatus,
    MasterKey,
    wall_clock_ms,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from pathlib import Path

    from pydantic import SecretStr

log = logging.getLogger(__name__)

KEY_FILE_VERSION: Final = 2
"""The key file version this build writes; it reads version 1 (a hex string per key id) unchanged."""
KEY_FILE_MODE: Final = 0o600
"""Key files, and the lock file beside them, are private to their owner."""

_ENTRY_FIELDS: Final = frozenset({"key", "retired", "created_at_ms", "retire_at_ms", "retired_at_ms"})
_ENROLMENT_FIELDS: Final = frozenset({"salt", "enrolled_at_ms"})
_TOMBSTONE_FIELDS: Final = frozenset({"forgotten_at_ms"})


def load(path: Path, *, cache_entries: int = DEFAULT_CACHE_ENTRIES) -> KeyRing:
    """Read a key file, version 1 or 2, with its enrolled devices (format in ``docs/contract.md``).
    Raises ConfigError naming the file."""
    return _of_document(_read_key_file(path), f"key file {path}", cache_entries)


def load_secret(text: SecretStr, *, cache_entries: int = DEFAULT_CACHE_ENTRIES) -> KeyRing:
    """Read the key file's JSON from a secret (``EDGESTREAM_KEYS``). Raises ConfigError, which never
    quotes the secret."""
    try:
        document = json.loads(text.get_secret_value())
    except json.JSONDecodeError as e:
        problem = f"{e.msg} at character {e.pos}"
    else:
        return _of_document(document, "key secret", cache_entries)
    # Raised outside the handler on purpose: a JSONDecodeError holds the whole secret in its ``doc``
    # attribute, and neither ``__cause__`` nor ``__context__`` may keep it alive in a traceback.
    raise ConfigError(f"key secret: not JSON ({problem})")


def _of_document(document: object, where: str, cache_entries: int) -> KeyRing:
    try:
        regions, current, devices = _parse_key_file(document)
        return KeyRing(regions, current, devices=devices, cache_entries=cache_entries)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


def create(
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
    created_at_ms = wall_clock_ms() if now_ms is None else now_ms
    masters = {region: {key_id: MasterKey(os.urandom(MASTER_KEY_BYTES), created_at_ms)} for region in regions}
    ring = KeyRing(masters, cache_entries=cache_entries)
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
    now = wall_clock_ms() if now_ms is None else now_ms
    return _edit_key_file(path, lambda ring: ring.rotated(region, window_ms, now))


def retire(path: Path, region: str, key_id: int, *, now_ms: int | None = None) -> KeyRing:
    """``KeyRing.retired`` on the key file at ``path``: rewritten atomically (mode 0600) under a lock.
    Returns the new ring. Raises ConfigError."""
    now = wall_clock_ms() if now_ms is None else now_ms
    return _edit_key_file(path, lambda ring: ring.retired(region, key_id, now))


def status(path: Path, *, now_ms: int | None = None) -> list[KeyStatus]:
    """Every key id in the key file at ``path`` with its state at ``now_ms``. Raises ConfigError."""
    return load(path, cache_entries=0).status(now_ms)


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
    now = wall_clock_ms() if now_ms is None else now_ms
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
    now = wall_clock_ms() if now_ms is None else now_ms
    ring = _edit_key_file(path, lambda ring: ring.forgotten(region, device_id, now))
    tombstone = ring.enrolment(region, device_id)
    assert tombstone is not None
    return tombstone


# -- the format ---------------------------------------------------------------------------------------


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


# -- locked, atomic writes ----------------------------------------------------------------------------


def _edit_key_file(path: Path, change: Callable[[KeyRing], KeyRing]) -> KeyRing:
    """Load ``path``, apply ``change`` and write the result atomically, under an exclusive lock. A
    ``change`` that returns the ring it was given writes nothing (watchers see no change)."""
    with _locked(path):
        before = load(path, cache_entries=0)
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
