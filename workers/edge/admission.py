"""Admission: each fetched record becomes an ``Item``, opened and validated, or known to be bad.

Two stages, both before any model runs. ``Admission.admit``, as each record is fetched: decode the
envelope, resolve the model that answers it, find the device's key, decrypt and decompress the body,
check it against the model's input spec, check that the record is where its authenticated fields put
it (key, partition, topic) and decode the tensor. ``Admission.check``, when the item's unit is
processed, in offset order: stale captures and replays, then per-device rates, and only then is the
request id remembered. The first refusal (a ``ContractError``) becomes the item's dead-letter reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import numpy as np
from aiokafka import TopicPartition
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgestream.pipeline.contract.codec import decode_tensor
from edgestream.pipeline.contract.envelope import (
    KEY_BYTES,
    Envelope,
    authenticate,
    decode_envelope,
    open_envelope,
)
from edgestream.pipeline.contract.partitioner import partition_for
from edgestream.pipeline.errors import (
    ContractError,
    EdgestreamError,
    KeyMismatch,
    OversizedBatch,
    RecordFailed,
    WrongPartition,
    WrongTopic,
)
from edgestream.pipeline.kafkarecords import REFUSED
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.serving.ratelimit import DeviceRateLimiter
from edgestream.pipeline.serving.replay import ReplayGuard
from edgestream.pipeline.serving.served import ModelCatalog, ServedModel
from edgestream.topics.catalogue import KINDS, ingest_topic, parse_topic
from edgestream.workers.edge.settings import WorkerSettings

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord


class Answer(NamedTuple):
    """What the model said about one item, and how it was computed."""

    label: int
    """Predicted class."""
    scores: tuple[float, ...]
    """Class probabilities."""
    infer_ms: float
    """Duration of the onnxruntime call that computed it."""
    batch_size: int
    """Size of that call's batch."""
    started_s: float = 0.0
    """Monotonic time that call started (0.0: not known)."""


@dataclass(slots=True)
class Item:
    """One fetched record on its way through the worker: admitted, or already known to be bad."""

    tp: TopicPartition
    """Where it came from."""
    epoch: int
    """The positioning of ``tp`` it was fetched in (see ``workers/edge/positioning.py``)."""
    offset: int
    """Its offset there."""
    timestamp_ms: int
    """The record's Kafka timestamp."""
    key: bytes | None
    """The record's key (the device id), kept for its dead letter."""
    headers: tuple[tuple[str, bytes], ...]
    """The record's own headers (traceparent, replay marks), carried onto its dead letter."""
    raw: bytes
    """The record exactly as received (still sealed): a dead letter's value."""
    arrived_s: float
    """Monotonic time the worker admitted it."""
    envelope: Envelope | None = None
    """The decoded envelope (fields outside the ciphertext), when decoding got that far."""
    tensor: np.ndarray[Any, Any] | None = None
    """The decrypted input, in memory only; None when the record is bad."""
    model: ServedModel | None = None
    """The model that will answer it."""
    error: EdgestreamError | None = None
    """Why the record goes to the dead-letter topic, if it does."""
    answer: Answer | None = None
    """The model's answer, once inferred."""
    features: tuple[float, ...] | None = None
    """The input vector kept for a cloud sample (sampled embeddings only), until outputs are built."""
    traceparent: bytes | None = None
    """The record's valid ``traceparent``, carried onto its outputs; set only with tracing on
    (``workers/edge/tracing.py``)."""
    device_key: bytes | None = None
    """The device key its envelope opened under: its fast reply is sealed to it (``sealing.py``)."""


def current_master(keyring: KeyRing, region: str) -> bytes:
    """The master key of ``region``'s current key id (the one new keys derive from)."""
    master = keyring.keys(region)[keyring.current_key_id(region)].master
    assert master is not None, "the current key is never retired"
    return master


