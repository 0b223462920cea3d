"""Tensor bodies and their compression: what sits inside an envelope's ciphertext.

A body is a msgpack map holding the tensor as one ``bin`` (little-endian, C order), its dtype name,
its shape, an int8 scale and a few small attributes. Compression is zstd or nothing, chosen per
message by what it saves; decompression is capped so a small frame cannot expand into a large one.
The wire format is specified in ``docs/contract.md``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, TypeAlias

import msgpack
import numpy as np
import numpy.typing as npt
import zstandard

from edgestream.pipeline.contract.packing import packb, unpackb_bounded
from edgestream.pipeline.errors import DecompressionFailed, MalformedBody, NonFiniteTensor, OversizedEnvelope

if TYPE_CHECKING:
    from collections.abc import Mapping

TensorDtype: TypeAlias = Literal["float32", "float16", "int8", "uint8"]
"""Element types a body may carry."""
Compression: TypeAlias = Literal["zstd", "none"]
"""How a body's msgpack bytes are compressed before encryption."""
AttrValue: TypeAlias = str | int | float
"""Type of a body attribute value."""

NUMPY_DTYPES: Final[Mapping[str, np.dtype[Any]]] = MappingProxyType(
    {
        "float32": np.dtype("<f4"),
        "float16": np.dtype("<f2"),
        "int8": np.dtype("i1"),
        "uint8": np.dtype("u1"),
    }
)
"""Wire dtype name -> numpy dtype; multi-byte elements are little-endian on the wire."""

MAX_NDIM: Final = 8
"""Most dimensions a tensor may have."""
MAX_DIM: Final = 2**32 - 1
"""Largest size of one dimension (uint32)."""
MAX_ATTRS: Final = 16
"""Most attributes a body may carry."""
MAX_ATTR_KEY_BYTES: Final = 64
"""Longest attribute name, UTF-8 bytes."""
MAX_ATTR_STR_BYTES: Final = 256
"""Longest string attribute value, UTF-8 bytes."""
INT8_LEVELS: Final = 127
"""int8 quantisation is symmetric: q in [-127, 127], x ~= q * scale."""
INT8_MIN_REFUSED: Final = b"\x80"
"""The byte of q = -128, outside the symmetric range: a body holding it is refused (``bad_body``)."""

ZSTD_LEVEL: Final = 3
"""zstd compression level used by ``compress``."""
MAX_ZSTD_WINDOW_BYTES: Final = 1 << 23
"""Largest zstd window a frame may ask for (window log 23); larger frames are refused."""
DEFAULT_MIN_SAVING_FRACTION: Final = 0.10
"""``choose_compression`` keeps zstd only when it makes the body at least this much smaller."""

EMPTY_ATTRS: Final[Mapping[str, AttrValue]] = MappingProxyType({})
"""Shared immutable default for ``TensorBody.attrs``."""

_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_STREAM_INPUT_CHUNK_BYTES: Final = 32
"""Compressed bytes fed per step when a frame does not declare its size: one step can emit at most
about 11 zstd blocks (128 KiB each), which bounds the overshoot past the cap before it is noticed."""

# Body map keys (docs/contract.md, "Body").
_K_DTYPE: Final = "dt"
_K_SHAPE: Final = "sh"
_K_DATA: Final = "b"
_K_SCALE: Final = "sc"
_K_ATTRS: Final = "at"
_BODY_KEYS: Final = frozenset({_K_DTYPE, _K_SHAPE, _K_DATA, _K_SCALE, _K_ATTRS})
_BODY_CONTAINERS: Final = 512
"""Most arrays and maps a body may hold (its shape and attributes: a few): `packing.unpackb_bounded`."""
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


@dataclass(slots=True)
class TensorBody:
    """One tensor as it travels: raw element bytes plus what is needed to view them."""

    data: bytes
    """Elements in C order, little-endian, exactly ``prod(shape) * itemsize`` bytes."""
    dtype: TensorDtype
    """Element type name on the wire."""
    shape: tuple[int, ...]
    """Dimensions, at most ``MAX_NDIM``, each 0..2**32-1."""
    scale: float | None = None
    """int8 only (required there): real value = q * scale. None for every other dtype."""
    attrs: Mapping[str, AttrValue] = field(default_factory=lambda: EMPTY_ATTRS)
    """Small free-form metadata (sensor, units, ...): at most 16 entries; authenticated with the body."""


class Compressed(NamedTuple):
    """What ``choose_compression`` decided and the bytes that go with the decision."""

    codec: Compression
    """The codec the envelope must name."""
    data: bytes
    """The body bytes to encrypt (compressed when ``codec`` is zstd, unchanged otherwise)."""


