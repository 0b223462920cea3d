"""The gateway's frames: one msgpack map per binary WebSocket message, ``"t"`` naming its type.

Decoding is strict about what it reads (types, sizes) and lenient about what it does not (unknown keys
are ignored, so a newer peer can add fields). Anything else raises `BadFrame` with a message that never
quotes the frame: nothing a peer sends can raise any other error out of these functions (a fuzz test
walks them). ``docs/contract.md``, "Gateway", lists every frame. Pure logic: no sockets here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from edgestream.pipeline.contract.envelope import MAX_DEVICE_ID_BYTES, MAX_KEY_ID, REQUEST_ID_BYTES
from edgestream.pipeline.contract.gatewayauth import NONCE_BYTES, SIGNATURE_BYTES, BadFrame
from edgestream.pipeline.contract.packing import packb, unpackb_bounded

SESSION_ID_BYTES: Final = 16
"""A session id's length."""
MAX_REPORT_BYTES: Final = 64 * 1024
"""Largest device report the gateway produces."""
MAX_ACK_IDS: Final = 1024
"""Most request ids one ack frame may carry."""
MAX_TRACEPARENT_CHARS: Final = 128
"""Longest ``tp`` (a W3C traceparent is 55 characters)."""
MAX_FALLBACKS: Final = 999_999
"""Largest ``fb`` (the fallback header's six digits)."""
MAX_DETAIL_CHARS: Final = 200
"""A refusal's or rejection's detail is cut to this many characters."""
REFUSAL_REASONS: Final = (
    "bad_frame",
    "bad_device_id",
    "unknown_device",
    "bad_signature",
    "auth_timeout",
    "overloaded",
)
"""Why a gateway refuses a session (``refused``)."""
REJECTION_REASONS: Final = (
    "bad_frame",
    "undecodable",
    "device_mismatch",
    "too_large",
    "rate_limited",
    "unavailable",
)
"""Why a gateway rejects an envelope (``rejected``); the session goes on."""
WHATS: Final = frozenset({"catalogue", "artifact"})
"""What a ``get`` frame may ask for."""
_HEX: Final = frozenset("0123456789abcdef")


