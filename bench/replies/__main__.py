"""``python -m bench.replies``: µs per reply, before (the result's bytes sent as they are) and after
sealing (``workers/edge/sealing.py``), with the reply key cached and not, and µs per reply a device
spends opening it (``open_reply``) against parsing a plain record. Prints JSON; a few seconds."""

from __future__ import annotations

import json
import os
import statistics
import timeit
from collections.abc import Callable
from typing import Final

from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.contract.reply import ReplyHeader, ReplyKey, open_reply, seal_reply
from edgestream.workers.edge.sealing import ReplySealer
from edgestream.workers.edge.sinks import Output

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
        "device_us_per_reply": {
            "parse_plain_before": round(_us(lambda: ResultRecord.from_bytes(result)), 2),
            "open_sealed": round(_us(lambda: open_reply(sealed, reply_key, REGION)), 2),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
