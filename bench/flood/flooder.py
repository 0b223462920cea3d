"""The flooder: one device of region A, with the region's device certificate and its own device key,
producing sealed envelopes as fast as the broker acknowledges them, in a process of its own (its CPU is
counted apart from the fleet's).

It seals a pool of envelopes first (each with its own request id, nonce and capture time), then sends
them round and round with librdkafka (idempotent, ``acks=all`` as a device's producer; ``linger.ms``
as set) until SIGTERM, serving its delivery reports as it goes; with ``wait_for_go`` it waits, connected,
for SIGUSR1 before it floods (a flood that starts when the bench says, for as long as it says). Every
100 ms it notes how many records and bytes (key and value) the broker had acknowledged so far; at exit
it writes that timeline, its totals, when it started and stopped producing and the throttles the broker
told it to its report file, for the bench to take the rate over the measured window.

On SIGTERM it stops producing at once: it drops what librdkafka still queues (``purge``), waits up to
``FLUSH_S`` for the requests already on the wire, and exits.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

import numpy as np
from confluent_kafka import KafkaError, Message, Producer
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict

from edgestream.pipeline.contract.codec import encode_tensor
from edgestream.pipeline.contract.envelope import Kind, new_request_id, packed_payload, seal_payload
from edgestream.pipeline.contract.limits import PRODUCER_MAX_REQUEST_BYTES
from edgestream.pipeline.models import load_dataset, spec
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.catalogue import ingest_topic
from edgestream.workers.local.fleet_settings import MODEL_FOR_KIND
from edgestream.workers.local.rdkafka import rdkafka_config

SAMPLE_S: Final = 0.1
"""How often the flooder notes its acknowledged counts."""
CHECK_EVERY: Final = 256
"""Records produced between two looks at the clock, the stop flag and the delivery reports."""
STATS_INTERVAL_MS: Final = 1000
"""librdkafka's statistics interval: its request bytes and the broker's throttling, once a second."""
FLUSH_S: Final = 10.0
"""At SIGTERM, how long the flooder waits for its requests already sent before it exits."""


class FlooderConfig(BaseModel):
    """What the bench tells the flooder (a JSON file in the run's folder: it holds the device key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kafka: KafkaSettings
    """The broker, as ``device-<region>`` (the region's device certificate)."""
    region: str
    device_id: str
    key_id: int
    key_hex: str
    """The device's own AES-256 key, hex."""
    kind: Kind
    pool: int
    linger_ms: float
    capture_ahead_ms: int
    seed: int
    ready_file: Path
    report_file: Path
    wait_for_go: bool = False
    """Wait, connected, for SIGUSR1 before flooding (else flood as soon as ready)."""


class _Acks:
    """Acknowledged records and bytes, counted by the delivery reports (on the producing thread)."""

    __slots__ = ("acked", "acked_bytes", "failed", "key_bytes", "partitions")

    def __init__(self, key_bytes: int) -> None:
        self.key_bytes = key_bytes
        self.acked = 0
        self.acked_bytes = 0
        self.failed: Counter[str] = Counter()
        self.partitions: set[int] = set()

    def delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.acked += 1
            self.acked_bytes += len(msg) + self.key_bytes
            if not self.partitions:
                self.partitions.add(msg.partition())
        else:
            self.failed[err.name()] += 1


class _Stats:
    """What librdkafka's statistics say about the flooder's connection to the broker."""

    def __init__(self) -> None:
        self.tx_bytes = 0
        """Request bytes sent to the broker (the whole requests, before TLS)."""
        self.tx_requests = 0
        self.throttle_max_ms = 0
        """The longest throttle the broker asked of the flooder (a quota), from the statistics (their
        ``throttle`` window is in milliseconds)."""
        self.told_max_ms = 0.0
        """The same from ``throttle_cb`` (``ThrottleEvent.throttle_time`` is in seconds, a float)."""
        self.told = 0
        """Throttled responses served through ``throttle_cb``."""

    def on_stats(self, text: str) -> None:
        document = json.loads(text)
        brokers = [b for b in document.get("brokers", {}).values() if b.get("nodeid", -1) >= 0]
        self.tx_bytes = sum(int(b.get("txbytes", 0)) for b in brokers)
        self.tx_requests = sum(int(b.get("tx", 0)) for b in brokers)
        for b in brokers:
            self.throttle_max_ms = max(self.throttle_max_ms, int(b.get("throttle", {}).get("max", 0)))

    def on_throttle(self, event: Any) -> None:
        """librdkafka's ``throttle_cb`` (served by ``poll``): one per throttled response, and one of 0
        when the throttling ended."""
        ms = float(event.throttle_time) * 1000.0
        if ms > 0:
            self.told += 1
            self.told_max_ms = max(self.told_max_ms, ms)


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds of each of this process's threads so far, by name (librdkafka names its own)."""
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks_per_s
    return {name: round(v, 3) for name, v in sorted(out.items(), key=lambda kv: -kv[1])}


def seal_pool(config: FlooderConfig) -> tuple[list[bytes], float]:
    """``config.pool`` sealed envelopes of ``config.kind`` from the held-out rows, each with its own
    request id and nonce, as the device would seal them; and the µs each took to seal."""
    data = load_dataset(config.kind)
    model = MODEL_FOR_KIND[config.kind]
    dtype = spec(model).input_dtype
    rng = np.random.default_rng(config.seed)
    rows = rng.integers(len(data.y_test), size=min(256, config.pool))
    payloads = [packed_payload(encode_tensor(data.X_test[int(i)], dtype)) for i in rows]
    cipher = AESGCM(bytes.fromhex(config.key_hex))
    capture_ms = int(time.time() * 1000) + config.capture_ahead_ms
    started = time.perf_counter()
    pool = [
        seal_payload(
            payloads[n % len(payloads)],
            device_key=cipher,
            device_id=config.device_id,
            key_id=config.key_id,
            kind=config.kind,
            model=model,
            capture_time_ms=capture_ms,
            request_id=new_request_id(),
        )
        for n in range(config.pool)
    ]
    return pool, (time.perf_counter() - started) * 1e6 / max(1, config.pool)


def producer_config(config: FlooderConfig, stats: _Stats) -> dict[str, Any]:
    """A device's producer (``DeviceProducer``'s settings) lingering ``linger_ms``, with statistics."""
    return {
        **rdkafka_config(config.kafka, f"flood-{config.device_id}"),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": config.linger_ms,
        "message.max.bytes": PRODUCER_MAX_REQUEST_BYTES,
        "partitioner": "murmur2_random",
        "statistics.interval.ms": STATS_INTERVAL_MS,
        "stats_cb": stats.on_stats,
        "throttle_cb": stats.on_throttle,
    }


def flood(config: FlooderConfig) -> dict[str, Any]:
    """Seal the pool, connect, say ready, (wait for SIGUSR1,) produce until SIGTERM; the report."""
    stopping: list[float] = []
    """When SIGTERM came (unix s), once it did."""
    go: list[float] = []
    """When SIGUSR1 came (unix s), once it did."""

    def stop(_signum: int, _frame: object) -> None:
        if not stopping:
            stopping.append(time.time())

    def start(_signum: int, _frame: object) -> None:
        if not go:
            go.append(time.time())

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, start)
    pool, seal_us = seal_pool(config)
    key = config.device_id.encode()
    acks, stats = _Acks(len(key)), _Stats()
    producer = Producer(producer_config(config, stats))
    producer.list_topics(timeout=30)
    topic = ingest_topic(config.region, config.kind)
    config.ready_file.write_text(json.dumps({"pid": os.getpid()}))
    while config.wait_for_go and not go and not stopping:
        producer.poll(0.005)
    started_s = time.time()
    samples: list[tuple[float, int, int]] = [(started_s, 0, 0)]
    next_sample_s = time.monotonic() + SAMPLE_S
    produced = queue_full = n = 0
    size = len(pool)
    produce, poll, delivered = producer.produce, producer.poll, acks.delivered
    while not stopping:
        for _ in range(CHECK_EVERY):
            try:
                produce(topic, pool[n], key=key, on_delivery=delivered)
            except BufferError:  # librdkafka's queue is full: the broker takes no more for now
                queue_full += 1
                poll(0.005)
                break
            produced += 1
            n = n + 1 if n + 1 < size else 0
        poll(0)
        now_s = time.monotonic()
        if now_s >= next_sample_s:
            samples.append((time.time(), acks.acked, acks.acked_bytes))
            next_sample_s = now_s + SAMPLE_S
    stopped_s = time.time()
    samples.append((stopped_s, acks.acked, acks.acked_bytes))
    acked_at_stop = acks.acked
    producer.purge(in_queue=True, in_flight=False)
    left = producer.flush(FLUSH_S)
    poll(0)
    return {
        "go_s": go[0] if go else None,
        "started_s": started_s,
        "stop_signal_s": stopping[0] if stopping else None,
        "stopped_s": stopped_s,
        "flushed_s": time.time(),
        "acked_after_stop": acks.acked - acked_at_stop,
        "topic": topic,
        "partitions": sorted(acks.partitions),
        "pool": size,
        "seal_us": seal_us,
        "envelope_bytes": float(np.mean([len(e) for e in pool])),
        "produced": produced,
        "acked": acks.acked,
        "acked_bytes": acks.acked_bytes,
        "failed": dict(acks.failed),
        "queue_full": queue_full,
        "left_in_flight": left,
        "request_bytes": stats.tx_bytes,
        "requests": stats.tx_requests,
        "throttle_max_ms": stats.throttle_max_ms,
        "throttle_cb_max_ms": stats.told_max_ms,
        "throttled_responses": stats.told,
        "thread_cpu_s": thread_cpu_s(),
        "samples": samples,
    }


def run_flooder(config_file: Path) -> None:
    """The flooder process: ``python -m bench.flood flooder <config file>``."""
    config = FlooderConfig.model_validate_json(config_file.read_text())
    report = flood(config)
    tmp = config.report_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    tmp.replace(config.report_file)
