"""``python -m bench.devicefaults``: devices (``EdgeClient`` over ``GatewayTransport``) calling steadily
with a deadline through two regions' real gateway and worker processes on a local TLS broker, while:

1. the nearest region's worker is killed (SIGKILL) and, ``outage_s`` later, started again: every call is
   answered (by the fallback while the edge cannot), and the edge answers again once the new worker has
   its partitions;
2. that region's gateway is killed (SIGKILL): each device fails over to the next nearest region after
   ``session_timeout_s`` (the SDK's setting) and that region's edge answers it.

Writes ``bench/results/devicefaults.json`` (the figures of ``figures.py``: who answered in each phase,
the fallback's share and reasons, answers past the deadline, when the edge answered again, each
device's failover time, calls left unanswered (lost), duplicate reply copies the devices dropped, the
devices' event-loop lateness, every mark) and ``devicefaults.png`` (answers per second by who answered, the
faults marked). Settings from ``EDGESTREAM_DEVICEFAULTS_*``; ``python -m bench.devicefaults plot``
redraws the PNG. About two minutes on the 2-core box.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bench import RESULTS_DIR
from bench.devicefaults.calls import Call
from bench.devicefaults.figures import answers, failover_s, first_edge_after, spread, started_in, timeline
from bench.devicefaults.run import FaultRun
from bench.devicefaults.stack import DeviceStack, prepare_models
from bench.faults.env import FaultEnv
from edgestream.device.answers import ClientSettings
from edgestream.workers.local.broker.process import LocalBroker
from edgestream.workers.local.broker.settings import BrokerSettings

log = logging.getLogger("bench.devicefaults")

MARKED = ("worker SIGKILL", "worker started again", "worker ready", "gateway SIGKILL")
"""The marks the plot draws."""


class DeviceFaultsSettings(BaseSettings):
    """Settings of ``python -m bench.devicefaults`` (``EDGESTREAM_DEVICEFAULTS_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_DEVICEFAULTS_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    devices: int = Field(default=8, ge=1)
    """Devices, each calling steadily; all start on the nearest region."""
    rate_per_s: float = Field(default=5.0, gt=0)
    """Calls per second per device."""
    deadline_ms: float = Field(default=250.0, gt=0)
    """Each call's deadline."""
    session_timeout_s: float = Field(default=ClientSettings().session_timeout_s, gt=0)
    """The SDK's: how long a dropped session may take to come back before failover."""
    steady_s: float = Field(default=10.0, ge=1)
    """Calls before the first fault and after each recovery."""
    outage_s: float = Field(default=10.0, ge=0)
    """How long the worker stays down."""
    out_dir: Path = RESULTS_DIR
    """Where ``devicefaults.json`` and ``.png`` go."""


async def measure(settings: DeviceFaultsSettings, home: Path) -> dict[str, Any]:
    """Start the broker and the stack, run the faults, return the JSON document."""
    await asyncio.to_thread(prepare_models, home)
    broker = LocalBroker(BrokerSettings(home=home / "kafka"))
    state = await asyncio.to_thread(broker.start, 120)
    try:
        env = FaultEnv(
            bootstrap=state.kafka(),
            home=home,
            run_dir=home / "run",
            served_versions={},
            tls_root=state.tls_root,
            on_event=lambda message: log.info("%s", message),
        )
        device_ids = [f"phone-{i:02d}" for i in range(settings.devices)]
        stack = await DeviceStack.create(env, 2, device_ids)
        try:
            await stack.start()
            return await _faults(stack, device_ids, settings)
        finally:
            await stack.close()
    finally:
        await asyncio.to_thread(broker.stop)


async def _faults(stack: DeviceStack, device_ids: list[str], s: DeviceFaultsSettings) -> dict[str, Any]:
    near, far = stack.regions
    client_settings = ClientSettings(session_timeout_s=s.session_timeout_s)
    run = FaultRun(stack)
    await run.start_devices(device_ids, client_settings, rate_per_s=s.rate_per_s, deadline_ms=s.deadline_ms)
    await run.wait_edge(near.name, 0.0, every_device=True)
    steady_from_s = run.mark("the edge answered every device")
    await asyncio.sleep(s.steady_s)

    duplicated = {"before_the_worker_kill": run.duplicates()}
    killed_s, exited_s = await run.stop_worker(near, signal.SIGKILL)
    await asyncio.sleep(s.outage_s)
    restarted_s, ready_s = await run.restart_worker(near)
    await run.wait_edge(near.name, restarted_s, every_device=True)
    back_s = run.mark("edge answers every device again")
    reconciled_by_then = run.reconciled()
    await asyncio.sleep(s.steady_s)
    duplicated["before_the_gateway_kill"] = run.duplicates()

    gateway_killed_s = run.kill_gateway(near)
    await run.wait_edge(far.name, gateway_killed_s, every_device=True)
    run.mark(f"every device answered by {far.name}")
    await asyncio.sleep(s.steady_s)
    calls = await run.finish()
    duplicated["at_the_end"] = run.duplicates()
    return _document(
        run,
        calls,
        s,
        near.name,
        far.name,
        {
            "steady_from_s": steady_from_s,
            "worker_killed_s": killed_s,
            "worker_exited_s": exited_s,
            "worker_restarted_s": restarted_s,
            "worker_ready_s": ready_s,
            "edge_back_every_device_s": back_s,
            "gateway_killed_s": gateway_killed_s,
        },
        reconciled_by_then,
        duplicated,
    )


def _document(
    run: FaultRun,
    calls: list[Call],
    s: DeviceFaultsSettings,
    near: str,
    far: str,
    at: dict[str, float],
    reconciled_by_then: int,
    duplicated: dict[str, int],
) -> dict[str, Any]:
    deadline = s.deadline_ms
    restarted, ready = at["worker_restarted_s"], at["worker_ready_s"]
    first_back = first_edge_after(calls, near, restarted)
    killed = at["gateway_killed_s"]
    failovers = failover_s(calls, killed, near)
    failed_over_by = max((t for t in failovers.values() if t is not None), default=0.0)
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": s.model_dump(mode="json", exclude={"out_dir"}),
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "bench_process_cpu_s": round(time.process_time(), 1),
        },
        "regions": {"near": near, "far": far},
        "marks": [{"t_s": round(m.t_s, 3), "what": m.what} for m in run.marks],
        "at_s": {k: round(v, 3) for k, v in at.items()},
        "steady": answers(started_in(calls, at["steady_from_s"], at["worker_killed_s"]), deadline),
        "worker_outage": {
            "signal": "SIGKILL",
            "down_s": round(restarted - at["worker_exited_s"], 3),
            "while_down": answers(started_in(calls, at["worker_exited_s"], restarted), deadline),
            "loop_lateness_ms_while_down": spread_ms(run.lateness, at["worker_exited_s"], restarted),
            "until_edge_back": answers(
                started_in(calls, at["worker_exited_s"], first_back or restarted), deadline
            ),
            "worker_ready_after_start_s": round(ready - restarted, 3),
            "first_edge_answer_after_start_s": None
            if first_back is None
            else round(first_back - restarted, 3),
            "first_edge_answer_after_ready_s": None if first_back is None else round(first_back - ready, 3),
            "every_device_back_after_start_s": round(at["edge_back_every_device_s"] - restarted, 3),
            "late_edge_answers_reconciled": reconciled_by_then,
        },
        "gateway_failover": {
            "signal": "SIGKILL",
            "session_timeout_s": s.session_timeout_s,
            "failover_s_by_device": failovers,
            "failover_s": spread(failovers.values()),
            "until_failed_over": answers(started_in(calls, killed, killed + failed_over_by), deadline),
            "failovers": run.failovers(),
        },
        "loop_lateness_ms": spread_ms(run.lateness, 0.0, float("inf")),
        "overall": {
            **answers(calls, deadline),
            "duplicated": run.duplicates(),
            "duplicated_so_far": duplicated,
            "late_edge_answers_reconciled": run.reconciled(),
        },
        "timeline": timeline(calls),
    }


