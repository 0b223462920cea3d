"""A real distribution shift of the embedding data: a new scanner with a coarser pixel pitch.

The breast-cancer embedding's features are measurements of cell nuclei in a scanned image. A scanner
whose pixel pitch is ``pitch`` times the old one's makes every length feature (radius and perimeter:
mean, standard error, worst) read ``pitch`` times larger and every area ``pitch**2`` larger; shape
features (smoothness, compactness, concavity, symmetry, fractal dimension, texture) are ratios and do
not change. The labels are the true ones: only the instrument changed, so a model trained on the old
scanner calls benign cells malignant.

Measured with the zoo's medium reference model and pitch 1.3: 0.93+ on the unshifted held-out split,
0.82-0.87 on the shifted one; a model retrained on shifted samples gets 0.95-0.99
(``tests/pipeline/learning/test_retrain.py``).

:func:`shifted_pools` splits the whole shifted dataset (training and held-out rows, 569) into two
disjoint halves, so that a model retrained on samples drawn from the first is judged on inputs it has
never seen, drawn from the second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from edgestream.pipeline.models.data import load_dataset

PITCH: Final = 1.3
"""The new scanner's pixel pitch relative to the old one."""
LENGTH_FEATURES: Final = (0, 2, 10, 12, 20, 22)
"""radius and perimeter (mean, error, worst)."""
AREA_FEATURES: Final = (3, 13, 23)
"""area (mean, error, worst)."""
POOL_SEED: Final = 20_261_123
"""Seed of the split of the shifted dataset into two pools."""


def scanner_shift(X: npt.ArrayLike, pitch: float = PITCH) -> npt.NDArray[np.float16]:
    """Embeddings ``X`` (``[n, 30]``) as a scanner with ``pitch`` times the pixel pitch measures them,
    as float16 (what devices send)."""
    out = np.array(X, dtype=np.float32, copy=True)
    if out.ndim != 2 or out.shape[1] <= max(AREA_FEATURES):
        raise ValueError(f"expected embeddings [n, 30], got shape {out.shape}")
    out[:, LENGTH_FEATURES] *= pitch
    out[:, AREA_FEATURES] *= pitch * pitch
    return out.astype(np.float16)


@dataclass(frozen=True, slots=True, eq=False)
class Pool:
    """Inputs and their true labels."""

    X: npt.NDArray[np.float16]
    y: npt.NDArray[np.int64]


def shifted_pools(pitch: float = PITCH, seed: int = POOL_SEED) -> tuple[Pool, Pool]:
    """The whole embedding dataset under :func:`scanner_shift`, split into two disjoint halves with the
    same class balance: (first, second)."""
    data = load_dataset("embedding")
    X = scanner_shift(np.concatenate([data.X_train, data.X_test]), pitch)
    y = np.concatenate([data.y_train, data.y_test]).astype(np.int64)
    rng = np.random.default_rng(seed)
    first: list[int] = []
    second: list[int] = []
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        half = len(rows) // 2
        first.extend(rows[:half].tolist())
        second.extend(rows[half:].tolist())
    a, b = np.sort(first), np.sort(second)
    return Pool(X[a], y[a]), Pool(X[b], y[b])
