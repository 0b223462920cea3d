"""A fast reply that cannot be queued (no metadata, no buffer room during a broker restart) is counted
and dropped; the others go, and nothing is raised into the worker."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import KafkaTimeoutError

from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.replies import ReplySender
from edgestream.workers.edge.sinks import Output, PartitionWork


class _Producer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, topic: str, value: bytes, *, key: bytes | None) -> asyncio.Future[Any]:
        if value == b"stuck":
            raise KafkaTimeoutError("no metadata for the replies topic")
        self.sent.append(value)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None) if value != b"refused" else done.set_exception(KafkaTimeoutError("acks"))
        return done


async def test_a_reply_that_cannot_be_queued_is_counted_and_the_rest_go() -> None:
    sender = ReplySender(KafkaSettings(bootstrap_servers="127.0.0.1:1"), "n")
    await sender.producer.stop()  # never started: the fake below sends instead
    fake = _Producer()
    sender.producer = fake
    work = PartitionWork(
        replies=[Output("edge.r.replies", v, b"d") for v in (b"a", b"stuck", b"refused", b"b")]
    )
    await sender.send([work])
    await asyncio.sleep(0)  # acknowledgement callbacks
    assert fake.sent == [b"a", b"refused", b"b"]
    assert (sender.sent, sender.failed) == (3, 2)
