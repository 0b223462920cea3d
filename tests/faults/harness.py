"""Fault-injection harness: edge workers as real processes, steady traffic, and the exactly-once checker.

A scenario makes a fresh region (its own topics and key file) on a broker, starts ``python -m edgestream
worker`` processes for it, produces traffic while it injects one kind of fault, waits until the region's
group has committed past everything on the ingest topics, stops the workers (SIGTERM), and checks the
read_committed view of the region's topics against what was sent (``check``).

The invariant, per input (one record on an ingest topic): exactly one result or exactly one dead letter,
never both, never neither; the dead letter's reason is the one the input was built to get and its origin
headers point at the input; each result has exactly one ``ok`` audit record with the same request id and
model version (and each dead letter whose envelope decodes, one ``dead_letter`` audit record).
The scenarios themselves (``kill9``, ``zombie``, ``rebalance``, ``broker_restart``, ``hostile``) are
shared by the CI tests (``test_faults.py``) and the longer runs of ``python -m bench.faults``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from edgestream.pipeline.contract.cloud import PartialSummary
from edgestream.pipeline.contract.deadletter import DeadLetter, MalformedDeadLetter
from edgestream.pipeline.contract.envelope import AuditRecord, ResultRecord, decode_envelope
from edgestream.pipeline.errors import ContractError
from edgestream.pipeline.models import ModelStore
from edgestream.pipeline.security.keyfile import KeyRing
from edgestream.pipeline.security.pki import Identity, Pki
from edgestream.pipeline.settings import Kafka, KafkaSettings, kafka_settings
from edgestream.topics.acls import apply_policy
from edgestream.topics.admin import consumer_lag, ensure_topics
from edgestream.topics.catalogue import (
    KINDS,
    SUMMARIES_TOPIC,
    all_topics,
    audit_topic,
    dlq_topic,
    edge_group,
    ingest_topic,
    parse_topic,
    region_topics,
    results_topic,
)
from edgestream.workers.local.broker.config import free_port
from edgestream.workers.local.broker.process import LocalBroker
from edgestream.workers.local.broker.settings import BrokerSettings
from edgestream.workers.local.fleet import MODEL_FOR_KIND

from .corpus import OK, Corpus, CorpusRecord

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout: worker processes run from here."""
MAX_ENVELOPE_BYTES = 64 * 1024
"""Every worker here refuses records above this (so oversized records stay small)."""
MAX_BODY_BYTES = 4 << 20
"""The worker's default cap on a decompressed body (zstd bombs go past it)."""
MAX_AGE_MS = 60_000
"""The worker's default staleness limit."""
BASE_WORKER_SETTINGS: Mapping[str, object] = {
    "MODEL_SIZE": "medium",
    "MAX_BATCH": 32,
    "MAX_WAIT_MS": 4,
    "MAX_ENVELOPE_BYTES": MAX_ENVELOPE_BYTES,
    "MAX_BODY_BYTES": MAX_BODY_BYTES,
    "MAX_AGE_MS": MAX_AGE_MS,
    # The rate limit is per device; these scenarios are not about it.
    "DEVICE_RATE_PER_S": 100_000,
    "DEVICE_BURST": 100_000,
}
"""``EDGESTREAM_WORKER_*`` settings every worker in these scenarios gets (a scenario may add more)."""
READY_TIMEOUT_S = 90.0
"""A worker loads models and joins its group within this; after a kill -9 the join waits for the dead
member's session (10 s) to expire."""
DRAIN_TIMEOUT_S = 120.0
"""After traffic stops, how long the group may take to commit past everything produced."""
SETTLE_TIMEOUT_S = 90.0
"""How long open transactions may keep output partitions unsettled (transaction timeout: 60 s)."""
_ASSIGNED_RE = re.compile(r"assigned \[(.*)\]\s*$")
_ERROR_LINE_RE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Fenced): ")
_CLIENT_NOISE = ("aiokafka.", "asyncio.", "KeyError")


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

    bootstrap: Kafka
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
    bootstrap: Kafka
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
    env: FaultEnv, bootstrap: Kafka | None = None, prefix: str = "f", tls_root: Path | None = None
) -> FaultRegion:
    """A region named ``<prefix><random>`` with its topics created on ``bootstrap`` (default: env's);
    on a TLS broker its ACLs are granted and its workers get ``edge-<region>`` certificates from
    ``tls_root`` (default: env's)."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    target = bootstrap or env.bootstrap
    await ensure_topics(target, all_topics([name]))  # the shared cloud topics too: workers send there
    admin = kafka_settings(target)
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
    return FaultRegion(name, target, key_file, KeyRing.load(key_file), worker_kafka)


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


# -- worker processes -----------------------------------------------------------------------------


class WorkerDied(AssertionError):
    """A worker process exited when it was expected to run."""


class WorkerProcess:
    """``python -m edgestream worker`` for a region, restartable; each start is a new incarnation with
    its own node id (``<name>.<n>``), log, ready and stats files."""

    def __init__(self, name: str, region: FaultRegion, env: FaultEnv, settings: Mapping[str, object]) -> None:
        self.name = name
        self.region = region
        self.settings = {**BASE_WORKER_SETTINGS, **settings}
        self.run_dir = env.run_dir / region.name
        self.home = env.home
        self.incarnation = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.exits: list[int] = []
        """Exit codes of earlier incarnations, in order."""
        self.supervised = True
        """Restart it if it exits on its own (``Workers.supervise``)."""
        self.stopping = False
        self.started_s = 0.0
        """Monotonic time of the latest start."""
        self.quick_exits = 0
        """Consecutive exits within ``READY_TIMEOUT_S`` of a start (the restart backoff grows with it)."""

    @property
    def node_id(self) -> str:
        return f"{self.name}.{self.incarnation}"

    def _path(self, suffix: str, incarnation: int | None = None) -> Path:
        return self.run_dir / f"{self.name}.{incarnation or self.incarnation}.{suffix}"

    @property
    def log_path(self) -> Path:
        return self._path("log")

    @property
    def ready_path(self) -> Path:
        return self._path("ready")

    @property
    def stats_path(self) -> Path:
        return self._path("stats.json")

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> None:
        """Start the next incarnation (the previous one must have exited)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"worker {self.node_id} is still running")
        self.incarnation += 1
        self.stopping = False
        self.started_s = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.ready_path, self.stats_path):
            path.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESTREAM_WORKER_")}
        own = {
            "REGION": self.region.name,
            "NODE_ID": self.node_id,
            "HOME": str(self.home),
            "KEY_FILE": str(self.region.key_file),
            **self.region.worker_kafka.to_env("KAFKA__"),
            "READY_FILE": str(self.ready_path),
            "STATS_FILE": str(self.stats_path),
            **self.settings,
        }
        env.update({f"EDGESTREAM_WORKER_{k}": str(v) for k, v in own.items()})
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgestream", "worker"],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        log.info("started worker %s (pid %d)", self.node_id, self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_text(self, incarnation: int | None = None) -> str:
        try:
            return self._path("log", incarnation).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    async def ready(self, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Wait for the ready file (models loaded, first assignment made); returns its content."""

        def check() -> bool:
            if self.ready_path.exists():
                return True
            if not self.alive():
                raise WorkerDied(f"worker {self.node_id} exited with {self.returncode()}:\n{self.tail()}")
            return False

        await wait_for(f"worker {self.node_id} ready", check, timeout_s)
        ready: dict[str, Any] = json.loads(self.ready_path.read_text())
        return ready

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is None:
            raise RuntimeError(f"worker {self.name} was never started")
        log.info("sending %s to worker %s (pid %d)", sig.name, self.node_id, self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    async def wait_exit(self, timeout_s: float) -> int | None:
        """The exit code, or None if it still runs after ``timeout_s``."""
        with contextlib.suppress(FaultTimeout):
            await wait_for(f"worker {self.node_id} exits", lambda: not self.alive(), timeout_s, 0.05)
        code = self.returncode()
        if code is not None and len(self.exits) < self.incarnation:
            self.exits.append(code)
        return code

    async def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (the graceful path: finish the open unit, leave the group) and wait; SIGKILL after
        ``timeout_s`` and raise."""
        self.stopping = True
        if self.alive():
            self.signal(signal.SIGTERM)
        code = await self.wait_exit(timeout_s)
        if code is None:
            self.kill()
            raise WorkerDied(f"worker {self.node_id} ignored SIGTERM for {timeout_s:.0f} s:\n{self.tail()}")
        return code

    async def kill9(self) -> int | None:
        """``kill -9`` (not restarted by the supervisor: the scenario restarts it); its exit code."""
        self.stopping = True
        self.signal(signal.SIGKILL)
        return await self.wait_exit(10)

    def kill(self) -> None:
        """SIGCONT then SIGKILL, and reap: cleanup, whatever state it is in."""
        self.stopping = True
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        code = self.proc.wait(timeout=30)
        if len(self.exits) < self.incarnation:
            self.exits.append(code)

    def assigned(self) -> set[str] | None:
        """The partitions of its latest assignment (from its log), None before the first."""
        latest: str | None = None
        for line in self.log_text().splitlines():
            match = _ASSIGNED_RE.search(line)
            if match is not None:
                latest = match.group(1)
        if latest is None:
            return None
        return set(re.findall(r"'([^']+)'", latest))

    def errors(self, incarnation: int | None = None) -> list[str]:
        """The ``module.Error: message`` lines its log ends tracebacks with (aiokafka's noise left out)."""
        lines = self.log_text(incarnation).splitlines()
        found = [
            line[:300] for line in lines if _ERROR_LINE_RE.match(line) and not line.startswith(_CLIENT_NOISE)
        ]
        if not found and lines and self.returncode() not in (None, 0):
            found.append(f"(last line) {lines[-1][:280]}")
        return found

    def stats(self, incarnation: int | None = None) -> dict[str, Any] | None:
        """The stats file the incarnation wrote at exit (None if it was killed)."""
        try:
            stats: dict[str, Any] = json.loads(self._path("stats.json", incarnation).read_text())
        except FileNotFoundError:
            return None
        return stats


def partition_names(region: FaultRegion) -> set[str]:
    """How a worker's log names every ingest partition of the region."""
    return {f"{tp.topic}[{tp.partition}]" for tp in region.ingest}


class Workers:
    """The worker processes of one scenario: started, supervised, always reaped."""

    def __init__(self, region: FaultRegion, env: FaultEnv) -> None:
        self.region = region
        self.env = env
        self.all: dict[str, WorkerProcess] = {}
        self.restarts = 0
        """Incarnations started after the first, for any reason."""
        self.unexpected_exits: list[str] = []
        """``node: exit code`` of every worker that exited without being told to."""
        self._supervisor: asyncio.Task[None] | None = None

    def start(self, name: str, **settings: object) -> WorkerProcess:
        worker = WorkerProcess(name, self.region, self.env, settings)
        self.all[name] = worker
        worker.start()
        return worker

    def restart(self, worker: WorkerProcess) -> None:
        self.restarts += 1
        worker.start()

    async def __aenter__(self) -> Workers:
        self._supervisor = asyncio.create_task(self._supervise(), name="supervise-workers")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for worker in self.all.values():
            worker.kill()

    async def _supervise(self) -> None:
        """A worker that exits on its own is counted, its last error kept, and started again (after a
        backoff that doubles while it keeps exiting soon after its start, as a process manager does)."""
        restart_at: dict[str, float] = {}
        while True:
            now = time.monotonic()
            for worker in self.all.values():
                if worker.proc is None or worker.stopping or worker.alive():
                    continue
                if worker.name not in restart_at:
                    code = await worker.wait_exit(0)
                    last_error = (worker.errors() or ["no error in its log"])[-1]
                    self.unexpected_exits.append(f"{worker.node_id}: exit {code}: {last_error}")
                    log.warning("worker %s exited on its own (%s): %s", worker.node_id, code, last_error)
                    log.debug("the end of its log:\n%s", worker.tail())
                    self.env.on_event(f"worker {worker.node_id} exited on its own ({code})")
                    if not worker.supervised:
                        worker.stopping = True
                        continue
                    quick = now - worker.started_s < READY_TIMEOUT_S
                    worker.quick_exits = worker.quick_exits + 1 if quick else 0
                    restart_at[worker.name] = now + min(8.0, 0.25 * 2**worker.quick_exits)
                if now >= restart_at[worker.name]:
                    del restart_at[worker.name]
                    self.restart(worker)
            await asyncio.sleep(0.2)

    def count_log_lines(self, text: str) -> int:
        """Lines containing ``text`` in the logs of every incarnation of every worker."""
        return sum(
            line.count(text) > 0
            for w in self.all.values()
            for n in range(1, w.incarnation + 1)
            for line in w.log_text(n).splitlines()
        )

    async def stop_all(self) -> dict[str, int]:
        """SIGTERM every running worker; their exit codes."""
        running = [w for w in self.all.values() if w.alive()]
        codes = await asyncio.gather(*(w.stop() for w in running))
        return {w.node_id: code for w, code in zip(running, codes, strict=True)}


# -- traffic --------------------------------------------------------------------------------------


class Traffic:
    """Produces records from ``source`` at a steady rate until stopped or the source runs dry.

    Every record drawn is kept in ``ledger`` by test id before it is sent; sends whose delivery failed
    are in ``failed`` (the checker reads the ingest topics to learn what was really written).
    """

    def __init__(
        self,
        region: FaultRegion,
        source: Iterator[CorpusRecord],
        *,
        rate_per_s: float,
        ledger: dict[int, CorpusRecord] | None = None,
    ) -> None:
        self.region = region
        self.ledger: dict[int, CorpusRecord] = {} if ledger is None else ledger
        self.failed: set[int] = set()
        self.rate_per_s = rate_per_s
        self.exhausted = asyncio.Event()
        self._source = source
        self._stop = asyncio.Event()
        self._deliveries: list[tuple[int, asyncio.Future[Any]]] = []
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def sent(self) -> int:
        return len(self.ledger)

    async def __aenter__(self) -> Traffic:
        self._producer = AIOKafkaProducer(
            **kafka_settings(self.region.bootstrap).client_kwargs(),
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=4 << 20,
        )
        await self._producer.start()
        self._task = asyncio.create_task(self._run(), name="traffic")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        producer = self._producer
        assert producer is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        n = 0
        while not self._stop.is_set():
            due = started + n / self.rate_per_s
            now = loop.time()
            if due > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), due - now)
                continue
            if now - due > 1.0:  # fell behind (the broker was away): keep the rate, do not burst
                started, n = now, 0
            record = next(self._source, None)
            if record is None:
                self.exhausted.set()
                return
            self.ledger[record.test_id] = record
            try:
                delivery = await producer.send(record.topic(self.region.name), record.value, key=record.key)
            except KafkaError as err:
                log.warning("send of test id %d failed: %r", record.test_id, err)
                self.failed.add(record.test_id)
            else:
                self._deliveries.append((record.test_id, delivery))
            n += 1

    async def stop(self) -> None:
        """Stop drawing, wait for every delivery (failed ones go to ``failed``), stop the producer."""
        if self._task is None:
            return
        self._stop.set()
        task, self._task = self._task, None
        try:
            await task
            outcomes = await asyncio.gather(*(d for _, d in self._deliveries), return_exceptions=True)
            for (test_id, _), outcome in zip(self._deliveries, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    self.failed.add(test_id)
        finally:
            if self._producer is not None:
                await self._producer.stop()


def good_traffic(corpus: Corpus) -> Iterator[CorpusRecord]:
    """Endless good records from the corpus's devices."""
    while True:
        yield corpus.good()


# -- observing the group --------------------------------------------------------------------------


class GroupProbe:
    """Committed offsets of the region's group on its ingest partitions (None while the broker is away)."""

    def __init__(self, region: FaultRegion) -> None:
        self.region = region
        self._admin = AIOKafkaAdminClient(
            **kafka_settings(region.bootstrap).client_kwargs(),
            client_id="faults-probe",
            request_timeout_ms=5_000,
        )

    async def __aenter__(self) -> GroupProbe:
        await self._admin.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._admin.close()

    async def committed(self) -> dict[TopicPartition, int] | None:
        try:
            offsets = await self._admin.list_consumer_group_offsets(
                self.region.group, partitions=self.region.ingest
            )
        except (KafkaError, OSError, TimeoutError) as err:
            log.debug("committed offsets unavailable: %r", err)
            return None
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    async def total(self) -> int:
        """Sum of committed offsets (-1 while they cannot be read)."""
        committed = await self.committed()
        return -1 if committed is None else sum(committed.values())

    async def progress(self, what: str, timeout_s: float = 60.0, partitions: Iterable[str] = ()) -> None:
        """Wait until the group commits past where it is now (on ``partitions``, named as the worker
        logs them, or on any ingest partition)."""
        wanted = set(partitions)

        def pick(committed: Mapping[TopicPartition, int]) -> int:
            return sum(
                v for tp, v in committed.items() if not wanted or f"{tp.topic}[{tp.partition}]" in wanted
            )

        start: int | None = None

        async def moved() -> bool:
            nonlocal start
            committed = await self.committed()
            if committed is None:
                return False
            if start is None:
                start = pick(committed)
                return False
            return pick(committed) > start

        await wait_for(what, moved, timeout_s, 0.2)


async def region_lag(region: FaultRegion) -> int | None:
    """Records on the ingest topics past the group's committed offsets (None while unreadable)."""
    ingest = [t for t in region_topics(region.name) if t.kind is not None]
    try:
        lag = await consumer_lag(region.bootstrap, region.group, ingest, timeout_ms=10_000)
    except (KafkaError, OSError, TimeoutError) as err:
        log.debug("lag unavailable: %r", err)
        return None
    return sum(lag.values())


async def wait_drained(region: FaultRegion, timeout_s: float = DRAIN_TIMEOUT_S, max_lag: int = 0) -> None:
    """Wait until the group's lag on the ingest topics is at most ``max_lag`` (0: drained)."""
    last: int | None = None

    async def drained() -> bool:
        nonlocal last
        last = await region_lag(region)
        return last is not None and last <= max_lag

    try:
        await wait_for(f"group {region.group} lag <= {max_lag}", drained, timeout_s, 0.25)
    except FaultTimeout as err:
        raise FaultTimeout(f"{err}; lag {last}") from None


# -- reading the outcome --------------------------------------------------------------------------


class Record(NamedTuple):
    """A record as read back (the fields ``DeadLetter.from_record`` reads)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]


@dataclass
class Observed:
    """The region's topics as a read_committed consumer sees them at the end."""

    ingest: list[Record]
    results: list[Record]
    audit: list[Record]
    dlq: list[Record]
    unsettled: dict[str, int]
    """Output partitions whose last stable offset stayed behind the high watermark (an open
    transaction), with the gap."""
    aborted: dict[str, int]
    """Records per output topic that only a read_uncommitted reader sees: written by transactions
    that aborted (a kill or a fence landed mid-transaction)."""
    summaries: list[PartialSummary] = field(default_factory=list)
    """The region's partial window summaries on ``cloud.summaries`` (shared by every region)."""


async def _end_offsets(
    bootstrap: Kafka, tps: list[TopicPartition], isolation: str
) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(
        **kafka_settings(bootstrap).client_kwargs(), isolation_level=isolation, enable_auto_commit=False
    )
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        return ends
    finally:
        await consumer.stop()


def _partitions(topic: str) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(parse_topic(topic).spec.partitions)]


