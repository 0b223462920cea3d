"""The only place Kafka clients are built, and the one way to read partitions to their end.

Every client gets its connection (``bootstrap_servers``, TLS 1.3 with the process's certificate) from
:class:`~edgestream.pipeline.settings.KafkaSettings` and the project's safe defaults here, which differ
from aiokafka's own where those are unsafe for this job: consumers commit by hand and read only
committed records (``read_committed``), producers wait for every in-sync replica and are idempotent.
A caller passes only what is particular to it (a group, a transactional id, fetch sizes). Every
client built here reads and writes Kafka's requests and responses through the compiled struct codec
(``kafkawire.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Final, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from edgestream.pipeline import kafkarecords, kafkawire
from edgestream.pipeline.contract.limits import PRODUCER_MAX_REQUEST_BYTES
from edgestream.pipeline.contract.partitioner import memo_partitioner
from edgestream.pipeline.errors import KafkaTimeout

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping, Sequence

    from aiokafka.structs import ConsumerRecord

    from edgestream.pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

FETCH_WAIT_MS: Final = 200
"""How long one fetch of :func:`read_to_end` waits for data before the deadline is checked again."""
LAG_RETRIES: Final = 20
"""Attempts to read a group's committed offsets while a fresh cluster creates ``__consumer_offsets``."""
LAG_BACKOFF_S: Final = 0.25
"""Pause between those attempts."""


C = TypeVar("C", AIOKafkaConsumer, AIOKafkaProducer, AIOKafkaAdminClient)
"""A client :func:`started` starts and stops."""


def consumer(
    kafka: KafkaSettings, client_id: str, *, group_id: str | None = None, **options: Any
) -> AIOKafkaConsumer:
    """A (not yet started) consumer: manual commits, ``read_committed``, from the earliest offset when
    the group has none; ``options`` add to or override those and the connection's settings (aiokafka's
    keyword arguments: e.g. SASL settings, which ``KafkaSettings`` does not model). Its fetched records'
    header keys are read as Kafka's Java client reads them (``kafkarecords.py``)."""
    kafkarecords.install()
    kafkawire.install()
    config: dict[str, Any] = {
        **kafka.client_kwargs(),
        "client_id": client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "isolation_level": "read_committed",
        "auto_offset_reset": "earliest",
        "request_timeout_ms": kafka.request_timeout_ms,
    }
    config.update(options)
    return AIOKafkaConsumer(**config)


BACKGROUND_FETCH: Final[dict[str, int]] = {
    "fetch_max_bytes": 128 * 1024,
    "max_partition_fetch_bytes": 64 * 1024,
}
"""Fetch limits of the readers that read a span of a topic in bulk beside the live traffic (the rollout
controller, the retrainer, the registry's readers): at most 128 KiB per response instead of the
client's 50 MiB (1 MiB per partition); a record batch larger than that still comes, alone. A broker
writes a TLS response on a network thread that its other connections share, encrypting as much as the
socket takes: in the demo, a step that fetched three 1 MiB partitions at once held one of the broker's
two network threads for 60-200 ms, and every device round trip on it waited; at 512 KiB per response
the broker's request log still showed 20-28 ms sends to the controller that every connection on the
thread waited out. Smaller responses take more round trips, none of them long."""


