"""The run's summary tables, for the terminal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}" if v >= 10 else f"{v:.1f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _int(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


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
        "told throttle ms",
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
                _int(r.get("producer_throttle_max_ms")),
            )
    return t


def recovery_table(document: Mapping[str, Any]) -> Table | None:
    """One row per recovery phase and region: how soon its honest devices were answered in time again
    after the flood's end, the throttles their producer was told, the flooded region's backlog, the
    flooder's throttle; None without a recovery phase."""
    phases = [p for p in document["phases"] if p.get("recovery")]
    if not phases:
        return None
    t = Table(title="flood: recovery after a short flood (s after the flood's end)")
    for name in (
        "phase",
        "region",
        "flood s",
        "recovered after",
        "told throttle ms",
        "... after flood",
        "last told after s",
        "backlog at flood end",
        "backlog at window end",
        "drained/s",
        "cleared after s (est.)",
        "flooder told ms",
        "flooder stop s",
    ):
        t.add_column(name, justify="left" if name in ("phase", "region") else "right")
    for phase in phases:
        rec = phase["recovery"]
        flood = phase.get("flooder") or {}
        for i, (region, r) in enumerate(phase["regions"].items()):
            first = i == 0
            own = r.get("recovery") or {}
            t.add_row(
                phase["phase"] if first else "",
                region,
                _s(rec["flood_s"]) if first else "",
                _recovered(r),
                _int(r.get("producer_throttle_max_ms")),
                _int(own.get("producer_throttle_max_ms_after_flood")),
                _s(own.get("producer_last_throttled_after_s")),
                _int(rec["flooded_backlog_at_flood_end"]) if first else "",
                _int(rec["flooded_backlog_at_window_end"]) if first else "",
                _int(rec["drain_per_s"]) if first else "",
                ("in window" if rec.get("cleared_in_window") else _s(rec["cleared_after_s_estimate"]))
                if first
                else "",
                _int(flood.get("throttle_cb_max_ms")) if first else "",
                _s(rec["stop"]["signal_to_exit_s"]) if first else "",
            )
    return t
