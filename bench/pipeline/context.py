"""What every phase of a run needs (``BenchContext``) and the progress display (``Ui``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from bench.pipeline.settings import BenchSettings
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.local.fleetreport import Progress as FleetProgress


@dataclass(slots=True)
class BenchContext:
    """What every phase needs."""

    settings: BenchSettings
    home: Path
    bootstrap: KafkaSettings
    """The broker, as ``admin`` over TLS (the bench's workers and echo run as super users; the devices
    as ``device-<region>``, within their ACLs)."""
    tls_root: Path | None
    keyring: KeyRing
    ui: Ui
    broker_pid: int
    run_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.run_dir = self.home / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)


class Ui:
    """Rich progress: one bar for the whole run, one for the fleet now sending."""

    def __init__(self, console: Console, phases: int) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
        )
        self._overall = self.progress.add_task("bench", total=phases)
        self._phase: TaskID | None = None

    def step(self, message: str) -> None:
        self.progress.console.log(message)

    def done_phase(self) -> None:
        self.progress.advance(self._overall)

    def fleet(self, label: str, duration_s: float) -> Callable[[FleetProgress], None]:
        if self._phase is not None:
            self.progress.remove_task(self._phase)
        task = self._phase = self.progress.add_task(label, total=duration_s)

        def update(p: FleetProgress) -> None:
            p99 = "-" if p.p99_ms is None else f"{p.p99_ms:.1f}"
            self.progress.update(
                task,
                completed=min(p.elapsed_s, p.duration_s),
                description=f"{label}: sent {p.sent}, answered {p.answered}, p99 {p99} ms",
            )

        return update

    def end_fleet(self) -> None:
        if self._phase is not None:
            self.progress.remove_task(self._phase)
            self._phase = None
