"""The SDK's pure parts: reconciliation, the report codec (round trip, malformed, size bound), tier
choice, region order, the offline queue's TTL, the clock offset, the gateway action tables."""

from __future__ import annotations

import msgpack
import pytest

from edgestream.device.actions import Backoff, refusal_action, rejection_action
from edgestream.device.clock import ClockOffset
from edgestream.device.models import MIN_BANDWIDTH_SAMPLE_BYTES, bandwidth_kbps
from edgestream.device.offline import OfflineQueue
from edgestream.device.reconcile import Given, Reconciler
from edgestream.device.regions import by_distance
from edgestream.device.tiers import DeviceClass, Link, choose_tier
from edgestream.device.transport import ClockSample, RegionEndpoint
from edgestream.pipeline.contract.devicereports import (
    MAX_REPORT_BYTES,
    Agreement,
    DeviceReport,
    Disagreement,
    split_reports,
)
from edgestream.pipeline.errors import UndecodableRecord, UnsupportedVersion
from edgestream.pipeline.registry.devicecatalogue import CatalogueEntry, InputSpec, Route

RID = bytes(range(16))


def test_reconciler_counts_agreement_and_keeps_disagreements() -> None:
    r = Reconciler(keep_s=10)
    r.fell_back(b"a" * 16, Given("m", 1, 0, 0.9), now_s=0)
    r.fell_back(b"b" * 16, Given("m", 1, 1, 0.8), now_s=0)
    r.fell_back(b"c" * 16, Given("m", 1, 1, 0.8), now_s=0)
    assert r.late_edge(b"a" * 16, Given("m", 3, 0, 0.7), now_s=1) is True
    assert r.late_edge(b"b" * 16, Given("m", 3, 0, 0.6), now_s=1) is False
    assert r.late_edge(b"b" * 16, Given("m", 3, 0, 0.6), now_s=1) is None  # a duplicate
    assert r.late_edge(b"c" * 16, Given("m", 3, 1, 0.6), now_s=11) is None  # expired
    assert r.counts() == {("m", 3, 1): (1, 1)}
    (body,) = r.reports(at_ms=5)
    report = DeviceReport.from_bytes(body)
    assert report.agreement == (Agreement("m", 3, 1, 1, 1),)
    assert report.candidates == (Disagreement(b"b" * 16, "m", 3, 1, 0, 0.6, 1, 0.8),)
    assert not r.pending_report()


def test_scores_without_labels_agree_within_the_tolerance() -> None:
    r = Reconciler(tolerance=0.05)
    assert r.agrees(Given("m", 1, -1, 0.50), Given("m", 1, -1, 0.54))
    assert not r.agrees(Given("m", 1, -1, 0.50), Given("m", 1, -1, 0.56))


def test_reports_split_to_fit_the_bound() -> None:
    cands = [Disagreement(RID, "m" * 128, 1, 2, 0, 0.5, 1, 0.5) for _ in range(3000)]
    bodies = split_reports(1, [Agreement("m", 1, 2, 5, 3000)], cands)
    assert all(len(b) <= MAX_REPORT_BYTES for b in bodies)
    decoded = [DeviceReport.from_bytes(b) for b in bodies]
    assert sum(len(d.candidates) for d in decoded) == 3000
    assert sum(len(d.agreement) for d in decoded) == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"v": 1, "at_ms": 1, "agr": [], "dis": [{"rid": b"short"}]},
        {"v": 1, "at_ms": 1, "agr": [{"model": "", "ev": 1, "fv": 1, "agree": 1, "disagree": 0}], "dis": []},
        {
            "v": 1,
            "at_ms": 1,
            "agr": [{"model": "m", "ev": -1, "fv": 1, "agree": 1, "disagree": 0}],
            "dis": [],
        },
        {"v": 1, "at_ms": 1, "agr": "x", "dis": []},
        {"v": 1, "agr": [], "dis": []},
        [1, 2],
    ],
)
def test_malformed_reports_are_undecodable(fields: object) -> None:
    with pytest.raises(UndecodableRecord):
        DeviceReport.from_bytes(msgpack.packb(fields, use_bin_type=True))