class _ThreadCodecs(threading.local):
    """zstd contexts are not thread-safe; one compressor and one decompressor per thread."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, write_content_size=True, write_checksum=False, write_dict_id=False
        )
        self.decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW_BYTES)


_codecs = _ThreadCodecs()


# --- tensors -------------------------------------------------------------------------------------


def encode_tensor(
    array: npt.NDArray[Any], dtype: TensorDtype, *, attrs: Mapping[str, AttrValue] = EMPTY_ATTRS
) -> TensorBody:
    """Convert ``array`` to the wire ``dtype``.

    float32 / float16: cast (values must be finite and fit the type). int8: symmetric per-tensor
    quantisation, ``scale = max|x| / 127`` (1.0 for an all-zero tensor), ``q = round_half_even(x /
    scale)``. uint8: stored as-is; every value must be an integer in 0..255.

    Raises ValueError when the array cannot be represented (non-numeric, non-finite, out of range,
    too many dimensions, bad attributes).
    """
    if dtype not in NUMPY_DTYPES:
        raise ValueError(f"unknown tensor dtype {dtype!r}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"cannot encode an array of dtype {array.dtype} as a tensor")
    if array.ndim > MAX_NDIM:
        raise ValueError(f"tensor has {array.ndim} dimensions, the most is {MAX_NDIM}")
    _check_attrs(attrs)
    attrs = MappingProxyType(dict(attrs)) if attrs else EMPTY_ATTRS
    shape = tuple(int(n) for n in array.shape)
    scale: float | None = None
    if dtype == "float32" or dtype == "float16":
        with np.errstate(over="ignore", invalid="ignore"):
            out = array.astype(NUMPY_DTYPES[dtype])
        if not np.isfinite(out).all():
            raise ValueError(f"tensor has values that are not finite as {dtype}")
    elif dtype == "int8":
        out, scale = _quantise_int8(array)
    else:
        out = _as_uint8(array)
    return TensorBody(data=out.tobytes(order="C"), dtype=dtype, shape=shape, scale=scale, attrs=attrs)


def _quantise_int8(array: npt.NDArray[Any]) -> tuple[npt.NDArray[np.int8], float]:
    x = array.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError("tensor has values that are not finite as float32")
    max_abs = float(np.max(np.abs(x))) if x.size else 0.0
    scale = max_abs / INT8_LEVELS if max_abs > 0.0 else 1.0
    # In float64: for subnormal float32 inputs (|x| < 1.2e-38) the scale is below float32's range
    # and would round to 0 there; float64 holds it (its own subnormals reach 4.9e-324).
    q = np.clip(np.rint(x.astype(np.float64) / scale), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    return q, scale


def _as_uint8(array: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    if array.dtype == np.uint8 or array.size == 0:
        return array.astype(np.uint8)
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and (array == np.round(array)).all()):
        raise ValueError("uint8 tensors take integer values; got fractional or non-finite values")
    low, high = array.min(), array.max()
    if low < 0 or high > 255:
        raise ValueError(f"uint8 tensors take values in 0..255; got {low}..{high}")
    return array.astype(np.uint8)


def decode_tensor(body: TensorBody, *, dequantise: bool = False) -> npt.NDArray[Any]:
    """View ``body`` as an array without copying (read-only, backed by ``body.data``).

    With ``dequantise=True`` an int8 body is returned as float32 ``q * scale`` (a new array); other
    dtypes ignore the flag. Raises MalformedBody when dtype, shape and byte length disagree, and
    NonFiniteTensor when a float element is NaN or infinite (a float16 bit pattern of Inf or NaN, or a
    dequantised value past float32's range).
    """
    np_dtype = NUMPY_DTYPES.get(body.dtype)
    if np_dtype is None:
        raise MalformedBody(f"unknown tensor dtype {body.dtype!r}")
    expected_bytes = math.prod(body.shape) * np_dtype.itemsize
    if len(body.data) != expected_bytes:
        raise MalformedBody(
            f"{body.dtype} tensor of shape {body.shape} needs {expected_bytes} bytes, got {len(body.data)}"
        )
    array = np.frombuffer(body.data, dtype=np_dtype).reshape(body.shape)
    if dequantise and body.dtype == "int8":
        if body.scale is None:
            raise MalformedBody("int8 tensor without a scale")
        # The product in float64, then float32: a scale below float32's range (subnormal inputs) would
        # otherwise round to 0 before the multiplication and erase the tensor. A scale near float32's
        # largest value times 127 overflows it: refused below, like any infinity.
        with np.errstate(over="ignore", invalid="ignore"):
            array = (array.astype(np.float64) * body.scale).astype(np.float32)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise NonFiniteTensor(f"{body.dtype} tensor of shape {body.shape} has NaN or infinite values")
    return array


# --- body map ------------------------------------------------------------------------------------


def pack_body(body: TensorBody) -> bytes:
    """Serialise ``body`` as the body msgpack map (keys in the documented order).

    Raises ValueError when the body breaks the contract, so a device never sends one the edge refuses.
    """
    _check_body(body, ValueError)
    _check_attrs(body.attrs)
    fields: dict[str, object] = {_K_DTYPE: body.dtype, _K_SHAPE: list(body.shape), _K_DATA: body.data}
    if body.scale is not None:
        fields[_K_SCALE] = float(body.scale)
    if body.attrs:
        fields[_K_ATTRS] = dict(body.attrs)
    return packb(fields)


def unpack_body(raw: bytes) -> TensorBody:
    """Parse and validate a body map. Raises MalformedBody on any structural problem."""
    try:
        if len(raw) <= _BODY_CONTAINERS:  # too short to hold more arrays and maps: not counted
            fields = msgpack.unpackb(
                raw, raw=False, use_list=False, strict_map_key=True, max_array_len=64, max_map_len=64
            )
        else:
            fields = unpackb_bounded(
                raw,
                containers=_BODY_CONTAINERS,
                max_array_len=64,  # a shape has at most MAX_NDIM; a longer one is refused by name below
                max_map_len=64,  # the body's keys, at most MAX_ATTRS attributes: idem
                raw=False,
                use_list=False,
                strict_map_key=True,
            )
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise MalformedBody(f"body is not valid msgpack: {type(e).__name__}") from e
    if type(fields) is not dict:
        raise MalformedBody(f"body is a msgpack {type(fields).__name__}, not a map")
    if not fields.keys() <= _BODY_KEYS:
        raise MalformedBody(f"body has unknown keys {sorted(map(str, fields.keys() - _BODY_KEYS))}")
    if map_header_entries(raw) != len(fields):
        raise MalformedBody("body has duplicate keys")
    dtype = fields.get(_K_DTYPE)
    shape = fields.get(_K_SHAPE)
    data = fields.get(_K_DATA)
    scale = fields.get(_K_SCALE)
    attrs = fields.get(_K_ATTRS, EMPTY_ATTRS)
    if type(dtype) is not str or dtype not in NUMPY_DTYPES:
        raise MalformedBody(f"body dtype must be one of {sorted(NUMPY_DTYPES)}")
    if type(shape) is not tuple or not all(type(n) is int for n in shape):
        raise MalformedBody("body shape must be an array of integers")
    if type(data) is not bytes:
        raise MalformedBody("body tensor must be msgpack bin")
    if scale is not None and type(scale) is not float:
        raise MalformedBody("body scale must be a float")
    if type(attrs) is not dict and attrs is not EMPTY_ATTRS:
        raise MalformedBody("body attributes must be a map")
    body = TensorBody(data=data, dtype=dtype, shape=shape, scale=scale, attrs=attrs)  # type: ignore[arg-type]
    _check_body(body, MalformedBody)
    try:
        _check_attrs(body.attrs)
    except ValueError as e:
        raise MalformedBody(str(e)) from e
    return body


def map_header_entries(raw: bytes) -> int | None:
    """Entry count declared by the msgpack map header ``raw`` starts with; None if it starts otherwise.

    Python's msgpack keeps the last of duplicate keys silently; comparing this count with the parsed
    dict's length is how a duplicate key (which other decoders may resolve differently) is refused.
    """
    if not raw:
        return None
    first = raw[0]
    if 0x80 <= first <= 0x8F:
        return first & 0x0F
    if first == 0xDE and len(raw) >= 3:
        return int.from_bytes(raw[1:3], "big")
    if first == 0xDF and len(raw) >= 5:
        return int.from_bytes(raw[1:5], "big")
    return None


def _check_body(body: TensorBody, error: type[Exception]) -> None:
    np_dtype = NUMPY_DTYPES.get(body.dtype)
    if np_dtype is None:
        raise error(f"unknown tensor dtype {body.dtype!r}")
    if len(body.shape) > MAX_NDIM or not all(0 <= n <= MAX_DIM for n in body.shape):
        raise error(f"shape {body.shape} has more than {MAX_NDIM} dimensions or a dimension out of range")
    expected_bytes = math.prod(body.shape) * np_dtype.itemsize
    if len(body.data) != expected_bytes:
        raise error(
            f"{body.dtype} tensor of shape {body.shape} needs {expected_bytes} bytes, got {len(body.data)}"
        )
    if body.dtype == "int8":
        if body.scale is None or not (math.isfinite(body.scale) and body.scale > 0.0):
            raise error("int8 tensor needs a finite scale > 0")
        if INT8_MIN_REFUSED in body.data:
            raise error(
                f"int8 tensor holds {-INT8_LEVELS - 1}: quantised values are {-INT8_LEVELS}..{INT8_LEVELS}"
            )
    elif body.scale is not None:
        raise error(f"{body.dtype} tensor must not carry a scale")


def _check_attrs(attrs: Mapping[str, AttrValue]) -> None:
    if len(attrs) > MAX_ATTRS:
        raise ValueError(f"body has {len(attrs)} attributes, the most is {MAX_ATTRS}")
    for key, value in attrs.items():
        if type(key) is not str or not 1 <= len(key.encode()) <= MAX_ATTR_KEY_BYTES:
            raise ValueError(f"attribute names are strings of 1..{MAX_ATTR_KEY_BYTES} UTF-8 bytes")
        kind = type(value)
        if kind is str:
            if len(value.encode()) > MAX_ATTR_STR_BYTES:  # type: ignore[union-attr]
                raise ValueError(f"attribute {key!r} is longer than {MAX_ATTR_STR_BYTES} UTF-8 bytes")
        elif kind is int:
            if not _INT64_MIN <= value <= _INT64_MAX:  # type: ignore[operator]
                raise ValueError(f"attribute {key!r} does not fit a signed 64-bit integer")
        elif kind is not float:
            raise ValueError(f"attribute {key!r} must be a str, int or float, not {kind.__name__}")


# --- compression ---------------------------------------------------------------------------------


def compress(raw: bytes, codec: Compression) -> bytes:
    """Compress ``raw`` with ``codec``: one zstd frame (level 3, content size written) or unchanged."""
    if codec == "none":
        return raw
    data: bytes = _codecs.compressor.compress(raw)
    return data


def choose_compression(raw: bytes, *, min_saving_fraction: float = DEFAULT_MIN_SAVING_FRACTION) -> Compressed:
    """Compress with zstd and keep it only when it saves at least ``min_saving_fraction`` of the bytes.

    Returns the decision with its bytes, so the work is not done twice.
    """
    if not 0.0 <= min_saving_fraction < 1.0:
        raise ValueError("min_saving_fraction must be in [0, 1)")
    packed = compress(raw, "zstd")
    if len(packed) <= len(raw) * (1.0 - min_saving_fraction):
        return Compressed("zstd", packed)
    return Compressed("none", raw)


def decompress(data: bytes, codec: Compression, max_bytes: int) -> bytes:
    """Undo ``compress``, never producing more than ``max_bytes``.

    zstd: exactly one standard frame, no trailing bytes, window <= 8 MiB. A frame that declares a
    content size above ``max_bytes`` is refused before any allocation; a frame without one is
    decompressed step by step and abandoned as soon as the output passes the cap.
    Raises OversizedEnvelope (over the cap) or DecompressionFailed (anything else).
    """
    if codec == "none":
        if len(data) > max_bytes:
            raise OversizedEnvelope(len(data), max_bytes, "body")
        return data
    if data[:4] != _ZSTD_MAGIC:
        raise DecompressionFailed("body does not start with a zstd frame")
    try:
        declared_bytes: int = zstandard.frame_content_size(data)
    except zstandard.ZstdError as e:
        raise DecompressionFailed(f"bad zstd frame header: {e}") from e
    if declared_bytes < 0:
        return _decompress_capped(data, max_bytes)
    if declared_bytes > max_bytes:
        raise OversizedEnvelope(declared_bytes, max_bytes, "decompressed body")
    try:
        out: bytes = _codecs.decompressor.decompress(data, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise DecompressionFailed(f"zstd frame does not decompress: {e}") from e
    return out


def _decompress_capped(data: bytes, max_bytes: int) -> bytes:
    """Stream-decompress a frame of unknown size, stopping once the output passes ``max_bytes``."""
    stream = _codecs.decompressor.decompressobj()
    chunks: list[bytes] = []
    total_bytes = 0
    view = memoryview(data)
    try:
        for start in range(0, len(data), _STREAM_INPUT_CHUNK_BYTES):
            if stream.eof:
                raise DecompressionFailed("bytes after the end of the zstd frame")
            chunk: bytes = stream.decompress(view[start : start + _STREAM_INPUT_CHUNK_BYTES])
            total_bytes += len(chunk)
            if total_bytes > max_bytes:
                raise OversizedEnvelope(total_bytes, max_bytes, "decompressed body")
            chunks.append(chunk)
    except zstandard.ZstdError as e:
        raise DecompressionFailed(f"zstd frame does not decompress: {e}") from e
    if not stream.eof:
        raise DecompressionFailed("zstd frame is truncated")
    if stream.unused_data:
        raise DecompressionFailed("bytes after the end of the zstd frame")
    return b"".join(chunks)