async def read_all(
    bootstrap: Kafka, topic: str, timeout_s: float = 60.0, isolation: str = "read_committed"
) -> list[Record]:
    """Every record of ``topic`` up to its end (read_committed: its last stable offset)."""
    tps = _partitions(topic)
    consumer = AIOKafkaConsumer(
        **kafka_settings(bootstrap).client_kwargs(),
        group_id=None,
        isolation_level=isolation,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
    )
    await consumer.start()
    out: list[Record] = []
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while True:
            positions = {tp: await consumer.position(tp) for tp in tps}
            if all(positions[tp] >= ends[tp] for tp in tps):
                return out
            if time.monotonic() > deadline:
                raise FaultTimeout(f"reading {topic}: at {positions}, end {ends} after {timeout_s:.0f} s")
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(
                    Record(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers)) for r in records
                )
    finally:
        await consumer.stop()


async def observe(region: FaultRegion, settle_timeout_s: float = SETTLE_TIMEOUT_S) -> Observed:
    """Wait for open transactions on the outputs to finish (bounded), then read every topic."""
    outputs = [results_topic(region.name), audit_topic(region.name), dlq_topic(region.name)]
    tps = [tp for topic in outputs for tp in _partitions(topic)]
    gaps: dict[str, int] = {}

    async def settled() -> bool:
        nonlocal gaps
        stable = await _end_offsets(region.bootstrap, tps, "read_committed")
        high = await _end_offsets(region.bootstrap, tps, "read_uncommitted")
        gaps = {f"{tp.topic}[{tp.partition}]": high[tp] - stable[tp] for tp in tps if high[tp] != stable[tp]}
        return not gaps

    with contextlib.suppress(FaultTimeout):
        await wait_for("output partitions settle (no open transaction)", settled, settle_timeout_s, 0.5)
    ingest = [ingest_topic(region.name, kind) for kind in KINDS]
    ingest_records = [r for topic in ingest for r in await read_all(region.bootstrap, topic)]
    committed = {topic: await read_all(region.bootstrap, topic) for topic in outputs}
    aborted = {
        topic.rsplit(".", 1)[-1]: len(await read_all(region.bootstrap, topic, isolation="read_uncommitted"))
        - len(committed[topic])
        for topic in outputs
    }
    summaries = [
        summary
        for r in await read_all(region.bootstrap, SUMMARIES_TOPIC)
        if (summary := PartialSummary.from_bytes(r.value or b"")).region == region.name
    ]
    return Observed(
        ingest=ingest_records,
        results=committed[outputs[0]],
        audit=committed[outputs[1]],
        dlq=committed[outputs[2]],
        unsettled=gaps,
        aborted=aborted,
        summaries=summaries,
    )


