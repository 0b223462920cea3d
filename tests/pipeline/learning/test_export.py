"""The export of a window's labelled samples (``edgestream retrain MODEL --export FILE``) without a broker:
the join for a model the zoo does not know, and the .npz and .csv files read back with numpy and the
csv module as a team's training job would, row for row; an empty window and an unknown suffix refused
with no file left behind."""

from __future__ import annotations

import csv
from typing import TYPE_CHECKING

import numpy as np
import pytest

from edgestream.pipeline.contract.cloud import Label, Sample
from edgestream.pipeline.learning.export import (
    FEATURE_PREFIX,
    ID_COLUMNS,
    ExportError,
    ExportTable,
    export_format,
    export_table,
    write_export,
)
from edgestream.pipeline.learning.retrain import Window, join_samples

if TYPE_CHECKING:
    from pathlib import Path

MODEL = "fraud-gbm"
"""Not a zoo model: the export must not need a zoo spec."""
WINDOW = Window(1_000, 2_000)
FEATURES = (
    (0.1234567, -3.5e-5, 1.0e6, 7.0),  # none of the first three is a float16
    (2.0, 0.333333343, -1.25, 65_504.5),
    (1e-30, 3.4e38, -0.0, 0.5),
)


def _sample(rid: bytes, at_ms: int, version: int, x: tuple[float, ...], model: str = MODEL) -> Sample:
    return Sample(rid, "eu-west", model, version, at_ms, b"p" * 16, x, 0, (0.4, 0.6))


def _records() -> tuple[list[Sample], list[Label]]:
    """Three labelled samples in the window (two versions, out of time order), and what must be left
    out: unlabelled, before the window, another model, a short feature vector."""
    samples = [
        _sample(b"\x00c", 1_500, 2, FEATURES[2]),
        _sample(b"\x00a", 1_100, 1, FEATURES[0]),
        _sample(b"\x00b", 1_100, 2, FEATURES[1]),
        _sample(b"unlabelled", 1_200, 2, FEATURES[0]),
        _sample(b"before", 999, 1, FEATURES[0]),
        _sample(b"other", 1_300, 1, FEATURES[0], model="embedding-scorer"),
        _sample(b"short", 1_400, 2, FEATURES[0][:3]),
    ]
    labels = [
        Label(b"\x00a", MODEL, 1, 5),
        Label(b"\x00b", MODEL, 0, 5),
        Label(b"\x00c", MODEL, 1, 5),
        Label(b"before", MODEL, 1, 5),
        Label(b"other", "embedding-scorer", 1, 5),
        Label(b"short", MODEL, 0, 5),
    ]
    return samples, labels


def _table() -> ExportTable:
    samples, labels = _records()
    return export_table(join_samples(samples, labels, MODEL, WINDOW, None), MODEL, WINDOW)


EXPECTED_IDS = [b"\x00a".hex(), b"\x00b".hex(), b"\x00c".hex()]
"""By answer time, then request id."""
EXPECTED_FEATURES = np.array([FEATURES[0], FEATURES[1], FEATURES[2]], dtype=np.float32)


def test_the_join_of_a_model_the_zoo_does_not_know_takes_the_common_feature_length() -> None:
    table = _table()
    assert table.rows == 3
    assert table.n_features == 4
    assert (table.samples, table.labels, table.skipped) == (4, 5, 1)  # "short" is skipped
    assert table.request_id.tolist() == EXPECTED_IDS
    assert table.label.tolist() == [1, 0, 1]
    assert table.version.tolist() == [1, 2, 2]
    assert table.time_ms.tolist() == [1_100, 1_100, 1_500]


def test_a_tie_between_feature_lengths_goes_to_the_shorter_one() -> None:
    samples = [_sample(b"a", 1_100, 1, (1.0, 2.0)), _sample(b"b", 1_100, 1, (1.0, 2.0, 3.0))]
    labels = [Label(b"a", MODEL, 0, 5), Label(b"b", MODEL, 1, 5)]
    joined = join_samples(samples, labels, MODEL, WINDOW, None)
    assert joined.n_features == 2
    assert [s.request_id for s, _ in joined.rows] == [b"a"]
    assert joined.skipped == 1


def test_npz_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "window.npz"
    write_export(path, _table())
    with np.load(path, allow_pickle=False) as npz:  # no pickled objects: plain arrays only
        assert sorted(npz.files) == ["features", "label", "request_id", "time_ms", "version"]
        assert npz["features"].dtype == np.float32
        assert npz["features"].shape == (3, 4)
        np.testing.assert_array_equal(npz["features"], EXPECTED_FEATURES)
        assert npz["label"].dtype == np.int64
        assert npz["label"].tolist() == [1, 0, 1]
        assert npz["version"].tolist() == [1, 2, 2]
        assert npz["time_ms"].tolist() == [1_100, 1_100, 1_500]
        assert npz["request_id"].tolist() == EXPECTED_IDS


def test_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "window.CSV"  # the suffix is case-insensitive
    write_export(path, _table())
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    assert header == [*ID_COLUMNS, *(f"{FEATURE_PREFIX}{i}" for i in range(4))]
    assert [r[0] for r in body] == EXPECTED_IDS
    assert [(int(r[1]), int(r[2]), int(r[3])) for r in body] == [(1, 1_100, 1), (2, 1_100, 0), (2, 1_500, 1)]
    features = np.array([[float(v) for v in r[4:]] for r in body]).astype(np.float32)
    np.testing.assert_array_equal(features, EXPECTED_FEATURES)  # exact: 9 digits write any float32
    loaded = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="utf-8")
    assert loaded.dtype.names == tuple(header)
    assert loaded["label"].tolist() == [1, 0, 1]


def test_an_empty_window_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    samples, labels = _records()
    empty = export_table(join_samples(samples, labels, MODEL, Window(5_000, 6_000), None), MODEL, WINDOW)
    assert empty.rows == 0
    for name in ("empty.npz", "empty.csv"):
        with pytest.raises(ExportError, match="no labelled samples"):
            write_export(tmp_path / name, empty)
    assert list(tmp_path.iterdir()) == []


def test_a_suffix_that_names_no_format_is_refused(tmp_path: Path) -> None:
    assert export_format(tmp_path / "a.npz") == "npz"
    for name in ("a.parquet", "a", "a.npz.tmp"):
        with pytest.raises(ExportError, match=r"\.npz, \.csv"):
            write_export(tmp_path / name, _table())
    assert list(tmp_path.iterdir()) == []
