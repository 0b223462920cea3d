"""The README stays true: its two commands are make targets, and every command it names exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z_-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


def test_the_readme_opens_with_the_demo_and_test_commands() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_every_make_target_the_readme_names_exists() -> None:
    named = set(re.findall(r"`?make ([a-z-]+)`?", README))
    assert named, "the README names make targets"
    assert named <= _make_targets()


EDGESTREAM_COMMANDS = sorted(set(re.findall(r"edgestream ((?:[a-z]+)(?: [a-z]+)?)", README)))


@pytest.mark.parametrize("command", EDGESTREAM_COMMANDS)
def test_every_edgestream_command_the_readme_names_exists(command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgestream", *command.split(), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"`edgestream {command}` is not a command: {proc.stderr[-500:]}"