# -- the checker ----------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What the read_committed view says about every input sent."""

    sent: int = 0
    """Records the scenario drew and sent."""
    written: int = 0
    summarised: int = 0
    """Results the cloud summaries count: must equal ``results`` (they commit in the same transactions)."""
    """Of them, found on the ingest topics (the inputs the invariant is about)."""
    not_written: int = 0
    """Sent, delivery failed, not on the ingest topics: never an input (reported, not a violation)."""
    results: int = 0
    """Result records read."""
    dead_letters: Counter[str] = field(default_factory=Counter)
    """Dead letters read, by reason."""
    audits: int = 0
    """Audit records read."""
    lost: int = 0
    """Inputs with neither a result nor a dead letter."""
    duplicated: int = 0
    """Outcomes beyond the first for an input (second result, second dead letter, or both)."""
    both: int = 0
    """Inputs with a result and a dead letter."""
    false_replays: int = 0
    """Dead letters with reason ``replayed`` for inputs that were not replays."""
    stale_good: int = 0
    """Good inputs dead-lettered as ``stale`` where the scenario delays them past ``max_age_ms`` (a broker
    outage): one outcome, the right one for a late input, so not a violation there."""
    wrong_reason: Counter[str] = field(default_factory=Counter)
    """``category: expected X, got Y`` for dead letters with another reason than their input's."""
    answered_bad: Counter[str] = field(default_factory=Counter)
    """Bad inputs that got a result, by category."""
    unknown_results: int = 0
    """Results for a request id no input carried."""
    wrong_answers: int = 0
    """Results whose device or model is not their input's."""
    bad_origin: int = 0
    """Dead letters whose origin headers do not point at an ingest record with the same key and bytes."""
    malformed_dead_letters: int = 0
    """DLQ records without the error headers."""
    audit_problems: Counter[str] = field(default_factory=Counter)
    """Results and dead letters without exactly one matching audit record, and audit records without."""
    foreign_ingest: int = 0
    """Ingest records the scenario did not send (a producer duplicate)."""
    unsettled: dict[str, int] = field(default_factory=dict)
    """Output partitions left with an open transaction."""
    by_category: dict[str, Counter[str]] = field(default_factory=dict)
    """category -> outcome (``result`` or a reason, ``lost``) -> inputs."""
    examples: list[str] = field(default_factory=list)
    """A few concrete violations, to start debugging from."""

    def violations(self) -> list[str]:
        """Every broken part of the invariant, in words; empty when it holds."""
        out = []
        for name in (
            "lost",
            "duplicated",
            "both",
            "false_replays",
            "unknown_results",
            "wrong_answers",
            "bad_origin",
            "malformed_dead_letters",
            "foreign_ingest",
        ):
            value = getattr(self, name)
            if value:
                out.append(f"{name}: {value}")
        for name in ("wrong_reason", "answered_bad", "audit_problems"):
            counts: Counter[str] = getattr(self, name)
            out += [f"{name}: {key}: {n}" for key, n in sorted(counts.items())]
        if self.unsettled:
            out.append(f"open transactions left: {self.unsettled}")
        if self.summarised != self.results:
            out.append(
                f"cloud summaries count {self.summarised} results, the results topic has {self.results}"
            )
        if self.written == 0:
            out.append("nothing was written to the ingest topics")
        return out

    def example(self, text: str) -> None:
        """Keep ``text`` as an example violation (the first 20)."""
        if len(self.examples) < 20:
            self.examples.append(text)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "written": self.written,
            "summarised": self.summarised,
            "not_written": self.not_written,
            "results": self.results,
            "dead_letters": dict(sorted(self.dead_letters.items())),
            "audits": self.audits,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "both": self.both,
            "false_replays": self.false_replays,
            "stale_good": self.stale_good,
            "wrong_reason": dict(self.wrong_reason),
            "answered_bad": dict(self.answered_bad),
            "unknown_results": self.unknown_results,
            "wrong_answers": self.wrong_answers,
            "bad_origin": self.bad_origin,
            "malformed_dead_letters": self.malformed_dead_letters,
            "audit_problems": dict(self.audit_problems),
            "foreign_ingest": self.foreign_ingest,
            "unsettled": self.unsettled,
            "by_category": {k: dict(v) for k, v in sorted(self.by_category.items())},
            "examples": self.examples,
        }


