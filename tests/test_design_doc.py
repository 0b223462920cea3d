"""docs/design.md stays true: its layout names every package of the tree and only files that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = re.compile(r"<!-- layout:begin -->\n```\n(.*?)```\n<!-- layout:end -->", re.DOTALL)


def _layout() -> str:
    match = LAYOUT.search((ROOT / "docs" / "design.md").read_text())
    assert match is not None, "docs/design.md has no layout block"
    return match.group(1)


def _packages() -> list[str]:
    """Every package folder below the source trees, e.g. ``serving`` for pipeline/serving/."""
    return sorted(
        init.parent.name
        for top in ("pipeline", "topics", "workers")
        for init in (ROOT / top).rglob("__init__.py")
        if init.parent != ROOT / top
    )


def test_the_layout_names_every_package() -> None:
    named = set(re.findall(r"\b([a-z_]+)/", _layout()))
    missing = [name for name in _packages() if name not in named]
    assert not missing, f"docs/design.md's layout does not name {missing}"


def test_every_module_the_layout_names_exists() -> None:
    modules = set(re.findall(r"\b([a-z_]+\.py)\b", _layout()))
    existing = {
        path.name
        for top in ("pipeline", "topics", "workers", "edgestream")
        for path in (ROOT / top).rglob("*.py")
    }
    assert modules, "the layout names modules"
    assert modules <= existing, (
        f"docs/design.md names modules that do not exist: {sorted(modules - existing)}"
    )
