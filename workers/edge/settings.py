"""The edge worker's settings: region, brokers, keys, models, delivery, batching and admission limits,
health, registry and run files (``EDGESTREAM_WORKER_*``, nested with ``__``)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgestream.pipeline.contract.limits import DEFAULT_MAX_ENVELOPE_BYTES
from edgestream.pipeline.registry.s3config import S3Settings, one_artifact_source
from edgestream.pipeline.serving.providers import CudaOptions, IoBinding, TensorRtOptions
from edgestream.pipeline.settings import DEFAULT_HOME, KafkaSettings

Transactions = Literal["per_partition", "per_worker"]
"""How exactly_once commits (``WorkerSettings.transactions``)."""


class WorkerSettings(BaseSettings):
    """Settings of one edge worker process (``EDGESTREAM_WORKER_*``, nested with ``__``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGESTREAM_WORKER_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    region: str = "eu-west"
    """The region this worker serves; it consumes ``edge.<region>.ingest.*``."""
    node_id: str | None = None
    """Name of this node in results and audit records; defaults to ``<region>-<host>-<pid>``."""
    kafka: KafkaSettings
    """How to reach the brokers; required (``EDGESTREAM_WORKER_KAFKA__BOOTSTRAP_SERVERS`` and the TLS
    files): a worker never guesses where its cluster is."""
    home: Path = DEFAULT_HOME
    """Local state directory: key file, model cache, run files."""
    key_file: Path | None = None
    """Region master keys (JSON, mode 0600); defaults to ``<home>/keys.json``. Re-read when it changes,
    so a rotation (``edgestream keys rotate``) takes effect without a restart."""
    keys_secret: SecretStr | None = Field(default=None, validation_alias="EDGESTREAM_KEYS")
    """The key file's JSON itself, from the ``EDGESTREAM_KEYS`` secret, instead of ``key_file``."""
    models: tuple[str, ...] = ("embedding-scorer", "frame-classifier")
    """Model families this worker serves."""
    model_size: Literal["tiny", "medium", "full"] = "medium"
    """Which size of each family to serve."""
    delivery: Literal["exactly_once", "at_least_once"] = "exactly_once"
    """exactly_once: outputs and offsets commit together in Kafka transactions (``transactions``); a
    crash or abort repeats nothing a read_committed reader sees. at_least_once: outputs are
    acknowledged, then offsets committed; cheaper (no transaction round trips), but a crash between the
    two repeats that unit's outputs."""
    max_batch: int = Field(default=64, ge=1)
    """Most records in one unit of work (and so in one onnxruntime call per model). Larger units did not
    drain a backlog faster (2026-12-07, the bench's drain of 30,000, runs alternating: 64 10,852-13,852
    items/s in four, 128 9,563-14,537 in four, 256 11,839-13,393 in three, the box's spread), and in
    process (``bench.workercpu``) 128 cost 58.1 us a record against 54.2 at 64 (onnxruntime's own cost a
    record rises with the batch: 10.2 against 8.9 us)."""
    max_wait_ms: float = Field(default=0.0, ge=0)
    """Longest the first record of a unit waits for the unit to fill. 0: a unit takes what has been
    fetched and closes at once; under load the records fetched while a unit is processed make the
    next unit's batch. Measured side by side (bench, 100-2,000 req/s): 4 ms added its 4 ms to the
    median (p50 8.7 vs 5.0 ms at 100/s) and saved no CPU per request; a slow model on a GPU, whose
    calls cost little more for a bigger batch, may want a few ms."""
    sla_ms: float = Field(default=50.0, gt=0)
    """End-to-end latency budget from capture time; batches close early to meet it."""
    max_in_flight: int = Field(default=2048, ge=1)
    """Records held (fetched, not yet committed) before the worker pauses its partitions."""
    fetch_max_records: int = Field(default=500, ge=1)
    """Upper bound on records returned by one ``getmany``."""
    fetch_max_wait_ms: int = Field(default=500, ge=1, le=10_000)
    """Longest the broker holds a fetch that finds no records. A fetch returns as soon as one record
    is there (``fetch_min_bytes`` 1), so a long wait costs no latency (measured side by side: device p50
    and p99 no worse at 100 and 300 req/s than with 20 ms), while a short one makes an idle worker and
    its broker answer empty fetches many times a second (20 ms: 35% of a core for the broker, 4% for
    the worker; 500 ms: 3% and 0.6%)."""
    fetch_interval_ms: float = Field(default=5.0, ge=0, le=1000)
    """Under load, the least time between two fetches that return records (``pacing.py``): while
    records arrive at two or more an interval, the worker waits out the interval after a fetch, its
    partitions paused, so each fetch carries what arrived meanwhile; slower, it fetches at once. 0: never
    waits. Measured side by side (bench, 1,000 req/s, two runs each): 5 ms cut the worker's CPU per
    request 0.65-0.67 -> 0.33-0.34 ms and the broker's 0.67-0.69 -> 0.39 ms, added ~2.6 ms to the
    device's median (4.5-4.9 -> 7.2-7.3 ms) and nothing to its p99 (18.5-18.9 -> 17.9-18.6 ms); at 100
    and 300 req/s it does not engage. Longer is less CPU for more latency (2026-12-05, Intel box, pipeline
    only, two runs each, warm broker): 15 ms against 5 ms at 1,000 req/s, worker 0.25-0.34 against
    0.39-0.45 ms per request, p50 15-20 against 9-11 ms; at 2,000 req/s p99 62-69 against 43-48 ms."""
    fetch_target_records: float = Field(default=0.0, ge=0)
    """Under load, the records a paced fetch aims to carry: the interval between fetches is stretched to
    ``fetch_target_records / rate`` (the rate over the worker's partitions), at least
    ``fetch_interval_ms`` and at most ``fetch_interval_max_ms``. 0 (the default): the interval is always
    ``fetch_interval_ms``. For a deployment whose deadlines leave room, it trades latency for CPU where
    a fixed long interval would cost the most latency at higher loads. Measured side by side
    (2026-12-06, bench, pipeline and echo, two runs each, 15 records up to 20 ms against the default):
    at 1,000 req/s worker CPU 0.27-0.30 against 0.33-0.49 ms per request, but p50 14.5-15.3 against
    6.4-8.6 ms and p99 31.5-32.4 against 13.5-26.4 ms (over twice the echo's in one run); at 2,000 req/s
    p99 29.7-35.4 against 17.2-31.8 ms (a fixed 15 ms interval: 62-69 ms). A sweep at 1,000 req/s
    (2026-12-06, pipeline and the non-transactional echo in each run; target / longest interval: worker
    CPU ms per request, device p99, p99 over the echo's): default 0.32, 14.7 ms, 0.78x; 10 / 20 ms 0.26,
    19.7 ms, 1.65x; 14 / 28 ms 0.23-0.25, 22.7-26.0 ms, 1.9-2.0x (three runs); 18 / 36 ms 0.24, 30.8 ms,
    2.09x; 25 / 40 ms 0.18, 36.0 ms, 2.93x; 50 / 80 ms 0.15, 71.1 ms, 5.3x. Again 2026-12-07, three
    alternating pairs at 1,000 req/s (pipeline and echo in each run; 10 / 20 ms against the default):
    worker CPU 0.276, 0.299, 0.282 against 0.311, 0.398, 0.315 ms a request (units 1,128-1,144 against
    1,747-1,856), p50 10.4-10.9 against 6.5-8.3 ms, p99 over the echo's 1.08, 1.22, 2.08 against 0.77,
    1.49, 1.27. Not the default: where the worker's CPU reaches 0.25 ms a request, the device's p99
    reaches twice the echo's."""
    fetch_interval_max_ms: float = Field(default=20.0, ge=0, le=1000)
    """The longest interval ``fetch_target_records`` may stretch the pacing to (never below
    ``fetch_interval_ms``)."""
    fetch_pacing_from_per_s: float = Field(default=400.0, ge=0)
    """Fetches are paced only while records arrive at least this fast (records per second over the
    worker's partitions, ``pacing.py``) and an interval would hold two of them: below it, a fetch's
    fixed cost spread over few records a second is little CPU, and a light load is answered without the
    interval's wait."""
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The worker process's event loop: uvloop (libuv; its TLS and socket writes cost less CPU per
    Kafka request) or the standard library's."""
    commit_interval_ms: float = Field(default=100.0, ge=0)
    """Least time between the starts of two commits (exactly-once: transactions; at-least-once:
    acknowledged outputs then offsets). Devices get fast replies before any commit, so this delays only
    what backends read committed; a longer interval makes fewer, larger transactions (a fixed cost each
    for the worker and the broker) and repeats more after a crash. At 1,000 req/s 250 ms saved nothing
    the box could see (2026-12-07, three alternating pairs, pipeline only: worker CPU 0.352, 0.331,
    0.361 against 0.328, 0.364, 0.365 ms a request, broker 0.475-0.533 against 0.481-0.559)."""
    max_envelope_bytes: int = Field(default=DEFAULT_MAX_ENVELOPE_BYTES, ge=256)
    """Records larger than this are dead-lettered before parsing. The default (1,032,192 bytes) leaves
    a dead letter room for its headers within the producer's request limit, so an admitted record's
    dead letter is always its whole copy (``pipeline/contract/limits.py``); a larger record's is
    truncated."""
    max_body_bytes: int = Field(default=4 << 20, ge=256)
    """Decompressed bodies larger than this are refused (decompression bombs)."""
    max_age_ms: int = Field(default=60_000, ge=1)
    """A capture time older than this is refused as stale (and bounds how long ids are remembered)."""
    max_future_skew_ms: int = Field(default=5_000, ge=0)
    """A capture time further than this in the future is refused as stale (device clock ahead)."""
    max_replay_ids_per_device: int = Field(default=4096, ge=1)
    """Request ids remembered per device (and input partition); past it the device's oldest go and its
    own age limit tightens. Above ``device_burst + device_rate_per_s * (max_age_ms +
    max_future_skew_ms) / 1000`` (3,350 by default), a device within its rate never reaches it."""
    max_replay_devices: int = Field(default=100_000, ge=1)
    """Devices whose request ids are remembered; past it the least recently accepted device's ids go
    (see ``pipeline/serving/replay.py`` for why that reopens no replay window)."""
    max_replay_ids: int = Field(default=1_000_000, ge=1)
    """Request ids remembered over every device; past it, as past ``max_replay_devices``."""
    replay_rebuild_timeout_s: float = Field(default=10.0, gt=0)
    """How long a newly assigned partition may take to read back its last ``max_age_ms +
    max_future_skew_ms`` of records and remember their request ids before it is served. Past it the
    partition is served with a floor instead (``workers/edge/replaymemory.py``)."""
    device_rate_per_s: float = Field(default=50.0, gt=0)
    """Sustained requests per second one device may send; more are dead-lettered as rate_limited."""
    device_burst: int = Field(default=100, ge=1)
    """Requests a device may send at once above its rate."""
    max_tracked_devices: int = Field(default=100_000, ge=1)
    """Rate-limit buckets kept; the least recently used go first."""
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    """onnxruntime execution providers, in order of preference, e.g.
    ``["TensorrtExecutionProvider","CUDAExecutionProvider"]`` on an NVIDIA GPU (needs
    ``edgestream[gpu]``). One that is not available stops the worker before it is ready, unless
    ``allow_cpu_fallback``."""
    allow_cpu_fallback: bool = False
    """Serve without a requested provider that is not available (a warning, and the metrics' provider
    label says what runs) instead of refusing to load the models."""
    cuda: CudaOptions = CudaOptions()
    """CUDA provider options (``EDGESTREAM_WORKER_CUDA__DEVICE_ID``...); TensorRT uses its device too."""
    tensorrt: TensorRtOptions = TensorRtOptions()
    """TensorRT provider options: FP16, the on-disk engine cache (``<home>/tensorrt`` by default)."""
    io_binding: IoBinding = "auto"
    """Run batches through onnxruntime's IO binding: ``auto`` on a GPU provider, ``always``, ``never``."""
    inline_inference_ms: float = Field(default=1.0, ge=0)
    """A model whose calls take less than this on average runs on the event loop itself: handing a
    call to the inference thread and back costs more CPU than such a call. Slower models run in the
    thread, so the loop keeps fetching and committing meanwhile. 0: always in the thread."""
    intra_op_threads: int = Field(default=1, ge=1)
    """onnxruntime intra-op threads; 1 leaves the other core to the event loop and the broker."""
    transactions: Transactions = "per_worker"
    """How exactly_once commits. per_worker (the default: measured side by side at 1,000 req/s, device
    p99 66-94 ms against 129-211 ms per_partition, and 7-15% less broker CPU per request) or
    per_partition: a transactional producer per input partition and a
    transaction per partition and unit (``sinks.py``); the partition's next owner fences the previous
    one by its transactional id. per_worker: one producer per worker and one transaction per unit
    (``txnsink.py``), its offsets committed with the group generation so that the group coordinator
    refuses a previous owner's commit after a rebalance (KIP-447); fewer broker requests per unit. Give
    each worker a stable ``node_id`` (a pod name): its transactional id derives from it."""
    transaction_timeout_ms: int | None = Field(default=None, ge=1000)
    """Broker aborts a transaction left open longer than this (a worker that died mid-commit). Default:
    60 s per_partition (the next owner of a partition aborts a dead owner's transaction at once), 10 s
    per_worker (a dead worker's open transaction holds back read_committed readers of its outputs and
    the positions of its inputs until this timeout, unless a worker with the same node id starts)."""
    retry_backoff_max_ms: int = Field(default=5_000, ge=1)
    """Upper bound of the backoff between retries of a partition whose transaction failed."""
    health_host: str = "127.0.0.1"
    """Where /livez, /readyz and /metrics listen (0.0.0.0 in a pod)."""
    health_port: int | None = None
    """Port of the health and metrics server: None for no server, 0 for any free port."""
    stall_after_s: float = Field(default=30.0, gt=0)
    """Not live when the main loop has made no progress for this long."""
    cloud: bool = True
    """Send the cloud partial window summaries (every transaction) and anonymised samples, in the same
    transactions as the results they describe (``pipeline/contract/cloud.py``)."""
    sample_fraction: float = Field(default=0.1, ge=0, le=1)
    """Share of answered embedding requests sent to ``cloud.samples`` (chosen by request id, so a
    retried transaction samples the same ones). Frames are never sampled."""
    registry: bool = False
    """Follow the model registry (``control.models``): serve the versions each model's state names,
    each verified (sha256 and Ed25519 signature) before it loads, and route each device to stable or
    canary; report the revisions applied on ``control.workers`` (the rollout's lag guard). Without it,
    the worker serves ``model_size`` of each family, built locally."""
    registry_home: Path | None = None
    """The registry's trusted keys (``trusted-keys.json``) and, without ``registry_url``, its artifact
    store (``artifacts/``); defaults to ``<home>/registry``."""
    registry_url: str | None = Field(default=None, pattern=r"^https://[^/?#]+/?$")
    """``https://host[:port]`` of ``edgestream registry serve``: fetch artifacts from there (mutual TLS
    with the worker's Kafka identity, ``kafka.ssl_*``) instead of reading ``<registry_home>/artifacts``;
    how a worker on any host follows a rollout. Each is checked against its signed sha256 and cached."""
    registry_ca_file: Path | None = None
    """CA bundle the artifact server's certificate must chain to; defaults to ``kafka.ssl_ca_file`` (one
    PKI for both, as ``edgestream certs`` makes it; on Kubernetes the brokers' CA is Strimzi's)."""
    registry_s3: S3Settings | None = None
    """The registry's artifacts in an S3-compatible bucket instead (``EDGESTREAM_WORKER_REGISTRY_S3__URL``
    ``=s3://bucket/prefix``, with ``__ENDPOINT_URL``, ``__ACCESS_KEY_ID``, ``__SECRET_ACCESS_KEY`` or
    ``__CREDENTIALS_FILE``, ``__CA_FILE``: ``pipeline/registry/s3config.py``): each fetched, checked
    against its signed sha256 and cached in ``registry_cache_dir``; a worker on any host follows a
    rollout without ``registry serve``. Not with ``registry_url``: one source of artifacts."""
    registry_cache_dir: Path | None = None
    """Where verified artifacts are cached on this host (``sha256/ab/<hash>``, and the ``.onnx`` files
    loaded); defaults to ``<registry_home>/cache``. Must be writable."""
    registry_timeout_s: float = Field(default=30.0, gt=0)
    """Bound on connecting to ``registry_url`` and on each read from it."""
    registry_attempts: int = Field(default=3, ge=1)
    """Tries of one artifact fetch (a failed connection, a timeout, a 5xx); then the version is refused
    (``artifact_unavailable``) and the worker keeps serving what it served."""
    registry_start_timeout_s: float = Field(default=120.0, gt=0)
    """With ``registry``: bound on reading ``control.models`` to its end and loading what its current
    states need, at start, before the worker joins its group. Past it (brokers unreachable, artifact
    server down) the worker stops without having fetched anything; see ``workers/edge/following.py``."""
    routing_key: SecretStr | None = None
    """Key of the device hash that picks stable or canary; defaults to one derived from the region's
    current master key (so every worker of a region routes a device the same way)."""
    drain_timeout_s: float = Field(default=30.0, gt=0)
    """At a stop, how long the unit in flight and the units already fetched may take to commit. Past
    it the worker gives up on them (nothing later commits either) and the next owner re-reads them."""
    ready_file: Path | None = None
    """Written (JSON) once models are loaded and partitions assigned; removed at exit."""
    stats_file: Path | None = None
    """Written (JSON, atomically) with this worker's counters, the versions it serves and the registry
    revisions it applied: every ``stats_interval_s``, after each registry state applied, and at exit.
    The rollout controller reads the revisions there (``workers/rollout_controller.py``)."""
    stats_interval_s: float = Field(default=5.0, gt=0)
    """How often the stats file is rewritten while the worker runs."""

    @field_validator("registry_s3")
    @classmethod
    def _one_artifact_source(cls, value: S3Settings | None, info: ValidationInfo) -> S3Settings | None:
        one_artifact_source(info.data.get("registry_url"), value)
        return value

    def resolved_transaction_timeout_ms(self) -> int:
        """``transaction_timeout_ms`` or the default of ``transactions``."""
        if self.transaction_timeout_ms is not None:
            return self.transaction_timeout_ms
        return 10_000 if self.transactions == "per_worker" else 60_000

    def resolved_node_id(self) -> str:
        """``node_id`` or ``<region>-<host>-<pid>``."""
        return self.node_id or f"{self.region}-{socket.gethostname()}-{os.getpid()}"
