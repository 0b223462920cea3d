"""``python -m bench.partitioner``: µs of CPU per partition choice for a keyed record, aiokafka's
``DefaultPartitioner`` (pure-Python murmur2 on every call) against ``memo_partitioner`` (the hash
remembered per key, ``pipeline/contract/partitioner.py``), for fleets of 1,000 to 200,000 devices
(past ``MEMO_LIMIT`` distinct keys the memo starts over, so the last size shows the worst case).
Writes ``bench/results/partitioner.json`` and ``partitioner.png``; a few seconds."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from aiokafka.partitioner import DefaultPartitioner

from edgestream.pipeline.contract import partitioner

FLEETS: Final = (1_000, 10_000, 200_000)
"""Distinct device ids drawn from."""
CALLS: Final = 200_000
"""Partition choices timed per case (device ids drawn uniformly, as a fleet's requests arrive)."""
PARTITIONS: Final = list(range(12))
"""The topic's partitions."""
OUT: Final = Path(__file__).resolve().parents[1] / "results"
"""Where the JSON and the plot go."""

Choose = Callable[[bytes, list[int], list[int]], int]


def _cpu_us(choose: Choose, keys: list[bytes]) -> float:
    """CPU µs per call of ``choose`` over ``keys`` (process time: other load on the box is not counted)."""
    started = time.process_time()
    for key in keys:
        choose(key, PARTITIONS, PARTITIONS)
    return (time.process_time() - started) / len(keys) * 1e6


def main() -> None:
    """Time both partitioners per fleet size, check they agree, write JSON and the plot."""
    rng = random.Random(7)
    default: Choose = DefaultPartitioner()
    rows = []
    for fleet in FLEETS:
        ids = [f"device-{i:06d}".encode() for i in range(fleet)]
        keys = [rng.choice(ids) for _ in range(CALLS)]
        memo_choice = partitioner.memo_partitioner
        sample = keys[:5000]
        if any(default(k, PARTITIONS, PARTITIONS) != memo_choice(k, PARTITIONS, PARTITIONS) for k in sample):
            raise SystemExit("the memo partitioner disagrees with aiokafka's")
        partitioner._memo.clear()  # start cold: the first sight of each key is in the timing
        memo = _cpu_us(partitioner.memo_partitioner, keys)
        plain = _cpu_us(default, keys)
        rows.append({"devices": fleet, "aiokafka_us": round(plain, 3), "memo_us": round(memo, 3),
                     "ratio": round(plain / memo, 1)})  # fmt: skip
        print(f"{fleet:>7} devices: aiokafka {plain:.2f} us, memo {memo:.2f} us per choice")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "partitioner.json").write_text(json.dumps({"calls": CALLS, "rows": rows}, indent=2) + "\n")
    _plot(rows, OUT / "partitioner.png")


def _plot(rows: list[dict[str, float]], path: Path) -> None:
    labels = [f"{int(r['devices']):,} devices" for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([x - 0.2 for x in xs], [r["aiokafka_us"] for r in rows], 0.4, label="aiokafka DefaultPartitioner")
    ax.bar([x + 0.2 for x in xs], [r["memo_us"] for r in rows], 0.4, label="memo_partitioner")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("CPU µs per partition choice")
    ax.set_title("Partition choice for a keyed record")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
