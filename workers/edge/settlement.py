"""What a commit's outcome does to the worker's state.

The commit stage (``commits.py``) hands each commit here: the merged work of its staged units goes
through the sink (``sinks.py``), and then every partition in it is *settled*. A committed partition
keeps what its units staged: its replay memory and audit chain advance, and it is served from its new
offset on. A failed one is rewound: its replay memory and chain are forgotten (the transaction's
outcome may be unknown, so the chain restarts from the head committed with the offset), its records
still in the open unit are dropped, and it leaves service until the fetch loop positions it at its
committed offset again, where its records come again. Failed commits back off, doubling up to
``retry_backoff_max_ms``, except while the worker drains (its next owner re-reads what is left).

A commit the cluster refused for an output's size (`sinks.SIZE_REFUSALS`) puts its failed partitions
in the sink's ``isolated``, so that their next try names the outputs refused (`sinks.OutputsRefused`);
their records are handed to ``refuse`` (``outputs.py``), which dead-letters them when they are read
again: a record the cluster will never take stops its partitions for a few backoffs, not for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from edgestream.pipeline.observability.health import Readiness
from edgestream.pipeline.observability.metrics import WorkerMetrics
from edgestream.pipeline.serving.auditchain import AuditChain, chain_id
from edgestream.pipeline.serving.batching import MicroBatcher
from edgestream.workers.edge.admission import Admission, Item
from edgestream.workers.edge.commits import StagedUnit
from edgestream.workers.edge.positioning import Partitions
from edgestream.workers.edge.sinks import SIZE_REFUSALS, OutputsRefused, PartitionWork, Sink
from edgestream.workers.edge.status import WorkerStats, count_unit

log = logging.getLogger(__name__)


class Settlement:
    """Commits staged work through a sink and settles each partition on the outcome.

    ``open_unit``: the unit being filled (a rewound partition's records leave it); ``draining``: whether
    the worker is draining now (no backoff, no re-reading here: the next owner re-reads)."""

    def __init__(
        self,
        sink: Sink,
        *,
        admission: Admission,
        chains: AuditChain,
        partitions: Partitions,
        open_unit: MicroBatcher[Item],
        stats: WorkerStats,
        metrics: WorkerMetrics,
        readiness: Readiness,
        retry_backoff_max_ms: float,
        draining: Callable[[], bool],
        refuse: Callable[[TopicPartition, int, str], None],
    ) -> None:
        self._sink = sink
        self._admission = admission
        self._chains = chains
        self._partitions = partitions
        self._open = open_unit
        self._stats = stats
        self._metrics = metrics
        self._readiness = readiness
        self._backoff_max_s = retry_backoff_max_ms / 1000.0
        self._draining = draining
        self._refuse = refuse
        self._failures = 0  # failed units in a row

    async def commit(self, units: Sequence[StagedUnit], work: dict[TopicPartition, PartitionWork]) -> None:
        """The commit stage's commit: the merged work of ``units`` through the sink, then settled."""
        if not work:
            return
        started_s = time.monotonic()
        try:
            failed = await self._sink.publish(work)
        except BaseException:
            self.abort(work)
            raise
        self._metrics.commit(committed=not failed, seconds=time.monotonic() - started_s)
        if failed and self._refused(failed):
            self._failures = 0  # records were named: progress, so the next try does not wait longer
        await self._settle(work, failed)
        for unit in units:
            items = [it for it in unit.items if it.tp in work and work[it.tp].epoch == it.epoch]
            count_unit(self._stats, self._metrics, items, failed, unit)
        if len(failed) < len(work):
            self._readiness.progress()
        if not failed:
            self._failures = 0

    def abort(self, tps: Iterable[TopicPartition]) -> None:
        """Nothing built for ``tps`` will commit in this epoch: forget their replay memory and chains
        (each chain restarts when its partition is positioned again)."""
        for tp in tps:
            self._admission.replays.abort(tp)
            self._chains.forget(chain_id(tp.topic, tp.partition))

    def _refused(self, failed: Mapping[TopicPartition, KafkaError]) -> bool:
        """Outputs the cluster refused for their size: isolate the partitions' next try (those named,
        when the refusal names its outputs), and hand on the records of those named; whether any was."""
        isolated = [
            tp
            for tp, err in failed.items()
            if isinstance(err, SIZE_REFUSALS) or (isinstance(err, OutputsRefused) and tp in err.refused)
        ]
        if isolated and not self._sink.isolated.issuperset(isolated):
            log.warning(
                "outputs refused for their size: sending those of %d partition(s) one by one", len(isolated)
            )
        self._sink.isolated.update(isolated)
        named = False
        for err in {id(e): e for e in failed.values()}.values():
            if isinstance(err, OutputsRefused):
                for tp, outputs in err.refused.items():
                    for output in outputs:
                        if output.origin < 0:  # a cloud summary: no record of its own to dead-letter
                            log.error("%s refused a cloud summary for its size", output.topic)
                            continue
                        log.warning(
                            "%s refused the output of %s[%d]@%d for its size: dead-lettering the record",
                            output.topic, tp.topic, tp.partition, output.origin,
                        )  # fmt: skip
                        self._refuse(tp, output.origin, output.topic)
                        named = True
        return named

    async def _settle(
        self, work: Mapping[TopicPartition, PartitionWork], failed: Mapping[TopicPartition, BaseException]
    ) -> None:
        """After a unit's commits: keep what the committed partitions staged, rewind the failed ones."""
        for tp, part in work.items():
            chain = chain_id(tp.topic, tp.partition)
            if tp in failed:
                self._admission.replays.abort(tp)  # its records come again: they are not replays
                # The transaction's outcome may be unknown: the chain restarts from the head committed
                # with the offset when the partition is positioned again.
                self._chains.forget(chain)
            else:
                self._admission.replays.commit(tp)
                self._chains.commit(chain)
                self._partitions.committed(tp, part.next_offset)
        for tp, err in failed.items():
            await self._rewind(tp, err)
        if failed and not self._draining():
            # Once per failed unit, not per partition: a per_worker unit fails as a whole.
            self._failures += 1
            backoff_s = min(self._backoff_max_s, 0.05 * 2 ** min(self._failures, 10))
            log.warning("backing off %.2f s after a failed unit", backoff_s)
            await asyncio.sleep(backoff_s)

    async def _rewind(self, tp: TopicPartition, err: BaseException) -> None:
        """Re-read ``tp`` from its committed offset: nothing of the failed unit was committed.

        The partition leaves service at once (its records still in flight are dropped) and the fetch
        loop positions it again before its next fetch.
        """
        self._stats.rewinds += 1
        self._metrics.rewind()
        self._open.remove(lambda it: it.tp == tp)
        self._partitions.rewound(tp)
        if self._draining():
            log.warning(
                "%s[%d] failed while draining (%r); its next owner re-reads it", tp.topic, tp.partition, err
            )
            return
        log.warning("re-reading %s[%d] from its committed offset after %r", tp.topic, tp.partition, err)
