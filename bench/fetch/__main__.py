"""A paced fetch's CPU: the edge worker's own requests (``workers/edge/fetching.py``) against aiokafka's
consumer, the way the worker used it until 2026-12-07.

One real broker (TLS, as everywhere in the bench), a region's ingest topics (two kinds, three partitions
each), a producer in a process of its own sending ``--rate`` records a second spread over them, and in
another process one consumer of the six partitions fetching as the worker does under load: one fetch,
then the rest of ``--interval-ms`` waited out, then the next. ``aiokafka``: ``getmany`` with every
partition paused during the wait (its fetcher fetches in the background otherwise). ``worker``:
`Fetches`, aiokafka's consumer kept only for its client. The consumer process's CPU (user + system)
over ``--seconds`` is divided by the fetches that returned records. The two alternate for ``--rounds``
rounds; ``ratio`` is the medians' (aiokafka over worker). Writes ``bench/results/fetch.json`` and
``fetch.png``. About 25 s a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from aiokafka import AIOKafkaConsumer, TopicPartition

from edgestream.pipeline import kafka
from edgestream.pipeline.eventloop import run as run_loop
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.admin import ensure_topics
from edgestream.topics.catalogue import KINDS, all_topics, ingest_topic
from edgestream.workers.edge.fetching import Fetches
from edgestream.workers.local.broker.process import running_broker
from edgestream.workers.local.broker.settings import BrokerSettings

REGION: Final = "bench"
MODES: Final = ("aiokafka", "worker")
RESULTS_DIR: Final = Path(__file__).resolve().parents[1] / "results"
VALUE_BYTES: Final = 600
"""About a sealed embedding request's size."""
LONG_POLL_MS: Final = 500
"""The broker's wait for an empty fetch (the worker's ``fetch_max_wait_ms``)."""
TIMEOUT_S: Final = 0.1
"""How long one call waits for records (the worker's ``FETCH_TIMEOUT_MS``)."""


def _partitions() -> list[TopicPartition]:
    return [TopicPartition(ingest_topic(REGION, kind), p) for kind in KINDS for p in range(3)]


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


async def _produce(settings: KafkaSettings, rate_per_s: float, seconds: float) -> None:
    topics = [ingest_topic(REGION, kind) for kind in KINDS]
    async with kafka.started(kafka.producer(settings, "bench-fetch-producer")) as producer:
        print("producing", flush=True)  # the parent starts the consumer on this line
        value, sent, start = os.urandom(VALUE_BYTES), 0, time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            while sent < int(elapsed * rate_per_s):
                await producer.send(topics[sent % len(topics)], value, key=b"device-%d" % (sent % 64))
                sent += 1
            await asyncio.sleep(0.001)
        await producer.flush()


