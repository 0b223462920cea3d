"""Sealed envelopes: what a device produces to its ingest topic, and how the edge decodes and opens it.

An envelope is a msgpack map of header fields plus an AES-256-GCM ciphertext of the compressed body;
every header field is authenticated as associated data in a fixed binary layout (``aad``). The result
and audit records sent back are in ``records``. ``docs/contract.md`` specifies all of it for other
languages, with a test vector; this module is the reference implementation.
"""

from __future__ import annotations

import os
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, TypeAlias, cast

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgestream.pipeline.contract.codec import (
    Compressed,
    Compression,
    TensorBody,
    choose_compression,
    compress,
    decompress,
    map_header_entries,
    pack_body,
    unpack_body,
)
from edgestream.pipeline.contract.deviceid import check_device_id, device_id_problem
from edgestream.pipeline.contract.packing import packb, unpackb_bounded
from edgestream.pipeline.errors import (
    AuthenticationFailed,
    ContractError,
    OversizedEnvelope,
    UndecodableEnvelope,
    UnsupportedVersion,
)

Kind: TypeAlias = Literal["embedding", "frame"]
"""What an envelope carries; it selects the ingest topic and the model family."""

CONTRACT_VERSION: Final = 1
"""The one contract version this build speaks (envelope ``v``, records ``v``, HKDF info, AAD)."""
KINDS: Final[frozenset[str]] = frozenset({"embedding", "frame"})
"""Valid ``kind`` values."""
COMPRESSIONS: Final[frozenset[str]] = frozenset({"zstd", "none"})
"""Valid ``comp`` values."""
REQUEST_ID_BYTES: Final = 16
"""A request id is a UUID (version 7 from our devices) in its 16 raw bytes."""
NONCE_BYTES: Final = 12
"""AES-GCM nonce length (96 bits)."""
TAG_BYTES: Final = 16
"""AES-GCM tag length, appended to the ciphertext."""
KEY_BYTES: Final = 32
"""AES-256 device key length."""
MAX_DEVICE_ID_BYTES: Final = 128
"""Longest device id, UTF-8 bytes."""
MAX_MODEL_BYTES: Final = 128
"""Longest model name, UTF-8 bytes."""
MAX_KEY_ID: Final = 2**32 - 1
"""Key ids and model versions are uint32."""
MAX_TIME_MS: Final = 2**63 - 1
"""Times are non-negative signed 64-bit unix milliseconds."""
AAD_DOMAIN: Final = b"edgestream/envelope-aad"
"""Domain-separation prefix of the associated data (23 ASCII bytes)."""

# Envelope map keys, in the order senders emit them (docs/contract.md, "Envelope").
_ENVELOPE_KEYS: Final = ("v", "rid", "dev", "ts", "kind", "model", "mver", "kid", "comp", "nonce", "ct")
_ENVELOPE_KEY_SET: Final = frozenset(_ENVELOPE_KEYS)
_REQUIRED_KEY_SET: Final = _ENVELOPE_KEY_SET - {"mver"}
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
_NO_VERSION: Final = b"\x00"
_HAS_VERSION: Final = b"\x01"
_UNPACK_ERRORS: Final = (ValueError, TypeError, msgpack.UnpackException)
ENVELOPE_BOUNDS: Final = (512, 64, 64)
"""An envelope is one map of scalars; these bounds (`unpack_contract_map`) leave room for a later
version's fields, so that its envelopes are still refused as ``bad_version``, not ``undecodable``,
and let an envelope of up to 512 bytes (an embedding's) be parsed without counting."""


