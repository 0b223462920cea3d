"""Sealing each fast reply to its device (``pipeline/contract/reply.py``), with a bounded key cache.

Deriving a reply key (HKDF) costs several times what sealing one reply does, so the sealer keeps the
reply keys of the devices it answered, keyed by the device key itself: a rotated or re-enrolled device
key is a new entry, and a key the ring no longer serves (retired, forgotten) is never looked up again
and ages out. A full cache forgets the key derived first (a hit is one dict read; the same as least
recently used while a region's devices fit in it, as ``KeyRing``'s cache).

Each reply's 12-byte nonce comes from the OS's secure generator, drawn `NONCES_PER_DRAW` at a time
(one ``getrandom`` call was a fifth of sealing a reply); a forked child never uses its parent's drawn
nonces. The sealer runs on the worker's event loop only.
"""

from __future__ import annotations

import os
from typing import Final

from edgestream.pipeline.contract.envelope import NONCE_BYTES
from edgestream.pipeline.contract.reply import ReplyHeader, ReplyKey, seal_reply

DEFAULT_REPLY_KEYS: Final = 65_536
"""Reply keys kept (about 200 bytes each with their cipher): the devices of a busy region's partitions."""

NONCES_PER_DRAW: Final = 256
"""Nonces drawn from the OS in one call."""

_forks = 0
"""Forks this process came out of (`_forked`): nonces drawn before a fork are never used after it."""


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


class ReplySealer:
    """Seals a region's replies, caching the reply keys of the devices answered last."""

    def __init__(self, region: str, cache_entries: int = DEFAULT_REPLY_KEYS) -> None:
        if cache_entries < 1:
            raise ValueError("a reply sealer caches at least one key")
        self._region = region
        self._keys: dict[bytes, ReplyKey] = {}
        self._cache_entries = cache_entries
        self._nonces = b""
        self._next_nonce = 0
        self._drawn_in = _forks
        self.derived = 0
        """Reply keys derived (cache misses)."""

    def seal(self, result: bytes, device_key: bytes, header: ReplyHeader) -> bytes:
        """``result`` (a result record's bytes) sealed to the device whose key is ``device_key``."""
        key = self._keys.get(device_key)
        if key is None:
            if len(self._keys) >= self._cache_entries:
                del self._keys[next(iter(self._keys))]
            key = self._keys[device_key] = ReplyKey(device_key)
            self.derived += 1
        return seal_reply(result, key, header, self._region, nonce=self._nonce())

    def _nonce(self) -> bytes:
        """12 bytes from the OS's secure generator, never handed out twice (nor in a forked child)."""
        at = self._next_nonce
        if at == len(self._nonces) or self._drawn_in != _forks:
            self._nonces, at, self._drawn_in = os.urandom(NONCE_BYTES * NONCES_PER_DRAW), 0, _forks
        self._next_nonce = at + NONCE_BYTES
        return self._nonces[at : at + NONCE_BYTES]
