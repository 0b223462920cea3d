"""What a processed unit publishes, per input partition: a result and an audit record for each answer,
a dead letter (and an audit record, when the envelope decoded) for each refusal, and for the cloud a
partial summary per (model, version) and the samples of sampled answers.

Everything is built here and nothing is sent: the sink commits each partition's outputs with its
consumed offset (``workers/edge/sinks.py``). Audit records are linked into their partition's chain as
they are built; the chain's head travels as the offset's metadata.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence

from aiokafka import TopicPartition

from edgestream.pipeline.contract.cloud import PartialSummary, Sample, pseudonym
from edgestream.pipeline.contract.deadletter import attempt_of, dead_letter_headers
from edgestream.pipeline.contract.records import AuditRecord, ResultRecord
from edgestream.pipeline.security.derive import pseudonym_key
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.serving.auditchain import AuditChain, chain_id
from edgestream.pipeline.serving.served import ModelKey
from edgestream.topics.catalogue import (
    SAMPLES_TOPIC,
    SUMMARIES_TOPIC,
    audit_topic,
    dlq_topic,
    edge_group,
    results_topic,
)
from edgestream.workers.edge.admission import Item, current_master
from edgestream.workers.edge.sinks import Output, PartitionWork

log = logging.getLogger(__name__)


def sampled(item: Item, fraction: float) -> bool:
    """Whether an answered embedding goes to ``cloud.samples``: by its request id, so the choice is
    the same when a failed transaction's records are processed again."""
    env = item.envelope
    if env is None or env.kind != "embedding" or not fraction:
        return False
    return int.from_bytes(hashlib.sha256(env.request_id).digest()[:4], "big") < fraction * 2**32


class UnitOutputs:
    """Builds the outputs of a region's units, as written by one node."""

    def __init__(self, region: str, node: str, chains: AuditChain, *, cloud: bool) -> None:
        self._region = region
        self._node = node
        self._chains = chains
        self._cloud = cloud
        self._group_id = edge_group(region)
        self._results_topic = results_topic(region)
        self._audit_topic = audit_topic(region)
        self._dlq_topic = dlq_topic(region)

    def build(
        self, items: Sequence[Item], started_s: float, keyring: KeyRing
    ) -> dict[TopicPartition, PartitionWork]:
        """Each input partition's outputs, the offset after its last record and its chain's head.
        ``started_s``: when the unit's processing began; ``keyring``: the one device pseudonyms of
        cloud samples are derived from."""
        work: dict[TopicPartition, PartitionWork] = {}
        now_ms = time.time() * 1000.0
        for item in items:
            part = work.setdefault(item.tp, PartitionWork())
            part.next_offset = max(part.next_offset, item.offset + 1)
            if item.error is None:
                part.outputs.extend(self._answer(item, started_s, now_ms))
            else:
                part.outputs.extend(self._dead_letter(item, now_ms))
        for tp, part in work.items():
            part.metadata = self._chains.metadata(chain_id(tp.topic, tp.partition))
        if self._cloud:
            self._cloud_outputs(items, work, now_ms, keyring)
        return work

    def _cloud_outputs(
        self,
        items: Sequence[Item],
        work: Mapping[TopicPartition, PartitionWork],
        now_ms: float,
        keyring: KeyRing,
    ) -> None:
        """Per input partition, a partial summary per (model, version) of its records in this unit and
        the samples of its sampled answers: they commit with exactly the records they describe."""
        summaries: dict[tuple[TopicPartition, ModelKey], PartialSummary] = {}
        sample_key: bytes | None = None
        for item in items:
            if item.model is None or item.envelope is None:
                continue  # undecodable or unknown model: no (model, version) to count it under
            name, version = item.model.key
            summary = summaries.get((item.tp, item.model.key))
            if summary is None:
                summary = PartialSummary(self._region, self._node, name, version, int(now_ms))
                summaries[(item.tp, item.model.key)] = summary
            if item.error is not None:
                summary.add_dead_letter(item.error.reason)
                continue
            answer = item.answer
            assert answer is not None
            summary.add_result(answer.label, max(answer.scores), now_ms - item.envelope.capture_time_ms)
            if item.features is not None:
                # Derived from the region's current master key (a rotation starts new pseudonyms),
                # never the master key itself.
                sample_key = sample_key or pseudonym_key(current_master(keyring, self._region))
                sample = Sample(
                    request_id=item.envelope.request_id,
                    region=self._region,
                    model=name,
                    model_version=version,
                    at_ms=int(now_ms),
                    device=pseudonym(sample_key, item.envelope.device_id),
                    features=item.features,
                    label=answer.label,
                    scores=answer.scores,
                )
                item.features = None
                work[item.tp].outputs.append(Output(SAMPLES_TOPIC, sample.to_bytes(), sample.device))
        for (tp, _key), summary in summaries.items():
            work[tp].outputs.append(Output(SUMMARIES_TOPIC, summary.to_bytes(), summary.key))

    def _answer(self, item: Item, started_s: float, now_ms: float) -> list[Output]:
        env, served, answer = item.envelope, item.model, item.answer
        if env is None or served is None or answer is None:
            raise RuntimeError(f"{item.tp}@{item.offset} reached publishing without an answer")
        name, version = served.key
        total_ms = now_ms - env.capture_time_ms
        result = ResultRecord(
            request_id=env.request_id,
            device_id=env.device_id,
            model=name,
            model_version=version,
            label=answer.label,
            scores=answer.scores,
            queue_ms=(started_s - item.arrived_s) * 1000.0,
            infer_ms=answer.infer_ms,
            total_ms=total_ms,
            batch_size=answer.batch_size,
            node=self._node,
            region=self._region,
            produced_at_ms=int(now_ms),
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
        audit = self._chains.link(chain_id(item.tp.topic, item.tp.partition), audit)
        return [
            Output(self._results_topic, result.to_bytes(), env.device_id.encode()),
            Output(self._audit_topic, audit.to_bytes(), env.request_id),
        ]

    def _dead_letter(self, item: Item, now_ms: float) -> list[Output]:
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
        outputs = [Output(self._dlq_topic, item.raw, item.key, headers)]
        if env is not None:
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
            audit = self._chains.link(chain_id(item.tp.topic, item.tp.partition), audit)
            outputs.append(Output(self._audit_topic, audit.to_bytes(), env.request_id))
        return outputs
