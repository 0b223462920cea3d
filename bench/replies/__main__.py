"""``python -m bench.replies``: µs per reply, before (the result's bytes sent as they are) and after
sealing (``workers/edge/sealing.py``), with the reply key cached and not; µs of CPU per reply sent
by aiokafka's producer's ``send`` (how the worker sent them before 2026-12-08) and by the worker's own
``ReplySender``, queued and with their acknowledgement (``_queueing_us``; no broker: the clients are not
started, their metadata is set here and the broker's answer is played); and
µs per reply a device spends opening it (``open_reply``) against parsing a plain record. Prints JSON;
a few seconds."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import timeit
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, Final

from aiokafka.client import ConnectionGroup
from aiokafka.protocol.metadata import MetadataResponse_v0

from edgestream.pipeline import kafka
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.contract.reply import ReplyHeader, ReplyKey, open_reply, seal_reply
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.replies import ReplySender
from edgestream.workers.edge.sealing import ReplySealer
from edgestream.workers.edge.sinks import Output, PartitionWork

REGION: Final = "eu-west"
"""Region the replies are sealed for."""
REPEATS: Final = 7
"""Timing runs per case; the median is reported."""
NUMBER: Final = 20_000
"""Calls per timing run."""


def _us(call: Callable[[], object], number: int = NUMBER) -> float:
    """Median µs per call of ``call`` over ``REPEATS`` runs of ``number`` calls."""
    runs = timeit.repeat(call, number=number, repeat=REPEATS)
    return statistics.median(runs) / number * 1e6


UNIT: Final = 6
"""Replies queued per unit (the pipeline bench's units at 1,000 req/s hold about six records)."""
UNITS: Final = 2_000
"""Units per timing round of the queueing cases."""


class _OpenConnection:
    """An open connection, as the worker's client holds one to each broker it sends to."""

    def connected(self) -> bool:
        return True


class _AnsweringClient:
    """Plays ``client.send`` for ``ReplySender``: answers every partition of a request at once."""

    async def send(self, node_id: int, request: Any) -> Any:
        return SimpleNamespace(
            topics=[(topic, [(p, 0, 0, -1, 0) for p, _ in parts]) for topic, parts in request._topics]
        )


async def _queueing_us() -> dict[str, float]:
    """Median µs of process CPU per reply sent by aiokafka's producer (``send``: queued; ``send_acked``:
    with its batches taken and resolved as its sender task does once the broker answers, and the
    delivery callbacks run; the sender task's own wake-up and request are not counted) and by the
    worker's ``ReplySender`` (``reply_sender``: batches built and the request task started;
    ``reply_sender_acked``: with the task run and the answer read, the request's encoding and TLS
    left out as for ``send``), in alternating rounds, replies of 60 devices over 3 partitions."""
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1")
    topic = "edge.eu-west.replies"
    metadata = MetadataResponse_v0(
        [(0, "127.0.0.1", 1)], [(0, topic, [(0, p, 0, [0], [0]) for p in range(3)])]
    )
    producer = kafka.producer(settings, "bench-replies")
    producer.client.cluster.update_metadata(metadata)
    producer._txn_manager.set_pid_and_epoch(1, 0)  # what the started (idempotent) producer gets
    sender = ReplySender(settings, "bench")
    sender.client.cluster.update_metadata(metadata)
    sender.client.send = _AnsweringClient().send
    # As in the worker, its broker's connection is open (the sender bounds only a connect by the deadline).
    sender.client._conns[(0, ConnectionGroup.DEFAULT)] = _OpenConnection()
    devices = [f"sensor-{i:04d}".encode() for i in range(60)]
    replies = [Output(topic, os.urandom(180), devices[i % 60], ()) for i in range(UNIT)]
    accumulator = producer._message_accumulator
    delivered: list[object] = []

    async def by_send() -> None:
        for reply in replies:
            sent = await producer.send(reply.topic, reply.value, key=reply.key)
            sent.add_done_callback(delivered.append)

    async def by_send_acked() -> None:
        nodes, _ = accumulator.drain_by_nodes(ignore_nodes=set())
        for by_tp in nodes.values():
            for batch in by_tp.values():
                batch.done(base_offset=0)
        await asyncio.sleep(0)

    async def by_sender() -> None:
        await sender.send([PartitionWork(replies=replies)])

    async def by_sender_acked() -> None:
        await asyncio.gather(*sender._requests)

    timings: dict[str, list[float]] = {
        "send": [],
        "reply_sender": [],
        "send_acked": [],
        "reply_sender_acked": [],
    }
    cases = [("send", by_send, by_send_acked), ("reply_sender", by_sender, by_sender_acked)]
    for round_ in range(REPEATS * 2):
        for name, case, acknowledged in cases if round_ % 2 == 0 else cases[::-1]:
            spent = acked = 0.0
            for _ in range(UNITS):
                started = time.process_time()
                await case()
                queued = time.process_time()
                await acknowledged()
                spent += queued - started
                acked += time.process_time() - started
                delivered.clear()
            timings[name].append(spent / (UNITS * UNIT) * 1e6)
            timings[f"{name}_acked"].append(acked / (UNITS * UNIT) * 1e6)
    assert sender.failed == 0
    await producer.stop()
    sender.client._conns.clear()  # the open connection was played
    await sender.stop()
    return {name: round(statistics.median(runs), 2) for name, runs in timings.items()}


def main() -> None:
    """Time each case and print the results."""
    record = ResultRecord(
        os.urandom(16), "sensor-0042", "embedding-scorer", 3, 1, (0.125, 0.875), 0.5, 0.25, 3.0, 8,
        "eu-west-a", REGION, 1_700_000_000_500,
    )  # fmt: skip
    result = record.to_bytes()
    header = ReplyHeader(record.request_id, 7, record.model, record.model_version)
    device_key = os.urandom(32)
    outputs = [Output("edge.eu-west.results", result, b"sensor-0042", ())]
    sealer = ReplySealer(REGION)
    sealer.seal(result, device_key, header)  # warm: the device answered before
    reply_key = ReplyKey(device_key)
    sealed = seal_reply(result, reply_key, header, REGION)

    def plain() -> Output:  # what the worker did before: the result's bytes, on the replies topic
        found = next(o for o in reversed(outputs) if o.topic == "edge.eu-west.results")
        return Output("edge.eu-west.replies", found.value, found.key, found.headers)

    def cached() -> Output:
        found = next(o for o in reversed(outputs) if o.topic == "edge.eu-west.results")
        value = sealer.seal(found.value, device_key, header)
        return Output("edge.eu-west.replies", value, found.key, found.headers)

    cold = ReplySealer(REGION, cache_entries=1)
    keys = [os.urandom(32) for _ in range(2)]
    turn = iter(range(10**9))

    def missed() -> bytes:  # two devices alternating through a one-key cache: a derivation each
        return cold.seal(result, keys[next(turn) % 2], header)

    report = {
        "reply_bytes": {"plain": len(result), "sealed": len(sealed)},
        "worker_us_per_reply": {
            "plain_before": round(_us(plain), 2),
            "sealed_key_cached": round(_us(cached), 2),
            "sealed_key_derived": round(_us(missed, NUMBER // 4), 2),
        },
        "worker_us_per_reply_queued": asyncio.run(_queueing_us()),
        "device_us_per_reply": {
            "parse_plain_before": round(_us(lambda: ResultRecord.from_bytes(result)), 2),
            "open_sealed": round(_us(lambda: open_reply(sealed, reply_key, REGION)), 2),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
