"""A worker following the registry: model versions swapped under traffic, devices routed by their
keyed hash, and versions whose artifact or signature is wrong refused while the old ones keep serving;
rollout states replayed, unsigned or signed by a key it does not pin refused the same way."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from edgestream.pipeline.contract.codec import encode_tensor
from edgestream.pipeline.contract.envelope import new_request_id, seal
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.models import ModelStore, load_dataset, spec
from edgestream.pipeline.registry import (
    LocalArtifactStore,
    Manifest,
    ModelState,
    SignedManifest,
    SigningKey,
    TrustedKeys,
    advance,
    allow_pin,
    choose_version,
    disallow_pin,
    publish,
    rollback,
    start_canary,
)
from edgestream.pipeline.registry.client import RegistryClient
from edgestream.pipeline.registry.errors import RegistryNotReady
from edgestream.pipeline.registry.reports import TopicWorkerView
from edgestream.pipeline.registry.signed_state import sign_state
from edgestream.pipeline.security.derive import routing_key
from edgestream.pipeline.serving.served import load_models
from edgestream.topics.catalogue import MODELS_TOPIC, dlq_topic, ingest_topic, results_topic
from edgestream.workers.edge.worker import EdgeWorker
from edgestream.workers.rollout_controller import FileWorkerView

from ..conftest import EdgeRegion, RunningWorker, eventually, read_topic

pytestmark = pytest.mark.broker

MODEL = "embedding-scorer"
DEVICES = [f"swap-{i}" for i in range(30)]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Registry:
    """A registry home (artifact store, signing key, trusted keys) and the model's state on Kafka."""

    def __init__(self, root: Path, region: EdgeRegion, state: ModelState) -> None:
        self.root = root
        self.store = LocalArtifactStore(root / "artifacts")
        self.key = SigningKey.generate()
        TrustedKeys({}).with_key(self.key.public_raw).save(root / "trusted-keys.json")
        self.client = RegistryClient(region.bootstrap, signer=self.key)
        self.models = ModelStore(region.home / "models")
        self.state = state

    def signed(self, size: str, *, key: SigningKey | None = None) -> SignedManifest:
        artifact = self.models.get(MODEL, size)
        sha256 = self.store.put(artifact.path.read_bytes())
        manifest = Manifest(
            model=MODEL,
            version=self.state.latest + 1,
            variant=size,
            sha256=sha256,
            size_bytes=artifact.path.stat().st_size,
            input_dtype=artifact.spec.input_dtype,
            input_shape=artifact.spec.input_shape,
            metrics={"accuracy": artifact.accuracy},
            lineage={"test": "hot swap"},
            created_at_ms=_now_ms(),
        )
        return (key or self.key).sign(manifest)

    async def put(self, state: ModelState) -> ModelState:
        await self.client.publish_state(state)
        self.state = state
        return state


async def _send(
    region: EdgeRegion,
    producer: AIOKafkaProducer,
    rounds: int,
    *,
    devices: Sequence[str] = DEVICES,
    pin: int | None = None,
) -> dict[bytes, str]:
    """One embedding per device per round, pinned to version ``pin`` if given; request id -> device."""
    data = load_dataset("embedding")
    sent: dict[bytes, str] = {}
    for r in range(rounds):
        for i, device in enumerate(devices):
            rid = new_request_id()
            body = encode_tensor(
                data.X_test[(r * len(devices) + i) % len(data.X_test)], spec(MODEL).input_dtype
            )
            kid = region.keyring.current_key_id(region.name)
            envelope = seal(
                body,
                device_key=region.keyring.device_key(region.name, device, kid),
                device_id=device,
                key_id=kid,
                kind="embedding",
                model=MODEL,
                model_version=pin,
                capture_time_ms=_now_ms(),
                request_id=rid,
            )
            await producer.send(ingest_topic(region.name, "embedding"), envelope, key=device.encode())
            sent[rid] = device
    await producer.flush()
    return sent


