"""Find known plaintexts in files: the "no raw payload persisted" check.

A candidate is the exact bytes of one input tensor a device could have sent. Each candidate is found by
an 8-byte anchor (its most varied 8 bytes, so runs of zero pixels do not match everywhere), searched at
all 8 alignments of the file with numpy, and every anchor hit is confirmed by comparing the whole
candidate in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ANCHOR = 8


@dataclass(frozen=True, slots=True)
class Leak:
    """A candidate found in a file."""

    path: Path
    offset: int
    candidate: int


def _anchor(candidate: bytes) -> int:
    """Offset of the candidate's ``ANCHOR``-byte window with the most distinct byte values."""
    best, best_offset = -1, 0
    for offset in range(len(candidate) - ANCHOR + 1):
        distinct = len(set(candidate[offset : offset + ANCHOR]))
        if distinct > best:
            best, best_offset = distinct, offset
    return best_offset


def find_plaintexts(files: Iterable[Path], candidates: Sequence[bytes]) -> list[Leak]:
    """Every place one of ``candidates`` occurs in one of ``files`` (read whole; regular files only)."""
    anchors = [_anchor(c) for c in candidates]
    words = np.array(
        [np.frombuffer(c[a : a + ANCHOR], dtype="<u8")[0] for c, a in zip(candidates, anchors, strict=True)],
        dtype="<u8",
    )
    by_word: dict[int, list[int]] = {}
    for index, word in enumerate(words.tolist()):
        by_word.setdefault(int(word), []).append(index)
    leaks: list[Leak] = []
    for path in files:
        data = path.read_bytes()
        for shift in range(ANCHOR):
            usable = (len(data) - shift) // ANCHOR * ANCHOR
            if usable <= 0:
                continue
            view = np.frombuffer(data, dtype="<u8", count=usable // ANCHOR, offset=shift)
            for position in np.flatnonzero(np.isin(view, words)).tolist():
                at = shift + position * ANCHOR
                word = int(view[position])
                for index in by_word[word]:
                    start = at - anchors[index]
                    if start >= 0 and data[start : start + len(candidates[index])] == candidates[index]:
                        leaks.append(Leak(path, start, index))
    return leaks


def files_under(*roots: Path) -> list[Path]:
    """Every regular file under ``roots`` (following directory symlinks once)."""
    out: list[Path] = []
    for root in roots:
        out.extend(p for p in root.rglob("*") if p.is_file())
    return sorted(set(out))
