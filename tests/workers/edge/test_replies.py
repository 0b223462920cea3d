"""Fast replies are sent by the worker itself: a unit's replies as one batch per partition (the partition
the producers' partitioner picks, in the order given, keys, values and headers as they are), one produce
request per leader, not awaited, so a unit never waits for an earlier one's acknowledgement. A
partition refused for a reason that may pass is sent again (to its new leader) until the replies'
deadline; a reply that cannot be sent (no metadata, too large, refused for good or for too long) is
counted and dropped: the others go, and nothing is raised into the worker.

No broker: the client is never bootstrapped, its metadata is set here, and ``client.send`` is played by
the tests (they read the request's batches and answer per partition). The real broker's replies are
checked through the worker (``test_worker.py``) and the fault suite."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import errors as Errors
from aiokafka.protocol.metadata import MetadataResponse_v0
from aiokafka.record.memory_records import MemoryRecords

from edgestream.pipeline.contract.limits import PRODUCER_MAX_REQUEST_BYTES
from edgestream.pipeline.contract.partitioner import partition_for
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.replies import ALONE_BYTES, BATCH_BYTES, ReplySender
from edgestream.workers.edge.sinks import Output, PartitionWork

TOPIC = "edge.r.replies"
PARTITIONS = 3
NOT_LEADER = 6  # retriable, stale metadata
MESSAGE_TOO_LARGE = 10  # not retriable

Record = tuple[int, bytes | None, bytes, list[tuple[str, bytes]]]
"""A record as the broker would store it: partition, key, value, headers."""


def _metadata(
    sender: ReplySender, leaders: dict[int, int] | None = None, partitions: int = PARTITIONS
) -> None:
    """Set the topic's metadata: partition -> leader (node 0 leads every partition unless told)."""
    leaders = leaders or {}
    sender.client.cluster.update_metadata(
        MetadataResponse_v0(
            [(0, "127.0.0.1", 1), (1, "127.0.0.1", 2)],
            [(0, TOPIC, [(0, p, leaders.get(p, 0), [0], [0]) for p in range(partitions)])],
        )
    )


class _Broker:
    """Plays ``client.send``: keeps each request's records, answers per partition with ``answer``
    (partition, attempt of that partition -> error code), after ``gate`` is set where one is given."""

    def __init__(self, answer: Callable[[int, int], int] | None = None) -> None:
        self.answer = answer or (lambda partition, attempt: 0)
        self.requests: list[tuple[int, list[Record]]] = []
        self.stored: list[Record] = []
        self.attempts: dict[int, int] = {}
        self.gate: asyncio.Event | None = None
        self.in_flight = 0
        self.most_in_flight = 0

    async def send(self, node_id: int, request: Any) -> Any:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            records: list[Record] = []
            answers = []
            for topic, partitions in request._topics:  # aiokafka's ProduceRequest, before it is built
                assert topic == TOPIC
                answered = []
                for partition, data in partitions:
                    memory = MemoryRecords(bytes(data))
                    batch = memory.next_batch()
                    assert batch is not None
                    assert memory.next_batch() is None, "one batch a partition"
                    got = [(partition, r.key, r.value, list(r.headers)) for r in batch]
                    records.extend(got)
                    attempt = self.attempts[partition] = self.attempts.get(partition, 0) + 1
                    code = self.answer(partition, attempt)
                    if code == 0:
                        self.stored.extend(got)
                    answered.append((partition, code, 0, -1, 0))
                answers.append((topic, answered))
            self.requests.append((node_id, records))
            return _Response(answers)
        finally:
            self.in_flight -= 1


class _Response:
    API_VERSION = 7

    def __init__(self, topics: list[Any]) -> None:
        self.topics = topics


def _sender(broker: _Broker, *, timeout_ms: int = 30_000, **limits: int) -> ReplySender:
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1", request_timeout_ms=timeout_ms)
    sender = ReplySender(settings, "n", retry_backoff_s=0.01, **limits)
    _metadata(sender)
    sender.client.send = broker.send
    return sender


