"""How a device proves who it is to a region's gateway: its auth key, the signed transcript, the directory.

A device holds one secret, its device key (section 7 of ``docs/contract.md``). From it alone it
derives an Ed25519 **auth key**: seed = HKDF-SHA256(device key, salt = 32 zero bytes, info =
``edgestream/device-auth`` || contract version u16 BE, 32 bytes). The gateway only ever holds the
public halves, in the **device directory** (a JSON file an operator writes from the key file with
``edgestream gateway directory``), so a gateway that is broken into can neither read nor forge a
device's envelopes or replies.

On each connection the device signs a **transcript** that binds the region, the SHA-256 of the
gateway's leaf certificate as the device saw it in TLS, the gateway's and its own nonce, its id and
its key id: a signature is good for that one session only, so relaying or replaying it elsewhere
opens nothing. Pure logic: no sockets here (the frames are ``gatewayframes.py``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edgestream.pipeline.contract.deviceid import check_device_id
from edgestream.pipeline.contract.envelope import CONTRACT_VERSION, KEY_BYTES, MAX_DEVICE_ID_BYTES, MAX_KEY_ID
from edgestream.pipeline.errors import BadDeviceId, ConfigError, EdgestreamError

AUTH_KEY_INFO: Final = b"edgestream/device-auth" + CONTRACT_VERSION.to_bytes(2, "big")
"""HKDF info of a device's auth key: the label, then the contract version (u16 big-endian)."""
AUTH_KEY_SALT: Final = bytes(32)
"""HKDF salt of the auth key: 32 zero bytes."""
TRANSCRIPT_DOMAIN: Final = b"edgestream/gateway-auth"
"""First bytes of every transcript (23 ASCII bytes)."""
NONCE_BYTES: Final = 32
"""Length of the gateway's and the device's nonces."""
CERT_HASH_BYTES: Final = 32
"""SHA-256 of the gateway's leaf certificate (DER)."""
SIGNATURE_BYTES: Final = 64
"""An Ed25519 signature."""
PUBLIC_KEY_BYTES: Final = 32
"""A raw Ed25519 public key."""
MAX_REGION_BYTES: Final = 255
"""Longest region name in a transcript (UTF-8 bytes)."""
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")


class GatewayAuthError(EdgestreamError):
    """A device's authentication or a frame failed; ``reason`` is what the gateway sends back."""

    reason: ClassVar[str] = "bad_frame"


class BadFrame(GatewayAuthError):
    """A frame is not what the protocol allows (not msgpack, not a map, a field of the wrong type)."""

    reason = "bad_frame"


class UnknownDevice(GatewayAuthError):
    """The device, or its key id, is not in the gateway's directory."""

    reason = "unknown_device"


class BadSignature(GatewayAuthError):
    """The transcript's signature does not verify under the device's auth key."""

    reason = "bad_signature"


class DirectoryError(ConfigError):
    """The device directory file is missing or not a directory of this contract."""

    reason = "config"


def derive_auth_key(device_key: bytes) -> Ed25519PrivateKey:
    """The device's Ed25519 auth key, derived from its 32-byte device key alone."""
    if len(device_key) != KEY_BYTES:
        raise ValueError(f"a device key is {KEY_BYTES} bytes, got {len(device_key)}")
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=AUTH_KEY_SALT, info=AUTH_KEY_INFO).derive(
        device_key
    )
    return Ed25519PrivateKey.from_private_bytes(seed)


def auth_public_key(device_key: bytes) -> bytes:
    """The raw 32-byte public half of the device's auth key (what the directory holds)."""
    return derive_auth_key(device_key).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _prefixed(text: str, what: str, limit: int) -> bytes:
    data = text.encode()
    if not 1 <= len(data) <= limit:
        raise ValueError(f"{what} must be 1..{limit} UTF-8 bytes, got {len(data)}")
    return _U16.pack(len(data)) + data


