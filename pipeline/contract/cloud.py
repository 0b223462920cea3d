"""What the edge sends the cloud: partial window summaries, anonymised samples, and (from backends)
labels. msgpack maps, like every other record of the contract (``docs/contract.md``, "Cloud records").

Summaries are *partial*: each edge transaction carries one summary per (model, version) of the records
it commits (with per_partition transactions, those of its one input partition; with per_worker, of
all the unit's partitions), so a summary commits with exactly the results it counts (no state is
carried across transactions, nothing is lost or counted twice on a crash or rebalance). The
aggregator adds partial summaries up into its windows by ``at_ms``.

Every parser here is total: any bytes give a record or :class:`UndecodableRecord`, which the reader
skips, logs and counts; each field is exactly one type, counts are integers in [0, 2**53), floats are
finite (``pipeline/contract/fields.py``).

Samples carry features only: an embedding's input vector (never a frame), the model's answer, and a
*pseudonym* of the device, HMAC-SHA256 under a key derived from the region master key, instead of its id.
"""

from __future__ import annotations

import hashlib
import hmac
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from edgestream.pipeline.contract import fields as f
from edgestream.pipeline.contract.envelope import REQUEST_ID_BYTES
from edgestream.pipeline.contract.packing import packb
from edgestream.pipeline.errors import UndecodableRecord

CLOUD_VERSION: Final = 1
"""Version of the cloud record formats."""
LATENCY_BOUNDS_MS: Final = (5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0, 1000.0, 2500.0)
"""Upper bounds of the latency histogram buckets; one more bucket counts everything above the last."""
SCORE_BINS: Final = 10
"""The top-class score histogram has this many equal bins over [0, 1]."""
PSEUDONYM_BYTES: Final = 16
"""Length of a device pseudonym (truncated HMAC-SHA256)."""
READ_MARGIN_MS: Final = 300_000
"""A reader of the cloud topics after the records of a span of ``at_ms`` starts this long before the
span: records are stamped by their producers' clocks (workers, backends), which may run behind the
clock that set the span (or ``at_ms`` itself, a device's capture time may be ahead of them)."""


def latency_bucket(latency_ms: float) -> int:
    """Index of the histogram bucket ``latency_ms`` falls in (NaN and +inf: the last one): the first
    bound it does not exceed, found by bisection (counted for every answer)."""
    if latency_ms != latency_ms:  # NaN compares false with every bound
        return len(LATENCY_BOUNDS_MS)
    return bisect_left(LATENCY_BOUNDS_MS, latency_ms)


def percentile_ms(buckets: Sequence[int], percentile: float) -> float | None:
    """The upper bound of the bucket holding the ``percentile``-th answer; ``inf`` past the last bound,
    None for an empty histogram."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = percentile / 100 * total
    running = 0
    for index, n in enumerate(buckets):
        running += n
        if running >= rank and n:
            return LATENCY_BOUNDS_MS[index] if index < len(LATENCY_BOUNDS_MS) else float("inf")
    return float("inf")


def score_bin(score: float) -> int:
    """Index of the score bin of a top-class probability; total for any float: below 0 and NaN go to
    the first bin, 1 and above (and +inf) to the last."""
    scaled = score * SCORE_BINS
    if not scaled >= 1.0:  # NaN compares false
        return 0
    return SCORE_BINS - 1 if scaled >= SCORE_BINS - 1 else int(scaled)


def pseudonym(key: bytes, device_id: str) -> bytes:
    """The device's pseudonym under ``key``: stable for one key, unlinkable to the id without it."""
    return hmac.new(key, device_id.encode(), hashlib.sha256).digest()[:PSEUDONYM_BYTES]


MAX_CLOUD_RECORD_BYTES: Final = 4 << 20
"""Largest cloud record parsed at all (a sample of a 4,096-float embedding is about 40 KiB)."""


def _unpack(raw: bytes, what: str) -> dict[Any, Any]:
    """The record's map. Total, like every parser here: any bytes give the map or
    :class:`UndecodableRecord` (these topics are written by every region's workers and by backends)."""
    if type(raw) is not bytes or len(raw) > MAX_CLOUD_RECORD_BYTES:
        raise UndecodableRecord(f"{what}: not bytes, or larger than {MAX_CLOUD_RECORD_BYTES} bytes")
    try:
        fields = msgpack.unpackb(raw, raw=False, strict_map_key=False)  # class labels are int keys
        fields_map = f.mapping(fields, what)
        f.check_depth(fields_map)
    except (ValueError, TypeError, RecursionError) as e:  # msgpack FormatError, ExtraData, StackError
        raise UndecodableRecord(f"{what}: not a msgpack map: {str(e)[:200]}") from e
    if fields_map.get("v") != CLOUD_VERSION:
        raise UndecodableRecord(f"{what}: not version {CLOUD_VERSION}")
    return fields_map


