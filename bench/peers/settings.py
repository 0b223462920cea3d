"""Settings of the peer process (``EDGESTREAM_PEER_*``), and what the bench records about the peer (this
module does not import quixstreams: the bench process reads it too)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgestream.pipeline.contract.limits import DEFAULT_MAX_ENVELOPE_BYTES
from edgestream.pipeline.settings import KafkaSettings

Guarantee = Literal["at_least_once", "exactly_once"]
"""The peer's processing guarantee, spelled as edgestream's ``delivery``."""
QUIX_GUARANTEE: dict[Guarantee, Literal["at-least-once", "exactly-once"]] = {
    "at_least_once": "at-least-once",
    "exactly_once": "exactly-once",
}
"""Each guarantee as Quix's ``processing_guarantee`` spells it."""
PEER_PACKAGE = "quixstreams"
"""The distribution the peer is built on (its version goes into the results)."""
QUIX_DEFAULT_COMMIT_INTERVAL_S = 5.0
"""Quix's ``Application(commit_interval=...)`` default, what the peer runs with unless told."""


class PeerSettings(BaseSettings):
    """Settings of ``python -m bench.pipeline peer`` (``EDGESTREAM_PEER_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_PEER_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    region: str
    """Consumes ``edge.<region>.ingest.*``, answers where the region's devices read answers."""
    group: str
    """Consumer group (Quix's ``consumer_group``)."""
    kafka: KafkaSettings = KafkaSettings()
    """How to reach the brokers (as the worker does: the same identity and TLS files)."""
    home: Path
    """Holds ``models/`` (the worker's model cache) and ``keys.json`` (the region master keys)."""
    model_size: Literal["tiny", "medium", "full"] = "medium"
    """Model size to run: the one the worker serves."""
    intra_op_threads: int = Field(default=1, ge=1)
    """onnxruntime intra-op threads (the worker's and the bare floor's)."""
    guarantee: Guarantee = "at_least_once"
    """Quix's ``processing_guarantee``; at-least-once is its default."""
    commit_interval_s: float | None = Field(default=None, gt=0)
    """Quix's ``commit_interval``; None keeps its default (`QUIX_DEFAULT_COMMIT_INTERVAL_S`). Under
    exactly-once a result is seen only once its checkpoint commits, so this bounds the answers' latency."""
    max_envelope_bytes: int = Field(default=DEFAULT_MAX_ENVELOPE_BYTES, ge=256)
    """Largest envelope opened (the worker's default)."""
    max_body_bytes: int = Field(default=4 << 20, ge=256)
    """Largest decompressed body (the worker's default)."""
    auto_offset_reset: Literal["latest", "earliest"] = "latest"
    """Where a group without committed offsets starts (Quix's default, latest). Partitions are assigned
    before librdkafka has looked up the latest offsets, so records produced in that gap are skipped
    under latest; a caller that starts the peer on fresh topics and sends at once sets earliest."""
    ready_file: Path | None = None
    """Written once partitions are assigned (offsets may still be unresolved: see
    ``auto_offset_reset``); removed at exit."""
    stats_file: Path | None = None
    """Written (JSON) at exit: what was answered and refused."""
