"""The device directory from the key file: an operator's job (``edgestream gateway directory``).

For every device named (the fleet's ids, or a list) and every device enrolled in the region, and for
every key id of the region that still serves, the public half of the device's auth key. The gateway
never reads the key file; it reads only the directory this writes.
"""

from __future__ import annotations

from collections.abc import Iterable

from edgestream.pipeline.contract.gatewayauth import auth_public_key
from edgestream.pipeline.errors import ForgottenDevice, RetiredKey, UnknownKeyId
from edgestream.pipeline.security.keyring import KeyRing


def fleet_device_ids(region: str, count: int) -> list[str]:
    """The ids the simulated fleet gives a region's devices (``dev-<region>-<n:05d>``), for n below
    ``count`` (a superset: the fleet numbers devices across regions)."""
    return [f"dev-{region}-{n:05d}" for n in range(count)]


def directory_from_keyring(
    ring: KeyRing, region: str, device_ids: Iterable[str]
) -> dict[str, dict[int, bytes]]:
    """device id -> key id -> auth public key, for ``device_ids`` and every enrolled device of
    ``region`` that is not forgotten, under every key id of the region that is not retired."""
    enrolled = [d for d, e in ring.devices(region).items() if not e.forgotten]
    keys: dict[str, dict[int, bytes]] = {}
    for device_id in dict.fromkeys([*device_ids, *enrolled]):
        for key_id in ring.key_ids(region):
            try:
                device_key = ring.device_key(region, device_id, key_id)
            except (RetiredKey, ForgottenDevice, UnknownKeyId):
                continue
            keys.setdefault(device_id, {})[key_id] = auth_public_key(device_key)
    return keys
