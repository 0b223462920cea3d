"""The topic catalogue: docs/design.md's table as data, names only from the catalogue, parse round trips."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest

from edgestream.pipeline.errors import ConfigError, EdgestreamError
from edgestream.pipeline.settings import DEFAULT_REGIONS, Region
from edgestream.topics.catalogue import (
    CATALOGUE,
    DAY_MS,
    HOUR_MS,
    KINDS,
    LABELS_TOPIC,
    MODELS_TOPIC,
    SAMPLES_TOPIC,
    SUMMARIES_TOPIC,
    WORKERS_TOPIC,
    Kind,
    Topic,
    TopicSpec,
    all_topics,
    audit_topic,
    dlq_topic,
    ingest_topic,
    is_catalogue_topic,
    parse_topic,
    region_topics,
    replies_topic,
    reports_topic,
    results_topic,
    shared_topics,
    validate_region,
)
from edgestream.topics.errors import InvalidKind, InvalidRegionName, UnknownTopic

DESIGN_DOC = Path(__file__).resolve().parents[2] / "docs" / "design.md"
TABLE = re.compile(r"<!-- topics:begin -->\n(.*?)<!-- topics:end -->", re.DOTALL)


def _design_rows() -> list[list[str]]:
    """The rows of docs/design.md's topic table: [pattern, key, value, cleanup]."""
    match = TABLE.search(DESIGN_DOC.read_text())
    assert match is not None, "docs/design.md has no topic table"
    lines = match.group(1).strip().splitlines()[2:]  # past the header and its rule
    return [[cell.strip().strip("`") for cell in line.strip().strip("|").split("|")] for line in lines]


def test_the_design_documents_every_catalogue_topic_as_it_is() -> None:
    rows = _design_rows()
    assert [row[0] for row in rows] == [spec.pattern for spec in CATALOGUE]
    for row, spec in zip(rows, CATALOGUE, strict=True):
        assert row[1:] == [spec.key, spec.value, spec.cleanup_policy], spec.pattern


def test_every_catalogue_topic_is_named_for_a_region() -> None:
    names = {t.name for t in all_topics(["eu-west"])}
    assert "edge.eu-west.ingest.embedding" in names
    assert "control.workers" in names
    assert len(names) == len(CATALOGUE) + len(KINDS) - 1  # one ingest topic per kind


def test_names_come_from_the_name_functions() -> None:
    region = DEFAULT_REGIONS[0]
    names = {t.name for t in region_topics(region)}
    assert names == {
        ingest_topic(region, "embedding"),
        ingest_topic(region.name, "frame"),
        results_topic(region),
        replies_topic(region),
        reports_topic(region),
        audit_topic(region),
        dlq_topic(region),
    }
    assert {t.name for t in shared_topics()} == {
        SUMMARIES_TOPIC,
        SAMPLES_TOPIC,
        LABELS_TOPIC,
        WORKERS_TOPIC,
        MODELS_TOPIC,
    }


def test_kinds_are_the_kind_literal() -> None:
    assert KINDS == get_args(Kind) == ("embedding", "frame")
    ingest = [t for t in region_topics("eu-west") if t.kind is not None]
    assert [t.kind for t in ingest] == list(KINDS)


def test_all_topics_covers_every_region_once_and_shared_topics_once() -> None:
    topics = all_topics([*DEFAULT_REGIONS, "eu-west"])
    names = [t.name for t in topics]
    assert len(names) == len(set(names)) == 3 * 7 + 5
    assert {t.region for t in topics} == {r.name for r in DEFAULT_REGIONS} | {None}
    for topic in topics:
        assert (topic.region is None) == (topic.spec.scope != "region")


@pytest.mark.parametrize("topic", all_topics(DEFAULT_REGIONS), ids=lambda t: t.name)
def test_parse_round_trip(topic: Topic) -> None:
    assert parse_topic(topic.name) == topic
    assert is_catalogue_topic(topic.name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "foo",
        "edge.eu-west",
        "edge.eu-west.bogus",
        "edge.eu-west.ingest.audio",
        "edge.eu-west.ingest",
        "edge..results",
        "edge.EU.results",
        "edge.eu_west.results",
        "edge.eu-west.results.x",
        "cloud.summaries.x",
        "xcloud.summaries",
        "cloud-summaries",
        "control.models2",
        "__consumer_offsets",
    ],
)
def test_parse_refuses_names_outside_the_catalogue(name: str) -> None:
    with pytest.raises(UnknownTopic, match="not in the catalogue") as info:
        parse_topic(name)
    assert info.value.name == name
    assert isinstance(info.value, EdgestreamError)
    assert info.value.reason == "unknown_topic"
    assert not is_catalogue_topic(name)