def check(
    ledger: Mapping[int, CorpusRecord],
    observed: Observed,
    *,
    max_envelope_bytes: int = MAX_ENVELOPE_BYTES,
    tolerate_stale: bool = False,
) -> Verdict:
    """Judge every input by the read_committed view (pure: no Kafka here). ``tolerate_stale``: a good
    input's one dead letter may be ``stale`` (the scenario held it up past the age limit)."""
    v = Verdict(sent=len(ledger), unsettled=dict(observed.unsettled))
    v.summarised = sum(summary.results for summary in observed.summaries)

    # Which input is each ingest record? Identical (key, value) pairs (replays) share a partition, so
    # their offsets follow their send order, which is test id order.
    queue: dict[tuple[bytes, bytes], deque[int]] = defaultdict(deque)
    for test_id in sorted(ledger):
        queue[(ledger[test_id].key, ledger[test_id].value)].append(test_id)
    input_at: dict[tuple[str, int, int], int] = {}
    ingest_at: dict[tuple[str, int, int], Record] = {}
    for r in sorted(observed.ingest, key=lambda r: (r.topic, r.partition, r.offset)):
        pending = queue.get((r.key or b"", r.value or b""))
        if not pending:
            v.foreign_ingest += 1
            v.example(f"ingest {r.topic}[{r.partition}]@{r.offset} was not sent by the scenario")
            continue
        input_at[(r.topic, r.partition, r.offset)] = pending.popleft()
        ingest_at[(r.topic, r.partition, r.offset)] = r
    written = set(input_at.values())
    v.written = len(written)
    v.not_written = len(ledger) - len(written)

    # Dead letters, matched to their input by their origin headers.
    letters: dict[int, list[DeadLetter]] = defaultdict(list)
    expected_dl_audits: Counter[tuple[bytes, str]] = Counter()
    for r in observed.dlq:
        try:
            letter = DeadLetter.from_record(r)
        except MalformedDeadLetter as err:
            v.malformed_dead_letters += 1
            v.example(str(err))
            continue
        v.dead_letters[letter.reason] += 1
        with contextlib.suppress(ContractError):
            envelope = decode_envelope(letter.value, max_envelope_bytes=max_envelope_bytes)
            expected_dl_audits[(envelope.request_id, letter.reason)] += 1
        origin = (letter.origin_topic, letter.origin_partition, letter.origin_offset)
        owner = input_at.get(origin)
        source = ingest_at.get(origin)
        if owner is None or source is None or source.value != letter.value or source.key != letter.key:
            v.bad_origin += 1
            v.example(f"dead letter {letter.dlq_position()} ({letter.reason}) names origin {origin}")
            continue
        letters[owner].append(letter)

    # Results, matched by request id: the inputs of a request id that were not dead-lettered are owed
    # one result each (a replay shares its original's id and is owed a dead letter instead).
    results: dict[bytes, list[ResultRecord]] = defaultdict(list)
    for r in observed.results:
        result = ResultRecord.from_bytes(r.value or b"")
        results[result.request_id].append(result)
        v.results += 1
    inputs_of: dict[bytes, list[int]] = defaultdict(list)
    for test_id in sorted(written):
        rid = ledger[test_id].request_id
        if rid is not None:
            inputs_of[rid].append(test_id)
    answered: dict[int, int] = {}
    for rid, got in results.items():
        owners = inputs_of.get(rid)
        if not owners:
            v.unknown_results += len(got)
            v.example(f"result for unknown request {rid.hex()} from {got[0].node}")
            continue
        open_inputs = [t for t in owners if not letters.get(t)]
        for test_id in open_inputs[: len(got)]:
            answered[test_id] = 1
        extra = len(got) - len(open_inputs)
        if extra > 0:
            v.duplicated += extra
            v.both += min(extra, len(owners) - len(open_inputs))
            nodes = sorted(r.node for r in got)
            v.example(f"request {rid.hex()} (test ids {owners}) has {len(got)} results from {nodes}")
        record = ledger[owners[0]]
        for result in got:
            if result.device_id.encode() != record.key or result.model != MODEL_FOR_KIND[record.kind]:
                v.wrong_answers += 1
                v.example(f"request {rid.hex()}: result for {result.device_id}/{result.model}")

    # Each input: exactly one outcome, the expected one.
    for test_id in sorted(written):
        record = ledger[test_id]
        got_letters = letters.get(test_id, [])
        outcomes = Counter(letter.reason for letter in got_letters)
        if answered.get(test_id):
            outcomes["result"] += 1
        if not outcomes:
            v.lost += 1
            outcomes["lost"] += 1
            v.example(f"test id {test_id} ({record.category}) has no result and no dead letter")
        if len(got_letters) > 1:
            v.duplicated += len(got_letters) - 1
            v.example(f"test id {test_id} has {len(got_letters)} dead letters: {sorted(outcomes)}")
        v.by_category.setdefault(record.category, Counter()).update(outcomes)
        if record.expect != OK and answered.get(test_id):
            v.answered_bad[record.category] += 1
            v.example(f"test id {test_id} ({record.category}) was answered; expected {record.expect}")
        expected = "result" if record.expect == OK else record.expect
        for letter in got_letters:
            if tolerate_stale and expected == "result" and letter.reason == "stale" and len(got_letters) == 1:
                v.stale_good += 1
                continue
            if letter.reason != expected:
                v.wrong_reason[f"{record.category}: expected {expected}, got {letter.reason}"] += 1
                v.example(
                    f"test id {test_id} ({record.category}) at {letter.origin_position()}: {letter.reason}"
                    f" ({letter.message})"
                )
                if letter.reason == "replayed":
                    v.false_replays += 1

    # Audit: one ok record per result (same request id and version), one dead_letter record per
    # dead letter whose envelope decodes (same request id and reason).
    ok_audits: Counter[tuple[bytes | None, int | None]] = Counter()
    dl_audits: Counter[tuple[bytes, str]] = Counter()
    for r in observed.audit:
        audit = AuditRecord.from_bytes(r.value or b"")
        v.audits += 1
        if audit.outcome == "ok":
            ok_audits[(audit.request_id, audit.model_version)] += 1
        elif audit.request_id is not None:
            dl_audits[(audit.request_id, audit.reason or "")] += 1
    result_keys: Counter[tuple[bytes | None, int | None]] = Counter(
        (result.request_id, result.model_version) for got in results.values() for result in got
    )
    for key in result_keys.keys() | ok_audits.keys():
        n_results, n_audits = result_keys[key], ok_audits[key]
        if n_results != n_audits:
            what = (
                "results without their audit record" if n_results > n_audits else "ok audits without a result"
            )
            v.audit_problems[what] += abs(n_results - n_audits)
            shown = key[0].hex() if key[0] else None
            v.example(f"request {shown} v{key[1]}: {n_results} results, {n_audits} audits")
    for dl_key in expected_dl_audits.keys() | dl_audits.keys():
        n_letters, n_audits = expected_dl_audits[dl_key], dl_audits[dl_key]
        if n_letters != n_audits:
            what = (
                "dead letters without their audit record"
                if n_letters > n_audits
                else "dead_letter audits without a dead letter"
            )
            v.audit_problems[what] += abs(n_letters - n_audits)
    return v


