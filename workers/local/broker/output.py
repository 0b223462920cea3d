"""What the broker's tools wrote, made short for an error message: tails without colour codes, the
ERROR lines of a log4j log without their stack frames."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

TAIL_LINES = 30
"""Lines of output an error message quotes by default."""

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LOG_LINE_RE = re.compile(r"^\[[^\]]+\] ")
_LOG_ERROR_RE = re.compile(r"^\[[^\]]+\] (ERROR|FATAL) ")


def strip_colours(text: str) -> str:
    """``text`` without ANSI escape sequences."""
    return _ANSI_RE.sub("", text)


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``, without colour codes."""
    return "\n".join(strip_colours(text).rstrip().splitlines()[-lines:])


def log_errors(text: str, limit: int = 20) -> list[str]:
    """ERROR/FATAL lines of a log4j log with their exception messages and causes, not stack frames."""
    errors: list[str] = []
    in_error = False
    for line in text.splitlines():
        if _LOG_LINE_RE.match(line):
            in_error = _LOG_ERROR_RE.match(line) is not None
            if in_error:
                errors.append(line)
        elif in_error and line.strip() and not line.startswith("\t") and not line.startswith(" "):
            errors.append(line)  # "SomeException: message" or "Caused by: ..."
        if len(errors) >= limit:
            break
    return errors


def read_from(path: Path, offset: int = 0) -> str:
    """The text of ``path`` from byte ``offset`` on; empty when the file does not exist."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
