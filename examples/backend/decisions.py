"""Subscribe to a region's decisions as its backend, print each one, and label a few.

Connects to the local broker (``make demo`` or ``edgestream broker start``) as ``backend-<region>``,
whose certificate the development CA issues on first use, and reads ``edge.<region>.results`` and
``edge.<region>.dlq`` with :func:`edgestream.results.subscribe` in the consumer group
``edgestream-backend-<region>.<group>``. With ``--label-every N`` it writes the model's own answer back
as a ground-truth label for every N-th result (a stand-in for what a real backend learns later: a
chargeback, a review), which is how labels reach ``cloud.labels``.

    python examples/backend/decisions.py --region eu-west --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

from edgestream.pipeline import kafka
from edgestream.pipeline.contract.cloud import Label
from edgestream.pipeline.contract.envelope import format_request_id
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.security.identities import Identity
from edgestream.results import Decoded, subscribe
from edgestream.topics.catalogue import LABELS_TOPIC
from edgestream.workers.local.broker.process import local_kafka


def describe(decoded: Decoded) -> str:
    """One line per decision (or refusal)."""
    if isinstance(decoded, ResultRecord):
        top = max(decoded.scores, default=0.0)
        return (
            f"{format_request_id(decoded.request_id)} {decoded.device_id:>14} -> label {decoded.label} "
            f"(p={top:.2f}) by {decoded.model} v{decoded.model_version} in {decoded.total_ms:.1f} ms"
        )
    return f"refused {decoded.origin_position()}: {decoded.reason} at {decoded.stage}"


async def main(region: str, group: str, seconds: float, label_every: int) -> None:
    settings = local_kafka(Identity.backend(region))
    if settings is None:
        raise SystemExit("no local broker runs: start one with `make demo` or `edgestream broker start`")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if seconds > 0:
        loop.call_later(seconds, stop.set)
    seen = 0
    async with kafka.started(kafka.producer(settings, f"backend-{region}-{group}-labels")) as labels:

        async def handle(decoded: Decoded) -> None:
            nonlocal seen
            print(describe(decoded), flush=True)
            if isinstance(decoded, ResultRecord) and label_every > 0:
                seen += 1
                if seen % label_every == 0:
                    truth = Label(decoded.request_id, decoded.model, decoded.label, int(time.time() * 1000))
                    await labels.send_and_wait(LABELS_TOPIC, truth.to_bytes(), key=truth.request_id)

        stats = await subscribe(settings, region, group, handle, stop)
    print(f"handled {stats.handled}, duplicates dropped {stats.duplicates}, undecodable {stats.undecodable}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", default="eu-west")
    parser.add_argument("--group", default="decisions", help="the end of the consumer group's name")
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: on Ctrl-C)")
    parser.add_argument("--label-every", type=int, default=0, help="label every N-th result (0: none)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.region, args.group, args.seconds, args.label_every))