# -- scenarios ------------------------------------------------------------------------------------


@dataclass
class ScenarioReport:
    """One scenario's outcome: the verdict plus what the scenario did to the workers."""

    name: str
    region: str
    seed: int
    verdict: Verdict
    worker_restarts: int
    """Incarnations started after the first (deliberate kills included)."""
    unexpected_exits: list[str]
    """Workers that exited on their own (and were restarted unless the scenario expected it)."""
    exit_codes: dict[str, int]
    """Exit code of every incarnation, by node id."""
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    """Scenario-specific observations."""

    def violations(self) -> list[str]:
        return self.verdict.violations()

    def summary(self) -> str:
        v = self.verdict
        reasons = ", ".join(f"{k} {n}" for k, n in sorted(v.dead_letters.items())) or "none"
        return (
            f"{self.name} (region {self.region}, seed {self.seed}): sent {v.sent}, written {v.written}, "
            f"results {v.results}, dead letters [{reasons}], lost {v.lost}, duplicated {v.duplicated}, "
            f"false replays {v.false_replays}, worker restarts {self.worker_restarts}, "
            f"unexpected exits {self.unexpected_exits or 0}, {self.wall_s:.1f} s; extra {self.extra}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "region": self.region,
            "seed": self.seed,
            **self.verdict.as_dict(),
            "worker_restarts": self.worker_restarts,
            "unexpected_exits": self.unexpected_exits,
            "exit_codes": self.exit_codes,
            "wall_s": round(self.wall_s, 2),
            "violations": self.violations(),
            "extra": self.extra,
        }