def decode_frame(raw: object) -> dict[str, Any]:
    """One frame as a map with a str ``t``; `BadFrame` for anything else (text messages included)."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise BadFrame("a frame is a binary message")
    try:
        frame = unpackb_bounded(
            bytes(raw),
            containers=16,  # the frame and an ack's ids, and room to name what is wrong
            max_array_len=MAX_ACK_IDS,
            max_map_len=64,
            raw=False,
            strict_map_key=False,
            use_list=True,
        )
    except Exception:  # any failure of the unpacker on hostile bytes is a bad frame
        raise BadFrame("not one msgpack value") from None
    if not isinstance(frame, dict):
        raise BadFrame("a frame is a msgpack map")
    kind = frame.get("t")
    if not isinstance(kind, str):
        raise BadFrame("a frame names its type in the str key t")
    return frame


def encode_frame(kind: str, **fields: object) -> bytes:
    """A frame of type ``kind`` with ``fields`` (bin for bytes, str for str)."""
    return packb({"t": kind, **fields})


def get_bytes(frame: dict[str, Any], key: str, size: int | None = None, *, most: int | None = None) -> bytes:
    """``frame[key]`` as bin, exactly ``size`` bytes or at most ``most``; else `BadFrame`."""
    value = frame.get(key)
    if not isinstance(value, bytes):
        raise BadFrame(f"{key} must be bin")
    if size is not None and len(value) != size:
        raise BadFrame(f"{key} must be {size} bytes")
    if most is not None and len(value) > most:
        raise BadFrame(f"{key} must be at most {most} bytes")
    return value


def get_int(frame: dict[str, Any], key: str, low: int, high: int) -> int:
    """``frame[key]`` as an int in ``low..high``; else `BadFrame`."""
    value = frame.get(key)
    if type(value) is not int or not low <= value <= high:
        raise BadFrame(f"{key} must be an int in {low}..{high}")
    return value


def get_str(frame: dict[str, Any], key: str, most_bytes: int) -> str:
    """``frame[key]`` as a str of 1..``most_bytes`` UTF-8 bytes; else `BadFrame`."""
    value = frame.get(key)
    if not isinstance(value, str) or not 0 < len(value.encode("utf-8", "surrogatepass")) <= most_bytes:
        raise BadFrame(f"{key} must be a str of 1..{most_bytes} UTF-8 bytes")
    return value


# -- what a device sends -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Auth:
    """``auth``: the device's answer to the gateway's hello."""

    device_id: str
    key_id: int
    nonce: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Env:
    """``env``: one sealed envelope to produce."""

    body: bytes
    fallbacks: int
    """``fb``: 0 when absent."""
    traceparent: str | None


@dataclass(frozen=True, slots=True)
class Get:
    """``get``: the catalogue, or one artifact by its SHA-256 (lower-case hex)."""

    what: str
    sha256: str | None


def parse_auth(frame: dict[str, Any]) -> Auth:
    """An ``auth`` frame's fields (the device id's normal form is checked by the transcript)."""
    return Auth(
        device_id=get_str(frame, "device", MAX_DEVICE_ID_BYTES),
        key_id=get_int(frame, "key_id", 0, MAX_KEY_ID),
        nonce=get_bytes(frame, "nonce", NONCE_BYTES),
        signature=get_bytes(frame, "sig", SIGNATURE_BYTES),
    )


def parse_env(frame: dict[str, Any]) -> Env:
    """An ``env`` frame's fields (the body's size is the gateway's to check: ``too_large``)."""
    body = get_bytes(frame, "body")
    fallbacks = get_int(frame, "fb", 0, MAX_FALLBACKS) if frame.get("fb") is not None else 0
    tp = frame.get("tp")
    if tp is not None and not (isinstance(tp, str) and tp.isascii() and len(tp) <= MAX_TRACEPARENT_CHARS):
        raise BadFrame(f"tp must be an ASCII str of at most {MAX_TRACEPARENT_CHARS} characters")
    return Env(body, fallbacks, tp)


def parse_ack(frame: dict[str, Any]) -> list[bytes]:
    """An ``ack`` frame's request ids."""
    ids = frame.get("ids")
    if not isinstance(ids, list) or len(ids) > MAX_ACK_IDS:
        raise BadFrame(f"ids must be a list of at most {MAX_ACK_IDS} request ids")
    if not all(isinstance(i, bytes) and len(i) == REQUEST_ID_BYTES for i in ids):
        raise BadFrame(f"every id must be {REQUEST_ID_BYTES} bytes")
    return ids


def parse_get(frame: dict[str, Any]) -> Get:
    """A ``get`` frame's fields."""
    what = frame.get("what")
    if not isinstance(what, str) or what not in WHATS:
        raise BadFrame(f"what must be one of {sorted(WHATS)}")
    if what == "catalogue":
        return Get("catalogue", None)
    sha = frame.get("sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _HEX):
        raise BadFrame("sha256 must be 64 lower-case hex digits")
    return Get("artifact", sha)


def auth_frame(auth: Auth) -> bytes:
    """An ``auth`` frame."""
    return encode_frame(
        "auth", device=auth.device_id, key_id=auth.key_id, nonce=auth.nonce, sig=auth.signature
    )


# -- what the gateway sends ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """``hello``: the gateway's challenge."""

    version: int
    region: str
    gateway: str
    nonce: bytes
    now_ms: int


def parse_hello(frame: dict[str, Any]) -> Hello:
    """A ``hello`` frame's fields."""
    if frame.get("t") != "hello":
        raise BadFrame("the gateway's first frame must be hello")
    return Hello(
        version=get_int(frame, "v", 0, 0xFFFF),
        region=get_str(frame, "region", 255),
        gateway=get_str(frame, "gateway", 255),
        nonce=get_bytes(frame, "nonce", NONCE_BYTES),
        now_ms=get_int(frame, "now_ms", 0, 2**63 - 1),
    )


def detail(text: str) -> str:
    """A detail cut to `MAX_DETAIL_CHARS`."""
    return text[:MAX_DETAIL_CHARS]
