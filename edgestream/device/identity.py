"""Who the device is: its id and, per region, its device key and key id (provisioned; each region has
its own master keys, so its own device key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgestream.pipeline.contract.deviceid import check_device_id
from edgestream.pipeline.contract.reply import ReplyKey

if TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass(frozen=True, slots=True)
class RegionKey:
    """One region's device key."""

    key_id: int
    """Which of the region's master keys it derives from."""
    device_key: bytes = field(repr=False)
    """The 32-byte device key (secret: never in a repr or a log)."""


@dataclass(slots=True)
class DeviceIdentity:
    """The device's id and keys; replaced keys are kept to open late replies sealed under them."""

    device_id: str
    """Exactly as provisioned (NFC, no control characters)."""
    keys: dict[str, RegionKey] = field(repr=False)
    """Region -> the key the device seals with there now."""
    _aead: dict[str, AESGCM] = field(default_factory=dict, init=False, repr=False)
    _reply: dict[tuple[str, int], ReplyKey] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        for region, key in self.keys.items():
            self._learn(region, key)

    @classmethod
    def of(cls, device_id: str, keys: Mapping[str, RegionKey]) -> DeviceIdentity:
        """An identity with ``keys`` per region."""
        return cls(device_id, dict(keys))

    def _learn(self, region: str, key: RegionKey) -> None:
        self._aead[region] = AESGCM(key.device_key)
        self._reply[(region, key.key_id)] = ReplyKey(key.device_key)

    def replace(self, region: str, key: RegionKey) -> None:
        """Seal with ``key`` in ``region`` from now on (re-provisioned)."""
        self.keys[region] = key
        self._learn(region, key)

    def sealer(self, region: str) -> tuple[AESGCM, int] | None:
        """The cipher and key id to seal with in ``region`` (None: no key for it)."""
        key = self.keys.get(region)
        return None if key is None else (self._aead[region], key.key_id)

    def reply_key(self, region: str, key_id: int) -> ReplyKey | None:
        """The reply key for replies of ``region`` sealed under ``key_id`` (None: unknown)."""
        return self._reply.get((region, key_id))