MAX_CIPHERS: Final = 65_536
"""Device ciphers kept by admission (a few hundred bytes each): the devices of a busy region's
partitions, as ``sealing.DEFAULT_REPLY_KEYS``."""

PartitionsOf = Callable[[str], "set[int] | None"]
"""The partitions of a topic in the cluster metadata (``AIOKafkaConsumer.partitions_for_topic``)."""


class Admission:
    """Opens and validates a region's records; remembers request ids and device rates."""

    def __init__(
        self, settings: WorkerSettings, catalog: ModelCatalog, partitions_of: PartitionsOf | None = None
    ) -> None:
        self._settings = settings
        self._catalog = catalog
        self._partitions_of = partitions_of
        self._topics = {kind: ingest_topic(settings.region, kind) for kind in KINDS}
        self.replays: ReplayGuard[TopicPartition] = ReplayGuard(
            window_ms=settings.max_age_ms + settings.max_future_skew_ms,
            max_age_ms=settings.max_age_ms,
            max_future_skew_ms=settings.max_future_skew_ms,
            max_ids_per_device=settings.max_replay_ids_per_device,
            max_devices=settings.max_replay_devices,
            max_ids=settings.max_replay_ids,
        )
        """Request ids seen per device and input partition: remembered by ``check`` once every check
        passed, then committed or aborted with the partition's transaction (a record redelivered after
        an abort is not a replay)."""
        self._ciphers: dict[bytes, AESGCM] = {}
        """Device key -> its cipher (`_cipher`)."""
        self._partition_counts: dict[str, int] = {}
        """Topic -> its partitions, for the records of the current fetch (`new_fetch`)."""
        self._rate = DeviceRateLimiter(
            rate_per_s=settings.device_rate_per_s,
            burst=settings.device_burst,
            max_devices=settings.max_tracked_devices,
        )

    def admit(
        self,
        tp: TopicPartition,
        epoch: int,
        record: ConsumerRecord[bytes, bytes],
        keyring: KeyRing,
        now_s: float,
        now_ms: float,
    ) -> tuple[Item, float]:
        """The record as an item of ``tp``'s positioning ``epoch``, and the monotonic time it must be
        answered by (its capture time plus ``sla_ms``; a bad record's dead letter may wait a second)."""
        raw = record.value if record.value is not None else b""
        item = Item(
            tp,
            epoch,
            record.offset,
            record.timestamp,
            record.key,
            tuple(record.headers),
            raw,
            now_s,
        )
        settings = self._settings
        deadline_s = now_s
        try:
            if record.headers and record.headers[0][0] == REFUSED:  # what the reader did not read whole
                raise OversizedBatch((record.headers[0][1] or b"").decode("utf-8", "replace"))
            item.envelope = decode_envelope(raw, max_envelope_bytes=settings.max_envelope_bytes)
            item.model = self._catalog.resolve(item.envelope)
            device_key = keyring.device_key(
                settings.region, item.envelope.device_id, item.envelope.key_id, now_ms
            )
            body = open_envelope(
                item.envelope, self._cipher(device_key), max_body_bytes=settings.max_body_bytes
            )
            item.device_key = device_key
            item.model.check_input(body.dtype, tuple(body.shape))
            self._check_placement(tp, record.key, item.envelope)
            item.tensor = decode_tensor(body, dequantise=item.model.dequantise)
            budget_s = (item.envelope.capture_time_ms + settings.sla_ms - now_ms) / 1000.0
            deadline_s = now_s + budget_s
        except ContractError as err:
            item.error = err
        except Exception as err:  # one record's failure, whatever it is, stays that record's
            item.error = RecordFailed("admitting it", err)
            item.tensor = None
        return item, deadline_s if item.error is None else now_s + 1.0

    def _cipher(self, device_key: bytes) -> AESGCM | bytes:
        """The AES-GCM cipher of ``device_key``, built once per key (building one costs about what
        opening an envelope does). Keyed by the key itself, as the reply sealer's cache is: a rotated or
        re-enrolled key is a new entry, and a key the ring no longer serves is never looked up again. A
        full cache starts over. A key that is not 32 bytes is passed on as it is, for ``open_envelope``
        to refuse."""
        cipher = self._ciphers.get(device_key)
        if cipher is None:
            if len(device_key) != KEY_BYTES:
                return device_key
            if len(self._ciphers) >= MAX_CIPHERS:
                self._ciphers.clear()
            cipher = self._ciphers[device_key] = AESGCM(device_key)
        return cipher

    def check(self, items: Sequence[Item]) -> None:
        """After authentication, in offset order: stale captures and replays, then per-device rates;
        then the request id is remembered. A record refused by any of them leaves no trace in the replay
        guard, and only a record the rate limit lets through is remembered (so no flood, within or over
        a device's rate, can change how another device's records are decided).

        The replay guard stages this unit's ids per partition; they become permanent only when the
        partition's transaction commits, so a record redelivered after an abort is not a replay.
        """
        now_ms = int(time.time() * 1000)
        now_s = time.monotonic()
        replays = self.replays
        for item in items:
            env = item.envelope
            if item.error is not None or env is None:
                continue
            try:
                replays.check(item.tp, env.device_id, env.request_id, env.capture_time_ms, now_ms)
                self._rate.check(env.device_id, now_s)
                replays.accept(item.tp, env.device_id, env.request_id, env.capture_time_ms, now_ms)
            except ContractError as err:
                item.error = err
                item.tensor = None
            except Exception as err:  # one record's failure, whatever it is, stays that record's
                item.error = RecordFailed("checking its freshness, replay and rate", err)
                item.tensor = None

    def remember(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], keyring: KeyRing, now_ms: int
    ) -> bool:
        """Remember the request id of a record ``tp`` committed before this worker owned it, if it is an
        authentic envelope in its place (``workers/edge/replaymemory.py``); True when it was new."""
        try:
            env = decode_envelope(record.value or b"", max_envelope_bytes=self._settings.max_envelope_bytes)
            self._partition_counts.pop(tp.topic, None)  # read outside any fetch: the count of now
            self._check_placement(tp, record.key, env)
            device_key = keyring.device_key(self._settings.region, env.device_id, env.key_id, now_ms)
            authenticate(env, device_key)
        except ContractError:
            return False  # never accepted, and refused again if it comes back
        return self.replays.remember(tp, env.device_id, env.request_id, env.capture_time_ms, now_ms)

    def _check_placement(self, tp: TopicPartition, key: bytes | None, env: Envelope) -> None:
        """The record is where its authenticated fields put it: keyed by its device id, on the partition
        that key maps to (contract section 9), on its kind's topic. So each request has one partition
        whose replay memory sees every copy of it."""
        device_key = env.device_id.encode()
        if key != device_key:
            raise KeyMismatch(env.device_id)
        expected = partition_for(device_key, self._partition_count(tp.topic))
        if tp.partition != expected:
            raise WrongPartition(tp.partition, expected)
        if tp.topic != self._topics[env.kind]:
            raise WrongTopic(tp.topic, env.kind)

    def new_fetch(self) -> None:
        """The records about to be admitted came in a new fetch: look the topics' partition counts up
        again (`_partition_count`)."""
        self._partition_counts.clear()

    def _partition_count(self, topic: str) -> int:
        """The topic's partitions in the cluster metadata, else in the catalogue; looked up once per
        fetch (`new_fetch`), not per record (aiokafka copies a topic's partitions into a new set for
        each lookup)."""
        count = self._partition_counts.get(topic)
        if count is None:
            partitions = None if self._partitions_of is None else self._partitions_of(topic)
            count = self._partition_counts[topic] = (
                len(partitions) if partitions else parse_topic(topic).spec.partitions
            )
        return count
