"""A small, deterministic YAML writer for the generated Prometheus files.

It writes mappings, lists, strings, numbers and booleans in block style, with multi-line strings (PromQL)
as literal blocks, so the committed files read like hand-written ones and a regeneration is
byte-for-byte the same. It needs no YAML library: ``edgestream sla generate`` runs from a plain install.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Final

YamlValue = str | int | float | bool | None | Mapping[str, "YamlValue"] | Sequence["YamlValue"]
"""What :func:`dump` writes."""

INDENT: Final = "  "
"""One level of indentation."""
_PLAIN: Final = re.compile(r"[A-Za-z_/][A-Za-z0-9_./:-]*(?<!:)")
"""A string written without quotes: a name, a path, a recording rule (not ending in ``:``)."""
_RESERVED: Final = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null", "none"})
"""Plain words YAML would read as a boolean or null: quoted."""


def _scalar(value: str | int | float | bool | None) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if _PLAIN.fullmatch(value) and value.lower() not in _RESERVED:
        return value
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a double-quoted YAML string


def _block(text: str, depth: int) -> list[str]:
    pad = INDENT * depth
    return [
        "|-" if not text.endswith("\n") else "|",
        *(pad + line if line else "" for line in text.rstrip("\n").split("\n")),
    ]


def _lines(value: YamlValue, depth: int) -> list[str]:
    """The lines of ``value`` nested ``depth`` levels deep (a collection's first line included)."""
    pad = INDENT * depth
    if isinstance(value, Mapping):
        if not value:
            return [pad + "{}"]
        out: list[str] = []
        for key, item in value.items():
            out.extend(_entry(pad + _scalar(key) + ":", item, depth))
        return out
    if isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            return [pad + "[]"]
        out = []
        for item in value:
            if isinstance(item, Mapping | Sequence) and not isinstance(item, str) and item:
                nested = _lines(item, depth + 1)
                out.append(pad + "- " + nested[0][len(pad) + len(INDENT) :])
                out.extend(nested[1:])
            else:
                out.extend(_entry(pad + "-", item, depth))
        return out
    raise TypeError(f"not a collection: {value!r}")


def _entry(head: str, item: YamlValue, depth: int) -> list[str]:
    """``head`` (``key:`` or ``-``) followed by ``item``: inline when a scalar, below when not."""
    if isinstance(item, str) and "\n" in item:
        block = _block(item, depth + 1)
        return [f"{head} {block[0]}", *block[1:]]
    if isinstance(item, Mapping | Sequence) and not isinstance(item, str):
        if not item:
            return [f"{head} {'{}' if isinstance(item, Mapping) else '[]'}"]
        return [head, *_lines(item, depth + 1)]
    return [f"{head} {_scalar(item)}"]


def dump(value: Mapping[str, YamlValue], *, header: Sequence[str] = ()) -> str:
    """``value`` as a YAML document, after ``header`` as ``#`` comment lines."""
    comments = [f"# {line}".rstrip() for line in header]
    return "\n".join([*comments, *_lines(value, 0)]) + "\n"
