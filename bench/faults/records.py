"""What a corpus record is and what must become of it: ``ok`` or the reason of its one dead letter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from edgestream.pipeline.contract.envelope import Kind
from edgestream.topics.catalogue import ingest_topic

OK: Final = "ok"
"""Expected outcome of a good record: one result."""
FLOOD: Final = "flood"
"""Expected outcome of a record of one device's flood: one result or one dead letter ``rate_limited`` or
``stale``; which, depends on when the worker's rate limiter sees it, which the checker cannot know."""
ALLOWED_OUTCOMES: Final[Mapping[str, frozenset[str]]] = {
    FLOOD: frozenset({"result", "rate_limited", "stale"}),
}
"""Expectations that allow one of several outcomes (``result`` or a reason), each input still exactly one."""


@dataclass(frozen=True, slots=True)
class CorpusRecord:
    """One record to produce, and what must become of it."""

    test_id: int
    """Unique per record drawn (a replay gets its own id, with its original's bytes)."""
    kind: Kind
    """Which ingest topic it goes to."""
    key: bytes
    """Kafka key: the device id it claims (a tampered device id keeps the original key)."""
    value: bytes
    """The record value exactly as produced."""
    expect: str
    """``ok`` or the reason code of its dead letter."""
    category: str
    """How it was made (``good`` or a ``CATEGORIES`` name)."""
    request_id: bytes | None
    """The request id a result or audit record would carry; None when the envelope has none."""
    partition: int | None = None
    """The partition it is produced to; None: the one its key maps to (the producer's murmur2)."""
    raw_headers: tuple[tuple[bytes, bytes], ...] = ()
    """Headers whose keys are raw bytes (UTF-8 or not); a record with any is produced as a batch built
    byte by byte (``wire.batch``), as a client that writes the Kafka protocol itself would."""

    def topic(self, region: str) -> str:
        """The ingest topic it is produced to."""
        return ingest_topic(region, self.kind)


CATEGORIES: Final[Mapping[str, str]] = {
    # decode: before any key is touched
    "random_bytes": "undecodable",
    "empty": "undecodable",
    "not_a_map": "undecodable",
    "missing_field": "undecodable",
    "unknown_field": "undecodable",
    "duplicate_key": "undecodable",
    "bad_field_type": "undecodable",
    "truncated": "undecodable",
    "bad_version": "bad_version",
    "oversized_bytes": "oversized",
    "oversized_envelope": "oversized",
    "bad_device_id": "bad_device_id",
    # decrypt: every authenticated field, the nonce and the ciphertext
    "tampered_rid": "bad_tag",
    "tampered_dev": "bad_tag",
    "tampered_ts": "bad_tag",
    "tampered_kind_model": "bad_tag",
    "tampered_mver": "bad_tag",
    "tampered_kid": "bad_tag",
    "tampered_comp": "bad_tag",
    "tampered_nonce": "bad_tag",
    "tampered_ciphertext": "bad_tag",
    "truncated_ciphertext": "bad_tag",
    "tampered_kind": "bad_shape",
    "unknown_key_id": "unknown_key",
    # decompress and body
    "zstd_bomb": "oversized",
    "zstd_bomb_streamed": "oversized",
    "not_zstd": "bad_compression",
    "corrupt_zstd": "bad_compression",
    "bad_body": "bad_body",
    # validate: after authentication
    "replayed": "replayed",
    "stale": "stale",
    "future": "stale",
    "wrong_shape": "bad_shape",
    "wrong_dtype": "bad_shape",
    "unknown_model": "unknown_model",
    "unknown_version": "unknown_model",
}
"""Every bad category and the reason code its dead letter must carry."""

POISON_CATEGORIES: Final[Mapping[str, str]] = {
    # non-finite tensors: float16 is the embedding model's dtype; float32 is refused for its dtype first
    "nan_float16": "non_finite",
    "inf_float16": "non_finite",
    "nan_float32": "bad_shape",
    "inf_float32": "bad_shape",
    # sizes at the default limit: admitted (a wrong shape), refused, refused with a truncated dead letter
    "near_limit": "bad_shape",
    "over_limit": "oversized",
    "over_limit_truncated": "oversized",
    # records bound to their place
    "key_mismatch": "key_mismatch",
    "wrong_partition": "wrong_partition",
    "wrong_topic": "wrong_topic",
    "replay_other_partition": "wrong_partition",
    "replay_other_topic": "wrong_topic",
    # a header key that is not UTF-8 (the broker keeps it; aiokafka refused the partition's fetches)
    "header_key_not_utf8": "undecodable",
}
"""The kinds of issue 12 the ``poison`` scenario adds to ``CATEGORIES``, and the reason each must get."""
LARGE_CATEGORIES: Final = frozenset(
    {"oversized_bytes", "oversized_envelope", "near_limit", "over_limit", "over_limit_truncated"}
)
"""Categories whose records are about a MiB at the default limit: the poison corpus draws a budget of them."""
