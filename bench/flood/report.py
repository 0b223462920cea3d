"""The run's summary table, for the terminal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}" if v >= 10 else f"{v:.1f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _recovered(region: Mapping[str, Any]) -> str:
    recovery = region.get("recovery")
    if not recovery:
        return ""
    after = recovery["recovered_after_s"]
    return "never" if after is None else f"{after:g} s"


def table(document: Mapping[str, Any]) -> Table:
    """One row per phase and region: the honest devices' figures, their worker's, the flooder's."""
    t = Table(title="flood: honest device round trips per phase and region")
    for name in (
        "phase",
        "region",
        "sent",
        "answered",
        "p50 ms",
        "p99 ms",
        "<=50 ms",
        "<=deadline",
        "worker cores",
        "worker ms/req",
        "backlog",
        "flooder rec/s",
        "flooder MB/s",
        "broker cores",
        "recovered after",
    ):
        t.add_column(name, justify="left" if name in ("phase", "region") else "right")
    for phase in document["phases"]:
        flood = phase.get("flooder") or {}
        for i, (region, r) in enumerate(phase["regions"].items()):
            first = i == 0
            t.add_row(
                phase["phase"] if first else "",
                region,
                str(r["sent"]),
                _pct(r["answered_share"]),
                _ms(r["p50_ms"]),
                _ms(r["p99_ms"]),
                _pct(r["within_sla_share"]),
                _pct(r["within_deadline_share"]),
                f"{r['worker_cores']:.2f}",
                _ms(r["worker_ms_per_honest_request"]),
                f"{r['backlog_at_window_end']:,}",
                f"{flood['acked_per_s']:,.0f}" if flood and first else "",
                f"{flood['acked_bytes_per_s'] / 1e6:.2f}" if flood and first else "",
                f"{phase['cpu_cores'].get('broker', 0.0):.2f}" if first else "",
                _recovered(r),
            )
    return t
