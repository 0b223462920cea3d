"""The broker's settings come from ``EDGESTREAM_BROKER_*`` and are validated."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgestream.workers.local.broker.settings import BrokerSettings


def test_settings_come_from_the_environment_and_are_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESTREAM_BROKER_HEAP_MB", "256")
    monkeypatch.setenv("EDGESTREAM_BROKER_PORT", "29092")

    settings = BrokerSettings()

    assert settings.heap_mb == 256
    assert settings.port == 29092
    assert settings.home == Path(".edgestream")
    with pytest.raises(ValidationError):
        settings.heap_mb = 1024
    monkeypatch.setenv("EDGESTREAM_BROKER_PORT", "70000")
    with pytest.raises(ValidationError, match="port"):
        BrokerSettings()


def test_a_cluster_has_one_or_three_nodes_with_a_smaller_heap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert BrokerSettings().brokers == 1, "one broker unless asked for more"
    monkeypatch.setenv("EDGESTREAM_BROKER_BROKERS", "3")
    settings = BrokerSettings()
    assert settings.brokers == 3
    assert settings.node_heap_mb < settings.heap_mb
    monkeypatch.setenv("EDGESTREAM_BROKER_BROKERS", "2")
    with pytest.raises(ValidationError, match="brokers"):
        BrokerSettings()
