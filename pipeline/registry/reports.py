"""Which registry revision each worker applied, across hosts: the compacted ``control.workers`` topic.

A worker that follows the registry reports itself (:class:`WorkerReporter`): key = its node id, value
= a :class:`WorkerReport` (the registry revision it applied per model, the versions it serves, when),
after every state it applies and every few seconds; when it stops cleanly it leaves a tombstone.
The rollout controller reads the topic (:class:`TopicWorkerView`): the newest report per node, those
older than ``max_age_s`` left out (a worker that died without its tombstone stops counting once its
reports go stale), so a stage does not advance while a live worker is behind.

Kafka ACLs cannot tie a key to a principal: every edge principal may write any key of this topic. A
worker that lies about its revision can only hold a rollout back or let it advance early; it cannot
change which version anyone serves. Reports are JSON, small, and carry no device data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from edgestream.pipeline.contract import fields as f
from edgestream.pipeline.errors import UndecodableRecord
from edgestream.topics.catalogue import CONTROL_WORKERS, WORKERS_TOPIC

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from edgestream.pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

REPORT_VERSION: Final = 1
MAX_REPORT_BYTES: Final = 1 << 20
"""Largest report parsed at all (a worker serving a few models sends a few hundred bytes)."""
_CLIENT_ID: Final = "edgestream-workers-view"


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """What one worker serves, as it last said."""

    node: str
    region: str
    at_ms: int
    """When the worker sent it (its clock)."""
    revisions: Mapping[str, int | None] = field(default_factory=dict)
    """Per model it serves: the registry revision applied, None while it serves its local build."""
    served: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """Per model: the versions a request can be answered by."""

    def to_bytes(self) -> bytes:
        """JSON."""
        return json.dumps(
            {
                "v": REPORT_VERSION,
                "node": self.node,
                "region": self.region,
                "at_ms": self.at_ms,
                "revisions": dict(self.revisions),
                "served": {model: list(versions) for model, versions in self.served.items()},
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, value: bytes) -> WorkerReport:
        """Parse; :class:`UndecodableRecord` for anything else, whatever the bytes (every edge principal
        may write this topic)."""
        try:
            return _report_of(value)
        except ValueError as e:  # FieldError
            raise UndecodableRecord(f"worker report: {str(e)[:300]}") from e


def _report_of(value: bytes) -> WorkerReport:
    """The report's fields, each of its one type (``fields`` raises ``FieldError``)."""
    if len(value) > MAX_REPORT_BYTES:
        raise f.FieldError(f"larger than {MAX_REPORT_BYTES} bytes")
    data = f.mapping(f.load_json(value), "report")
    if data.get("v") != REPORT_VERSION:
        raise f.FieldError(f"not a version-{REPORT_VERSION} worker report")
    revisions = {
        f.text(m, "model"): f.optional_integer(r, "revision", minimum=0)
        for m, r in f.mapping(f.field(data, "revisions"), "revisions").items()
    }
    served = {
        f.text(m, "model"): tuple(f.integer(v, "version", minimum=0) for v in f.array(vs, "versions"))
        for m, vs in f.mapping(f.field(data, "served"), "served").items()
    }
    return WorkerReport(
        f.text(f.field(data, "node"), "node"),
        f.text(f.field(data, "region"), "region"),
        f.integer(f.field(data, "at_ms"), "at_ms"),
        revisions,
        served,
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class WorkerReporter:
    """Sends a worker's reports to ``control.workers`` on its own small producer. Best effort: a report
    that fails is logged and the next one (a few seconds later) says the same."""

    def __init__(
        self, kafka: KafkaSettings, node: str, region: str, snapshot: Callable[[], WorkerReport]
    ) -> None:
        self._kafka = kafka
        self._node = node
        self._region = region
        self._snapshot = snapshot
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect."""
        from edgestream.pipeline import kafka

        self._producer = kafka.producer(self._kafka, f"edgestream-worker-report-{self._node}")
        await self._producer.start()

    async def report(self) -> bool:
        """Send the worker's current report; False (logged) when it could not be sent."""
        if self._producer is None:
            return False
        try:
            await self._producer.send_and_wait(
                WORKERS_TOPIC, self._snapshot().to_bytes(), key=self._node.encode()
            )
        except Exception as e:  # a heartbeat: the next one retries
            log.warning("could not report to %s: %s", WORKERS_TOPIC, e)
            return False
        return True

    async def run(self, interval_s: float, wakeup: asyncio.Event) -> None:
        """Report every ``interval_s``, and at once whenever ``wakeup`` is set (forever)."""
        while True:
            wakeup.clear()
            await self.report()
            try:
                await asyncio.wait_for(wakeup.wait(), timeout=interval_s)
            except TimeoutError:
                continue

    async def stop(self) -> None:
        """Leave a tombstone (this worker serves nothing any more) and disconnect."""
        if self._producer is None:
            return
        try:  # bounded: with the broker gone, stopping must not wait out the client's timeouts
            await asyncio.wait_for(
                self._producer.send_and_wait(WORKERS_TOPIC, None, key=self._node.encode()), timeout=5.0
            )
        except Exception as e:  # stale reports age out anyway
            log.warning("could not leave a tombstone on %s: %s", WORKERS_TOPIC, e)
        finally:
            await self._producer.stop()
            self._producer = None


class TopicWorkerView:
    """The workers' reports on ``control.workers``, as a
    :class:`~edgestream.workers.rollout_controller.WorkerView`."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        max_age_s: float = 30.0,
        regions: frozenset[str] | None = None,
        timeout_ms: int = 30_000,
    ) -> None:
        """``regions``: only workers of these regions (default all). It holds one consumer between
        reads (``registry.client.KeyedTail``): :meth:`close` it when done."""
        from edgestream.pipeline.registry.client import KeyedTail

        self._max_age_ms = int(max_age_s * 1000)
        self._regions = regions
        self._tail = KeyedTail(
            kafka, WORKERS_TOPIC, CONTROL_WORKERS.partitions, timeout_ms=timeout_ms, client_id=_CLIENT_ID
        )

    async def close(self) -> None:
        """Stop the consumer the reads keep."""
        await self._tail.close()

    async def reports(self) -> dict[str, WorkerReport]:
        """The newest live report per node (tombstoned and stale ones left out)."""
        latest = await self._read()
        now_ms = _now_ms()
        out: dict[str, WorkerReport] = {}
        for node, value in latest.items():
            if value is None:
                continue
            try:
                report = WorkerReport.from_bytes(value)
            except UndecodableRecord as e:
                log.warning("ignoring the report of %s: %s", node, e)
                continue
            if now_ms - report.at_ms > self._max_age_ms:
                continue
            if self._regions is not None and report.region not in self._regions:
                continue
            out[node] = report
        return out

    async def revisions(self, model: str) -> list[int | None]:
        """One entry per live worker serving ``model``: the revision it applied (None: none yet)."""
        return [
            report.revisions.get(model)
            for _, report in sorted((await self.reports()).items())
            if model in report.revisions or model in report.served
        ]

    async def _read(self) -> dict[str, bytes | None]:
        return await self._tail.read()


def report_of(
    node: str,
    region: str,
    revisions: Mapping[str, int | None],
    served: Mapping[str, tuple[int, ...]],
) -> WorkerReport:
    """A report stamped now."""
    return WorkerReport(node, region, _now_ms(), dict(revisions), dict(served))


__all__ = ["TopicWorkerView", "WorkerReport", "WorkerReporter", "report_of"]
