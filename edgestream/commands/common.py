"""What every command group shares: one-line errors, running a coroutine, times for tables."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from edgestream.pipeline.errors import EdgestreamError

T = TypeVar("T")

EXIT_ERROR = 1
"""Exit status of a command that could not do its job."""


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: <message>`` on stderr (markup in the message is shown, not applied) and exit."""
    Console(stderr=True).print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run(coro: Coroutine[Any, Any, T], code: int = EXIT_ERROR) -> T:
    """Run a coroutine; edgestream and Kafka errors become a one-line error and exit ``code``."""
    from aiokafka.errors import KafkaError

    try:
        result: T = asyncio.run(coro)
    except (EdgestreamError, KafkaError) as err:
        fail(f"{err}" if isinstance(err, EdgestreamError) else f"{type(err).__name__}: {err}", code)
    return result


def utc(ms: float | None) -> str:
    """Unix milliseconds as ``YYYY-MM-DD HH:MM:SS UTC``; ``-`` for None."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
