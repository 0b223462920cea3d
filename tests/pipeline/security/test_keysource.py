"""Key sources: a key file re-read when it changes (and kept when a change is bad), or a key secret."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import SecretStr, ValidationError

from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.derive import derive_device_key
from edgestream.pipeline.security.keysource import KeyFileWatcher, KeySource

if TYPE_CHECKING:
    from pathlib import Path

T0_MS = 1_750_000_000_000
WINDOW_MS = 600_000


def _document(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def _master(path: Path, region: str, key_id: int) -> bytes:
    return bytes.fromhex(_document(path)["regions"][region][str(key_id)]["key"])


def _write_atomically(path: Path, text: str) -> None:
    """What another process does: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.chmod(0o600)
    os.replace(tmp, path)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    keyfile.create(path, ["eu-west", "us-east"], now_ms=T0_MS)
    return path


# -- reloading ----------------------------------------------------------------------------------------


def test_the_watcher_picks_up_a_rotation_written_by_another_process(key_file: Path) -> None:
    watcher = KeyFileWatcher(key_file)
    first = watcher.current()
    assert watcher.current() is first  # unchanged file: same ring
    first.device_key("eu-west", "dev", 1)
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from edgestream.pipeline.security.keyfile import rotate
        rotate(Path({str(key_file)!r}), "eu-west", {WINDOW_MS}, now_ms={T0_MS})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    second = watcher.current()
    assert second is not first
    assert second.current_key_id("eu-west") == 2
    assert second.key_state("eu-west", 1, now_ms=T0_MS) == "accepted"
    assert ("eu-west", 1, "dev") in second._cache  # key 1 is unchanged: its derived keys carry over
    assert watcher.current() is second


def test_the_watcher_keeps_the_old_ring_on_a_garbled_write_and_logs_once(
    key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = KeyFileWatcher(key_file, required_regions=["eu-west"])
    good = watcher.current()
    good_text = key_file.read_text()
    master = _master(key_file, "eu-west", 1)
    key_file.write_text(good_text[: len(good_text) // 2])  # a half-written file
    with caplog.at_level(logging.ERROR, logger="edgestream.pipeline.security.keysource"):
        assert [watcher.current() for _ in range(3)] == [good, good, good]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "keeping the previous keys" in errors[0].getMessage()
    assert master.hex() not in caplog.text

    caplog.clear()
    without_region = json.loads(good_text)
    del without_region["regions"]["eu-west"], without_region["current"]["eu-west"]
    _write_atomically(key_file, json.dumps(without_region))
    with caplog.at_level(logging.ERROR, logger="edgestream.pipeline.security.keysource"):
        assert watcher.current() is good  # a valid file that lost our region is not applied either
    assert "no keys for region(s) eu-west" in caplog.text

    caplog.clear()
    key_file.unlink()
    with caplog.at_level(logging.ERROR, logger="edgestream.pipeline.security.keysource"):
        assert watcher.current() is good
        assert watcher.current() is good
    assert len(caplog.records) == 1

    _write_atomically(key_file, good_text)
    keyfile.rotate(key_file, "eu-west", WINDOW_MS, now_ms=T0_MS)
    assert watcher.current().current_key_id("eu-west") == 2  # a good file is picked up again


def test_the_watcher_refuses_to_start_on_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("{")
    with pytest.raises(ConfigError, match="cannot read key file"):
        KeyFileWatcher(path)
    with pytest.raises(ConfigError, match="cannot read key file"):
        KeyFileWatcher(tmp_path / "absent.json")


# -- secrets ------------------------------------------------------------------------------------------


def _leaks(shown: str, masters: list[bytes]) -> list[str]:
    """Every rendering of a master key (or of a device key derived from it) found in ``shown``."""
    found = []
    for master in masters:
        for secret in (master, derive_device_key(master, "dev", 1)):
            for form in (
                secret.hex(),
                secret.hex().upper(),
                base64.b64encode(secret).decode(),
                base64.urlsafe_b64encode(secret).decode(),
                repr(secret),
            ):
                if form in shown:
                    found.append(form)
    return found


def test_key_source_from_a_secret_loads_and_never_shows_key_bytes(key_file: Path) -> None:
    masters = [_master(key_file, "eu-west", 1), _master(key_file, "us-east", 1)]
    text = key_file.read_text()
    source = KeySource.of(None, SecretStr(text), default_file=key_file)
    assert source.file is None
    ring = source.load()
    assert ring.device_key("eu-west", "dev", 1) == derive_device_key(masters[0], "dev", 1)
    watcher = source.watcher(required_regions=["eu-west"])
    assert watcher.current() is watcher.current()

    shown = " ".join(
        [
            repr(source),
            str(source),
            source.model_dump_json(),
            repr(ring),
            str(ring),
            repr(ring.keys("eu-west")),
            repr(ring.status()),
            repr(watcher),
            repr(KeyFileWatcher(key_file)),
            repr(keyfile.load_secret(SecretStr(text))),
        ]
    )
    assert "eu-west" in shown
    assert _leaks(shown, masters) == []
    assert _leaks(text, masters)  # the check can fail: the raw JSON does show them


def test_bad_secrets_fail_without_quoting_them(key_file: Path) -> None:
    text = key_file.read_text()
    masters = [_master(key_file, "eu-west", 1)]
    with pytest.raises(ConfigError, match="key secret: not JSON") as info:
        keyfile.load_secret(SecretStr(text[:-20]))
    assert info.value.__cause__ is None
    assert info.value.__context__ is None  # the JSONDecodeError holding the text is gone
    assert _leaks(str(info.value), masters) == []

    short = text.replace(masters[0].hex(), masters[0].hex()[:-2])
    with pytest.raises(
        ConfigError, match="key secret: region 'eu-west': master key 1 is not 32 bytes"
    ) as info:
        keyfile.load_secret(SecretStr(short))
    assert _leaks(str(info.value), masters) == []

    with pytest.raises(ValidationError) as invalid:
        KeySource(file=key_file, secret=text)  # type: ignore[arg-type]
    assert _leaks(str(invalid.value), masters) == []
    with pytest.raises(ValidationError, match="exactly one"):
        KeySource()
    with pytest.raises(ConfigError, match="both a key file and a key secret"):
        KeySource.of(key_file, SecretStr(text), default_file=key_file)


def test_key_source_picks_the_file_or_the_default(key_file: Path, tmp_path: Path) -> None:
    assert KeySource.of(None, None, default_file=key_file).file == key_file
    other = tmp_path / "other.json"
    assert KeySource.of(other, None, default_file=key_file).file == other
    watcher = KeySource(file=key_file).watcher()
    keyfile.rotate(key_file, "us-east", WINDOW_MS, now_ms=T0_MS)
    assert watcher.current().current_key_id("us-east") == 2