def test_report_version_and_garbage() -> None:
    with pytest.raises(UnsupportedVersion):
        DeviceReport.from_bytes(msgpack.packb({"v": 2, "at_ms": 1, "agr": [], "dis": []}))
    for raw in (b"", b"\xc1", b"x" * (MAX_REPORT_BYTES + 1)):
        with pytest.raises(UndecodableRecord):
            DeviceReport.from_bytes(raw)
    extra = msgpack.packb({"v": 1, "at_ms": 1, "agr": [], "dis": [], "future": 1})
    assert DeviceReport.from_bytes(extra) == DeviceReport(1)


def _entry(tier: str, route: Route = "stable") -> CatalogueEntry:
    return CatalogueEntry(
        "m", tier, 1, route, "00" * 32, 1, InputSpec("embedding", "float16", ("float16",), (30,))
    )


def test_tier_by_class_and_link() -> None:
    entries = [_entry("tiny"), _entry("medium", "pin"), _entry("full", "pin")]
    classes: tuple[DeviceClass, ...] = ("low", "mid", "high")
    pick = {c: choose_tier(entries, c, Link()) for c in classes}
    assert {c: e.tier for c, e in pick.items() if e} == {"low": "tiny", "mid": "medium", "high": "full"}
    assert choose_tier(entries, "high", Link(rtt_ms=200)).tier == "medium"  # type: ignore[union-attr]
    assert choose_tier(entries, "high", Link(bandwidth_kbps=100)).tier == "medium"  # type: ignore[union-attr]
    assert choose_tier(entries, "high", Link(rtt_ms=500)).tier == "tiny"  # type: ignore[union-attr]
    assert choose_tier([_entry("full", "local"), _entry("medium")], "low", Link()).tier == "medium"  # type: ignore[union-attr]
    assert choose_tier([_entry("tiny", "local")], "high", Link()) is None


def test_regions_nearest_first() -> None:
    eps = [
        RegionEndpoint(n, "u", lat, lon, "c")
        for n, lat, lon in (("us", 38.9, -77.0), ("eu", 53.3, -6.3), ("ap", 19.1, 72.9))
    ]
    assert [e.region for e in by_distance(eps, (48.85, 2.35))] == ["eu", "us", "ap"]
    assert [e.region for e in by_distance(eps, (28.6, 77.2))] == ["ap", "eu", "us"]
    assert [e.region for e in by_distance(eps, None)] == ["us", "eu", "ap"]


def test_offline_queue_ttl_order_and_overflow() -> None:
    q: OfflineQueue[str] = OfflineQueue(max_items=3)
    q.put("a", ttl_s=1, now_s=0)
    q.put("b", ttl_s=10, now_s=0)
    q.put("c", ttl_s=10, now_s=0)
    q.put("d", ttl_s=10, now_s=0)  # "a" goes: full
    assert q.overflowed == 1
    entries = q.take(now_s=5)
    assert [item for _, item in entries] == ["b", "c", "d"]
    q.put_back(entries[1:])
    assert [item for _, item in q.take(now_s=11)] == []
    assert q.expired == 2


def test_clock_offset_keeps_the_tightest_sample() -> None:
    clock = ClockOffset()
    assert clock.offset_ms == 0.0
    clock.add(ClockSample(500.0, 80.0))
    clock.add(ClockSample(120.0, 4.0))
    clock.add(ClockSample(900.0, 300.0))
    assert (clock.offset_ms, clock.rtt_ms) == (120.0, 4.0)


def test_action_tables() -> None:
    resent = ("rate_limited", "unavailable", "too_large", "device_mismatch", "undecodable", "bad_tag")
    assert [r for r in resent if rejection_action(r).resend] == ["rate_limited", "unavailable"]
    assert refusal_action("unknown_device").action == "reprovision_key"
    assert refusal_action("overloaded").action == "back_off"
    assert rejection_action("unknown_model").action == "refresh_catalogue"  # the contract's table
    assert rejection_action("from-a-newer-gateway").action == "back_off"
    b = Backoff()
    first = b.bump(0.0)
    assert 0.1 <= first <= 0.1 + 1e-9
    for _ in range(40):
        last = b.bump(0.0)
    assert last <= 60.0
    b.reset()
    assert not b.active(0.0)


def test_bandwidth_is_read_only_from_downloads_big_enough_to_say() -> None:
    assert bandwidth_kbps(4_000, 0.08) is None  # a tiny model over a 50 ms link: a round trip
    assert bandwidth_kbps(MIN_BANDWIDTH_SAMPLE_BYTES, 0.0) is None
    assert bandwidth_kbps(1_000_000, 2.0) == 4_000.0  # 8,000 kbit in 2 s
