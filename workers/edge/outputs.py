"""What a processed unit publishes, per input partition: a result and an audit record for each answer,
a dead letter (and an audit record, when the envelope decoded) for each refusal, and for the cloud a
partial summary per (model, version) and the samples of sampled answers.

Everything is built here and nothing is sent: the sink commits each partition's outputs with its
consumed offset (``workers/edge/sinks.py``). Summaries stay counts until the commit stage adds up
those of the units it commits together and encodes one per (model, version) (``commits.merge``).
Audit records are linked into their partition's chain as they are built; the chain's head travels as
the offset's metadata.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Final

from aiokafka import TopicPartition
from aiokafka.errors import MessageSizeTooLargeError

from edgestream.pipeline.contract.cloud import PartialSummary, Sample, pseudonym
from edgestream.pipeline.contract.deadletter import attempt_of, bounded_dead_letter, dead_letter_headers
from edgestream.pipeline.contract.limits import (
    DEAD_LETTER_HEADROOM_BYTES,
    PRODUCER_MAX_REQUEST_BYTES,
    record_size,
)
from edgestream.pipeline.contract.records import AuditRecord, ResultRecord
from edgestream.pipeline.contract.reply import ReplyHeader
from edgestream.pipeline.errors import OutputFailed
from edgestream.pipeline.kafkarecords import refused_original
from edgestream.pipeline.observability.traceparent import TRACEPARENT
from edgestream.pipeline.security.derive import pseudonym_key
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.serving.auditchain import AuditChain, ChainNotStarted, chain_id
from edgestream.pipeline.serving.served import ModelKey
from edgestream.topics.catalogue import (
    SAMPLES_TOPIC,
    audit_topic,
    dlq_topic,
    edge_group,
    replies_topic,
    results_topic,
)
from edgestream.workers.edge.admission import Item, current_master
from edgestream.workers.edge.sealing import ReplySealer
from edgestream.workers.edge.sinks import Output, PartitionWork

log = logging.getLogger(__name__)

_MEASURED_FROM_BYTES = PRODUCER_MAX_REQUEST_BYTES - DEAD_LETTER_HEADROOM_BYTES
SMALL_DEAD_LETTER_BYTES: Final = 4096
"""Most bytes of a dead letter written in place of one the cluster refused for its size
(`UnitOutputs.refuse`): its error headers and the first bytes of the value only."""
MAX_REFUSALS: Final = 10_000
"""Records remembered as refused by the cluster (`UnitOutputs.refuse`)."""


class OutputTooLarge(ValueError):
    """An output of one record would be larger than a Kafka record may be (`fitting`)."""


def fitting(output: Output) -> Output:
    """``output``, or `OutputTooLarge` when the producer would refuse it (over
    `PRODUCER_MAX_REQUEST_BYTES` as ``record_size`` counts it). A unit's transaction carries every
    output of the unit, so one the producer refuses would fail the unit each time it is read again and
    stop its partitions; checked as a record's outputs are built, it is that record's alone (a model's
    answer decides a result's size, a ``vector`` or ``named`` signature writing its outputs whole; a
    sample carries the input's features). Only a value within `DEAD_LETTER_HEADROOM_BYTES` of the limit
    is measured: a key and headers of the worker's own take less."""
    if (
        len(output.value) > _MEASURED_FROM_BYTES
        and (size := record_size(output.key, output.value, output.headers)) > PRODUCER_MAX_REQUEST_BYTES
    ):
        raise OutputTooLarge(f"a {size}-byte record for {output.topic}, over {PRODUCER_MAX_REQUEST_BYTES}")
    return output


def sampled(item: Item, fraction: float) -> bool:
    """Whether an answered embedding goes to ``cloud.samples`` (only a model whose inputs may be sampled:
    a zoo embedding model, or a signature that allows it): by its request id, so the choice is the same
    when a failed transaction's records are processed again."""
    env, served = item.envelope, item.model
    if env is None or not fraction or served is None or not served.sample_inputs:
        return False
    return int.from_bytes(hashlib.sha256(env.request_id).digest()[:4], "big") < fraction * 2**32


def trace_headers(item: Item) -> tuple[tuple[str, bytes], ...]:
    """The headers of an item's result, reply and audit record: its record's ``traceparent`` when
    tracing read one (``workers/edge/tracing.py``), else none. Its dead letter carries the record's
    own headers (`dead_letter_headers`)."""
    return () if item.traceparent is None else ((TRACEPARENT, item.traceparent),)


class UnitOutputs:
    """Builds the outputs of a region's units, as written by one node."""

    def __init__(self, region: str, node: str, chains: AuditChain, *, cloud: bool) -> None:
        self._region = region
        self._node = node
        self._chains = chains
        self._cloud = cloud
        self._group_id = edge_group(region)
        self._refusals: dict[tuple[TopicPartition, int], tuple[str, bool]] = {}
        """Records whose outputs the cluster refused for their size (`refuse`): the refused output's
        topic, and whether it was the record's dead letter."""
        self._results_topic = results_topic(region)
        self._replies_topic = replies_topic(region)
        self._sealer = ReplySealer(region)
        self._audit_topic = audit_topic(region)
        self._dlq_topic = dlq_topic(region)
        self._pseudonyms: tuple[bytes, bytes] = (b"", b"")
        """The master key the pseudonym key was last derived from, and that key."""

    def build(
        self, items: Sequence[Item], started_s: float, keyring: KeyRing
    ) -> dict[TopicPartition, PartitionWork]:
        """Each input partition's outputs, the offset after its last record and its chain's head.
        ``started_s``: when the unit's processing began; ``keyring``: the one device pseudonyms of
        cloud samples are derived from.

        A failure boundary per record: whatever building one record's outputs raises dead-letters that
        record (``internal``, `OutputFailed`) and nothing of its answer is published or counted."""
        work: dict[TopicPartition, PartitionWork] = {}
        now_ms = time.time() * 1000.0
        # Derived from the region's current master key (a rotation starts new pseudonyms), never the
        # master key itself; outside the records' boundary: a key problem is not a record's.
        sample_key = (
            self._pseudonym_key(current_master(keyring, self._region))
            if self._cloud and any(it.features is not None for it in items)
            else None
        )
        refusals = self._refusals
        for item in items:
            part = work.get(item.tp)
            if part is None:  # not setdefault: a PartitionWork (three containers) per item was 1.6%
                part = work[item.tp] = PartitionWork()
            if item.offset >= part.next_offset:
                part.next_offset = item.offset + 1
            part.epoch = item.epoch
            sampled_with = sample_key
            if refusals and item.error is None and (refused := refusals.get((item.tp, item.offset))):
                if refused[0] == SAMPLES_TOPIC:
                    sampled_with = None  # its sample is refused: answered without one
                else:
                    item.error = OutputFailed(
                        f"publishing its output to {refused[0]}: the cluster refused it for its size "
                        f"(that topic's max.message.bytes)",
                        MessageSizeTooLargeError(),
                    )
            if item.error is None:
                answered = self._answered(item, started_s, now_ms, sampled_with)
                part.outputs.extend(answered)
                if item.error is None:
                    self._reply(item, answered[0], part)
            if item.error is not None:
                part.outputs.extend(self._refused(item, now_ms))
            self._count(item, part.summaries, now_ms)
        for tp, part in work.items():
            part.metadata = self._chains.metadata(chain_id(tp.topic, tp.partition))
        return work

    def refuse(self, tp: TopicPartition, offset: int, topic: str) -> None:
        """The cluster refused, for its size, an output to ``topic`` of the record at ``offset`` of
        ``tp`` (sent alone: `sinks.OutputsRefused`): read again, the record is dead-lettered (``internal``),
        and if that dead letter was refused too, its dead letter keeps at most `SMALL_DEAD_LETTER_BYTES`;
        a refused cloud sample is only left out (the record is answered without one).
        At most `MAX_REFUSALS` are remembered (the oldest forgotten: read again, found again)."""
        key = (tp, offset)
        earlier = self._refusals.get(key)
        if topic != self._dlq_topic:  # a sample's refusal is the weakest: any other one replaces it
            keep = earlier is not None and earlier[0] != SAMPLES_TOPIC
            self._refusals[key] = earlier if keep and earlier is not None else (topic, False)
        elif earlier is None or not earlier[1]:  # its dead letter: a small one next time
            self._refusals[key] = (topic if earlier is None else earlier[0], True)
        else:
            log.error(
                "%s refused even a %d-byte dead letter of %s[%d]@%d: check its max.message.bytes",
                topic, SMALL_DEAD_LETTER_BYTES, tp.topic, tp.partition, offset,
            )  # fmt: skip
        while len(self._refusals) > MAX_REFUSALS:
            del self._refusals[next(iter(self._refusals))]

    def _pseudonym_key(self, master: bytes) -> bytes:
        """The pseudonym key of ``master``, derived again only when the region's current master key
        changes (an HKDF per unit was 0.75% of a draining worker)."""
        derived_from, key = self._pseudonyms
        if master != derived_from:
            key = pseudonym_key(master)
            self._pseudonyms = (master, key)
        return key

    def _answered(
        self, item: Item, started_s: float, now_ms: float, sample_key: bytes | None
    ) -> list[Output]:
        """Result, sample and audit record of an answered item, the result first; if building them
        fails, none of them, and the item gets the error instead. The audit record is linked into its
        chain last."""
        chain = chain_id(item.tp.topic, item.tp.partition)
        try:
            outputs, audit = self._answer(item, started_s, now_ms)
            if sample_key is not None and item.features is not None:
                outputs.append(self._sample(item, now_ms, sample_key))
            for output in outputs:
                fitting(output)
        except Exception as err:
            return self._not_built(item, err)
        finally:
            item.features = None
        try:  # encoded once, before it changes the chain: one that does not encode leaves it as it was
            audit, raw = self._chains.link_encoded(chain, audit)
        except ChainNotStarted:
            raise  # the worker's state, not the record's
        except Exception as err:
            return self._not_built(item, err)
        return [*outputs, Output(self._audit_topic, raw, audit.request_id, trace_headers(item), item.offset)]

    def _not_built(self, item: Item, err: Exception) -> list[Output]:
        """An answered item whose outputs could not be built: dead-lettered instead, nothing published."""
        log.warning(
            "building outputs of %s[%d]@%d", item.tp.topic, item.tp.partition, item.offset, exc_info=True
        )
        item.error = OutputFailed("building its outputs", err)
        return []

    def _reply(self, item: Item, result: Output, part: PartitionWork) -> None:
        """The fast reply of the answer just built (``result``: its result record): the record's bytes
        sealed to the device (``sealing.py``), on the replies topic. One that cannot be sealed is logged
        and not sent: its result still commits, and the device falls back at its deadline."""
        env, served = item.envelope, item.model
        try:
            if env is None or served is None or item.device_key is None:
                raise RuntimeError("answered without an opened envelope")
            name, version = served.key
            header = ReplyHeader(env.request_id, env.key_id, name, version)
            sealed = self._sealer.seal(result.value, item.device_key, header)
        except Exception:
            log.warning(
                "sealing the reply of %s[%d]@%d", item.tp.topic, item.tp.partition, item.offset, exc_info=True
            )
            return
        part.replies.append(Output(self._replies_topic, sealed, result.key, result.headers))

    def _refused(self, item: Item, now_ms: float) -> list[Output]:
        """Dead letter (and audit record) of a refused item; if building them fails, the dead letter
        alone, ``internal``."""
        try:
            return self._dead_letter(item, now_ms, audited=True)
        except Exception as err:
            log.warning(
                "dead-lettering %s[%d]@%d", item.tp.topic, item.tp.partition, item.offset, exc_info=True
            )
            item.error = OutputFailed("building its dead letter", err)
            return self._dead_letter(item, now_ms, audited=False)

    def _count(self, item: Item, summaries: dict[ModelKey, PartialSummary], now_ms: float) -> None:
        """Count the item in its partition's partial summary of its (model, version), if it has one
        (``summaries``: the partition's, added up over the units of a commit by ``commits.merge``, so a
        summary commits with exactly the records it counts). Total: `PartialSummary.add_result`."""
        if not self._cloud or item.model is None or item.envelope is None:
            return  # undecodable or unknown model: no (model, version) to count it under
        summary = summaries.get(item.model.key)
        if summary is None:
            name, version = item.model.key
            summary = summaries[item.model.key] = PartialSummary(
                self._region, self._node, name, version, int(now_ms)
            )
        if item.error is not None or item.answer is None:
            summary.add_dead_letter(item.error.reason if item.error is not None else "internal")
            return
        top = max(item.answer.scores, default=float("nan"))
        summary.add_result(item.answer.label, top, now_ms - item.envelope.capture_time_ms)

    def _sample(self, item: Item, now_ms: float, sample_key: bytes) -> Output:
        """The cloud sample of a sampled answer: its features, its answer and the device's pseudonym."""
        env, served, answer, features = item.envelope, item.model, item.answer, item.features
        if env is None or served is None or answer is None or features is None:
            raise RuntimeError(f"{item.tp}@{item.offset} sampled without an answer")
        name, version = served.key
        sample = Sample(
            request_id=env.request_id,
            region=self._region,
            model=name,
            model_version=version,
            at_ms=int(now_ms),
            device=pseudonym(sample_key, env.device_id),
            features=features,
            label=answer.label,
            scores=answer.scores,
        )
        return Output(SAMPLES_TOPIC, sample.to_bytes(), sample.device, (), item.offset)

    def _answer(self, item: Item, started_s: float, now_ms: float) -> tuple[list[Output], AuditRecord]:
        """The result and the (unlinked) audit record of an answered item."""
        env, served, answer = item.envelope, item.model, item.answer
        if env is None or served is None or answer is None:
            raise RuntimeError(f"{item.tp}@{item.offset} reached publishing without an answer")
        name, version = served.key
        total_ms = now_ms - env.capture_time_ms
        label, scores, typed = answer.label, answer.scores, None
        if served.typed is not None:  # a model served by its declared signature
            label, scores, typed = served.typed.typed_result(label, scores)
        result = ResultRecord(
            request_id=env.request_id,
            device_id=env.device_id,
            model=name,
            model_version=version,
            label=label,
            scores=scores,
            queue_ms=(started_s - item.arrived_s) * 1000.0,
            infer_ms=answer.infer_ms,
            total_ms=total_ms,
            batch_size=answer.batch_size,
            node=self._node,
            region=self._region,
            produced_at_ms=int(now_ms),
            typed=typed,
        )
        audit = AuditRecord(
            timestamp_ms=int(now_ms),
            request_id=env.request_id,
            node=self._node,
            region=self._region,
            device_id=env.device_id,
            model=name,
            model_version=version,
            outcome="ok",
            reason=None,
            latency_ms=total_ms,
        )
        key = env.device_id.encode()
        return [Output(self._results_topic, result.to_bytes(), key, trace_headers(item), item.offset)], audit

    def _dead_letter(self, item: Item, now_ms: float, *, audited: bool) -> list[Output]:
        """The item's dead letter (bounded to what the producer accepts: `bounded_dead_letter`) and,
        when ``audited`` and its envelope decoded, its audit record."""
        err = item.error
        assert err is not None
        env = item.envelope
        log.debug(
            "dead-letter %s[%d]@%d: %s (%s)", item.tp.topic, item.tp.partition, item.offset, err.reason, err
        )
        headers = dead_letter_headers(
            error=err,
            origin_topic=item.tp.topic,
            origin_partition=item.tp.partition,
            origin_offset=item.offset,
            origin_timestamp_ms=item.timestamp_ms,
            group_id=self._group_id,
            worker_id=self._node,
            key_id=None if env is None else env.key_id,
            attempt=attempt_of(item.headers),
            now_ms=int(now_ms),
            origin_headers=item.headers,
        )
        cut_from = refused_original(item.headers) if item.headers else None
        refused = self._refusals.get((item.tp, item.offset)) if self._refusals else None
        limit = SMALL_DEAD_LETTER_BYTES if refused is not None and refused[1] else PRODUCER_MAX_REQUEST_BYTES
        key, value, headers = bounded_dead_letter(
            item.key, item.raw, headers, cut_from=cut_from, limit_bytes=limit
        )
        outputs = [Output(self._dlq_topic, value, key, headers, item.offset)]
        if audited and env is not None:
            audit = AuditRecord(
                timestamp_ms=int(now_ms),
                request_id=env.request_id,
                node=self._node,
                region=self._region,
                device_id=env.device_id,
                model=env.model,
                model_version=env.model_version,
                outcome="dead_letter",
                reason=err.reason,
                latency_ms=now_ms - env.capture_time_ms,
            )
            _, raw = self._chains.link_encoded(chain_id(item.tp.topic, item.tp.partition), audit)
            outputs.append(Output(self._audit_topic, raw, env.request_id, trace_headers(item), item.offset))
        return outputs
