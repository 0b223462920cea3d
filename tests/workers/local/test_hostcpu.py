"""The machine's busy cores and stolen share, from /proc/stat (pure logic, texts given)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgestream.workers.local.hostcpu import CpuTicks, host_cpu, parse_proc_stat, read_ticks

STAT = """cpu  1000 50 200 5000 100 10 40 60 0 0
cpu0 500 25 100 2500 50 5 20 30 0 0
cpu1 500 25 100 2500 50 5 20 30 0 0
intr 12345
"""


def test_the_aggregate_line_is_split_into_busy_idle_and_steal() -> None:
    assert parse_proc_stat(STAT) == CpuTicks(busy=1000 + 50 + 200 + 10 + 40, idle=5000 + 100, steal=60)


def test_an_old_kernel_without_steal_counts_none() -> None:
    assert parse_proc_stat("cpu  1 2 3 4 5 6 7\n").steal == 0


def test_a_text_without_the_aggregate_line_is_refused() -> None:
    with pytest.raises(ValueError, match="no aggregate cpu line"):
        parse_proc_stat("cpu0 1 2 3 4 5 6 7 8\n")
    with pytest.raises(ValueError, match="fields"):
        parse_proc_stat("cpu  1 2 3\n")


def test_busy_cores_and_stolen_share_between_two_readings() -> None:
    before = CpuTicks(busy=1000, idle=1000, steal=0)
    after = CpuTicks(busy=1000 + 150, idle=1000 + 40, steal=10)  # 200 ticks: 150 busy, 40 idle, 10 stolen
    cpu = host_cpu(before, after, cores=2)
    assert cpu is not None
    assert cpu.busy_cores == pytest.approx(1.5)
    assert cpu.steal_share == pytest.approx(0.05)
    assert "1.50 of 2 cores busy" in cpu.line()
    assert "5.0% of its time stolen" in cpu.line()


def test_no_time_between_readings_says_nothing() -> None:
    ticks = CpuTicks(busy=1, idle=1, steal=0)
    assert host_cpu(ticks, ticks, cores=2) is None


def test_an_unreadable_stat_file_reads_as_none(tmp_path: Path) -> None:
    assert read_ticks(tmp_path / "missing") is None
    bad = tmp_path / "stat"
    bad.write_text("nothing here\n")
    assert read_ticks(bad) is None
    good = tmp_path / "good"
    good.write_text(STAT)
    assert read_ticks(good) == parse_proc_stat(STAT)
