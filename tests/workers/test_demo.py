"""The demo, for real but short: worker processes, the fleet, the drain, the summary and the plot."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

import pytest

from edgestream.pipeline.models import load_dataset, spec
from edgestream.pipeline.settings import DEFAULT_REGIONS, Kafka, Region, kafka_settings
from edgestream.workers.broker import BrokerState
from edgestream.workers.demo import DemoSettings, plot_latency, run_demo
from edgestream.workers.fleet import MODEL_FOR_KIND, FleetReport, RegionReport

from ..plaintext import files_under, find_plaintexts

if TYPE_CHECKING:
    from pathlib import Path


pytestmark = pytest.mark.broker


def test_demo_accounts_for_every_request(
    bootstrap: Kafka, kafka_broker: BrokerState, model_home: Path, tmp_path: Path
) -> None:
    (tmp_path / "models").symlink_to(model_home / "models")  # reuse the session's built models
    tag = uuid.uuid4().hex[:6]
    regions = tuple(
        Region(name=f"demo{tag}-{i}", lat=r.lat, lon=r.lon) for i, r in enumerate(DEFAULT_REGIONS)
    )
    settings = DemoSettings(
        home=tmp_path,
        regions=regions,
        duration_s=4.0,
        rate_per_s=60.0,
        devices=12,
        bad_fraction=0.1,
        kafka=kafka_settings(bootstrap),
        tls_root=kafka_broker.tls_root,
        deadline_ms=30_000.0,  # accounting, not latency: load must not turn answers into fallbacks
        drain_s=60.0,
    )
    steps: list[str] = []
    result = run_demo(settings, on_step=steps.append)

    total = result.total
    assert total.sent + total.bad_sent >= 200
    assert total.bad_sent > 0
    # With a generous deadline every good request is answered by the edge, exactly once.
    assert total.results == total.sent
    assert total.fallbacks == 0
    assert total.duplicates == 0
    # Every bad record is in a dead-letter topic: the demo waits until the workers consumed everything.
    assert total.dead_letters == total.bad_sent
    assert set(total.dead_letter_reasons) <= {"bad_tag", "undecodable", "unknown_model", "bad_shape"}
    assert total.accuracy is not None
    assert total.accuracy > 0.9
    assert [r.region for r in result.rows] == [r.name for r in regions]
    assert all(r.results > 0 for r in result.rows), "every region's worker answered"

    # The cloud aggregator (faust, as `aggregator` over TLS) counted exactly what the workers committed,
    # and its accuracy against the backends' labels is the models' own.
    assert sum(row["results"] for row in result.cloud) == total.results
    labelled = sum(row["labelled"] for row in result.cloud)
    assert labelled > 0
    correct = sum(row["accuracy"] * row["labelled"] for row in result.cloud if row["accuracy"] is not None)
    assert correct / labelled > 0.9

    summary = json.loads(result.paths.summary.read_text())
    assert summary["total"]["results"] == total.results
    assert result.paths.plot.stat().st_size > 10_000
    assert result.paths.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any("broker" in s for s in steps[1:]), "a given cluster is used, no broker started or stopped"

    # No raw payload persisted: no input a device could have sent is anywhere on disk in the clear,
    # not in the demo's files nor in the broker's log segments of the demo's topics (nor its internal
    # topics: offsets and transactions). The scanner finds a planted one, so a miss is not blindness.
    candidates = _device_inputs()
    segments = [
        d
        for d in kafka_broker.data_dir.iterdir()
        if d.is_dir()
        and (d.name.startswith(tuple(f"edge.{r.name}." for r in regions)) or d.name.startswith("__"))
    ]
    assert len(segments) > len(regions) * 6, "the demo's topic partitions are on this broker"
    scanned = files_under(tmp_path, *segments)
    assert any(p.suffix == ".log" and p.stat().st_size > 0 for p in scanned), "segments with records"
    assert find_plaintexts(scanned, candidates) == []
    planted = tmp_path / "planted.bin"
    planted.write_bytes(b"\x07" * 13 + candidates[-1] + b"\x00" * 5)
    assert [(leak.path, leak.offset) for leak in find_plaintexts([planted], candidates)] == [(planted, 13)]


def _device_inputs() -> list[bytes]:
    """Every input the simulated devices draw from, as the bytes they seal."""
    out: list[bytes] = []
    for kind, name in MODEL_FOR_KIND.items():
        dtype = spec(name).input_dtype
        out.extend(row.astype(dtype).tobytes() for row in load_dataset(kind).X_test)
    return out


def test_the_plot_says_so_when_nothing_was_answered(tmp_path: Path) -> None:
    report = FleetReport(
        {r.name: RegionReport(sent=3, fallbacks=3) for r in DEFAULT_REGIONS}, 0.0, 1.0, 1.0, 0
    )
    path = plot_latency(report, tmp_path / "latency.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
