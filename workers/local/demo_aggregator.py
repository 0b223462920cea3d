"""The demo's cloud aggregator process (``edgestream aggregate run``), with a group and tables of the
run's own that start at the current end of the cloud topics."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from edgestream.pipeline import kafka as kafka_clients
from edgestream.pipeline.models import load_dataset
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.catalogue import (
    AGGREGATOR_GROUP,
    LABELS_TOPIC,
    SAMPLES_TOPIC,
    SUMMARIES_TOPIC,
    parse_topic,
)
from edgestream.workers.local.broker.config import free_port
from edgestream.workers.local.demo_settings import DemoPaths, DemoSettings
from edgestream.workers.local.demo_waits import wait_aggregator_ready
from edgestream.workers.local.processes import Child, edgestream_command, stopped_at_exit


async def _group_at_end(admin: KafkaSettings, group: str, topics: list[str]) -> None:
    """Commit the end offsets of ``topics`` for ``group`` (a new group), so that it starts there."""
    tps = kafka_clients.partitions((t, parse_topic(t).spec.partitions) for t in topics)
    async with kafka_clients.started(
        kafka_clients.consumer(admin, "edgestream-demo", group_id=group)
    ) as consumer:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.commit({tp: offset for tp, offset in ends.items()})


@contextmanager
def running_aggregator(
    settings: DemoSettings, admin: KafkaSettings, kafka: KafkaSettings, paths: DemoPaths
) -> Iterator[str]:
    """Run ``edgestream aggregate run`` (connected by ``kafka``: the ``aggregator`` identity's); yields
    its view's URL; always stops it.

    It gets a group and tables of this run's own, starting at the current end of the cloud topics
    (committed for it before it starts): older runs' records, or a backlog an older aggregator left,
    are not this run's story."""
    app_id = f"{AGGREGATOR_GROUP}-demo-{uuid.uuid4().hex[:8]}"
    asyncio.run(_group_at_end(admin, app_id, [SUMMARIES_TOPIC, SAMPLES_TOPIC, LABELS_TOPIC]))
    port = free_port()
    env = {
        **os.environ,
        **kafka.to_env("EDGESTREAM_AGGREGATOR_KAFKA__"),
        "EDGESTREAM_AGGREGATOR_HOME": str(settings.home),
        "EDGESTREAM_AGGREGATOR_WEB_PORT": str(port),
        "EDGESTREAM_AGGREGATOR_WINDOW_S": str(settings.aggregator_window_s),
        "EDGESTREAM_AGGREGATOR_APP_ID": app_id,
        # Devices replay the held-out rows (fleet.py): drift allows for that small pool's own noise.
        "EDGESTREAM_AGGREGATOR_DRIFT_SOURCE_ROWS": str(len(load_dataset("embedding").y_test)),
        # The phones' reconciliation reports (late edge answers vs their fallbacks' answers).
        "EDGESTREAM_AGGREGATOR_REPORT_REGIONS": json.dumps([r.name for r in settings.regions]),
    }
    aggregator = Child.start(
        "the aggregator",
        edgestream_command("aggregate", "run"),
        env=env,
        log_file=paths.logs / "aggregator.log",
        nice=settings.cloud_nice,
        idle=settings.cloud_idle,
    )
    with stopped_at_exit([aggregator]):
        url = f"http://127.0.0.1:{port}"
        wait_aggregator_ready(aggregator, url, settings.worker_ready_timeout_s)
        yield url