@contextlib.asynccontextmanager
async def _scenario(
    name: str, env: FaultEnv, region: FaultRegion, source: Iterator[CorpusRecord], rate_per_s: float
) -> AsyncIterator[tuple[Workers, Traffic, GroupProbe]]:
    env.on_event(f"{name}: region {region.name}")
    async with Workers(region, env) as workers, GroupProbe(region) as probe:
        traffic = Traffic(region, source, rate_per_s=rate_per_s)
        try:
            yield workers, traffic, probe
        finally:
            await traffic.stop()


async def _finish(
    name: str,
    env: FaultEnv,
    region: FaultRegion,
    workers: Workers,
    traffic: Traffic,
    started: float,
    inspect: Callable[[Observed], Mapping[str, Any]] | None = None,
    tolerate_stale: bool = False,
    **extra: Any,
) -> ScenarioReport:
    """Stop traffic, wait for the group to drain, stop the workers, read and judge."""
    await traffic.stop()
    env.on_event(f"{name}: {traffic.sent} sent; draining")
    await wait_drained(region)
    await workers.stop_all()
    env.on_event(f"{name}: checking")
    observed = await observe(region)
    verdict = check(traffic.ledger, observed, tolerate_stale=tolerate_stale)
    extra["aborted_outputs"] = observed.aborted
    extra["rewinds"] = workers.count_log_lines("re-reading")
    extra["results_by_node"] = dict(
        sorted(Counter(ResultRecord.from_bytes(r.value or b"").node for r in observed.results).items())
    )
    if inspect is not None:
        extra.update(inspect(observed))
    exit_codes = {f"{w.name}.{i + 1}": code for w in workers.all.values() for i, code in enumerate(w.exits)}
    report = ScenarioReport(
        name=name,
        region=region.name,
        seed=env.seed,
        verdict=verdict,
        worker_restarts=workers.restarts,
        unexpected_exits=list(workers.unexpected_exits),
        exit_codes=exit_codes,
        wall_s=time.monotonic() - started,
        extra=extra,
    )
    log.info("%s", report.summary())
    return report


