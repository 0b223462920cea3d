"""When the demo warms the broker up: only its own broker, not a given cluster, not with a 0 s
warm-up; and a warm-up that fails is said and does not stop the demo."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.local import demo
from edgestream.workers.local.broker.warmup import SENDER_LOG, ScratchRetries, WarmupReport
from edgestream.workers.local.demo_settings import DemoSettings


def _cluster(tmp_path: Path, *, own_broker: bool) -> demo._Cluster:
    log = tmp_path / "server.log" if own_broker else None
    return demo._Cluster(KafkaSettings(bootstrap_servers="127.0.0.1:9092"), Pki(tmp_path / "tls"), log)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    made: list[dict[str, Any]] = []

    async def warm_broker(connection: KafkaSettings, **options: Any) -> WarmupReport:
        made.append(options)
        return WarmupReport(1, 1, 1, 1, 0.1)

    monkeypatch.setattr(demo, "warm_broker", warm_broker)
    return made


def test_the_demos_own_broker_is_warmed_up_as_set(tmp_path: Path, calls: list[dict[str, Any]]) -> None:
    settings = DemoSettings(home=tmp_path, broker_warmup_s=2.5, broker_warmup_rate_per_s=50.0)
    steps: list[str] = []

    demo._warm_broker(settings, _cluster(tmp_path, own_broker=True), steps.append)

    assert calls == [{"seconds": 2.5, "rate_per_s": 50.0}]
    assert len(steps) == 1
    assert steps[0].startswith("warm-up: 2.5 s")


@pytest.mark.parametrize(("own_broker", "seconds"), [(False, 3.0), (True, 0.0)])
def test_no_warm_up_on_a_given_cluster_or_when_turned_off(
    tmp_path: Path, calls: list[dict[str, Any]], own_broker: bool, seconds: float
) -> None:
    steps: list[str] = []

    demo._warm_broker(
        DemoSettings(home=tmp_path, broker_warmup_s=seconds),
        _cluster(tmp_path, own_broker=own_broker),
        steps.append,
    )

    assert calls == []
    assert steps == []


def test_a_failed_warm_up_is_said_and_the_demo_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def warm_broker(connection: KafkaSettings, **options: Any) -> WarmupReport:
        raise KafkaConnectionError("no broker")

    monkeypatch.setattr(demo, "warm_broker", warm_broker)
    steps: list[str] = []

    demo._warm_broker(DemoSettings(home=tmp_path), _cluster(tmp_path, own_broker=True), steps.append)

    assert steps[-1] == "warm-up failed (KafkaConnectionError); the devices start without it"


def _sender_record(message: str) -> logging.LogRecord:
    return logging.LogRecord(SENDER_LOG, logging.WARNING, __file__, 1, message, None, None)


def test_the_warm_ups_own_retried_produces_are_not_logged_and_nothing_else_is_hidden() -> None:
    quiet = ScratchRetries()
    ours = (
        "Got error produce response on topic-partition TopicPartition("
        "topic='edgestream-warmup.replies', partition=2), retrying. Error: NotEnoughReplicasError"
    )
    theirs = ours.replace("edgestream-warmup.replies", "edge.eu-west.replies")
    assert not quiet.filter(_sender_record(ours))
    assert quiet.filter(_sender_record(theirs))  # a pipeline topic's retries stay visible
    assert quiet.filter(_sender_record("Producer closed while sending to edgestream-warmup.replies"))
