"""``python -m bench.wire``: µs of CPU to encode each request and decode each response of an edge
worker's steady traffic, with aiokafka's own struct codec and with the compiled one
(``pipeline/kafkawire.py``), side by side in one process.

The messages are the worker's at 1,000 req/s (``bench/pipeline``: units of about six records): a fetch
naming every partition of the region's two ingest topics and its response carrying a unit's records on
three of them; the fast replies' produce request (one partition's batch) and its response; a
transaction's produce of results and audit records on every partition, its AddPartitionsToTxn,
TxnOffsetCommit and EndTxn and their responses; the response header read before each response. Each
message is built once at the version aiokafka sends to a Kafka 4 broker (the newest it knows); a record
batch is opaque bytes to the struct codec, so its bytes are random, of a unit's size. Rounds alternate
the two codecs; reported: the median µs per message of each and their ratio, and the sum for one
unit's fetch cycle (fetch, replies produce, two response headers). No broker; a few seconds. Writes
``bench/results/wire.json`` and ``wire.png``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from aiokafka.protocol.api import ResponseHeader_v0
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.protocol.transaction import AddPartitionsToTxnRequest, EndTxnRequest, TxnOffsetCommitRequest

from bench import RESULTS_DIR
from edgestream.pipeline import kafkawire
from edgestream.topics.catalogue import audit_topic, ingest_topic, parse_topic, replies_topic, results_topic

REGION: Final = "eu-west"
RECORD_BYTES: Final = 1_000
"""A sealed envelope's size in a record batch (about the pipeline bench's frames and embeddings)."""
UNIT: Final = 6
"""Records a unit fetches (the pipeline bench's worker at 1,000 req/s)."""
CYCLE: Final = ("fetch_request", "fetch_response", "replies_request", "replies_response", "header", "header")
"""What one unit's fetch and fast replies encode and decode."""


def _partitions(topic: str) -> int:
    return parse_topic(topic).spec.partitions


def messages() -> dict[str, tuple[str, Any, type[Any]]]:
    """name -> (``encode`` or ``decode``, the struct (or its wire bytes to decode), its class)."""
    fetch = FetchRequest._CLASSES[-1]
    produce = ProduceRequest._CLASSES[-1]
    add = AddPartitionsToTxnRequest._CLASSES[-1]
    offsets = TxnOffsetCommitRequest._CLASSES[-1]
    end = EndTxnRequest._CLASSES[-1]
    ingest = [ingest_topic(REGION, kind) for kind in ("frame", "embedding")]
    outputs = [results_topic(REGION), audit_topic(REGION)]
    replies = replies_topic(REGION)
    txn, pid, epoch = f"edge-{REGION}-node-1", 4001, 3

    def batch(records: int) -> bytes:
        return os.urandom(61 + records * RECORD_BYTES)

    fetch_request = fetch(
        -1, 500, 1, 52_428_800, 1, 0, -1,
        [(t, [(p, -1, 10_000 + p, -1, 1_048_576) for p in range(_partitions(t))]) for t in ingest],
        [], "",
    )  # fmt: skip
    per_partition = UNIT // 3
    fetch_response = fetch.RESPONSE_TYPE(
        0, 0, 0,
        [
            (t, [(p, 0, 20_000, 20_000, 0, [], -1, batch(per_partition) if (i * 3 + p) % 2 == 0 else b"")
                 for p in range(_partitions(t))])
            for i, t in enumerate(ingest)
        ],
    )  # fmt: skip
    replies_request = produce(None, -1, 30_000, [(replies, [(1, batch(UNIT)[: 61 + UNIT * 300])])])
    replies_response = produce.RESPONSE_TYPE([(replies, [(1, 0, 55_000, -1, 0)])], 0)
    txn_request = produce(
        txn, -1, 30_000, [(t, [(p, batch(40)) for p in range(_partitions(t))]) for t in outputs]
    )
    txn_response = produce.RESPONSE_TYPE(
        [(t, [(p, 0, 9_000, -1, 0) for p in range(_partitions(t))]) for t in outputs], 0
    )
    add_request = add(txn, pid, epoch, [(t, list(range(_partitions(t)))) for t in outputs])
    add_response = add.RESPONSE_TYPE(0, [(t, [(p, 0) for p in range(_partitions(t))]) for t in outputs])
    offsets_request = offsets(
        txn, f"edge-{REGION}", pid, epoch, [(t, [(p, 20_000, "head") for p in range(3)]) for t in ingest]
    )
    offsets_response = offsets.RESPONSE_TYPE(0, [(t, [(p, 0) for p in range(3)]) for t in ingest])
    end_request = end(txn, pid, epoch, True)
    end_response = end.RESPONSE_TYPE(0, 0)
    found: dict[str, tuple[str, Any, type[Any]]] = {}
    requests = {
        "fetch_request": fetch_request, "replies_request": replies_request,
        "txn_produce_request": txn_request, "add_partitions_request": add_request,
        "txn_offset_commit_request": offsets_request, "end_txn_request": end_request,
    }  # fmt: skip
    for name, value in requests.items():
        found[name] = ("encode", value, type(value))
    responses = {
        "header": ResponseHeader_v0(7), "fetch_response": fetch_response,
        "replies_response": replies_response, "txn_produce_response": txn_response,
        "add_partitions_response": add_response, "txn_offset_commit_response": offsets_response,
        "end_txn_response": end_response,
    }  # fmt: skip
    for name, value in responses.items():
        kafkawire.uninstall()
        found[name] = ("decode", value.encode(), type(value))
    return found


def _call(how: str, value: Any, cls: type[Any]) -> Callable[[], object]:
    if how == "encode":
        return lambda: value.encode()  # looked up at each call: the codec in effect then
    return lambda: cls.decode(io.BytesIO(value))


def _round_us(call: Callable[[], object], number: int) -> float:
    started = time.process_time_ns()
    for _ in range(number):
        call()
    return (time.process_time_ns() - started) / 1000 / number


def measure(rounds: int, number: int) -> dict[str, dict[str, float]]:
    """Per message: the median µs per call with each codec over ``rounds`` alternating rounds."""
    found = messages()
    was = kafkawire.installed()
    results: dict[str, dict[str, float]] = {}
    try:
        for i, (name, (how, value, cls)) in enumerate(found.items()):
            times: dict[str, list[float]] = {"aiokafka": [], "compiled": []}
            call = _call(how, value, cls)
            for _ in range(rounds):
                for codec in ("aiokafka", "compiled"):
                    (kafkawire.install if codec == "compiled" else kafkawire.uninstall)()
                    call()  # warm: the compiled codec of the class is built on first use
                    times[codec].append(_round_us(call, number))
            aio, ours = statistics.median(times["aiokafka"]), statistics.median(times["compiled"])
            results[name] = {"aiokafka_us": aio, "compiled_us": ours, "ratio": aio / ours}
            step = f"[{i + 1}/{len(found)}]"
            print(f"  {step} {name:28s} aiokafka {aio:6.2f} µs  compiled {ours:6.2f} µs  {aio / ours:4.1f}x")
    finally:
        (kafkawire.install if was else kafkawire.uninstall)()
    return results


def plot(results: dict[str, dict[str, float]], path: Path) -> None:
    names = list(results)
    fig, ax = plt.subplots(figsize=(10, 5))
    ys = range(len(names))
    ax.barh([y + 0.2 for y in ys], [results[n]["aiokafka_us"] for n in names], 0.4, label="aiokafka's codec")
    ax.barh(
        [y - 0.2 for y in ys], [results[n]["compiled_us"] for n in names], 0.4, label="compiled (kafkawire)"
    )
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlabel("µs of CPU per message (median of alternating rounds)")
    ax.set_title("Encoding the edge worker's requests, decoding its responses")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds per message")
    parser.add_argument("--number", type=int, default=2_000, help="calls per round")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    print(f"bench.wire: {args.rounds} rounds of {args.number} calls per message and codec")
    results = measure(args.rounds, args.number)
    cycle = {codec: sum(results[name][f"{codec}_us"] for name in CYCLE) for codec in ("aiokafka", "compiled")}
    report = {
        "config": {"rounds": args.rounds, "number": args.number, "unit": UNIT, "record_bytes": RECORD_BYTES},
        "messages": results,
        "fetch_cycle_us": {**cycle, "ratio": cycle["aiokafka"] / cycle["compiled"], "parts": list(CYCLE)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wire.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.out / "wire.png")
    print(json.dumps(report["fetch_cycle_us"], indent=2))
    print(f"wrote {args.out / 'wire.json'} and wire.png")


if __name__ == "__main__":
    main()