async def kill9(env: FaultEnv, *, cycles: int, rate_per_s: float = 100.0) -> ScenarioReport:
    """kill -9 the worker at a random point of a steady stream, start it again; ``cycles`` times."""
    started = time.monotonic()
    rng = random.Random(env.seed)
    region = await make_region(env)
    corpus = make_corpus(env, region)
    async with _scenario("kill -9", env, region, good_traffic(corpus), rate_per_s) as (
        workers,
        traffic,
        probe,
    ):
        worker = workers.start("w")
        await worker.ready()
        async with traffic:
            pauses_s, lag_at_kill = [], []
            for cycle in range(cycles):
                await probe.progress(f"worker {worker.node_id} commits")
                if cycle % 2:
                    # Every other kill lands in steady streaming, the rest while the backlog of the
                    # previous restart is being caught up; so no input waits past the age limit.
                    await wait_drained(region, max_lag=int(rate_per_s))
                pause_s = rng.uniform(0.0, 1.0)  # a random point of the stream, not a readiness wait
                pauses_s.append(round(pause_s, 3))
                await asyncio.sleep(pause_s)
                lag_at_kill.append(await region_lag(region))
                code = await worker.kill9()
                env.on_event(f"kill -9: cycle {cycle + 1}/{cycles}, killed {worker.node_id} ({code})")
                workers.restart(worker)
                await worker.ready()
            await probe.progress(f"worker {worker.node_id} commits after the last restart")
            return await _finish(
                "kill -9",
                env,
                region,
                workers,
                traffic,
                started,
                cycles=cycles,
                kill_delays_s=pauses_s,
                lag_at_kill=lag_at_kill,
            )


async def zombie(env: FaultEnv, *, rate_per_s: float = 100.0, stopped_past_s: float = 3.0) -> ScenarioReport:
    """Two workers; SIGSTOP one until the other owns all partitions (its session timed out) and has
    committed on them, keep traffic flowing, then SIGCONT it: it must be fenced, nothing doubled."""
    started = time.monotonic()
    rng = random.Random(env.seed)
    region = await make_region(env)
    corpus = make_corpus(env, region)
    everything = partition_names(region)
    # Units wait up to 300 ms to fill and the latency budget is wide: when the stop lands, the zombie
    # very likely holds records it has fetched and not committed.
    slow = {"MAX_WAIT_MS": 300, "SLA_MS": 10_000}
    async with _scenario("zombie", env, region, good_traffic(corpus), rate_per_s) as (
        workers,
        traffic,
        probe,
    ):
        live, victim = workers.start("live", **slow), workers.start("zombie", **slow)
        await asyncio.gather(live.ready(), victim.ready())
        async with traffic:

            def shared() -> bool:
                a, b = live.assigned() or set(), victim.assigned() or set()
                return bool(a) and bool(b) and a | b == everything and not a & b

            await wait_for("both workers own partitions", shared, 60)
            theirs = victim.assigned() or set()
            await probe.progress("the zombie-to-be commits", partitions=theirs)
            await asyncio.sleep(rng.uniform(0.05, 0.5))  # a random point of its stream
            victim.stopping = True  # its exit is the expected outcome, not one to restart
            victim.signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            takeover_s = await wait_for(
                "the live worker owns every partition", lambda: live.assigned() == everything, 60
            )
            await probe.progress("the live worker commits on the zombie's partitions", partitions=theirs)
            # Past the session timeout and the takeover, with traffic flowing, for a while longer.
            await asyncio.sleep(stopped_past_s)
            stopped_s = time.monotonic() - stopped_at
            resumed_ms = time.time() * 1000.0
            victim.signal(signal.SIGCONT)
            code = await victim.wait_exit(45)
            zombie_log = victim.log_text()
            await probe.progress("the live worker commits after the zombie woke")

            def after_resume(observed: Observed) -> dict[str, int]:
                results = (ResultRecord.from_bytes(r.value or b"") for r in observed.results)
                late = [r for r in results if r.node == victim.node_id and r.produced_at_ms >= resumed_ms]
                return {"zombie_results_after_resume": len(late)}

            return await _finish(
                "zombie",
                env,
                region,
                workers,
                traffic,
                started,
                after_resume,
                zombie_partitions=sorted(theirs),
                stopped_s=round(stopped_s, 2),
                takeover_s=round(takeover_s, 2),
                zombie_exit_code=code,
                zombie_log_says_fenced=bool(re.search(r"fenced", zombie_log, re.IGNORECASE)),
                zombie_errors=victim.errors(),
            )


