"""The demo's summary: the story's versions as the devices saw them."""

from __future__ import annotations

from edgestream.workers.local.fleet import Answer, FleetReport, RegionReport
from edgestream.workers.local.story import StoryReport
from edgestream.workers.local.summary import bad_answers_after_rollback, version_rows


def test_version_rows_and_answers_after_the_rollback_come_from_the_devices_answers() -> None:
    story = StoryReport("embedding-scorer", reference=4, retrained=5, bad=6)
    story.shift_at_s = 10.0
    story.rollback_applied_at_s = 50.0
    answers = [
        Answer(1.0, "embedding-scorer", 4, True, "original"),
        Answer(2.0, "embedding-scorer", 4, False, "original"),
        Answer(12.0, "embedding-scorer", 4, False, "shifted-a"),
        Answer(30.0, "embedding-scorer", 5, True, "shifted-b", late=True),
        Answer(45.0, "embedding-scorer", 6, False, "shifted-b"),
        Answer(55.0, "embedding-scorer", 6, False, "shifted-b"),  # after the rollback was applied
        Answer(56.0, "frame-classifier", 6, True, "original"),  # another model's version 6
    ]
    report = FleetReport({"eu": RegionReport(answers=answers)}, 0.0, 60.0, 60.0, 0)
    rows = [(r.version, r.role, r.inputs, r.answers, r.accuracy) for r in version_rows(report, story)]
    assert rows == [
        (4, "reference", "original", 2, 0.5),
        (4, "reference", "shifted-a", 1, 0.0),
        (5, "retrained", "shifted-b", 1, 1.0),
        (6, "bad", "shifted-b", 2, 0.0),
    ]
    assert bad_answers_after_rollback(report, story) == 1
    story.rollback_applied_at_s = None
    assert bad_answers_after_rollback(report, story) is None
