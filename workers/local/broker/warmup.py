"""Throwaway traffic that warms a freshly started broker up before measured traffic reaches it.

A broker JVM that has just started interprets the code of its produce, fetch and transaction paths and
compiles it only once that code runs hot; until then each request costs it several times its usual
CPU. On the demo's 2-core box that made the first seconds of the devices' traffic the slowest of the
run (the broker at 0.8-1.0 cores for ~3 s against ~0.5 after, and most of the requests over 35 ms in
those seconds). :func:`warm_broker` runs, for a few seconds, the same kinds of requests the edge path
makes, on two scratch topics of its own, then deletes them: devices' idempotent produces, a worker's
``read_committed`` fetches, its fast replies, its transactions (produce, ``AddOffsetsToTxn``,
``TxnOffsetCommit``, ``EndTxn`` and the broker's markers) and the devices' reads of the replies. Nothing
of it touches a catalogue topic, a group or an ACL of the pipeline's, so nothing any part counts sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiokafka import TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError, for_code

from edgestream.pipeline import kafka
from edgestream.pipeline.errors import BrokerError

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from edgestream.pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

REQUESTS_TOPIC: Final = "edgestream-warmup.requests"
"""Scratch topic the warm-up's devices write (outside the catalogue; deleted after each warm-up)."""
REPLIES_TOPIC: Final = "edgestream-warmup.replies"
"""Scratch topic the warm-up's relay answers on."""
PARTITIONS: Final = 3
"""Partitions of each scratch topic (as the catalogue's region topics)."""
GROUP: Final = "edgestream-warmup"
"""The group the relay's transactions commit offsets for (never joined: no rebalance to wait for)."""
TICK_S: Final = 0.01
"""The warm-up's devices send every 10 ms."""
COMMIT_INTERVAL_S: Final = 0.1
"""The relay commits a transaction at most every 100 ms, as an edge worker does by default."""


SENDER_LOG: Final = "aiokafka.producer.sender"
"""aiokafka's producer sender, which logs every retried produce as a warning."""


class ScratchRetries(logging.Filter):
    """Drops the sender's warnings about retried produces to the warm-up's scratch topics. The relay's
    next transaction races the markers of its last one there, and Kafka 4's transaction verification
    answers that race with NOT_ENOUGH_REPLICAS, which the producer retries at once: expected, harmless,
    and a dozen WARNING lines on the demo's console before its first device. Any other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Got error produce response") and "edgestream-warmup." in message)


@dataclass(frozen=True, slots=True)
class WarmupReport:
    """What a warm-up did."""

    sent: int
    """Requests the warm-up's devices produced."""
    relayed: int
    """Of them, read back ``read_committed`` and answered by the relay."""
    replies_read: int
    """Fast replies read back from the replies topic."""
    transactions: int
    """Transactions the relay committed."""
    seconds: float
    """How long it took, topics made and deleted included."""


async def warm_broker(
    connection: KafkaSettings,
    *,
    seconds: float,
    rate_per_s: float,
    record_bytes: int = 1024,
    catch_up_s: float = 5.0,
) -> WarmupReport:
    """Send ``rate_per_s`` records of ``record_bytes`` for ``seconds`` through a relay that answers each
    as an edge worker does (a fast reply, then a transaction of a copy and the offsets), read the
    replies back, then delete the scratch topics. ``connection`` must be allowed to create and delete
    topics and to use a transactional id (the cluster's admin). Ends at the latest ``catch_up_s`` after
    the ``seconds`` of sending, whatever the broker does (what was not relayed by then is logged).
    Raises ``BrokerError`` when the topics cannot be made, the client's ``KafkaError`` when the traffic
    fails; the topics are deleted either way."""
    started = time.monotonic()
    quiet, sender = ScratchRetries(), logging.getLogger(SENDER_LOG)
    sender.addFilter(quiet)
    try:
        await _create_topics(connection)
        try:
            counts = await _traffic(connection, seconds, rate_per_s, record_bytes, catch_up_s)
        finally:
            await _delete_topics(connection)
    finally:
        sender.removeFilter(quiet)
    report = WarmupReport(*counts, seconds=round(time.monotonic() - started, 3))
    log.info("broker warm-up: %s", report)
    return report


async def _create_topics(connection: KafkaSettings) -> None:
    """Create the scratch topics (an existing one, left by an interrupted warm-up, is reused)."""
    async with kafka.started(kafka.admin(connection, "edgestream-warmup-admin")) as admin:
        response = await admin.create_topics(
            [NewTopic(name, PARTITIONS, 1) for name in (REQUESTS_TOPIC, REPLIES_TOPIC)],
            timeout_ms=connection.request_timeout_ms,
        )
    for entry in response.to_object()["topic_errors"]:
        code = entry["error_code"]
        if code not in (0, TopicAlreadyExistsError.errno):
            raise BrokerError(f"warm-up topic {entry['topic']}: {for_code(code).__name__}")


