"""``python -m bench.device``: what the device SDK costs (``edgestream.device``), on the loopback
transport (no network, no Kafka), CPU time measured with ``time.process_time`` side by side in one run.

* ``fallback_run_us``: one run of the tiny fallback model (onnxruntime, one thread).
* ``edge_call_cpu_us``: one ``infer`` answered by the edge, the whole process's CPU: sealing, the
  loopback's own work (opening the envelope, sealing the reply), opening the reply, the bookkeeping;
  ``loopback_cpu_us`` is the loopback's part alone, ``sdk_cpu_us`` the difference (the SDK's).
* ``unavailable_call_cpu_us``: one ``infer`` with no session (the fallback answers at once).
* ``deadline_fallback_ms``: ``infer`` with a 20 ms deadline and an edge that never answers: when the
  fallback's answer came (p50, p99, max; the fallback starts ``fallback_reserve_ms`` before the
  deadline). ``loop_lateness_ms``: how late a bare ``asyncio.sleep(0.01)`` wakes in the same run,
  what a busy machine adds to any deadline.
Prints JSON and writes ``bench/results/device.json``; about half a minute (mostly building the model).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgestream.device.answers import ClientSettings
from edgestream.device.client import EdgeClient
from edgestream.device.identity import DeviceIdentity, RegionKey
from edgestream.device.loopback import LoopbackGateway, LoopbackTransport
from edgestream.pipeline.models import ModelStore, load_dataset
from edgestream.pipeline.registry import Manifest, ModelState, SigningKey, TrustedKeys, publish
from edgestream.pipeline.registry.devicecatalogue import build_catalogue, sign_catalogue

FAMILY: Final = "embedding-scorer"
CALLS: Final = 2000
"""Calls per CPU measurement."""
DEADLINE_CALLS: Final = 100
"""Calls with a deadline that passes."""
OUT: Final = Path(__file__).resolve().parents[1] / "results" / "device.json"


def _gateway(home: Path) -> tuple[LoopbackGateway, TrustedKeys]:
    tiny = ModelStore(home / "models").get(FAMILY, "tiny")
    data = tiny.path.read_bytes()
    key = SigningKey.generate()
    state = publish(
        ModelState(FAMILY),
        key.sign(Manifest(FAMILY, 1, "tiny", tiny.sha256, len(data), "float16", (30,))),
        now_ms=1,
    )
    now_ms = int(time.time() * 1000)
    catalogue = sign_catalogue(key, build_catalogue({FAMILY: state}, now_ms=now_ms - 1000, ttl_ms=3_600_000))
    gateway = LoopbackGateway("eu-west", os.urandom(32), catalogue, {tiny.sha256: data})
    return gateway, TrustedKeys().with_key(key.public_raw)


async def _client(
    gateway: LoopbackGateway, trusted: TrustedKeys, home: Path, **settings: Any
) -> tuple[EdgeClient, LoopbackTransport]:
    transport = LoopbackTransport(gateway)
    identity = DeviceIdentity.of("bench-device", {"eu-west": RegionKey(1, gateway.device_key)})
    endpoint = gateway.endpoint(53.35, -6.26)
    client = EdgeClient(
        identity,
        [endpoint],
        lambda _: transport,
        trusted,
        home / "cache",
        ClientSettings(**settings),
    )
    await client.start()
    return client, transport


def _cpu_us(start: float, calls: int) -> float:
    return (time.process_time() - start) / calls * 1e6


async def _measure(home: Path) -> dict[str, Any]:
    gateway, trusted = _gateway(home)
    xs = load_dataset("embedding").X_test[:64]
    client, transport = await _client(gateway, trusted, home, tick_s=1.0)
    model = client.models.fallback(FAMILY)
    start = time.process_time()
    for i in range(CALLS):
        model.run(xs[i % 64])
    fallback_us = _cpu_us(start, CALLS)

    start = time.process_time()
    for i in range(CALLS):
        answer = await client.infer(xs[i % 64], 1000, kind="embedding")
        assert answer.source == "edge"
    edge_us = _cpu_us(start, CALLS)
    envelopes = [envelope for _, envelope, _ in gateway.sent[-200:]]
    start = time.process_time()
    for i in range(CALLS):
        gateway.reply_for(envelopes[i % len(envelopes)])
    loopback_us = _cpu_us(start, CALLS)

    transport._connected = False  # no session: the fallback answers at once
    start = time.process_time()
    for i in range(CALLS):
        await client.infer(xs[i % 64], 1000, kind="embedding")
    unavailable_us = _cpu_us(start, CALLS)
    await client.close()

    gateway.answer = False
    client, _ = await _client(gateway, trusted, home, tick_s=0.01)
    latencies = []
    for i in range(DEADLINE_CALLS):
        answer = await client.infer(xs[i % 64], 20, kind="embedding")
        latencies.append(answer.latency_ms)
    await client.close()
    lateness = []
    for _ in range(DEADLINE_CALLS):
        started = time.monotonic()
        await asyncio.sleep(0.01)
        lateness.append((time.monotonic() - started - 0.01) * 1000.0)
    return {
        "fallback_run_us": round(fallback_us, 1),
        "edge_call_cpu_us": round(edge_us, 1),
        "loopback_cpu_us": round(loopback_us, 1),
        "sdk_cpu_us": round(edge_us - loopback_us, 1),
        "unavailable_call_cpu_us": round(unavailable_us, 1),
        "deadline_fallback_ms": {
            "deadline": 20,
            "p50": round(float(np.percentile(latencies, 50)), 2),
            "p99": round(float(np.percentile(latencies, 99)), 2),
            "max": round(max(latencies), 2),
        },
        "loop_lateness_ms": {
            "p50": round(float(np.percentile(lateness, 50)), 2),
            "p99": round(float(np.percentile(lateness, 99)), 2),
        },
        "calls": CALLS,
    }


def main() -> None:
    """Measure, print and write the results."""
    with tempfile.TemporaryDirectory() as home:
        results = asyncio.run(_measure(Path(home)))
    text = json.dumps(results, indent=2)
    print(text)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text + "\n")


if __name__ == "__main__":
    main()
