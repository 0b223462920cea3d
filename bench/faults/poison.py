"""The poison corpus (issue 12): every hostile kind at the worker's DEFAULT limits, and one device's flood.

On top of the hostile corpus's 35 categories (``CATEGORIES``), ``POISON_CATEGORIES``: NaN and +Inf
embeddings (float16, the model's dtype: ``non_finite``; float32: refused for its dtype first,
``bad_shape``), an envelope just under the default ``max_envelope_bytes`` (admitted, then refused for
its shape: its dead letter is the whole copy), envelopes just over it (``oversized``; those near the
producer's request limit get a truncated dead letter), records keyed by another id, produced to another
partition or to the other kind's topic, and copies of answered good envelopes produced to another
partition or topic. Records about a MiB large are a budget (``large``), not a share: each costs the
worker and the broker a MiB.

The flood: one device sends bursts of envelopes captured just inside ``max_future_skew_ms`` ahead. The
worker answers what its rate allows and dead-letters the rest (``rate_limited``); which record gets which
depends on timing, so each flood record is owed exactly one outcome of ``ALLOWED_OUTCOMES[FLOOD]``,
while every other device's good record is owed exactly one result.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

from bench.faults.checker import Verdict
from bench.faults.corpus import Corpus
from bench.faults.records import CATEGORIES, FLOOD, LARGE_CATEGORIES, POISON_CATEGORIES, CorpusRecord
from edgestream.pipeline.contract.codec import TensorBody, TensorDtype
from edgestream.pipeline.contract.envelope import Kind, new_request_id, seal
from edgestream.pipeline.contract.limits import PRODUCER_MAX_REQUEST_BYTES
from edgestream.pipeline.contract.partitioner import partition_for
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.topics.catalogue import KINDS, ingest_topic, parse_topic
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND

ALL_CATEGORIES: Final[Mapping[str, str]] = {**CATEGORIES, **POISON_CATEGORIES}
"""Every hostile category of the poison corpus and the reason its dead letter must carry."""
_OTHER_KIND: Final[Mapping[Kind, Kind]] = {"embedding": "frame", "frame": "embedding"}
_LARGE_ORDER: Final = sorted(LARGE_CATEGORIES)


def worker_default(name: str) -> Any:
    """The default of a ``WorkerSettings`` field: what a worker started without that setting uses."""
    return WorkerSettings.model_fields[name].default


class PoisonCorpus(Corpus):
    """Good records from many devices, every hostile category, a flood from one device; sealed for one
    region with the worker's default limits."""

    def __init__(
        self, region: str, keyring: KeyRing, *, served_versions: Mapping[str, int], seed: int
    ) -> None:
        super().__init__(
            region,
            keyring,
            served_versions=served_versions,
            seed=seed,
            devices=500,
            max_envelope_bytes=worker_default("max_envelope_bytes"),
            max_body_bytes=worker_default("max_body_bytes"),
            max_age_ms=worker_default("max_age_ms"),
        )
        self.max_envelope_bytes: int = worker_default("max_envelope_bytes")
        """The default limit the corpus's sizes are built around."""
        self.max_future_skew_ms: int = worker_default("max_future_skew_ms")
        """How far ahead the flood's captures may be and still be fresh."""
        self.flood_device = f"flood-{seed}"
        """The one device that floods (no other record comes from it)."""
        self._draws: dict[str, Callable[[int], CorpusRecord]] = {
            name: getattr(self, f"_bad_{name}") for name in ALL_CATEGORIES
        }

    # -- drawing ------------------------------------------------------------------------------------

    def stream(
        self,
        good: int,
        bad: int,
        *,
        flood: int = 0,
        flood_bursts: int = 1,
        large: int = len(LARGE_CATEGORIES),
        good_first: int = 20,
    ) -> Iterator[CorpusRecord]:
        """``good`` good records and ``bad`` hostile ones (every category once, ``large`` records of about
        a MiB in all, the rest small categories at random), randomly interleaved after ``good_first``
        good ones; ``flood`` flood records in ``flood_bursts`` bursts at random points. Lazy: each
        record is sealed as it is taken, so capture times are "now" for a stream sent as it is drawn."""
        plan = self._bad_plan(bad, large)
        head = min(good_first, good)
        for _ in range(head):
            yield self.good()
        order = ["good"] * (good - head) + plan
        self._rng.shuffle(order)
        for n in range(flood_bursts):
            size = flood // flood_bursts + (1 if n < flood % flood_bursts else 0)
            at = self._rng.randrange(len(order) + 1)
            order[at:at] = [FLOOD] * size
        for name in order:
            if name == "good":
                yield self.good()
            elif name == FLOOD:
                yield self.flood()
            else:
                yield self._draws[name](next(self._ids))

    def _bad_plan(self, bad: int, large: int) -> list[str]:
        """The categories of ``bad`` hostile records: each once, more large ones up to ``large``, then
        small ones at random."""
        if large < len(LARGE_CATEGORIES) or bad < len(ALL_CATEGORIES) + large - len(LARGE_CATEGORIES):
            raise ValueError(f"{bad} hostile records with {large} large ones cannot cover every category")
        plan = list(ALL_CATEGORIES)
        plan += [_LARGE_ORDER[i % len(_LARGE_ORDER)] for i in range(large - len(LARGE_CATEGORIES))]
        small = [name for name in ALL_CATEGORIES if name not in LARGE_CATEGORIES]
        plan += [self._rng.choice(small) for _ in range(bad - len(plan))]
        return plan

    def flood(self) -> CorpusRecord:
        """A record of the flood: the flood device, a capture time just inside the allowed skew ahead."""
        test_id = next(self._ids)
        kind: Kind = self._rng.choice(KINDS)
        ahead_ms = self.max_future_skew_ms - self._rng.randint(200, 1000)
        value, rid = self._seal(self.flood_device, kind, test_id, capture_time_ms=_now_ms() + ahead_ms)
        return CorpusRecord(test_id, kind, self.flood_device.encode(), value, FLOOD, FLOOD, rid)

    def _make(
        self, test_id: int, category: str, kind: Kind, device: str, value: bytes, rid: bytes | None
    ) -> CorpusRecord:
        return CorpusRecord(test_id, kind, device.encode(), value, ALL_CATEGORIES[category], category, rid)

    # -- sealing what encode_tensor refuses ---------------------------------------------------------

    def _seal_body(self, test_id: int, category: str, kind: Kind, body: TensorBody) -> CorpusRecord:
        """``body`` sealed as it stands by a random device of the corpus, uncompressed."""
        device = self._rng.choice(self._devices)
        key_id = self._keyring.current_key_id(self.region)
        rid = new_request_id()
        value = seal(
            body,
            device_key=self._keyring.device_key(self.region, device, key_id),
            device_id=device,
            key_id=key_id,
            kind=kind,
            model=MODEL_FOR_KIND[kind],
            request_id=rid,
            compression="none",
        )
        return self._make(test_id, category, kind, device, value, rid)

    def _non_finite(self, test_id: int, category: str, dtype: TensorDtype, value: float) -> CorpusRecord:
        """A real embedding with one to three elements set to ``value`` (NaN or +Inf), as ``dtype``."""
        row = self._row("embedding").astype(dtype)
        for i in self._rng.sample(range(row.size), self._rng.randint(1, 3)):
            row[i] = value
        return self._seal_body(test_id, category, "embedding", TensorBody(row.tobytes(), dtype, row.shape))

    def _bad_nan_float16(self, test_id: int) -> CorpusRecord:
        return self._non_finite(test_id, "nan_float16", "float16", float("nan"))

    def _bad_inf_float16(self, test_id: int) -> CorpusRecord:
        return self._non_finite(test_id, "inf_float16", "float16", float("inf"))

    def _bad_nan_float32(self, test_id: int) -> CorpusRecord:
        return self._non_finite(test_id, "nan_float32", "float32", float("nan"))

    def _bad_inf_float32(self, test_id: int) -> CorpusRecord:
        return self._non_finite(test_id, "inf_float32", "float32", float("inf"))

    # -- sizes around the default limit -------------------------------------------------------------

    def _sized(self, test_id: int, category: str, size: int) -> CorpusRecord:
        """A sealed envelope of exactly ``size`` bytes: a flat uint8 tensor (the wrong shape for either
        model), uncompressed."""
        kind: Kind = self._rng.choice(KINDS)
        n = size - 300
        for _ in range(4):
            record = self._seal_body(
                test_id, category, kind, TensorBody(bytes(n), "uint8", (n,), attrs={"test_id": test_id})
            )
            if len(record.value) == size:
                return record
            n += size - len(record.value)
        raise AssertionError(f"could not size an envelope to {size} bytes")

    def _bad_near_limit(self, test_id: int) -> CorpusRecord:
        return self._sized(test_id, "near_limit", self.max_envelope_bytes - self._rng.randint(0, 2048))

    def _bad_over_limit(self, test_id: int) -> CorpusRecord:
        return self._sized(test_id, "over_limit", self.max_envelope_bytes + self._rng.randint(1, 4096))

    def _bad_over_limit_truncated(self, test_id: int) -> CorpusRecord:
        # Its dead letter whole would pass the producer's limit; the broker still takes the record.
        size = PRODUCER_MAX_REQUEST_BYTES - self._rng.randint(200, 500)
        return self._sized(test_id, "over_limit_truncated", size)

    # -- records out of their place -----------------------------------------------------------------

    def _fresh(self, test_id: int, category: str, **kw: Any) -> CorpusRecord:
        """A good envelope of a random device and kind, labelled ``category`` (to be misplaced)."""
        kind, device, value, rid = self._base(test_id)
        return dataclasses.replace(self._make(test_id, category, kind, device, value, rid), **kw)

    def _other_partition(self, record: CorpusRecord) -> int:
        """A partition of the record's topic other than the one its key maps to."""
        partitions = parse_topic(ingest_topic(self.region, record.kind)).spec.partitions
        own = partition_for(record.key, partitions)
        return (own + self._rng.randrange(1, partitions)) % partitions

    def _bad_key_mismatch(self, test_id: int) -> CorpusRecord:
        record = self._fresh(test_id, "key_mismatch")
        device = record.key.decode()
        other = self._rng.choice([d for d in self._devices[:8] if d != device])
        key = self._rng.choice(
            [other.encode(), b"", device.upper().encode(), record.key + b"\x00", self._rng.randbytes(2048)]
        )
        return dataclasses.replace(record, key=key)

    def _bad_wrong_partition(self, test_id: int) -> CorpusRecord:
        record = self._fresh(test_id, "wrong_partition")
        return dataclasses.replace(record, partition=self._other_partition(record))

    def _bad_wrong_topic(self, test_id: int) -> CorpusRecord:
        record = self._fresh(test_id, "wrong_topic")
        return dataclasses.replace(record, kind=_OTHER_KIND[record.kind])

    def _copy_of_good(self, test_id: int, category: str) -> CorpusRecord:
        if not self._recent_good:
            raise RuntimeError("a replay needs a good record drawn before it")
        original = self._rng.choice(self._recent_good)
        return dataclasses.replace(
            original, test_id=test_id, expect=ALL_CATEGORIES[category], category=category
        )

    def _bad_replay_other_partition(self, test_id: int) -> CorpusRecord:
        copy = self._copy_of_good(test_id, "replay_other_partition")
        return dataclasses.replace(copy, partition=self._other_partition(copy))

    def _bad_header_key_not_utf8(self, test_id: int) -> CorpusRecord:
        """Garbage whose headers' keys are not UTF-8 (a lone continuation byte, an overlong encoding, a
        surrogate's bytes), beside a valid one."""
        device = self._rng.choice(self._devices)
        kind: Kind = self._rng.choice(KINDS)
        names = [b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"trace-\x80"]
        headers = ((self._rng.choice(names), b"x"), (b"fine", b"y"))
        value = self._rng.randbytes(self._rng.randrange(1, 512))
        record = self._make(test_id, "header_key_not_utf8", kind, device, b"\x00" + value, None)
        return dataclasses.replace(record, raw_headers=headers)

    def _bad_replay_other_topic(self, test_id: int) -> CorpusRecord:
        copy = self._copy_of_good(test_id, "replay_other_topic")
        return dataclasses.replace(copy, kind=_OTHER_KIND[copy.kind])


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- what the scenario reports and requires -------------------------------------------------------