async def start_kept(client: AIOKafkaConsumer) -> AIOKafkaConsumer:
    """``client`` started, for a reader that keeps it between reads (``started`` is for one block); a
    start that fails, or is cancelled, stops it again before raising, so nothing is left open."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise
    return client


def background_consumer(kafka: KafkaSettings, client_id: str, **options: Any) -> AIOKafkaConsumer:
    """:func:`consumer` (no group) with :data:`BACKGROUND_FETCH`'s limits: for a bulk reader that runs
    beside the live traffic."""
    return consumer(kafka, client_id, **{**BACKGROUND_FETCH, **options})


def producer(
    kafka: KafkaSettings, client_id: str, *, transactional_id: str | None = None, **options: Any
) -> AIOKafkaProducer:
    """A (not yet started) producer: ``acks=all``, idempotent, no linger, requests up to the limit the
    broker is configured for (``pipeline/contract/limits.py``); transactional when
    ``transactional_id`` is given; ``options`` add to or override those."""
    kafkawire.install()
    config: dict[str, Any] = {
        **kafka.client_kwargs(),
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 0,
        "max_request_size": PRODUCER_MAX_REQUEST_BYTES,
        "request_timeout_ms": kafka.request_timeout_ms,
        "partitioner": memo_partitioner,
    }
    config.update(options)
    if transactional_id is not None:
        config["transactional_id"] = transactional_id
    return AIOKafkaProducer(**config)


async def delivered(deliveries: Iterable[asyncio.Future[Any]]) -> None:
    """Wait until every one of a transaction's ``deliveries`` is settled; raise the first failure.

    Await it before ``commit_transaction``: aiokafka sends EndTxn once the transaction's batches are
    settled, failed or not, so a batch the broker refused for good (larger than its topic's
    ``max.message.bytes``, a topic no longer authorised) would commit the transaction without its
    records, with the consumed offsets: re-read from those offsets, they would be lost. Raising
    instead leaves the transaction open for the caller to abort (Java's producer refuses such a commit
    the same way). Every delivery's outcome is retrieved, so none is logged as never retrieved."""
    outcomes = await asyncio.gather(*deliveries, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def client(kafka: KafkaSettings, client_id: str, **options: Any) -> AIOKafkaClient:
    """A (not yet bootstrapped) bare client, connections and metadata, for a caller that builds and
    sends its own requests (the edge worker's fast replies); ``options`` add to or override the
    connection's settings."""
    kafkawire.install()
    config: dict[str, Any] = {
        **kafka.client_kwargs(),
        "client_id": client_id,
        "request_timeout_ms": kafka.request_timeout_ms,
    }
    config.update(options)
    return AIOKafkaClient(**config)


def admin(kafka: KafkaSettings, client_id: str, **options: Any) -> AIOKafkaAdminClient:
    """A (not yet started) admin client; ``options`` add to or override the connection's settings."""
    kafkawire.install()
    config: dict[str, Any] = {
        **kafka.client_kwargs(),
        "client_id": client_id,
        "request_timeout_ms": kafka.request_timeout_ms,
    }
    config.update(options)
    return AIOKafkaAdminClient(**config)


@contextlib.asynccontextmanager
async def started(client: C) -> AsyncIterator[C]:
    """``client`` started for the block and stopped after it, also when starting fails half-way."""
    try:
        await client.start()
        yield client
    finally:
        if isinstance(client, AIOKafkaAdminClient):
            await client.close()
        else:
            await client.stop()


async def read_to_end(
    client: AIOKafkaConsumer,
    tps: Sequence[TopicPartition],
    *,
    timeout_ms: int,
    what: str = "",
    idle: bool = False,
    since_ms: int | None = None,
    resume: bool = False,
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of ``tps`` from the beginning up to the end offsets found at the start (the last
    stable offsets, for a ``read_committed`` consumer), read with the started ``client`` (assigned to
    ``tps`` here). Raises :class:`KafkaTimeout` naming ``what`` (default: the topics) when the end is
    not reached within ``timeout_ms``; with ``idle``, ``timeout_ms`` bounds each stretch without
    progress instead of the whole read, so a long topic takes as long as it takes. Once read, the client
    is left at those end offsets: a caller that reads on (a follower) gets the records the last fetch
    brought from past them, rather than losing them.

    ``since_ms``: start each partition at its first record timestamped at or after it (the broker's
    time index, ``offsets_for_times``) instead of the beginning, so a reader that needs only recent
    records does not read the topic's whole retention each time.

    ``resume``: the client was left by an earlier read of the same ``tps``; read on from where it
    ended to the end offsets found now (each record once over a series of reads)."""
    if not resume:
        client.assign(list(tps))
    if not tps:
        return
    end = await client.end_offsets(list(tps))
    if not resume:
        await _seek_start(client, tps, end, since_ms)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_ms / 1000
    at = {tp: await client.position(tp) for tp in tps}
    while [tp for tp in tps if at[tp] < end[tp]]:
        if loop.time() >= deadline:
            raise KafkaTimeout(what or ", ".join(sorted({tp.topic for tp in tps})), timeout_ms)
        batch = await client.getmany(*tps, timeout_ms=FETCH_WAIT_MS)
        for tp, records in batch.items():
            for record in records:
                if record.offset < end[tp]:
                    yield record
        moved = {tp: await client.position(tp) for tp in tps}
        if idle and moved != at:
            deadline = loop.time() + timeout_ms / 1000
        at = moved
    for tp in tps:
        client.seek(tp, end[tp])


class KeptReader:
    """A consumer kept between reads of the same partitions, for a reader that reads them again and
    again (the rollout controller each step, the registry's readers, the story's poll for labelled
    samples): each :meth:`read` returns the records from where the last one ended to the end offsets
    found now (:func:`read_to_end` with ``resume``), so each record is read once over the series. The
    first read, a read after one that failed and a read after :meth:`restart` start over, at
    ``since_ms`` (or the beginning): :attr:`resumed` says which one the last read was. The consumer has
    :data:`BACKGROUND_FETCH`'s limits and starts at the first read; :meth:`close` it when done."""

    def __init__(
        self,
        kafka: KafkaSettings,
        client_id: str,
        tps: Sequence[TopicPartition],
        *,
        timeout_ms: int,
    ) -> None:
        self._kafka = kafka
        self._client_id = client_id
        self._tps = list(tps)
        self._timeout_ms = timeout_ms
        self._client: AIOKafkaConsumer | None = None
        self._read_once = False
        self.resumed = False
        """Whether the last read went on from the one before (False: it started over)."""

    def restart(self) -> None:
        """The next read starts over."""
        self._read_once = False

    async def read(self, *, since_ms: int | None = None) -> list[ConsumerRecord[bytes, bytes]]:
        """The records since the last read, or (starting over) from ``since_ms`` or the beginning, up to
        the end offsets found now. Raises :class:`KafkaTimeout` as :func:`read_to_end`."""
        if self._client is None:
            self._client = await start_kept(background_consumer(self._kafka, self._client_id))
        resume, self._read_once = self._read_once, False  # a read that fails starts over next time
        records = [
            record
            async for record in read_to_end(
                self._client, self._tps, timeout_ms=self._timeout_ms, since_ms=since_ms, resume=resume
            )
        ]
        self._read_once, self.resumed = True, resume
        return records

    async def close(self) -> None:
        """Stop the consumer (a later read starts a new one, and starts over)."""
        client, self._client, self._read_once = self._client, None, False
        if client is not None:
            await client.stop()


async def read_all(
    kafka: KafkaSettings,
    tps: Sequence[TopicPartition],
    *,
    client_id: str,
    timeout_ms: int,
    what: str = "",
    since_ms: int | None = None,
    **options: Any,
) -> list[ConsumerRecord[bytes, bytes]]:
    """:func:`read_to_end` with a consumer of its own (no group; ``options`` as for :func:`consumer`),
    as a list."""
    async with started(consumer(kafka, client_id, **options)) as client:
        return [
            record
            async for record in read_to_end(client, tps, timeout_ms=timeout_ms, what=what, since_ms=since_ms)
        ]


async def _seek_start(
    client: AIOKafkaConsumer,
    tps: Sequence[TopicPartition],
    end: Mapping[TopicPartition, int],
    since_ms: int | None,
) -> None:
    """Each of ``tps`` to its beginning, or to its first record stamped at or after ``since_ms`` (its
    end offset when there is none)."""
    if since_ms is None:
        await client.seek_to_beginning(*tps)
        return
    found = await client.offsets_for_times(dict.fromkeys(tps, since_ms))
    for tp in tps:
        hit = found.get(tp)
        client.seek(tp, min(hit.offset, end[tp]) if hit is not None else end[tp])


def partitions(topics: Iterable[tuple[str, int]]) -> list[TopicPartition]:
    """Every partition of ``(topic, partition count)`` pairs, in order."""
    return [TopicPartition(topic, p) for topic, count in topics for p in range(count)]


async def consumer_lag(
    kafka: KafkaSettings, group_id: str, tps: Sequence[TopicPartition], *, client_id: str
) -> dict[TopicPartition, int]:
    """Records each partition holds past ``group_id``'s committed offset (read_committed: open
    transactions do not count). A partition the group never committed counts from its log start."""
    async with started(admin(kafka, client_id)) as client:
        committed = await _committed(client, group_id, tps)
    async with started(consumer(kafka, client_id)) as reader:
        ends = await reader.end_offsets(list(tps))
        starts = await reader.beginning_offsets(list(tps))
    lag: dict[TopicPartition, int] = {}
    for tp in tps:
        meta = committed.get(tp)
        position = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
        lag[tp] = max(0, ends[tp] - position)
    return lag


async def unstable_records(
    kafka: KafkaSettings, tps: Sequence[TopicPartition], *, client_id: str
) -> dict[TopicPartition, int]:
    """Per partition of ``tps`` that has any, the records past its last stable offset: an open
    transaction there holds every read_committed reader of the partition until it ends."""
    async with started(consumer(kafka, client_id, isolation_level="read_uncommitted")) as reader:
        high = await reader.end_offsets(list(tps))
    async with started(consumer(kafka, client_id)) as reader:
        stable = await reader.end_offsets(list(tps))
    return {tp: high[tp] - stable[tp] for tp in tps if high[tp] > stable[tp]}


async def _committed(
    client: AIOKafkaAdminClient, group_id: str, tps: Sequence[TopicPartition]
) -> dict[TopicPartition, Any]:
    attempt = 1
    while True:
        try:
            result: dict[TopicPartition, Any] = await client.list_consumer_group_offsets(
                group_id, partitions=list(tps)
            )
            return result
        except KafkaError as err:  # a fresh cluster makes __consumer_offsets on first use
            if not err.retriable or attempt >= LAG_RETRIES:
                raise
            log.debug("committed offsets of %s not readable yet: %s", group_id, err)
            attempt += 1
            await asyncio.sleep(LAG_BACKOFF_S)
