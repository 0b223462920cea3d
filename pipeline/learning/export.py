"""The labelled samples of a window as a file a team's own training job reads (``edgestream retrain MODEL
--export FILE``), for models edgestream did not build and so cannot retrain itself.

One row per labelled sample (``retrain.join_samples``), ordered by answer time then request id. The file's
suffix picks the format, both readable with numpy or pandas and no other dependency
(``docs/retraining.md`` lists the columns):

* ``.npz`` (``numpy.load``): ``features`` ``[N, F]`` float32, ``label`` ``[N]`` int64 (the truth from
  ``cloud.labels``), ``version`` ``[N]`` int64 (the model version that answered), ``time_ms`` ``[N]``
  int64 (when the edge answered, unix ms), ``request_id`` ``[N]`` str (32 lowercase hex digits);
* ``.csv`` (``pandas.read_csv``, ``numpy.genfromtxt``): a header line then one line per row, columns
  ``request_id,version,time_ms,label,f0,...,f<F-1>``; features as float32 written exactly (9 digits).

A window with no labelled sample is refused (:class:`ExportError`): no empty file is written. The file
appears whole or not at all (``files.atomic_write``).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
import numpy.typing as npt

from edgestream.pipeline.errors import EdgestreamError
from edgestream.pipeline.files import atomic_write

if TYPE_CHECKING:
    from pathlib import Path

    from edgestream.pipeline.learning.retrain import Joined, Window

ExportFormat = Literal["npz", "csv"]
EXPORT_FORMATS: Final[tuple[ExportFormat, ...]] = ("npz", "csv")
"""The formats an export file's suffix may name."""
ID_COLUMNS: Final = ("request_id", "version", "time_ms", "label")
"""The CSV columns before the features (``f0`` ... ``f<F-1>``)."""
FEATURE_PREFIX: Final = "f"
"""CSV feature column ``i`` is named ``f<i>``."""
FLOAT32_DIGITS: Final = 9
"""Significant digits that write every float32 exactly."""


class ExportError(EdgestreamError):
    """A window cannot be exported: no labelled sample in it, or a file suffix that names no format."""

    reason = "export"


@dataclass(frozen=True, slots=True, eq=False)
class ExportTable:
    """The rows of an export, as arrays, and the counts of the join they came from."""

    model: str
    window: Window
    features: npt.NDArray[np.float32]
    """``[N, F]``: each sample's input vector as the edge sampled it."""
    label: npt.NDArray[np.int64]
    """``[N]``: the true label from ``cloud.labels``."""
    version: npt.NDArray[np.int64]
    """``[N]``: the model version that answered."""
    time_ms: npt.NDArray[np.int64]
    """``[N]``: when the edge answered (unix ms)."""
    request_id: npt.NDArray[np.str_]
    """``[N]``: the request id, lowercase hex."""
    samples: int
    """Samples of the window with ``F`` features (labelled or not)."""
    labels: int
    """Labels of the model read (any window)."""
    skipped: int
    """Samples of the window left out (a feature count other than ``F``, or undecodable records)."""

    @property
    def rows(self) -> int:
        """Labelled samples exported."""
        return len(self.label)

    @property
    def n_features(self) -> int:
        """``F``: features per row."""
        return int(self.features.shape[1])


def export_format(path: Path) -> ExportFormat:
    """The format ``path``'s suffix names; :class:`ExportError` for any other suffix."""
    suffix = path.suffix.lower().removeprefix(".")
    for name in EXPORT_FORMATS:
        if suffix == name:
            return name
    raise ExportError(
        f"{path}: the suffix picks the format, one of {', '.join('.' + f for f in EXPORT_FORMATS)}"
    )


def export_table(joined: Joined, model: str, window: Window, undecodable: int = 0) -> ExportTable:
    """The rows of ``joined`` as arrays, ordered by answer time then request id."""
    rows = sorted(joined.rows, key=lambda row: (row[0].at_ms, row[0].request_id))
    features = np.array([s.features for s, _ in rows], dtype=np.float32)
    return ExportTable(
        model=model,
        window=window,
        features=features.reshape(len(rows), joined.n_features),
        label=np.array([label for _, label in rows], dtype=np.int64),
        version=np.array([s.model_version for s, _ in rows], dtype=np.int64),
        time_ms=np.array([s.at_ms for s, _ in rows], dtype=np.int64),
        request_id=np.array([s.request_id.hex() for s, _ in rows], dtype=np.str_),
        samples=joined.samples,
        labels=joined.labels,
        skipped=joined.skipped + undecodable,
    )


def write_export(path: Path, table: ExportTable) -> None:
    """Write ``table`` to ``path`` in the format its suffix names. Raises :class:`ExportError` for an
    unknown suffix or a table without rows (then nothing is written)."""
    fmt = export_format(path)
    if table.rows == 0:
        raise ExportError(
            f"{table.model}: no labelled samples in the window ({table.samples} samples, "
            f"{table.labels} labels): {path} not written"
        )
    atomic_write(path, _npz(table) if fmt == "npz" else _csv(table))


def _npz(table: ExportTable) -> bytes:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        features=table.features,
        label=table.label,
        version=table.version,
        time_ms=table.time_ms,
        request_id=table.request_id,
    )
    return buffer.getvalue()


def _csv(table: ExportTable) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([*ID_COLUMNS, *(f"{FEATURE_PREFIX}{i}" for i in range(table.n_features))])
    for i in range(table.rows):
        writer.writerow(
            [
                table.request_id[i],
                int(table.version[i]),
                int(table.time_ms[i]),
                int(table.label[i]),
                *(f"{float(v):.{FLOAT32_DIGITS}g}" for v in table.features[i]),
            ]
        )
    return text.getvalue().encode()
