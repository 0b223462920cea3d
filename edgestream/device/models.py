"""The device's models: the signed catalogue it trusts, and the local fallback models it runs.

The catalogue comes from the gateway (``fetch_catalogue``) and is accepted only when signed by a
registry key the app pins, well-formed and not expired (``pipeline/registry/devicecatalogue.py``); the
last accepted copy is kept on disk and verified again (signature and expiry) when read back. A fallback
model is the catalogue's ``tiny`` entry of a family: fetched by sha256 (``fetch_artifact``), its bytes
checked against the catalogue's sha256 and size, written to ``<cache>/<sha256>.onnx``, and hashed again
every time it is loaded from there; onnxruntime loads the verified bytes, never the path. A model that
fails a check is not loaded (:class:`ArtifactMismatch`), and the family has no fallback until a fetch
verifies.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from edgestream.pipeline.errors import EdgestreamError
from edgestream.pipeline.files import atomic_write, sha256_hex
from edgestream.pipeline.models.zoo import FALLBACK_SIZE, GRAPH_INPUT, GRAPH_LABEL, GRAPH_PROBS
from edgestream.pipeline.registry.devicecatalogue import verify_catalogue
from edgestream.pipeline.registry.errors import ArtifactMismatch, RegistryError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    import numpy.typing as npt

    from edgestream.pipeline.registry.devicecatalogue import CatalogueEntry, DeviceCatalogue
    from edgestream.pipeline.registry.signing import TrustedKeys

log = logging.getLogger(__name__)

CATALOGUE_CACHE: Final = "device-catalogue.json"
"""The last verified catalogue, in the SDK's cache directory."""


class NoFallback(EdgestreamError):
    """The edge did not answer and the family has no verified local model to answer instead."""

    reason = "no_fallback"


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """What a local model said about one input."""

    label: int
    probs: tuple[float, ...]


class LocalModel:
    """One verified ONNX model run with onnxruntime on the device (one thread)."""

    def __init__(self, entry: CatalogueEntry, data: bytes) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.entry: Final = entry
        """The catalogue entry it was verified against."""
        self._session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self._dtype = np.dtype(entry.input.dtype)
        self._outputs = [GRAPH_LABEL, GRAPH_PROBS]

    def run(self, x: npt.NDArray[Any]) -> LocalAnswer:
        """The model's answer for one item ``x`` (its item shape, any numeric dtype)."""
        batch = np.asarray(x, dtype=self._dtype)[np.newaxis, ...]
        label, probs = self._session.run(self._outputs, {GRAPH_INPUT: batch})
        return LocalAnswer(int(label[0]), tuple(float(p) for p in probs[0]))


def check_artifact(entry: CatalogueEntry, data: bytes) -> bytes:
    """``data`` if it is ``entry``'s artifact (sha256 and size), else :class:`ArtifactMismatch`."""
    actual = sha256_hex(data)
    if actual != entry.sha256 or len(data) != entry.size_bytes:
        raise ArtifactMismatch(entry.sha256, actual, f"{entry.family}/{entry.tier} v{entry.version}")
    return data


MIN_BANDWIDTH_SAMPLE_BYTES: Final = 64 * 1024
"""The smallest download a bandwidth is read from. A smaller one's time is mostly the request's round
trip and the device's own scheduling, not the transfer: the zoo's tiny models (1-4 KB) fetched over a
50 ms link "measured" 110-500 kbit/s on a link of 8,000, lower still on a busy device, and stepped a
high-end phone's tier down for a slow link it did not have."""


def bandwidth_kbps(size_bytes: int, elapsed_s: float) -> float | None:
    """The download rate a fetch of ``size_bytes`` in ``elapsed_s`` shows, kbit/s; None when it is too
    small to say (``MIN_BANDWIDTH_SAMPLE_BYTES``)."""
    if size_bytes < MIN_BANDWIDTH_SAMPLE_BYTES or not elapsed_s > 0:
        return None
    return size_bytes * 8 / 1000 / elapsed_s


