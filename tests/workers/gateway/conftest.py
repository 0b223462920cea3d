"""The gateway tests' shared fixture: a temporary home with the PKI and the enrolled test devices."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import DEVICES, GatewayHome


@pytest.fixture
def home(tmp_path: Path) -> GatewayHome:
    """A gateway home whose directory holds `DEVICES`."""
    gateway_home = GatewayHome(tmp_path)
    gateway_home.enrol(DEVICES)
    return gateway_home
