"""The contract's partitioner is Kafka's: murmur2 exactly as the Java client and aiokafka compute it."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import example, given
from hypothesis import strategies as st

from edgestream.pipeline import kafka
from edgestream.pipeline.contract import partitioner
from edgestream.pipeline.contract.partitioner import key_hash, memo_partitioner, murmur2, partition_for
from edgestream.pipeline.settings import KafkaSettings

# Computed once with aiokafka 0.14's ``murmur2`` and ``DefaultPartitioner`` (the Java client's
# algorithm), pinned so that a change on either side shows: key, murmur2, partitions of 3, 7, 12.
VECTORS = [
    (b"", 275646681, (0, 2, 9)),
    (b"a", 2731586172, (1, 5, 4)),  # above 2**31: the sign bit is cleared before the modulo
    (b"ab", 316155434, (2, 0, 2)),
    (b"abc", 479470107, (0, 4, 3)),
    (b"abcd", 2971317748, (2, 5, 8)),
    (b"sensor-0042", 662573077, (1, 5, 1)),
    (b"dev-0", 886589854, (1, 3, 10)),
    (b"dev-poison", 3604492996, (2, 4, 8)),
    ("caméra-7".encode(), 2562796799, (0, 1, 3)),
    (bytes(range(21)), 159324356, (2, 2, 8)),
]


@pytest.mark.parametrize(("key", "hashed", "partitions"), VECTORS)
def test_pinned_vectors(key: bytes, hashed: int, partitions: tuple[int, int, int]) -> None:
    assert murmur2(key) == hashed
    assert tuple(partition_for(key, n) for n in (3, 7, 12)) == partitions


@given(key=st.binary(max_size=200), partitions=st.integers(1, 1000))
@example(key=b"\xff\xff\xff\xff\xff\xff\xff", partitions=3)  # high bytes in blocks and tail
def test_agrees_with_aiokafkas_default_partitioner(key: bytes, partitions: int) -> None:
    assert murmur2(key) == aiokafka_murmur2(key)
    assert partition_for(key, partitions) == DefaultPartitioner()(key, list(range(partitions)), [])


def test_a_topic_has_partitions() -> None:
    with pytest.raises(ValueError, match="at least one partition"):
        partition_for(b"dev", 0)


@given(key=st.binary(max_size=200), partitions=st.integers(1, 64))
def test_the_memo_partitioner_agrees_with_aiokafkas_on_first_and_remembered_calls(
    key: bytes, partitions: int
) -> None:
    parts = list(range(partitions))
    expected = DefaultPartitioner()(key, parts, parts)
    assert memo_partitioner(key, parts, parts) == expected  # computed
    assert memo_partitioner(key, parts, parts) == expected  # remembered
    assert partition_for(key, partitions) == expected


def test_the_memo_starts_over_when_full_and_stays_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partitioner, "MEMO_LIMIT", 8)
    monkeypatch.setattr(partitioner, "_memo", {})
    keys = [f"dev-{i}".encode() for i in range(20)]
    for key in keys + keys:
        assert key_hash(key) == murmur2(key) & partitioner.POSITIVE
        assert len(partitioner._memo) <= 8


def test_a_keyless_record_goes_to_an_available_partition() -> None:
    seen = {memo_partitioner(None, [0, 1, 2, 3], [1, 3]) for _ in range(200)}
    assert seen == {1, 3}
    assert memo_partitioner(None, [0, 1], []) in {0, 1}


async def test_every_producer_of_the_factory_uses_the_memo_partitioner() -> None:
    made = kafka.producer(KafkaSettings(bootstrap_servers="localhost:1"), "t")  # never started
    try:
        assert made._partitioner is memo_partitioner
    finally:
        await made.stop()


@given(length=st.integers(0, 40), seed=st.binary(min_size=1, max_size=8), count=st.integers(1, 70))
@example(length=16, seed=b"\xff", count=40)  # request ids, high bytes
@example(length=7, seed=b"\x80", count=33)  # a tail of three bytes
def test_hashing_as_arrays_gives_murmur2(length: int, seed: bytes, count: int) -> None:
    keys = [
        (seed * (length + 1) + i.to_bytes(4, "little"))[-length:] if length else b"" for i in range(count)
    ]
    assert all(len(k) == length for k in keys)
    assert partitioner.murmur2_many(keys, length) == [murmur2(k) for k in keys]
    assert partitioner.murmur2_many(keys, length) == [aiokafka_murmur2(k) & 0xFFFFFFFF for k in keys]


def test_remembered_hashes_are_key_hashes_and_only_common_lengths_are_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(partitioner, "_memo", {})
    many = [i.to_bytes(16, "big") for i in range(partitioner.VECTOR_MIN_KEYS)]
    few = [b"dev-%d" % i for i in range(partitioner.VECTOR_MIN_KEYS - 1)]
    partitioner.remember_hashes([*many, None, *few, *many[:3]])
    assert set(partitioner._memo) == set(many), "a length with too few keys is left to key_hash"
    assert all(partitioner._memo[k] == murmur2(k) & partitioner.POSITIVE for k in many)
    assert all(key_hash(k) == murmur2(k) & partitioner.POSITIVE for k in [*many, *few])


def test_remembering_past_the_limit_starts_the_memo_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partitioner, "MEMO_LIMIT", 40)
    monkeypatch.setattr(partitioner, "_memo", {b"old-%d" % i: 0 for i in range(20)})
    keys = [i.to_bytes(16, "big") for i in range(partitioner.VECTOR_MIN_KEYS)]
    partitioner.remember_hashes(keys)
    assert set(partitioner._memo) == set(keys)
    assert all(key_hash(k) == murmur2(k) & partitioner.POSITIVE for k in keys)
