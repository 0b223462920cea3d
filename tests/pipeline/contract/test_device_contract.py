"""What ``docs/contract.md`` promises a device team, checked against the code that enforces it: the
limits and their defaults (section 9, "Limits and their defaults") and the zoo's input specs (section
4, "Model input specs")."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from edgestream.pipeline.contract import codec, envelope, fallbacks
from edgestream.pipeline.models.zoo import FAMILIES, SIZES, SPECS
from edgestream.pipeline.observability import metrics
from edgestream.workers.edge.settings import WorkerSettings

DOC = (Path(__file__).resolve().parents[3] / "docs" / "contract.md").read_text(encoding="utf-8")
CONSTANT_MODULES = (envelope, codec, fallbacks, metrics)
"""Where the constants the limits table names live."""


def _rows(name: str) -> list[list[str]]:
    match = re.search(f"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", DOC, re.DOTALL)
    assert match is not None, f"docs/contract.md lost its {name} table"
    return [
        [cell.strip() for cell in line.strip("|").split(" | ")] for line in match.group(1).splitlines()[2:]
    ]


def _code_value(name: str) -> Any:
    """A worker setting's default, or a contract constant's value."""
    if name in WorkerSettings.model_fields:
        return WorkerSettings.model_fields[name].default
    for module in CONSTANT_MODULES:
        if hasattr(module, name):
            return getattr(module, name)
    raise AssertionError(f"the limits table names {name!r}, which is neither a worker setting nor a constant")


LIMITS = _rows("limits")


@pytest.mark.parametrize("row", LIMITS, ids=[row[0] for row in LIMITS])
def test_each_limits_default_is_what_the_code_enforces(row: list[str]) -> None:
    _, default, set_by, _ = row
    names = re.findall(r"`([A-Za-z_]+)`", set_by)
    amounts = default.replace("UTF-8", "UTF")  # the 8 of UTF-8 is not a limit
    numbers = [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?:\.\d+)?", amounts)]
    assert names, row
    assert numbers == [float(_code_value(name)) for name in names], row


def test_the_limits_table_covers_every_device_facing_setting() -> None:
    named = {name for row in LIMITS for name in re.findall(r"`([A-Za-z_]+)`", row[2])}
    device_facing = {
        "max_envelope_bytes",
        "max_body_bytes",
        "max_age_ms",
        "max_future_skew_ms",
        "device_rate_per_s",
        "device_burst",
        "max_replay_ids_per_device",
    }
    assert device_facing <= named


def test_the_zoo_input_table_is_the_zoos_specs() -> None:
    expected = []
    for family in FAMILIES:
        specs = {SPECS[family, size] for size in SIZES}
        interfaces = {(s.kind, s.input_dtype, s.input_shape, s.n_classes) for s in specs}
        assert len(interfaces) == 1, f"every size of {family} takes the same input (a device switches tiers)"
        ((kind, dtype, shape, classes),) = interfaces
        expected.append([f"`{family}`", f"`{kind}`", f"`{dtype}`", f"`{list(shape)}`", str(classes)])
    assert _rows("zoo-inputs") == expected
