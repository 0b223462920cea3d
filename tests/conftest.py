"""Suite-wide fixtures: one real Kafka broker per test session, started only when a test asks for it.

The broker speaks TLS 1.3 only, requires client certificates (from a CA made in its temporary home)
and enforces ACLs, as in production. Set ``EDGESTREAM_TEST_BOOTSTRAP=host:port`` to run the broker
tests against a PLAINTEXT broker that already runs instead (the TLS and ACL tests then fail).
Tests that use the broker (directly or through another fixture) get the ``broker`` marker, so
``pytest -m "not broker"`` runs the pure-logic tests alone.
"""

from __future__ import annotations

import asyncio
import inspect
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
    from collections.abc import AsyncIterator, Iterator

TEST_BOOTSTRAP_ENV = "EDGESTREAM_TEST_BOOTSTRAP"
"""``host:port`` of an already running broker to use instead of starting one."""
BROKER_FIXTURES = frozenset({"kafka_broker", "bootstrap"})
"""Fixtures whose use marks a test ``broker``."""
BROKER_START_TIMEOUT_S = 120.0
TASK_GRACE_S = 2.0
"""How long a test's tasks have to finish after it (and its fixtures) ended before it fails for them."""
TOOL_MARKERS = ("chart_tools", "s3_tools")
"""Tests whose tools may still be building in the background: run last."""


def pytest_configure(config: pytest.Config) -> None:
    """The ``chart_tools`` marker (tests/deploy/test_helm_chart.py) and the ``s3_tools`` one
    (tests/pipeline/test_registry_s3_server.py): registered here rather than in pyproject.toml, whose
    every change makes `make` reinstall the virtualenv."""
    config.addinivalue_line(
        "markers",
        "chart_tools: needs the tools make test builds in the background; run last, they wait for them",
    )
    config.addinivalue_line(
        "markers",
        "s3_tools: needs SeaweedFS's weed (make s3-tools); run last, they wait for a background build of it",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs the real broker (the fixture closure includes indirect use), and run
    the ``chart_tools`` and ``s3_tools`` tests last: their tools may be building in the background."""
    del config
    for item in items:
        if BROKER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.broker)
    items.sort(key=lambda item: any(item.get_closest_marker(m) is not None for m in TOOL_MARKERS))


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


@pytest.fixture(autouse=True)
def _no_task_left(request: pytest.FixtureRequest) -> None:
    """Every coroutine test: see ``_tasks_it_started``."""
    if inspect.iscoroutinefunction(getattr(request, "function", None)):
        request.getfixturevalue("_tasks_it_started")


@pytest.fixture
async def _tasks_it_started() -> AsyncIterator[None]:
    """Fail a test that leaves a task of its own running once it and its fixtures have ended (given
    ``TASK_GRACE_S`` to finish), and cancel those tasks. The whole suite runs on one event loop, so a
    task left sleeping in a loop lives on under every later test (one made a later test that stubbed
    ``asyncio.sleep`` spin until CI was killed). Tasks that fixtures of a wider scope start while the
    test runs would count as its own: the suite has no async fixture of a wider scope."""
    before = asyncio.all_tasks()
    yield
    me = asyncio.current_task()
    deadline = time.monotonic() + TASK_GRACE_S
    while left := [t for t in asyncio.all_tasks() - before if t is not me and not t.done()]:
        if time.monotonic() >= deadline:
            for task in left:
                task.cancel()
            await asyncio.wait(left, timeout=TASK_GRACE_S)  # a task may take its cancel slowly
            names = ", ".join(sorted(repr(t.get_coro()) for t in left))
            pytest.fail(f"the test left {len(left)} task(s) running: {names}")
        await asyncio.sleep(0.01)
