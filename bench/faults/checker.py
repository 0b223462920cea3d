"""The exactly-once checker: every input judged against the read_committed view (pure: no Kafka).

The invariant, per input (one record on an ingest topic): exactly one result or exactly one dead letter,
never both, never neither; the dead letter's reason is the one the input was built to get and its origin
headers point at the input; each result has exactly one ``ok`` audit record with the same request id and
model version (and each dead letter whose envelope decodes, one ``dead_letter`` audit record).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter, defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from bench.faults.env import MAX_ENVELOPE_BYTES
from bench.faults.observe import Observed, Record
from bench.faults.records import ALLOWED_OUTCOMES, OK, CorpusRecord
from edgestream.pipeline.contract.deadletter import DeadLetter, MalformedDeadLetter
from edgestream.pipeline.contract.envelope import decode_envelope
from edgestream.pipeline.contract.records import AuditRecord, ResultRecord
from edgestream.pipeline.errors import ContractError
from edgestream.topics.catalogue import parse_topic
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND


@dataclass
class Verdict:
    """What the read_committed view says about every input sent."""

    sent: int = 0
    """Records the scenario drew and sent."""
    written: int = 0
    """Of them, found on the ingest topics (the inputs the invariant is about)."""
    summarised: int = 0
    """Results the cloud summaries count: must equal ``results`` (they commit in the same transactions)."""
    not_written: int = 0
    """Sent, delivery failed, not on the ingest topics: never an input (reported, not a violation)."""
    results: int = 0
    """Result records read."""
    dead_letters: Counter[str] = field(default_factory=Counter)
    """Dead letters read, by reason."""
    audits: int = 0
    """Audit records read."""
    lost: int = 0
    """Inputs with neither a result nor a dead letter."""
    duplicated: int = 0
    """Outcomes beyond the first for an input (second result, second dead letter, or both)."""
    both: int = 0
    """Inputs with a result and a dead letter."""
    false_replays: int = 0
    """Dead letters with reason ``replayed`` for inputs that were not replays."""
    stale_good: int = 0
    """Good inputs dead-lettered as ``stale`` where the scenario delays them past ``max_age_ms`` (a broker
    outage): one outcome, the right one for a late input, so not a violation there."""
    refused_good: int = 0
    """Good inputs dead-lettered ``internal`` because the cluster refused their result for its size,
    where the scenario lowered the results topic's ``max.message.bytes``: one outcome, the right one
    there."""
    wrong_reason: Counter[str] = field(default_factory=Counter)
    """``category: expected X, got Y`` for dead letters with another reason than their input's."""
    answered_bad: Counter[str] = field(default_factory=Counter)
    """Bad inputs that got a result, by category."""
    unknown_results: int = 0
    """Results for a request id no input carried."""
    wrong_answers: int = 0
    """Results whose device or model is not their input's."""
    bad_origin: int = 0
    """Dead letters whose origin headers do not point at an ingest record with the same key and bytes."""
    malformed_dead_letters: int = 0
    """DLQ records without the error headers."""
    truncated_dead_letters: int = 0
    """Dead letters that are a truncated copy (their origin's size and sha256 checked against the input)."""
    audit_problems: Counter[str] = field(default_factory=Counter)
    """Results and dead letters without exactly one matching audit record, and audit records without."""
    foreign_ingest: int = 0
    """Ingest records the scenario did not send (a producer duplicate)."""
    unsettled: dict[str, int] = field(default_factory=dict)
    """Output partitions left with an open transaction."""
    by_category: dict[str, Counter[str]] = field(default_factory=dict)
    """category -> outcome (``result`` or a reason, ``lost``) -> inputs."""
    examples: list[str] = field(default_factory=list)
    """A few concrete violations, to start debugging from."""

    def violations(self) -> list[str]:
        """Every broken part of the invariant, in words; empty when it holds."""
        out = []
        for name in (
            "lost",
            "duplicated",
            "both",
            "false_replays",
            "unknown_results",
            "wrong_answers",
            "bad_origin",
            "malformed_dead_letters",
            "foreign_ingest",
        ):
            value = getattr(self, name)
            if value:
                out.append(f"{name}: {value}")
        for name in ("wrong_reason", "answered_bad", "audit_problems"):
            counts: Counter[str] = getattr(self, name)
            out += [f"{name}: {key}: {n}" for key, n in sorted(counts.items())]
        if self.unsettled:
            out.append(f"open transactions left: {self.unsettled}")
        if self.summarised != self.results:
            out.append(
                f"cloud summaries count {self.summarised} results, the results topic has {self.results}"
            )
        if self.written == 0:
            out.append("nothing was written to the ingest topics")
        return out

    def example(self, text: str) -> None:
        """Keep ``text`` as an example violation (the first 20)."""
        if len(self.examples) < 20:
            self.examples.append(text)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "written": self.written,
            "summarised": self.summarised,
            "not_written": self.not_written,
            "results": self.results,
            "dead_letters": dict(sorted(self.dead_letters.items())),
            "audits": self.audits,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "both": self.both,
            "false_replays": self.false_replays,
            "stale_good": self.stale_good,
            "refused_good": self.refused_good,
            "wrong_reason": dict(self.wrong_reason),
            "answered_bad": dict(self.answered_bad),
            "unknown_results": self.unknown_results,
            "wrong_answers": self.wrong_answers,
            "bad_origin": self.bad_origin,
            "malformed_dead_letters": self.malformed_dead_letters,
            "truncated_dead_letters": self.truncated_dead_letters,
            "audit_problems": dict(self.audit_problems),
            "foreign_ingest": self.foreign_ingest,
            "unsettled": self.unsettled,
            "by_category": {k: dict(v) for k, v in sorted(self.by_category.items())},
            "examples": self.examples,
        }


