"""The aggregator's side of device reports (pure): agreement rows add up, candidates are written once
per request id as JSON lines without any input, malformed reports are counted by reason."""

from __future__ import annotations

import json
from pathlib import Path

from edgestream.pipeline.contract.devicereports import Agreement, DeviceReport, Disagreement
from edgestream.workers.aggregator import windows as w
from edgestream.workers.aggregator.devicereports import (
    ReportSink,
    agreement_key,
    agreement_rows,
    reports_topic,
)


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
