"""Region routing: which region's edge node serves a device, and the Kafka key its records carry.

A device with a known location goes to the nearest region by great-circle distance. A device without
one goes to a region chosen by rendezvous (highest-random-weight) hashing over sha256: every process,
on every machine and Python version, picks the same region for the same device id and the same set of
regions, and adding or removing a region moves only the devices that gain or lose that region, instead
of reshuffling nearly all of them as ``hash % len(regions)`` would.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Final

from edgestream.topics.catalogue import validate_region
from edgestream.topics.errors import InvalidLocation, RoutingError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from edgestream.pipeline.settings import Region

EARTH_RADIUS_KM: Final = 6371.0088
"""Mean Earth radius (IUGG), kilometres."""


def validate_location(lat: float, lon: float) -> None:
    """Raise `InvalidLocation` unless (lat, lon) is a finite point in degrees."""
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        raise InvalidLocation(lat, lon)


def great_circle_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Haversine distance in kilometres between two (lat, lon) points given in degrees."""
    lat1, lon1 = map(math.radians, a)
    lat2, lon2 = map(math.radians, b)
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


class Router:
    """Routes devices to regions; every process with the same regions routes every device alike."""

    def __init__(self, regions: Sequence[Region]) -> None:
        if not regions:
            raise RoutingError("a router needs at least one region")
        names = [validate_region(region) for region in regions]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise RoutingError(f"region(s) configured more than once: {', '.join(duplicates)}")
        self._regions: tuple[Region, ...] = tuple(regions)
        self._seeds = tuple(name.encode() + b"\x00" for name in names)

    @property
    def regions(self) -> tuple[Region, ...]:
        """The configured regions, in their configured order."""
        return self._regions

    def route(self, device_id: str, location: tuple[float, float] | None = None) -> Region:
        """The region serving ``device_id``: nearest to ``location`` (lat, lon in degrees) if given,
        else the device id's rendezvous-hash region. Ties go to the region configured first."""
        if not device_id:
            raise RoutingError("a device id must not be empty")
        if location is not None:
            return self._nearest(location)
        return self._by_hash(device_id)

    def _nearest(self, location: tuple[float, float]) -> Region:
        lat, lon = location
        validate_location(lat, lon)
        return min(self._regions, key=lambda region: great_circle_km(location, (region.lat, region.lon)))

    def _by_hash(self, device_id: str) -> Region:
        device = device_id.encode()
        weights = [int.from_bytes(hashlib.sha256(seed + device).digest()[:8], "big") for seed in self._seeds]
        return self._regions[weights.index(max(weights))]

    @staticmethod
    def partition_key(device_id: str) -> bytes:
        """The Kafka record key for a device's records: its UTF-8 id, so the default partitioner keeps
        each device on one partition (in order)."""
        if not device_id:
            raise RoutingError("a device id must not be empty")
        return device_id.encode()