def unpack_contract_map(
    raw: bytes, error: type[ContractError], *, bounds: tuple[int, int, int] | None = None
) -> dict[str, Any]:
    """The msgpack map in ``raw``, once its ``v`` is ``CONTRACT_VERSION``: the first checks of every
    contract message. Raises ``error`` (a message-specific ContractError taking a message) for
    anything but a map with an integer ``v``, and UnsupportedVersion for another version. ``bounds``
    (containers, longest array, longest map: `packing.unpackb_bounded`) for a message a device sends."""
    try:
        if bounds is None:
            fields = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        elif len(raw) <= bounds[0]:  # too short to hold more containers than allowed: not counted
            fields = msgpack.unpackb(
                raw, raw=False, strict_map_key=True, max_array_len=bounds[1], max_map_len=bounds[2]
            )
        else:
            containers, max_array_len, max_map_len = bounds
            fields = unpackb_bounded(
                raw,
                containers=containers,
                max_array_len=max_array_len,
                max_map_len=max_map_len,
                raw=False,
                strict_map_key=True,
            )
    except _UNPACK_ERRORS as e:
        raise error(f"not a msgpack value: {type(e).__name__}") from e
    if type(fields) is not dict:
        raise error(f"a msgpack {type(fields).__name__}, not a map")
    version = fields.get("v")
    if type(version) is not int:
        raise error("no integer version field 'v'")
    if version != CONTRACT_VERSION:
        raise UnsupportedVersion(version)
    return fields


# --- request ids ---------------------------------------------------------------------------------