def spread_ms(samples: list[tuple[float, float]], start_s: float, end_s: float) -> dict[str, float] | None:
    """p50, p99 and max of the lateness samples taken in ``[start_s, end_s)``."""
    values = [ms for t, ms in samples if start_s <= t < end_s]
    if not values:
        return None
    return {
        "p50": round(float(np.percentile(values, 50)), 2),
        "p99": round(float(np.percentile(values, 99)), 2),
        "max": round(max(values), 2),
    }


def plot(document: dict[str, Any], out: Path) -> None:
    """Answers per second, stacked by who answered, with the faults marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    line = document["timeline"]
    t = line["t_s"]
    near, far = document["regions"]["near"], document["regions"]["far"]
    series = [
        (f"edge:{near}", "edge, nearest region", "tab:blue"),
        (f"edge:{far}", "edge, next nearest region", "tab:green"),
        ("fallback", "local fallback", "tab:orange"),
    ]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    bottom = [0] * len(t)
    for key, label, colour in series:
        values = line.get(key, [0] * len(t))
        ax.bar(t, values, width=1.0, align="edge", bottom=bottom, label=label, color=colour)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    top = max(bottom or [1])
    ax.set_ylim(0, top * 1.45)
    for mark in document["marks"]:
        if mark["what"] in MARKED:
            ax.axvline(mark["t_s"], color="black", linestyle="--", linewidth=0.8)
            ax.text(mark["t_s"], top * 1.03, mark["what"], rotation=90, va="bottom", ha="right", fontsize=8)
    o, g = document["worker_outage"], document["gateway_failover"]
    ax.set_title(
        f"{document['settings']['devices']} devices, {document['settings']['deadline_ms']:g} ms deadline: "
        f"fallback share while the worker was down {o['while_down']['fallback_share']:.0%}, "
        f"failover p50 {g['failover_s']['p50']} s / max {g['failover_s']['max']} s, "
        f"lost {document['overall']['lost']}, duplicated {document['overall']['duplicated']}",
        fontsize=9,
    )
    ax.set_xlabel("seconds into the run (by when the answer came)")
    ax.set_ylabel("answers per second")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Run (or, with ``plot``, redraw the PNG from the JSON)."""
    args = sys.argv[1:] if argv is None else argv
    settings = DeviceFaultsSettings()
    out = settings.out_dir / "devicefaults.json"
    if args[:1] == ["plot"]:
        plot(json.loads(out.read_text()), out.with_suffix(".png"))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="devicefaults-") as home:
        document = asyncio.run(measure(settings, Path(home)))
    document["wall_s"] = round(time.monotonic() - started, 1)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n")
    plot(document, out.with_suffix(".png"))
    summary = {k: document[k] for k in ("worker_outage", "gateway_failover", "overall")}
    json.dump(summary, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
