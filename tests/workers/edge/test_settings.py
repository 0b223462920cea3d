"""Worker settings: a worker never guesses where its brokers are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from edgestream.cli import app
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.settings import WorkerSettings


@pytest.fixture
def no_worker_env(monkeypatch: pytest.MonkeyPatch) -> None:

    for name in list(os.environ):
        if name.startswith(("EDGESTREAM_WORKER_", "EDGESTREAM_KAFKA_")):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_worker_env")
def test_settings_without_brokers_are_refused() -> None:
    with pytest.raises(ValidationError, match="kafka"):
        WorkerSettings()  # type: ignore[call-arg]


@pytest.mark.usefixtures("no_worker_env")
def test_settings_take_brokers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESTREAM_WORKER_KAFKA__BOOTSTRAP_SERVERS", "kafka-1:9092")
    settings = WorkerSettings()  # type: ignore[call-arg]
    assert settings.kafka == KafkaSettings(bootstrap_servers="kafka-1:9092")


@pytest.mark.usefixtures("no_worker_env")
def test_the_worker_command_without_brokers_says_so_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no local broker state here either
    result = CliRunner().invoke(app, ["worker", "--region", "eu-west"])
    assert result.exit_code == 2
    assert "no Kafka brokers configured" in result.output
    assert "--local" in result.output


@pytest.mark.usefixtures("no_worker_env")
def test_local_without_a_running_local_broker_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["worker", "--local"])
    assert result.exit_code == 2
    assert "local broker is not running" in result.output


@pytest.mark.usefixtures("no_worker_env")
def test_bootstrap_and_local_together_are_refused() -> None:
    result = CliRunner().invoke(app, ["worker", "--local", "--bootstrap", "127.0.0.1:9092"])
    assert result.exit_code == 2
    assert "pass one" in result.output
