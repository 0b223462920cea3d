"""msgpack encoding with one ``Packer`` per thread, reused.

``msgpack.packb(obj, use_bin_type=True)`` builds a ``Packer`` (and its buffer) for every call: 1.07 µs
for a result record against 0.66 µs with a packer kept (``Packer.pack`` resets its buffer after each
call, and after an object it cannot encode). The edge encodes a result and an audit record for every
answer, the device fleet a body and an envelope for every request. One packer per thread: a packer's
buffer is not safe to share between threads.
"""

from __future__ import annotations

import threading

import msgpack

_local = threading.local()


def packb(obj: object) -> bytes:
    """``msgpack.packb(obj, use_bin_type=True)``: the same bytes, or the same exception."""
    try:
        packer: msgpack.Packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    packed: bytes = packer.pack(obj)
    return packed
