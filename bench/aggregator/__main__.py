"""``python -m bench.aggregator``: the aggregator's CPU per record and the lag of its event loop at the
demo's rate, before (drift thresholds simulated on the loop, the old per-record steps) and after
(thresholds off the loop, today's steps), side by side in one process (``replay.py``), into
``bench/results/aggregator.json`` and ``aggregator.png`` (about 3.5 minutes per round with the default
60 s replays)."""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.aggregator.replay import MODES, Setting, replay
from edgestream.pipeline.learning.calibration import SIMULATED_DRAWS

DEFAULT = Setting()
"""The demo's shape."""
RESULTS = Path(__file__).resolve().parents[1] / "results"
"""Where the JSON and the plot go by default."""


def _cpu_stolen_s() -> float:
    """Seconds of CPU the hypervisor stole from this machine so far (``/proc/stat``)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        return int(fields[8]) / 100.0
    except (OSError, IndexError, ValueError):
        return 0.0


def run(setting: Setting, rounds: int) -> dict[str, Any]:
    """``rounds`` of every mode, alternating, on the same stream."""
    runs: list[dict[str, Any]] = []
    for r in range(rounds):
        for mode in MODES if r % 2 == 0 else tuple(reversed(MODES)):
            stolen, started = _cpu_stolen_s(), time.monotonic()
            measured = asyncio.run(replay(mode, setting))
            runs.append(
                {
                    "round": r,
                    **measured.to_dict(),
                    "wall_s": round(time.monotonic() - started, 1),
                    "steal_s": round(_cpu_stolen_s() - stolen, 1),
                }
            )
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "flags"}))
    return {
        "what": "aggregator per-record work and drift judgement replayed at the demo's rate, no faust",
        "setting": _setting(setting),
        "simulated_draws": SIMULATED_DRAWS,
        "machine": platform.node(),
        "runs": runs,
        "summary": _summary(runs),
    }


def _setting(setting: Setting) -> dict[str, Any]:
    return {name: getattr(setting, name) for name in Setting.__slots__}


def _mean(runs: list[dict[str, Any]], *path: str) -> float:
    """The mean over ``runs`` of the figure at ``path``."""
    values: list[float] = []
    for run_ in runs:
        value: Any = run_
        for name in path:
            value = value[name]
        values.append(float(value))
    return round(sum(values) / len(values), 4)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode, the mean of its rounds' figures, and whether the modes' decisions agree."""
    out: dict[str, Any] = {}
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        out[mode] = {
            "process_cpu_ms_per_record": _mean(mine, "process_cpu_ms_per_record"),
            "loop_cpu_ms_per_record": _mean(mine, "loop_cpu_ms_per_record"),
            "loop_lag_max_ms": _mean(mine, "loop_lag_ms", "max"),
            "loop_lag_p99_ms": _mean(mine, "loop_lag_ms", "p99"),
            "simulations": _mean(mine, "simulations"),
        }
        flagged = [r["first_flag_after_shift_s"] for r in mine if r["first_flag_after_shift_s"] is not None]
        out[mode]["first_flag_after_shift_s"] = flagged
    # A window is compared where every run last judged it at the same counts (feature samples and
    # scores: runs judge at the counts their timers found; equal counts, equal decisions is what
    # tests/workers/aggregator/test_thresholds.py proves).
    both = [r["flags"] for r in runs]
    common = set.intersection(*(set(f) for f in both)) if both else set()
    same = [k for k in common if len({tuple(f[k][1:]) for f in both}) == 1]
    out["windows_judged_at_the_same_count"] = len(same)
    out["decisions_differ"] = sorted(k for k in same if len({f[k][0] for f in both}) > 1)
    return out


def plot(document: dict[str, Any], path: Path) -> None:
    """Bars per mode: CPU ms per record (process, loop) and loop lag (p99, max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = document["summary"]
    fig, (cpu, lag) = plt.subplots(1, 2, figsize=(10, 4))
    x = range(len(MODES))
    cpu.bar(
        [i - 0.2 for i in x], [summary[m]["process_cpu_ms_per_record"] for m in MODES], 0.4, label="process"
    )
    cpu.bar(
        [i + 0.2 for i in x], [summary[m]["loop_cpu_ms_per_record"] for m in MODES], 0.4, label="event loop"
    )
    cpu.set_xticks(list(x), list(MODES))
    cpu.set_ylabel("CPU ms per record")
    cpu.set_title("aggregator CPU per record")
    cpu.legend()
    lag.bar([i - 0.2 for i in x], [summary[m]["loop_lag_p99_ms"] for m in MODES], 0.4, label="p99")
    lag.bar([i + 0.2 for i in x], [summary[m]["loop_lag_max_ms"] for m in MODES], 0.4, label="max")
    lag.set_xticks(list(x), list(MODES))
    lag.set_yscale("log")
    lag.set_ylabel("event-loop lag (ms)")
    lag.set_title("event-loop lag (10 ms probe)")
    lag.legend()
    fig.suptitle("aggregator replayed at the demo's rate: before vs after (thresholds off the loop)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run, write the JSON and the plot, print where."""
    parser = argparse.ArgumentParser(prog="python -m bench.aggregator", description=__doc__)
    parser.add_argument("--duration-s", type=float, default=DEFAULT.duration_s)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    document = run(replace(DEFAULT, duration_s=args.duration_s), args.rounds)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "aggregator.json").write_text(json.dumps(document, indent=1) + "\n")
    plot(document, args.out_dir / "aggregator.png")
    print(f"wrote {args.out_dir / 'aggregator.json'} and aggregator.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
