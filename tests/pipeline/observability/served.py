"""Reading a /metrics page back: which catalogue names it serves (shared by the tests of the three
processes)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""Each sample of a page: (name, labels) -> value."""


def declared(text: str) -> set[str]:
    """The sample names a page declares (its families' TYPE lines, as the catalogue spells them:
    counters with ``_total``, histograms by family), with samples or not yet."""
    out: set[str] = set()
    for family in text_string_to_metric_families(text):
        out.add(f"{family.name}_total" if family.type == "counter" else family.name)
        out.update(s.name for s in family.samples)
    return out


def missing(text: str, names: Iterable[str]) -> list[str]:
    """The names a page does not declare."""
    have = declared(text)
    return [n for n in names if n not in have]


def samples(text: str) -> Samples:
    """Every sample of a page."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(page: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in page.items() if n == name and want <= ls)


async def http_get(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from 127.0.0.1:``port``: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body
