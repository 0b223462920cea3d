"""The reference datasets, in the dtype devices put on the wire, with a fixed held-out split.

Only scikit-learn's BUNDLED datasets are used (nothing is downloaded), so accuracy numbers are about
real data:

- ``embedding``: breast cancer, 569 samples x 30 features, binary. Sent as float16: the largest value
  (worst area, 4254) is far below float16's 65504, the smallest non-zero (6.9e-4) is a normal float16,
  and rounding moves a feature by at most 4.9e-4 of its value (0.0044 of its standard deviation;
  cosine to the float64 row >= 0.99999992), well under what changes a prediction.
- ``frame``: digits, 1797 8x8 images with values 0..16, scaled to 0..255 and upscaled by 4 with
  ``np.kron`` to 32x32 uint8 frames: realistic byte blobs (repeated blocks) that zstd compresses.

The split is stratified, 25% held out, with a fixed seed; the device fleet draws its inputs from the
held-out part and checks the edge's answers against ``y_test``. scikit-learn is imported on first
load only, so importing this module (and ``edgestream.pipeline.models``) stays light.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edgestream.pipeline.errors import ConfigError

if TYPE_CHECKING:
    from edgestream.pipeline.models.zoo import Kind

TEST_FRACTION = 0.25
"""Share of each class held out for evaluation and for the device fleet."""
SPLIT_SEED = 20_240_601
"""Seed of the stratified split: the same rows are held out in every process and every run."""
FRAME_UPSCALE = 4
"""Each 8x8 digit pixel becomes a 4x4 block of the 32x32 frame."""
_DIGITS_MAX_VALUE = 16.0
"""Largest pixel value of scikit-learn's 8x8 digits."""


@dataclass(frozen=True, slots=True, eq=False)
class Dataset:
    """A train/held-out split of one kind's data, features in the wire dtype. Arrays are read-only."""

    kind: Kind
    """Which model kind the data feeds."""
    X_train: npt.NDArray[np.generic]
    """Training items, ``[n_train, *input_shape]``: float16 embeddings or uint8 frames."""
    y_train: npt.NDArray[np.int64]
    """Training labels, ``[n_train]``."""
    X_test: npt.NDArray[np.generic]
    """Held-out items, ``[n_test, *input_shape]``, in the dtype devices send."""
    y_test: npt.NDArray[np.int64]
    """Held-out labels, ``[n_test]``: the ground truth the fleet checks answers against."""
    class_names: tuple[str, ...]
    """Class names in label order, as the dataset ships them."""


def load_dataset(kind: Kind) -> Dataset:
    """The dataset for ``kind``, split deterministically; loaded once per process and shared."""
    if kind not in ("embedding", "frame"):
        raise ConfigError(f"no dataset for model kind {kind!r}")
    return _load(kind)


def digits_to_frames(images: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """8x8 digit images (0..16) -> 32x32 uint8 frames (0..255), each pixel a 4x4 block."""
    scaled = np.rint(np.asarray(images, dtype=np.float64) * (255.0 / _DIGITS_MAX_VALUE)).astype(np.uint8)
    block = np.ones((1, FRAME_UPSCALE, FRAME_UPSCALE), dtype=np.uint8)
    return np.kron(scaled, block)


@functools.cache
def _load(kind: Kind) -> Dataset:
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.model_selection import train_test_split

    features: npt.NDArray[np.generic]
    if kind == "embedding":
        bunch = load_breast_cancer()
        features = np.asarray(bunch.data).astype(np.float16)
    else:
        bunch = load_digits()
        features = digits_to_frames(np.asarray(bunch.images))
    labels = np.asarray(bunch.target, dtype=np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        features, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    arrays = [np.ascontiguousarray(array) for array in (X_train, y_train, X_test, y_test)]
    for array in arrays:
        array.flags.writeable = False
    return Dataset(
        kind=kind,
        X_train=arrays[0],
        y_train=arrays[1],
        X_test=arrays[2],
        y_test=arrays[3],
        class_names=tuple(str(name) for name in bunch.target_names),
    )
