"""Java checks: the version is parsed, a missing or old ``java`` says what to install."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from edgestream.pipeline.errors import BrokerError
from edgestream.workers.local.broker.jars import JarCache
from edgestream.workers.local.broker.java import INSTALL_HINT, jvm_options, parse_java_major
from edgestream.workers.local.broker.process import LocalBroker
from tests.workers.local.broker.helpers import fake_java, fake_tool, only_on_path, settings_in

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ('openjdk version "11.0.22" 2024-01-16 LTS', 11),
    ],
)
def test_java_major_version_is_parsed(output: str, major: int) -> None:
    assert parse_java_major(output) == major


def test_missing_java_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    only_on_path(monkeypatch, tmp_path / "bin")

    with pytest.raises(BrokerError, match="`java` is not on PATH") as raised:
        LocalBroker(settings_in(tmp_path)).start(timeout_s=5)
    assert INSTALL_HINT in str(raised.value)


def test_old_java_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_java(tmp_path / "bin", version="11.0.22")
    fake_tool(tmp_path / "bin", "mvn", "exit 0\n")
    only_on_path(monkeypatch, tmp_path / "bin")

    with pytest.raises(BrokerError, match=r"Java 17 or newer.*Java 11"):
        JarCache(settings_in(tmp_path)).fetch(quiet=True)


def test_the_jit_setting_chooses_the_compilers(tmp_path: Path) -> None:
    c1 = jvm_options(512, tmp_path, "c1")
    tiered = jvm_options(512, tmp_path, "tiered")
    assert "-XX:TieredStopAtLevel=1" in c1
    assert not any("TieredStopAtLevel" in option for option in tiered)
    assert [o for o in c1 if "Tiered" not in o] == tiered


def test_the_collector_logs_into_the_broker_log_dir_even_through_a_colon(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs:a"
    options = jvm_options(1024, log_dir)
    [gc_log] = [o for o in options if o.startswith("-Xlog:gc")]
    path, _, rest = gc_log.removeprefix('-Xlog:gc:file="').partition('"')
    assert path == str(log_dir / "gc.log")
    assert "filecount=2" in rest
    assert "filesize=10m" in rest
