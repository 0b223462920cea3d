"""The story's drift counts on the aggregator's windows, and what a stalled story says (``stall.py``)."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from edgestream.pipeline.contract.partitioner import partition_for
from edgestream.topics.catalogue import SUMMARIES_TOPIC
from edgestream.workers.local.stall import SUMMARY_PARTITIONS, Judged, summaries_held
from edgestream.workers.local.story import StoryReport, count_drift


def test_drift_is_counted_on_judged_windows_wholly_before_or_after_the_shift() -> None:
    story = StoryReport("embedding-scorer", reference=4, retrained=5, bad=6)
    story.shift_at_s = 30.0
    story.rollback_applied_at_s = 50.0

    def window(start_s: float, samples: int, psi: float, model: str = "embedding-scorer") -> dict[str, Any]:
        flagged = samples >= 200 and psi > 0.2
        drift = {"samples": samples, "max_psi": psi, "flagged": flagged, "threshold": 0.2}
        return {"model": model, "region": "eu", "start_ms": int(start_s * 1000), "drift": drift}

    started_at = 1_000.0
    windows = [
        window(started_at + 0, 250, 0.1),  # before
        window(started_at + 15, 300, 0.25),  # before, a false alarm
        window(started_at + 20, 400, 3.0),  # straddles the shift: neither side
        window(started_at + 30, 150, 2.0),  # after, too few samples to judge
        window(started_at + 45, 260, 2.5),  # after
        window(started_at + 45, 900, 9.0, model="frame-classifier"),
    ]
    counts = count_drift(story, windows, started_at, 15.0)
    assert counts == {
        "before": {"judged": 2, "flagged": 1, "max_psi": 0.25},
        "after": {"judged": 1, "flagged": 1, "max_psi": 2.5},
    }


def test_a_stall_says_how_many_summaries_the_controller_read() -> None:
    judged = Judged()
    assert judged.describe() == "0 steps read 0 summary records, the last one 0"
    for read in (40, 3, 0):
        judged.step(read)
    assert (judged.steps, judged.summaries, judged.last) == (3, 43, 0)
    assert judged.describe() == "3 steps read 43 summary records, the last one 0"


def test_a_stall_says_where_the_canarys_summaries_go_and_which_an_open_transaction_holds() -> None:
    regions = ["eu-west", "us-east", "ap-south"]
    goes = {r: partition_for(f"{r}/embedding-scorer/14".encode(), SUMMARY_PARTITIONS) for r in regions}
    where = ", ".join(f"{r} {goes[r]}" for r in sorted(regions))
    clear = summaries_held("embedding-scorer", 14, regions, {})
    assert (
        clear == f"v14's summaries go to {SUMMARIES_TOPIC} partitions {where}; no open transaction holds any"
    )
    held = {TopicPartition(SUMMARIES_TOPIC, goes["us-east"]): 12, TopicPartition("other", 0): 5}
    text = summaries_held("embedding-scorer", 14, regions, held)
    assert f"open transactions hold partitions {goes['us-east']} (12 records)" in text
    assert text.endswith(
        "the canary's of " + ", ".join(r for r in sorted(regions) if goes[r] == goes["us-east"])
    ), text
    other = next(p for p in range(SUMMARY_PARTITIONS) if p not in goes.values())
    elsewhere = summaries_held("embedding-scorer", 14, regions, {TopicPartition(SUMMARIES_TOPIC, other): 3})
    assert elsewhere.endswith(f"open transactions hold partitions {other} (3 records)"), elsewhere
