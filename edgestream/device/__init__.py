"""``edgestream.device``: the reference device SDK (async), what a phone or sensor app runs.

A device talks to its region's gateway (``edgestream gateway``) over WebSocket + TLS 1.3, proves it
holds its device key by a challenge-response bound to the session, sends sealed envelopes and receives
its own sealed replies only. ``transport.py`` is the seam between the SDK's logic (deadline, local
fallback, region failover, model tier, offline queue, reconciliation) and the wire
(``docs/contract.md``, "Gateway").
"""
