"""The contract's partitioner is Kafka's: murmur2 exactly as the Java client and aiokafka compute it."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import example, given
from hypothesis import strategies as st

from edgestream.pipeline.contract.partitioner import murmur2, partition_for

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