async def _at_end(consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
    tps = _partitions()
    consumer.assign(tps)
    ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    for tp, end in ends.items():
        consumer.seek(tp, end)
    return ends


async def _consume(settings: KafkaSettings, mode: str, seconds: float, interval_s: float) -> dict[str, Any]:
    consumer = kafka.consumer(settings, "bench-fetch-consumer", fetch_max_wait_ms=LONG_POLL_MS)
    async with kafka.started(consumer):
        ends = await _at_end(consumer)
        fetches: Fetches | None = None
        if mode == "worker":
            consumer.pause(*ends)
            fetches = Fetches(consumer, max_wait_ms=LONG_POLL_MS)
            for tp, end in ends.items():
                fetches.seek(tp, end)
        count = records = 0
        last_s = -1.0
        start_s, start_cpu = time.monotonic(), _cpu_s()
        while time.monotonic() - start_s < seconds:
            wait_s = last_s + interval_s - time.monotonic()
            if fetches is None:
                if wait_s > 0:
                    consumer.pause(*ends)
                    await asyncio.sleep(wait_s)
                    consumer.resume(*ends)
                got = await consumer.getmany(timeout_ms=int(TIMEOUT_S * 1000), max_records=500)
            else:
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                got = await fetches.fetch(TIMEOUT_S, 500)
            n = sum(map(len, got.values()))
            if n:
                count, records, last_s = count + 1, records + n, time.monotonic()
        cpu_s = _cpu_s() - start_cpu
        if fetches is not None:
            await fetches.close()
    return {
        "mode": mode,
        "fetches": count,
        "records": records,
        "cpu_s": round(cpu_s, 4),
        "ms_per_fetch": round(1000.0 * cpu_s / max(1, count), 4),
        "records_per_fetch": round(records / max(1, count), 2),
    }


def _side(args: argparse.Namespace) -> None:
    """A child process: ``produce`` or a consumer ``mode``; prints one JSON line."""
    settings = KafkaSettings.model_validate_json(os.environ["BENCH_FETCH_KAFKA"])
    if args.mode == "produce":
        run_loop(_produce(settings, args.rate, args.seconds))
        return
    print(json.dumps(run_loop(_consume(settings, args.mode, args.seconds, args.interval_ms / 1000.0))))


def measure(rounds: int, rate_per_s: float, seconds: float, interval_ms: float) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with running_broker(BrokerSettings(home=Path(tempfile.mkdtemp(prefix="fetchbench-")))) as state:
        settings = state.kafka()
        run_loop(ensure_topics(settings, all_topics([REGION])))
        env = {**os.environ, "BENCH_FETCH_KAFKA": settings.model_dump_json()}
        side = [sys.executable, "-m", "bench.fetch", "side"]
        common = ["--rate", str(rate_per_s), "--interval-ms", str(interval_ms)]
        for i in range(rounds):
            for mode in MODES if i % 2 == 0 else MODES[::-1]:
                producer = subprocess.Popen(
                    [*side, "produce", *common, "--seconds", str(seconds + 4)],
                    env=env,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                assert producer.stdout is not None
                if producer.stdout.readline().strip() != "producing":
                    raise RuntimeError(f"the producer did not start (exit {producer.wait()})")
                out = subprocess.run(
                    [*side, mode, *common, "--seconds", str(seconds)], env=env, capture_output=True, text=True
                )
                producer.wait()
                if out.returncode != 0:
                    raise RuntimeError(f"{mode} failed: {out.stderr[-2000:]}")
                run = json.loads(out.stdout.strip().splitlines()[-1])
                runs[mode].append(run)
                print(
                    f"round {i + 1}/{rounds} {mode:9s} {run['ms_per_fetch']:.3f} ms of CPU a fetch, "
                    f"{run['records_per_fetch']} records a fetch",
                    flush=True,
                )
    medians = {mode: statistics.median(r["ms_per_fetch"] for r in runs[mode]) for mode in MODES}
    return {
        "config": {
            "rounds": rounds,
            "rate_per_s": rate_per_s,
            "seconds": seconds,
            "interval_ms": interval_ms,
            "partitions": len(_partitions()),
            "value_bytes": VALUE_BYTES,
        },
        "runs": runs,
        "median_ms_per_fetch": medians,
        "ratio": medians["aiokafka"] / medians["worker"],
    }


def plot(report: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for x, mode in enumerate(MODES):
        values = [r["ms_per_fetch"] for r in report["runs"][mode]]
        ax.scatter([x] * len(values), values, label=mode)
        ax.hlines(report["median_ms_per_fetch"][mode], x - 0.25, x + 0.25)
    ax.set_xticks(
        range(len(MODES)), ["aiokafka's consumer (paused while waiting)", "the worker's own fetches"]
    )
    ax.set_ylim(bottom=0)
    ax.set_ylabel("ms of CPU per fetch (runs; line: median)")
    config = report["config"]
    ax.set_title(
        f"A paced fetch: {config['rate_per_s']:.0f} records/s, a fetch every {config['interval_ms']:g} ms, "
        f"{config['partitions']} partitions"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("side", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("mode", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both")
    parser.add_argument("--rate", type=float, default=1000.0, help="records a second")
    parser.add_argument("--seconds", type=float, default=15.0, help="each consumer's measured run")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="the pacing interval")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.side == "side":
        _side(args)
        return
    print(f"bench.fetch: {args.rounds} rounds of {args.seconds:g} s per mode at {args.rate:g} records/s")
    report = measure(args.rounds, args.rate, args.seconds, args.interval_ms)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fetch.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "fetch.png")
    print(json.dumps({"median_ms_per_fetch": report["median_ms_per_fetch"], "ratio": report["ratio"]}))
    print(f"wrote {args.out / 'fetch.json'} and fetch.png")


if __name__ == "__main__":
    main()