def transcript(
    *, region: str, cert_sha256: bytes, server_nonce: bytes, client_nonce: bytes, device_id: str, key_id: int
) -> bytes:
    """The bytes a device signs: domain, contract version, region, certificate hash, both nonces,
    device id and key id (``docs/contract.md``, "Gateway"). Raises `BadDeviceId` for an id not in
    normal form, ValueError for any other field of the wrong size."""
    if len(cert_sha256) != CERT_HASH_BYTES:
        raise ValueError(f"a certificate hash is {CERT_HASH_BYTES} bytes")
    if len(server_nonce) != NONCE_BYTES or len(client_nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce is {NONCE_BYTES} bytes")
    if not 0 <= key_id <= MAX_KEY_ID:
        raise ValueError(f"key id {key_id} is not a uint32")
    check_device_id(device_id)
    return b"".join(
        (
            TRANSCRIPT_DOMAIN,
            _U16.pack(CONTRACT_VERSION),
            _prefixed(region, "a region", MAX_REGION_BYTES),
            cert_sha256,
            server_nonce,
            client_nonce,
            _prefixed(device_id, "a device id", MAX_DEVICE_ID_BYTES),
            _U32.pack(key_id),
        )
    )


def sign_transcript(auth_key: Ed25519PrivateKey, data: bytes) -> bytes:
    """The device's 64-byte signature of ``data``."""
    return auth_key.sign(data)


def verify_transcript(public_key: Ed25519PublicKey, signature: bytes, data: bytes) -> None:
    """Raise `BadSignature` unless ``signature`` is the auth key's signature of ``data``."""
    if len(signature) != SIGNATURE_BYTES:
        raise BadSignature(f"a signature is {SIGNATURE_BYTES} bytes, got {len(signature)}")
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        raise BadSignature("the signature does not verify under the device's auth key") from None


# -- the device directory ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Directory:
    """A region's devices and the public halves of their auth keys, by key id."""

    region: str
    """The region whose devices these are."""
    devices: Mapping[str, Mapping[int, Ed25519PublicKey]]
    """device id -> key id -> auth public key."""

    def public_key(self, device_id: str, key_id: int) -> Ed25519PublicKey:
        """The auth key to verify ``device_id`` under ``key_id``; `UnknownDevice` when there is none."""
        keys = self.devices.get(device_id)
        if keys is None:
            raise UnknownDevice("the device is not in the gateway's directory")
        key = keys.get(key_id)
        if key is None:
            raise UnknownDevice(f"the directory has no auth key of the device under key id {key_id}")
        return key

    def __len__(self) -> int:
        return len(self.devices)


def directory_document(region: str, keys: Mapping[str, Mapping[int, bytes]]) -> dict[str, object]:
    """The directory's JSON document for ``keys`` (device id -> key id -> raw public key)."""
    devices: dict[str, dict[str, str]] = {}
    for device_id, by_kid in sorted(keys.items()):
        check_device_id(device_id)
        devices[device_id] = {
            str(kid): base64.b64encode(pub).decode("ascii") for kid, pub in sorted(by_kid.items())
        }
    return {"region": region, "devices": devices}


def directory_keys(device_keys: Iterable[tuple[str, int, bytes]]) -> dict[str, dict[int, bytes]]:
    """Public auth keys of ``(device id, key id, device key)`` triples, grouped for
    `directory_document`."""
    keys: dict[str, dict[int, bytes]] = {}
    for device_id, key_id, device_key in device_keys:
        keys.setdefault(device_id, {})[key_id] = auth_public_key(device_key)
    return keys


def write_directory(path: Path, region: str, keys: Mapping[str, Mapping[int, bytes]]) -> None:
    """Write the directory atomically (a new file renamed over the old one, mode 0644: public data),
    so a gateway that reloads it never reads half of it."""
    data = json.dumps(directory_document(region, keys), indent=1, sort_keys=True).encode() + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".directory-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_directory(path: Path, region: str) -> Directory:
    """The directory in ``path``; `DirectoryError` when it is unreadable, malformed, or another
    region's."""
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise DirectoryError(f"cannot read the device directory {path}: {err}") from err
    return parse_directory(document, region, str(path))


def parse_directory(document: object, region: str, where: str = "the device directory") -> Directory:
    """A parsed directory document (see `read_directory`)."""
    if not isinstance(document, dict) or set(document) != {"region", "devices"}:
        raise DirectoryError(f"{where}: not a device directory (keys region and devices)")
    if document["region"] != region:
        raise DirectoryError(f"{where}: the directory of region {document['region']!r}, not {region!r}")
    raw = document["devices"]
    if not isinstance(raw, dict):
        raise DirectoryError(f"{where}: devices must be an object")
    devices: dict[str, dict[int, Ed25519PublicKey]] = {}
    for device_id, by_kid in raw.items():
        devices[device_id] = _parse_device(where, device_id, by_kid)
    return Directory(region, devices)


def _parse_device(where: str, device_id: str, by_kid: object) -> dict[int, Ed25519PublicKey]:
    try:
        check_device_id(device_id)
    except BadDeviceId as err:
        raise DirectoryError(f"{where}: a device id {err.problem}") from None
    if not isinstance(by_kid, dict) or not by_kid:
        raise DirectoryError(f"{where}: device {device_id!r} must map key ids to keys")
    keys: dict[int, Ed25519PublicKey] = {}
    for kid, text in by_kid.items():
        if not (isinstance(kid, str) and kid.isascii() and kid.isdigit() and int(kid) <= MAX_KEY_ID):
            raise DirectoryError(f"{where}: device {device_id!r}: key id {kid!r} is not a uint32")
        try:
            pub = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
        except binascii.Error:
            pub = b""
        if len(pub) != PUBLIC_KEY_BYTES:
            raise DirectoryError(f"{where}: device {device_id!r}: key {kid} is not 32 bytes of base64")
        keys[int(kid)] = Ed25519PublicKey.from_public_bytes(pub)
    return keys
