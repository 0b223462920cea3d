"""What a worker reports about itself: its counters (``WorkerStats``), counted as units commit, and the
run files beside it: the ready file (once models are loaded and partitions assigned) and the stats file
(counters, versions served, registry revisions applied) that the rollout controller reads."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from edgestream.pipeline.observability.metrics import WorkerMetrics
from edgestream.pipeline.serving.served import ModelCatalog
from edgestream.workers.edge.admission import Item
from edgestream.workers.edge.commits import StagedUnit
from edgestream.workers.edge.observe import observe_committed


@dataclass(slots=True)
class WorkerStats:
    """Counters a worker reports at exit (and the demo summarises). Counted once committed."""

    consumed: int = 0
    """Records fetched."""
    results: int = 0
    """Results committed."""
    units: int = 0
    """Units of work committed (a unit: the records fetched since the previous one closed)."""
    dead_letters: Counter[str] = field(default_factory=Counter)
    """Dead letters committed, by reason code."""
    batch_sizes: Counter[int] = field(default_factory=Counter)
    """How many onnxruntime calls ran at each batch size."""
    close_reasons: Counter[str] = field(default_factory=Counter)
    """Why units closed: full, max_wait, deadline, drain."""
    pauses: int = 0
    """Times fetching was paused for backpressure."""
    rewinds: int = 0
    """Times a partition was re-read from its committed offset after a failed transaction."""
    refetched: int = 0
    """Records the client fetched a second time (and the worker admitted once)."""
    infer_s: float = 0.0
    """Seconds spent in onnxruntime."""
    fetches: int = 0
    """Fetches that returned records."""
    paced: int = 0
    """Times the worker waited out its fetch interval before fetching (``pacing.py``)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "consumed": self.consumed,
            "results": self.results,
            "units": self.units,
            "dead_letters": dict(self.dead_letters),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "close_reasons": dict(self.close_reasons),
            "pauses": self.pauses,
            "rewinds": self.rewinds,
            "refetched": self.refetched,
            "infer_s": round(self.infer_s, 4),
            "fetches": self.fetches,
            "paced": self.paced,
        }


def count_unit(
    stats: WorkerStats,
    metrics: WorkerMetrics,
    items: Sequence[Item],
    failed: Mapping[TopicPartition, object],
    unit: StagedUnit,
) -> None:
    """Count a processed unit, and the results and dead letters of its partitions that committed
    (those in ``failed`` did not), in the stats and the metrics (``observe.py``)."""
    committed = [it for it in items if it.tp not in failed]
    stats.units += 1
    stats.close_reasons[unit.reason] += 1
    for item in committed:
        if item.error is None and item.envelope is not None and item.model is not None:
            stats.results += 1
        elif item.error is not None:
            stats.dead_letters[item.error.reason] += 1
    observe_committed(metrics, committed, unit.started_s, unit.replied_ms)


def write_ready_file(path: Path, node: str, region: str, partitions: int) -> None:
    """Say that this worker is ready: its models are loaded and ``partitions`` are assigned to it."""
    _write_atomically(
        path, json.dumps({"node": node, "region": region, "pid": os.getpid(), "partitions": partitions})
    )


def write_stats_file(path: Path, node: str, region: str, catalog: ModelCatalog, stats: WorkerStats) -> None:
    """Write the worker's counters, the versions it serves and the registry revisions it applied."""
    served = catalog.served_versions()
    document = {
        "node": node,
        "region": region,
        "served_versions": served,
        "registry_revisions": {name: catalog.revision(name) for name in served},
        "registry_refused": catalog.refused,
        **stats.as_dict(),
    }
    _write_atomically(path, json.dumps(document, indent=2))


def _write_atomically(path: Path, text: str) -> None:
    """Readers (the demo, the rollout controller) never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
