"""Region routing: nearest region by great-circle distance, else a stable hash of the device id."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from edgestream.pipeline.settings import DEFAULT_REGIONS, Region
from edgestream.topics.errors import InvalidLocation, InvalidRegionName, RoutingError
from edgestream.topics.regions import Router, great_circle_km


@pytest.fixture
def router() -> Router:
    return Router(DEFAULT_REGIONS)


@pytest.mark.parametrize(
    ("city", "location", "region"),
    [
        ("Dublin", (53.3498, -6.2603), "eu-west"),
        ("Lisbon", (38.7223, -9.1393), "eu-west"),
        ("New York", (40.7128, -74.0060), "us-east"),
        ("Toronto", (43.6532, -79.3832), "us-east"),
        ("Honolulu", (21.3069, -157.8583), "us-east"),
        ("Mumbai", (19.0760, 72.8777), "ap-south"),
        ("Singapore", (1.3521, 103.8198), "ap-south"),
        ("Auckland", (-36.8485, 174.7633), "ap-south"),
    ],
)
def test_nearest_region(router: Router, city: str, location: tuple[float, float], region: str) -> None:
    assert router.route(f"device-in-{city}", location).name == region


def test_location_wins_over_the_hash(router: Router) -> None:
    mumbai = (19.0760, 72.8777)
    assert {router.route(f"device-{i}", mumbai).name for i in range(50)} == {"ap-south"}


def test_great_circle_distances() -> None:
    london, paris = (51.5074, -0.1278), (48.8566, 2.3522)
    assert great_circle_km(london, paris) == pytest.approx(343.5, rel=0.01)
    assert great_circle_km((0.0, 179.5), (0.0, -179.5)) == pytest.approx(111.2, rel=0.01)
    assert great_circle_km((90.0, 0.0), (-90.0, 0.0)) == pytest.approx(math.pi * 6371.0088)
    assert great_circle_km(paris, paris) == 0.0


@pytest.mark.parametrize(
    "location",
    [(90.01, 0.0), (-91.0, 0.0), (0.0, 180.5), (0.0, -181.0), (math.nan, 0.0), (0.0, math.inf)],
)
def test_invalid_coordinates_are_refused(router: Router, location: tuple[float, float]) -> None:
    with pytest.raises(InvalidLocation) as info:
        router.route("device-1", location)
    assert info.value.reason == "bad_location"


def test_hash_routing_is_stable_across_calls_routers_and_processes(router: Router) -> None:
    ids = [f"device-{i}" for i in range(200)]
    first = [router.route(d) for d in ids]
    assert [router.route(d) for d in ids] == first
    assert [Router(DEFAULT_REGIONS).route(d) for d in ids] == first
    # sha256, not hash(): these are the same in every process, machine and Python version.
    pinned = {"device-0": "eu-west", "device-2": "us-east", "phone-42": "eu-west", "sensor-é": "ap-south"}
    assert {d: router.route(d).name for d in pinned} == pinned


def test_hash_routing_is_roughly_balanced(router: Router) -> None:
    counts = Counter(router.route(f"device-{i}").name for i in range(3000))
    assert set(counts) == {r.name for r in DEFAULT_REGIONS}
    assert all(900 <= n <= 1100 for n in counts.values()), counts


def test_adding_a_region_moves_only_the_devices_it_takes(router: Router) -> None:
    grown = Router([*DEFAULT_REGIONS, Region(name="sa-east", lat=-23.55, lon=-46.63)])
    ids = [f"device-{i}" for i in range(3000)]
    moved = [d for d in ids if router.route(d).name != grown.route(d).name]
    assert all(grown.route(d).name == "sa-east" for d in moved)
    assert 600 <= len(moved) <= 900  # about a quarter, not ~3/4 as with hash % len(regions)


def test_partition_key_is_the_utf8_device_id(router: Router) -> None:
    assert router.partition_key("device-1") == b"device-1"
    assert Router.partition_key("sensor-é") == "sensor-é".encode()


def test_router_configuration_is_validated() -> None:
    with pytest.raises(RoutingError, match="at least one region"):
        Router([])
    with pytest.raises(RoutingError, match="more than once: eu-west"):
        Router([DEFAULT_REGIONS[0], DEFAULT_REGIONS[0]])
    with pytest.raises(InvalidRegionName):
        Router([Region(name="EU_WEST", lat=0, lon=0)])


def test_empty_device_id_is_refused(router: Router) -> None:
    with pytest.raises(RoutingError, match="empty"):
        router.route("")
    with pytest.raises(RoutingError, match="empty"):
        router.partition_key("")
