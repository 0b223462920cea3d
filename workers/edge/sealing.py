"""Sealing each fast reply to its device (``pipeline/contract/reply.py``), with a bounded key cache.

Deriving a reply key (HKDF) costs several times what sealing one reply does, so the sealer keeps the
reply keys of the devices it answered last, least recently used out first, keyed by the device key
itself: a rotated or re-enrolled device key is a new entry, and a key the ring no longer serves (retired,
forgotten) is never looked up again and ages out. The sealer runs on the worker's event loop only.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from edgestream.pipeline.contract.reply import ReplyHeader, ReplyKey, seal_reply

DEFAULT_REPLY_KEYS: Final = 65_536
"""Reply keys kept (about 200 bytes each with their cipher): the devices of a busy region's partitions."""


class ReplySealer:
    """Seals a region's replies, caching the reply keys of the devices answered last."""

    def __init__(self, region: str, cache_entries: int = DEFAULT_REPLY_KEYS) -> None:
        if cache_entries < 1:
            raise ValueError("a reply sealer caches at least one key")
        self._region = region
        self._keys: OrderedDict[bytes, ReplyKey] = OrderedDict()
        self._cache_entries = cache_entries
        self.derived = 0
        """Reply keys derived (cache misses)."""

    def seal(self, result: bytes, device_key: bytes, header: ReplyHeader) -> bytes:
        """``result`` (a result record's bytes) sealed to the device whose key is ``device_key``."""
        key = self._keys.get(device_key)
        if key is None:
            key = self._keys[device_key] = ReplyKey(device_key)
            self.derived += 1
            if len(self._keys) > self._cache_entries:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(device_key)
        return seal_reply(result, key, header, self._region)
