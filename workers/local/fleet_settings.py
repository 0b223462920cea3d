"""Settings of the simulated device fleet, and the names its parts share: which model answers each
kind of input, and which kinds of deliberately bad records it sends."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgestream.pipeline.settings import DEFAULT_HOME, DEFAULT_REGIONS, KafkaSettings, Region
from edgestream.workers.local.links import LinkName

Kind = Literal["embedding", "frame"]
Inputs = Literal["original", "shifted-a", "shifted-b"]
"""Where devices draw embeddings from: the original held-out split, or one of the two disjoint halves
of the scanner-shifted data (``pipeline.models.shift``). Frames always come from the held-out split."""
MODEL_FOR_KIND: dict[Kind, str] = {"embedding": "embedding-scorer", "frame": "frame-classifier"}
BAD_KINDS = ("tampered", "unknown_model", "wrong_shape", "garbage")
PhoneClass = Literal["low-end-phone", "high-end-phone", "sensor"]
"""The fleet's classes of SDK devices (``phones.PHONE_CLASSES`` gives each its SDK device class)."""


class FleetSettings(BaseSettings):
    """Settings of the device simulator (``EDGESTREAM_FLEET_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_FLEET_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    devices: int = Field(default=60, ge=1)
    """Number of simulated devices, spread over the world and routed to the nearest region."""
    rate_per_s: float = Field(default=150.0, gt=0)
    """Requests per second offered by the whole fleet (open loop: not slowed by slow answers)."""
    duration_s: float = Field(default=40.0, gt=0)
    """How long the fleet sends."""
    frame_fraction: float = Field(default=0.5, ge=0, le=1)
    """Share of requests that are frames (the rest are embeddings)."""
    bad_fraction: float = Field(default=0.02, ge=0, le=1)
    """Share of deliberately bad records, to exercise the dead-letter path."""
    deadline_ms: float = Field(default=250.0, gt=0)
    """How long a device waits for the edge before answering with its local fallback model."""
    fallback_reserve_ms: float = Field(default=10.0, ge=0)
    """A device (Kafka-native, or a phone through its SDK's ``fallback_reserve_ms``) starts its
    fallback this long before its deadline, so the fallback's answer is in time; an edge answer that
    comes inside the reserve is late. The floor: the reserve grows by how late the fleet's event loop
    woke lately (``lag_window_s``; ``edgestream/device/looplag.py``)."""
    lag_window_s: float = Field(default=10.0, ge=0)
    """How long a late wake of the event loop adds to the reserve (0: the fixed reserve only)."""
    max_lag_reserve_ms: float = Field(default=100.0, ge=0)
    """The most the reserve grows by, however late the loop was."""
    drain_s: float = Field(default=5.0, ge=0)
    """After sending stops, how long to keep listening for outstanding results."""
    regions: tuple[Region, ...] = DEFAULT_REGIONS
    """Regions the fleet is spread over."""
    kafka: KafkaSettings = KafkaSettings()
    """How to reach the brokers. Over TLS, each region's devices connect as ``device-<region>`` (the
    identity the broker's ACLs let write that region's ingest and read its results, nothing else), with
    certificates from ``tls_root``."""
    tls_root: Path | None = None
    """The PKI the device certificates come from (issued when missing); None: ``<home>/tls``."""
    home: Path = DEFAULT_HOME
    """Local state: key file and model cache."""
    key_file: Path | None = None
    """Region master keys; defaults to ``<home>/keys.json``."""
    label_fraction: float = Field(default=0.5, ge=0, le=1)
    """Share of requests whose ground truth a backend reports on ``cloud.labels`` (by request id), for
    the aggregator's accuracy and for retraining. Sent over TLS as the region's ``backend-<region>``
    (its certificate from ``tls_root``, issued as the devices' are), not the devices' connections."""
    enrol: bool = True
    """Enrol the devices in the key file when it (and its folder) is writable: each gets a secret salt
    of its own, as real devices are provisioned, and the workers read the enrolments from the file.
    Idempotent across runs. False, or a read-only file: keys derive as the key ring says."""
    seed: int = 7
    """Seed for device placement and input sampling, so runs are comparable."""
    phone_fraction: float = Field(default=0.0, ge=0, le=1)
    """Share of the devices that are SDK phones (``phones.py``): they ask through the regions'
    gateways with ``EdgeClient.infer`` instead of producing to Kafka. 0: none, and the fleet sends
    exactly what it sent before phones existed."""
    phone_classes: tuple[PhoneClass, ...] = Field(
        default=("low-end-phone", "high-end-phone", "sensor"), min_length=1
    )
    """Device classes dealt to the phones in turn (``phones.PHONE_CLASSES``)."""
    phone_links: tuple[LinkName, ...] = Field(default=("wifi", "4g", "3g-flaky"), min_length=1)
    """Link profiles dealt to the phones in turn, after each round of classes (``links.PROFILES``)."""
    gateways: dict[str, str] = Field(default_factory=dict)
    """Region -> its gateway's URL (``wss://host:port/v1``), for the phones."""
    gateway_ca_file: Path | None = None
    """The CA the gateways' certificates chain to; None: the CA of ``tls_root``."""

    @model_validator(mode="after")
    def _phones_have_gateways(self) -> FleetSettings:
        missing = [r.name for r in self.regions if r.name not in self.gateways]
        if self.phone_fraction > 0 and missing:
            raise ValueError(
                f"phone_fraction > 0 needs a gateway URL per region; none for {', '.join(missing)}"
            )
        return self