async def _delete_topics(connection: KafkaSettings) -> None:
    """Delete the scratch topics; a failure is logged (they are outside the catalogue and small)."""
    try:
        async with kafka.started(kafka.admin(connection, "edgestream-warmup-admin")) as admin:
            response = await admin.delete_topics(
                [REQUESTS_TOPIC, REPLIES_TOPIC], timeout_ms=connection.request_timeout_ms
            )
        codes = [e["error_code"] for e in response.to_object()["topic_error_codes"]]
        failed = [c for c in codes if c not in (0, UnknownTopicOrPartitionError.errno)]
        if failed:
            log.warning("warm-up topics not deleted: %s", [for_code(c).__name__ for c in failed])
    except (KafkaError, OSError) as err:
        log.warning("warm-up topics not deleted: %s", err)


async def _traffic(
    connection: KafkaSettings, seconds: float, rate_per_s: float, record_bytes: int, catch_up_s: float
) -> tuple[int, int, int, int]:
    """(sent, relayed, replies read, transactions)."""
    requests = [TopicPartition(REQUESTS_TOPIC, p) for p in range(PARTITIONS)]
    replies = [TopicPartition(REPLIES_TOPIC, p) for p in range(PARTITIONS)]
    device = kafka.producer(connection, "edgestream-warmup-device")
    answers = kafka.producer(connection, "edgestream-warmup-fast-reply")
    txn = kafka.producer(connection, "edgestream-warmup-relay", transactional_id=GROUP, retry_backoff_ms=5)
    ingest = kafka.consumer(connection, "edgestream-warmup-relay", auto_offset_reset="earliest")
    reader = kafka.consumer(
        connection,
        "edgestream-warmup-reader",
        isolation_level="read_uncommitted",
        auto_offset_reset="earliest",
    )
    async with contextlib.AsyncExitStack() as stack:
        for client in (device, answers, txn, ingest, reader):
            await stack.enter_async_context(kafka.started(client))
        ingest.assign(requests)
        reader.assign(replies)
        relay = _Relay(ingest, answers, txn)
        sent = [0]
        sending = asyncio.create_task(_send(device, seconds, rate_per_s, record_bytes, sent))
        # However the broker answers, the warm-up ends by then (a send that cannot complete is cancelled).
        give_up = time.monotonic() + seconds + catch_up_s
        try:
            replies_read = 0
            while True:
                await relay.step()
                replies_read += sum(len(b) for b in (await reader.getmany(timeout_ms=0)).values())
                if sending.done() and relay.relayed >= sent[0]:
                    break
                if time.monotonic() > give_up:
                    log.warning("broker warm-up: %d of %d records relayed in time", relay.relayed, sent[0])
                    break
            if sending.done():
                sending.result()  # its error, if it failed
            await relay.commit()
        finally:
            if not sending.done():
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sending
    return sent[0], relay.relayed, replies_read, relay.transactions


async def _send(
    device: AIOKafkaProducer, seconds: float, rate_per_s: float, record_bytes: int, sent: list[int]
) -> None:
    """Produce at ``rate_per_s`` for ``seconds`` (keyed over 60 'devices'), each tick what the elapsed
    time owes; ``sent[0]`` counts the acknowledged ones."""
    payload = os.urandom(record_bytes)
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        owed = int(rate_per_s * elapsed) - sent[0]
        batch = [
            await device.send(REQUESTS_TOPIC, payload, key=b"d%d" % ((sent[0] + i) % 60)) for i in range(owed)
        ]
        await asyncio.gather(*batch)
        sent[0] += len(batch)
        await asyncio.sleep(TICK_S)


class _Relay:
    """An edge worker's requests without its work: read committed, reply at once, commit in a
    transaction of a copy of the reply and the offsets at most every ``COMMIT_INTERVAL_S``."""

    def __init__(self, ingest: AIOKafkaConsumer, answers: AIOKafkaProducer, txn: AIOKafkaProducer) -> None:
        self._ingest, self._answers, self._txn = ingest, answers, txn
        self._pending: dict[TopicPartition, int] = {}
        self._values: list[tuple[bytes | None, bytes]] = []
        self._last_commit = time.monotonic()
        self.relayed = 0
        self.transactions = 0

    async def step(self) -> None:
        """One fetch (waits at most 50 ms), its fast replies, and a commit when one is due."""
        fetched = await self._ingest.getmany(timeout_ms=50)
        for tp, records in fetched.items():
            for record in records:
                await self._answers.send(REPLIES_TOPIC, record.value, key=record.key)
                self._values.append((record.key, record.value or b""))
            if records:
                self._pending[tp] = records[-1].offset + 1
                self.relayed += len(records)
        if time.monotonic() - self._last_commit >= COMMIT_INTERVAL_S:
            await self.commit()

    async def commit(self) -> None:
        """The transaction of the copies and the offsets read since the last one (none: nothing)."""
        self._last_commit = time.monotonic()
        if not self._pending:
            return
        async with self._txn.transaction():
            for key, value in self._values:
                await self._txn.send(REPLIES_TOPIC, value, key=key)
            await self._txn.send_offsets_to_transaction(dict(self._pending), GROUP)
        self._pending.clear()
        self._values.clear()
        self.transactions += 1
