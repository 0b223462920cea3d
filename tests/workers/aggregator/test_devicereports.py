"""The aggregator's side of device reports: agreement rows add up, candidates are written once per
request id as JSON lines without any input, malformed reports are counted by reason (pure, then with
real faust on the real broker)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import msgpack
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from edgestream.pipeline.contract.devicereports import Agreement, DeviceReport, Disagreement
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.catalogue import AGGREGATOR_GROUP, reports_topic
from edgestream.workers.aggregator import windows as w
from edgestream.workers.aggregator.app import PARTITIONS
from edgestream.workers.aggregator.devicereports import (
    AGREEMENT_PATH,
    CANDIDATES_FILE,
    ReportSink,
    agreement_key,
    agreement_rows,
)
from edgestream.workers.local.broker.config import free_port
from edgestream.workers.local.processes import Child, edgestream_command


def test_the_table_keeps_at_most_its_rows_and_the_candidates_file_is_rolled(tmp_path: Path) -> None:
    """A report names its models and versions itself: rows past the table's bound are counted, not kept;
    the candidates file is moved aside past its size, not grown without end."""
    sink = ReportSink(tmp_path / "c.jsonl", max_bytes=2_000, max_rows=3)
    table: dict[str, w.State] = {}
    for i in range(5):
        key = agreement_key("eu-west", f"made-up-{i}", 1, 1)
        if sink.has_room(table, key):
            table[key] = sink.add({}, 1, 0)
    assert len(table) == 3
    assert sink.malformed == {"too_many_rows": 2}
    assert sink.has_room(table, agreement_key("eu-west", "made-up-0", 1, 1)), "a kept row stays countable"
    for i in range(40):
        candidate = Disagreement(i.to_bytes(16, "big"), "m", 3, 1, 0, 0.9, 1, 0.8)
        sink.write(sink.candidates(DeviceReport(7, (), (candidate,)), "eu-west", "dev-1"))
    assert (tmp_path / "c.jsonl.1").exists()
    assert (tmp_path / "c.jsonl").stat().st_size < 2_000 + 400
    assert (tmp_path / "c.jsonl.1").stat().st_size < 2_000 + 400


def test_rows_candidates_and_malformed(tmp_path: Path) -> None:
    sink = ReportSink(tmp_path / "c.jsonl")
    rid = bytes(range(16))
    report = DeviceReport(
        7, (Agreement("m|x", 3, 1, 4, 1),), (Disagreement(rid, "m|x", 3, 1, 0, 0.9, 1, 0.8),)
    )
    decoded = sink.decode(report.to_bytes(), "t:0@0")
    assert decoded == report
    table: dict[str, w.State] = {}
    key = agreement_key("eu-west", "m|x", 3, 1)
    for offset in (0, 0, 1):  # a redelivered offset counts once
        state = table.get(key) or {}
        if not w.seen(state, reports_topic("eu-west"), 0, offset):
            table[key] = sink.add(state, 4, 1)
    rows = agreement_rows(table)
    assert rows == [
        {
            "region": "eu-west",
            "model": "m|x",
            "edge_version": 3,
            "fallback_version": 1,
            "agree": 8,
            "disagree": 2,
            "agreement": 0.8,
        }
    ]
    for _ in range(2):
        sink.write(sink.candidates(report, "eu-west", "phone-1"))
    lines = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert len(lines) == 1
    assert lines[0]["rid"] == rid.hex()
    assert set(lines[0]) == {
        "rid",
        "region",
        "device",
        "model",
        "edge_version",
        "fallback_version",
        "edge",
        "fallback",
        "reported_at_ms",
    }
    for bad in (b"", b"\x81\xa1v\x02", b"garbage", None):
        assert sink.decode(bad, "t:0@1") is None
    assert sink.malformed == {"undecodable_record": 3, "bad_version": 1}


# -- on the broker ------------------------------------------------------------------------------------


def _agreement_view(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url + AGREEMENT_PATH, timeout=2) as response:
            view: dict[str, Any] = json.load(response)
            return view
    except (urllib.error.URLError, OSError, ValueError):
        return None


async def test_the_aggregator_counts_reports_and_survives_malformed_ones(
    bootstrap: KafkaSettings, tmp_path: Path
) -> None:
    """Real faust on the real broker (as admin: the aggregator principal's grant on the reports
    topics comes with the gateway's topic catalogue entry): agreement rows add up per model version,
    candidates land once in the labelling file, garbage between good reports is counted, not fatal."""
    region = f"t{uuid.uuid4().hex[:10]}"
    topic = reports_topic(region)
    admin = AIOKafkaAdminClient(**bootstrap.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()
    port = free_port()
    env = {**os.environ, **bootstrap.to_env("EDGESTREAM_AGGREGATOR_KAFKA__")}
    env.update(
        {
            "EDGESTREAM_AGGREGATOR_HOME": str(tmp_path),
            "EDGESTREAM_AGGREGATOR_APP_ID": f"{AGGREGATOR_GROUP}-{region}",
            "EDGESTREAM_AGGREGATOR_WEB_PORT": str(port),
            "EDGESTREAM_AGGREGATOR_REPORT_REGIONS": json.dumps([region]),
        }
    )
    producer = AIOKafkaProducer(**bootstrap.client_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    child = Child.start(
        "aggregator", edgestream_command("aggregate", "run"), env=env, log_file=tmp_path / "agg.log"
    )
    try:
        rid = bytes(range(16))
        good = DeviceReport(
            1,
            # The same (model, versions) twice in one report: both rows count (the second was dropped).
            (Agreement("embedding-scorer", 3, 1, 5, 1), Agreement("embedding-scorer", 3, 1, 2, 0)),
            (Disagreement(rid, "embedding-scorer", 3, 1, 0, 0.9, 1, 0.7),),
        ).to_bytes()
        for value in (good, b"garbage", msgpack.packb({"v": 2}), good, good):
            await producer.send_and_wait(topic, value, key=b"phone-1")
        url = f"http://127.0.0.1:{port}"

        def counted() -> dict[str, Any] | None:
            view = _agreement_view(url)
            rows = [] if view is None else [r for r in view["rows"] if r["region"] == region]
            return view if rows and rows[0]["agree"] + rows[0]["disagree"] >= 24 else None

        deadline = time.monotonic() + 120
        view = None
        while view is None:
            view = await asyncio.to_thread(counted)
            assert time.monotonic() < deadline, "the aggregator did not count the reports in 120 s"
            await asyncio.sleep(0.2)
        (row,) = [r for r in view["rows"] if r["region"] == region]
        assert (row["model"], row["edge_version"], row["fallback_version"]) == ("embedding-scorer", 3, 1)
        assert (row["agree"], row["disagree"]) == (21, 3)
        assert view["malformed"] == {"undecodable_record": 1, "bad_version": 1}
        lines = (tmp_path / "aggregator" / CANDIDATES_FILE).read_text().splitlines()
        assert [json.loads(line)["rid"] for line in lines] == [rid.hex()]
        assert json.loads(lines[0])["device"] == "phone-1"
    finally:
        child.stop()
        await producer.stop()
