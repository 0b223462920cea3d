"""Sums a profiled run's samples into buckets of what the CPU was spent on.

Each stack (root first) is put in one bucket: tracing and metrics when any frame is theirs (the span
or counter is the cost, wherever it is called from); else the innermost frame that belongs to a
*domain* (TLS, the transaction and offset commit, aiokafka's producer or consumer, the worker's
admission, inference and outputs, the fleet) names it, frames of shared plumbing (aiokafka's
connection, protocol and record code, asyncio, our contract and crypto helpers) passed over so that
they count for whoever called them; a stack with nothing but plumbing is aiokafka's connection (its
reader task: responses, metadata) or the event loop (uvloop's C and its TLS, callbacks) or other.
``perf``'s own report splits the same processes' CPU by library.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any, Final

TRACING: Final = (
    "opentelemetry/",
    "prometheus_client/",
    "pipeline/observability/",
    "workers/edge/observe.py",
    "workers/edge/tracing.py",
)
DOMAINS: Final = (
    ("ssl", ("ssl.py:", "asyncio/sslproto.py")),
    (
        "transactions/commit",
        (
            "aiokafka/producer/transaction_manager.py",
            "workers/edge/txnsink.py",
            "workers/edge/commits.py",
            "workers/edge/offsets.py",
            "workers/offsets.py",
            "workers/edge/positioning.py",
        ),
    ),
    ("aiokafka produce/send", ("aiokafka/producer/",)),
    ("aiokafka fetch/decode", ("aiokafka/consumer/",)),
    ("worker: admission", ("workers/edge/admission.py", "workers/edge/replaymemory.py")),
    ("worker: inference", ("workers/edge/inference.py", "pipeline/inference", "onnxruntime/")),
    (
        "worker: outputs and replies",
        (
            "workers/edge/outputs.py",
            "workers/edge/replies.py",
            "workers/edge/sealing.py",
            "workers/edge/sinks.py",
        ),
    ),
    (
        "worker: unit loop and batching",
        ("workers/edge/worker.py", "workers/edge/service.py", "pipeline/batching"),
    ),
    ("fleet: devices (seal, open, send, time)", ("workers/local/fleet.py", "edgestream/device/", "device/")),
    ("bench harness", ("bench/pipeline/",)),
)
CONNECTION: Final = ("aiokafka/conn.py", "aiokafka/client.py", "asyncio/streams.py")
LOOP: Final = ("asyncio/runners.py", "asyncio/base_events.py", "asyncio/events.py", "uvloop/", "threading.py")


def bucket_of(frames: list[str]) -> str:
    """The bucket of one stack (``frames`` root first, ``thread:<name>`` first of all)."""
    if any(t in f for f in frames for t in TRACING):
        return "metrics/tracing"
    for frame in reversed(frames):
        for name, marks in DOMAINS:
            if any(m in frame for m in marks):
                return name
    if any(c in f for f in frames for c in CONNECTION):
        return "aiokafka connection (reader task, metadata)"
    if all(f.startswith("thread:") or any(x in f for x in LOOP) for f in frames):
        return "event loop (uvloop C, its TLS, callbacks)"
    return "other"


def read_collapsed(path: Path) -> dict[str, float]:
    """Seconds of CPU per bucket in one collapsed-stacks file."""
    out: defaultdict[str, float] = defaultdict(float)
    for line in path.read_text().splitlines():
        stack, _, us = line.rpartition(" ")
        if stack:
            out[bucket_of(stack.split(";"))] += int(us) / 1e6
    return dict(out)


def top_leaves(path: Path, n: int = 25) -> list[tuple[str, float]]:
    """The ``n`` innermost frames with the most CPU (seconds)."""
    out: defaultdict[str, float] = defaultdict(float)
    for line in path.read_text().splitlines():
        stack, _, us = line.rpartition(" ")
        if stack:
            out[stack.split(";")[-1]] += int(us) / 1e6
    return sorted(out.items(), key=lambda kv: -kv[1])[:n]


_PERF_LINE: Final = re.compile(r"^\s*([\d.]+)%\s+(\S.*?)\s*$")


def perf_split(data: Path, key: str = "dso") -> dict[str, float]:
    """Shares of ``perf record``'s samples per ``key`` (``dso``: library), from ``perf report``."""
    perf = shutil.which("perf")
    if perf is None or not data.exists():
        return {}
    text = subprocess.run(
        [perf, "report", "-i", str(data), "--no-children", "--sort", key, "--stdio", "-g", "none"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    shares: dict[str, float] = {}
    for line in text.splitlines():
        m = _PERF_LINE.match(line)
        if m and not line.lstrip().startswith("#"):
            shares[m.group(2)] = float(m.group(1)) / 100
    return shares


def report(profile_dir: Path, requests: int | None = None) -> dict[str, Any]:
    """Per process sampled in ``profile_dir`` (one folder per load): CPU seconds and, given the
    requests sent, ms per request, per bucket; the sampler's facts; perf's split by library (perf's
    file is rewritten by each attempt, so it is the last one's too)."""
    out: dict[str, Any] = {}
    for load_dir in sorted(p for p in profile_dir.iterdir() if p.is_dir()):
        per_load: dict[str, Any] = {}
        # A load run again (disturbed) leaves a window per attempt: the last one is the load kept.
        for collapsed in sorted(load_dir.glob("*.collapsed"), key=lambda p: p.stat().st_mtime):
            role = collapsed.name.split("-")[0]
            facts = json.loads(collapsed.with_suffix(".json").read_text())
            buckets = dict(sorted(read_collapsed(collapsed).items(), key=lambda kv: -kv[1]))
            sampled = sum(buckets.values())
            entry: dict[str, Any] = {
                **facts,
                "unsampled_cpu_s": facts["process_cpu_s"] - sampled - facts["sampler_cpu_s"],
                "buckets_cpu_s": buckets,
                "buckets_share": {k: v / sampled for k, v in buckets.items()} if sampled else {},
                "top_leaves_cpu_s": dict(top_leaves(collapsed)),
                "perf_dso_share": perf_split(load_dir / f"{role}.perf.data"),
            }
            if requests:
                entry["buckets_ms_per_request"] = {k: 1e3 * v / requests for k, v in buckets.items()}
            per_load[role] = entry
        out[load_dir.name] = per_load
    return out
