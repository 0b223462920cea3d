"""The echo is started with the bench's choice of freezing its start-up heap, as the worker does."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from bench.pipeline.context import BenchContext
from bench.pipeline.echo import EchoSettings
from bench.pipeline.processes import echo_env
from bench.pipeline.settings import BenchSettings
from edgestream.pipeline.settings import KafkaSettings


def _echo_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **bench: Any) -> EchoSettings:
    ctx = BenchContext(
        BenchSettings(**bench), tmp_path, KafkaSettings(), None, cast(Any, None), cast(Any, None), 0
    )
    for name, value in echo_env(ctx, "echo-1", transactional=False).items():
        if name.startswith("EDGESTREAM_ECHO_"):
            monkeypatch.setenv(name, value)
    return EchoSettings()


@pytest.mark.parametrize("freeze", [True, False])
def test_the_echo_freezes_its_heap_exactly_when_the_bench_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, freeze: bool
) -> None:
    monkeypatch.setenv("EDGESTREAM_ECHO_FREEZE_HEAP", str(not freeze).lower())  # overridden by the env
    assert _echo_settings(tmp_path, monkeypatch, freeze_heaps=freeze).freeze_heap is freeze
