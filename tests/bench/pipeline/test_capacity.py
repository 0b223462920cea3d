"""The capacity drain's arithmetic: devices enough for the worker's burst, drain times, the summary."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bench.pipeline.capacity import (
    MAX_BACKLOG_PER_DEVICE,
    capacity_summary,
    drain_times,
    per_device_devices,
)
from bench.pipeline.machine import main_thread_schedstat
from edgestream.workers.edge.settings import WorkerSettings
from tests.bench.pipeline.levels import drain


@pytest.mark.parametrize("backlog", [0, 1, 39, 40, 41, 30_000, 123_457])
def test_no_device_sends_more_of_the_backlog_than_the_worker_lets_one_burst(backlog: int) -> None:
    devices = per_device_devices(backlog, at_least=60)
    assert devices >= 60
    assert -(-backlog // devices) <= MAX_BACKLOG_PER_DEVICE  # round-robin: ceil(backlog / devices) each
    # and the worker's own default burst is above what one device sends
    assert WorkerSettings.model_fields["device_burst"].default > MAX_BACKLOG_PER_DEVICE


def test_drain_times_are_the_first_and_last_answer_after_the_resume() -> None:
    assert drain_times([10.5, 10.2, 12.0], resumed_s=10.0) == pytest.approx((0.2, 2.0))
    assert drain_times([], resumed_s=10.0) == (None, None)


def test_the_summary_gives_the_pipelines_capacity_over_each_other_systems() -> None:
    drains = {"pipeline": drain(9000.0), "peer_eos": drain(6000.0), "echo_alo": drain(None, complete=False)}
    summary = json.loads(json.dumps(capacity_summary(drains, 1000, 8000.0)))
    assert summary["items_per_s"] == {"pipeline": 9000.0, "peer_eos": 6000.0, "echo_alo": None}
    assert summary["pipeline_vs"]["peer_eos"] == pytest.approx(1.5)
    assert summary["pipeline_vs"]["echo_alo"] is None  # drained nothing: no ratio, not a zero
    assert "pipeline" not in summary["pipeline_vs"]
    assert summary["complete"] == {"pipeline": True, "peer_eos": True, "echo_alo": False}
    assert summary["drains"]["pipeline"]["far_side_main_thread"]["running"] == 0.5


def test_the_main_threads_schedstat_is_read_as_ran_and_waited(tmp_path: Path) -> None:
    task = tmp_path / "7" / "task" / "7"
    task.mkdir(parents=True)
    (task / "schedstat").write_text("123 456 7\n")
    assert main_thread_schedstat(7, proc=tmp_path) == (123, 456)
    assert main_thread_schedstat(8, proc=tmp_path) == (0, 0)  # gone


def test_the_main_threads_schedstat_counts_its_running_time() -> None:
    ran_ns, _ = main_thread_schedstat(os.getpid())
    if ran_ns == 0:
        pytest.skip("this kernel keeps no schedstats (/proc/<pid>/task/<pid>/schedstat)")
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    assert main_thread_schedstat(os.getpid())[0] - ran_ns >= 40_000_000
