"""A worker outage in the demo: one region's edge worker stopped while the fleet sends, then started again.

``edgestream demo --no-story --worker-outage SECONDS`` (``DemoSettings.outage``; off by default, so the
default demo's numbers are the steady state's). ``start_s`` after the fleet starts sending, the
region's worker process is sent ``signal`` and waited for; ``duration_s`` after the signal it is
started again with the same settings (``DemoWorkers.restart``) and waited for until ready. The times
are kept on the fleet's clock (unix seconds, like its round trips' capture times), so the summary
(``outage_summary.py``) can tell which calls were captured while the region's edge could not answer,
who answered them, and when the edge answered again.

SIGKILL is the default: a worker that crashes, or whose machine dies, gets no chance to finish its
unit, commit, or leave its consumer group, and that is the case a device's fallback exists for (the
restarted worker, under a node id of its own, reads its partitions only once the dead member's 10 s
session has expired and the broker has aborted its open transaction, 10 s as well).
SIGTERM is the gentle one: the worker finishes its in-flight unit and leaves its group, so the
restarted one gets its partitions at once.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from edgestream.workers.local.demo_workers import DemoWorkers

OutageSignal = Literal["SIGKILL", "SIGTERM"]
"""How the worker is stopped: killed (a crash), or asked to stop (a deploy, a drained node)."""


class WorkerOutage(BaseModel):
    """A worker outage the demo injects (``EDGESTREAM_DEMO_OUTAGE__*``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    duration_s: float = Field(gt=0)
    """How long the worker stays down: from the signal to its restart."""
    start_s: float = Field(default=10.0, ge=0)
    """When the worker is stopped, seconds after the fleet starts sending: the edge's steady state
    comes first, to compare with."""
    region: str | None = None
    """The region whose worker is stopped; None: the demo's first region."""
    signal: OutageSignal = "SIGKILL"
    """SIGKILL (the default: a crash, no unit finished, no group left) or SIGTERM (a clean stop)."""


@dataclass(frozen=True, slots=True)
class OutageTimes:
    """What the episode did and when, in unix seconds (the fleet's clock)."""

    region: str
    signal: OutageSignal
    signalled_at: float
    """When the worker was sent the signal."""
    exited_at: float
    """When it had exited."""
    exit_code: int
    restarted_at: float
    """When the new worker process was started."""
    ready_at: float
    """When the new worker had loaded its models and had partitions (its ready file)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON types."""
        return asdict(self)


async def run_outage(
    outage: WorkerOutage, region: str, workers: DemoWorkers, ready_timeout_s: float
) -> OutageTimes:
    """Wait ``start_s``, stop ``region``'s worker with the signal, start it again ``duration_s`` after
    the signal, wait until it is ready; the times. Raises ``ChildFailed`` when the new worker exits or
    is not ready in ``ready_timeout_s``."""
    await asyncio.sleep(outage.start_s)
    signalled_at = time.time()
    exit_code = await workers.stop(region, signal.Signals[outage.signal])
    exited_at = time.time()
    await asyncio.sleep(max(0.0, signalled_at + outage.duration_s - time.time()))
    restarted_at = time.time()
    await workers.restart(region, ready_timeout_s)
    return OutageTimes(region, outage.signal, signalled_at, exited_at, exit_code, restarted_at, time.time())
