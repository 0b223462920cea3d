"""The consumer faust builds for the aggregator: read_committed, and fetches that wait for the
aggregator's fetch settings (``app._read_committed_only``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.aggregator.app import AggregatorSettings, build_app


async def _worker_consumer(settings: AggregatorSettings) -> tuple[str, int, int]:
    """Isolation level, fetch min bytes and max wait of the consumer faust makes (never started)."""
    app = build_app(settings)
    thread: Any = app.consumer._thread  # type: ignore[attr-defined]  # faust's AIOKafkaConsumerThread
    consumer = thread._create_worker_consumer(app.transport)
    try:
        return consumer._isolation_level, consumer._fetch_min_bytes, consumer._fetch_max_wait_ms
    finally:
        await consumer.stop()
        thread.thread_loop.close()


async def test_fausts_consumer_reads_committed_and_waits_for_the_fetch_settings(tmp_path: Path) -> None:
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1")
    tuned = AggregatorSettings(home=tmp_path, kafka=kafka, fetch_min_bytes=4096, fetch_max_wait_ms=300)
    assert await _worker_consumer(tuned) == ("read_committed", 4096, 300)
    defaults = AggregatorSettings(home=tmp_path / "defaults", kafka=kafka)
    assert await _worker_consumer(defaults) == ("read_committed", 64 * 1024, 200)