def new_request_id(*, now_ms: int | None = None) -> bytes:
    """A UUIDv7 (RFC 9562): 48-bit unix ms timestamp, version 7, 74 random bits, variant 0b10."""
    unix_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if not 0 <= unix_ms < 1 << 48:
        raise ValueError(f"timestamp {unix_ms} ms does not fit UUIDv7's 48 bits")
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> 68  # 12 bits
    rand_b = rand & ((1 << 62) - 1)  # 62 bits
    value = (unix_ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return value.to_bytes(REQUEST_ID_BYTES, "big")


def request_id_time_ms(request_id: bytes) -> int:
    """The unix ms timestamp in a UUIDv7 request id (meaningless for other UUID versions)."""
    return int.from_bytes(request_id[:6], "big")


def format_request_id(request_id: bytes) -> str:
    """The canonical 8-4-4-4-12 hex form, for logs and tools."""
    return str(uuid.UUID(bytes=request_id))


# --- envelope ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Envelope:
    """A decoded (not yet decrypted) envelope. Every field but nonce and ciphertext is in the AAD."""

    version: int
    """Contract version; always ``CONTRACT_VERSION`` once decoded."""
    request_id: bytes
    """16-byte UUID (UUIDv7 from our devices); the replay-protection and dedupe key."""
    device_id: str
    """Sender, 1..128 UTF-8 bytes; also the Kafka key and an input to its key derivation."""
    capture_time_ms: int
    """When the device captured the input, unix ms."""
    kind: Kind
    """What the body carries."""
    model: str
    """Model name to run, 1..128 UTF-8 bytes."""
    model_version: int | None
    """Pinned model version (uint32), or None to get whatever the rollout serves this device."""
    key_id: int
    """Which region master key the device key is derived from (uint32)."""
    compression: Compression
    """How the plaintext body is compressed."""
    nonce: bytes
    """12-byte AES-GCM nonce, random per message."""
    ciphertext: bytes
    """AES-256-GCM ciphertext of the compressed body, 16-byte tag appended."""


class _Header(NamedTuple):
    """The authenticated fields of an envelope (all but nonce and ciphertext), as in ``Envelope``."""

    version: int
    request_id: bytes
    device_id: str
    capture_time_ms: int
    kind: str
    model: str
    model_version: int | None
    key_id: int
    compression: str


def _header(envelope: Envelope) -> _Header:
    return _Header(
        envelope.version,
        envelope.request_id,
        envelope.device_id,
        envelope.capture_time_ms,
        envelope.kind,
        envelope.model,
        envelope.model_version,
        envelope.key_id,
        envelope.compression,
    )


def aad(envelope: Envelope) -> bytes:
    """The associated data: ``AAD_DOMAIN`` then every header field in a fixed binary layout.

    See docs/contract.md, "Associated data", for the table.
    """
    return _aad(envelope)


MEMO_LIMIT: Final = 65_536
"""Most strings whose length-prefixed bytes `_prefixed` remembers; when full it starts over (a region's
device ids repeat; kinds, codecs and model names are few)."""

_prefixed_memo: dict[str, bytes] = {}
_model_memo: dict[tuple[str, int | None], bytes] = {}


def _prefixed(text: str) -> bytes:
    """``text`` as the AAD writes a string: u16 big-endian length, UTF-8 (remembered)."""
    field = _prefixed_memo.get(text)
    if field is None:
        if len(_prefixed_memo) >= MEMO_LIMIT:
            _prefixed_memo.clear()
        encoded = text.encode()
        field = _prefixed_memo[text] = _U16.pack(len(encoded)) + encoded
    return field


def _model_field(model: str, model_version: int | None) -> bytes:
    """The AAD's model name and its pinned version (a flag byte, then u32 when pinned; remembered)."""
    key = (model, model_version)
    field = _model_memo.get(key)
    if field is None:
        if len(_model_memo) >= MEMO_LIMIT:
            _model_memo.clear()
        pinned = _NO_VERSION if model_version is None else _HAS_VERSION + _U32.pack(model_version)
        field = _model_memo[key] = _prefixed(model) + pinned
    return field


def _aad(header: _Header | Envelope) -> bytes:
    """The AAD of an envelope's fields (an envelope's, or those being sealed). Length-prefixed strings
    come from memos: 0.5 µs an envelope against 1.1 µs encoding and packing each field every time
    (the edge computes it for every record, the fleet for every request)."""
    return b"".join(
        (
            AAD_DOMAIN,
            _U16.pack(header.version),
            header.request_id,
            _prefixed(header.device_id),
            _U64.pack(header.capture_time_ms),
            _prefixed(header.kind),
            _model_field(header.model, header.model_version),
            _U32.pack(header.key_id),
            _prefixed(header.compression),
        )
    )


def encode_envelope(envelope: Envelope) -> bytes:
    """The envelope's wire bytes: a msgpack map, keys in the documented order, ``mver`` omitted
    when unpinned."""
    return _pack_envelope(_header(envelope), envelope.nonce, envelope.ciphertext)


def _pack_envelope(header: _Header, nonce: bytes, ciphertext: bytes) -> bytes:
    fields: dict[str, object] = {
        "v": header.version,
        "rid": header.request_id,
        "dev": header.device_id,
        "ts": header.capture_time_ms,
        "kind": header.kind,
        "model": header.model,
    }
    if header.model_version is not None:
        fields["mver"] = header.model_version
    fields["kid"] = header.key_id
    fields["comp"] = header.compression
    fields["nonce"] = nonce
    fields["ct"] = ciphertext
    return packb(fields)


def packed_payload(body: TensorBody, compression: Literal["auto", "zstd", "none"] = "auto") -> Compressed:
    """``body`` packed and compressed: what `seal` encrypts, and the codec its envelope names. A sender
    that seals the same body more than once (the simulated fleet, which sends rows of a fixed data set)
    packs it once and seals the payload each time (`seal_payload`). ``compression="auto"`` keeps zstd
    only when it pays (``choose_compression``). Raises ValueError for a body the contract forbids."""
    raw = pack_body(body)
    if compression == "auto":
        return choose_compression(raw)
    if compression in COMPRESSIONS:
        return Compressed(compression, compress(raw, compression))
    raise ValueError(f"unknown compression {compression!r}")


def seal(
    body: TensorBody,
    *,
    device_key: bytes | AESGCM,
    device_id: str,
    key_id: int,
    kind: Kind,
    model: str,
    model_version: int | None = None,
    capture_time_ms: int | None = None,
    request_id: bytes | None = None,
    nonce: bytes | None = None,
    compression: Literal["auto", "zstd", "none"] = "auto",
) -> bytes:
    """Pack, compress, encrypt and frame ``body``: the bytes a device produces to its ingest topic.

    ``device_key`` may be an ``AESGCM`` built once from the 32-byte key. ``capture_time_ms``,
    ``request_id`` and ``nonce`` default to now, a fresh UUIDv7 and 12 random bytes; pass them only
    for test vectors (a nonce must never repeat under a key). ``compression="auto"`` keeps zstd only
    when it pays (``choose_compression``). Raises ValueError for arguments the contract forbids.
    """
    return seal_payload(
        packed_payload(body, compression),
        device_key=device_key,
        device_id=device_id,
        key_id=key_id,
        kind=kind,
        model=model,
        model_version=model_version,
        capture_time_ms=capture_time_ms,
        request_id=request_id,
        nonce=nonce,
    )


def seal_payload(
    payload: Compressed,
    *,
    device_key: bytes | AESGCM,
    device_id: str,
    key_id: int,
    kind: Kind,
    model: str,
    model_version: int | None = None,
    capture_time_ms: int | None = None,
    request_id: bytes | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """`seal` of a body already packed and compressed by `packed_payload`: encrypt and frame it, with a
    request id, capture time and nonce of its own (the same defaults). Raises ValueError for arguments
    the contract forbids."""
    header = _Header(
        CONTRACT_VERSION,
        new_request_id() if request_id is None else request_id,
        device_id,
        time.time_ns() // 1_000_000 if capture_time_ms is None else capture_time_ms,
        kind,
        model,
        model_version,
        key_id,
        payload.codec,
    )
    if nonce is None:
        nonce = os.urandom(NONCE_BYTES)
    _check_header(header, nonce)
    if header.compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {header.compression!r}")
    ciphertext = _aead(device_key).encrypt(nonce, payload.data, _aad(header))
    return _pack_envelope(header, nonce, ciphertext)


def _aead(device_key: bytes | AESGCM) -> AESGCM:
    if isinstance(device_key, AESGCM):
        return device_key
    if len(device_key) != KEY_BYTES:
        raise ValueError(f"device keys are {KEY_BYTES} bytes, got {len(device_key)}")
    return AESGCM(device_key)


def _check_header(header: _Header, nonce: bytes) -> None:
    """Sender-side validation of the header fields (ValueError names the field)."""
    if len(header.request_id) != REQUEST_ID_BYTES:
        raise ValueError(f"request_id must be {REQUEST_ID_BYTES} bytes")
    if not _utf8_len_ok(header.device_id, MAX_DEVICE_ID_BYTES):
        raise ValueError(f"device_id must be 1..{MAX_DEVICE_ID_BYTES} UTF-8 bytes")
    problem = device_id_problem(header.device_id)
    if problem is not None:
        raise ValueError(f"device_id {problem} (pipeline/contract/deviceid.py: normal_device_id)")
    if not 0 <= header.capture_time_ms <= MAX_TIME_MS:
        raise ValueError("capture_time_ms must be a non-negative int64")
    if header.kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}")
    if not _utf8_len_ok(header.model, MAX_MODEL_BYTES):
        raise ValueError(f"model must be 1..{MAX_MODEL_BYTES} UTF-8 bytes")
    if header.model_version is not None and not 0 <= header.model_version <= MAX_KEY_ID:
        raise ValueError("model_version must be a uint32")
    if not 0 <= header.key_id <= MAX_KEY_ID:
        raise ValueError("key_id must be a uint32")
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")


def _utf8_len_ok(text: str, max_bytes: int) -> bool:
    """1 <= len(text as UTF-8) <= max_bytes, and ``text`` encodes (no lone surrogates)."""
    if text.isascii():
        return 0 < len(text) <= max_bytes
    try:
        return 0 < len(text.encode()) <= max_bytes
    except UnicodeEncodeError:
        return False


def decode_envelope(raw: bytes, *, max_envelope_bytes: int) -> Envelope:
    """Parse and type-check an envelope's wire bytes (no decryption).

    Order of checks: size (before parsing) -> msgpack map -> version -> keys -> field types -> the
    device id's normal form (NFC, no control characters). Raises OversizedEnvelope,
    UndecodableEnvelope, UnsupportedVersion or BadDeviceId.
    """
    if len(raw) > max_envelope_bytes:
        raise OversizedEnvelope(len(raw), max_envelope_bytes)
    fields = unpack_contract_map(raw, UndecodableEnvelope, bounds=ENVELOPE_BOUNDS)
    keys = fields.keys()
    if not (keys <= _ENVELOPE_KEY_SET and keys >= _REQUIRED_KEY_SET):
        unknown = sorted(map(str, keys - _ENVELOPE_KEY_SET))
        missing = sorted(_REQUIRED_KEY_SET - keys)
        raise UndecodableEnvelope(f"unknown keys {unknown}, missing keys {missing}")
    if map_header_entries(raw) != len(fields):
        raise UndecodableEnvelope("duplicate keys")
    request_id = fields["rid"]
    device_id = fields["dev"]
    capture_time_ms = fields["ts"]
    kind = fields["kind"]
    model = fields["model"]
    model_version = fields.get("mver")
    key_id = fields["kid"]
    compression = fields["comp"]
    nonce = fields["nonce"]
    ciphertext = fields["ct"]
    if type(request_id) is not bytes or len(request_id) != REQUEST_ID_BYTES:
        raise UndecodableEnvelope(f"'rid' must be bin of {REQUEST_ID_BYTES} bytes")
    if type(device_id) is not str or not _utf8_len_ok(device_id, MAX_DEVICE_ID_BYTES):
        raise UndecodableEnvelope(f"'dev' must be a str of 1..{MAX_DEVICE_ID_BYTES} UTF-8 bytes")
    if type(capture_time_ms) is not int or not 0 <= capture_time_ms <= MAX_TIME_MS:
        raise UndecodableEnvelope("'ts' must be a non-negative int64")
    if type(kind) is not str or kind not in KINDS:
        raise UndecodableEnvelope(f"'kind' must be one of {sorted(KINDS)}")
    if type(model) is not str or not _utf8_len_ok(model, MAX_MODEL_BYTES):
        raise UndecodableEnvelope(f"'model' must be a str of 1..{MAX_MODEL_BYTES} UTF-8 bytes")
    if model_version is not None and (type(model_version) is not int or not 0 <= model_version <= MAX_KEY_ID):
        raise UndecodableEnvelope("'mver' must be a uint32 or nil")
    if type(key_id) is not int or not 0 <= key_id <= MAX_KEY_ID:
        raise UndecodableEnvelope("'kid' must be a uint32")
    if type(compression) is not str or compression not in COMPRESSIONS:
        raise UndecodableEnvelope(f"'comp' must be one of {sorted(COMPRESSIONS)}")
    if type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
        raise UndecodableEnvelope(f"'nonce' must be bin of {NONCE_BYTES} bytes")
    if type(ciphertext) is not bytes or len(ciphertext) < TAG_BYTES:
        raise UndecodableEnvelope(f"'ct' must be bin of at least {TAG_BYTES} bytes")
    check_device_id(device_id)
    return Envelope(
        CONTRACT_VERSION,
        request_id,
        device_id,
        capture_time_ms,
        cast("Kind", kind),
        model,
        model_version,
        key_id,
        cast("Compression", compression),
        nonce,
        ciphertext,
    )


def open_envelope(envelope: Envelope, device_key: bytes | AESGCM, *, max_body_bytes: int) -> TensorBody:
    """Authenticate and decrypt, decompress (at most ``max_body_bytes``) and parse the body.

    Raises AuthenticationFailed (wrong key or anything tampered), OversizedEnvelope,
    DecompressionFailed or MalformedBody. Shape and dtype against the model are the caller's check.
    """
    plaintext = authenticate(envelope, device_key)
    return unpack_body(decompress(plaintext, envelope.compression, max_body_bytes))


def authenticate(envelope: Envelope, device_key: bytes | AESGCM) -> bytes:
    """Authenticate and decrypt: the plaintext (still compressed), or AuthenticationFailed."""
    try:
        plaintext: bytes = _aead(device_key).decrypt(envelope.nonce, envelope.ciphertext, aad(envelope))
    except InvalidTag as e:
        raise AuthenticationFailed(
            f"envelope {format_request_id(envelope.request_id)} from {envelope.device_id!r} "
            f"does not authenticate under key id {envelope.key_id}"
        ) from e
    return plaintext
