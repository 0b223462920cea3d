"""The fleet's SDK phones without a broker: which devices are phones, and the summary's devices rows."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from edgestream.device.answers import ClientStats
from edgestream.pipeline.settings import DEFAULT_REGIONS
from edgestream.workers.local.devices import Device
from edgestream.workers.local.fleet_settings import FleetSettings
from edgestream.workers.local.links import PROFILES, PhoneLink
from edgestream.workers.local.phones import Phone, PhonePlan, device_rows, plan_phones
from edgestream.workers.local.summary import device_summary, device_totals

GATEWAYS = {r.name: f"wss://127.0.0.1:{9000 + i}/v1" for i, r in enumerate(DEFAULT_REGIONS)}


def _devices(n: int) -> list[Device]:
    return [Device(f"dev-eu-west-{i:05d}", "eu-west", (48.0, 2.0), 1, bytes(32)) for i in range(n)]


def test_no_phones_unless_asked_and_the_first_phones_cover_every_class_and_link() -> None:
    devices = _devices(60)
    assert plan_phones(FleetSettings(), devices) == []
    plans = plan_phones(FleetSettings(phone_fraction=1.0, gateways=GATEWAYS), devices)
    assert [p.device for p in plans] == devices
    first = plans[:3]
    assert {p.device_class for p in first} == {"low-end-phone", "high-end-phone", "sensor"}
    assert {p.link for p in first} == set(PROFILES)
    assert len({(p.device_class, p.link) for p in plans[:9]}) == 9, "nine phones: every pair"
    some = plan_phones(FleetSettings(phone_fraction=0.2, gateways=GATEWAYS), devices)
    assert 0 < len(some) < len(devices)
    assert some == plan_phones(FleetSettings(phone_fraction=0.2, gateways=GATEWAYS), devices), "seeded"


def test_phones_need_a_gateway_in_every_region() -> None:
    with pytest.raises(ValidationError, match="gateway URL per region"):
        FleetSettings(phone_fraction=0.1, gateways={"eu-west": "wss://127.0.0.1:1/v1"})
    with pytest.raises(ValidationError):
        FleetSettings(phone_links=("carrier-pigeon",))  # type: ignore[arg-type]


def _phone(device_class: str, link: str, *, edge: int, fallback: dict[str, int], **kw: Any) -> Phone:
    stats = ClientStats(edge=edge, fallback=Counter(fallback))
    stats.refused_replies = Counter(kw.get("refused", {}))
    stats.rejected = Counter(kw.get("rejected", {}))
    stats.agreed, stats.disagreed = kw.get("agreed", 0), kw.get("disagreed", 0)
    stats.resends, stats.duplicates = kw.get("resends", 0), kw.get("duplicates", 0)
    client: Any = SimpleNamespace(stats=stats, sessions=SimpleNamespace(failovers=kw.get("failovers", 0)))
    link_state = PhoneLink(PROFILES[link], random.Random(0))
    link_state.outages = kw.get("outages", 0)
    transports: Any = [SimpleNamespace(connects=c) for c in kw.get("connects", [1])]
    calls = edge + sum(fallback.values())
    return Phone(
        PhonePlan(_devices(1)[0], device_class, link),
        link_state,
        client,
        transports,
        calls=calls,
        tiers=Counter(kw.get("tiers", {"medium": calls})),
        rtts_ms=kw.get("rtts", []),
    )


def test_device_rows_add_up_each_class_and_link() -> None:
    phones = [
        _phone("low-end-phone", "wifi", edge=8, fallback={"deadline": 2}, rtts=[10.0, 12.0], agreed=2),
        _phone(
            "low-end-phone",
            "wifi",
            edge=5,
            fallback={"deadline": 1, "unavailable": 4},
            refused={"bad_tag": 1},
            rejected={"rate_limited": 2},
            disagreed=1,
            rtts=[30.0],
        ),
        _phone(
            "sensor",
            "3g-flaky",
            edge=1,
            fallback={"unavailable": 3},
            tiers={"tiny": 4},
            outages=2,
            connects=[3, 0],  # reconnected twice to its region; the other region never connected
            failovers=1,
        ),
    ]
    rows = device_rows(phones)
    assert [(r.device_class, r.link, r.phones, r.calls) for r in rows] == [
        ("low-end-phone", "wifi", 2, 20),
        ("sensor", "3g-flaky", 1, 4),
    ]
    wifi, flaky = rows
    assert (wifi.edge, wifi.fallback, wifi.fallbacks) == (13, {"deadline": 3, "unavailable": 4}, 7)
    assert (wifi.refused_replies, wifi.late_agreed, wifi.late_disagreed) == (1, 2, 1)
    assert (wifi.rejected, flaky.rejected) == ({"rate_limited": 2}, {})
    assert wifi.rtt_ms == 12.0, "the median of every call's measured round trip"
    assert wifi.tiers == {"medium": 20}
    assert (flaky.reconnects, flaky.failovers, flaky.outages, flaky.tiers) == (2, 1, 2, {"tiny": 4})
    assert flaky.rtt_ms is None

    summary = device_summary(wifi)
    assert summary["fallbacks"] == 7
    assert summary["fallback"] == {"deadline": 3, "unavailable": 4}
    assert summary["calls"] == summary["edge"] + summary["fallbacks"]
    assert device_totals(rows) == {
        "phones": 3,
        "calls": 24,
        "edge": 14,
        "fallbacks": 10,
        "errors": 0,
        "refused_replies": 1,
        "reconnects": 2,
        "failovers": 1,
        "outages": 2,
    }