def poison_counts(verdict: Verdict) -> dict[str, Any]:
    """Inputs written by kind (good, hostile, flood, large) and the outcomes of the hostile ones and
    the flood's, by reason."""
    by = verdict.by_category
    hostile: Counter[str] = Counter()
    for category in ALL_CATEGORIES:
        hostile.update(by.get(category, Counter()))
    return {
        "good_written": sum(by.get("good", Counter()).values()),
        "hostile_written": sum(hostile.values()),
        "flood_written": sum(by.get(FLOOD, Counter()).values()),
        "large_written": sum(sum(by.get(c, Counter()).values()) for c in LARGE_CATEGORIES),
        "hostile_by_reason": dict(sorted(hostile.items())),
        "flood_outcomes": dict(sorted(by.get(FLOOD, Counter()).items())),
        "categories": sum(c in by for c in ALL_CATEGORIES),
    }


def poison_requirements(
    verdict: Verdict, extra: Mapping[str, Any], unexpected_exits: Sequence[str], exit_codes: Mapping[str, int]
) -> list[str]:
    """What the poison scenario requires beyond the checker's invariant, as the list of what broke:
    every category sent and written, one worker process from start to SIGTERM (exit 0) that consumed
    every record written, no rewind, no aborted transaction."""
    broken = [
        f"category never written: {c}"
        for c in ("good", FLOOD, *ALL_CATEGORIES)
        if c not in verdict.by_category
    ]
    if verdict.not_written:
        broken.append(f"{verdict.not_written} records did not reach the ingest topics")
    if unexpected_exits:
        broken.append(f"worker exits: {list(unexpected_exits)}")
    if dict(exit_codes) != {"w.1": 0} or extra.get("incarnations") != 1:
        broken.append(f"one incarnation exiting 0 at SIGTERM expected, got {dict(exit_codes)}")
    if extra.get("rewinds") or extra.get("stats_rewinds"):
        broken.append(
            f"rewinds: {extra.get('rewinds')} in the log, {extra.get('stats_rewinds')} in its stats"
        )
    aborted = sum(extra.get("aborted_outputs", {}).values())
    if aborted:
        broken.append(f"{aborted} output records of aborted transactions: {extra.get('aborted_outputs')}")
    if extra.get("stats_consumed") != verdict.written:
        broken.append(
            f"the worker consumed {extra.get('stats_consumed')} of {verdict.written} records written"
        )
    return broken
