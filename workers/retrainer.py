"""The retraining process: read the labelled samples of a window from the cloud topics, read the stable
version to compare with from the registry, and publish a retrained candidate.

:func:`read_cloud` reads ``cloud.samples`` and ``cloud.labels`` to their end offsets (read_committed), from
a window's start (less a margin for the producers' clocks), not from the topics' beginning;
:func:`read_labelled` joins them for a zoo model (``pipeline.learning.retrain.join``) and
:func:`read_export` for any model, as the rows of an export file (``pipeline.learning.export``);
:func:`read_stable` reads the model's stable version and its verified ONNX bytes;
:func:`publish_candidate` signs and publishes a candidate as the model's next version, never promoted.
Training and the comparison are ``pipeline.learning.retrain.retrain``, between these steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

import numpy as np

from edgestream.pipeline.contract.cloud import READ_MARGIN_MS, Label, Sample
from edgestream.pipeline.errors import EdgestreamError, UndecodableRecord
from edgestream.pipeline.learning.export import ExportTable, export_table
from edgestream.pipeline.learning.retrain import (
    LabelledSet,
    RetrainError,
    Window,
    join,
    join_samples,
    sampled_spec,
)
from edgestream.topics.catalogue import CLOUD_LABELS, CLOUD_SAMPLES, LABELS_TOPIC, SAMPLES_TOPIC

if TYPE_CHECKING:
    from edgestream.pipeline.learning.retrain import RetrainReport, TrainedModel
    from edgestream.pipeline.models.zoo import ModelSpec
    from edgestream.pipeline.registry.artifacts import ArtifactStore
    from edgestream.pipeline.registry.signing import SigningKey, TrustedKeys
    from edgestream.pipeline.registry.state import ModelState
    from edgestream.pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)

DEFAULT_READ_TIMEOUT_MS: Final = 60_000
"""Bound on reading the sample and label topics to their end offsets."""
_CLIENT_ID: Final = "edgestream-retrain"


@dataclass(frozen=True, slots=True, eq=False)
class Stable:
    """The stable version a candidate is compared with."""

    version: int
    """Its version number: the candidate's parent."""
    onnx_bytes: bytes
    """Its ONNX graph, verified against its signed manifest."""
    spec: ModelSpec
    """Its zoo spec (the candidate keeps its architecture)."""


async def read_stable(kafka: KafkaSettings, store: ArtifactStore, trusted: TrustedKeys, model: str) -> Stable:
    """``model``'s stable version from ``control.models``, its bytes from ``store`` verified with
    ``trusted``. Raises :class:`RetrainError` when the model has none or it does not verify."""
    from edgestream.pipeline.models.zoo import spec
    from edgestream.pipeline.registry.client import RegistryClient
    from edgestream.pipeline.registry.signing import load_verified

    state = await RegistryClient(kafka).read_state(model)  # another model's bad record stops nothing here
    if state is None or state.stable is None:
        raise RetrainError(
            f"model {model!r} has no stable version to compare with (edgestream registry publish {model})"
        )
    stable = state.manifest(state.stable)
    try:
        return Stable(
            state.stable, load_verified(store, stable, trusted), spec(model, stable.manifest.variant)
        )
    except EdgestreamError as e:
        raise RetrainError(f"stable v{state.stable}: {e}") from e


@dataclass(frozen=True, slots=True, eq=False)
class CloudRecords:
    """Every committed sample and label on the cloud topics, decoded."""

    samples: list[Sample]
    labels: list[Label]
    undecodable: int
    """Records that did not decode (logged and left out)."""


async def read_cloud(
    kafka: KafkaSettings, *, since_ms: int | None = None, timeout_ms: int = DEFAULT_READ_TIMEOUT_MS
) -> CloudRecords:
    """Read ``cloud.samples`` and ``cloud.labels`` to their end offsets (read_committed): from the
    beginning, or with ``since_ms`` from ``READ_MARGIN_MS`` before it (records stamped earlier cannot
    be of a span that starts there). Raises :class:`~edgestream.pipeline.errors.KafkaTimeout` for a read
    that does not reach the end offsets within ``timeout_ms``."""
    raw = await _read_values(
        kafka,
        {SAMPLES_TOPIC: CLOUD_SAMPLES.partitions, LABELS_TOPIC: CLOUD_LABELS.partitions},
        timeout_ms,
        None if since_ms is None else since_ms - READ_MARGIN_MS,
    )
    return _decoded(raw)


def _decoded(raw: dict[str, list[bytes]]) -> CloudRecords:
    """The samples and labels of ``raw`` (topic -> values); records that do not decode logged and
    counted."""
    records = CloudRecords([], [], 0)
    undecodable = 0
    for topic, values in raw.items():
        for value in values:
            try:
                if topic == SAMPLES_TOPIC:
                    records.samples.append(Sample.from_bytes(value))
                else:
                    records.labels.append(Label.from_bytes(value))
            except UndecodableRecord as e:
                undecodable += 1
                log.warning("%s: skipping a record: %s", topic, e)
    return replace(records, undecodable=undecodable)


async def read_labelled(
    kafka: KafkaSettings,
    model: str,
    since_ms: int,
    until_ms: int,
    *,
    timeout_ms: int = DEFAULT_READ_TIMEOUT_MS,
) -> LabelledSet:
    """:func:`read_cloud` and :func:`join` the records for ``model`` over ``[since_ms, until_ms)``.

    Undecodable records are logged and counted in ``skipped``. Raises :class:`RetrainError` for a model
    that is not sampled, :class:`~edgestream.pipeline.errors.KafkaTimeout` as :func:`read_cloud`.
    """
    sampled_spec(model)  # a model that is not sampled is refused before anything is read
    cloud = await read_cloud(kafka, since_ms=since_ms, timeout_ms=timeout_ms)
    return labelled(cloud, model, since_ms, until_ms)


