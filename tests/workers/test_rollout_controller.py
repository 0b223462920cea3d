"""The rollout controller on the real broker: a canary whose model errors regress is rolled back within
one step and no device is routed to it afterwards; a healthy one goes 5% -> 25% -> 100%, waiting for
a lagging worker. And, without a broker, the workers' revisions read from their stats files."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
import uuid
from pathlib import Path

import msgpack
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from edgestream.pipeline import kafka
from edgestream.pipeline.contract.cloud import PartialSummary
from edgestream.pipeline.learning.rollout import Bounds
from edgestream.pipeline.models import ModelStore
from edgestream.pipeline.registry import (
    LocalArtifactStore,
    Manifest,
    ModelState,
    SignedManifest,
    SigningKey,
    TrustedKeys,
    choose_version,
    publish,
    start_canary,
)
from edgestream.pipeline.registry.client import RegistryClient
from edgestream.pipeline.registry.reports import TopicWorkerView, WorkerReport, report_of
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import SUMMARIES_TOPIC, WORKERS_TOPIC, shared_topics
from edgestream.workers.rollout_controller import (
    STATS_REVISIONS_KEY,
    Controller,
    FileWorkerView,
    WorkerView,
    parsed,
)

from .conftest import EdgeRegion

ARTIFACT = "embedding-scorer"
BOUNDS = Bounds(min_requests=50, min_labelled=50, stage_dwell_ms=0)
KEY = SigningKey.generate()
"""The registry key of these tests: it signs the manifests and the states, and the controller pins it."""
TRUSTED = TrustedKeys().with_key(KEY.public_raw)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _signed(region: EdgeRegion, root: Path, key: SigningKey, model: str, version: int) -> SignedManifest:
    """The tiny embedding scorer published under ``model`` (a name of this test's own, so no other test's
    registry state or summaries mix in)."""
    artifact = ModelStore(region.home / "models").get(ARTIFACT, "tiny")
    sha256 = LocalArtifactStore(root / "artifacts").put(artifact.path.read_bytes())
    manifest = Manifest(
        model=model,
        version=version,
        variant="tiny",
        sha256=sha256,
        size_bytes=artifact.path.stat().st_size,
        input_dtype=artifact.spec.input_dtype,
        input_shape=artifact.spec.input_shape,
        metrics={"accuracy": artifact.accuracy},
        lineage={"test": "rollout"},
        created_at_ms=_now_ms(),
    )
    return key.sign(manifest)


async def _canary(region: EdgeRegion, root: Path, model: str) -> ModelState:
    """Stable v1 and a canary of v2 at 5% (stages 5%, 25%, 100%), published."""
    state = publish(ModelState(model), _signed(region, root, KEY, model, 1), now_ms=_now_ms())
    state = publish(state, _signed(region, root, KEY, model, 2), now_ms=_now_ms())
    state = start_canary(state, 2, now_ms=_now_ms())
    await RegistryClient(region.bootstrap, signer=KEY).publish_state(state)
    return state


def _summary(region: str, model: str, version: int, *, results: int, infer_failed: int = 0) -> PartialSummary:
    summary = PartialSummary(region, "node-a", model, version, _now_ms())
    for i in range(results):
        summary.add_result(i % 3, 0.9, 12.0 + i % 10)
    for _ in range(infer_failed):
        summary.add_dead_letter("infer_failed")
    summary.add_dead_letter("replayed")  # an input error: not the version's fault
    return summary


async def _commit(region: EdgeRegion, summaries: list[PartialSummary]) -> None:
    """Send the summaries in one transaction, as the edge does, and return once it is committed."""
    client = kafka.producer(
        region.bootstrap, "test-rollout", transactional_id=f"rollout-test-{uuid.uuid4().hex}"
    )
    async with kafka.started(client) as producer, producer.transaction():
        for s in summaries:
            await producer.send(SUMMARIES_TOPIC, s.to_bytes(), key=s.key)


async def test_a_bad_canary_is_rolled_back_in_one_step_and_no_device_keeps_it(
    edge_region: EdgeRegion, tmp_path: Path
) -> None:
    model = f"rollout-bad-{uuid.uuid4().hex[:8]}"
    canary = await _canary(edge_region, tmp_path, model)
    controller = Controller(edge_region.bootstrap, BOUNDS, signer=KEY, trusted=TRUSTED, labels=False)
    # Healthy stable traffic; the canary fails 30% of its requests.
    await _commit(
        edge_region,
        [
            _summary(edge_region.name, model, 1, results=400, infer_failed=2),
            _summary(edge_region.name, model, 2, results=35),
            _summary(edge_region.name, model, 2, results=35, infer_failed=30),
        ],
    )
    committed = time.monotonic()
    verdict = await controller.step(model)
    rolled_back_s = time.monotonic() - committed
    print(f"\nrollback published {rolled_back_s:.3f} s after the bad summaries were committed")

    assert verdict.action == "rollback", verdict.reasons
    assert verdict.revision == canary.revision + 1
    assert "error rate 30.00%" in verdict.reason
    assert rolled_back_s < 10.0, "one step, within the configured bound"
    state = (await RegistryClient(edge_region.bootstrap).read_states())[model]
    assert state.canary is None
    assert state.stable == 1
    assert state.revision == verdict.revision
    last = state.history[-1]
    assert (last.action, last.version) == ("rollback", 2)
    assert last.reason.startswith("automatic: error rate 30.00%")
    # No device keeps the bad version: every device id routes to stable under any routing key.
    for routing_key in (os.urandom(32), os.urandom(32)):
        routed = {choose_version(state, f"device-{i}", routing_key) for i in range(1000)}
        assert routed == {1}
    # Before the rollback, the 5% canary did take some of those devices.
    key = os.urandom(32)
    assert 2 in {choose_version(canary, f"device-{i}", key) for i in range(1000)}
    # Nothing more to judge.
    assert (await controller.step(model)).action == "hold"
    await controller.close()


@pytest.mark.parametrize("reports", ["files", "topic"])
async def test_a_healthy_canary_advances_through_its_stages_waiting_for_lagging_workers(
    edge_region: EdgeRegion, producer: AIOKafkaProducer, tmp_path: Path, reports: str
) -> None:
    """The lag guard reads the workers' stats files (one host) or their reports on control.workers
    (any host); a report older than the view's max age does not count."""
    model = f"rollout-good-{uuid.uuid4().hex[:8]}"
    canary = await _canary(edge_region, tmp_path, model)
    stats_dir = tmp_path / "stats"
    stats_dir.mkdir()
    view: WorkerView = FileWorkerView(stats_dir)
    if reports == "topic":
        await ensure_topics(edge_region.bootstrap, shared_topics())
        view = TopicWorkerView(edge_region.bootstrap, regions=frozenset({edge_region.name}), max_age_s=60)
        # A worker that died an hour ago without its tombstone, at the current revision: ignored.
        stale = WorkerReport(f"{model}-z", edge_region.name, int(time.time() * 1000) - 3_600_000, {model: 99})
        await producer.send_and_wait(WORKERS_TOPIC, stale.to_bytes(), key=stale.node.encode())

    async def worker_at(node: str, revision: int) -> None:
        if reports == "files":
            (stats_dir / f"{node}.json").write_text(
                json.dumps(
                    {"node": node, "served_versions": {model: [1, 2]}, STATS_REVISIONS_KEY: {model: revision}}
                )
            )
        else:
            report = report_of(f"{model}-{node}", edge_region.name, {model: revision}, {model: (1, 2)})
            await producer.send_and_wait(WORKERS_TOPIC, report.to_bytes(), key=report.node.encode())

    controller = Controller(
        edge_region.bootstrap, BOUNDS, signer=KEY, trusted=TRUSTED, workers=view, labels=False
    )
    assert (await controller.step(model)).action == "hold", "no summaries yet"
    await _commit(
        edge_region,
        [
            _summary(edge_region.name, model, 1, results=300, infer_failed=1),
            _summary(edge_region.name, model, 2, results=100),
        ],
    )
    await worker_at("a", canary.revision)
    await worker_at("b", canary.revision - 1)
    held = await controller.step(model)
    assert held.action == "hold"
    assert held.reasons == (f"1 of 2 workers not at revision {canary.revision} (at [{canary.revision - 1}])",)

    await worker_at("b", canary.revision)
    first = await controller.step(model)
    assert first.action == "advance", first.reasons
    state = (await RegistryClient(edge_region.bootstrap).read_states())[model]
    assert state.canary is not None
    assert state.canary.fraction == 0.25
    assert (await controller.step(model)).action == "hold", "the workers have not applied the 25% stage"

    await worker_at("a", state.revision)
    await worker_at("b", state.revision)
    second = await controller.step(model)
    assert second.action == "advance", second.reasons
    state = (await RegistryClient(edge_region.bootstrap).read_states())[model]
    assert state.canary is None
    assert state.stable == 2
    assert [e.action for e in state.history[-3:]] == ["canary", "advance", "promote"]
    assert all(e.reason.startswith("automatic: healthy") for e in state.history[-2:])
    await controller.close()
    if isinstance(view, TopicWorkerView):
        await view.close()


