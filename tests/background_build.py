"""Tests whose tools a script may be building in the background (``make test`` starts the chart tools'
build; ``install-seaweedfs.sh --background`` the S3 server's): wait for it, bounded, rather than skip
while it is still compiling, and say where its log is when they skip."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True)
class BackgroundBuild:
    """A build script's tools directory: ``building`` holds the background build's pid while it runs,
    ``logs/install.log`` its output."""

    tools: Path
    what: str
    """What is built, for skip messages (``the chart tools``)."""
    wait_s: float
    """The longest a test waits for the build."""

    def builder_pid(self) -> int | None:
        """The background build's pid while it runs, else None."""
        try:
            pid = int((self.tools / "building").read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def wait(self) -> None:
        """Return once no background build runs; a skip when it still runs after ``wait_s``."""
        deadline = time.monotonic() + self.wait_s
        while self.builder_pid() is not None:
            if time.monotonic() > deadline:
                pytest.skip(f"{self.what} still building after {self.wait_s:.0f} s: {self.log_tail()}")
            time.sleep(2)

    def log_tail(self) -> str:
        """The build log's last lines, for a skip's reason."""
        log = self.tools / "logs" / "install.log"
        lines = log.read_text().splitlines()[-3:] if log.is_file() else []
        return f"{log}: {' / '.join(lines)}" if lines else "no build log"
