"""The registry on Kafka: one compacted ``control.models`` record per model (key = model name).

``publish_state`` writes a state with an idempotent producer (acks=all), so a retried send never
leaves a duplicate. ``read_states`` reads the topic read_committed from the beginning to the end
offsets it finds when it starts, keeping the last value per key (a tombstone removes the model): what
compaction would leave. A :class:`RecordFollower` does the same once, then yields every newer record from
those end offsets on, for workers.

Read-modify-write by two operators at once can lose one update (Kafka has no compare-and-set); each
state carries a ``revision`` so that a reader can see it, and the CLI is meant to run from one place.

Every state is written signed (``signed_state.py``) with the client's ``signer``; a client given
``trusted`` keys reads only states signed by one of them (a publisher must not sign a transition of a
state it cannot verify), one without reads them unverified (display, drift references). Workers follow
the raw records (:class:`RecordFollower`) and verify each with ``accept_state``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from edgestream.pipeline import kafka
from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.registry.errors import RegistryError
from edgestream.pipeline.registry.signed_state import decode_state, sign_state
from edgestream.topics.catalogue import CONTROL_MODELS, MODELS_TOPIC

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator

    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import ConsumerRecord

    from edgestream.pipeline.registry.signing import SigningKey, TrustedKeys
    from edgestream.pipeline.registry.state import ModelState
    from edgestream.pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS: Final = 30_000
"""Bound on reading ``control.models`` to its end offsets."""
_CLIENT_ID: Final = "edgestream-registry"


class RegistryClient:
    """Reads and writes registry states on ``control.models``."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        signer: SigningKey | None = None,
        trusted: TrustedKeys | None = None,
        kept: bool = False,
    ) -> None:
        """``signer``: the registry key that signs what :meth:`publish_state` writes (required to write).
        ``trusted``: read only states signed by these keys (None: read them unverified). ``kept``: hold
        one consumer between reads, each read going on from where the last ended (:class:`KeyedTail`),
        for a reader that reads often (the rollout controller, every step); :meth:`close` it. Otherwise
        each read reads the topic from its beginning with a consumer of its own."""
        self._kafka = kafka
        self._topic = MODELS_TOPIC
        self._timeout_ms = timeout_ms
        self._signer = signer
        self._trusted = trusted
        self._tail = (
            KeyedTail(
                kafka, self._topic, CONTROL_MODELS.partitions, timeout_ms=timeout_ms, client_id=_CLIENT_ID
            )
            if kept
            else None
        )

    async def close(self) -> None:
        """Stop the consumer a ``kept`` client holds (nothing otherwise)."""
        if self._tail is not None:
            await self._tail.close()

    async def publish_state(self, state: ModelState) -> None:
        """Write ``state``, signed, as its model's record and wait until the broker has it (acks=all)."""
        value = self._signed(state)
        async with kafka.started(kafka.producer(self._kafka, _CLIENT_ID)) as producer:
            await producer.send_and_wait(self._topic, value, key=state.model.encode())
        log.info("published %s revision %d (stable v%s)", state.model, state.revision, state.stable)

    def _signed(self, state: ModelState) -> bytes:
        if self._signer is None:
            raise ConfigError("the registry client has no signing key: rollout states are written signed")
        return sign_state(self._signer, state).to_bytes()

    async def read_states(self, *, strict: bool = True) -> dict[str, ModelState]:
        """Every model's latest state. A latest value that does not parse raises
        :class:`MalformedRegistryRecord` (``strict``) or is logged and left out."""
        return _decode(await self._latest(), strict=strict, trusted=self._trusted)

    async def read_state(self, model: str) -> ModelState | None:
        """``model``'s latest state (None: none, or a tombstone); the :class:`RegistryError` that
        refuses it when it does not parse (or verify, with ``trusted``). Other models' records are not
        looked at, so one bad record of another model does not stop a publisher."""
        value = (await self._latest()).get(model)
        return None if value is None else decode_state(model, value, self._trusted)

    async def _latest(self) -> dict[str, bytes | None]:
        if self._tail is not None:
            return await self._tail.read()
        async with kafka.started(kafka.background_consumer(self._kafka, _CLIENT_ID)) as consumer:
            return await latest_by_key(consumer, self._topic, CONTROL_MODELS.partitions, self._timeout_ms)


