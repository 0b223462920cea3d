"""The onnxruntime wheels stay apart: the base install has neither, ``cpu`` and ``gpu`` one each,
``dev`` (what ``make install`` gives by default) the CPU one, and nothing pulls both."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIMES = {"onnxruntime", "onnxruntime-gpu"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[;! ]", item, maxsplit=1)[0].lower() for item in requirements}


def _runtimes_of(extra: str) -> set[str]:
    """The onnxruntime wheels an extra pulls, following ``edgestream[...]`` self-references."""
    found: set[str] = set()
    for item in PROJECT["optional-dependencies"][extra]:
        self_ref = re.fullmatch(r"edgestream\[([a-z,]+)\]", item)
        if self_ref:
            for inner in self_ref[1].split(","):
                found |= _runtimes_of(inner)
        else:
            found |= _names([item]) & RUNTIMES
    return found


def test_the_base_install_has_no_runtime_and_each_extra_at_most_one() -> None:
    assert not _names(PROJECT["dependencies"]) & RUNTIMES
    assert _runtimes_of("cpu") == {"onnxruntime"}
    assert _runtimes_of("gpu") == {"onnxruntime-gpu"}
    assert _runtimes_of("dev") == {"onnxruntime"}
    assert _runtimes_of("tools") == set()


def test_make_install_picks_one_runtime_extra() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "-e '.[$(RUNTIME),tools]'" in makefile
    assert re.search(r"^RUNTIME \?= .*,gpu,cpu\)$", makefile, flags=re.M)