Position = tuple[str, int, int]
"""(topic, partition, offset) of an ingest record."""


REFUSED_FOR_SIZE: Final = "the cluster refused it for its size"
"""What the worker's dead letter says of a record whose output the cluster refused (``outputs.py``)."""


def check(
    ledger: Mapping[int, CorpusRecord],
    observed: Observed,
    *,
    max_envelope_bytes: int = MAX_ENVELOPE_BYTES,
    tolerate_stale: bool = False,
    tolerate_refused: bool = False,
) -> Verdict:
    """Judge every input by the read_committed view (pure: no Kafka here). ``tolerate_stale``: a good
    input's one dead letter may be ``stale`` (the scenario held it up past the age limit);
    ``tolerate_refused``: it may be ``internal`` for a result the cluster refused for its size (the
    scenario lowered the results topic's limit)."""
    v = Verdict(sent=len(ledger), unsettled=dict(observed.unsettled))
    v.summarised = sum(summary.results for summary in observed.summaries)
    input_at, ingest_at = _match_ingest(ledger, observed, v)
    written = set(input_at.values())
    v.written = len(written)
    v.not_written = len(ledger) - len(written)
    letters, expected_dl_audits = _match_dead_letters(observed, input_at, ingest_at, v, max_envelope_bytes)
    results, answered = _match_results(ledger, observed, written, letters, v)
    _judge_inputs(ledger, written, letters, answered, v, tolerate_stale, tolerate_refused)
    _check_audits(observed, results, expected_dl_audits, v)
    return v


def _match_ingest(
    ledger: Mapping[int, CorpusRecord], observed: Observed, v: Verdict
) -> tuple[dict[Position, int], dict[Position, Record]]:
    """Which input is each ingest record? Inputs sent to a named partition are matched there first;
    the rest by topic (its kind), key and value. Identical ones on one topic (replays) share a partition,
    so their offsets follow their send order, which is test id order."""
    queue: dict[tuple[str | None, int | None, bytes, bytes], deque[int]] = defaultdict(deque)
    for test_id in sorted(ledger):
        record = ledger[test_id]
        queue[(record.kind, record.partition, record.key, record.value)].append(test_id)
    input_at: dict[Position, int] = {}
    ingest_at: dict[Position, Record] = {}
    for r in sorted(observed.ingest, key=lambda r: (r.topic, r.partition, r.offset)):
        kind, key, value = parse_topic(r.topic).kind, r.key or b"", r.value or b""
        pending = queue.get((kind, r.partition, key, value)) or queue.get((kind, None, key, value))
        if not pending:
            v.foreign_ingest += 1
            v.example(f"ingest {r.topic}[{r.partition}]@{r.offset} was not sent by the scenario")
            continue
        input_at[(r.topic, r.partition, r.offset)] = pending.popleft()
        ingest_at[(r.topic, r.partition, r.offset)] = r
    return input_at, ingest_at


