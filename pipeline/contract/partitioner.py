"""Which ingest partition a device's records belong on: Kafka's murmur2 partitioner (contract section 9).

A device's record key is its device id (UTF-8), and its partition is ``(murmur2(key) & 0x7fffffff) %
partitions``: what the Java client's default partitioner and aiokafka's ``DefaultPartitioner`` compute
for a keyed record, and what librdkafka-based clients compute with ``partitioner=murmur2_random``. The
edge refuses a record found anywhere else (``wrong_partition``), so a device's records, and so every
replay of them, meet one partition's replay memory.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterable
from typing import Final

import numpy as np

_SEED: Final = 0x9747B28C
"""The seed Kafka's murmur2 starts from."""
_M: Final = 0x5BD1E995
"""Murmur2's multiplier."""
_R: Final = 24
"""Murmur2's shift within a 4-byte block."""
_U32: Final = 0xFFFFFFFF
"""Arithmetic is on unsigned 32-bit words."""
POSITIVE: Final = 0x7FFFFFFF
"""Kafka's ``Utils.toPositive``: the hash with its sign bit cleared, before the modulo."""
MEMO_LIMIT: Final = 65_536
"""Most keys whose hash `key_hash` remembers; when full it starts over (a fleet's device ids repeat,
so a plain dict that is emptied now and then beats an LRU's bookkeeping)."""

_memo: dict[bytes, int] = {}
_WORDS: dict[int, Callable[[bytes], tuple[int, ...]]] = {}
"""Per key length in words, the ``struct`` reader of its 4-byte little-endian blocks."""


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 of ``data`` (``org.apache.kafka.common.utils.Utils.murmur2``), as an
    unsigned int (Java's ``int`` of the same bits). The 4-byte blocks are read in one ``struct`` call:
    1.4 us for a 16-byte request id against 2.1 us block by block (each audit record's key is one, and
    unique, so no memo helps it)."""
    length = len(data)
    h = (_SEED ^ length) & _U32
    words = length >> 2
    if words:
        unpack = _WORDS.get(words)
        if unpack is None:
            unpack = _WORDS[words] = struct.Struct(f"<{words}I").unpack_from
        for k in unpack(data):
            k = (k * _M) & _U32
            k ^= k >> _R
            h = ((h * _M) & _U32) ^ ((k * _M) & _U32)
    if length & 3:
        # Java XORs the tail bytes in from the third down to the first, then multiplies once.
        h ^= int.from_bytes(data[words << 2 :], "little")
        h = (h * _M) & _U32
    h ^= h >> 13
    h = (h * _M) & _U32
    h ^= h >> 15
    return h


def key_hash(key: bytes) -> int:
    """``murmur2(key) & POSITIVE``, remembered for the last :data:`MEMO_LIMIT` distinct keys: the
    pure-Python hash costs ~2.4 us a call, and the edge hashes each device's id once on admission and
    once per record it produces (bench: ``python -m bench.partitioner``)."""
    hashed = _memo.get(key)
    if hashed is None:
        if len(_memo) >= MEMO_LIMIT:
            _memo.clear()
        hashed = _memo[bytes(key)] = murmur2(key) & POSITIVE
    return hashed


VECTOR_MIN_KEYS: Final = 32
"""Fewest keys of one length that `remember_hashes` hashes as arrays (fewer: numpy's per-call cost is
more than the pure-Python hash saves; measured: 16 keys 1.18 against 1.35 us a key, 100 keys 0.22
against 1.32, 1,000 keys 0.05 against 1.44)."""


def remember_hashes(keys: Iterable[bytes | None]) -> None:
    """Hash, as arrays, the keys not yet remembered that come :data:`VECTOR_MIN_KEYS` or more of one
    length, and remember them for `key_hash`: a transaction's audit records are keyed by request ids,
    each new, so every one of them missed the memo and cost a pure-Python murmur2. The hashes are
    `murmur2`'s (tested against it); keys of lengths too rare to vectorise are left to `key_hash`."""
    missing: dict[int, dict[bytes, None]] = {}
    for key in keys:
        if key is not None and key not in _memo:
            missing.setdefault(len(key), {})[bytes(key)] = None
    for length, group in missing.items():
        if len(group) < VECTOR_MIN_KEYS:
            continue
        if len(_memo) + len(group) > MEMO_LIMIT:
            _memo.clear()
        ordered = list(group)
        for key, hashed in zip(ordered, murmur2_many(ordered, length), strict=True):
            _memo[key] = hashed & POSITIVE


_M_U32: Final = np.uint32(_M)


def murmur2_many(keys: list[bytes], length: int) -> list[int]:
    """`murmur2` of each of ``keys``, all ``length`` bytes long, computed as arrays (numpy's unsigned
    32-bit arithmetic wraps as murmur2's does)."""
    count = len(keys)
    words = length >> 2
    h = np.full(count, (_SEED ^ length) & _U32, dtype=np.uint32)
    with np.errstate(over="ignore"):
        if words:
            blocks = np.frombuffer(b"".join(k[: words << 2] for k in keys), dtype="<u4").reshape(count, words)
            for i in range(words):
                k = blocks[:, i] * _M_U32
                k ^= k >> np.uint32(_R)
                k *= _M_U32
                h *= _M_U32
                h ^= k
        if length & 3:
            tails = np.array([int.from_bytes(k[words << 2 :], "little") for k in keys], dtype=np.uint32)
            h ^= tails
            h *= _M_U32
        h ^= h >> np.uint32(13)
        h *= _M_U32
        h ^= h >> np.uint32(15)
    hashes: list[int] = h.tolist()
    return hashes


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of a record keyed ``key`` on a topic of ``partitions`` partitions."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, got {partitions}")
    return key_hash(key) % partitions


def memo_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's ``DefaultPartitioner`` (the Java client's choice for a keyed record) with the hash
    remembered: what every producer of ours is given (``pipeline/kafka.py``). A record without a key
    goes to a random available partition, as aiokafka's does."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[key_hash(key) % len(all_partitions)]
