"""A load during which the target stopped answering for a while is marked stalled: the CPU counts do not
see a pause, and a ratio over a paused baseline flatters the pipeline (an echo at 1,000/s once had a
p99 of 381 ms over a p95 of 7.9 ms, unflagged)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bench.pipeline.machine import CpuUse
from bench.pipeline.measure import Silence, longest_silence, run_stats
from bench.pipeline.plot import caption
from bench.pipeline.ratios import summary
from bench.pipeline.report import summary_table
from bench.pipeline.settings import BenchSettings
from edgestream.workers.local.fleetreport import FleetReport, RegionReport

from .levels import level


def _steady(rate_per_s: float, latency_ms: float, seconds: float) -> list[tuple[float, float]]:
    """Answers of requests sent evenly at ``rate_per_s``, each ``latency_ms`` after its capture."""
    n = int(rate_per_s * seconds)
    return [(i / rate_per_s + latency_ms / 1000.0, latency_ms) for i in range(n)]


def _ms(answers: list[tuple[float, float]]) -> float:
    silence = longest_silence(answers)
    assert silence is not None
    return silence.ms


def test_a_target_that_keeps_answering_is_silent_no_longer_than_a_request_takes() -> None:
    silence = longest_silence(_steady(1000.0, 5.0, 2.0))
    assert silence is not None
    assert silence.ms == pytest.approx(5.0)
    assert silence.waiting <= 5  # the requests of one 5 ms wait


def test_a_queue_is_not_a_stall_however_late_its_answers() -> None:
    # Saturated: each request waits longer than the one before, but answers keep coming every ms.
    answers = [(1.0 + i / 1000.0, 50.0 + i * 0.2) for i in range(1000)]
    # The first request's wait before anything was answered; the last one's 250 ms are queueing.
    assert _ms(answers) == pytest.approx(50.0)


def test_a_pause_shows_as_the_time_the_requests_of_the_pause_waited_together() -> None:
    steady = _steady(1000.0, 5.0, 2.0)
    # Nothing answered from 1.0 s to 1.38 s: every request captured meanwhile is answered at 1.38 s.
    paused = [(max(t, 1.38) if 1.0 <= t <= 1.38 else t, 0.0) for t, _ in steady]
    answers = [(t, 1000.0 * (t - (s - 0.005))) for (t, _), (s, _) in zip(paused, steady, strict=True)]
    silence = longest_silence(answers)
    assert silence is not None
    assert silence.ms == pytest.approx(380.0, abs=2.0)
    assert silence.waiting == pytest.approx(385, abs=3)  # those captured during it, and in flight


def test_no_answers_have_no_silence() -> None:
    assert longest_silence([]) is None


@given(
    st.lists(
        st.tuples(st.floats(0.0, 100.0), st.floats(0.0, 5_000.0)),
        min_size=1,
        max_size=60,
    )
)
@example([(0.0, 0.0)])
@example([(1.0, 1000.0), (1.0, 0.0)])  # two answers at once, one waited a second
def test_the_silence_is_at_least_the_quickest_wait_and_at_most_the_longest(
    answers: list[tuple[float, float]],
) -> None:
    silence = _ms(answers)
    # Before the first answer arrived, its request had waited its whole latency with nothing answered;
    # and no request waited through a silence longer than its own latency.
    first = min(answers)
    assert silence >= min(lat for t, lat in answers if t == first[0]) - 1e-6
    assert silence <= max(lat for _, lat in answers) + 1e-6


def _report(answers: list[tuple[float, float]]) -> FleetReport:
    region = RegionReport(
        sent=len(answers),
        results=len(answers),
        latencies_ms=[lat for _, lat in answers],
        result_times_s=[t for t, _ in answers],
    )
    return FleetReport(regions={"eu-west": region}, started_at=0.0, send_s=2.0, total_s=2.0, unanswered=0)


def _paused(pause_s: float) -> list[tuple[float, float]]:
    """2 s at 1,000/s, 5 ms each, but nothing answered from 1.0 s for ``pause_s``: the requests
    captured meanwhile are answered together when it ends."""
    out = []
    for i in range(2000):
        captured = i / 1000.0
        arrived = captured + 0.005
        if 1.0 <= arrived < 1.0 + pause_s:
            arrived = 1.0 + pause_s
        out.append((arrived, 1000.0 * (arrived - captured)))
    return out


def test_a_late_tail_of_a_few_requests_is_not_a_stall() -> None:
    # The exactly-once peer's way: the run's last 4 requests answered a second late.
    tail = [*_steady(100.0, 50.0, 5.0), *((6.0, 1000.0 - 10.0 * i) for i in range(4))]
    silence = longest_silence(tail)
    # From the last answer before them (at 5.04 s) to theirs (6.0 s); the 4 of them waiting.
    assert silence == Silence(pytest.approx(960.0), 4)  # type: ignore[arg-type]
    cpu = CpuUse(ours_s=1.0, others_s=0.0, steal_s=0.0, processes_s={"worker": 1.0}, wall_s=5.0)
    run = run_stats(100.0, _report(tail), 0, 0.0, 0, cpu, BenchSettings(stall_ms=100.0))
    assert not run.stalled


def test_a_run_with_a_silence_over_the_setting_is_marked_stalled_and_the_mark_reaches_the_outputs() -> None:
    cpu = CpuUse(ours_s=1.0, others_s=0.0, steal_s=0.0, processes_s={"worker": 1.0}, wall_s=2.0)
    settings = BenchSettings(stall_ms=100.0, stall_share=0.01)
    calm = run_stats(1000.0, _report(_steady(1000.0, 5.0, 2.0)), 0, 0.0, 0, cpu, settings)
    short = run_stats(1000.0, _report(_paused(0.08)), 0, 0.0, 0, cpu, settings)  # 80 ms: under the setting
    stalled = run_stats(1000.0, _report(_paused(0.2)), 0, 0.0, 0, cpu, settings)
    assert (calm.stalled, short.stalled, stalled.stalled) == (False, False, True)
    assert stalled.longest_silence_ms == pytest.approx(200.0, abs=1.0)
    assert stalled.silence_waiting == pytest.approx(205, abs=2)  # 10% of the answers
    assert not run_stats(
        1000.0, _report(_paused(0.2)), 0, 0.0, 0, cpu, BenchSettings(stall_ms=100.0, stall_share=0.2)
    ).stalled
    assert not stalled.disturbed  # marked, not run again: a stall may be the target's own

    lv = level(1000.0, (20.0, 1000.0, False), echo_alo=(10.0, 1000.0, False))
    assert lv.echo_alo is not None
    lv = replace(lv, echo_alo=replace(lv.echo_alo, run=stalled))
    out = summary([lv], ["pipeline", "echo_alo"])
    assert out["stalled"] == {"1000": ["echo_alo"]}
    cells = summary_table([lv], ["pipeline", "echo_alo"]).columns[2].cells
    assert any(str(cell).endswith("#") for cell in cells)
    document = {
        "worker_settings": {"max_batch": 64},
        "levels": [],
        "timestamp": "t",
        "machine": {"cores": 2},
        "ratios": out,
    }
    assert "stalled: echo_alo at 1000/s" in caption(document)
