"""Process commands: ``edgestream worker``, ``edgestream fleet``, ``edgestream demo``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount the process commands on the root app."""
