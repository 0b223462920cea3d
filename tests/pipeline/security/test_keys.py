"""Key rotation: key file v2 states, the acceptance window, retirement, the CLI."""

from __future__ import annotations

import json
import os
import stat
from typing import TYPE_CHECKING, Any

import pytest
import typer
from typer.testing import CliRunner

from edgestream.cli import app
from edgestream.commands.keys import parse_duration_ms
from edgestream.pipeline.errors import ConfigError, ContractError, RetiredKey, UnknownKeyId
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.derive import derive_device_key
from edgestream.pipeline.security.keyring import KeyRing, MasterKey

if TYPE_CHECKING:
    from pathlib import Path

T0_MS = 1_750_000_000_000
WINDOW_MS = 600_000
OLD = bytes(range(32))
NEW = bytes(range(32, 64))


def _document(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def _master(path: Path, region: str, key_id: int) -> bytes:
    return bytes.fromhex(_document(path)["regions"][region][str(key_id)]["key"])


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    keyfile.create(path, ["eu-west", "us-east"], now_ms=T0_MS)
    return path


# -- key file v1 and v2 -------------------------------------------------------------------------------


def test_a_version_1_file_loads_unchanged_with_every_key_active(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(
        json.dumps({"regions": {"eu-west": {"1": OLD.hex(), "2": NEW.hex()}}, "current": {"eu-west": 1}})
    )
    path.chmod(0o600)
    ring = keyfile.load(path)
    assert ring.current_key_id("eu-west") == 1
    assert ring.key_ids("eu-west") == (1, 2)
    assert ring.key_state("eu-west", 1) == "current"
    assert ring.key_state("eu-west", 2) == "active"
    far_future_ms = 2**62
    assert ring.device_key("eu-west", "dev", 1, now_ms=far_future_ms) == derive_device_key(OLD, "dev", 1)
    assert ring.device_key("eu-west", "dev", 2, now_ms=far_future_ms) == derive_device_key(NEW, "dev", 2)
    assert [(r.key_id, r.state, r.created_at_ms, r.until_ms) for r in ring.status()] == [
        (1, "current", None, None),
        (2, "active", None, None),
    ]
    without_current = tmp_path / "v1.json"
    without_current.write_text(json.dumps({"regions": {"eu-west": {"1": OLD.hex(), "2": NEW.hex()}}}))
    without_current.chmod(0o600)
    assert keyfile.load(without_current).current_key_id("eu-west") == 2


def test_create_writes_version_2_with_creation_times(key_file: Path) -> None:
    document = _document(key_file)
    assert document["version"] == 2
    assert document["current"] == {"eu-west": 1, "us-east": 1}
    entry = document["regions"]["eu-west"]["1"]
    assert set(entry) == {"key", "created_at_ms"}
    assert entry["created_at_ms"] == T0_MS
    assert len(bytes.fromhex(entry["key"])) == 32


@pytest.mark.parametrize(
    ("entry", "extra", "match"),
    [
        ({"key": OLD.hex(), "retired": True}, {}, "exactly one of"),
        ({}, {}, "exactly one of"),
        ({"retired": "yes"}, {}, "exactly one of"),
        ({"key": OLD.hex(), "retire_at": 5}, {}, "unknown field"),
        ({"key": OLD.hex(), "retire_at_ms": "soon"}, {}, "integer"),
        ({"key": 7}, {}, "not a hex string"),
        ({"key": OLD.hex()}, {"version": 3}, "version 3"),
        (5, {}, "hex string or an object"),
    ],
)
def test_load_refuses_bad_version_2_entries(
    tmp_path: Path, entry: object, extra: dict[str, object], match: str
) -> None:
    path = tmp_path / "keys.json"
    document = {"regions": {"eu-west": {"1": NEW.hex(), "2": entry}}, "current": {"eu-west": 1}, **extra}
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=match):
        keyfile.load(path)


@pytest.mark.parametrize(
    ("keys", "current", "match"),
    [
        ({1: MasterKey(None, retired_at_ms=T0_MS), 2: NEW}, {"eu-west": 1}, "retired"),
        ({1: MasterKey(OLD, retire_at_ms=T0_MS), 2: NEW}, {"eu-west": 1}, "being retired"),
        ({1: MasterKey(None), 2: MasterKey(NEW, retire_at_ms=T0_MS)}, None, "no active master key"),
    ],
)
def test_the_current_key_must_be_active(
    keys: dict[int, bytes | MasterKey], current: dict[str, int] | None, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        KeyRing({"eu-west": keys}, current)


def test_the_default_current_key_skips_retired_and_windowed_ids() -> None:
    ring = KeyRing({"eu-west": {1: OLD, 2: MasterKey(NEW, retire_at_ms=T0_MS), 3: MasterKey(None)}})
    assert ring.current_key_id("eu-west") == 1


# -- rotation and retirement --------------------------------------------------------------------------


def test_retired_key_is_a_contract_error_with_its_own_reason() -> None:
    err = RetiredKey("eu-west", 3, T0_MS)
    assert isinstance(err, ContractError)
    assert not isinstance(err, UnknownKeyId)
    assert (err.reason, err.stage, err.retriable) == ("retired_key", "decrypt", False)
    assert UnknownKeyId.reason != RetiredKey.reason
    assert "eu-west" in str(err)
    assert "3" in str(err)


def test_rotate_makes_a_new_current_key_and_accepts_the_previous_one_for_the_window(key_file: Path) -> None:
    old_master = _master(key_file, "eu-west", 1)
    us_east = _document(key_file)["regions"]["us-east"]
    rotated_at = T0_MS + 1_000
    ring = keyfile.rotate(key_file, "eu-west", WINDOW_MS, now_ms=rotated_at)

    assert ring.current_key_id("eu-west") == 2
    document = _document(key_file)
    assert document["current"] == {"eu-west": 2, "us-east": 1}
    assert document["regions"]["eu-west"]["1"] == {
        "key": old_master.hex(),
        "created_at_ms": T0_MS,
        "retire_at_ms": rotated_at + WINDOW_MS,
    }
    assert document["regions"]["eu-west"]["2"]["created_at_ms"] == rotated_at
    assert _master(key_file, "eu-west", 2) != old_master
    assert document["regions"]["us-east"] == us_east  # other regions untouched

    loaded = keyfile.load(key_file)
    end = rotated_at + WINDOW_MS
    assert loaded.device_key("eu-west", "dev", 1, now_ms=rotated_at) == derive_device_key(
        old_master, "dev", 1
    )
    assert loaded.device_key("eu-west", "dev", 1, now_ms=end - 1) == derive_device_key(old_master, "dev", 1)
    assert loaded.key_state("eu-west", 1, now_ms=end - 1) == "accepted"
    with pytest.raises(RetiredKey) as info:
        loaded.device_key("eu-west", "dev", 1, now_ms=end)
    assert info.value.reason == "retired_key"
    assert info.value.retired_at_ms == end
    assert loaded.key_state("eu-west", 1, now_ms=end) == "expired"
    new_master = _master(key_file, "eu-west", 2)
    assert loaded.device_key("eu-west", "dev", 2, now_ms=end + 1) == derive_device_key(new_master, "dev", 2)
    assert loaded.device_key("us-east", "dev", 1, now_ms=end + 1) is not None


def test_a_later_rotation_retires_keys_whose_window_ended(key_file: Path) -> None:
    keyfile.rotate(key_file, "eu-west", WINDOW_MS, now_ms=T0_MS)
    ring = keyfile.rotate(key_file, "eu-west", WINDOW_MS, now_ms=T0_MS + WINDOW_MS)
    assert ring.current_key_id("eu-west") == 3
    entries = _document(key_file)["regions"]["eu-west"]
    assert entries["1"] == {"retired": True, "created_at_ms": T0_MS, "retired_at_ms": T0_MS + WINDOW_MS}
    assert entries["2"]["retire_at_ms"] == T0_MS + 2 * WINDOW_MS
    assert [(r.key_id, r.state) for r in ring.status(now_ms=T0_MS + WINDOW_MS) if r.region == "eu-west"] == [
        (1, "retired"),
        (2, "accepted"),
        (3, "current"),
    ]


def test_a_zero_window_retires_the_previous_key_at_once(key_file: Path) -> None:
    ring = keyfile.rotate(key_file, "eu-west", 0, now_ms=T0_MS)
    assert _document(key_file)["regions"]["eu-west"]["1"] == {
        "retired": True,
        "created_at_ms": T0_MS,
        "retired_at_ms": T0_MS,
    }
    with pytest.raises(RetiredKey):
        ring.device_key("eu-west", "dev", 1, now_ms=T0_MS - 1)
    with pytest.raises(ConfigError, match=">= 0"):
        keyfile.rotate(key_file, "eu-west", -1, now_ms=T0_MS)


def test_retire_deletes_the_key_bytes_and_the_id_is_refused_as_retired_not_unknown(key_file: Path) -> None:
    old_master = _master(key_file, "eu-west", 1)
    keyfile.rotate(key_file, "eu-west", WINDOW_MS, now_ms=T0_MS)
    ring = keyfile.retire(key_file, "eu-west", 1, now_ms=T0_MS + 5)

    text = key_file.read_text()
    assert old_master.hex() not in text
    assert _document(key_file)["regions"]["eu-west"]["1"] == {
        "retired": True,
        "created_at_ms": T0_MS,
        "retired_at_ms": T0_MS + 5,
    }
    for refusing in (ring, keyfile.load(key_file)):
        assert refusing.key_ids("eu-west") == (2,)
        with pytest.raises(RetiredKey) as info:
            refusing.device_key("eu-west", "dev", 1, now_ms=T0_MS + 6)  # inside the old window
        assert type(info.value) is RetiredKey
        assert info.value.reason == "retired_key"
        with pytest.raises(UnknownKeyId):
            refusing.device_key("eu-west", "dev", 99)

    before = key_file.read_bytes()
    keyfile.retire(key_file, "eu-west", 1, now_ms=T0_MS + 10)  # again: nothing changes
    assert key_file.read_bytes() == before


@pytest.mark.parametrize(
    ("region", "key_id", "match"),
    [("eu-west", 1, "current key"), ("eu-west", 7, "no key id 7"), ("mars", 1, "no region 'mars'")],
)
def test_retire_refuses_the_current_key_and_unknown_ids(
    key_file: Path, region: str, key_id: int, match: str
) -> None:
    before = key_file.read_bytes()
    with pytest.raises(ConfigError, match=match):
        keyfile.retire(key_file, region, key_id, now_ms=T0_MS)
    assert key_file.read_bytes() == before
    with pytest.raises(ConfigError, match="no region 'mars'"):
        keyfile.rotate(key_file, "mars", WINDOW_MS, now_ms=T0_MS)


def test_the_cache_never_serves_a_retired_key() -> None:
    ring = KeyRing({"eu-west": {1: MasterKey(OLD, retire_at_ms=T0_MS + 100), 2: NEW}})
    assert ring.device_key("eu-west", "dev", 1, now_ms=T0_MS) == derive_device_key(OLD, "dev", 1)
    assert ("eu-west", 1, "dev") in ring._cache
    with pytest.raises(RetiredKey):  # cached, but its window has ended
        ring.device_key("eu-west", "dev", 1, now_ms=T0_MS + 100)

    ring.device_key("eu-west", "dev", 2)
    retired = ring.retired("eu-west", 1, now_ms=T0_MS + 50)
    retired.adopt_cache(ring)  # what a reload does
    assert ("eu-west", 1, "dev") not in retired._cache
    assert ("eu-west", 2, "dev") in retired._cache  # unchanged keys keep their derived keys
    with pytest.raises(RetiredKey):
        retired.device_key("eu-west", "dev", 1, now_ms=T0_MS)

    replaced = KeyRing({"eu-west": {1: NEW, 2: NEW}})  # same id, different master: not adopted
    replaced.adopt_cache(ring)
    assert ("eu-west", 1, "dev") not in replaced._cache
    assert replaced.device_key("eu-west", "dev", 1) == derive_device_key(NEW, "dev", 1)


def test_key_files_stay_private_through_every_operation(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    umask = os.umask(0)
    try:
        keyfile.create(path, ["eu-west"], now_ms=T0_MS)
        modes = [stat.S_IMODE(path.stat().st_mode)]
        keyfile.rotate(path, "eu-west", WINDOW_MS, now_ms=T0_MS)
        modes.append(stat.S_IMODE(path.stat().st_mode))
        keyfile.retire(path, "eu-west", 1, now_ms=T0_MS)
        modes.append(stat.S_IMODE(path.stat().st_mode))
    finally:
        os.umask(umask)
    assert modes == [0o600, 0o600, 0o600]
    assert stat.S_IMODE((tmp_path / ".keys.json.lock").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keys.json.lock", "keys.json"]  # no temp left


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another owner")
def test_root_rotating_a_workers_key_file_keeps_its_owner(key_file: Path) -> None:
    os.chown(key_file, 1000, 1000)
    keyfile.rotate(key_file, "eu-west", WINDOW_MS, now_ms=T0_MS)
    owner = key_file.stat()
    assert (owner.st_uid, owner.st_gid) == (1000, 1000)
    assert stat.S_IMODE(owner.st_mode) == 0o600


# -- the CLI ------------------------------------------------------------------------------------------


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"}, catch_exceptions=False)


def test_cli_init_rotate_status_retire(tmp_path: Path) -> None:
    path = tmp_path / "state" / "keys.json"
    where = ["--path", str(path)]

    result = _cli("keys", "init", *where, "--region", "eu-west", "--region", "us-east")
    assert result.exit_code == 0, result.output
    assert "wrote master keys for eu-west, us-east" in result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _cli("keys", "init", *where).exit_code == 1  # never overwrites

    result = _cli("keys", "rotate", "--region", "eu-west", "--window", "10m", *where)
    assert result.exit_code == 0, result.output
    assert "eu-west: key 2 is current" in result.output
    assert "eu-west: key 1 accepted until" in result.output
    retire_at_ms = _document(path)["regions"]["eu-west"]["1"]["retire_at_ms"]
    created_ms = _document(path)["regions"]["eu-west"]["2"]["created_at_ms"]
    assert retire_at_ms - created_ms == 600_000

    result = _cli("keys", "status", *where)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for header in ("region", "key id", "state", "created"):
        assert header in result.output
    assert any("eu-west" in line and " 2 " in line and "current" in line for line in lines), result.output
    assert any("eu-west" in line and " 1 " in line and "accepted until" in line for line in lines)
    assert any("us-east" in line and " 1 " in line and "current" in line for line in lines)
    assert " UTC" in result.output

    result = _cli("keys", "retire", "--region", "eu-west", "1", *where)
    assert result.exit_code == 0, result.output
    assert "eu-west: key 1 is retired" in result.output
    result = _cli("keys", "status", *where)
    assert any(
        "eu-west" in line and " 1 " in line and "retired" in line for line in result.output.splitlines()
    )

    result = _cli("keys", "retire", "--region", "eu-west", "2", *where)
    assert result.exit_code == 1
    assert "current key" in result.output
    assert _cli("keys", "rotate", "--region", "eu-west", "--window", "10 minutes", *where).exit_code == 2
    assert _cli("keys", "status", "--path", str(tmp_path / "absent.json")).exit_code == 1


@pytest.mark.parametrize(
    ("text", "ms"),
    [("90s", 90_000), ("10m", 600_000), ("2h", 7_200_000), ("1d", 86_400_000), ("250ms", 250), ("0", 0)],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["10", "1.5h", "-1m", "10 m", "m", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_duration_ms(text)
