"""Which version answers a device: stable, or the canary for a keyed-hash share of devices.

A device's bucket is HMAC-SHA256(routing key, model ‖ canary version ‖ device id) read as a number in
[0, 1); it is in the canary when its bucket is below the canary's fraction. So one device always sees
one version for a given state, raising the fraction only adds devices to the canary, each canary
version draws its own cohort, and without the routing key nobody can pick device ids that land in a
canary. A pinned version is honoured when the registry allows it (``pinnable`` or stable); any other pin
raises :class:`PinNotAllowed` (an ``UnknownModel``: the request is dead-lettered, as the contract does for
a version a worker does not serve), rather than silently answering with another version.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Final

from edgestream.pipeline.errors import UnknownModel
from edgestream.pipeline.registry.errors import PinNotAllowed

if TYPE_CHECKING:
    from edgestream.pipeline.registry.state import ModelState

_SCALE: Final = float(1 << 64)


def device_bucket(routing_key: bytes, model: str, version: int, device_id: str) -> float:
    """The device's position in [0, 1) for the canary of ``model`` v``version``."""
    message = b"\0".join((model.encode(), str(version).encode(), device_id.encode()))
    digest = hmac.new(routing_key, message, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def choose_version(state: ModelState, device_id: str, routing_key: bytes, pinned: int | None = None) -> int:
    """The version that answers ``device_id``: the allowed pin, else canary or stable by its bucket."""
    if state.stable is None:
        raise UnknownModel(state.model)
    if pinned is not None:
        if pinned not in state.allowed_pins():
            raise PinNotAllowed(state.model, pinned)
        return pinned
    canary = state.canary
    if (
        canary is not None
        and device_bucket(routing_key, state.model, canary.version, device_id) < canary.fraction
    ):
        return canary.version
    return state.stable