async def rebalance(env: FaultEnv, *, rate_per_s: float = 100.0) -> ScenarioReport:
    """One worker, then three (two join), then one again (the two leave on SIGTERM), traffic throughout."""
    started = time.monotonic()
    region = await make_region(env)
    corpus = make_corpus(env, region)
    everything = partition_names(region)
    async with _scenario("rebalance 1-3-1", env, region, good_traffic(corpus), rate_per_s) as (
        workers,
        traffic,
        probe,
    ):
        first = workers.start("a")
        await first.ready()
        async with traffic:
            await probe.progress("one worker commits")
            joiners = [workers.start("b"), workers.start("c")]
            await asyncio.gather(*(w.ready() for w in joiners))
            trio = [first, *joiners]

            def spread() -> bool:
                owned = [w.assigned() or set() for w in trio]
                return (
                    all(owned)
                    and set().union(*owned) == everything
                    and sum(map(len, owned)) == len(everything)
                )

            await wait_for("three workers share the partitions", spread, 60)
            env.on_event("rebalance: three workers")
            for w in trio:
                await probe.progress(f"{w.node_id} commits", partitions=w.assigned() or ())
            leave_codes = await asyncio.gather(*(w.stop() for w in joiners))
            await wait_for("one worker owns every partition", lambda: first.assigned() == everything, 60)
            env.on_event("rebalance: back to one")
            await probe.progress("the last worker commits")
            return await _finish(
                "rebalance 1-3-1", env, region, workers, traffic, started, leave_exit_codes=list(leave_codes)
            )


async def broker_restart(
    env: FaultEnv,
    *,
    rate_per_s: float = 100.0,
    outage_s: float = 3.0,
    restarts: int = 1,
    after_s: float = 4.0,
) -> ScenarioReport:
    """Two workers on a broker of their own; stop the broker (SIGTERM), keep it down ``outage_s``, start
    it again on the same ports, let traffic flow ``after_s`` more; ``restarts`` times. A worker that
    exits is counted and started again."""
    started = time.monotonic()
    port = free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    settings = BrokerSettings(home=env.run_dir / "restart-broker", port=port, controller_port=controller_port)
    broker = LocalBroker(settings)
    env.on_event(f"broker restart: starting a broker on 127.0.0.1:{port}")
    state = await asyncio.to_thread(broker.start, 120)
    rng = random.Random(env.seed)
    # The scenario's own clients (traffic, probe) retry through the outage on purpose; their
    # connection errors, thousands of them, would bury a failure's report.
    client_log = logging.getLogger("aiokafka")
    client_level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        region = await make_region(env, state.kafka(), prefix="b", tls_root=state.tls_root)
        corpus = make_corpus(env, region)
        async with _scenario("broker restart", env, region, good_traffic(corpus), rate_per_s) as (
            workers,
            traffic,
            probe,
        ):
            pair = [workers.start("a"), workers.start("b")]
            await asyncio.gather(*(w.ready() for w in pair))
            async with traffic:
                timings: list[dict[str, float]] = []
                for n in range(restarts):
                    await probe.progress("the workers commit")
                    await asyncio.sleep(rng.uniform(0.5, 2.0))  # a random point of the stream
                    t0 = time.monotonic()
                    await asyncio.to_thread(broker.stop)
                    t1 = time.monotonic()
                    env.on_event(f"broker restart {n + 1}/{restarts}: stopped in {t1 - t0:.1f} s")
                    await asyncio.sleep(outage_s)  # the outage itself
                    t2 = time.monotonic()
                    again = await asyncio.to_thread(broker.start, 120)
                    t3 = time.monotonic()
                    if again.bootstrap != state.bootstrap:
                        raise AssertionError(f"broker came back at {again.bootstrap}, not {state.bootstrap}")
                    env.on_event(f"broker restart {n + 1}/{restarts}: back, started in {t3 - t2:.1f} s")
                    await probe.progress("the workers commit after the restart", timeout_s=150)
                    t4 = time.monotonic()
                    timings.append(
                        {
                            "stop_s": round(t1 - t0, 2),
                            "down_s": round(t3 - t0, 2),
                            "first_commit_after_s": round(t4 - t3, 2),
                        }
                    )
                    await asyncio.sleep(after_s)  # traffic keeps flowing on the restarted broker
                return await _finish(
                    "broker restart",
                    env,
                    region,
                    workers,
                    traffic,
                    started,
                    tolerate_stale=True,
                    broker_restarts=restarts,
                    timings=timings,
                    send_failures=len(traffic.failed),
                )
    finally:
        client_log.setLevel(client_level)
        await asyncio.to_thread(broker.stop)


async def hostile(env: FaultEnv, *, good: int, bad: int, rate_per_s: float = 800.0) -> ScenarioReport:
    """One worker; ``bad`` malformed records of every category mixed into ``good`` good ones from many
    devices. Every bad one dead-lettered with its reason and origin, every good one answered once, and
    the worker never restarts (same pid; at SIGTERM its stats say it consumed everything written)."""
    started = time.monotonic()
    region = await make_region(env)
    corpus = make_corpus(env, region, devices=500)
    stream = corpus.stream(good, bad)
    async with _scenario("hostile input", env, region, stream, rate_per_s) as (workers, traffic, _probe):
        worker = workers.start("w")
        ready = await worker.ready()
        async with traffic:
            await wait_for("the corpus is sent", traffic.exhausted.is_set, 60 + (good + bad) / rate_per_s)
            await traffic.stop()
            report = await _finish("hostile input", env, region, workers, traffic, started)
    stats = worker.stats() or {}
    report.extra.update(
        incarnations=worker.incarnation,
        pid_at_ready=ready.get("pid"),
        pid_at_exit=worker.pid,
        stats_consumed=stats.get("consumed"),
        stats_results=stats.get("results"),
        stats_dead_letters=stats.get("dead_letters"),
        categories=len(report.verdict.by_category),
    )
    return report


SCENARIOS: Mapping[str, Callable[..., Awaitable[ScenarioReport]]] = {
    "kill9": kill9,
    "zombie": zombie,
    "rebalance": rebalance,
    "broker_restart": broker_restart,
    "hostile": hostile,
}
"""Every scenario by name."""
