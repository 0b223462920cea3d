"""A real Prometheus (Debian's ``prometheus``) scrapes a running worker during traffic: its query results
equal the counts read from the topics, the generated rules evaluate without error, and every worker
metric the rules and the dashboard use is on the live ``/metrics``.

Skipped with a message where ``prometheus`` is not installed (``make promtool`` installs it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from edgestream.pipeline.contract.deadletter import DeadLetter
from edgestream.pipeline.observability import alerting, dashboard
from edgestream.pipeline.observability.generated import PROMETHEUS_DIR
from edgestream.topics.catalogue import dlq_topic, ingest_topic, results_topic
from edgestream.workers.edge.service import serve
from edgestream.workers.edge.settings import WorkerSettings

from ...deploy.metric_names import HISTOGRAM_SUFFIXES, exposed, used
from ..conftest import EdgeRegion, read_topic

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed: `make promtool` (Debian's prometheus package)"
)
REPO_ROOT = Path(__file__).resolve().parents[3]
SCRAPE_S = 1
"""Scrape and rule-evaluation interval of the test's Prometheus."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _config(tmp_path: Path, worker_port: int) -> Path:
    rules = REPO_ROOT / PROMETHEUS_DIR / "rules"
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "rule_files": [str(rules / "recording.yml"), str(rules / "alerts.yml")],
        "scrape_configs": [
            {"job_name": alerting.JOB_WORKERS, "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]}
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@contextlib.asynccontextmanager
async def _prometheus(tmp_path: Path, worker_port: int) -> AsyncIterator[str]:
    """A Prometheus scraping the worker; yields its base URL; always stopped."""
    assert PROMETHEUS is not None
    port = _free_port()
    args = [
        PROMETHEUS,
        f"--config.file={_config(tmp_path, worker_port)}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (tmp_path / "prometheus.log").open("w") as log:
        proc = await asyncio.create_subprocess_exec(*args, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(_ready, url):
            assert proc.returncode is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prometheus never became ready"
            await asyncio.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=30)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        body = json.loads(answer.read())
    assert body["status"] == "success", body
    return body["data"]


async def _query(base: str, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant query's result: labels (sorted) -> value."""
    data = await asyncio.to_thread(_get, f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in data["result"]}


async def _until(base: str, promql: str, expected: float, timeout_s: float = 30.0) -> float | None:
    """Poll an instant query returning one value until it equals ``expected``; its last value."""
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        values = list((await _query(base, promql)).values())
        value = values[0] if values else None
        if value == expected:
            break
        await asyncio.sleep(SCRAPE_S / 2)
    return value


async def _traffic(region: EdgeRegion, producer: AIOKafkaProducer, good: int) -> Counter[str]:
    """Send ``good`` requests, a tampered one and garbage every 10th, over a few seconds; returns what
    was sent by kind."""
    topic = ingest_topic(region.name, "embedding")
    sent: Counter[str] = Counter()
    for i in range(good):
        device = f"dev-{i % 7}"
        envelope = region.embedding(device, row=i)
        await producer.send(topic, envelope, key=device.encode())
        sent["good"] += 1
        if i % 10 == 0:
            tampered = bytearray(envelope)
            tampered[-1] ^= 0x01
            await producer.send(topic, bytes(tampered), key=device.encode())
            await producer.send(topic, b"\x00garbage", key=device.encode())
            sent["bad"] += 2
        await asyncio.sleep(0.05)
    await producer.flush()
    return sent


async def test_prometheus_scraping_a_worker_counts_what_the_topics_hold(
    edge_region: EdgeRegion, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    worker_port = _free_port()
    settings: WorkerSettings = edge_region.settings(health_port=worker_port)
    stop = asyncio.Event()
    worker = asyncio.create_task(serve(settings, stop))
    try:
        async with _prometheus(tmp_path, worker_port) as prom:
            assert await _until(prom, f'up{{job="{alerting.JOB_WORKERS}"}}', 1.0) == 1.0
            sent = await _traffic(edge_region, producer, good=60)
            results = await read_topic(
                edge_region.bootstrap, results_topic(edge_region.name), expect=sent["good"]
            )
            dead = await read_topic(edge_region.bootstrap, dlq_topic(edge_region.name), expect=sent["bad"])
            reasons = Counter(DeadLetter.from_record(r).reason for r in dead)
            assert (len(results), sum(reasons.values())) == (sent["good"], sent["bad"])

            assert await _until(prom, "sum(edgestream_results_total)", len(results)) == len(results)
            assert await _until(prom, "sum(edgestream_records_consumed_total)", sum(sent.values())) == sum(
                sent.values()
            )
            by_reason = await _query(prom, "sum by (reason) (edgestream_dead_letters_total) > 0")
            assert {dict(k)["reason"]: v for k, v in by_reason.items()} == reasons
            served = await _query(prom, "count by (model) (edgestream_model_info == 1)")
            assert {dict(k)["model"] for k in served} == {"embedding-scorer", "frame-classifier"}

            await _rules_evaluate_without_error(prom)
            await _every_worker_metric_used_is_live(prom)
    finally:
        stop.set()
        await worker


async def _rules_evaluate_without_error(prom: str) -> None:
    """Every generated recording and alert rule has been evaluated, with no error."""
    deadline = time.monotonic() + 30
    while True:
        groups = (await asyncio.to_thread(_get, f"{prom}/api/v1/rules"))["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if all(r["health"] == "ok" for r in rules) or time.monotonic() > deadline:
            break
        await asyncio.sleep(SCRAPE_S)
    assert len(rules) == 26
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    alerts = {r["name"] for r in rules if r["type"] == "alerting"}
    assert alerts == set(alerting.alert_names())


def _family(name: str) -> str:
    """The metric a series name belongs to (a histogram's ``_bucket``/``_count``/``_sum`` stripped)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


async def _every_worker_metric_used_is_live(prom: str) -> None:
    """The worker metrics the rules and the dashboard use are on the worker's live /metrics, as scraped."""
    worker_names, _, _, _ = exposed()
    docs = (alerting.recording_rules(), alerting.alert_rules())
    rule_exprs = [r["expr"] for doc in docs for g in doc["groups"] for r in g["rules"]]
    board = dashboard.dashboard()
    wanted = {n for n in used(rule_exprs) | used(dashboard.expressions(board)) if _family(n) in worker_names}
    live = await _query(prom, f'count by (__name__) ({{job="{alerting.JOB_WORKERS}"}})')
    names = {dict(k)["__name__"] for k in live}
    assert wanted
    assert sorted(wanted - names) == []
