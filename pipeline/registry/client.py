"""The registry on Kafka: one compacted ``control.models`` record per model (key = model name).

``publish_state`` writes a state with an idempotent producer (acks=all), so a retried send never
leaves a duplicate. ``read_states`` reads the topic read_committed from the beginning to the end
offsets it finds when it starts, keeping the last value per key (a tombstone removes the model): what
compaction would leave. ``follow`` does the same, then keeps yielding every newer state, for workers.

Read-modify-write by two operators at once can lose one update (Kafka has no compare-and-set); each
state carries a ``revision`` so that a reader can see it, and the CLI is meant to run from one place.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from edgestream.pipeline import kafka
from edgestream.pipeline.registry.errors import MalformedRegistryRecord
from edgestream.pipeline.registry.state import ModelState
from edgestream.topics.catalogue import CONTROL_MODELS, MODELS_TOPIC

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiokafka import AIOKafkaConsumer

    from edgestream.pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS: Final = 30_000
"""Bound on reading ``control.models`` to its end offsets."""
_CLIENT_ID: Final = "edgestream-registry"


class RegistryClient:
    """Reads and writes registry states on ``control.models``."""

    def __init__(self, kafka: KafkaSettings, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        self._kafka = kafka
        self._topic = MODELS_TOPIC
        self._timeout_ms = timeout_ms

    async def publish_state(self, state: ModelState) -> None:
        """Write ``state`` as its model's record and wait until the broker has it (acks=all)."""
        async with kafka.started(kafka.producer(self._kafka, _CLIENT_ID)) as producer:
            await producer.send_and_wait(self._topic, state.to_bytes(), key=state.model.encode())
        log.info("published %s revision %d (stable v%s)", state.model, state.revision, state.stable)

    async def read_states(self, *, strict: bool = True) -> dict[str, ModelState]:
        """Every model's latest state. A latest value that does not parse raises
        :class:`MalformedRegistryRecord` (``strict``) or is logged and left out."""
        async with kafka.started(kafka.consumer(self._kafka, _CLIENT_ID)) as consumer:
            latest = await self._read_to_end(consumer)
        return _decode(latest, strict=strict)

    async def follow(self, *, strict: bool = False) -> AsyncIterator[ModelState]:
        """Every model's latest state, then each newer state as it is published (forever).

        Malformed records are logged and skipped unless ``strict``: one bad record must not stop a
        worker from following the others."""
        async with kafka.started(kafka.consumer(self._kafka, _CLIENT_ID)) as consumer:
            latest = await self._read_to_end(consumer)
            for state in _decode(latest, strict=strict).values():
                yield state
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    fresh = {r.key.decode(): r.value for r in records if r.key is not None}
                    for state in _decode(fresh, strict=strict).values():
                        yield state

    async def _read_to_end(self, consumer: AIOKafkaConsumer) -> dict[str, bytes | None]:
        return await latest_by_key(consumer, self._topic, CONTROL_MODELS.partitions, self._timeout_ms)


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


def _decode(latest: dict[str, bytes | None], *, strict: bool) -> dict[str, ModelState]:
    states: dict[str, ModelState] = {}
    for model, value in latest.items():
        if value is None:  # tombstone: the model was removed
            continue
        try:
            state = ModelState.from_bytes(value)
            if state.model != model:
                raise MalformedRegistryRecord(f"record keyed {model!r} holds the state of {state.model!r}")
        except MalformedRegistryRecord as e:
            if strict:
                raise
            log.error("skipping the registry state of %r: %s", model, e)
            continue
        states[model] = state
    return states