def labelled(cloud: CloudRecords, model: str, since_ms: int, until_ms: int) -> LabelledSet:
    """:func:`join` ``cloud``'s records for ``model`` over ``[since_ms, until_ms)``; its undecodable
    records counted in ``skipped``. Raises :class:`RetrainError` for a model that is not sampled."""
    model_spec = sampled_spec(model)
    data = join(
        cloud.samples,
        cloud.labels,
        model,
        Window(since_ms, until_ms),
        int(np.prod(model_spec.input_shape)),
        model_spec.n_classes,
    )
    log.info(
        "%s in [%d, %d): %d samples, %d labels, %d joined (%d skipped, %d undecodable)",
        model,
        since_ms,
        until_ms,
        data.samples,
        data.labels,
        data.joined,
        data.skipped,
        cloud.undecodable,
    )
    return replace(data, skipped=data.skipped + cloud.undecodable)


class CloudTail:
    """``cloud.samples`` and ``cloud.labels`` from ``since_ms`` (less ``READ_MARGIN_MS``), read on from
    where the previous :meth:`read` ended: one who polls until enough labelled samples are there reads
    each record once, rather than the whole span again on every poll (the demo's story polled every
    2 s, and each poll re-read the topics through the broker's TLS). Use it as an async context
    manager: it holds one consumer."""

    def __init__(
        self, kafka: KafkaSettings, since_ms: int, *, timeout_ms: int = DEFAULT_READ_TIMEOUT_MS
    ) -> None:
        from edgestream.pipeline import kafka as clients

        self._since_ms = since_ms
        self._reader = clients.KeptReader(
            kafka,
            _CLIENT_ID,
            clients.partitions(
                [(SAMPLES_TOPIC, CLOUD_SAMPLES.partitions), (LABELS_TOPIC, CLOUD_LABELS.partitions)]
            ),
            timeout_ms=timeout_ms,
        )
        self._records = CloudRecords([], [], 0)

    async def __aenter__(self) -> CloudTail:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._reader.close()

    async def read(self) -> CloudRecords:
        """Every record from ``since_ms`` to the end offsets now (the earlier reads' and the new ones).
        Raises :class:`~edgestream.pipeline.errors.KafkaTimeout` as :func:`read_cloud`."""
        values: dict[str, list[bytes]] = {SAMPLES_TOPIC: [], LABELS_TOPIC: []}
        for record in await self._reader.read(since_ms=self._since_ms - READ_MARGIN_MS):
            if record.value is not None:
                values[record.topic].append(record.value)
        if not self._reader.resumed:
            self._records = CloudRecords([], [], 0)
        new = _decoded(values)
        self._records = CloudRecords(
            self._records.samples + new.samples,
            self._records.labels + new.labels,
            self._records.undecodable + new.undecodable,
        )
        return self._records


async def read_export(
    kafka: KafkaSettings,
    model: str,
    since_ms: int,
    until_ms: int,
    *,
    timeout_ms: int = DEFAULT_READ_TIMEOUT_MS,
) -> ExportTable:
    """The labelled samples of any model (a zoo spec is not needed) over ``[since_ms, until_ms)``, as
    the rows of an export file (``learning.export``): :func:`read_cloud` and ``join_samples`` with the
    feature length most of the window's samples have. Trains and publishes nothing."""
    window = Window(since_ms, until_ms)
    cloud = await read_cloud(kafka, since_ms=since_ms, timeout_ms=timeout_ms)
    joined = join_samples(cloud.samples, cloud.labels, model, window, None)
    return export_table(joined, model, window, cloud.undecodable)


async def _read_values(
    connection: KafkaSettings, partitions: dict[str, int], timeout_ms: int, since_ms: int | None
) -> dict[str, list[bytes]]:
    """Every committed record value of ``partitions`` (topic -> partition count) stamped at or after
    ``since_ms`` (None: all), up to the end offsets found at the start."""
    from edgestream.pipeline import kafka

    records = await kafka.read_all(
        connection,
        kafka.partitions(partitions.items()),
        client_id=_CLIENT_ID,
        timeout_ms=timeout_ms,
        since_ms=since_ms,
        fetch_max_bytes=kafka.BACKGROUND_FETCH["fetch_max_bytes"],
        max_partition_fetch_bytes=kafka.BACKGROUND_FETCH["max_partition_fetch_bytes"],
    )
    out: dict[str, list[bytes]] = {topic: [] for topic in partitions}
    for record in records:
        if record.value is not None:
            out[record.topic].append(record.value)
    return out


async def publish_candidate(
    kafka: KafkaSettings,
    store: ArtifactStore,
    key: SigningKey,
    model_spec: ModelSpec,
    report: RetrainReport,
    candidate: TrainedModel,
    trusted: TrustedKeys | None = None,
) -> ModelState:
    """Store and sign ``candidate`` as ``model_spec``'s next version, with the report's metrics and
    lineage, and publish it (a candidate: not promoted) on a state verified under ``trusted``."""
    from edgestream.pipeline.registry.publishing import publish_artifact

    return await publish_artifact(
        kafka,
        store,
        key,
        model_spec,
        candidate.onnx_bytes,
        metrics=report.metrics(),
        lineage=report.lineage(),
        trusted=trusted,
    )
