"""Sealed replies: each fast reply sealed to its device, and how the device opens and verifies it.

The edge answers a device on ``edge.<region>.replies`` with its result record (``records.py``) sealed
with AES-256-GCM under the device's *reply key*, derived by HKDF from the device key with its own label
(never the envelope key itself, so replies and envelopes never share a key or a nonce space), with a
fresh random 96-bit nonce per reply. The associated data binds the contract version, request id, key
id, model, model version and region: a reply cannot be opened by another device, forged by anyone
without the device key (the gateway and other devices included), replayed for another request, passed
off as another model version's answer or as another region's. ``docs/contract.md`` (section 10,
"Sealed replies") specifies it for other languages, with test vectors; this module is the reference,
and `open_reply` is what a device runs on every reply it reads.
"""

from __future__ import annotations

import os
import struct
from typing import ClassVar, Final, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgestream.pipeline.contract.envelope import (
    CONTRACT_VERSION,
    KEY_BYTES,
    MAX_KEY_ID,
    MAX_MODEL_BYTES,
    NONCE_BYTES,
    REQUEST_ID_BYTES,
    TAG_BYTES,
)
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.errors import EdgestreamError, Stage, UndecodableRecord, UnsupportedVersion

REPLY_KEY_INFO: Final = b"edgestream/reply-key" + CONTRACT_VERSION.to_bytes(2, "big")
"""HKDF ``info`` of a reply key: ASCII ``edgestream/reply-key`` (20 bytes) then the contract version
(u16 big-endian). The device key already binds device id, key id and region master key."""
REPLY_KEY_SALT: Final = bytes(32)
"""HKDF salt of a reply key: 32 zero bytes (RFC 5869's default; an empty salt gives the same key)."""
REPLY_AAD_DOMAIN: Final = b"edgestream/reply-aad"
"""Domain-separation prefix of a reply's associated data (20 ASCII bytes)."""
MAX_REGION_BYTES: Final = 255
"""Longest region name in a reply's associated data, UTF-8 bytes."""

_HEADER: Final = struct.Struct(">H16sIIH")
"""Contract version u16, request id (16), key id u32, model version u32, model length u16."""
_U16: Final = struct.Struct(">H")
MIN_REPLY_BYTES: Final = _HEADER.size + 1 + NONCE_BYTES + TAG_BYTES
"""The shortest well-formed sealed reply: a 1-byte model name and an empty plaintext."""


class ReplyRefused(EdgestreamError):
    """A device could not accept a reply: it is dropped, and the device keeps waiting for its answer
    (another copy, or its local fallback at the deadline)."""

    reason = "reply_refused"
    stage: ClassVar[Stage] = "decrypt"


class MalformedReply(ReplyRefused):
    """Too short, or a length or name in its header is out of bounds: not a sealed reply."""

    reason = "reply_malformed"
    stage = "decode"


class UnsupportedReplyVersion(ReplyRefused):
    """The reply names a contract version this build does not speak."""

    reason = "reply_bad_version"
    stage = "decode"


class ReplyForAnotherRequest(ReplyRefused):
    """The reply answers a request id other than the one the device asked about."""

    reason = "reply_other_request"
    stage = "decode"


class ReplyAuthenticationFailed(ReplyRefused):
    """AES-GCM rejected the tag: another device's reply, another region's, or anything tampered."""

    reason = "reply_bad_tag"


class ReplyRecordMismatch(ReplyRefused):
    """Authentic, but its plaintext is not a result record agreeing with its sealed header (request
    id, model, model version, region): an edge bug, never to be trusted."""

    reason = "reply_mismatch"


class ReplyHeader(NamedTuple):
    """The clear fields of a sealed reply (all authenticated by its tag)."""

    request_id: bytes
    """The request it answers (16 bytes)."""
    key_id: int
    """The key id of the device key it is sealed under (the request's)."""
    model: str
    """Model that answered."""
    model_version: int
    """Version that answered."""


def derive_reply_key(device_key: bytes) -> bytes:
    """HKDF-SHA256(IKM = device key, salt = ``REPLY_KEY_SALT``, info = ``REPLY_KEY_INFO``), 32 bytes."""
    if len(device_key) != KEY_BYTES:
        raise ValueError(f"device keys are {KEY_BYTES} bytes, got {len(device_key)}")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=REPLY_KEY_SALT, info=REPLY_KEY_INFO)
    return hkdf.derive(device_key)


class ReplyKey:
    """A device's reply key, ready to seal and open: derive it once per device key, not per reply."""

    __slots__ = ("aead",)

    def __init__(self, device_key: bytes) -> None:
        self.aead: Final = AESGCM(derive_reply_key(device_key))
        """The AES-256-GCM cipher under the reply key."""


