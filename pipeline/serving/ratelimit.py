"""Per-device rate limit: a token bucket per device id, with a bounded number of buckets.

Pure logic: the caller passes ``now_s`` (``time.monotonic()``; the worker's clock, never the device's).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from edgestream.pipeline.errors import RateLimited


@dataclass(slots=True)
class _Bucket:
    tokens: float
    """Tokens left at ``updated_s``; a request takes one."""
    updated_s: float
    """Monotonic time ``tokens`` was computed."""


class DeviceRateLimiter:
    """Token bucket per device: ``burst`` requests at once, ``rate_per_s`` sustained.

    **Bounded memory.** At most ``max_devices`` buckets are kept, in least-recently-used order (a
    refused request counts as use). A new device beyond the bound evicts the least recently used
    bucket. A bucket that has been idle long enough to refill to ``burst`` carries no information (a
    new device starts with the same full bucket), so evicting it is lossless. Otherwise eviction
    forgives the device's debt: when it comes back it starts full, so it may send up to ``burst``
    more than its rate allows, once per eviction. That needs more than ``max_devices`` distinct
    devices active within ``burst / rate_per_s`` seconds, and never hits a device that keeps sending
    (it stays most recent). ``lossy_evictions`` counts these; size ``max_devices`` above the devices
    routed to one worker so it stays 0.

    **Not transactional.** Tokens taken by records of an aborted transaction are not given back; their
    redelivery takes tokens again (at worst a redelivered record is refused as rate limited).
    """

    def __init__(self, *, rate_per_s: float, burst: int, max_devices: int) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        if max_devices < 1:
            raise ValueError(f"max_devices must be >= 1, got {max_devices}")
        self.rate_per_s = rate_per_s
        """Sustained requests per second per device (the refill rate)."""
        self.burst = burst
        """Requests a device with a full bucket may send at once (the bucket's size)."""
        self.max_devices = max_devices
        """Buckets kept at most; beyond it the least recently used one is evicted."""
        self.lossy_evictions = 0
        """Evictions of a bucket that had not refilled (its debt was forgiven); a metric."""
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def check(self, device_id: str, now_s: float) -> None:
        """Take a token from ``device_id``'s bucket, or raise RateLimited (taking nothing)."""
        bucket = self._buckets.get(device_id)
        if bucket is None:
            if len(self._buckets) >= self.max_devices:
                self._evict_lru(now_s)
            self._buckets[device_id] = _Bucket(self.burst - 1.0, now_s)
            return
        self._buckets.move_to_end(device_id)
        elapsed_s = now_s - bucket.updated_s
        tokens = bucket.tokens
        if elapsed_s > 0:
            tokens += elapsed_s * self.rate_per_s
            if tokens > self.burst:
                tokens = self.burst
            bucket.updated_s = now_s
        if tokens < 1.0:
            bucket.tokens = tokens
            raise RateLimited(device_id, self.rate_per_s, self.burst)
        bucket.tokens = tokens - 1.0

    def __len__(self) -> int:
        """Buckets held now (a gauge for metrics)."""
        return len(self._buckets)

    def _evict_lru(self, now_s: float) -> None:
        _, bucket = self._buckets.popitem(last=False)
        if bucket.tokens + (now_s - bucket.updated_s) * self.rate_per_s < self.burst:
            self.lossy_evictions += 1