@pytest.mark.parametrize(
    "region",
    ["", "EU-west", "eu_west", "eu.west", "eu west", "-eu", "eu-", "é", "eu/west", "a" * 64],
)
def test_invalid_region_names_are_refused(region: str) -> None:
    with pytest.raises(InvalidRegionName) as info:
        results_topic(region)
    assert info.value.name == region
    assert isinstance(info.value, ConfigError)
    with pytest.raises(InvalidRegionName):
        all_topics(["eu-west", region])


@pytest.mark.parametrize("region", ["eu-west", "a", "1", "ap-south-2", "a" * 63])
def test_valid_region_names(region: str) -> None:
    assert validate_region(region) == region
    assert validate_region(Region(name=region, lat=0, lon=0)) == region
    assert parse_topic(dlq_topic(region)).region == region


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(InvalidKind, match="audio"):
        ingest_topic("eu-west", "audio")


def test_specs_follow_the_design() -> None:
    by_name = {t.name: t.spec for t in all_topics(["eu-west"])}
    ingest = by_name["edge.eu-west.ingest.frame"]
    assert (ingest.partitions, ingest.retention_ms, ingest.key) == (3, 6 * HOUR_MS, "device id")
    assert by_name["edge.eu-west.results"].retention_ms == DAY_MS
    assert by_name["edge.eu-west.replies"].retention_ms == HOUR_MS
    assert by_name["edge.eu-west.reports"].retention_ms == DAY_MS
    assert by_name["edge.eu-west.audit"].retention_ms == 30 * DAY_MS
    assert by_name["edge.eu-west.dlq"].retention_ms == 7 * DAY_MS
    for name in (SUMMARIES_TOPIC, SAMPLES_TOPIC, LABELS_TOPIC):
        assert (by_name[name].partitions, by_name[name].retention_ms) == (3, 7 * DAY_MS)
    models = by_name[MODELS_TOPIC]
    assert (models.partitions, models.cleanup_policy, models.retention_ms) == (1, "compact", None)


def test_topic_configs_are_what_the_broker_is_given() -> None:
    for spec in CATALOGUE:
        configs = spec.topic_configs()
        assert configs["cleanup.policy"] == spec.cleanup_policy
        assert configs["retention.ms"] == ("-1" if spec.retention_ms is None else str(spec.retention_ms))
        assert all(isinstance(v, str) for v in configs.values())
        assert configs["max.message.bytes"] == "1048588", (
            "the broker's default, which the contract's bounds fit"
        )
        segment_ms = int(configs.get("segment.ms", 7 * DAY_MS))
        if spec.retention_ms is not None:  # whole segments expire: keep them well under the retention
            assert segment_ms <= spec.retention_ms // 4


def test_specs_are_immutable_and_hashable() -> None:
    spec = CATALOGUE[0]
    with pytest.raises(AttributeError):
        spec.partitions = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.extra_configs["segment.ms"] = "1"  # type: ignore[index]
    assert len({t for t in all_topics(["eu-west"])}) == 12


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"partitions": 0}, "partitions"),
        ({"retention_ms": 0}, "retention_ms"),
        ({"extra_configs": {"retention.ms": "1"}}, "typed fields"),
    ],
)
def test_spec_validation(changes: dict[str, object], message: str) -> None:
    values: dict[str, object] = {
        "pattern": "x.{region}",
        "scope": "region",
        "partitions": 1,
        "retention_ms": 1,
        "cleanup_policy": "delete",
        "key": "k",
        "value": "v",
        "notes": "n",
    }
    values.update(changes)
    with pytest.raises(ValueError, match=message):
        TopicSpec(**values)  # type: ignore[arg-type]
