"""Writing files so a reader never sees half of one, and naming bytes by their sha256."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pathlib import Path

FILE_MODE: Final = 0o644
"""Mode of files others may read (artifacts, manifests, certificates)."""


def atomic_write(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write ``data`` to a temporary file beside ``path`` (created with ``mode``), fsync it and rename
    it into place; on any failure the temporary file goes and ``path`` is untouched."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:16]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def sha256_hex(data: bytes) -> str:
    """Lowercase hex sha256 of ``data``: how artifacts and cached models are named and checked."""
    return hashlib.sha256(data).hexdigest()
