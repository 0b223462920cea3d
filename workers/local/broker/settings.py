"""Settings of the local broker (``EDGESTREAM_BROKER_*``): where it lives, its ports, heap and version."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CLUSTER_SIZES = (1, 3)
"""The local cluster's sizes: one broker, or three nodes (a quorum that survives one node down)."""


class BrokerSettings(BaseSettings):
    """Settings of the local broker (``EDGESTREAM_BROKER_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_BROKER_", frozen=True, extra="forbid", use_attribute_docstrings=True
    )

    home: Path = Path(".edgestream")
    """Local state directory; the broker's data, logs and state file go in ``<home>/broker/``."""
    port: int = Field(default=0, ge=0, le=65535)
    """PLAINTEXT client port on 127.0.0.1; 0 picks a free port at each start."""
    controller_port: int = Field(default=0, ge=0, le=65535)
    """KRaft controller port on 127.0.0.1; 0 picks a free port at each start."""
    heap_mb: int = Field(default=1024, ge=128)
    """Maximum JVM heap (``-Xmx``) of the single broker, MiB. At 512 MiB the demo's broker (~1,200
    requests a second) ran G1 concurrent marking cycles that came with most of the demo's slow-request
    clusters on its 2 cores; at 1 GiB the demos' direct p99 was 32.3 and 39.3 ms against 86.3 at 512.
    The collector's log (``logs/gc.log``) showed later that the cycles went on at 1 GiB too, one every
    ~6.5 s: they came from the log cleaner's 128 MiB key map kept on the heap, not from the heap's size
    (``config.DEDUPE_BUFFER_BYTES``, now 16 MiB: mostly no cycle after start). G1 commits only what
    it needs: ~210-310 MiB in the demo."""
    brokers: int = 1
    """Nodes of the local cluster. 1: one broker in ``<home>/broker/``. 3: a KRaft cluster of three
    combined broker+controller nodes in ``<home>/cluster/node-<id>/`` (three quorum voters, topics with
    three replicas and min ISR 2), each on ports of its own, all with the same PKI and ACLs."""
    node_heap_mb: int = Field(default=256, ge=128)
    """Maximum JVM heap (``-Xmx``) of each node of a multi-node cluster, MiB: three JVMs share the box."""
    jit: Literal["tiered", "c1"] = "c1"
    """The JVM's JIT compilers. ``c1``: the quick compiler only (``-XX:TieredStopAtLevel=1``). With
    both (``tiered``, the JVM's default) the optimising C2 compiler used about 65% of a core for the
    broker's first minute and a half on the 2-core box, and the demo's devices fell back on 13% of
    their requests meanwhile; C1's code is somewhat slower at loads far above the demo's: ``tiered``
    for a broker that runs for long at high load (``bench/README.md`` has both measured)."""
    kafka_version: str = Field(default="4.1.1", pattern=r"^\d+\.\d+\.\d+$")
    """Version of ``org.apache.kafka:kafka_2.13`` to resolve and run (4.x: KRaft only)."""
    cache_dir: Path | None = None
    """Root of the jar cache (jars in ``<cache_dir>/kafka-<version>/libs``); None: ``~/.cache/edgestream``."""
    security: Literal["tls", "plaintext"] = "tls"
    """``tls``: the client listener speaks TLS 1.3 only and requires a client certificate from the
    local CA (``<home>/tls``, made on first start); principals come from certificate subjects and ACLs
    are enforced (StandardAuthorizer, nothing allowed without an ACL; ``broker`` and ``admin`` are super
    users). ``plaintext``: no encryption, no authentication, no ACLs; only when asked for explicitly."""
    extra_config: dict[str, str] = Field(default_factory=dict)
    """Broker properties that win over the generated ones (e.g. an authorizer for a test)."""

    @field_validator("brokers")
    @classmethod
    def _one_or_three(cls, brokers: int) -> int:
        if brokers not in CLUSTER_SIZES:
            raise ValueError(
                f"a local cluster has {' or '.join(map(str, CLUSTER_SIZES))} nodes, not {brokers}"
            )
        return brokers
