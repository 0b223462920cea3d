"""The environment the demo starts each region's edge worker with reads back as the worker's settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.edge.settings import WorkerSettings
from edgestream.workers.local.demo import _Cluster, _worker_env
from edgestream.workers.local.demo_settings import DemoSettings


@pytest.mark.parametrize("interval_ms", [None, 40.0])
def test_the_workers_commit_at_the_demos_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval_ms: float | None
) -> None:
    for name in [n for n in os.environ if n.startswith("EDGESTREAM_")]:
        monkeypatch.delenv(name)
    settings = (
        DemoSettings(home=tmp_path)
        if interval_ms is None
        else DemoSettings(home=tmp_path, worker_commit_interval_ms=interval_ms)
    )
    cluster = _Cluster(KafkaSettings(bootstrap_servers="127.0.0.1:9092"), Pki(tmp_path / "tls"), None)
    for name, value in _worker_env(settings, cluster, "us-east").items():
        if name.startswith("EDGESTREAM_WORKER_"):
            monkeypatch.setenv(name, value)
    worker = WorkerSettings()  # type: ignore[call-arg]  # (from the environment)
    assert worker.region == "us-east"
    assert worker.commit_interval_ms == settings.worker_commit_interval_ms
    assert worker.commit_interval_ms != WorkerSettings.model_fields["commit_interval_ms"].default
