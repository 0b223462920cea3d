"""Which region's gateway a device uses: the nearest by great-circle distance first, then the next
nearest (failover order)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgestream.topics.regions import great_circle_km, validate_location

if TYPE_CHECKING:
    from collections.abc import Sequence

    from edgestream.device.transport import RegionEndpoint


def by_distance(
    endpoints: Sequence[RegionEndpoint], location: tuple[float, float] | None
) -> tuple[RegionEndpoint, ...]:
    """``endpoints`` nearest first from ``location`` (lat, lon in degrees); ties and an unknown location
    keep the given order."""
    if location is None:
        return tuple(endpoints)
    validate_location(*location)
    return tuple(sorted(endpoints, key=lambda e: great_circle_km(location, (e.lat, e.lon))))
