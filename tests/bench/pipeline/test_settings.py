"""Which systems a run measures."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bench.pipeline.settings import SYSTEMS, BenchSettings


def test_by_default_every_system_runs() -> None:
    assert BenchSettings().systems == SYSTEMS


def test_a_quick_run_keeps_the_given_systems_in_the_usual_order_once_each() -> None:
    settings = BenchSettings(systems=("echo_alo", "pipeline", "echo_alo"))
    assert settings.systems == ("pipeline", "echo_alo")


def test_the_pipeline_cannot_be_left_out() -> None:
    with pytest.raises(ValidationError, match="pipeline"):
        BenchSettings(systems=("echo_alo", "peer_alo"))


def test_a_low_load_runs_long_enough_for_its_minimum_of_requests() -> None:
    settings = BenchSettings(duration_s=10.0, min_requests=3000)
    assert settings.duration_for(100.0) == 30.0
    assert settings.duration_for(1000.0) == 10.0
    assert BenchSettings(duration_s=10.0, min_requests=0).duration_for(100.0) == 10.0