def test_file_worker_view_reads_revisions_and_skips_stale_files(tmp_path: Path) -> None:
    def write(name: str, stats: dict[str, object], age_s: float = 0.0) -> None:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(stats))
        then = time.time() - age_s
        os.utime(path, (then, then))

    write("a", {"served_versions": {"m": [1, 2]}, "registry_revisions": {"m": 5}})
    write("b", {"served_versions": {"m": [1]}})  # an older worker: serves m, reports no revision
    write("c", {"served_versions": {"other": [1]}, "registry_revisions": {"other": 3}})
    write("d", {"served_versions": {"m": [1]}, "registry_revisions": {"m": 2}}, age_s=600)
    (tmp_path / "e.json").write_text("{not json")
    # Files of another shape: the controller stopped at the first (AttributeError, TypeError).
    write("f", {"served_versions": {"m": [1]}, "registry_revisions": ["m"]})
    write("g", {"served_versions": ["m"], "registry_revisions": 7})
    assert asyncio.run(FileWorkerView(tmp_path, max_age_s=60).revisions("m")) == [5, None]


def _poisoned(model: str, version: int) -> list[bytes]:
    """Summaries of ``model`` v``version`` that no honest edge writes: each crashed ``rollout watch``
    (``int(inf)``) or would have skewed its verdict (negative or huge counts) before they were skipped."""
    fields = msgpack.unpackb(_summary("r", model, version, results=1).to_bytes(), strict_map_key=False)
    out = []
    for name, value in [
        ("results", math.inf),
        ("results", math.nan),
        ("results", -1_000),
        ("results", 2**64 - 1),
        ("lat", [0] * 12 + [-5]),
        ("dlq", {"infer_failed": math.inf}),
    ]:
        out.append(msgpack.packb({**fields, name: value}, use_bin_type=True))
    return [*out, b"\xc1 not msgpack"]


