"""Every key derived from a region master key, in one place: HKDF-SHA256 with a label per purpose.

A master key is never used directly. Each purpose has its own fixed ``info`` label, so keys for
different purposes are independent even though they come from the same master:

* device keys (``edgestream/device-key`` + contract version, key id, device id): what a device seals
  its envelopes with; the salt is public for devices that are not enrolled, the device's own secret
  otherwise (``docs/contract.md``, "Keys");
* the rollout routing key (``edgestream/rollout-routing/v1``): the keyed hash that sends a device to
  stable or canary, the same on every worker of a region;
* the pseudonym key (``edgestream/device-pseudonym/v1``): what device pseudonyms in cloud samples are
  made under.

A device's reply key is derived from its device key, not from a master key, so a device derives it
too: ``pipeline/contract/reply.py``.
"""

from __future__ import annotations

import struct
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgestream.pipeline.contract.envelope import CONTRACT_VERSION, MAX_DEVICE_ID_BYTES, MAX_KEY_ID

MASTER_KEY_BYTES: Final = 32
"""Length of a region master key."""
DEVICE_KEY_BYTES: Final = 32
"""Length of a derived device key (AES-256)."""
HKDF_SALT: Final = b"edgestream/hkdf-salt/v1"
"""Fixed, public HKDF salt (23 ASCII bytes) of devices that are not enrolled."""
HKDF_INFO_LABEL: Final = b"edgestream/device-key"
"""Fixed first 21 bytes of the HKDF info; the rest binds contract version, key id and device id."""
ROUTING_INFO: Final = b"edgestream/rollout-routing/v1"
"""HKDF info of the routing key derived from a region master key."""
PSEUDONYM_INFO: Final = b"edgestream/device-pseudonym/v1"
"""HKDF info of the key device pseudonyms in cloud samples are made under."""

_INFO_FIXED: Final = struct.Struct(">HIH")
"""contract version (u16), key id (u32), device id length (u16), all big-endian."""


def hkdf_info(device_id: str, key_id: int) -> bytes:
    """The HKDF ``info`` bytes: label, contract version, key id, length-prefixed UTF-8 device id."""
    device = device_id.encode()
    if not 1 <= len(device) <= MAX_DEVICE_ID_BYTES:
        raise ValueError(f"device id must be 1..{MAX_DEVICE_ID_BYTES} UTF-8 bytes, got {len(device)}")
    if not 0 <= key_id <= MAX_KEY_ID:
        raise ValueError(f"key id {key_id} is not a uint32")
    return HKDF_INFO_LABEL + _INFO_FIXED.pack(CONTRACT_VERSION, key_id, len(device)) + device


def derive_device_key(master_key: bytes, device_id: str, key_id: int, *, salt: bytes = HKDF_SALT) -> bytes:
    """HKDF-SHA256(ikm=master_key, salt=salt, info=hkdf_info(device_id, key_id)), 32 bytes.

    ``salt``: the public ``HKDF_SALT`` for a device that is not enrolled, an enrolled device's own
    secret 32-byte salt otherwise.
    """
    _check_master(master_key)
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=DEVICE_KEY_BYTES, salt=salt, info=hkdf_info(device_id, key_id)
    )
    return hkdf.derive(master_key)


def routing_key(master_key: bytes) -> bytes:
    """The key of the device hash that picks stable or canary: every worker of a region routes a
    device the same way."""
    return _purpose_key(master_key, ROUTING_INFO)


def pseudonym_key(master_key: bytes) -> bytes:
    """The key device pseudonyms in cloud samples are made under (from the region's current master
    key, so a rotation starts new pseudonyms)."""
    return _purpose_key(master_key, PSEUDONYM_INFO)


def _purpose_key(master_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master_key)


def _check_master(master_key: bytes) -> None:
    if len(master_key) != MASTER_KEY_BYTES:
        raise ValueError(f"master keys are {MASTER_KEY_BYTES} bytes, got {len(master_key)}")
