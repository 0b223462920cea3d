"""Device key derivation and the key ring: HKDF binding, cache bounds, key file handling."""

from __future__ import annotations

import json
import logging
import stat
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

from edgestream.pipeline.errors import ConfigError, UnknownKeyId
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.derive import HKDF_INFO_LABEL, HKDF_SALT, derive_device_key, hkdf_info
from edgestream.pipeline.security.keyring import KeyRing

if TYPE_CHECKING:
    from pathlib import Path

MASTER = bytes(range(32))


def _hmac(key: bytes, data: bytes) -> bytes:
    mac = HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def test_derivation_is_rfc5869_hkdf_sha256_with_the_documented_inputs() -> None:
    info = HKDF_INFO_LABEL + b"\x00\x01" + b"\x00\x00\x00\x07" + b"\x00\x0bsensor-0042"
    assert hkdf_info("sensor-0042", 7) == info
    prk = _hmac(HKDF_SALT, MASTER)  # extract
    okm = _hmac(prk, info + b"\x01")  # expand: one SHA-256 block is exactly 32 bytes
    assert derive_device_key(MASTER, "sensor-0042", 7) == okm


def test_keys_differ_by_device_key_id_and_master() -> None:
    keys = {
        derive_device_key(MASTER, "a", 1),
        derive_device_key(MASTER, "b", 1),
        derive_device_key(MASTER, "a", 2),
        derive_device_key(bytes(32), "a", 1),
        # length prefixes keep (device "a\x00", ...) and ("a", ...) apart
        derive_device_key(MASTER, "a\x00", 1),
    }
    assert len(keys) == 5
    assert all(len(k) == 32 for k in keys)


def test_derivation_refuses_bad_inputs() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        derive_device_key(b"short", "dev", 1)
    with pytest.raises(ValueError, match="device id"):
        derive_device_key(MASTER, "", 1)
    with pytest.raises(ValueError, match="device id"):
        derive_device_key(MASTER, "é" * 65, 1)  # 130 UTF-8 bytes
    with pytest.raises(ValueError, match="uint32"):
        derive_device_key(MASTER, "dev", 2**32)


def test_key_ring_derives_and_knows_current_key_ids() -> None:
    ring = KeyRing({"eu-west": {1: MASTER, 2: bytes(32)}, "us-east": {5: MASTER}})
    assert ring.regions == ("eu-west", "us-east")
    assert ring.key_ids("eu-west") == (1, 2)
    assert ring.current_key_id("eu-west") == 2  # highest by default
    assert ring.device_key("us-east", "dev", 5) == derive_device_key(MASTER, "dev", 5)
    pinned = KeyRing({"eu-west": {1: MASTER, 2: bytes(32)}}, current={"eu-west": 1})
    assert pinned.current_key_id("eu-west") == 1
    with pytest.raises(ConfigError, match="no master keys"):
        ring.current_key_id("mars")


def test_unknown_key_id_or_region_is_unknown_key() -> None:
    ring = KeyRing({"eu-west": {1: MASTER}})
    for region, key_id in (("eu-west", 2), ("us-east", 1)):
        with pytest.raises(UnknownKeyId) as info:
            ring.device_key(region, "dev", key_id)
        assert info.value.reason == "unknown_key"
        assert info.value.stage == "decrypt"


def test_cache_is_bounded_and_returns_the_same_keys() -> None:
    ring = KeyRing({"eu-west": {1: MASTER}}, cache_entries=3)
    first = [ring.device_key("eu-west", f"dev-{i}", 1) for i in range(10)]
    assert len(ring._cache) == 3
    assert [ring.device_key("eu-west", f"dev-{i}", 1) for i in range(10)] == first
    assert list(ring._cache) == [("eu-west", 1, f"dev-{i}") for i in (7, 8, 9)]
    uncached = KeyRing({"eu-west": {1: MASTER}}, cache_entries=0)
    assert uncached.device_key("eu-west", "dev-0", 1) == first[0]
    assert len(uncached._cache) == 0


@pytest.mark.parametrize(
    ("regions", "current", "match"),
    [
        ({"eu-west": {1: b"short"}}, None, "not 32 bytes"),
        ({"eu-west": {-1: MASTER}}, None, "uint32"),
        ({"eu-west": {}}, None, "no master keys"),
        ({"": {1: MASTER}}, None, "non-empty"),
        ({"eu-west": {1: MASTER}}, {"eu-west": 2}, "not in the key ring"),
    ],
)
def test_key_ring_refuses_bad_configuration(
    regions: dict[str, dict[int, bytes]], current: dict[str, int] | None, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        KeyRing(regions, current)


def test_repr_never_shows_key_bytes() -> None:
    ring = KeyRing({"eu-west": {1: MASTER}})
    ring.device_key("eu-west", "dev", 1)
    shown = repr(ring) + str(ring)
    assert MASTER.hex() not in shown
    assert repr(MASTER) not in shown
    assert "eu-west" in shown


def test_create_writes_a_private_file_that_load_reads(tmp_path: Path) -> None:
    path = tmp_path / "state" / "keys.json"
    created = keyfile.create(path, ["eu-west", "us-east"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert set(document["regions"]) == {"eu-west", "us-east"}
    assert document["current"] == {"eu-west": 1, "us-east": 1}
    assert document["version"] == 2
    entry = document["regions"]["eu-west"]["1"]
    assert len(bytes.fromhex(entry["key"])) == 32
    assert isinstance(entry["created_at_ms"], int)
    loaded = keyfile.load(path)
    assert loaded.device_key("us-east", "dev", 1) == created.device_key("us-east", "dev", 1)
    assert document["regions"]["eu-west"] != document["regions"]["us-east"]


def test_create_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    keyfile.create(path, ["eu-west"])
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="cannot create key file"):
        keyfile.create(path, ["eu-west"])
    assert path.read_bytes() == before


def test_load_warns_about_a_readable_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys.json"
    keyfile.create(path, ["eu-west"])
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="edgestream.pipeline.security.keyfile"):
        keyfile.load(path)
    assert "readable by group or others" in caplog.text
    assert path.read_text() not in caplog.text


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("not json", "cannot read key file"),
        ("[]", "expected"),
        ('{"regions": {"eu-west": []}}', "map of key id"),
        ('{"regions": {"eu-west": {"one": "00"}}}', "decimal"),
        ('{"regions": {"eu-west": {"1": "zz"}}}', "not hex"),
        ('{"regions": {"eu-west": {"1": "00"}}}', "not 32 bytes"),
        ('{"regions": {"eu-west": {"1": "' + "00" * 32 + '"}}, "current": {"eu-west": "1"}}', "integer"),
    ],
)
def test_load_refuses_bad_files_naming_them(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=match) as info:
        keyfile.load(path)
    assert str(path) in str(info.value)


def test_load_of_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read key file"):
        keyfile.load(tmp_path / "absent.json")
