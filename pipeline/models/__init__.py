"""Reference models built by our own code: specs (zoo), datasets, training + ONNX export, on-disk cache.

Importing this package stays light: scikit-learn is imported only when a dataset is first loaded or a
model is built (``ModelStore.get`` on a cache miss imports ``build`` then).
"""

from edgestream.pipeline.models.cache import ModelArtifact, ModelStore
from edgestream.pipeline.models.data import Dataset, load_dataset
from edgestream.pipeline.models.zoo import FAMILIES, SIZES, SPECS, ModelSpec, spec

__all__ = [
    "FAMILIES",
    "SIZES",
    "SPECS",
    "Dataset",
    "ModelArtifact",
    "ModelSpec",
    "ModelStore",
    "load_dataset",
    "spec",
]
