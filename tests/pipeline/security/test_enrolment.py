"""Device enrolment and erasure by key: a secret salt per device in the key file, ``forget`` deletes it."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from typer.testing import CliRunner

from edgestream.cli import app
from edgestream.pipeline.contract.codec import encode_tensor
from edgestream.pipeline.contract.envelope import decode_envelope, open_envelope, seal
from edgestream.pipeline.errors import AuthenticationFailed, ConfigError, ContractError, ForgottenDevice
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.derive import derive_device_key
from edgestream.pipeline.security.keyring import DEVICE_SALT_BYTES, Enrolment, KeyRing
from edgestream.pipeline.security.keysource import KeyFileWatcher
from edgestream.pipeline.settings import DEFAULT_REGIONS

if TYPE_CHECKING:
    from pathlib import Path

T0_MS = 1_750_000_000_000
T1_MS = T0_MS + 60_000
REGION = "eu-west"
MAX_BYTES = 1 << 20


def _document(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def _master(path: Path, key_id: int = 1, region: str = REGION) -> bytes:
    return bytes.fromhex(_document(path)["regions"][region][str(key_id)]["key"])


def _salt(path: Path, device_id: str) -> bytes:
    return bytes.fromhex(_document(path)["devices"][REGION][device_id]["salt"])


def _seal(device_key: bytes, device_id: str, key_id: int = 1) -> bytes:
    body = encode_tensor(np.arange(8, dtype=np.float32), "float32")
    return seal(body, device_key=device_key, device_id=device_id, key_id=key_id, kind="embedding", model="m")


def _opens(raw: bytes, device_key: bytes) -> bool:
    """True if the envelope authenticates under ``device_key``; False on ``bad_tag``."""
    try:
        open_envelope(
            decode_envelope(raw, max_envelope_bytes=MAX_BYTES), device_key, max_body_bytes=MAX_BYTES
        )
    except AuthenticationFailed as e:
        reason = e.reason
    else:
        return True
    assert reason == "bad_tag"
    return False


def _signature(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    keyfile.create(path, [REGION, "us-east"], now_ms=T0_MS)
    return path


# -- enrolment ----------------------------------------------------------------------------------------


def test_an_enrolled_device_has_its_own_salt_and_a_key_that_round_trips(key_file: Path) -> None:
    key = keyfile.enroll(key_file, REGION, "dev-1", now_ms=T0_MS)
    master = _master(key_file)
    entry = _document(key_file)["devices"][REGION]["dev-1"]
    assert set(entry) == {"salt", "enrolled_at_ms"}
    assert entry["enrolled_at_ms"] == T0_MS
    salt = _salt(key_file, "dev-1")
    assert len(salt) == DEVICE_SALT_BYTES
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    assert key != derive_device_key(master, "dev-1", 1), "the public-salt derivation is not its key"
    assert key == derive_device_key(master, "dev-1", 1, salt=salt), "only the salt changes"
    ring = keyfile.load(key_file)
    assert ring.device_key(REGION, "dev-1", 1) == key
    assert ring.enrolment(REGION, "dev-1") == Enrolment(salt, enrolled_at_ms=T0_MS)
    assert _opens(_seal(key, "dev-1"), ring.device_key(REGION, "dev-1", 1))

    # Devices never enrolled keep the public salt; the same id in another region is another device.
    assert ring.enrolment(REGION, "dev-2") is None
    assert ring.device_key(REGION, "dev-2", 1) == derive_device_key(master, "dev-2", 1)
    assert ring.device_key("us-east", "dev-1", 1) == derive_device_key(
        _master(key_file, region="us-east"), "dev-1", 1
    )

    # Across a rotation the device keeps its salt; its key under the new id is derived with it.
    keyfile.rotate(key_file, REGION, 600_000, now_ms=T0_MS)
    rotated = keyfile.load(key_file)
    assert rotated.enrolment(REGION, "dev-1") == ring.enrolment(REGION, "dev-1")
    assert rotated.device_key(REGION, "dev-1", 1, T0_MS) == key
    assert rotated.device_key(REGION, "dev-1", 2, T0_MS) == derive_device_key(
        _master(key_file, 2), "dev-1", 2, salt=salt
    )
    keyfile.retire(key_file, REGION, 1, now_ms=T0_MS)
    assert keyfile.load(key_file).enrolment(REGION, "dev-1") == ring.enrolment(REGION, "dev-1")


def test_enrol_is_idempotent_and_writes_nothing_when_nothing_changes(key_file: Path) -> None:
    first = keyfile.enroll(key_file, REGION, "dev-1", now_ms=T0_MS)
    written = _signature(key_file)
    assert keyfile.enroll(key_file, REGION, "dev-1", now_ms=T1_MS) == first
    assert _signature(key_file) == written, "watchers see no change"
    assert _document(key_file)["devices"][REGION]["dev-1"]["enrolled_at_ms"] == T0_MS

    keys = keyfile.enroll_devices(key_file, REGION, ["dev-1", "dev-2", "dev-3", "dev-2"], now_ms=T1_MS)
    assert list(keys) == ["dev-1", "dev-2", "dev-3"]
    assert keys["dev-1"] == first
    assert len(set(keys.values())) == 3
    assert set(_document(key_file)["devices"][REGION]) == {"dev-1", "dev-2", "dev-3"}


def test_enrol_provisions_under_the_key_id_asked_for(key_file: Path) -> None:
    keyfile.rotate(key_file, REGION, 600_000, now_ms=T0_MS)
    ring = keyfile.load(key_file)
    assert keyfile.enroll(key_file, REGION, "dev-1", now_ms=T0_MS) == keyfile.load(key_file).device_key(
        REGION, "dev-1", 2
    )
    under_1 = keyfile.enroll(key_file, REGION, "dev-1", key_id=1, now_ms=T0_MS)
    assert under_1 == keyfile.load(key_file).device_key(REGION, "dev-1", 1, T0_MS)
    assert ring.current_key_id(REGION) == 2
    with pytest.raises(ConfigError, match="cannot provision devices with key 9"):
        keyfile.enroll(key_file, REGION, "dev-new", key_id=9, now_ms=T0_MS)
    assert "dev-new" not in _document(key_file)["devices"][REGION], "nothing is written for a bad key id"


def test_enrol_refuses_unknown_regions_and_bad_ids(key_file: Path) -> None:
    with pytest.raises(ConfigError, match="no region 'mars'"):
        keyfile.enroll(key_file, "mars", "dev-1")
    with pytest.raises(ConfigError, match=r"device id must be 1..128"):
        keyfile.enroll(key_file, REGION, "x" * 129)
    with pytest.raises(ConfigError, match=r"device id must be 1..128"):
        keyfile.enroll(key_file, REGION, "")
    assert "devices" not in _document(key_file)


# -- forgetting ---------------------------------------------------------------------------------------


def test_forget_deletes_the_salt_and_the_device_is_refused_as_forgotten(key_file: Path) -> None:
    key = keyfile.enroll(key_file, REGION, "dev-1", now_ms=T0_MS)
    salt = _salt(key_file, "dev-1")
    ring = keyfile.load(key_file)
    assert ring.device_key(REGION, "dev-1", 1) == key  # now cached in this ring

    tombstone = keyfile.forget(key_file, REGION, "dev-1", now_ms=T1_MS)
    assert tombstone == Enrolment(None, forgotten_at_ms=T1_MS)
    assert tombstone.forgotten
    assert _document(key_file)["devices"][REGION]["dev-1"] == {"forgotten_at_ms": T1_MS}
    assert salt.hex() not in key_file.read_text()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    after = keyfile.load(key_file)
    for key_id in (1,):
        with pytest.raises(ForgottenDevice) as info:
            after.device_key(REGION, "dev-1", key_id)
    err = info.value
    assert isinstance(err, ContractError)
    assert (err.reason, err.stage, err.retriable) == ("forgotten_device", "decrypt", False)
    assert (err.region, err.device_id, err.forgotten_at_ms) == (REGION, "dev-1", T1_MS)
    assert "'dev-1'" in str(err)
    assert after.device_key(REGION, "dev-2", 1) == derive_device_key(_master(key_file), "dev-2", 1)

    # A later rotation keeps the tombstone: the new key id cannot reach the device either.
    keyfile.rotate(key_file, REGION, 600_000, now_ms=T1_MS)
    with pytest.raises(ForgottenDevice):
        keyfile.load(key_file).device_key(REGION, "dev-1", 2)

    written = _signature(key_file)
    again = keyfile.forget(key_file, REGION, "dev-1", now_ms=T1_MS + 5)
    assert again == tombstone, "the first tombstone stays"
    assert _signature(key_file) == written


def test_forget_refuses_a_device_that_was_never_enrolled(key_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"never enrolled.*only by retiring the key ids"):
        keyfile.forget(key_file, REGION, "dev-1")
    with pytest.raises(ConfigError, match="no region 'mars'"):
        keyfile.forget(key_file, "mars", "dev-1")
    assert "devices" not in _document(key_file)


def test_the_old_key_cannot_be_derived_once_the_salt_is_gone(key_file: Path) -> None:
    """What retention keeps is unreadable: the master key with the public salt (the derivation of a
    device never enrolled) or with any other salt gives another key, and AES-GCM refuses it."""
    key = keyfile.enroll(key_file, REGION, "dev-1", now_ms=T0_MS)
    retained = [_seal(key, "dev-1") for _ in range(5)]
    assert all(_opens(raw, key) for raw in retained)

    keyfile.forget(key_file, REGION, "dev-1", now_ms=T1_MS)
    master = _master(key_file)  # the master key is still there: only the salt went
    ring = keyfile.load(key_file)
    candidates = [
        derive_device_key(master, "dev-1", 1),  # the public salt
        derive_device_key(master, "dev-1", 1, salt=os.urandom(DEVICE_SALT_BYTES)),
        derive_device_key(master, "dev-1", 1, salt=b""),
    ]
    for raw in retained:
        with pytest.raises(ForgottenDevice):
            ring.device_key(REGION, "dev-1", decode_envelope(raw, max_envelope_bytes=MAX_BYTES).key_id)
        assert not any(_opens(raw, candidate) for candidate in candidates)


def test_a_forgotten_id_cannot_be_enrolled_again(key_file: Path) -> None:
    keyfile.enroll(key_file, REGION, "dev-1", now_ms=T0_MS)
    keyfile.forget(key_file, REGION, "dev-1", now_ms=T1_MS)
    written = _signature(key_file)
    with pytest.raises(ConfigError, match=r"'dev-1' of region 'eu-west' was forgotten.*under a new id"):
        keyfile.enroll(key_file, REGION, "dev-1")
    with pytest.raises(ConfigError, match="was forgotten"):
        keyfile.enroll_devices(key_file, REGION, ["dev-2", "dev-1"])
    assert _signature(key_file) == written, "a refused batch enrols no one"
    with pytest.raises(ForgottenDevice):
        keyfile.load(key_file).device_key(REGION, "dev-1", 1)
    assert keyfile.enroll(key_file, REGION, "dev-1b")  # the same hardware, a new id


# -- the key file -------------------------------------------------------------------------------------


def test_old_key_files_still_load_and_a_file_without_devices_keeps_its_shape(tmp_path: Path) -> None:
    master = bytes(range(32))
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps({"regions": {REGION: {"1": master.hex()}}, "current": {REGION: 1}}))
    v2 = tmp_path / "v2.json"
    v2.write_text(
        json.dumps(
            {
                "version": 2,
                "regions": {REGION: {"1": {"key": master.hex(), "created_at_ms": T0_MS}}},
                "current": {},
            }
        )
    )
    for path in (v1, v2):
        path.chmod(0o600)
        ring = keyfile.load(path)
        assert ring.devices(REGION) == {}
        assert ring.device_key(REGION, "dev-1", 1) == derive_device_key(master, "dev-1", 1)
        keyfile.rotate(path, REGION, 600_000, now_ms=T0_MS)
        assert set(_document(path)) == {"version", "regions", "current"}, "no devices: no new field"
        keyfile.enroll(path, REGION, "dev-1", now_ms=T0_MS)
        assert _document(path)["version"] == 2
        assert set(_document(path)["devices"]) == {REGION}


def test_a_ring_built_in_memory_takes_enrolments() -> None:
    master, salt = bytes(32), bytes(range(32))
    ring = KeyRing({REGION: {1: master}}, devices={REGION: {"a": Enrolment(salt), "b": Enrolment(None)}})
    assert ring.device_key(REGION, "a", 1) == derive_device_key(master, "a", 1, salt=salt)
    with pytest.raises(ForgottenDevice):
        ring.device_key(REGION, "b", 1)
    with pytest.raises(ConfigError, match="no master keys"):
        KeyRing({REGION: {1: master}}, devices={"us-east": {"a": Enrolment(salt)}})
    with pytest.raises(ConfigError, match="salt is not 32 bytes"):
        KeyRing({REGION: {1: master}}, devices={REGION: {"a": Enrolment(salt[:16])}})


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({}, 'needs "salt"'),
        ({"enrolled_at_ms": T0_MS}, 'needs "salt"'),
        ({"salt": "ab" * 16}, "salt is not 32 bytes"),
        ({"salt": "zz" * 32}, "salt is not hex"),
        ({"salt": 7}, "salt is not a hex string"),
        ({"salt": "ab" * 32, "forgotten_at_ms": T0_MS}, "unknown field"),
        ({"salt": "ab" * 32, "colour": "red"}, "unknown field"),
        ({"salt": "ab" * 32, "enrolled_at_ms": "yesterday"}, "enrolled_at_ms must be an integer"),
        ({"forgotten_at_ms": 1.5}, "forgotten_at_ms must be an integer"),
        ({"forgotten_at_ms": T0_MS, "enrolled_at_ms": T0_MS}, 'needs "salt"'),
        ("ab" * 32, "expected an object"),
    ],
)
def test_load_refuses_bad_enrolments_without_quoting_salts(key_file: Path, entry: object, match: str) -> None:
    document = _document(key_file)
    document["devices"] = {REGION: {"dev-1": entry}}
    key_file.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=match) as info:
        keyfile.load(key_file)
    assert "region 'eu-west': device 'dev-1'" in str(info.value)
    assert "ab" * 16 not in str(info.value)


@pytest.mark.parametrize(
    ("devices", "match"),
    [
        ([], "devices must map region names"),
        ({"mars": {}}, "devices are enrolled in region 'mars'"),
        ({REGION: []}, "expected a map of device id"),
        ({REGION: {"x" * 129: {"forgotten_at_ms": T0_MS}}}, "device id must be 1..128"),
    ],
)
def test_load_refuses_bad_device_maps(key_file: Path, devices: object, match: str) -> None:
    document = _document(key_file)
    document["devices"] = devices
    key_file.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=match):
        keyfile.load(key_file)


# -- reloading ----------------------------------------------------------------------------------------


def _in_another_process(code: str) -> None:
    script = "from pathlib import Path\nfrom edgestream.pipeline.security import keyfile\n" + textwrap.dedent(
        code
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_the_watcher_picks_up_an_enrolment_and_a_forget_written_by_another_process(key_file: Path) -> None:
    watcher = KeyFileWatcher(key_file, required_regions=[REGION])
    first = watcher.current()
    public = first.device_key(REGION, "dev-1", 1)  # cached under the public salt
    first.device_key(REGION, "dev-2", 1)

    _in_another_process(f"keyfile.enroll(Path({str(key_file)!r}), {REGION!r}, 'dev-1', now_ms={T0_MS})")
    second = watcher.current()
    assert second is not first
    enrolled = second.device_key(REGION, "dev-1", 1)
    assert enrolled != public, "a key cached under the public salt is not carried over"
    assert enrolled == derive_device_key(_master(key_file), "dev-1", 1, salt=_salt(key_file, "dev-1"))
    assert (REGION, 1, "dev-2") in second._cache, "unchanged devices keep their cached keys"

    _in_another_process(f"keyfile.forget(Path({str(key_file)!r}), {REGION!r}, 'dev-1', now_ms={T1_MS})")
    third = watcher.current()
    assert third is not second
    assert (REGION, 1, "dev-1") not in third._cache, "a forgotten device's key is not carried over"
    assert (REGION, 1, "dev-2") in third._cache
    with pytest.raises(ForgottenDevice):
        third.device_key(REGION, "dev-1", 1)
    assert watcher.current() is third


# -- never shown --------------------------------------------------------------------------------------


def _forms(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode(),
        repr(secret),
    ]


def test_repr_str_and_logs_never_show_salts_or_device_keys(
    key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = KeyFileWatcher(key_file)
    with caplog.at_level(logging.DEBUG, logger="edgestream.pipeline.security"):
        keys = keyfile.enroll_devices(key_file, REGION, ["dev-1", "dev-2"], now_ms=T0_MS)
        ring = watcher.current()  # logs the reload
        tombstone = keyfile.forget(key_file, REGION, "dev-2", now_ms=T1_MS)
        watcher.current()
    assert "reloaded" in caplog.text
    salt = _salt(key_file, "dev-1")
    secrets = [salt, *keys.values()]
    shown = " ".join(
        [
            repr(ring),
            str(ring),
            repr(ring.devices(REGION)),
            str(ring.devices(REGION)),
            repr(ring.enrolment(REGION, "dev-1")),
            repr(tombstone),
            repr(watcher),
            repr(keyfile.load(key_file)),
            caplog.text,
        ]
    )
    assert "enrolled={'eu-west': 2}" in repr(ring)
    assert "enrolled={'eu-west': 1}, forgotten={'eu-west': 1}" in repr(watcher)
    assert [form for secret in secrets for form in _forms(secret) if form in shown] == []
    assert salt.hex() in key_file.read_text()  # the check can fail: the file does hold it


# -- the CLI ------------------------------------------------------------------------------------------


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"}, catch_exceptions=False)


def test_cli_enroll_list_and_forget_refusals(key_file: Path, tmp_path: Path) -> None:
    where = ["--path", str(key_file)]
    out = tmp_path / "dev-1.json"

    result = _cli("devices", "enroll", "dev-1", "--region", REGION, *where, "--key-out", str(out))
    assert result.exit_code == 0, result.output
    assert "eu-west: device dev-1 enrolled; it seals with key id 1" in result.output
    provisioned = json.loads(out.read_text())
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert provisioned == {
        "region": REGION,
        "device_id": "dev-1",
        "key_id": 1,
        "key": keyfile.load(key_file).device_key(REGION, "dev-1", 1).hex(),
    }

    result = _cli("devices", "enroll", "dev-1", "--region", REGION, *where)
    assert result.exit_code == 0, result.output
    assert "was enrolled already (its key is unchanged)" in result.output
    assert "run again with --key-out" in result.output
    assert _cli("devices", "enroll", "dev-1", "-r", REGION, *where, "--key-out", str(out)).exit_code == 1
    assert _cli("devices", "enroll", "dev-2", "-r", REGION, *where).exit_code == 0
    keyfile.forget(key_file, REGION, "dev-2", now_ms=T1_MS)

    result = _cli("devices", "list", "--region", REGION, *where)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("dev-1" in line and "enrolled" in line and " UTC" in line for line in lines), result.output
    assert any("dev-2" in line and "forgotten" in line for line in lines), result.output
    assert "1 enrolled, 1 forgotten" in result.output
    salts = [entry.get("salt") for entry in _document(key_file)["devices"][REGION].values()]
    assert all(salt is None or salt not in result.output for salt in salts)
    assert provisioned["key"] not in result.output

    result = _cli("devices", "enroll", "dev-2", "--region", REGION, *where)
    assert result.exit_code == 1
    assert "was forgotten" in result.output
    result = _cli("devices", "forget", "dev-9", "--region", REGION, *where)  # refused before any broker
    assert result.exit_code == 1
    assert "never enrolled" in result.output
    assert _cli("devices", "list", "--region", "mars", *where).exit_code == 1
    assert _cli("devices", "list", "--region", REGION, "--path", str(tmp_path / "absent.json")).exit_code == 1


# -- the simulated fleet ------------------------------------------------------------------------------


def test_the_fleet_enrols_its_devices_once_and_seals_with_their_keys(tmp_path: Path) -> None:
    from edgestream.workers.local.devices import make_devices
    from edgestream.workers.local.fleet_settings import FleetSettings

    regions = [REGION, "us-east"]
    key_file = tmp_path / "keys.json"
    ring = keyfile.create(key_file, regions)
    settings = FleetSettings(
        devices=12, home=tmp_path, regions=tuple(r for r in DEFAULT_REGIONS if r.name in regions)
    )
    devices = make_devices(settings, ring)
    enrolled = keyfile.load(key_file)
    assert {d.region for d in devices} == set(regions)
    for device in devices:
        assert enrolled.enrolment(device.region, device.device_id) is not None
        assert device.key == enrolled.device_key(device.region, device.device_id, device.key_id)
        assert device.key != ring.device_key(device.region, device.device_id, device.key_id)
    written = _signature(key_file)
    again = make_devices(settings, ring)
    assert [d.key for d in again] == [d.key for d in devices], "a second run keeps the devices' keys"
    assert _signature(key_file) == written

    other = tmp_path / "other"
    other.mkdir()
    plain_ring = keyfile.create(other / "keys.json", regions)
    plain = make_devices(settings.model_copy(update={"home": other, "enrol": False}), plain_ring)
    assert "devices" not in _document(other / "keys.json")
    assert all(d.key == plain_ring.device_key(d.region, d.device_id, d.key_id) for d in plain)


def test_the_fleet_does_not_enrol_into_a_key_file_it_cannot_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgestream.workers.local.devices import make_devices
    from edgestream.workers.local.fleet_settings import FleetSettings

    key_file = tmp_path / "keys.json"
    ring = keyfile.create(key_file, [REGION])
    key_file.chmod(0o400)
    if os.geteuid() == 0:  # root may write it anyway: what a non-root fleet sees
        monkeypatch.setattr(os, "access", lambda path, mode: not mode & os.W_OK)
    settings = FleetSettings(
        devices=3, home=tmp_path, regions=tuple(r for r in DEFAULT_REGIONS if r.name == REGION)
    )
    devices = make_devices(settings, ring)
    assert "devices" not in _document(key_file)
    assert all(d.key == ring.device_key(d.region, d.device_id, d.key_id) for d in devices)