async def _reported(
    files: FileWorkerView, topic: TopicWorkerView, worker: EdgeWorker, revision: int, timeout_s: float = 15
) -> bool:
    """Both views say the worker applied ``revision`` (bounded poll)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reports = await topic.reports()
        mine = reports.get(worker.node_id)
        on_topic = mine is not None and mine.revisions.get(MODEL) == revision
        if on_topic and await files.revisions(MODEL) == [revision]:
            assert await topic.revisions(MODEL) == [revision], "this region has one live worker"
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)


async def _applied(worker: EdgeWorker, state: ModelState) -> bool:
    return await eventually(lambda: worker.catalog.revision(MODEL) == state.revision, timeout_s=30)


async def test_versions_swap_under_traffic_each_device_on_its_routed_version(
    edge_region: EdgeRegion, running_worker: RunningWorker, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    current = (await RegistryClient(edge_region.bootstrap).read_states()).get(MODEL, ModelState(MODEL))
    registry = Registry(tmp_path / "registry", edge_region, current)
    if current.canary is not None:  # the registry is shared by the session: start from no canary
        current = await registry.put(rollback(current, now_ms=_now_ms(), reason="test setup"))
    first = await registry.put(publish(current, registry.signed("tiny"), now_ms=_now_ms()))
    if first.stable != first.latest:  # another test's version is stable (signed by a key not trusted here)
        first = start_canary(first, first.latest, now_ms=_now_ms(), stages=(0.5, 1.0), reason="test setup")
        while first.canary is not None:
            first = advance(first, now_ms=_now_ms())
        first = await registry.put(first)
    stats_dir = tmp_path / "stats"
    worker = await running_worker(
        registry=True, registry_home=registry.root, stats_file=stats_dir / "w.json", stats_interval_s=0.5
    )
    assert await _applied(worker, first), worker.catalog.refused
    # The rollout controller's view of the workers: the running worker reports the revision it applied,
    # in its stats file (one host) and on control.workers (any host).
    view = FileWorkerView(stats_dir)
    topic_view = TopicWorkerView(edge_region.bootstrap, regions=frozenset({edge_region.name}))
    assert await _reported(view, topic_view, worker, first.revision)
    master = edge_region.keyring.keys(edge_region.name)[edge_region.keyring.current_key_id(edge_region.name)]
    assert master.master is not None
    device_routing_key = routing_key(master.master)
    v1 = first.stable
    assert v1 is not None

    sent = await _send(edge_region, producer, 2)
    expected: dict[bytes, set[int]] = {
        rid: {choose_version(first, d, device_routing_key)} for rid, d in sent.items()
    }
    assert {v for vs in expected.values() for v in vs} == {v1}

    # A canary at 50%, published while traffic flows: during the swap a device is answered by the version
    # of the old state or the new one, never another, and every request exactly once.
    published = registry.state.latest + 1
    candidate = publish(registry.state, registry.signed("medium"), now_ms=_now_ms())
    canary = start_canary(candidate, published, now_ms=_now_ms(), stages=(0.5, 1.0))
    sending = asyncio.create_task(_send(edge_region, producer, 4))
    await asyncio.sleep(0.2)  # let the stream start before the swap (pacing, not readiness)
    await registry.put(candidate)
    await registry.put(canary)
    during = await sending
    assert await _applied(worker, canary), worker.catalog.refused
    assert await _reported(view, topic_view, worker, canary.revision)
    await topic_view.close()
    for rid, device in during.items():
        expected[rid] = {
            choose_version(first, device, device_routing_key),
            choose_version(canary, device, device_routing_key),
        }
    after = await _send(edge_region, producer, 2)
    for rid, device in after.items():
        expected[rid] = {choose_version(canary, device, device_routing_key)}
    routed = Counter(choose_version(canary, d, device_routing_key) for d in DEVICES)
    assert set(routed) == {v1, published}, f"a 50% canary splits 30 devices: {routed}"

    # A tampered artifact (one byte changed in the store) and a manifest signed by an unknown key are
    # refused; the worker keeps serving what it served.
    stable = await registry.put(advance(registry.state, now_ms=_now_ms()))
    assert await _applied(worker, stable)
    tampered_version = stable.latest + 1
    tampered = publish(stable, registry.signed("full"), now_ms=_now_ms())
    blob = registry.store.path(tampered.manifest(tampered_version).manifest.sha256)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    await registry.put(start_canary(tampered, tampered_version, now_ms=_now_ms(), fraction=0.5))
    assert await eventually(lambda: worker.catalog.refused.get("artifact_mismatch") == 1, timeout_s=30)
    assert worker.catalog.revision(MODEL) == stable.revision, "the refused state is not applied"
    rolled = await registry.put(rollback(registry.state, now_ms=_now_ms(), reason="tampered artifact"))
    assert await _applied(worker, rolled)
    # Other tests' states of other models may have been refused as untrusted at start: count from here.
    untrusted_before = worker.catalog.refused.get("untrusted_signer", 0)
    stranger = SigningKey.generate()
    foreign_version = rolled.latest + 1
    foreign = publish(rolled, registry.signed("tiny", key=stranger), now_ms=_now_ms())
    await registry.put(start_canary(foreign, foreign_version, now_ms=_now_ms(), fraction=0.5))
    assert await eventually(
        lambda: worker.catalog.refused.get("untrusted_signer", 0) == untrusted_before + 1, timeout_s=30
    )
    assert worker.catalog.revision(MODEL) == rolled.revision
    last = await _send(edge_region, producer, 1)
    for rid in last:
        expected[rid] = {published}  # the stable version; the refused ones never answer

    results = await read_topic(edge_region.bootstrap, results_topic(edge_region.name), expect=len(expected))
    answers: dict[bytes, list[int]] = {}
    for record in results:
        result = ResultRecord.from_bytes(record.value)
        answers.setdefault(result.request_id, []).append(result.model_version)
    assert set(answers) == set(expected), f"answered {len(answers)} of {len(expected)}"
    assert all(len(v) == 1 for v in answers.values()), "nothing answered twice"
    wrong: dict[Any, Any] = {
        rid: (v, expected[rid]) for rid, (v,) in answers.items() if v not in expected[rid]
    }
    assert wrong == {}, f"answered by a version its device was not routed to: {list(wrong.items())[:5]}"
    assert worker.catalog.served_versions()[MODEL] == (published,)
    await registry.put(rollback(registry.state, now_ms=_now_ms(), reason="test done"))  # leave no canary


def _refused_once_more(worker: EdgeWorker, reason: str, before: int) -> bool:
    return worker.catalog.refused.get(reason, 0) == before + 1


async def _stable_state(registry: Registry) -> ModelState:
    """The registry's state of MODEL with a version of this test's key stable and no canary."""
    current = registry.state
    if current.canary is not None:
        current = await registry.put(rollback(current, now_ms=_now_ms(), reason="test setup"))
    state = await registry.put(publish(current, registry.signed("tiny"), now_ms=_now_ms()))
    if state.stable != state.latest:
        state = start_canary(state, state.latest, now_ms=_now_ms(), stages=(0.5, 1.0), reason="test setup")
        while state.canary is not None:
            state = advance(state, now_ms=_now_ms())
        state = await registry.put(state)
    return state


async def test_replayed_unsigned_and_unpinned_states_are_refused_and_the_worker_keeps_serving(
    edge_region: EdgeRegion, running_worker: RunningWorker, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    current = (await RegistryClient(edge_region.bootstrap).read_states()).get(MODEL, ModelState(MODEL))
    registry = Registry(tmp_path / "registry", edge_region, current)
    first = await _stable_state(registry)
    worker = await running_worker(registry=True, registry_home=registry.root)
    assert await _applied(worker, first), worker.catalog.refused
    assert first.stable is not None
    second = await registry.put(allow_pin(first, first.stable, now_ms=_now_ms(), reason="test"))
    assert await _applied(worker, second), worker.catalog.refused
    served = worker.catalog.served_versions()
    newer = disallow_pin(second, first.stable, now_ms=_now_ms(), reason="forged")

    def refused(reason: str) -> float:
        labels = {"region": edge_region.name, "node": worker.node_id, "reason": reason}
        return worker.metrics.registry.get_sample_value("edgestream_registry_refused_total", labels) or 0.0

    attempts = [
        ("stale_revision", sign_state(registry.key, first).to_bytes()),  # an older signed state, replayed
        ("unsigned_state", newer.to_bytes()),  # the unsigned format: anyone with WRITE could forge it
        ("untrusted_signer", sign_state(SigningKey.generate(), newer).to_bytes()),  # a key not pinned
    ]
    for reason, value in attempts:
        before = worker.catalog.refused.get(reason, 0)
        await producer.send_and_wait(MODELS_TOPIC, value, key=MODEL.encode())
        counted = functools.partial(_refused_once_more, worker, reason, before)
        assert await eventually(counted, timeout_s=30), (reason, worker.catalog.refused)
        assert refused(reason) >= 1, f"{reason} is counted in the metric"
        assert worker.catalog.revision(MODEL) == second.revision, (
            f"{reason}: the refused state is not applied"
        )
        assert worker.catalog.served_versions() == served

    # The worker still follows the registry: the publisher's next signed state is applied.
    third = await registry.put(disallow_pin(second, first.stable, now_ms=_now_ms(), reason="test done"))
    assert await _applied(worker, third), worker.catalog.refused


async def test_a_worker_applies_the_registry_before_it_fetches_its_backlog(
    edge_region: EdgeRegion, running_worker: RunningWorker, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    """Requests waiting when a worker starts (a restart, a scale-out) that pin a version only the
    registry's state serves are answered by it, not dead-lettered as unknown: the worker reads
    ``control.models`` to its end and applies the states before it joins its group; then it follows
    from there, so the records it applied at start are not seen (nor refused as stale) again."""
    current = (await RegistryClient(edge_region.bootstrap).read_states()).get(MODEL, ModelState(MODEL))
    registry = Registry(tmp_path / "registry", edge_region, current)
    stable = await _stable_state(registry)
    pinned = stable.latest + 1
    candidate = await registry.put(publish(stable, registry.signed("medium"), now_ms=_now_ms()))
    pinnable = await registry.put(allow_pin(candidate, pinned, now_ms=_now_ms(), reason="test"))
    built_in = ModelStore(edge_region.home / "models").get(MODEL, "medium").version
    assert pinned != built_in, "only the registry's state makes the pinned version served"

    backlog = await _send(edge_region, producer, 1, devices=DEVICES[:5], pin=pinned)
    backlog |= await _send(edge_region, producer, 1, devices=DEVICES[5:10])
    worker = await running_worker(registry=True, registry_home=registry.root)
    # Applied by the time start() returns: before the worker joined its group or fetched anything.
    assert worker.catalog.revision(MODEL) == pinnable.revision, worker.catalog.refused
    assert worker.readiness.models_loaded

    results = await read_topic(edge_region.bootstrap, results_topic(edge_region.name), expect=len(backlog))
    answered = [ResultRecord.from_bytes(record.value) for record in results]
    answers = {result.request_id: result.model_version for result in answered}
    dead = await read_topic(edge_region.bootstrap, dlq_topic(edge_region.name), expect=0)
    assert dead == [], f"{len(dead)} valid requests dead-lettered"
    assert set(answers) == set(backlog), f"answered {len(answers)} of {len(backlog)}"
    pins = {answers[rid] for rid, device in backlog.items() if device in DEVICES[:5]}
    assert pins == {pinned}, "each pinned request is answered by the version it pins"

    # It follows on from where it caught up: the next state applies, and nothing read at start is
    # read again and refused as a stale revision.
    unpinned = await registry.put(disallow_pin(pinnable, pinned, now_ms=_now_ms(), reason="test done"))
    assert await _applied(worker, unpinned), worker.catalog.refused
    assert worker.catalog.refused.get("stale_revision", 0) == 0, worker.catalog.refused


async def test_a_worker_that_cannot_read_the_registry_does_not_start(
    edge_region: EdgeRegion, tmp_path: Path
) -> None:
    """Brokers unreachable within ``registry_start_timeout_s``: the worker stops before it joins its
    group, not ready and with no ready file, rather than serve built-ins the registry may have moved
    away from."""
    home = tmp_path / "registry"
    home.mkdir()
    TrustedKeys({}).with_key(SigningKey.generate().public_raw).save(home / "trusted-keys.json")
    ready = tmp_path / "ready.json"
    unreachable = edge_region.worker_kafka.model_copy(update={"bootstrap_servers": "127.0.0.1:1"})
    settings = edge_region.settings(
        kafka=unreachable,
        registry=True,
        registry_home=home,
        registry_start_timeout_s=2.0,
        ready_file=ready,
    )
    worker = EdgeWorker(settings, keyring=edge_region.keyring, models=load_models(settings))
    try:
        with pytest.raises(RegistryNotReady, match="registry_start_timeout_s"):
            await worker.start()
        assert worker.readiness.ready() == (False, "models not loaded")
        assert not ready.exists()
    finally:
        await worker.stop()
