"""What the edge sends the cloud: partial window summaries, anonymised samples, and (from backends)
labels. msgpack maps, like every other record of the contract (``docs/contract.md``, "Cloud records").

Summaries are *partial*: each edge transaction carries one summary per (model, version) of the records
of that transaction's input partition, so a summary commits with exactly the results it counts (no
state is carried across transactions, nothing is lost or counted twice on a crash or rebalance). The
aggregator adds partial summaries up into its windows by ``at_ms``.

Samples carry features only: an embedding's input vector (never a frame), the model's answer, and a
*pseudonym* of the device, HMAC-SHA256 under a key derived from the region master key, instead of its id.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from edgestream.pipeline.errors import UndecodableRecord

CLOUD_VERSION: Final = 1
"""Version of the cloud record formats."""
LATENCY_BOUNDS_MS: Final = (5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0, 1000.0, 2500.0)
"""Upper bounds of the latency histogram buckets; one more bucket counts everything above the last."""
SCORE_BINS: Final = 10
"""The top-class score histogram has this many equal bins over [0, 1]."""
PSEUDONYM_BYTES: Final = 16
"""Length of a device pseudonym (truncated HMAC-SHA256)."""


def latency_bucket(latency_ms: float) -> int:
    """Index of the histogram bucket ``latency_ms`` falls in (NaN and +inf: the last one)."""
    for index, bound in enumerate(LATENCY_BOUNDS_MS):
        if latency_ms <= bound:
            return index
    return len(LATENCY_BOUNDS_MS)


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


def _unpack(raw: bytes, what: str) -> dict[str, Any]:
    try:
        fields = msgpack.unpackb(raw, raw=False, strict_map_key=False)  # class labels are int keys
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise UndecodableRecord(f"{what}: not msgpack: {e}") from e
    if not isinstance(fields, dict):
        raise UndecodableRecord(f"{what}: not a map")
    if fields.get("v") != CLOUD_VERSION:
        raise UndecodableRecord(f"{what}: version {fields.get('v')!r}, expected {CLOUD_VERSION}")
    return fields


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

    def to_bytes(self) -> bytes:
        """msgpack map (``docs/contract.md``, "Cloud records")."""
        return msgpack.packb(
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
            },
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> PartialSummary:
        """Parse one; raises UndecodableRecord."""
        f = _unpack(raw, "summary")
        try:
            summary = cls(
                region=str(f["region"]),
                node=str(f["node"]),
                model=str(f["model"]),
                model_version=int(f["mver"]),
                at_ms=int(f["at_ms"]),
                results=int(f["results"]),
                dead_letters={str(k): int(v) for k, v in dict(f["dlq"]).items()},
                latency_buckets=[int(x) for x in f["lat"]],
                labels={int(k): int(v) for k, v in dict(f["labels"]).items()},
                score_bins=[int(x) for x in f["scores"]],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UndecodableRecord(f"summary: {e!r}") from e
        if (
            len(summary.latency_buckets) != len(LATENCY_BOUNDS_MS) + 1
            or len(summary.score_bins) != SCORE_BINS
        ):
            raise UndecodableRecord("summary: histogram of the wrong size")
        return summary


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
        return msgpack.packb(
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
            },
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Sample:
        """Parse one; raises UndecodableRecord."""
        f = _unpack(raw, "sample")
        try:
            return cls(
                request_id=bytes(f["rid"]),
                region=str(f["region"]),
                model=str(f["model"]),
                model_version=int(f["mver"]),
                at_ms=int(f["at_ms"]),
                device=bytes(f["dev"]),
                features=tuple(float(x) for x in f["x"]),
                label=int(f["label"]),
                scores=tuple(float(x) for x in f["scores"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UndecodableRecord(f"sample: {e!r}") from e


@dataclass(frozen=True, slots=True)
class Label:
    """Ground truth for one request, from a backend. Key on ``cloud.labels``: the request id."""

    request_id: bytes
    model: str
    label: int
    at_ms: int

    def to_bytes(self) -> bytes:
        """msgpack map."""
        return msgpack.packb(
            {
                "v": CLOUD_VERSION,
                "rid": self.request_id,
                "model": self.model,
                "label": self.label,
                "at_ms": self.at_ms,
            },
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Label:
        """Parse one; raises UndecodableRecord."""
        f = _unpack(raw, "label")
        try:
            return cls(bytes(f["rid"]), str(f["model"]), int(f["label"]), int(f["at_ms"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UndecodableRecord(f"label: {e!r}") from e


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
