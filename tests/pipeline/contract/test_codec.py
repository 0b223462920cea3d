"""Tensor bodies and compression: dtypes, quantisation quality, body map validation, capped zstd."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
import pytest
import zstandard

from edgestream.pipeline.contract.codec import (
    TensorBody,
    TensorDtype,
    choose_compression,
    compress,
    decode_tensor,
    decompress,
    encode_tensor,
    pack_body,
    unpack_body,
)
from edgestream.pipeline.errors import DecompressionFailed, MalformedBody, NonFiniteTensor, OversizedEnvelope

RNG_SEED = 20240601


def _gaussian(rows: int, dim: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(RNG_SEED).standard_normal((rows, dim)).astype(np.float32)


def _min_cosine(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = (a64 * b64).sum(axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    return float(cos.min())


# --- dtypes and quantisation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "min_cosine"),
    [("float32", 1.0 - 1e-12), ("float16", 0.99999), ("int8", 0.999)],
)
def test_quantisation_keeps_cosine_similarity(dtype: TensorDtype, min_cosine: float) -> None:
    vectors = _gaussian(2000, 30)
    decoded = np.stack(
        [decode_tensor(unpack_body(pack_body(encode_tensor(v, dtype))), dequantise=True) for v in vectors]
    )
    assert decoded.dtype == (np.float16 if dtype == "float16" else np.float32)
    assert _min_cosine(vectors, decoded) >= min_cosine


def test_int8_is_symmetric_per_tensor() -> None:
    x = np.array([-2.0, -1.0, 0.0, 0.5, 1.0], dtype=np.float32)
    body = encode_tensor(x, "int8")
    assert body.scale is not None
    assert body.scale == pytest.approx(2.0 / 127)
    q = decode_tensor(body)
    assert q.dtype == np.int8
    assert q.tolist() == [-127, -64, 0, 32, 64]  # round half to even: 31.75 -> 32, 63.5 -> 64
    assert np.abs(decode_tensor(body, dequantise=True) - x).max() <= body.scale / 2 + 1e-7


def test_int8_all_zero_tensor_has_unit_scale() -> None:
    body = encode_tensor(np.zeros(4), "int8")
    assert body.scale == 1.0
    assert decode_tensor(body, dequantise=True).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_uint8_is_stored_as_is_and_refuses_out_of_range() -> None:
    frame = (np.arange(32 * 32) % 256).reshape(32, 32)
    body = encode_tensor(frame, "uint8")
    assert body.shape == (32, 32)
    assert body.scale is None
    np.testing.assert_array_equal(decode_tensor(body), frame)
    for bad in (np.array([256]), np.array([-1]), np.array([0.5]), np.array([np.nan])):
        with pytest.raises(ValueError, match="uint8"):
            encode_tensor(bad, "uint8")


def test_float16_refuses_values_it_cannot_hold() -> None:
    with pytest.raises(ValueError, match="not finite"):
        encode_tensor(np.array([1e6]), "float16")
    with pytest.raises(ValueError, match="not finite"):
        encode_tensor(np.array([np.inf]), "float32")
    with pytest.raises(ValueError, match="not finite"):
        encode_tensor(np.array([np.nan]), "int8")


def test_encode_refuses_non_numeric_arrays_and_unknown_dtypes() -> None:
    with pytest.raises(ValueError, match="cannot encode"):
        encode_tensor(np.array(["a"]), "float32")
    with pytest.raises(ValueError, match="unknown tensor dtype"):
        encode_tensor(np.zeros(2), "float64")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dimensions"):
        encode_tensor(np.zeros((1,) * 9), "float32")


def test_wire_bytes_are_little_endian_regardless_of_input_order() -> None:
    big_endian = np.array([1.0, 2.0], dtype=">f4")
    assert encode_tensor(big_endian, "float32").data == np.array([1.0, 2.0], dtype="<f4").tobytes()


def test_decode_is_zero_copy_and_read_only() -> None:
    body = encode_tensor(np.arange(6, dtype=np.float32).reshape(2, 3), "float32")
    array = decode_tensor(body)
    assert array.shape == (2, 3)
    assert not array.flags.writeable
    assert np.shares_memory(array, np.frombuffer(body.data, dtype=np.uint8))


def test_decode_checks_byte_length() -> None:
    body = TensorBody(data=b"\x00" * 7, dtype="float32", shape=(2,))
    with pytest.raises(MalformedBody, match="needs 8 bytes, got 7") as info:
        decode_tensor(body)
    assert info.value.reason == "bad_body"


def test_int8_dequantise_needs_a_scale() -> None:
    with pytest.raises(MalformedBody, match="scale"):
        decode_tensor(TensorBody(data=b"\x01", dtype="int8", shape=(1,)), dequantise=True)


# --- body map ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "uint8"])
def test_body_round_trip(dtype: TensorDtype) -> None:
    x = np.round(np.abs(_gaussian(1, 12)[0].reshape(3, 4)) * 10)
    body = encode_tensor(x, dtype, attrs={"sensor": "imu-2", "rate_hz": 100, "gain": 0.5})
    assert unpack_body(pack_body(body)) == body


def test_scalar_and_empty_tensors_round_trip() -> None:
    for array in (np.array(3.5), np.zeros((0, 4))):
        body = encode_tensor(array, "float32")
        assert decode_tensor(unpack_body(pack_body(body))).shape == array.shape


def test_tensor_travels_as_bin_not_a_list() -> None:
    raw = pack_body(encode_tensor(np.ones(30), "float16"))
    fields = msgpack.unpackb(raw)
    assert list(fields) == ["dt", "sh", "b"]
    assert isinstance(fields["b"], bytes)
    assert len(raw) == 81  # 60 data bytes + 21 bytes of map header, key names, dtype, shape


def _body_map(**changes: object) -> bytes:
    fields: dict[str, object] = {"dt": "float32", "sh": [2], "b": b"\x00" * 8}
    fields.update(changes)
    return msgpack.packb({k: v for k, v in fields.items() if v is not None})


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "not valid msgpack"),
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb([1, 2]), "not a map"),
        (msgpack.packb({1: 2}), "not valid msgpack"),
        (_body_map(dt="float64"), "dtype"),
        (_body_map(dt=None), "dtype"),
        (_body_map(sh=[2.0]), "shape"),
        (_body_map(sh="2"), "shape"),
        (_body_map(sh=[-2]), "out of range"),
        (_body_map(sh=[1] * 9), "dimensions"),
        (_body_map(b=[0.0, 0.0]), "bin"),
        (_body_map(b="\x00" * 8), "bin"),
        (_body_map(sh=[3]), "needs 12 bytes, got 8"),
        (_body_map(sc=0.5), "must not carry a scale"),
        (_body_map(dt="int8", b=b"\x00\x00"), "scale"),
        (_body_map(dt="int8", b=b"\x00\x00", sc=0.0), "scale"),
        (_body_map(dt="int8", b=b"\x00\x00", sc=1), "scale"),
        (_body_map(at=[1]), "attributes"),
        (_body_map(at={"k": True}), "must be a str, int or float"),
        (_body_map(at={"k": [1]}), "must be a str, int or float"),
        (_body_map(at={"k": "x" * 300}), "longer than"),
        (_body_map(at={f"k{i}": i for i in range(17)}), "attributes"),
        (_body_map(extra=1), "unknown keys"),
        (b"\x83\xa2dt\xa7float32\xa2sh\x91\x02\xa2dt\xa7float32", "duplicate"),
    ],
)
def test_unpack_body_refuses_malformed_bodies(raw: bytes, match: str) -> None:
    with pytest.raises(MalformedBody, match=match) as info:
        unpack_body(raw)
    assert info.value.reason == "bad_body"


def test_pack_body_refuses_what_the_edge_would_refuse() -> None:
    with pytest.raises(ValueError, match="needs 8 bytes"):
        pack_body(TensorBody(data=b"\x00", dtype="float32", shape=(2,)))
    with pytest.raises(ValueError, match="scale"):
        pack_body(TensorBody(data=b"\x00", dtype="int8", shape=(1,)))
    with pytest.raises(ValueError, match="str, int or float"):
        pack_body(TensorBody(data=b"\x00", dtype="uint8", shape=(1,), attrs={"flag": True}))


# --- compression ---------------------------------------------------------------------------------


def test_choose_compression_keeps_zstd_only_when_it_pays() -> None:
    embedding = pack_body(encode_tensor(_gaussian(1, 30)[0], "float16"))
    assert choose_compression(embedding).codec == "none"
    assert choose_compression(embedding).data == embedding
    frame = pack_body(encode_tensor(np.tile(np.arange(32, dtype=np.uint8), (32, 1)), "uint8"))
    chosen = choose_compression(frame)
    assert chosen.codec == "zstd"
    assert len(chosen.data) < 0.9 * len(frame)
    assert decompress(chosen.data, "zstd", max_bytes=len(frame)) == frame
    assert choose_compression(frame, min_saving_fraction=0.99).codec == "none"
    with pytest.raises(ValueError, match="min_saving_fraction"):
        choose_compression(frame, min_saving_fraction=1.0)


def test_none_codec_is_identity_with_a_cap() -> None:
    assert compress(b"abc", "none") == b"abc"
    assert decompress(b"abc", "none", max_bytes=3) == b"abc"
    with pytest.raises(OversizedEnvelope):
        decompress(b"abcd", "none", max_bytes=3)


def test_zstd_bomb_with_declared_size_is_refused_before_allocating() -> None:
    bomb = compress(b"\x00" * 50_000_000, "zstd")
    assert len(bomb) < 5_000
    with pytest.raises(OversizedEnvelope, match="50000000 bytes exceeds the limit of 1048576") as info:
        decompress(bomb, "zstd", max_bytes=1 << 20)
    assert info.value.reason == "oversized"


def _zstd_without_content_size(raw: bytes) -> bytes:
    stream = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    return stream.compress(raw) + stream.flush()


def test_zstd_bomb_without_declared_size_is_cut_off_by_the_cap() -> None:
    bomb = _zstd_without_content_size(b"\x00" * 50_000_000)
    with pytest.raises(OversizedEnvelope) as info:
        decompress(bomb, "zstd", max_bytes=1 << 20)
    assert info.value.size_bytes < (1 << 20) + (4 << 20)  # stopped soon after the cap, not at 50 MB


def test_zstd_without_declared_size_round_trips() -> None:
    raw = bytes(range(256)) * 40
    assert decompress(_zstd_without_content_size(raw), "zstd", max_bytes=len(raw)) == raw
    with pytest.raises(OversizedEnvelope):
        decompress(_zstd_without_content_size(raw), "zstd", max_bytes=len(raw) - 1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not zstd at all",
        b"\x28\xb5\x2f\xfd",  # magic, no header
        compress(b"hello world" * 10, "zstd")[:-3],  # truncated
        compress(b"hello world" * 10, "zstd") + b"tail",  # trailing bytes
        compress(b"a", "zstd") + compress(b"b", "zstd"),  # two frames
        _zstd_without_content_size(b"hello world" * 10)[:-3],
        _zstd_without_content_size(b"hello world" * 10) + b"tail",
        b"\x50\x2a\x4d\x18\x04\x00\x00\x00abcd",  # a skippable frame is not a body
    ],
)
def test_bad_zstd_is_decompression_failed(data: bytes) -> None:
    with pytest.raises(DecompressionFailed) as info:
        decompress(data, "zstd", max_bytes=1 << 20)
    assert info.value.reason == "bad_compression"


def test_streamed_zstd_frames_needing_a_large_window_are_refused() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=25, write_content_size=False)
    raw = b"\x00" * 1000
    stream = zstandard.ZstdCompressor(compression_params=params).compressobj()
    data = stream.compress(raw) + stream.flush()
    with pytest.raises(DecompressionFailed, match="too much memory"):
        decompress(data, "zstd", max_bytes=len(raw))


@pytest.mark.parametrize("value", [1e-45, -1e-45, 1.17e-38, 3e-39])
def test_int8_quantises_subnormal_values_without_dividing_by_zero(value: float) -> None:
    # Subnormal float32 inputs: the scale (max|x| / 127) is below float32's range. Quantising and
    # dequantising in float64 keeps the value instead of dividing by zero or erasing it.
    array = np.array([value, 0.0], dtype=np.float32)
    body = encode_tensor(array, "int8")
    assert body.scale is not None
    assert body.scale > 0.0
    q = decode_tensor(body)
    assert q.tolist() == [127 if value > 0 else -127, 0]
    restored = decode_tensor(body, dequantise=True)
    assert restored.dtype == np.float32
    np.testing.assert_allclose(restored, array, rtol=1e-6, atol=0)


# --- non-finite values and the edges of each dtype -----------------------------------------------


@pytest.mark.parametrize("bits", [0x7E00, 0x7C00, 0xFC00, 0x7C01])  # NaN, +Inf, -Inf, a signalling NaN
def test_a_float16_body_with_nan_or_inf_is_refused_non_finite(bits: int) -> None:
    data = np.array([0.5, 0.0, 1.0], dtype="<f2")
    data[1] = np.frombuffer(bits.to_bytes(2, "little"), dtype="<f2")[0]
    body = unpack_body(pack_body(TensorBody(data=data.tobytes(), dtype="float16", shape=(3,))))
    with pytest.raises(NonFiniteTensor) as info:
        decode_tensor(body)
    assert info.value.reason == "non_finite"


def test_a_float32_body_with_nan_is_refused_non_finite() -> None:
    body = TensorBody(data=np.array([np.nan], dtype="<f4").tobytes(), dtype="float32", shape=(1,))
    with pytest.raises(NonFiniteTensor):
        decode_tensor(body)


@pytest.mark.parametrize("value", [65504.0, 65519.0, -65519.0])
def test_float16_encode_keeps_values_that_round_to_its_largest(value: float) -> None:
    body = encode_tensor(np.array([value], dtype=np.float32), "float16")
    assert abs(float(decode_tensor(body)[0])) == 65504.0


@pytest.mark.parametrize("value", [65520.0, -65520.0, 1e6, 3.4e38])
def test_float16_encode_refuses_values_past_its_range(value: float) -> None:
    with pytest.raises(ValueError, match="not finite as float16"):
        encode_tensor(np.array([1.0, value], dtype=np.float32), "float16")


@pytest.mark.parametrize("scale", [3.4e38, 1.7976931348623157e308, 2.7e36])
def test_an_int8_scale_whose_product_overflows_float32_is_refused_non_finite(scale: float) -> None:
    """127 * scale past float32's largest value (3.4e38) would dequantise to an infinity."""
    body = TensorBody(data=np.array([127, 1], dtype=np.int8).tobytes(), dtype="int8", shape=(2,), scale=scale)
    assert unpack_body(pack_body(body)) == body  # a valid body: finite scale > 0
    with pytest.raises(NonFiniteTensor):
        decode_tensor(body, dequantise=True)


