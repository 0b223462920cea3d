"""Where a fault scenario runs: the broker and home it shares, a fresh region of its own, and the
workers' limits the corpus is built against."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import TopicPartition

from bench.faults.corpus import Corpus
from edgestream.pipeline.models import ModelStore
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.acl_admin import apply_policy
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import all_topics, edge_group, region_topics
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND

MAX_ENVELOPE_BYTES = 64 * 1024
"""Every worker here refuses records above this (so oversized records stay small)."""
MAX_BODY_BYTES = 4 << 20
"""The worker's default cap on a decompressed body (zstd bombs go past it)."""
MAX_AGE_MS = 60_000
"""The worker's default staleness limit."""


class FaultTimeout(AssertionError):
    """A condition a scenario waits for did not come true in time."""


async def wait_for(
    what: str, condition: Callable[[], Awaitable[bool] | bool], timeout_s: float, interval_s: float = 0.1
) -> float:
    """Poll ``condition`` until true; returns the seconds waited, raises FaultTimeout at the deadline."""
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        outcome = condition()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise FaultTimeout(f"{what}: still not true after {timeout_s:.0f} s")
        await asyncio.sleep(interval_s)


# -- a region of its own --------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultEnv:
    """Where a scenario runs: a broker, a home with the models built, a folder for logs."""

    bootstrap: KafkaSettings
    """The broker most scenarios share (the broker restart starts its own)."""
    home: Path
    """Models (``<home>/models``) built by ``prepare_home``; key files go here too."""
    run_dir: Path
    """Worker logs, ready and stats files, the restart scenario's broker."""
    served_versions: Mapping[str, int]
    """Model name -> the version the workers serve."""
    tls_root: Path | None = None
    """The PKI the broker trusts (TLS brokers): the workers' ``edge-<region>`` certificates come from it."""
    seed: int = 1
    """Seeds kill timings and the corpus; reported with every scenario."""
    on_event: Callable[[str], None] = field(default=lambda _msg: None)
    """Progress messages (the bench shows them)."""


def prepare_home(home: Path) -> dict[str, int]:
    """Build (or reuse) the medium models the workers serve; returns model name -> version."""
    store = ModelStore(home / "models")
    return {name: store.get(name, "medium").version for name in MODEL_FOR_KIND.values()}


@dataclass(frozen=True)
class FaultRegion:
    """A fresh region on one broker: its own topics, group and key file (two key ids: rotation)."""

    name: str
    bootstrap: KafkaSettings
    """How the scenario's own clients connect (``admin``)."""
    key_file: Path
    keyring: KeyRing
    worker_kafka: KafkaSettings
    """How the region's workers connect: as ``edge-<region>``, within its ACLs, on a TLS broker."""

    @property
    def group(self) -> str:
        return edge_group(self.name)

    @property
    def ingest(self) -> list[TopicPartition]:
        """Every ingest partition of the region."""
        return [
            TopicPartition(t.name, p)
            for t in region_topics(self.name)
            if t.kind is not None
            for p in range(t.spec.partitions)
        ]


async def make_region(
    env: FaultEnv, bootstrap: KafkaSettings | None = None, prefix: str = "f", tls_root: Path | None = None
) -> FaultRegion:
    """A region named ``<prefix><random>`` with its topics created on ``bootstrap`` (default: env's);
    on a TLS broker its ACLs are granted and its workers get ``edge-<region>`` certificates from
    ``tls_root`` (default: env's)."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    target = bootstrap or env.bootstrap
    await ensure_topics(target, all_topics([name]))  # the shared cloud topics too: workers send there
    admin = target
    worker_kafka = admin
    if admin.security_protocol == "SSL":
        root = tls_root or env.tls_root
        if root is None:
            raise ValueError("a TLS broker needs the PKI its CA lives in (tls_root)")
        await apply_policy(admin, [name])
        identity = Identity.edge(name)
        files = Pki(root).ensure([identity])[identity]
        worker_kafka = KafkaSettings.tls(admin.bootstrap_servers, files)
    key_file = env.home / f"keys-{name}.json"
    document = {
        "regions": {name: {"1": os.urandom(32).hex(), "2": os.urandom(32).hex()}},
        "current": {name: 1},
    }
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(document, out)
    return FaultRegion(name, target, key_file, keyfile.load(key_file), worker_kafka)


def make_corpus(env: FaultEnv, region: FaultRegion, *, devices: int = 400) -> Corpus:
    """The region's corpus, with the workers' limits."""
    return Corpus(
        region.name,
        region.keyring,
        served_versions=env.served_versions,
        seed=env.seed,
        devices=devices,
        max_envelope_bytes=MAX_ENVELOPE_BYTES,
        max_body_bytes=MAX_BODY_BYTES,
        max_age_ms=MAX_AGE_MS,
    )
