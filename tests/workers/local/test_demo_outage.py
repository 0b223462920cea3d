"""The demo's worker outage, for real but short: one region, its worker stopped while the fleet (its
phones too) sends and started again; the summary counts who answered meanwhile."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

import pytest

from edgestream.pipeline.settings import DEFAULT_REGIONS, KafkaSettings, Region
from edgestream.workers.local.broker.state import BrokerState
from edgestream.workers.local.demo import run_demo
from edgestream.workers.local.demo_settings import DemoSettings
from edgestream.workers.local.outage import WorkerOutage
from edgestream.workers.local.story import StorySettings

if TYPE_CHECKING:
    from pathlib import Path


pytestmark = pytest.mark.broker


def test_a_stopped_worker_leaves_every_call_answered_and_the_edge_answers_again_after_its_restart(
    bootstrap: KafkaSettings, kafka_broker: BrokerState, model_home: Path, tmp_path: Path
) -> None:
    (tmp_path / "models").symlink_to(model_home / "models")  # reuse the session's built models
    region = Region(
        name=f"outage{uuid.uuid4().hex[:6]}", lat=DEFAULT_REGIONS[0].lat, lon=DEFAULT_REGIONS[0].lon
    )
    settings = DemoSettings(
        home=tmp_path,
        regions=(region,),
        duration_s=16.0,
        rate_per_s=60.0,
        devices=20,
        phone_fraction=0.3,
        kafka=bootstrap,
        tls_root=kafka_broker.tls_root,
        drain_s=10.0,
        aggregator_window_s=5.0,
        story=StorySettings(enabled=False),
        # SIGTERM: the worker leaves its group, so the new one has its partitions at once (after a
        # SIGKILL shorter than 10 s, the rest of the dead member's session: a longer test, same counts).
        outage=WorkerOutage(duration_s=3.0, start_s=3.0, signal="SIGTERM"),
    )
    result = run_demo(settings)

    outage = result.outage
    assert outage is not None
    assert (outage.region, outage.signal) == (region.name, "SIGTERM")
    down = {row.path: row for row in outage.rows if row.window == "down"}
    assert set(down) == {"direct", "phones", "all"}, "terminals and phones both called meanwhile"
    for row in down.values():
        assert row.no_answer == 0, row
        assert row.fallback > 0, f"the fallback answered {row.path} while the worker was down"
    assert all(row.no_answer == 0 for row in outage.rows)
    assert outage.edge_back_after_s is not None, "the edge answered again after the restart"
    assert set(outage.edge_back_by_path) == {"direct", "phones"}
    assert all(back is not None for back in outage.edge_back_by_path.values()), outage.edge_back_by_path

    # Without the story the edge serves the phones' tiers (pinned): a low-end phone or a sensor asks for
    # tiny, a high-end phone off the slow link for full. The pinned requests are answered, across the
    # restart too (the new worker applies the registry before it fetches): none is dead-lettered below.
    for phones in result.devices:
        if phones.device_class in ("low-end-phone", "sensor"):
            assert set(phones.tiers) == {"tiny"}, phones
    high = [r for r in result.devices if r.device_class == "high-end-phone" and r.link != "3g-flaky"]
    assert high, "a high-end phone on a fast link"
    assert all("full" in r.tiers for r in high), high

    # Both incarnations' counts are in the region's row: every bad record was dead-lettered by one of
    # them (a phone's envelope resent after the edge took it is refused as replayed).
    total = result.total
    replayed = total.dead_letter_reasons.get("replayed", 0)
    assert total.dead_letters == total.bad_sent + replayed
    summary = json.loads(result.paths.summary.read_text())
    assert summary["outage"] == json.loads(json.dumps(outage.to_dict()))
    assert summary["settings"]["outage"]["signal"] == "SIGTERM"
    assert (result.paths.root / "run" / f"worker-{region.name}.2.stats.json").exists(), "its own stats file"
