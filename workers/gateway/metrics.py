"""The gateway's Prometheus metrics, in a registry of their own (served on ``/metrics``).

The names are the catalogue's (``pipeline/observability/catalogue.py``, ``METRICS_GATEWAY``). Every
series carries the constant labels ``region`` and ``node``; ``edgestream_ready`` says what ``/readyz``
says. Other label values come from bounded sets (the protocol's reason codes, a few outcomes), never
from devices. Labelled children are created once and cached, so counting costs a dictionary lookup and
an add.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from edgestream.pipeline.contract.gatewayframes import REFUSAL_REASONS, REJECTION_REASONS
from edgestream.pipeline.observability import catalogue as names
from edgestream.pipeline.observability.catalogue import CONSTANT_LABELS, GATEWAY_REPLY_OUTCOMES
from edgestream.pipeline.observability.process import ProcessMetrics

REPLY_OUTCOMES = GATEWAY_REPLY_OUTCOMES
"""What happens to a reply."""


class GatewayMetrics(ProcessMetrics):
    """The counters and gauges of one gateway."""

    def __init__(self, region: str, node: str, registry: CollectorRegistry | None = None) -> None:
        super().__init__(region=region, node=node, registry=registry)
        const, reg, values = CONSTANT_LABELS, self.registry, self._values
        self.sessions = Gauge(
            names.GATEWAY_SESSIONS, "Authenticated device sessions.", const, registry=reg
        ).labels(*values)
        """Authenticated sessions."""
        self.connections = Gauge(
            names.GATEWAY_CONNECTIONS, "Open device connections.", const, registry=reg
        ).labels(*values)
        """Open connections."""
        refusals = Counter(names.GATEWAY_AUTH_REFUSALS, "Sessions refused.", (*const, "reason"), registry=reg)
        self.refused = {reason: refusals.labels(*values, reason) for reason in REFUSAL_REASONS}
        """Refusals by reason."""
        envelopes = Counter(
            names.GATEWAY_ENVELOPES, "Envelopes by outcome.", (*const, "outcome"), registry=reg
        )
        self.envelopes = {o: envelopes.labels(*values, o) for o in ("accepted", *REJECTION_REASONS)}
        """Envelopes by outcome."""
        replies = Counter(names.GATEWAY_REPLIES, "Replies by outcome.", (*const, "outcome"), registry=reg)
        self.replies = {o: replies.labels(*values, o) for o in REPLY_OUTCOMES}
        """Replies by outcome."""
        self.reports = Counter(names.GATEWAY_REPORTS, "Device reports produced.", const, registry=reg).labels(
            *values
        )
        """Reports produced."""
        self.held = Gauge(names.GATEWAY_HELD, "Replies held in mailboxes.", const, registry=reg).labels(
            *values
        )
        """Replies held."""
