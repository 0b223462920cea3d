"""Fixtures for worker tests: models built once per session, a region with its own topics per test."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from edgestream.pipeline import kafka
from edgestream.pipeline.contract.codec import encode_tensor
from edgestream.pipeline.contract.envelope import seal
from edgestream.pipeline.models import ModelStore, load_dataset, spec
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.security.keysource import KeyFileWatcher
from edgestream.pipeline.serving.served import load_models
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.acl_admin import apply_policy
from edgestream.topics.admin import alter_topic_config, ensure_topics
from edgestream.topics.catalogue import all_topics, parse_topic
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.edge.worker import EdgeWorker
from edgestream.workers.local.broker.state import BrokerState


@pytest.fixture(scope="session")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose model cache is built once for the whole session."""
    home = tmp_path_factory.mktemp("edge-home")
    store = ModelStore(home / "models")
    for name in ("embedding-scorer", "frame-classifier"):
        for size in ("tiny", "medium"):
            store.get(name, size)
    return home


EMBEDDING_MODEL = "embedding-scorer"


@dataclass
class EdgeRegion:
    """A fresh region: its own topics on the real broker and its own key file."""

    name: str
    bootstrap: KafkaSettings
    """How the test itself connects (``admin``)."""
    home: Path
    keyring: KeyRing
    worker_kafka: KafkaSettings
    """How the region's workers connect: as ``edge-<region>``, within that principal's ACLs."""

    def settings(self, **overrides: Any) -> WorkerSettings:
        values: dict[str, Any] = {
            "region": self.name,
            "home": self.home,
            "kafka": self.worker_kafka,
            "key_file": self.home / f"keys-{self.name}.json",
            "max_wait_ms": 2.0,
            "node_id": f"test-{self.name}",
        }
        values.update(overrides)
        return WorkerSettings(**values)

    def embedding(self, device_id: str, *, row: int = 0, request_id: bytes | None = None) -> bytes:
        """A good embedding envelope of ``device_id`` (test row ``row``), sealed now with the region's
        current key."""
        key_id = self.keyring.current_key_id(self.name)
        return seal(
            encode_tensor(load_dataset("embedding").X_test[row], spec(EMBEDDING_MODEL).input_dtype),
            device_key=self.keyring.device_key(self.name, device_id, key_id),
            device_id=device_id,
            key_id=key_id,
            kind="embedding",
            model=EMBEDDING_MODEL,
            capture_time_ms=int(time.time() * 1000),
            request_id=request_id,
        )


@pytest.fixture
async def edge_region(bootstrap: KafkaSettings, kafka_broker: BrokerState, model_home: Path) -> EdgeRegion:
    """A region of its own; on the TLS broker its workers' and devices' ACLs are granted as in
    production, so every worker test also proves the policy lets a worker do its job."""
    name = f"t{uuid.uuid4().hex[:10]}"
    await ensure_topics(bootstrap, all_topics([name]))  # the shared cloud topics too: workers send there
    key_file = model_home / f"keys-{name}.json"
    keyring = keyfile.create(key_file, [name])
    worker_kafka = bootstrap
    if kafka_broker.security_protocol == "SSL":
        await apply_policy(bootstrap, [name])
        worker_kafka = kafka_broker.kafka(Identity.edge(name))
    return EdgeRegion(name, bootstrap, model_home, keyring, worker_kafka)


RunningWorker = Callable[..., Awaitable[EdgeWorker]]


@pytest.fixture
async def running_worker(edge_region: EdgeRegion) -> AsyncIterator[RunningWorker]:
    """Start workers in this process; each is stopped (SIGTERM path) when the test ends."""
    started: list[tuple[EdgeWorker, asyncio.Event, asyncio.Task[None]]] = []

    async def start(keyring: KeyRing | KeyFileWatcher | None = None, **overrides: Any) -> EdgeWorker:
        settings = edge_region.settings(**overrides)
        keys = edge_region.keyring if keyring is None else keyring
        worker = EdgeWorker(settings, keyring=keys, models=load_models(settings))
        await worker.start()
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        started.append((worker, stop, task))
        return worker

    yield start
    for worker, stop, task in started:
        stop.set()
        try:
            await task
        finally:
            await worker.stop()


@pytest.fixture
async def producer(bootstrap: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    async with kafka.started(kafka.producer(bootstrap, "test-devices")) as p:
        yield p


async def read_topic(
    bootstrap: KafkaSettings, topic: str, *, expect: int, timeout_s: float = 30.0, settle_s: float = 0.5
) -> list[Any]:
    """Read a topic from the beginning (read_committed) until ``expect`` records, then ``settle_s`` more
    to catch extras (duplicates), or until ``timeout_s``."""
    async with kafka.started(kafka.consumer(bootstrap, "test-reader")) as consumer:
        tps = kafka.partitions([(topic, parse_topic(topic).spec.partitions)])
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        settle_until: float | None = None
        while loop.time() < deadline:
            if len(out) >= expect:
                settle_until = settle_until or loop.time() + settle_s
                if loop.time() >= settle_until:
                    break
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                out.extend(records)
        return out


async def eventually(predicate: Callable[[], bool], *, timeout_s: float, step_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes; returns its last value.

    For state another task changes without signalling (a worker's counters); bounded, not a sleep
    standing in for readiness.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for _ in range(int(timeout_s / step_s) + 1):
        if predicate() or loop.time() >= deadline:
            break
        await asyncio.sleep(step_s)
    return predicate()


async def set_topic_config(bootstrap: KafkaSettings, topic: str, name: str, value: str) -> None:
    """Set one config of ``topic`` and wait until the broker applies it (`alter_topic_config`)."""
    await alter_topic_config(bootstrap, topic, name, value)
