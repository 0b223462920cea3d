"""The order in which the bench measures its systems at each load."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from bench.pipeline.run import pipeline_warmup_rates, rotated
from bench.pipeline.settings import SYSTEMS, BenchSettings, System


def test_each_load_starts_with_the_next_system() -> None:
    systems: tuple[System, ...] = ("pipeline", "echo_alo", "peer_alo")
    assert [rotated(systems, i)[0] for i in range(4)] == ["pipeline", "echo_alo", "peer_alo", "pipeline"]
    assert rotated(systems, 1) == ("echo_alo", "peer_alo", "pipeline")


@given(st.lists(st.sampled_from(SYSTEMS), min_size=1, unique=True), st.integers(min_value=0, max_value=50))
def test_every_system_is_measured_once_per_load_and_each_goes_first_in_turn(
    systems: list[System], index: int
) -> None:
    order = rotated(systems, index)
    assert sorted(order) == sorted(systems)
    assert order[0] == systems[index % len(systems)]
    # The cyclic order is kept: the system after each is the one after it in the settings' order.
    for a, b in itertools.pairwise(order):
        assert systems.index(b) == (systems.index(a) + 1) % len(systems)


def test_the_warm_up_runs_a_pipeline_at_the_first_loads_rate_after_the_fast_one() -> None:
    settings = BenchSettings(loads_per_s=(300.0, 1000.0))
    assert pipeline_warmup_rates(settings) == [1000.0, 300.0]
    # The first load at the warm-up's own rate: once.
    assert pipeline_warmup_rates(BenchSettings(loads_per_s=(1000.0, 300.0))) == [1000.0]
    assert pipeline_warmup_rates(BenchSettings(loads_per_s=(300.0,), warm_first_load=False)) == [1000.0]
    # No fast pipeline: the first load's alone; neither: none.
    assert pipeline_warmup_rates(BenchSettings(loads_per_s=(100.0,), pipeline_warmup_rate_per_s=0)) == [100.0]
    none = BenchSettings(loads_per_s=(100.0,), pipeline_warmup_rate_per_s=0, warm_first_load=False)
    assert pipeline_warmup_rates(none) == []
