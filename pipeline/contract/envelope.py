"""The message contract: sealed envelopes from devices, result and audit records back to backends.

An envelope is a msgpack map of header fields plus an AES-256-GCM ciphertext of the compressed body;
every header field is authenticated as associated data in a fixed binary layout (``aad``). Result and
audit records are plain msgpack maps. ``docs/contract.md`` specifies all of it for other languages,
with a test vector; this module is the reference implementation.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, cast

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgestream.pipeline.contract.codec import (
    Compression,
    TensorBody,
    choose_compression,
    compress,
    decompress,
    map_header_entries,
    pack_body,
    unpack_body,
)
from edgestream.pipeline.errors import (
    AuthenticationFailed,
    OversizedEnvelope,
    UndecodableEnvelope,
    UndecodableRecord,
    UnsupportedVersion,
)

Kind: TypeAlias = Literal["embedding", "frame"]
"""What an envelope carries; it selects the ingest topic and the model family."""
Outcome: TypeAlias = Literal["ok", "dead_letter"]
"""How the edge disposed of a request."""

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
DIGEST_BYTES: Final = 32
"""An audit chain digest (SHA-256) and a record's ``prev``."""
CHAIN_ORIGIN: Final = bytes(DIGEST_BYTES)
"""``prev`` of the first record of a chain segment."""

# Envelope map keys, in the order senders emit them (docs/contract.md, "Envelope").
_ENVELOPE_KEYS: Final = ("v", "rid", "dev", "ts", "kind", "model", "mver", "kid", "comp", "nonce", "ct")
_ENVELOPE_KEY_SET: Final = frozenset(_ENVELOPE_KEYS)
_REQUIRED_KEY_SET: Final = _ENVELOPE_KEY_SET - {"mver"}
_CHAIN_KEYS: Final = ("chain", "seg", "seq", "prev")
"""Audit record keys of the hash chain, in wire order; present together or not at all."""
_MAX_INT64: Final = 2**63 - 1
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
_NO_VERSION: Final = b"\x00"
_HAS_VERSION: Final = b"\x01"
_UNPACK_ERRORS: Final = (ValueError, TypeError, msgpack.UnpackException)


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


@dataclass(frozen=True, slots=True)
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