def test_the_largest_int8_scale_that_fits_float32_dequantises_finite() -> None:
    scale = float(np.finfo(np.float32).max) / 128
    body = TensorBody(
        data=np.array([127, -127], dtype=np.int8).tobytes(), dtype="int8", shape=(2,), scale=scale
    )
    assert np.isfinite(decode_tensor(body, dequantise=True)).all()


def test_int8_minus_128_is_refused_by_the_edge_and_never_sent() -> None:
    """q is symmetric in -127..127 (docs/contract.md, section 4): -128 is a broken encoder's output."""
    body = TensorBody(data=np.array([5, -128], dtype=np.int8).tobytes(), dtype="int8", shape=(2,), scale=0.1)
    with pytest.raises(ValueError, match="-128"):
        pack_body(body)
    raw = msgpack.packb({"dt": "int8", "sh": [2], "b": body.data, "sc": 0.1}, use_bin_type=True)
    with pytest.raises(MalformedBody, match="-128") as info:
        unpack_body(raw)
    assert info.value.reason == "bad_body"


def test_int8_encode_never_produces_minus_128() -> None:
    x = np.array([-1.0, 1.0, -0.99999994, np.float32(-1.0) - np.float32(6e-8)], dtype=np.float32)
    body = encode_tensor(x, "int8")
    assert min(decode_tensor(body).tolist()) == -127
    unpack_body(pack_body(body))
