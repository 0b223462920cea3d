"""Typed settings shared by the processes: one frozen pydantic-settings model per process.

Every process builds its settings once at start (``EDGESTREAM_`` prefix, ``__`` for nesting) and passes
typed objects down; library code never reads ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_HOME = Path(".edgestream")
"""Where local state lives (broker data and logs, keys, model cache, demo output): git-ignored."""


class Region(BaseModel):
    """A region an edge node serves, with the location used for nearest-region routing."""

    model_config = ConfigDict(frozen=True)

    name: str
    """Region name as it appears in topic names, e.g. ``eu-west``."""
    lat: float = Field(ge=-90, le=90)
    """Latitude of the region's edge site, degrees."""
    lon: float = Field(ge=-180, le=180)
    """Longitude of the region's edge site, degrees."""


DEFAULT_REGIONS: tuple[Region, ...] = (
    Region(name="eu-west", lat=53.35, lon=-6.26),
    Region(name="us-east", lat=38.9, lon=-77.04),
    Region(name="ap-south", lat=19.08, lon=72.88),
)


class KafkaSettings(BaseModel):
    """How a process reaches the brokers."""

    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated ``host:port`` list; the local broker writes its own into its state file."""
    request_timeout_ms: int = Field(default=30_000, gt=0)
    """Upper bound for one broker request."""