async def _settled(sender: ReplySender) -> None:
    """Until no request of ``sender`` is in flight and none waits (retries included)."""
    for _ in range(1000):
        if not sender._requests and not sender._waiting:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("requests still in flight")


def _by_partition(records: list[Record]) -> dict[int, list[Record]]:
    parts: dict[int, list[Record]] = {}
    for record in records:
        parts.setdefault(record[0], []).append(record)
    return parts


@pytest.fixture
def replies() -> list[Output]:
    traced = (("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"),)
    return [
        Output(TOPIC, f"reply-{i}".encode(), f"device-{i % 7}".encode(), traced if i % 3 == 0 else ())
        for i in range(20)
    ]


async def test_a_units_replies_go_in_one_request_to_the_partitioners_partitions_in_order(
    replies: list[Output],
) -> None:
    broker = _Broker()
    sender = _sender(broker)
    await sender.send([PartitionWork(replies=replies[:12]), PartitionWork(replies=replies[12:])])
    await _settled(sender)
    assert len(broker.requests) == 1, "one leader: one request"
    expected = [(partition_for(r.key or b"", PARTITIONS), r.key, r.value, list(r.headers)) for r in replies]
    assert _by_partition(broker.stored) == _by_partition(expected), "each partition's replies in order"
    assert len({p for p, *_ in broker.stored}) > 1
    assert (sender.sent, sender.failed) == (20, 0)
    await sender.stop()


async def test_a_topic_given_more_partitions_is_sent_to_as_its_keys_map_then(replies: list[Output]) -> None:
    broker = _Broker()
    sender = _sender(broker)
    await sender.send([PartitionWork(replies=replies)])
    _metadata(sender, partitions=7)  # an operator added partitions; the client's metadata has them
    await sender.send([PartitionWork(replies=replies)])
    await _settled(sender)
    first, second = broker.stored[: len(replies)], broker.stored[len(replies) :]
    assert sorted(p for p, *_ in first) == sorted(partition_for(r.key or b"", PARTITIONS) for r in replies)
    assert sorted(p for p, *_ in second) == sorted(partition_for(r.key or b"", 7) for r in replies)
    assert max(p for p, *_ in second) >= PARTITIONS
    await sender.stop()


async def test_each_leader_gets_its_own_request(replies: list[Output]) -> None:
    broker = _Broker()
    sender = _sender(broker)
    _metadata(sender, {2: 1})  # node 1 leads partition 2
    await sender.send([PartitionWork(replies=replies)])
    await _settled(sender)
    by_node = {node: {p for p, *_ in records} for node, records in broker.requests}
    assert by_node == {0: {0, 1}, 1: {2}}
    assert sorted(broker.stored) == sorted(
        (partition_for(r.key or b"", PARTITIONS), r.key, r.value, list(r.headers)) for r in replies
    )
    await sender.stop()


async def test_a_unit_does_not_wait_for_an_earlier_units_acknowledgement(replies: list[Output]) -> None:
    broker = _Broker()
    broker.gate = asyncio.Event()  # the broker answers nothing yet
    sender = _sender(broker)
    await asyncio.wait_for(sender.send([PartitionWork(replies=replies[:10])]), 1)
    await asyncio.wait_for(sender.send([PartitionWork(replies=replies[10:])]), 1)
    await asyncio.sleep(0.01)
    assert broker.in_flight == 2, "the second unit's request left before the first was answered"
    broker.gate.set()
    await _settled(sender)
    assert len(broker.stored) == 20
    assert sender.failed == 0
    await sender.stop()


async def test_past_the_most_requests_to_a_broker_its_batches_wait_and_the_unit_does_not(
    replies: list[Output],
) -> None:
    broker = _Broker()
    broker.gate = asyncio.Event()
    sender = _sender(broker, max_requests_per_node=2)
    for unit in (replies[:5], replies[5:10], replies[10:]):
        await asyncio.wait_for(sender.send([PartitionWork(replies=unit)]), 0.5)  # never waits for room
    await asyncio.sleep(0.05)
    assert broker.in_flight == 2, "the third unit's batches wait for room"
    assert sender._waiting
    broker.gate.set()
    await _settled(sender)
    assert broker.most_in_flight == 2
    assert sorted(broker.stored) == sorted(
        (partition_for(r.key or b"", PARTITIONS), r.key, r.value, list(r.headers)) for r in replies
    )
    assert (sender.sent, sender.failed) == (20, 0)
    await sender.stop()