def _match_dead_letters(
    observed: Observed,
    input_at: Mapping[Position, int],
    ingest_at: Mapping[Position, Record],
    v: Verdict,
    max_envelope_bytes: int,
) -> tuple[dict[int, list[DeadLetter]], Counter[tuple[bytes, str]]]:
    """Dead letters, matched to their input by their origin headers; with the dead_letter audit records
    they are owed (by request id and reason, for those whose envelope decodes)."""
    letters: dict[int, list[DeadLetter]] = defaultdict(list)
    expected_dl_audits: Counter[tuple[bytes, str]] = Counter()
    for r in observed.dlq:
        try:
            letter = DeadLetter.from_record(r)
        except MalformedDeadLetter as err:
            v.malformed_dead_letters += 1
            v.example(str(err))
            continue
        v.dead_letters[letter.reason] += 1
        with contextlib.suppress(ContractError):
            envelope = decode_envelope(letter.value, max_envelope_bytes=max_envelope_bytes)
            expected_dl_audits[(envelope.request_id, letter.reason)] += 1
        origin = (letter.origin_topic, letter.origin_partition, letter.origin_offset)
        owner = input_at.get(origin)
        source = ingest_at.get(origin)
        v.truncated_dead_letters += bool(letter.truncated)
        if owner is None or source is None or not _copy_of(letter, source):
            v.bad_origin += 1
            v.example(f"dead letter {letter.dlq_position()} ({letter.reason}) names origin {origin}")
            continue
        letters[owner].append(letter)
    return letters, expected_dl_audits


def _copy_of(letter: DeadLetter, source: Record) -> bool:
    """Whether the dead letter holds ``source``: whole, or a truncated copy whose prefix, size and
    sha256 are the source's (and whose key, if cut, is a prefix of the source's)."""
    value, key = source.value or b"", source.key or b""
    if not letter.truncated:
        return letter.value == value and (letter.key or b"") == key
    kept_key = letter.key or b""
    return (
        letter.original_size == len(value)
        and letter.original_sha256 == hashlib.sha256(value).hexdigest()
        and value.startswith(letter.value)
        and (key.startswith(kept_key) if "key" in letter.truncated else kept_key == key)
    )


def _match_results(
    ledger: Mapping[int, CorpusRecord],
    observed: Observed,
    written: set[int],
    letters: Mapping[int, list[DeadLetter]],
    v: Verdict,
) -> tuple[dict[bytes, list[ResultRecord]], dict[int, int]]:
    """Results, matched by request id: the inputs of a request id that were not dead-lettered are owed
    one result each (a replay shares its original's id and is owed a dead letter instead). Returns the
    results by request id and the inputs answered."""
    results: dict[bytes, list[ResultRecord]] = defaultdict(list)
    for r in observed.results:
        result = ResultRecord.from_bytes(r.value or b"")
        results[result.request_id].append(result)
        v.results += 1
    inputs_of: dict[bytes, list[int]] = defaultdict(list)
    for test_id in sorted(written):
        rid = ledger[test_id].request_id
        if rid is not None:
            inputs_of[rid].append(test_id)
    answered: dict[int, int] = {}
    for rid, got in results.items():
        owners = inputs_of.get(rid)
        if not owners:
            v.unknown_results += len(got)
            v.example(f"result for unknown request {rid.hex()} from {got[0].node}")
            continue
        open_inputs = [t for t in owners if not letters.get(t)]
        for test_id in open_inputs[: len(got)]:
            answered[test_id] = 1
        extra = len(got) - len(open_inputs)
        if extra > 0:
            v.duplicated += extra
            v.both += min(extra, len(owners) - len(open_inputs))
            nodes = sorted(r.node for r in got)
            v.example(f"request {rid.hex()} (test ids {owners}) has {len(got)} results from {nodes}")
        record = ledger[owners[0]]
        for result in got:
            if result.device_id.encode() != record.key or result.model != MODEL_FOR_KIND[record.kind]:
                v.wrong_answers += 1
                v.example(f"request {rid.hex()}: result for {result.device_id}/{result.model}")
    return results, answered


