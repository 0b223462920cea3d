"""Every Prometheus metric name of the long-running processes (edge worker, device gateway, aggregator,
rollout controller), spelled once, and which process serves which (``docs/observability.md``, "Metrics").

A counter is listed by its sample name (``..._total``), a histogram by its family name (served as
``<name>_bucket``, ``<name>_sum`` and ``<name>_count``), a gauge by its name. Every series also carries
the process's constant labels :data:`CONSTANT_LABELS`. The dashboard and the alert rules may use only
names listed here for the process they query; a test checks that each process serves its list.
"""

from __future__ import annotations

from typing import Final

CONSTANT_LABELS: Final = ("region", "node")
"""Labels every series of a process carries (the aggregator and the rollout controller: region
``cloud``)."""
CLOUD_REGION: Final = "cloud"
"""The ``region`` label of the processes that serve every region (aggregator, rollout controller)."""

# -- the edge worker ---------------------------------------------------------------------------------

RECORDS_CONSUMED: Final = "edgestream_records_consumed_total"
"""Records fetched from the ingest topics, before any validation."""
RESULTS: Final = "edgestream_results_total"
"""Results committed, by model and version."""
DEAD_LETTERS: Final = "edgestream_dead_letters_total"
"""Dead letters committed, by reason code."""
TRANSACTIONS: Final = "edgestream_transactions_total"
"""Commits of merged units, by outcome (committed, aborted)."""
REWINDS: Final = "edgestream_rewinds_total"
"""Partitions re-read from their committed offset after a failed commit."""
REGISTRY_REFUSED: Final = "edgestream_registry_refused_total"
"""Registry states not applied, by reason."""
RECORDS: Final = "edgestream_records_total"
"""Committed records by outcome (:data:`OUTCOMES`)."""
DEVICE_FALLBACKS: Final = "edgestream_device_fallbacks_total"
"""Fallbacks the devices report (``docs/contract.md``, "Fallback reports"), by model."""
REFUSALS: Final = "edgestream_refusals_total"
"""TLS and authorization refusals the process observes, by kind (:data:`REFUSAL_KINDS`)."""
END_TO_END: Final = "edgestream_end_to_end_seconds"
"""Capture time on the device to the commit of its result."""
UNIT: Final = "edgestream_unit_seconds"
"""A unit's processing start to its commit."""
INFERENCE: Final = "edgestream_inference_seconds"
"""One onnxruntime call, by model and version."""
BATCH_SIZE: Final = "edgestream_batch_size"
"""Records in one onnxruntime call, by model and version."""
ROUND_TRIP: Final = "edgestream_round_trip_seconds"
"""Capture time on the device to the worker sending its reply (the SLO's latency)."""
QUEUE_WAIT: Final = "edgestream_queue_wait_seconds"
"""A record's Kafka timestamp to its fetch by the worker."""
BATCH_WAIT: Final = "edgestream_batch_wait_seconds"
"""A record's fetch to the start of its inference call."""
COMMIT: Final = "edgestream_commit_seconds"
"""One commit (transaction) of the merged staged units."""
IN_FLIGHT: Final = "edgestream_in_flight_records"
"""Records held: fetched, not yet committed."""
PARTITIONS_ASSIGNED: Final = "edgestream_partitions_assigned"
"""Input partitions assigned."""
PAUSED: Final = "edgestream_paused"
"""1 while fetching is paused for backpressure."""
MODEL_INFO: Final = "edgestream_model_info"
"""1 per model served, with its version, ONNX sha256 and execution provider."""

# -- shared by several processes ---------------------------------------------------------------------

LAG_RECORDS: Final = "edgestream_consumer_lag_records"
"""Records of an input partition not yet consumed."""
LAG_SECONDS: Final = "edgestream_consumer_lag_seconds"
"""Age of the oldest record of an input partition not yet consumed; 0 when caught up."""
REGISTRY_REVISION: Final = "edgestream_registry_revision"
"""Registry revision applied (worker) or read (rollout controller), by model."""
READY: Final = "edgestream_ready"
"""1 while the process is ready, else 0."""

# -- the device gateway -----------------------------------------------------------------------------

GATEWAY_SESSIONS: Final = "edgestream_gateway_sessions"
"""Authenticated device sessions now."""
GATEWAY_CONNECTIONS: Final = "edgestream_gateway_connections"
"""Open device connections now, authenticated or not."""
GATEWAY_AUTH_REFUSALS: Final = "edgestream_gateway_auth_refusals_total"
"""Connections refused before or at authentication, by reason (the protocol's refusal codes)."""
GATEWAY_ENVELOPES: Final = "edgestream_gateway_envelopes_total"
"""Envelopes handled, by outcome (``accepted`` or a rejection reason)."""
GATEWAY_REPLIES: Final = "edgestream_gateway_replies_total"
"""Replies by what happened to them (:data:`GATEWAY_REPLY_OUTCOMES`)."""
GATEWAY_REPORTS: Final = "edgestream_gateway_reports_total"
"""Device reports produced."""
GATEWAY_HELD: Final = "edgestream_gateway_held_replies"
"""Replies held in mailboxes now."""

