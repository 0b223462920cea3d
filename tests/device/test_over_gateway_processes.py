"""The SDK against the real thing: ``edgestream gateway`` and ``edgestream worker`` as OS processes on
the test session's broker (TLS, each as its own principal), devices as ``EdgeClient`` over
``GatewayTransport`` (``bench/devicefaults`` drives both; ``python -m bench.devicefaults`` runs the
same steps longer and measures them).

* The edge answers (its sealed reply, opened and verified by the device); the region's worker is
  stopped mid-run: every call still gets an answer, from the fallback while the worker is away, and the
  edge answers again once it is back; its late replies to the calls the fallback answered are
  reconciled.
* A region's gateway is killed (SIGKILL): each device fails over to the next nearest region, whose
  edge answers it.

No timing is asserted beyond what the SDK promises per call (an answer); when things happened is the
bench's to measure.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.devicefaults.figures import failover_s, started_in
from bench.devicefaults.run import FaultRun
from bench.devicefaults.stack import DeviceStack, prepare_models
from bench.faults.env import FaultEnv
from edgestream.device.answers import ClientSettings
from edgestream.pipeline.observability.catalogue import GATEWAY_REPLIES, READY
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.local.broker.state import BrokerState

pytestmark = pytest.mark.broker

DEADLINE_MS = 1000.0
"""Generous for a loaded 2-core box: the edge answers well inside it when it is up."""
SETTINGS = ClientSettings(tick_s=0.05, session_timeout_s=1.0, report_interval_s=3600.0)


@pytest.fixture(scope="module")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("devicefaults-home")
    prepare_models(home)
    return home


@pytest.fixture
def env(bootstrap: KafkaSettings, kafka_broker: BrokerState, model_home: Path, tmp_path: Path) -> FaultEnv:
    return FaultEnv(
        bootstrap=bootstrap,
        home=model_home,
        run_dir=tmp_path,
        served_versions={},
        tls_root=kafka_broker.tls_root,
    )


async def _stack(env: FaultEnv, regions: int, devices: list[str]) -> AsyncIterator[DeviceStack]:
    stack = await DeviceStack.create(env, regions, devices)
    try:
        await stack.start()
        yield stack
    finally:
        await stack.close()


@pytest.fixture
async def one_region(env: FaultEnv) -> AsyncIterator[DeviceStack]:
    async for stack in _stack(env, 1, ["phone-1"]):
        yield stack


@pytest.fixture
async def two_regions(env: FaultEnv) -> AsyncIterator[DeviceStack]:
    async for stack in _stack(env, 2, ["phone-1", "phone-2"]):
        yield stack


async def test_a_stopped_worker_leaves_every_call_answered_by_the_fallback_until_it_is_back(
    one_region: DeviceStack,
) -> None:
    (region,) = one_region.regions
    run = FaultRun(one_region)
    await run.start_devices(["phone-1"], SETTINGS, rate_per_s=10, deadline_ms=DEADLINE_MS)
    await run.wait_edge(region.name, 0.0, every_device=True)

    _, exited_s = await run.stop_worker(region, signal.SIGTERM)
    await run.wait_fallbacks(since_s=exited_s, count=10)
    restarted_s, _ready_s = await run.restart_worker(region)
    await run.wait_edge(region.name, restarted_s, every_device=True)
    calls = await run.finish()

    assert [c for c in calls if c.source == "error"] == []  # every call was answered
    before = started_in(calls, 0.0, exited_s)
    assert any(c.source == "edge" and c.region == region.name for c in before)
    # Nobody could answer these at the edge before their deadline: the worker was gone and its next
    # incarnation was not started yet.
    away = started_in(calls, exited_s, restarted_s - DEADLINE_MS / 1000.0)
    assert len(away) >= 5
    assert {(c.source, c.why) for c in away} == {("fallback", "deadline")}
    (client,) = one_region.clients
    assert dict(client.stats.refused_replies) == {}  # every reply opened with the device's key
    # The gateway process routed the edge's replies to the device's session (its own /metrics say so).
    gateway = region.gateway
    routed = await asyncio.to_thread(gateway.metric, GATEWAY_REPLIES, outcome="routed", region=region.name)
    assert routed >= sum(c.source == "edge" for c in calls)
    assert await asyncio.to_thread(gateway.metric, READY, region=region.name) == 1.0
    assert run.reconciled() >= 1  # the back worker's late answers to the calls the fallback took
    assert run.duplicates() == 0


async def test_a_killed_gateway_sends_its_devices_to_the_next_nearest_region(
    two_regions: DeviceStack,
) -> None:
    near, far = two_regions.regions
    run = FaultRun(two_regions)
    devices = ["phone-1", "phone-2"]
    await run.start_devices(devices, SETTINGS, rate_per_s=5, deadline_ms=DEADLINE_MS)
    await run.wait_edge(near.name, 0.0, every_device=True)
    assert run.edge_since(far.name, 0.0) == set()  # the nearest region serves them while it is up

    killed_s = run.kill_gateway(near)
    await run.wait_edge(far.name, killed_s, every_device=True)
    calls = await run.finish()

    assert [c for c in calls if c.source == "error"] == []
    after = started_in(calls, killed_s, float("inf"))
    assert not any(c.source == "edge" and c.region == near.name for c in after)
    times = failover_s(calls, killed_s, near.name)
    assert sorted(times) == devices
    assert all(t is not None for t in times.values())
    assert run.failovers() == len(devices)
    assert all(
        c.sessions.current is not None and c.sessions.current.region == far.name for c in two_regions.clients
    )