class DeviceModels:
    """The trusted catalogue and the verified fallback models, cached under ``cache_dir``."""

    def __init__(self, trusted: TrustedKeys, cache_dir: Path) -> None:
        self._trusted = trusted
        self._dir = cache_dir
        self.catalogue: DeviceCatalogue | None = None
        """The catalogue in use (verified), or None before one was."""
        self._fallbacks: dict[str, LocalModel] = {}
        self.bandwidth_kbps: float | None = None
        """Download rate of the last artifact fetched that was big enough to say (``bandwidth_kbps``),
        kbit/s; None until one was."""
        self.refused: dict[str, int] = {}
        """Catalogues and artifacts refused, by reason."""

    def _refuse(self, error: RegistryError) -> None:
        self.refused[error.reason] = self.refused.get(error.reason, 0) + 1
        log.warning("refused: %s (%s)", error, error.reason)

    def load_cached_catalogue(self, now_ms: int) -> bool:
        """Use the catalogue cached on disk if it still verifies; whether it did."""
        path = self._dir / CATALOGUE_CACHE
        try:
            raw = path.read_bytes()
        except OSError:
            return False
        try:
            self.catalogue = verify_catalogue(raw, self._trusted, now_ms=now_ms)
        except RegistryError as e:
            self._refuse(e)
            return False
        return True

    async def refresh_catalogue(self, fetch: Callable[[], Awaitable[bytes]], now_ms: int) -> DeviceCatalogue:
        """Fetch, verify and keep the catalogue (the one in use stays when this raises a
        :class:`RegistryError`)."""
        raw = await fetch()
        try:
            catalogue = verify_catalogue(raw, self._trusted, now_ms=now_ms)
        except RegistryError as e:
            self._refuse(e)
            raise
        self._dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self._dir / CATALOGUE_CACHE, raw)
        self.catalogue = catalogue
        return catalogue

    def fallback_entry(self, family: str) -> CatalogueEntry | None:
        """The catalogue's fallback tier of ``family``."""
        return None if self.catalogue is None else self.catalogue.entry(family, FALLBACK_SIZE)

    async def ensure_fallback(self, family: str, fetch: Callable[[str], Awaitable[bytes]] | None) -> bool:
        """Load ``family``'s fallback model: from the disk cache when it verifies, else fetched (when
        ``fetch`` is given) and verified. Whether a verified model is loaded."""
        entry = self.fallback_entry(family)
        if entry is None:
            return False
        loaded = self._fallbacks.get(family)
        if loaded is not None and loaded.entry == entry:
            return True
        data = self._cached(entry)
        if data is None and fetch is not None:
            data = await self._fetched(entry, fetch)
        if data is None:
            return False
        self._fallbacks[family] = LocalModel(entry, data)
        return True

    def _cached(self, entry: CatalogueEntry) -> bytes | None:
        path = self._dir / f"{entry.sha256}.onnx"
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            return check_artifact(entry, data)
        except ArtifactMismatch as e:  # changed on disk: refetch it
            self._refuse(e)
            return None

    async def _fetched(self, entry: CatalogueEntry, fetch: Callable[[str], Awaitable[bytes]]) -> bytes | None:
        started = time.monotonic()
        data = await fetch(entry.sha256)
        measured = bandwidth_kbps(len(data), time.monotonic() - started)
        if measured is not None:
            self.bandwidth_kbps = measured
        try:
            check_artifact(entry, data)
        except ArtifactMismatch as e:
            self._refuse(e)
            return None
        self._dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self._dir / f"{entry.sha256}.onnx", data)
        return data

    def fallback(self, family: str) -> LocalModel:
        """``family``'s loaded fallback model; :class:`NoFallback` when none verified."""
        model = self._fallbacks.get(family)
        if model is None:
            raise NoFallback(f"no verified local model of {family[:128]!r}")
        return model