def reply_header(header: ReplyHeader) -> bytes:
    """The clear header's bytes: version, request id, key id, model version, model length, model."""
    model = header.model.encode()
    if len(header.request_id) != REQUEST_ID_BYTES:
        raise ValueError(f"request ids are {REQUEST_ID_BYTES} bytes, got {len(header.request_id)}")
    if not 1 <= len(model) <= MAX_MODEL_BYTES:
        raise ValueError(f"model must be 1..{MAX_MODEL_BYTES} UTF-8 bytes, got {len(model)}")
    if not (0 <= header.key_id <= MAX_KEY_ID and 0 <= header.model_version <= MAX_KEY_ID):
        raise ValueError("key id and model version are uint32")
    fixed = _HEADER.pack(CONTRACT_VERSION, header.request_id, header.key_id, header.model_version, len(model))
    return fixed + model


def reply_aad(header_bytes: bytes, region: str) -> bytes:
    """The associated data: ``REPLY_AAD_DOMAIN``, the clear header's bytes, then the region (u16
    big-endian length, UTF-8)."""
    name = region.encode()
    if not 1 <= len(name) <= MAX_REGION_BYTES:
        raise ValueError(f"region must be 1..{MAX_REGION_BYTES} UTF-8 bytes, got {len(name)}")
    return REPLY_AAD_DOMAIN + header_bytes + _U16.pack(len(name)) + name


def seal_reply(
    result: bytes, key: ReplyKey, header: ReplyHeader, region: str, *, nonce: bytes | None = None
) -> bytes:
    """The sealed reply: header ‖ nonce ‖ AES-256-GCM(result record bytes) ‖ tag.

    ``nonce``: 12 bytes from a secure generator, never used before (test vectors give their own); by
    default 12 fresh bytes from the OS's."""
    fixed = reply_header(header)
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonces are {NONCE_BYTES} bytes, got {len(nonce)}")
    return fixed + nonce + key.aead.encrypt(nonce, result, reply_aad(fixed, region))


def read_reply_header(sealed: bytes) -> tuple[ReplyHeader, int]:
    """The clear header of ``sealed`` (not yet authenticated: use it only to pick the device key by
    ``key_id``) and where its nonce starts. Raises MalformedReply or UnsupportedReplyVersion."""
    if len(sealed) < MIN_REPLY_BYTES:
        raise MalformedReply(f"{len(sealed)} bytes, shorter than any sealed reply ({MIN_REPLY_BYTES})")
    version, request_id, key_id, model_version, model_len = _HEADER.unpack_from(sealed)
    if version != CONTRACT_VERSION:
        raise UnsupportedReplyVersion(f"unsupported contract version {version}")
    end = _HEADER.size + model_len
    if not 1 <= model_len <= MAX_MODEL_BYTES or len(sealed) < end + NONCE_BYTES + TAG_BYTES:
        raise MalformedReply(f"model length {model_len} does not fit a {len(sealed)}-byte reply")
    try:
        model = sealed[_HEADER.size : end].decode()
    except UnicodeDecodeError as e:
        raise MalformedReply("model name is not UTF-8") from e
    return ReplyHeader(request_id, key_id, model, model_version), end


def open_reply(
    sealed: bytes, key: ReplyKey | bytes, region: str, *, request_id: bytes | None = None
) -> ResultRecord:
    """Verify and open a sealed reply read from ``region``'s replies topic: its result record.

    ``key``: the device's `ReplyKey` (or its device key, derived on each call: slower) for the reply's
    ``key_id``; ``request_id``: when given, the one request the caller accepts an answer for. Raises a
    `ReplyRefused` (stable ``reason``) and returns nothing else: MalformedReply,
    UnsupportedReplyVersion, ReplyForAnotherRequest, ReplyAuthenticationFailed (another device's or
    region's reply, or tampered) or ReplyRecordMismatch; ValueError only for the caller's own
    arguments (a key that is not 32 bytes, an empty region). Error messages never quote the reply's
    bytes or its unauthenticated model name."""
    header, end = read_reply_header(sealed)
    if request_id is not None and header.request_id != request_id:
        raise ReplyForAnotherRequest("the reply answers another request id")
    aead = (key if isinstance(key, ReplyKey) else ReplyKey(key)).aead
    nonce = sealed[end : end + NONCE_BYTES]
    try:
        plaintext = aead.decrypt(nonce, sealed[end + NONCE_BYTES :], reply_aad(sealed[:end], region))
    except InvalidTag as e:
        raise ReplyAuthenticationFailed(
            f"the reply does not authenticate under key id {header.key_id} in region {region!r}"
        ) from e
    try:
        record = ResultRecord.from_bytes(plaintext)
    except (UndecodableRecord, UnsupportedVersion) as e:
        raise ReplyRecordMismatch(f"the sealed plaintext is not a result record: {e}") from e
    sealed_fields = (header.request_id, header.model, header.model_version, region)
    if (record.request_id, record.model, record.model_version, record.region) != sealed_fields:
        raise ReplyRecordMismatch("the result record disagrees with the reply's sealed header")
    return record
