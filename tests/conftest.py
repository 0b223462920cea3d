"""Suite-wide fixtures: one real Kafka broker per test session, started only when a test asks for it.

The broker speaks TLS 1.3 only, requires client certificates (from a CA made in its temporary home)
and enforces ACLs, as in production. Set ``EDGESTREAM_TEST_BOOTSTRAP=host:port`` to run the broker
tests against a PLAINTEXT broker that already runs instead (the TLS and ACL tests then fail).
Tests that use the broker (directly or through another fixture) get the ``broker`` marker, so
``pytest -m "not broker"`` runs the pure-logic tests alone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.local.broker.process import running_broker
from edgestream.workers.local.broker.settings import BrokerSettings
from edgestream.workers.local.broker.state import BrokerState

if TYPE_CHECKING:
    from collections.abc import Iterator

TEST_BOOTSTRAP_ENV = "EDGESTREAM_TEST_BOOTSTRAP"
"""``host:port`` of an already running broker to use instead of starting one."""
BROKER_FIXTURES = frozenset({"kafka_broker", "bootstrap"})
"""Fixtures whose use marks a test ``broker``."""
BROKER_START_TIMEOUT_S = 120.0


def pytest_configure(config: pytest.Config) -> None:
    """The ``chart_tools`` marker (tests/deploy/test_helm_chart.py): registered here rather than in
    pyproject.toml, whose every change makes `make` reinstall the virtualenv."""
    config.addinivalue_line(
        "markers",
        "chart_tools: needs the tools make test builds in the background; run last, they wait for them",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs the real broker (the fixture closure includes indirect use), and run
    the ``chart_tools`` tests last: ``make test`` builds their tools in the background meanwhile."""
    del config
    for item in items:
        if BROKER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.broker)
    items.sort(key=lambda item: item.get_closest_marker("chart_tools") is not None)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerState]:
    """The session's broker: started in a temporary home on free loopback ports, stopped at the end."""
    external = os.environ.get(TEST_BOOTSTRAP_ENV)
    if external:
        yield BrokerState(
            bootstrap=external,
            controller="",
            pid=-1,
            log_dir=Path(),
            data_dir=Path(),
            started_at=time.time(),
        )
        return
    settings = BrokerSettings(home=tmp_path_factory.mktemp("kafka"), port=0, controller_port=0)
    with running_broker(settings, timeout_s=BROKER_START_TIMEOUT_S) as state:
        yield state


@pytest.fixture(scope="session")
def bootstrap(kafka_broker: BrokerState) -> KafkaSettings:
    """How tests reach the session's broker: over TLS 1.3 as ``admin`` (a super user). Workers under
    test connect as their region's ``edge-<region>`` principal instead, within its ACLs."""
    return kafka_broker.kafka()
