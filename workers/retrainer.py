"""The retraining process: read the labelled samples of a window from the cloud topics, read the stable
version to compare with from the registry, and publish a retrained candidate.

:func:`read_labelled` reads ``cloud.samples`` and ``cloud.labels`` to their end offsets
(read_committed) and joins them (``pipeline.learning.retrain.join``); :func:`read_stable` reads the
model's stable version and its verified ONNX bytes; :func:`publish_candidate` signs and publishes a
candidate as the model's next version, never promoted. Training and the comparison are
``pipeline.learning.retrain.retrain``, between these steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

import numpy as np

from edgestream.pipeline.contract.cloud import Label, Sample
from edgestream.pipeline.errors import EdgestreamError, UndecodableRecord
from edgestream.pipeline.learning.retrain import LabelledSet, RetrainError, Window, join, sampled_spec
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

    state = (await RegistryClient(kafka).read_states()).get(model)
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


async def read_labelled(
    kafka: KafkaSettings,
    model: str,
    since_ms: int,
    until_ms: int,
    *,
    timeout_ms: int = DEFAULT_READ_TIMEOUT_MS,
) -> LabelledSet:
    """Read ``cloud.samples`` and ``cloud.labels`` from the beginning to their end offsets
    (read_committed) and :func:`join` them for ``model`` over ``[since_ms, until_ms)``.

    Undecodable records are logged and counted in ``skipped``. Raises :class:`RetrainError` for a model
    that is not sampled, :class:`~edgestream.pipeline.errors.KafkaTimeout` for a read that does not
    reach the end offsets within ``timeout_ms``.
    """
    model_spec = sampled_spec(model)
    window = Window(since_ms, until_ms)
    raw = await _read_values(
        kafka,
        {SAMPLES_TOPIC: CLOUD_SAMPLES.partitions, LABELS_TOPIC: CLOUD_LABELS.partitions},
        timeout_ms,
    )
    samples: list[Sample] = []
    labels: list[Label] = []
    undecodable = 0
    for topic, values in raw.items():
        for value in values:
            try:
                if topic == SAMPLES_TOPIC:
                    samples.append(Sample.from_bytes(value))
                else:
                    labels.append(Label.from_bytes(value))
            except UndecodableRecord as e:
                undecodable += 1
                log.warning("%s: skipping a record: %s", topic, e)
    data = join(samples, labels, model, window, int(np.prod(model_spec.input_shape)))
    log.info(
        "%s in [%d, %d): %d samples, %d labels, %d joined (%d skipped, %d undecodable)",
        model,
        since_ms,
        until_ms,
        data.samples,
        data.labels,
        data.joined,
        data.skipped,
        undecodable,
    )
    return replace(data, skipped=data.skipped + undecodable)


async def _read_values(
    connection: KafkaSettings, partitions: dict[str, int], timeout_ms: int
) -> dict[str, list[bytes]]:
    """Every committed record value of ``partitions`` (topic -> partition count), up to the end offsets
    found at the start."""
    from edgestream.pipeline import kafka

    settings = connection
    records = await kafka.read_all(
        settings, kafka.partitions(partitions.items()), client_id=_CLIENT_ID, timeout_ms=timeout_ms
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
