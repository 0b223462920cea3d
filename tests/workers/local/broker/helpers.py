"""Helpers of the local broker's tests: settings in a temporary directory, fake ``java`` and ``mvn``."""

from __future__ import annotations

import stat
from typing import TYPE_CHECKING

from edgestream.workers.local.broker.settings import BrokerSettings

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

FAKE_MVN_OK = """for arg in "$@"; do
  case "$arg" in -DoutputDirectory=*) out="${arg#-DoutputDirectory=}" ;; esac
done
: > "$out/kafka_2.13-4.1.1.jar"
: > "$out/kafka-clients-4.1.1.jar"
"""
"""A ``mvn`` that "resolves" two empty jars into its ``-DoutputDirectory``."""


def settings_in(tmp_path: Path, **overrides: object) -> BrokerSettings:
    """Broker settings with the home and the jar cache under ``tmp_path``."""
    values: dict[str, object] = {"home": tmp_path / "home", "cache_dir": tmp_path / "cache"}
    values.update(overrides)
    return BrokerSettings(**values)  # type: ignore[arg-type]


def fake_tool(bin_dir: Path, name: str, script: str) -> None:
    """An executable shell script ``bin_dir/name``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def fake_java(bin_dir: Path, version: str = "17.0.15") -> None:
    """A ``java`` whose ``-version`` says ``version``."""
    fake_tool(bin_dir, "java", f"echo 'openjdk version \"{version}\" 2025-04-15' >&2\n")


def only_on_path(monkeypatch: pytest.MonkeyPatch, bin_dir: Path) -> None:
    """Make ``bin_dir`` the whole PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("PATH", str(bin_dir))