def test_records_that_do_not_parse_are_skipped_and_counted() -> None:
    good = _summary("r", "m", 1, results=3)
    records = [
        ConsumerRecord(SUMMARIES_TOPIC, 0, i, 0, 0, None, value, None, 0, 0, [])
        for i, value in enumerate([good.to_bytes(), *_poisoned("m", 1), None])
    ]
    skipped: dict[str, int] = {}
    kept = parsed(records, PartialSummary.from_bytes, lambda s: s.model == "m", skipped)
    assert [s.results for s in kept] == [3]
    assert skipped == {SUMMARIES_TOPIC: 7}


async def test_poisoned_summaries_do_not_stop_the_controller(edge_region: EdgeRegion, tmp_path: Path) -> None:
    model = f"rollout-poison-{uuid.uuid4().hex[:8]}"
    await _canary(edge_region, tmp_path, model)
    controller = Controller(edge_region.bootstrap, BOUNDS, signer=KEY, trusted=TRUSTED, labels=False)
    producer = AIOKafkaProducer(**edge_region.bootstrap.client_kwargs())
    await producer.start()
    try:
        for version in (1, 2):
            for value in _poisoned(model, version):
                await producer.send_and_wait(SUMMARIES_TOPIC, value, key=model.encode())
    finally:
        await producer.stop()
    await _commit(
        edge_region,
        [
            _summary(edge_region.name, model, 1, results=400),
            _summary(edge_region.name, model, 2, results=35, infer_failed=30),
        ],
    )
    verdict = await controller.step(model)
    await controller.close()
    assert verdict.action == "rollback", verdict.reasons  # judged on the honest summaries alone
    assert controller.skipped[SUMMARIES_TOPIC] >= 2 * len(_poisoned(model, 1))


async def test_each_step_reads_only_what_was_written_since_the_last_and_judges_it_all(
    edge_region: EdgeRegion, tmp_path: Path
) -> None:
    """The controller keeps its consumers between steps: the second step reads the two summaries
    committed since the first, and judges them together with the first step's (neither half alone is
    enough requests to judge the canary)."""
    model = f"rollout-tail-{uuid.uuid4().hex[:8]}"
    await _canary(edge_region, tmp_path, model)
    async with Controller(
        edge_region.bootstrap, BOUNDS, signer=KEY, trusted=TRUSTED, labels=False
    ) as controller:
        await _commit(
            edge_region,
            [
                _summary(edge_region.name, model, 1, results=200),
                _summary(edge_region.name, model, 2, results=20, infer_failed=10),
            ],
        )
        first = await controller.step(model)
        assert first.action == "hold", first.reasons
        assert controller.records_read["summaries"] >= 2
        await _commit(
            edge_region,
            [
                _summary(edge_region.name, model, 1, results=200),
                _summary(edge_region.name, model, 2, results=20, infer_failed=15),
            ],
        )
        second = await controller.step(model)
        assert controller.records_read == {"summaries": 2}
        assert second.action == "rollback", second.reasons
        assert "error rate" in second.reason

        # No canary: the step reads nothing (and lets its consumers go).
        idle = await controller.step(model)
        assert (idle.action, controller.records_read) == ("hold", {})
        # A new canary is judged on its own span: the first canary's stable summaries do not count.
        state = (await RegistryClient(edge_region.bootstrap).read_states())[model]
        state = publish(state, _signed(edge_region, tmp_path, KEY, model, 3), now_ms=_now_ms())
        await RegistryClient(edge_region.bootstrap, signer=KEY).publish_state(
            start_canary(state, 3, now_ms=_now_ms())
        )
        await _commit(
            edge_region,
            [
                _summary(edge_region.name, model, 1, results=30),
                _summary(edge_region.name, model, 3, results=20),
            ],
        )
        third = await controller.step(model)
        assert third.action == "hold", third.reasons
        assert "v1 has 30 of 50 requests" in third.reasons, third.reasons
