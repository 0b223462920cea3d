"""What a stalled story says about a held canary (``story.py``): the controller's steps and the summary
records they read, and where the canary's summaries go and which partitions of ``cloud.summaries`` an
open transaction holds (a canary whose summaries sit behind one reads as a canary with no requests)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from aiokafka import TopicPartition

from edgestream.pipeline.contract.cloud import PartialSummary
from edgestream.pipeline.contract.partitioner import partition_for
from edgestream.topics.catalogue import CLOUD_SUMMARIES, SUMMARIES_TOPIC

SUMMARY_PARTITIONS: Final = CLOUD_SUMMARIES.partitions
"""Partitions of ``cloud.summaries``."""


@dataclass
class Judged:
    """The controller's steps during one wait of the story, and the summary records they read: a
    canary held for want of requests while summaries kept coming is not a canary whose summaries
    stopped coming."""

    steps: int = 0
    summaries: int = 0
    last: int = 0
    """Summary records the last step read."""

    def step(self, summaries: int) -> None:
        """One more step, which read ``summaries`` summary records."""
        self.steps += 1
        self.summaries += summaries
        self.last = summaries

    def describe(self) -> str:
        """The counts, as a stall names them."""
        return f"{self.steps} steps read {self.summaries} summary records, the last one {self.last}"


def summaries_held(
    model: str, version: int, regions: Iterable[str], unstable: Mapping[TopicPartition, int]
) -> str:
    """Where ``version``'s summaries of ``model`` go (a summary's key is its region, model and version,
    so each region's go to one partition of ``cloud.summaries``) and which partitions of the topic an
    open transaction holds (``unstable``: records past the last stable offset, by partition): a canary
    whose summaries sit behind an open transaction reads as a canary with no requests."""
    goes = {
        region: partition_for(PartialSummary(region, "", model, version, 0).key, SUMMARY_PARTITIONS)
        for region in sorted(regions)
    }
    where = ", ".join(f"{region} {p}" for region, p in goes.items())
    text = f"v{version}'s summaries go to {SUMMARIES_TOPIC} partitions {where}"
    held = {tp.partition: n for tp, n in unstable.items() if tp.topic == SUMMARIES_TOPIC}
    if not held:
        return f"{text}; no open transaction holds any"
    holding = ", ".join(f"{p} ({n} records)" for p, n in sorted(held.items()))
    text = f"{text}; open transactions hold partitions {holding}"
    blocked = [region for region, p in goes.items() if p in held]
    return f"{text}: the canary's of {', '.join(blocked)}" if blocked else text
