"""Per-device mailboxes of sealed replies, and the token bucket the gateway's rates are kept with.

A reply is held in its device's mailbox from the moment the gateway reads it until the device acks it
or ``hold_s`` passes, at most ``hold_max`` per device (the oldest is dropped beyond it). A connected
device gets each reply at once; a device that reconnects gets every held, unacked reply again. With
the SDK acking what it received and dropping second copies, a disconnect loses nothing and duplicates
nothing. Every reply expires on one clock whether or not its device is connected, in one sweep over an
insertion-ordered queue (``hold_s`` is the same for all, so expiry order is insertion order): nothing
is scanned per device. Pure logic: the caller passes the time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class MailboxCounts:
    """What happened to replies, for the metrics."""

    held: int = 0
    """Replies put in a mailbox."""
    acked: int = 0
    """Removed by the device's ack."""
    expired: int = 0
    """Removed after ``hold_s`` unacked."""
    dropped: int = 0
    """Removed because the device's mailbox was full."""


@dataclass(slots=True)
class _Held:
    expires_at: float
    frame: bytes


@dataclass(slots=True)
class Mailboxes:
    """Every device's held replies, by request id, in arrival order."""

    hold_s: float
    """How long a reply is held."""
    hold_max: int
    """Most replies held per device."""
    counts: MailboxCounts = field(default_factory=MailboxCounts)
    """Running totals."""
    _boxes: dict[str, dict[bytes, _Held]] = field(default_factory=dict)
    _expiry: deque[tuple[float, str, bytes]] = field(default_factory=deque)

    def put(self, device_id: str, request_id: bytes, frame: bytes, now: float) -> None:
        """Hold ``frame`` (the reply frame as sent) for ``device_id``. A second reply with the same
        request id replaces the first (the device dedupes copies anyway)."""
        box = self._boxes.get(device_id)
        if box is None:
            box = self._boxes[device_id] = {}
        expires_at = now + self.hold_s
        box.pop(request_id, None)
        box[request_id] = _Held(expires_at, frame)
        self._expiry.append((expires_at, device_id, request_id))
        self.counts.held += 1
        if len(box) > self.hold_max:
            del box[next(iter(box))]
            self.counts.dropped += 1

    def ack(self, device_id: str, request_ids: list[bytes]) -> None:
        """The device received these replies: stop holding them."""
        box = self._boxes.get(device_id)
        if box is None:
            return
        for request_id in request_ids:
            if box.pop(request_id, None) is not None:
                self.counts.acked += 1
        if not box:
            del self._boxes[device_id]

    def held(self, device_id: str, now: float) -> list[bytes]:
        """The frames held for ``device_id`` that have not expired, oldest first."""
        box = self._boxes.get(device_id)
        if box is None:
            return []
        return [held.frame for held in box.values() if held.expires_at > now]

    def expire(self, now: float) -> int:
        """Remove every reply whose time is up; how many went."""
        gone = 0
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            expires_at, device_id, request_id = expiry.popleft()
            box = self._boxes.get(device_id)
            if box is None:
                continue
            held = box.get(request_id)
            if held is not None and held.expires_at == expires_at:
                del box[request_id]
                gone += 1
                if not box:
                    del self._boxes[device_id]
        self.counts.expired += gone
        return gone

    @property
    def devices(self) -> int:
        """Devices with at least one held reply."""
        return len(self._boxes)

    def __len__(self) -> int:
        return sum(len(box) for box in self._boxes.values())


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens a second up to ``burst``; each envelope (or frame) takes one."""

    rate: float
    burst: float
    tokens: float
    last: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        """A bucket that starts full."""
        return cls(rate, burst, burst, now)

    def take(self, now: float) -> bool:
        """Take a token if there is one."""
        tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True

    def wait_s(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens, in advance if there are not as many: how long to wait before acting on
        them (0.0 when they were there). Used for pacing, where the caller sleeps instead of refusing."""
        tokens = min(self.burst, self.tokens + (now - self.last) * self.rate) - cost
        self.last = now
        self.tokens = tokens
        return 0.0 if tokens >= 0.0 else -tokens / self.rate

    def refilled(self, now: float) -> bool:
        """Whether the bucket is full again at ``now`` (forgetting it then changes nothing)."""
        return self.tokens + (now - self.last) * self.rate >= self.burst
