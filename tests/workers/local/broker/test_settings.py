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
