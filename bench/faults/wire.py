"""Byte-level edits of sealed envelopes: bit flips, msgpack maps rewritten or with a key twice, zstd bombs."""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping
from typing import Any

import msgpack
import zstandard


def flip_bit(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one bit flipped at random."""
    out = bytearray(data)
    i = rng.randrange(len(out))
    out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def envelope_fields(value: bytes) -> dict[str, Any]:
    """The msgpack map of an encoded envelope, as it stands."""
    fields: dict[str, Any] = msgpack.unpackb(value, raw=False)
    return fields


def pack_fields(fields: Mapping[str, object]) -> bytes:
    """A msgpack map of ``fields`` (as an envelope encodes them)."""
    return msgpack.packb(dict(fields), use_bin_type=True)


def pack_with_duplicate(fields: Mapping[str, object], duplicate: str) -> bytes:
    """A msgpack map whose header counts ``duplicate`` twice (Python's msgpack keeps the last one)."""
    entries = [*fields.items(), (duplicate, fields[duplicate])]
    n = len(entries)
    header = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return header + b"".join(msgpack.packb(k) + msgpack.packb(v, use_bin_type=True) for k, v in entries)


@functools.cache
def zstd_bombs(size_bytes: int) -> tuple[bytes, bytes]:
    """Two zstd frames of ``size_bytes`` zeros (a few hundred bytes each): one declares its content
    size, the other does not (the edge must stop decompressing it as it passes the cap)."""
    zeros = b"\x00" * size_bytes
    declared: bytes = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(zeros)
    stream = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    streamed: bytes = stream.compress(zeros) + stream.flush()
    return declared, streamed
