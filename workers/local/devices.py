"""The simulated fleet's devices: placed around the regions' sites, routed to the nearest region, keyed.

Each device has an id, a location (routing picks its region), and its own key derived from its
region's master key; when the key file is writable the devices are enrolled in it first (their own
secret salts, so ``edgestream devices forget`` can erase one), before any of them sends.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgestream.pipeline.security.keyfile import enroll_devices
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.topics.regions import Router

if TYPE_CHECKING:
    from pathlib import Path

    from edgestream.workers.local.fleet_settings import FleetSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Device:
    """One simulated device."""

    device_id: str
    """Its id, the Kafka key of everything it sends."""
    region: str
    """Its region, chosen by the router from its location."""
    location: tuple[float, float]
    """(lat, lon) in degrees."""
    key_id: int
    """The key id it seals with."""
    key: bytes = field(repr=False)
    """Its own AES-256 key (derived from the region master key; a real device holds only this)."""


def _writable(path: Path) -> bool:
    return os.access(path, os.R_OK | os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


def make_devices(settings: FleetSettings, keyring: KeyRing) -> list[Device]:
    """Place devices at random locations and route each to its nearest region; enrol them in the key
    file first when ``settings.enrol`` and the file is writable (one write per region)."""
    rng = random.Random(settings.seed)
    router = Router(settings.regions)
    placed: list[tuple[str, str, tuple[float, float]]] = []
    for n in range(settings.devices):
        # Around the regions' sites so every region gets devices; spread a few thousand km.
        site = settings.regions[n % len(settings.regions)]
        lat = max(-89.0, min(89.0, site.lat + rng.uniform(-15, 15)))
        lon = ((site.lon + rng.uniform(-20, 20) + 180.0) % 360.0) - 180.0
        region = router.route(f"dev-{n:05d}", (lat, lon)).name
        placed.append((f"dev-{region}-{n:05d}", region, (lat, lon)))
    enrolled: dict[str, bytes] = {}
    key_file = settings.key_file or settings.home / "keys.json"
    if settings.enrol and _writable(key_file):
        for region in dict.fromkeys(region for _, region, _ in placed):
            ids = [device_id for device_id, r, _ in placed if r == region]
            key_id = keyring.current_key_id(region)
            enrolled.update(enroll_devices(key_file, region, ids, key_id=key_id))
        log.info("enrolled %d devices in %s", len(enrolled), key_file)
    elif settings.enrol:
        log.info("key file %s is not writable: devices are not enrolled", key_file)
    devices = []
    for device_id, region, location in placed:
        key_id = keyring.current_key_id(region)
        key = enrolled.get(device_id) or keyring.device_key(region, device_id, key_id)
        devices.append(Device(device_id, region, location, key_id, key))
    return devices