class KeyedTail:
    """The latest value (None: a tombstone) of every key of a compacted topic, kept between reads: one
    consumer, each :meth:`read` going on from where the last one ended. A compacted topic's active
    segment keeps every record until it rolls (``control.models`` rolls hourly, each state carrying its
    history), so a reader that read it from the beginning on every call fetched megabytes each time,
    and the broker encrypts a fetch's response on a network thread its other clients share. A read that
    fails starts over from the beginning next time. :meth:`close` when done."""

    def __init__(
        self, kafka_settings: KafkaSettings, topic: str, partitions: int, *, timeout_ms: int, client_id: str
    ) -> None:
        self._topic = topic
        self._reader = kafka.KeptReader(
            kafka_settings, client_id, kafka.partitions([(topic, partitions)]), timeout_ms=timeout_ms
        )
        self._latest: dict[str, bytes | None] = {}
        self.records_read = 0
        """Records the last read took (from the beginning, or since the read before)."""

    async def read(self) -> dict[str, bytes | None]:
        """Every key's latest value up to the end offsets found now (a copy). Raises
        :class:`~edgestream.pipeline.errors.KafkaTimeout` as :func:`latest_by_key`."""
        records = await self._reader.read()
        if not self._reader.resumed:
            self._latest = {}
        self.records_read = len(records)
        for record in records:
            if record.key is None:
                log.warning("%s offset %d has no key; ignored", self._topic, record.offset)
                continue
            self._latest[record.key.decode(errors="replace")] = record.value
        return dict(self._latest)

    async def close(self) -> None:
        """Stop the consumer (a later read starts a new one, from the beginning)."""
        await self._reader.close()


class RecordFollower:
    """``control.models`` read once to its end (:meth:`latest`), then followed from there (:meth:`newer`),
    so a follower sees each record once: what it applied at start is not read again as a repeat.

    Values are unparsed and unverified; the follower decides what to apply
    (``signed_state.accept_state``). One lifecycle: :meth:`start`, :meth:`stop` (idempotent).
    """

    def __init__(self, settings: KafkaSettings, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        """``timeout_ms``: bound on :meth:`latest` (:class:`~edgestream.pipeline.errors.KafkaTimeout`
        past it)."""
        self._consumer = kafka.background_consumer(settings, _CLIENT_ID)
        self._timeout_ms = timeout_ms

    async def start(self) -> None:
        """Connect; raises aiokafka's ``KafkaConnectionError`` when no broker answers."""
        await self._consumer.start()

    async def stop(self) -> None:
        """Close the consumer."""
        await self._consumer.stop()

    async def latest(self) -> dict[str, bytes]:
        """Every model's latest record value, as ``{model: value}`` (tombstones and keyless records left
        out), up to the end offsets found now; call once, before :meth:`newer`."""
        topic, partitions = MODELS_TOPIC, CONTROL_MODELS.partitions
        latest = await latest_by_key(self._consumer, topic, partitions, self._timeout_ms)
        return {model: value for model, value in latest.items() if value is not None}

    async def newer(self) -> AsyncIterator[tuple[str, bytes]]:
        """Each record published after what :meth:`latest` read, as ``(model, value)``, forever."""
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for model, value in keyed_values(records):
                    yield model, value


async def latest_by_key(
    consumer: AIOKafkaConsumer, topic: str, partitions: int, timeout_ms: int
) -> dict[str, bytes | None]:
    """The latest value (None: a tombstone) of every key of a compacted ``topic``, read from the
    beginning to the end offsets found at the start with a started ``consumer``; records without a key
    are logged and ignored. :class:`~edgestream.pipeline.errors.KafkaTimeout` when the end is not
    reached within ``timeout_ms``."""
    latest: dict[str, bytes | None] = {}
    tps = kafka.partitions([(topic, partitions)])
    async for record in kafka.read_to_end(consumer, tps, timeout_ms=timeout_ms):
        if record.key is None:
            log.warning("%s offset %d has no key; ignored", topic, record.offset)
            continue
        latest[record.key.decode(errors="replace")] = record.value
    return latest


def keyed_values(records: Iterable[ConsumerRecord[bytes, bytes]]) -> Iterator[tuple[str, bytes]]:
    """``(key as text, value)`` of each record that has both (a key that is not UTF-8 is read with
    replacement characters: it names no model a worker serves)."""
    for record in records:
        if record.key is not None and record.value is not None:
            yield record.key.decode(errors="replace"), record.value


def _decode(
    latest: dict[str, bytes | None], *, strict: bool, trusted: TrustedKeys | None
) -> dict[str, ModelState]:
    states: dict[str, ModelState] = {}
    for model, value in latest.items():
        if value is None:  # tombstone: the model was removed
            continue
        try:
            states[model] = decode_state(model, value, trusted)
        except RegistryError as e:
            if strict:
                raise
            log.error("skipping the registry state of %r: %s (%s)", model[:64], e.reason, e)
    return states