def _judge_inputs(
    ledger: Mapping[int, CorpusRecord],
    written: set[int],
    letters: Mapping[int, list[DeadLetter]],
    answered: Mapping[int, int],
    v: Verdict,
    tolerate_stale: bool,
    tolerate_refused: bool = False,
) -> None:
    """Each input: exactly one outcome, the expected one."""
    for test_id in sorted(written):
        record = ledger[test_id]
        got_letters = letters.get(test_id, [])
        outcomes = Counter(letter.reason for letter in got_letters)
        if answered.get(test_id):
            outcomes["result"] += 1
        if not outcomes:
            v.lost += 1
            outcomes["lost"] += 1
            v.example(f"test id {test_id} ({record.category}) has no result and no dead letter")
        if len(got_letters) > 1:
            v.duplicated += len(got_letters) - 1
            v.example(f"test id {test_id} has {len(got_letters)} dead letters: {sorted(outcomes)}")
        v.by_category.setdefault(record.category, Counter()).update(outcomes)
        allowed = ALLOWED_OUTCOMES.get(record.expect)
        if allowed is not None:  # one outcome of several (a flood): which one is not the checker's to know
            for outcome in set(outcomes) - allowed - {"lost"}:
                v.wrong_reason[f"{record.category}: expected one of {sorted(allowed)}, got {outcome}"] += 1
                v.example(f"test id {test_id} ({record.category}): {outcome}")
            continue
        if record.expect != OK and answered.get(test_id):
            v.answered_bad[record.category] += 1
            v.example(f"test id {test_id} ({record.category}) was answered; expected {record.expect}")
        expected = "result" if record.expect == OK else record.expect
        for letter in got_letters:
            if tolerate_stale and expected == "result" and letter.reason == "stale" and len(got_letters) == 1:
                v.stale_good += 1
                continue
            if (
                tolerate_refused
                and expected == "result"
                and letter.reason == "internal"
                and REFUSED_FOR_SIZE in letter.message
                and len(got_letters) == 1
            ):
                v.refused_good += 1
                continue
            if letter.reason != expected:
                v.wrong_reason[f"{record.category}: expected {expected}, got {letter.reason}"] += 1
                v.example(
                    f"test id {test_id} ({record.category}) at {letter.origin_position()}: {letter.reason}"
                    f" ({letter.message})"
                )
                if letter.reason == "replayed":
                    v.false_replays += 1


def _check_audits(
    observed: Observed,
    results: Mapping[bytes, list[ResultRecord]],
    expected_dl_audits: Counter[tuple[bytes, str]],
    v: Verdict,
) -> None:
    """Audit: one ok record per result (same request id and version), one dead_letter record per
    dead letter whose envelope decodes (same request id and reason)."""
    ok_audits: Counter[tuple[bytes | None, int | None]] = Counter()
    dl_audits: Counter[tuple[bytes, str]] = Counter()
    for r in observed.audit:
        audit = AuditRecord.from_bytes(r.value or b"")
        v.audits += 1
        if audit.outcome == "ok":
            ok_audits[(audit.request_id, audit.model_version)] += 1
        elif audit.request_id is not None:
            dl_audits[(audit.request_id, audit.reason or "")] += 1
    result_keys: Counter[tuple[bytes | None, int | None]] = Counter(
        (result.request_id, result.model_version) for got in results.values() for result in got
    )
    for key in result_keys.keys() | ok_audits.keys():
        n_results, n_audits = result_keys[key], ok_audits[key]
        if n_results != n_audits:
            what = (
                "results without their audit record" if n_results > n_audits else "ok audits without a result"
            )
            v.audit_problems[what] += abs(n_results - n_audits)
            shown = key[0].hex() if key[0] else None
            v.example(f"request {shown} v{key[1]}: {n_results} results, {n_audits} audits")
    for dl_key in expected_dl_audits.keys() | dl_audits.keys():
        n_letters, n_audits = expected_dl_audits[dl_key], dl_audits[dl_key]
        if n_letters != n_audits:
            what = (
                "dead letters without their audit record"
                if n_letters > n_audits
                else "dead_letter audits without a dead letter"
            )
            v.audit_problems[what] += abs(n_letters - n_audits)