def _counts(value: Any, what: str, length: int) -> list[int]:
    """A histogram: ``length`` counts."""
    counts = [f.count(x, what) for x in f.array(value, what)]
    if len(counts) != length:
        raise f.FieldError(f"{what}: {len(counts)} buckets, expected {length}")
    return counts


def _floats(value: Any, what: str) -> tuple[float, ...]:
    return tuple(f.number(x, what) for x in f.array(value, what))


@dataclass(slots=True)
class PartialSummary:
    """Counts of one edge transaction's records of one (model, version): add these up per window.

    Key on ``cloud.summaries``: ``<region>/<model>/<version>``.
    """

    region: str
    node: str
    model: str
    model_version: int
    at_ms: int
    """When the transaction's outputs were built (unix ms): the window it belongs to."""
    results: int = 0
    """Requests answered."""
    dead_letters: dict[str, int] = field(default_factory=dict)
    """Requests dead-lettered, by reason (those that named this model)."""
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))
    """Answered requests per end-to-end latency bucket (``LATENCY_BOUNDS_MS``)."""
    labels: dict[int, int] = field(default_factory=dict)
    """Answers per predicted class."""
    score_bins: list[int] = field(default_factory=lambda: [0] * SCORE_BINS)
    """Answers per bin of the top-class probability."""

    @property
    def key(self) -> bytes:
        """The record key."""
        return f"{self.region}/{self.model}/{self.model_version}".encode()

    def add_result(self, label: int, top_score: float, latency_ms: float) -> None:
        """Count one answer; total for any float (`score_bin`, `latency_bucket`)."""
        self.results += 1
        self.latency_buckets[latency_bucket(latency_ms)] += 1
        self.labels[label] = self.labels.get(label, 0) + 1
        self.score_bins[score_bin(top_score)] += 1

    def add_dead_letter(self, reason: str) -> None:
        """Count one dead letter."""
        self.dead_letters[reason] = self.dead_letters.get(reason, 0) + 1

    def absorb(self, other: PartialSummary) -> None:
        """Add ``other``'s counts (records of the same (model, version) that commit in the same
        transaction): the sum is what counting all of them into one summary gives. ``at_ms`` becomes
        the later of the two. Raises ValueError for another region, node, model or version."""
        if (other.region, other.node, other.model, other.model_version) != (
            self.region,
            self.node,
            self.model,
            self.model_version,
        ):
            raise ValueError(f"cannot add the summary of {other.key!r} by {other.node} to {self.key!r}")
        self.at_ms = max(self.at_ms, other.at_ms)
        self.results += other.results
        for reason, n in other.dead_letters.items():
            self.dead_letters[reason] = self.dead_letters.get(reason, 0) + n
        self.latency_buckets = [
            a + b for a, b in zip(self.latency_buckets, other.latency_buckets, strict=True)
        ]
        for label, n in other.labels.items():
            self.labels[label] = self.labels.get(label, 0) + n
        self.score_bins = [a + b for a, b in zip(self.score_bins, other.score_bins, strict=True)]

    def to_bytes(self) -> bytes:
        """msgpack map (``docs/contract.md``, "Cloud records")."""
        return packb(
            {
                "v": CLOUD_VERSION,
                "region": self.region,
                "node": self.node,
                "model": self.model,
                "mver": self.model_version,
                "at_ms": self.at_ms,
                "results": self.results,
                "dlq": self.dead_letters,
                "lat": self.latency_buckets,
                "labels": self.labels,
                "scores": self.score_bins,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> PartialSummary:
        """Parse one; raises UndecodableRecord."""
        m = _unpack(raw, "summary")
        try:
            dead = f.mapping(f.field(m, "dlq"), "dlq")
            labels = f.mapping(f.field(m, "labels"), "labels")
            return cls(
                region=f.text(f.field(m, "region"), "region"),
                node=f.text(f.field(m, "node"), "node"),
                model=f.text(f.field(m, "model"), "model"),
                model_version=f.integer(f.field(m, "mver"), "mver", minimum=0),
                at_ms=f.integer(f.field(m, "at_ms"), "at_ms"),
                results=f.count(f.field(m, "results"), "results"),
                dead_letters={f.text(k, "dlq reason"): f.count(v, "dlq count") for k, v in dead.items()},
                latency_buckets=_counts(f.field(m, "lat"), "lat", len(LATENCY_BOUNDS_MS) + 1),
                labels={f.integer(k, "label"): f.count(v, "label count") for k, v in labels.items()},
                score_bins=_counts(f.field(m, "scores"), "scores", SCORE_BINS),
            )
        except ValueError as e:  # FieldError
            raise UndecodableRecord(f"summary: {e}") from e


@dataclass(frozen=True, slots=True)
class Sample:
    """One answered request, anonymised, for retraining. Key on ``cloud.samples``: the pseudonym."""

    request_id: bytes
    """Joins the sample to a label from ``cloud.labels``."""
    region: str
    model: str
    model_version: int
    at_ms: int
    """When the edge answered (unix ms)."""
    device: bytes
    """The device's pseudonym (``pseudonym``), never its id."""
    features: tuple[float, ...]
    """The model's input vector (embeddings only; frames are never sampled)."""
    label: int
    """The model's answer."""
    scores: tuple[float, ...]
    """Its class probabilities."""

    def to_bytes(self) -> bytes:
        """msgpack map."""
        return packb(
            {
                "v": CLOUD_VERSION,
                "rid": self.request_id,
                "region": self.region,
                "model": self.model,
                "mver": self.model_version,
                "at_ms": self.at_ms,
                "dev": self.device,
                "x": list(self.features),
                "label": self.label,
                "scores": list(self.scores),
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Sample:
        """Parse one; raises UndecodableRecord."""
        m = _unpack(raw, "sample")
        try:
            return cls(
                request_id=_request_id(f.field(m, "rid")),
                region=f.text(f.field(m, "region"), "region"),
                model=f.text(f.field(m, "model"), "model"),
                model_version=f.integer(f.field(m, "mver"), "mver", minimum=0),
                at_ms=f.integer(f.field(m, "at_ms"), "at_ms"),
                device=f.binary(f.field(m, "dev"), "dev"),
                features=_floats(f.field(m, "x"), "x"),
                label=f.integer(f.field(m, "label"), "label"),
                scores=_floats(f.field(m, "scores"), "scores"),
            )
        except ValueError as e:  # FieldError
            raise UndecodableRecord(f"sample: {e}") from e


@dataclass(frozen=True, slots=True)
class Label:
    """Ground truth for one request, from a backend. Key on ``cloud.labels``: the request id."""

    request_id: bytes
    model: str
    label: int
    at_ms: int

    def to_bytes(self) -> bytes:
        """msgpack map."""
        return packb(
            {
                "v": CLOUD_VERSION,
                "rid": self.request_id,
                "model": self.model,
                "label": self.label,
                "at_ms": self.at_ms,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Label:
        """Parse one; raises UndecodableRecord."""
        m = _unpack(raw, "label")
        try:
            return cls(
                _request_id(f.field(m, "rid")),
                f.text(f.field(m, "model"), "model"),
                f.integer(f.field(m, "label"), "label"),
                f.integer(f.field(m, "at_ms"), "at_ms"),
            )
        except ValueError as e:  # FieldError
            raise UndecodableRecord(f"label: {e}") from e


def _request_id(value: Any) -> bytes:
    """A request id: exactly `REQUEST_ID_BYTES` (the contract's bin 16). Longer ones made the
    aggregator's join buckets, keyed by request id, larger than its changelog takes (2026-12-07)."""
    rid = f.binary(value, "rid", max_bytes=REQUEST_ID_BYTES)
    if len(rid) != REQUEST_ID_BYTES:
        raise f.FieldError(f"rid: {len(rid)} bytes, not {REQUEST_ID_BYTES}")
    return rid


def merge(summaries: Sequence[PartialSummary]) -> Mapping[str, Any]:
    """Add partial summaries of one (region, model, version) up: totals and histograms."""
    results = sum(s.results for s in summaries)
    dead: dict[str, int] = {}
    labels: dict[int, int] = {}
    latency = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    scores = [0] * SCORE_BINS
    for s in summaries:
        for reason, n in s.dead_letters.items():
            dead[reason] = dead.get(reason, 0) + n
        for label, n in s.labels.items():
            labels[label] = labels.get(label, 0) + n
        latency = [a + b for a, b in zip(latency, s.latency_buckets, strict=True)]
        scores = [a + b for a, b in zip(scores, s.score_bins, strict=True)]
    return {"results": results, "dead_letters": dead, "labels": labels, "latency": latency, "scores": scores}
