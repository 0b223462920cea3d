"""The gateway's Prometheus metrics, in a registry of their own (served on ``/metrics``).

Every series carries ``region`` and ``node`` as constant labels. Label values come from bounded sets
(the protocol's reason codes, a few outcomes), never from devices. Labelled children are created once
and cached, so counting costs a dictionary lookup and an add.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from edgestream.pipeline.contract.gatewayframes import REFUSAL_REASONS, REJECTION_REASONS

SESSIONS: Final = "edgestream_gateway_sessions"
"""Authenticated device sessions now."""
CONNECTIONS: Final = "edgestream_gateway_connections"
"""Open connections now, authenticated or not."""
AUTH_REFUSALS: Final = "edgestream_gateway_auth_refusals_total"
"""Connections refused before or at authentication, by reason."""
ENVELOPES: Final = "edgestream_gateway_envelopes_total"
"""Envelopes handled, by outcome (``accepted`` or a rejection reason)."""
REPLIES: Final = "edgestream_gateway_replies_total"
"""Replies by what happened to them: ``routed`` (sent to a live session), ``held`` (put in a mailbox),
``expired``, ``dropped`` (mailbox full), ``malformed`` (no device id or request id to route by)."""
REPORTS: Final = "edgestream_gateway_reports_total"
"""Device reports produced."""
HELD: Final = "edgestream_gateway_held_replies"
"""Replies held in mailboxes now."""
REPLY_OUTCOMES: Final = ("routed", "held", "expired", "dropped", "malformed")
"""What happens to a reply."""


class GatewayMetrics:
    """The counters and gauges of one gateway."""

    def __init__(self, region: str, node: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        """Where the metrics live."""
        constant = {"region": region, "node": node}
        self.sessions = Gauge(SESSIONS, "Authenticated device sessions.", registry=self.registry)
        """Authenticated sessions."""
        self.connections = Gauge(CONNECTIONS, "Open device connections.", registry=self.registry)
        """Open connections."""
        refusals = Counter(
            AUTH_REFUSALS.removesuffix("_total"), "Sessions refused.", ["reason"], registry=self.registry
        )
        self.refused = {reason: refusals.labels(reason) for reason in REFUSAL_REASONS}
        """Refusals by reason."""
        envelopes = Counter(
            ENVELOPES.removesuffix("_total"), "Envelopes by outcome.", ["outcome"], registry=self.registry
        )
        self.envelopes = {o: envelopes.labels(o) for o in ("accepted", *REJECTION_REASONS)}
        """Envelopes by outcome."""
        replies = Counter(
            REPLIES.removesuffix("_total"), "Replies by outcome.", ["outcome"], registry=self.registry
        )
        self.replies = {o: replies.labels(o) for o in REPLY_OUTCOMES}
        """Replies by outcome."""
        self.reports = Counter(
            REPORTS.removesuffix("_total"), "Device reports produced.", registry=self.registry
        )
        """Reports produced."""
        self.held = Gauge(HELD, "Replies held in mailboxes.", registry=self.registry)
        """Replies held."""
        info = Gauge("edgestream_gateway_info", "This gateway.", ["region", "node"], registry=self.registry)
        info.labels(**constant).set(1)
