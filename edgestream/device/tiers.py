"""Which tier of a model family a device asks the edge for: by device class, round trip and bandwidth.

Every tier of a zoo family takes the same input, so the choice changes only which model answers on the
edge: a bigger one is more accurate and slower. A device class caps the tier (``low`` devices, on
metered or weak links, never ask for more than ``tiny``); a slow link leaves less of the deadline for
the edge's inference, so it steps the tier down (one step past ``SLOW_RTT_MS`` or under
``SLOW_BANDWIDTH_KBPS``, to the smallest past ``VERY_SLOW_RTT_MS`` or under a quarter of it). Only
tiers the edge serves (route ``stable`` or ``pin``) are chosen; the local fallback is always ``tiny``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from edgestream.pipeline.registry.devicecatalogue import CatalogueEntry

DeviceClass = Literal["low", "mid", "high"]
"""How capable (and how well connected, as a rule) a device is."""
TIERS: Final = ("tiny", "medium", "full")
"""Zoo tiers, smallest first."""
CLASS_CAP: Final[Mapping[DeviceClass, str]] = MappingProxyType(
    {"low": "tiny", "mid": "medium", "high": "full"}
)
"""The biggest tier each device class asks for."""
SLOW_RTT_MS: Final = 150.0
"""A round trip at or above this steps the tier down once."""
VERY_SLOW_RTT_MS: Final = 400.0
"""A round trip at or above this asks for the smallest tier."""
SLOW_BANDWIDTH_KBPS: Final = 256.0
"""Bandwidth under this steps the tier down once (under a quarter of it: the smallest tier)."""


@dataclass(frozen=True, slots=True)
class Link:
    """What the device measured of its link (None: not measured yet)."""

    rtt_ms: float | None = None
    """Best recent round trip to the gateway (from ``sync_clock``)."""
    bandwidth_kbps: float | None = None
    """Download rate seen while fetching an artifact, kbit/s."""


def tier_cap(device_class: DeviceClass, link: Link) -> int:
    """The index in ``TIERS`` of the biggest tier this device should ask for now."""
    cap = TIERS.index(CLASS_CAP[device_class])
    rtt, bandwidth = link.rtt_ms, link.bandwidth_kbps
    if (rtt is not None and rtt >= VERY_SLOW_RTT_MS) or (
        bandwidth is not None and bandwidth < SLOW_BANDWIDTH_KBPS / 4
    ):
        return 0
    if (rtt is not None and rtt >= SLOW_RTT_MS) or (
        bandwidth is not None and bandwidth < SLOW_BANDWIDTH_KBPS
    ):
        return max(0, cap - 1)
    return cap


def choose_tier(
    entries: Sequence[CatalogueEntry], device_class: DeviceClass, link: Link
) -> CatalogueEntry | None:
    """Of one family's catalogue ``entries``, the edge-served one to ask for: the biggest tier within
    the cap, else the smallest the edge serves; a family without zoo tiers: its one served entry; None
    when the edge serves none."""
    served = [e for e in entries if e.route != "local"]
    tiered = sorted((e for e in served if e.tier in TIERS), key=lambda e: TIERS.index(e.tier))
    if not tiered:
        return served[0] if served else None
    cap = tier_cap(device_class, link)
    within = [e for e in tiered if TIERS.index(e.tier) <= cap]
    return within[-1] if within else tiered[0]