def aad(envelope: Envelope) -> bytes:
    """The associated data: ``AAD_DOMAIN`` then every header field in a fixed binary layout.

    See docs/contract.md, "Associated data", for the table.
    """
    return _aad(
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


def _aad(
    version: int,
    request_id: bytes,
    device_id: str,
    capture_time_ms: int,
    kind: str,
    model: str,
    model_version: int | None,
    key_id: int,
    compression: str,
) -> bytes:
    device = device_id.encode()
    model_name = model.encode()
    kind_name = kind.encode()
    codec = compression.encode()
    pinned = _NO_VERSION if model_version is None else _HAS_VERSION + _U32.pack(model_version)
    return b"".join(
        (
            AAD_DOMAIN,
            _U16.pack(version),
            request_id,
            _U16.pack(len(device)),
            device,
            _U64.pack(capture_time_ms),
            _U16.pack(len(kind_name)),
            kind_name,
            _U16.pack(len(model_name)),
            model_name,
            pinned,
            _U32.pack(key_id),
            _U16.pack(len(codec)),
            codec,
        )
    )


def encode_envelope(envelope: Envelope) -> bytes:
    """The envelope's wire bytes: a msgpack map, keys in the documented order, ``mver`` omitted
    when unpinned."""
    return _pack_envelope(
        envelope.version,
        envelope.request_id,
        envelope.device_id,
        envelope.capture_time_ms,
        envelope.kind,
        envelope.model,
        envelope.model_version,
        envelope.key_id,
        envelope.compression,
        envelope.nonce,
        envelope.ciphertext,
    )


def _pack_envelope(
    version: int,
    request_id: bytes,
    device_id: str,
    capture_time_ms: int,
    kind: str,
    model: str,
    model_version: int | None,
    key_id: int,
    compression: str,
    nonce: bytes,
    ciphertext: bytes,
) -> bytes:
    fields: dict[str, object] = {
        "v": version,
        "rid": request_id,
        "dev": device_id,
        "ts": capture_time_ms,
        "kind": kind,
        "model": model,
    }
    if model_version is not None:
        fields["mver"] = model_version
    fields["kid"] = key_id
    fields["comp"] = compression
    fields["nonce"] = nonce
    fields["ct"] = ciphertext
    return msgpack.packb(fields, use_bin_type=True)


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
    raw = pack_body(body)
    if compression == "auto":
        codec, payload = choose_compression(raw)
    elif compression in COMPRESSIONS:
        codec, payload = compression, compress(raw, compression)
    else:
        raise ValueError(f"unknown compression {compression!r}")
    if request_id is None:
        request_id = new_request_id()
    if capture_time_ms is None:
        capture_time_ms = time.time_ns() // 1_000_000
    if nonce is None:
        nonce = os.urandom(NONCE_BYTES)
    _check_header(request_id, device_id, capture_time_ms, kind, model, model_version, key_id, nonce)
    header = (
        CONTRACT_VERSION,
        request_id,
        device_id,
        capture_time_ms,
        kind,
        model,
        model_version,
        key_id,
        codec,
    )
    ciphertext = _aead(device_key).encrypt(nonce, payload, _aad(*header))
    return _pack_envelope(*header, nonce, ciphertext)


def _aead(device_key: bytes | AESGCM) -> AESGCM:
    if isinstance(device_key, AESGCM):
        return device_key
    if len(device_key) != KEY_BYTES:
        raise ValueError(f"device keys are {KEY_BYTES} bytes, got {len(device_key)}")
    return AESGCM(device_key)


def _check_header(
    request_id: bytes,
    device_id: str,
    capture_time_ms: int,
    kind: str,
    model: str,
    model_version: int | None,
    key_id: int,
    nonce: bytes,
) -> None:
    """Sender-side validation of the header fields (ValueError names the field)."""
    if len(request_id) != REQUEST_ID_BYTES:
        raise ValueError(f"request_id must be {REQUEST_ID_BYTES} bytes")
    if not _utf8_len_ok(device_id, MAX_DEVICE_ID_BYTES):
        raise ValueError(f"device_id must be 1..{MAX_DEVICE_ID_BYTES} UTF-8 bytes")
    if not 0 <= capture_time_ms <= MAX_TIME_MS:
        raise ValueError("capture_time_ms must be a non-negative int64")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}")
    if not _utf8_len_ok(model, MAX_MODEL_BYTES):
        raise ValueError(f"model must be 1..{MAX_MODEL_BYTES} UTF-8 bytes")
    if model_version is not None and not 0 <= model_version <= MAX_KEY_ID:
        raise ValueError("model_version must be a uint32")
    if not 0 <= key_id <= MAX_KEY_ID:
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

    Order of checks: size (before parsing) -> msgpack map -> version -> keys -> field types.
    Raises OversizedEnvelope, UndecodableEnvelope or UnsupportedVersion.
    """
    if len(raw) > max_envelope_bytes:
        raise OversizedEnvelope(len(raw), max_envelope_bytes)
    try:
        fields = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except _UNPACK_ERRORS as e:
        raise UndecodableEnvelope(f"not a msgpack value: {type(e).__name__}") from e
    if type(fields) is not dict:
        raise UndecodableEnvelope(f"a msgpack {type(fields).__name__}, not a map")
    version = fields.get("v")
    if type(version) is not int:
        raise UndecodableEnvelope("no integer version field 'v'")
    if version != CONTRACT_VERSION:
        raise UnsupportedVersion(version)
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
    return Envelope(
        version,
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
    try:
        plaintext = _aead(device_key).decrypt(envelope.nonce, envelope.ciphertext, aad(envelope))
    except InvalidTag as e:
        raise AuthenticationFailed(
            f"envelope {format_request_id(envelope.request_id)} from {envelope.device_id!r} "
            f"does not authenticate under key id {envelope.key_id}"
        ) from e
    return unpack_body(decompress(plaintext, envelope.compression, max_body_bytes))


# --- result and audit records --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """What the edge answers on ``edge.<region>.results`` (Kafka key: device id)."""

    request_id: bytes
    """The envelope's request id (16 bytes)."""
    device_id: str
    """The envelope's device id."""
    model: str
    """Model that answered."""
    model_version: int
    """Version that answered (the pinned one when the envelope pinned one)."""
    label: int
    """Predicted class index."""
    scores: tuple[float, ...]
    """Per-class scores (probabilities), indexed by label."""
    queue_ms: float
    """Arrival at the worker -> batch start."""
    infer_ms: float
    """Model run time of the batch this request was in."""
    total_ms: float
    """Capture on the device -> result produced (spans two clocks)."""
    batch_size: int
    """Requests in that batch."""
    node: str
    """Edge worker that answered."""
    region: str
    """Region of that worker."""
    produced_at_ms: int
    """When the record was produced, unix ms."""

    def to_bytes(self) -> bytes:
        """msgpack map with the keys of docs/contract.md, "Result record"."""
        return msgpack.packb(
            {
                "v": CONTRACT_VERSION,
                "rid": self.request_id,
                "dev": self.device_id,
                "model": self.model,
                "mver": self.model_version,
                "label": self.label,
                "scores": list(self.scores),
                "q_ms": float(self.queue_ms),
                "i_ms": float(self.infer_ms),
                "t_ms": float(self.total_ms),
                "bs": self.batch_size,
                "node": self.node,
                "region": self.region,
                "at_ms": self.produced_at_ms,
            },
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> ResultRecord:
        """Parse a result record; unknown keys are ignored. Raises UndecodableRecord or
        UnsupportedVersion."""
        fields = _record_fields(raw)
        try:
            scores = fields.get("scores")
            if type(scores) is not list:
                raise TypeError("'scores' must be an array")
            return cls(
                request_id=_request_id(fields),
                device_id=_str(fields, "dev"),
                model=_str(fields, "model"),
                model_version=_int(fields, "mver"),
                label=_int(fields, "label"),
                scores=tuple(_number(s, "scores") for s in scores),
                queue_ms=_float(fields, "q_ms"),
                infer_ms=_float(fields, "i_ms"),
                total_ms=_float(fields, "t_ms"),
                batch_size=_int(fields, "bs"),
                node=_str(fields, "node"),
                region=_str(fields, "region"),
                produced_at_ms=_int(fields, "at_ms"),
            )
        except TypeError as e:
            raise UndecodableRecord(f"not a result record: {e}") from e


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One per request the edge disposed of, on ``edge.<region>.audit``. Carries no payload or scores."""

    timestamp_ms: int
    """When the edge disposed of the request, unix ms."""
    request_id: bytes | None
    """The envelope's request id; None when the record was too broken to have one."""
    node: str
    """Edge worker."""
    region: str
    """Region of that worker."""
    device_id: str | None
    """The envelope's device id; None when unknown."""
    model: str | None
    """Model that answered or was asked for; None when unknown."""
    model_version: int | None
    """Version that answered (or was pinned); None when none applies."""
    outcome: Outcome
    """``ok``: a result was produced; ``dead_letter``: the record went to the DLQ."""
    reason: str | None
    """The error's ``reason`` code for a dead letter; None when ok."""
    latency_ms: float
    """Capture -> disposal (ok) or arrival -> disposal (dead letter without a capture time)."""
    chain: str | None = None
    """Hash chain this record is linked into: ``<input topic>/<input partition>``; None when unlinked
    (a record written before chains, or not yet passed through ``AuditChain.link``)."""
    segment: int | None = None
    """The chain segment: the input offset its owner started it at (docs/contract.md, "Audit chain")."""
    seq: int | None = None
    """Position in the segment, 1-based and contiguous."""
    prev: bytes | None = None
    """``audit_digest`` of the segment's previous record; ``CHAIN_ORIGIN`` (32 zero bytes) for seq 1."""

    def to_bytes(self) -> bytes:
        """msgpack map with the keys of docs/contract.md, "Audit record", in its order; None fields are
        omitted. Deterministic: equal records give equal bytes (the chain digests depend on it)."""
        fields: dict[str, object] = {"v": CONTRACT_VERSION, "at_ms": self.timestamp_ms}
        if self.request_id is not None:
            fields["rid"] = self.request_id
        fields["node"] = self.node
        fields["region"] = self.region
        if self.device_id is not None:
            fields["dev"] = self.device_id
        if self.model is not None:
            fields["model"] = self.model
        if self.model_version is not None:
            fields["mver"] = self.model_version
        fields["outcome"] = self.outcome
        if self.reason is not None:
            fields["reason"] = self.reason
        fields["lat_ms"] = float(self.latency_ms)
        if self.chain is not None:
            fields["chain"] = self.chain
        if self.segment is not None:
            fields["seg"] = self.segment
        if self.seq is not None:
            fields["seq"] = self.seq
        if self.prev is not None:
            fields["prev"] = self.prev
        return msgpack.packb(fields, use_bin_type=True)

    @classmethod
    def from_bytes(cls, raw: bytes) -> AuditRecord:
        """Parse an audit record; unknown keys are ignored. Raises UndecodableRecord or
        UnsupportedVersion."""
        fields = _record_fields(raw)
        try:
            outcome = _str(fields, "outcome")
            if outcome not in ("ok", "dead_letter"):
                raise TypeError(f"'outcome' must be ok or dead_letter, not {outcome!r}")
            chain, segment, seq, prev = _chain_fields(fields)
            return cls(
                timestamp_ms=_int(fields, "at_ms"),
                request_id=None if fields.get("rid") is None else _request_id(fields),
                node=_str(fields, "node"),
                region=_str(fields, "region"),
                device_id=_optional_str(fields, "dev"),
                model=_optional_str(fields, "model"),
                model_version=_optional_int(fields, "mver"),
                outcome=cast("Outcome", outcome),
                reason=_optional_str(fields, "reason"),
                latency_ms=_float(fields, "lat_ms"),
                chain=chain,
                segment=segment,
                seq=seq,
                prev=prev,
            )
        except TypeError as e:
            raise UndecodableRecord(f"not an audit record: {e}") from e


def audit_digest(raw: bytes) -> bytes:
    """SHA-256 of an audit record's wire bytes: what the next record's ``prev`` holds."""
    return hashlib.sha256(raw).digest()


def _chain_fields(fields: dict[str, object]) -> tuple[str | None, int | None, int | None, bytes | None]:
    """(chain, seg, seq, prev) of an audit record: all four or none, each checked (TypeError otherwise)."""
    present = [key for key in _CHAIN_KEYS if fields.get(key) is not None]
    if not present:
        return None, None, None, None
    if len(present) != len(_CHAIN_KEYS):
        missing = sorted(set(_CHAIN_KEYS) - set(present))
        raise TypeError(f"chain keys come together: {missing} missing beside {present}")
    chain = _str(fields, "chain")
    segment = _int(fields, "seg")
    seq = _int(fields, "seq")
    prev = fields["prev"]
    if not chain:
        raise TypeError("'chain' must not be empty")
    if not 0 <= segment <= _MAX_INT64:
        raise TypeError("'seg' must be a non-negative int64")
    if not 1 <= seq <= _MAX_INT64:
        raise TypeError("'seq' must be a positive int64")
    if type(prev) is not bytes or len(prev) != DIGEST_BYTES:
        raise TypeError(f"'prev' must be bin of {DIGEST_BYTES} bytes")
    return chain, segment, seq, prev


def _record_fields(raw: bytes) -> dict[str, object]:
    try:
        fields = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except _UNPACK_ERRORS as e:
        raise UndecodableRecord(f"not a msgpack value: {type(e).__name__}") from e
    if type(fields) is not dict:
        raise UndecodableRecord(f"a msgpack {type(fields).__name__}, not a map")
    version = fields.get("v")
    if type(version) is not int:
        raise UndecodableRecord("no integer version field 'v'")
    if version != CONTRACT_VERSION:
        raise UnsupportedVersion(version)
    return fields


def _str(fields: dict[str, object], key: str) -> str:
    value = fields.get(key)
    if type(value) is not str:
        raise TypeError(f"{key!r} must be a str")
    return value


def _int(fields: dict[str, object], key: str) -> int:
    value = fields.get(key)
    if type(value) is not int:
        raise TypeError(f"{key!r} must be an integer")
    return value


def _float(fields: dict[str, object], key: str) -> float:
    return _number(fields.get(key), key)


def _number(value: object, key: str) -> float:
    if type(value) is not float and type(value) is not int:
        raise TypeError(f"{key!r} must be a number")
    return float(value)


def _request_id(fields: dict[str, object]) -> bytes:
    value = fields.get("rid")
    if type(value) is not bytes or len(value) != REQUEST_ID_BYTES:
        raise TypeError(f"'rid' must be bin of {REQUEST_ID_BYTES} bytes")
    return value


def _optional_str(fields: dict[str, object], key: str) -> str | None:
    return None if fields.get(key) is None else _str(fields, key)


def _optional_int(fields: dict[str, object], key: str) -> int | None:
    return None if fields.get(key) is None else _int(fields, key)
