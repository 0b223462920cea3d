"""The jar cache: per Kafka version, resolved by Maven once, failures carry Maven's output."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgestream.pipeline.errors import BrokerError
from edgestream.workers.local.broker.jars import JarCache
from edgestream.workers.local.broker.settings import BrokerSettings
from tests.workers.local.broker.helpers import FAKE_MVN_OK, fake_java, fake_tool, only_on_path, settings_in


def test_jar_cache_is_per_version(tmp_path: Path) -> None:
    jars = JarCache(settings_in(tmp_path, kafka_version="4.0.0"))

    assert jars.libs_dir == (tmp_path / "cache").resolve() / "kafka-4.0.0" / "libs"
    default = JarCache(BrokerSettings(home=tmp_path))
    assert default.libs_dir == Path.home().resolve() / ".cache/edgestream/kafka-4.1.1/libs"


def test_missing_maven_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_java(tmp_path / "bin")
    only_on_path(monkeypatch, tmp_path / "bin")

    with pytest.raises(BrokerError, match="`mvn` is not on PATH") as raised:
        JarCache(settings_in(tmp_path)).fetch(quiet=True)
    assert "apt-get install openjdk-17-jre-headless maven" in str(raised.value)


def test_maven_failure_carries_its_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_java(tmp_path / "bin")
    fake_tool(
        tmp_path / "bin",
        "mvn",
        "echo '[INFO] resolving'\necho '[ERROR] Could not resolve kafka_2.13: boom' >&2\nexit 1\n",
    )
    only_on_path(monkeypatch, tmp_path / "bin")
    jars = JarCache(settings_in(tmp_path))

    with pytest.raises(BrokerError, match=r"(?s)exit 1.*\[ERROR\] Could not resolve kafka_2\.13: boom"):
        jars.fetch(quiet=True)
    assert not jars.ready()
    assert [path.name for path in jars.cache_dir.iterdir() if path.name.startswith("libs")] == []


def test_fetched_jars_are_cached_and_the_second_fetch_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_java(tmp_path / "bin")
    fake_tool(tmp_path / "bin", "mvn", FAKE_MVN_OK)
    only_on_path(monkeypatch, tmp_path / "bin")
    jars = JarCache(settings_in(tmp_path))

    libs_dir = jars.fetch(quiet=True)

    assert libs_dir == jars.libs_dir
    assert sorted(jar.name for jar in libs_dir.iterdir()) == [
        "kafka-clients-4.1.1.jar",
        "kafka_2.13-4.1.1.jar",
    ]
    assert jars.ready()
    only_on_path(monkeypatch, tmp_path / "empty")  # neither java nor mvn: a cache hit must not need them
    assert jars.fetch(quiet=False) == libs_dir