async def test_a_partition_refused_for_good_counts_its_replies_and_the_others_land(
    replies: list[Output],
) -> None:
    broker = _Broker(lambda partition, attempt: MESSAGE_TOO_LARGE if partition == 1 else 0)
    sender = _sender(broker)
    await sender.send([PartitionWork(replies=replies)])
    await _settled(sender)
    refused = sum(1 for r in replies if partition_for(r.key or b"", PARTITIONS) == 1)
    assert refused > 0
    assert (sender.sent, sender.failed) == (20, refused)
    assert len(broker.stored) == 20 - refused
    assert len(broker.requests) == 1, "not sent again"
    await sender.stop()


async def test_a_partition_whose_leader_moved_is_sent_again_to_its_new_leader(replies: list[Output]) -> None:
    broker = _Broker(lambda partition, attempt: NOT_LEADER if partition == 1 and attempt == 1 else 0)
    sender = _sender(broker)
    refreshed: list[bool] = []

    def force_metadata_update() -> Any:
        refreshed.append(True)
        _metadata(sender, {1: 1})  # what the refreshed metadata says: node 1 leads partition 1 now
        return asyncio.get_running_loop().create_future()

    sender.client.force_metadata_update = force_metadata_update
    await sender.send([PartitionWork(replies=replies)])
    await _settled(sender)
    assert refreshed
    assert [node for node, _ in broker.requests] == [0, 1]
    assert {p for p, *_ in broker.requests[1][1]} == {1}, "only the refused partition goes again"
    assert sorted(broker.stored) == sorted(
        (partition_for(r.key or b"", PARTITIONS), r.key, r.value, list(r.headers)) for r in replies
    )
    assert sender.failed == 0
    await sender.stop()


async def test_a_lost_connection_is_tried_again_until_the_deadline_then_counted(
    replies: list[Output],
) -> None:
    attempts: list[float] = []

    async def unreachable(node_id: int, request: Any) -> Any:
        attempts.append(asyncio.get_running_loop().time())
        raise Errors.KafkaConnectionError("no route")

    sender = _sender(_Broker(), timeout_ms=200)
    sender.client.send = unreachable
    sender.client.force_metadata_update = lambda: None
    await sender.send([PartitionWork(replies=replies)])
    await _settled(sender)
    assert len(attempts) > 3, "tried again"
    assert attempts[-1] - attempts[0] < 0.3, "not past the deadline"
    assert (sender.sent, sender.failed) == (20, 20)
    await sender.stop()


async def test_an_unexpected_client_error_counts_the_requests_replies_and_the_next_unit_goes(
    replies: list[Output],
) -> None:
    broker = _Broker()
    calls: list[int] = []

    async def failing_once(node_id: int, request: Any) -> Any:
        calls.append(node_id)
        if len(calls) == 1:
            raise RuntimeError("a bug in the client")
        return await broker.send(node_id, request)

    sender = _sender(broker)
    sender.client.send = failing_once
    await sender.send([PartitionWork(replies=replies[:10])])
    await _settled(sender)
    assert (sender.sent, sender.failed) == (10, 10), "counted, not retried, nothing raised"
    await sender.send([PartitionWork(replies=replies[10:])])
    await _settled(sender)
    assert len(broker.stored) == 10
    assert sender.failed == 10
    await sender.stop()


async def test_a_reply_too_large_for_a_request_is_counted_and_a_large_one_goes_alone() -> None:
    broker = _Broker()
    sender = _sender(broker)
    too_large = b"x" * (PRODUCER_MAX_REQUEST_BYTES + 1)
    large = b"y" * (ALONE_BYTES + 1)
    values = [b"a", too_large, large, b"b"]
    await sender.send([PartitionWork(replies=[Output(TOPIC, v, b"d") for v in values])])
    await _settled(sender)
    assert sorted([value for _, _, value, _ in records] for _, records in broker.requests) == sorted(
        [[large], [b"a", b"b"]]
    ), "the large one in a batch (and a request) of its own"
    assert (sender.sent, sender.failed) == (3, 1)
    await sender.stop()