# -- the aggregator and the rollout controller -------------------------------------------------------

AGGREGATOR_RECORDS: Final = "edgestream_aggregator_records_total"
"""Records the aggregator read, by topic."""
AGGREGATOR_WINDOWS: Final = "edgestream_aggregator_windows_total"
"""Windows the aggregator opened, by region."""
AGGREGATOR_DRIFT_FLAGGED: Final = "edgestream_aggregator_drift_flagged_total"
"""Windows flagged for drift (each once), by region and model."""
ROLLOUT_STAGE: Final = "edgestream_rollout_stage"
"""Share of devices (0..1) routed to each version of a model."""
ROLLOUT_ADVANCES: Final = "edgestream_rollout_advances_total"
"""Stages the controller advanced, by model."""
ROLLOUT_ROLLBACKS: Final = "edgestream_rollout_rollbacks_total"
"""Canaries the controller rolled back, by model."""

# -- per process -------------------------------------------------------------------------------------

METRICS_WORKER: Final = (
    RECORDS_CONSUMED,
    RESULTS,
    DEAD_LETTERS,
    TRANSACTIONS,
    REWINDS,
    REGISTRY_REFUSED,
    RECORDS,
    DEVICE_FALLBACKS,
    REFUSALS,
    END_TO_END,
    UNIT,
    INFERENCE,
    BATCH_SIZE,
    ROUND_TRIP,
    QUEUE_WAIT,
    BATCH_WAIT,
    COMMIT,
    IN_FLIGHT,
    PARTITIONS_ASSIGNED,
    PAUSED,
    MODEL_INFO,
    LAG_RECORDS,
    LAG_SECONDS,
    REGISTRY_REVISION,
    READY,
)
"""What an edge worker's /metrics serves."""
METRICS_GATEWAY: Final = (
    GATEWAY_SESSIONS,
    GATEWAY_CONNECTIONS,
    GATEWAY_AUTH_REFUSALS,
    GATEWAY_ENVELOPES,
    GATEWAY_REPLIES,
    GATEWAY_REPORTS,
    GATEWAY_HELD,
    READY,
)
"""What a device gateway's /metrics serves (on ``EDGESTREAM_GATEWAY_HEALTH_PORT``)."""
METRICS_AGGREGATOR: Final = (
    AGGREGATOR_RECORDS,
    AGGREGATOR_WINDOWS,
    AGGREGATOR_DRIFT_FLAGGED,
    LAG_RECORDS,
    LAG_SECONDS,
    READY,
)
"""What the aggregator's /metrics serves (on its web server, beside ``/windows``)."""
METRICS_ROLLOUT: Final = (
    ROLLOUT_STAGE,
    ROLLOUT_ADVANCES,
    ROLLOUT_ROLLBACKS,
    REGISTRY_REVISION,
    READY,
)
"""What the rollout controller's /metrics serves."""
HISTOGRAMS: Final = frozenset(
    {END_TO_END, UNIT, INFERENCE, BATCH_SIZE, ROUND_TRIP, QUEUE_WAIT, BATCH_WAIT, COMMIT}
)
"""The names above that are histograms."""

OUTCOMES: Final = ("result", "dead_letter", "replayed", "refused")
"""Outcomes of :data:`RECORDS`, each committed record counted under exactly one: ``result`` answered;
``replayed`` dead-lettered as a replay of a request already accepted; ``refused`` dead-lettered for the
device's fault (bad input: undecodable, unauthentic, misplaced, unknown model, over its rate);
``dead_letter`` dead-lettered for the system's fault (stale by the time it was read, inference or
output failures). Availability is ``result / (result + dead_letter)``."""
GATEWAY_REPLY_OUTCOMES: Final = ("routed", "held", "expired", "dropped", "malformed")
"""What happens to a reply at the gateway: ``routed`` (sent to its device's live session), ``held`` (put
in the device's mailbox while it is away), ``expired`` (held past ``hold_s``), ``dropped`` (the
mailbox was full), ``malformed`` (no device id or request id to route by)."""
REFUSAL_KINDS: Final = (
    "topic_authorization",
    "group_authorization",
    "transactional_id_authorization",
    "cluster_authorization",
    "tls",
)
"""Kinds of :data:`REFUSALS`, each at 0 from the start."""


def exposed(name: str) -> tuple[str, ...]:
    """The sample names ``name`` appears as on ``/metrics``: a histogram's bucket, sum and count."""
    if name in HISTOGRAMS:
        return (f"{name}_bucket", f"{name}_sum", f"{name}_count")
    return (name,)
