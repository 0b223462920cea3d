"""The demo's summary: the story's versions as the devices saw them, the round trip by path."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from edgestream.pipeline.observability.sla import RoundTrip
from edgestream.workers.local import summary
from edgestream.workers.local.fleetreport import Answer, FleetReport, RegionReport
from edgestream.workers.local.story import StoryReport
from edgestream.workers.local.summary import bad_answers_after_rollback, path_rows, version_rows


def test_version_rows_and_answers_after_the_rollback_come_from_the_devices_answers() -> None:
    story = StoryReport("embedding-scorer", reference=4, retrained=5, bad=6)
    story.shift_at_s = 10.0
    story.rollback_applied_at_s = 50.0
    answers = [
        Answer(1.0, "embedding-scorer", 4, True, "original"),
        Answer(2.0, "embedding-scorer", 4, False, "original"),
        Answer(12.0, "embedding-scorer", 4, False, "shifted-a"),
        Answer(30.0, "embedding-scorer", 5, True, "shifted-b", late=True),
        Answer(45.0, "embedding-scorer", 6, False, "shifted-b"),
        Answer(55.0, "embedding-scorer", 6, False, "shifted-b"),  # after the rollback was applied
        Answer(56.0, "frame-classifier", 6, True, "original"),  # another model's version 6
    ]
    report = FleetReport({"eu": RegionReport(answers=answers)}, 0.0, 60.0, 60.0, 0)
    rows = [(r.version, r.role, r.inputs, r.answers, r.accuracy) for r in version_rows(report, story)]
    assert rows == [
        (4, "reference", "original", 2, 0.5),
        (4, "reference", "shifted-a", 1, 0.0),
        (5, "retrained", "shifted-b", 1, 1.0),
        (6, "bad", "shifted-b", 2, 0.0),
    ]
    assert bad_answers_after_rollback(report, story) == 1
    story.rollback_applied_at_s = None
    assert bad_answers_after_rollback(report, story) is None


def test_path_rows_keep_the_direct_devices_apart_from_each_phone_link() -> None:
    direct = [RoundTrip(0.0, "eu", "m", 1, float(ms), "answered", 250.0) for ms in range(1, 101)]
    wifi = [RoundTrip(0.0, "eu", "m", 1, 30.0, "answered", 250.0, "phone/wifi")] * 3
    slow = [
        RoundTrip(0.0, "eu", "m", 1, 240.0, "answered", 250.0, "phone/3g-flaky"),
        RoundTrip(0.0, "eu", "m", None, 250.0, "fallback", 250.0, "phone/3g-flaky"),
    ]
    rows = {r.path: r for r in path_rows([*slow, *wifi, *direct])}
    assert [r.path for r in path_rows([*slow, *wifi, *direct])] == [
        "direct",
        "phone/3g-flaky",
        "phone/wifi",
        "all",
    ]
    assert (rows["direct"].requests, rows["direct"].edge, rows["direct"].fallbacks) == (100, 100, 0)
    assert rows["direct"].p50_ms == pytest.approx(50.5)
    assert rows["direct"].p99_ms == pytest.approx(99.01)
    assert (rows["phone/3g-flaky"].edge, rows["phone/3g-flaky"].fallbacks) == (1, 1)
    assert rows["phone/3g-flaky"].edge_share == 0.5
    assert rows["phone/3g-flaky"].p99_ms == 240.0  # over the edge's answers only
    assert (rows["all"].requests, rows["all"].edge) == (105, 104)
    assert rows["all"].to_dict()["edge_share"] == pytest.approx(104 / 105)


def test_one_path_has_no_all_row_and_a_path_without_edge_answers_has_no_percentiles() -> None:
    rows = path_rows([RoundTrip(0.0, "eu", "m", None, 250.0, "fallback", 250.0, "phone/4g")])
    assert len(rows) == 1
    assert (rows[0].path, rows[0].edge, rows[0].p99_ms, rows[0].edge_share) == ("phone/4g", 0, None, 0.0)
    assert path_rows([]) == []


def test_a_request_log_line_keeps_its_path_and_an_older_line_is_direct() -> None:
    trip = RoundTrip(1.0, "eu", "m", 2, 12.0, "answered", 250.0, "phone/wifi")
    assert RoundTrip.from_mapping(json.loads(trip.to_json())) == trip
    older = {k: v for k, v in json.loads(trip.to_json()).items() if k != "path"}
    assert RoundTrip.from_mapping(older).path == "direct"


class _Views:
    """An aggregator's ``/windows`` served from a list of views, one a read, the last one from then on."""

    def __init__(self, views: list[list[dict[str, Any]]]) -> None:
        self.views = views
        self.reads = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                view = outer.views[min(outer.reads, len(outer.views) - 1)]
                outer.reads += 1
                body = json.dumps({"windows": view}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving and close the listening socket."""
        self.server.shutdown()
        self.server.server_close()


def _window(pending: bool) -> dict[str, Any]:
    return {"key": "eu|m|2|0", "region": "eu", "results": 10, "joined": 4, "drift": {"pending": pending}}


@pytest.fixture
def quick_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(summary, "VIEW_POLL_S", 0.01)


@pytest.mark.usefixtures("quick_reads")
def test_the_view_is_read_until_no_windows_drift_waits_for_its_threshold() -> None:
    views = _Views([[_window(pending=True)]] * 6 + [[_window(pending=False)]])
    try:
        rows = summary.settled_windows(views.url, {"eu"}, answered=10, timeout_s=10)
    finally:
        views.close()
    assert rows[0]["drift"]["pending"] is False
    assert views.reads >= 7


@pytest.mark.usefixtures("quick_reads")
def test_a_drift_pending_past_the_timeout_returns_what_the_view_has(caplog: pytest.LogCaptureFixture) -> None:
    views = _Views([[_window(pending=True)]])
    try:
        rows = summary.settled_windows(views.url, {"eu"}, answered=10, timeout_s=0.3)
    finally:
        views.close()
    assert rows == [_window(pending=True)]
    assert "1 windows' drift still pending" in caplog.text
