"""One request's trace as text: the right spans, in order, with times from the device's capture."""

from __future__ import annotations

from typing import Any

from edgestream.pipeline.observability.tracetree import CONSUMER, PRODUCER, pick_request, request_tree

MS = 1_000_000


def _span(
    trace: str, span: str, name: str, kind: int, start_ms: float, end_ms: float, **extra: Any
) -> dict[str, Any]:
    attrs = extra.pop("attrs", {})
    return {
        "traceId": trace,
        "spanId": span,
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(int(start_ms * MS)),
        "endTimeUnixNano": str(int(end_ms * MS)),
        "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attrs.items()],
        "resource": {"service.name": {"stringValue": extra.pop("service", "edgestream-worker")}},
        **extra,
    }


def _spans() -> list[dict[str, Any]]:
    fast = _span("t1", "d1", "send ingest", PRODUCER, 1000, 1012, attrs={"edgestream.outcome": "answered"})
    slow = _span("t2", "d2", "send ingest", PRODUCER, 1001, 1040, attrs={"edgestream.outcome": "answered"})
    fell = _span("t3", "d3", "send ingest", PRODUCER, 1002, 1300, attrs={"edgestream.outcome": "fallback"})
    unit = _span(
        "w", "u", "process ingest", CONSUMER, 1005, 1030, links=[{"traceId": "t1"}, {"traceId": "t2"}]
    )
    unit["attributes"].append(
        {
            "key": "edgestream.model",
            "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"stringValue": "b"}]}},
        }
    )
    return [
        fast,
        slow,
        fell,
        unit,
        _span("w", "a1", "admission", 1, 1006, 1007, parentSpanId="u", links=[{"traceId": "t1"}]),
        _span("w", "a2", "admission", 1, 1006, 1008, parentSpanId="u", links=[{"traceId": "t2"}]),
        _span("w", "i", "inference", 1, 1008, 1009, parentSpanId="u"),
        _span("w", "x", "unrelated", 1, 1008, 1009, parentSpanId="other"),
    ]


def test_the_slowest_answered_request_a_unit_links_to_is_picked() -> None:
    spans = _spans()
    picked = pick_request(spans)
    assert picked is not None
    assert picked["spanId"] == "d2", "t3 is slower but fell back, t1 is faster"
    by_id = pick_request(spans, "t1")
    assert by_id is not None
    assert by_id["spanId"] == "d1"
    typical = pick_request(spans, slowest=False)
    assert typical is not None
    assert typical["spanId"] == "d1", "the median of two answered is the faster"
    assert pick_request(spans, "nope") is None
    assert pick_request([s for s in spans if s["kind"] != CONSUMER]) is None


def test_the_tree_holds_the_device_its_unit_and_only_its_own_record_spans() -> None:
    spans = _spans()
    device = pick_request(spans, "t1")
    assert device is not None
    lines = request_tree(spans, device)
    names = [line.split(" ms ")[2].split()[0] for line in lines[1:]]
    assert names == ["send", "process", "admission", "inference"]
    assert "outcome=answered" in lines[1]
    assert "model=a,b" in lines[2], "array attributes read as their values"
    start, took = lines[3].split(" ms")[0:2]
    assert (float(start), float(took)) == (6.0, 1.0), "the admission of t1, ms after t1's capture"
