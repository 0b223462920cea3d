"""The backend's subscriber, under the name backend teams import: ``edgestream.results``.

A backend reads its region's committed results (and, when asked, dead letters) as ``backend-<region>``,
decoded, with at-least-once delivery and duplicates dropped by request id; the implementation is
``edgestream.pipeline.results`` (``docs/contract.md``, "Backends"; ``examples/backend/``).
"""

from edgestream.pipeline.results import (
    Decoded,
    ErrorCallback,
    Handler,
    ResultSubscriber,
    SubscriberStats,
    subscribe,
)

__all__ = ["Decoded", "ErrorCallback", "Handler", "ResultSubscriber", "SubscriberStats", "subscribe"]