async def test_more_replies_to_a_partition_than_a_batch_holds_go_in_order_in_several_requests() -> None:
    broker = _Broker()
    sender = _sender(broker)
    value_bytes = 1000
    count = 2 * BATCH_BYTES // value_bytes + 10
    one_device = [Output(TOPIC, i.to_bytes(4, "big") * (value_bytes // 4), b"device-1") for i in range(count)]
    await sender.send([PartitionWork(replies=one_device)])
    await _settled(sender)
    assert len(broker.requests) >= 3, "a produce request carries one batch per partition"
    assert [value for _, _, value, _ in broker.stored] == [o.value for o in one_device]
    assert (sender.sent, sender.failed) == (count, 0)
    await sender.stop()


async def test_a_reply_whose_topic_has_no_metadata_is_counted_and_not_sent() -> None:
    broker = _Broker()
    sender = _sender(broker)
    waited: list[str] = []

    async def wait_on_metadata(topic: str) -> set[int]:
        waited.append(topic)
        raise Errors.KafkaTimeoutError(f"no metadata for {topic}")

    sender.client._wait_on_metadata = wait_on_metadata
    await sender.send([PartitionWork(replies=[Output("edge.other.replies", b"a", b"d")])])
    await _settled(sender)
    assert waited == ["edge.other.replies"]
    assert broker.requests == []
    assert (sender.sent, sender.failed) == (0, 1)
    await sender.stop()


async def test_stopping_waits_for_the_requests_in_flight(replies: list[Output]) -> None:
    broker = _Broker()
    broker.gate = asyncio.Event()
    sender = _sender(broker)
    await sender.send([PartitionWork(replies=replies)])
    stopping = asyncio.ensure_future(sender.stop())
    await asyncio.sleep(0.02)
    assert not stopping.done(), "stop waits for the answer"
    broker.gate.set()
    await asyncio.wait_for(stopping, 1)
    assert len(broker.stored) == 20
    assert sender.failed == 0


async def test_stopping_counts_what_is_still_unanswered_at_the_deadline(replies: list[Output]) -> None:
    broker = _Broker()
    broker.gate = asyncio.Event()  # never set: the broker never answers
    sender = _sender(broker, timeout_ms=100)
    await sender.send([PartitionWork(replies=replies)])
    await asyncio.wait_for(sender.stop(), 2)
    assert broker.stored == []
    assert (sender.sent, sender.failed) == (20, 20)


async def test_a_broker_that_never_answers_costs_only_its_replies_and_only_until_their_deadline(
    replies: list[Output],
) -> None:
    """A host that drops packets: the client's connect (or the answer) never comes. Each request ends at
    its replies' deadline, later units' batches to that broker wait past the most in flight and are
    counted at theirs, and a unit never waits; the other broker's replies land."""
    broker = _Broker()
    hung: list[int] = []

    async def node_1_hangs(node_id: int, request: Any) -> Any:
        if node_id == 1:
            hung.append(node_id)
            await asyncio.Event().wait()
        return await broker.send(node_id, request)

    sender = _sender(broker, timeout_ms=200, max_requests_per_node=2)
    sender.client.send = node_1_hangs
    sender.client.force_metadata_update = lambda: None
    _metadata(sender, {1: 1})  # node 1 leads partition 1
    loop = asyncio.get_running_loop()
    started_s = loop.time()
    for i in range(0, 20, 4):
        await asyncio.wait_for(sender.send([PartitionWork(replies=replies[i : i + 4])]), 0.05)
    await _settled(sender)
    assert loop.time() - started_s < 0.6, "every reply settled by its deadline (0.2 s), not one after another"
    to_node_1 = sum(1 for r in replies if partition_for(r.key or b"", PARTITIONS) == 1)
    assert 0 < len(hung) <= 4, "at most two requests at a time to the broker that hangs, tried again"
    assert (sender.sent, sender.failed) == (20, to_node_1)
    assert len(broker.stored) == 20 - to_node_1
    await sender.stop()


async def test_a_partition_without_a_leader_holds_only_its_own_replies_until_it_has_one(
    replies: list[Output],
) -> None:
    broker = _Broker()
    refreshes: list[bool] = []
    sender = _sender(broker, max_requests_per_node=1)
    sender.client.force_metadata_update = lambda: refreshes.append(True)
    _metadata(sender, {1: -1})  # partition 1: no leader (an election)
    for i in range(0, 20, 2):
        await asyncio.wait_for(sender.send([PartitionWork(replies=replies[i : i + 2])]), 0.05)
    await asyncio.sleep(0.05)
    to_1 = [r for r in replies if partition_for(r.key or b"", PARTITIONS) == 1]
    assert len(broker.stored) == 20 - len(to_1), "the other partitions' replies went meanwhile"
    assert refreshes, "the metadata is asked for again"
    _metadata(sender)  # node 0 leads partition 1 now
    await _settled(sender)
    assert sorted(broker.stored) == sorted(
        (partition_for(r.key or b"", PARTITIONS), r.key, r.value, list(r.headers)) for r in replies
    )
    assert (sender.sent, sender.failed) == (20, 0)
    await sender.stop()


async def test_past_the_most_bytes_waiting_a_batch_is_counted_not_held(replies: list[Output]) -> None:
    broker = _Broker()
    sender = _sender(broker, max_waiting_bytes=1)  # no batch fits: none may wait
    sender.client.force_metadata_update = lambda: None
    _metadata(sender, {0: -1, 1: -1, 2: -1})
    await sender.send([PartitionWork(replies=replies)])
    assert not sender._waiting
    assert (sender.sent, sender.failed) == (20, 20)
    await sender.stop()


async def test_stopping_counts_a_request_cancelled_before_it_started_and_the_batches_waiting(
    replies: list[Output],
) -> None:
    broker = _Broker()
    sender = _sender(broker, timeout_ms=100)
    sender.client.force_metadata_update = lambda: None
    _metadata(sender, {1: -1, 2: -1})  # partitions 1 and 2 wait; partition 0's request is started
    await sender.send([PartitionWork(replies=replies)])
    assert sender._requests
    assert sender._waiting
    started = list(sender._requests)
    for task in started:
        task.cancel()  # as stop() would, before the request's first step
    await asyncio.gather(*started, return_exceptions=True)
    to_0 = sum(1 for r in replies if partition_for(r.key or b"", PARTITIONS) == 0)
    assert sender.failed == to_0, "a request cancelled before it started counts its replies"
    await asyncio.wait_for(sender.stop(), 1)
    assert broker.stored == []
    assert (sender.sent, sender.failed) == (20, 20)
    assert not sender._requests
    assert not sender._waiting


async def test_replies_sent_once_stopped_are_counted_and_not_sent(replies: list[Output]) -> None:
    broker = _Broker()
    sender = _sender(broker)
    await sender.stop()
    await sender.send([PartitionWork(replies=replies)])
    assert broker.requests == []
    assert (sender.sent, sender.failed) == (0, 20)


async def test_batches_waiting_for_room_go_as_soon_as_a_request_ends_not_at_the_next_backoff(
    replies: list[Output],
) -> None:
    """A draining worker sends faster than its broker answers: what waits for room goes as requests end
    (here the backoff is 10 s, so nothing could go by it)."""
    broker = _Broker()
    broker.gate = asyncio.Event()
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1")
    sender = ReplySender(settings, "n", retry_backoff_s=10.0, max_requests_per_node=2)
    _metadata(sender)
    sender.client.send = broker.send
    for i in range(10):
        await sender.send([PartitionWork(replies=replies[2 * i : 2 * i + 2])])
    assert sender._waiting
    await asyncio.sleep(0.01)
    assert broker.in_flight == 2
    broker.gate.set()
    for _ in range(200):
        if not sender._requests and not sender._waiting:
            break
        await asyncio.sleep(0.005)
    assert len(broker.stored) == 20, "every waiting batch went within a second"
    assert broker.most_in_flight == 2
    assert (sender.sent, sender.failed) == (20, 0)
    await sender.stop()
