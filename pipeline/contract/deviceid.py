"""Device ids in their one normal form: Unicode NFC, no control characters.

A device id is compared byte for byte everywhere: it is the Kafka record key, part of the AAD and of
the HKDF info (so of the device key), the replay guard's and the rate limiter's key, and an enrolled
device's entry in the key file. Two spellings of one name (``ü`` as U+00FC or as ``u`` + U+0308)
would be two devices with two keys, so the contract (``docs/contract.md``, section 3) allows one:
NFC (Unicode Normalization Form C), with no control character (category Cc: U+0000..U+001F,
U+007F..U+009F), which would corrupt logs, dead-letter headers and tools that print ids. The edge
refuses any other id as ``bad_device_id`` (`BadDeviceId`) before it derives a key.

Hot path: printable ASCII (what nearly every fleet uses) is NFC already, and is recognised by two
C-level string checks; only other ids pay for a regular expression and a normalisation check.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from edgestream.pipeline.errors import BadDeviceId

_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
"""Unicode category Cc: the C0 controls, DEL and the C1 controls."""


def device_id_problem(device_id: str) -> str | None:
    """None when ``device_id`` is in the contract's normal form, else what is wrong with it (for a
    message: it never quotes the id). Length and UTF-8 encodability are checked elsewhere."""
    if device_id.isascii():
        # For ASCII, isprintable() is False exactly for U+0000..U+001F and U+007F.
        return None if device_id.isprintable() else "contains a control character"
    if _CONTROL.search(device_id) is not None:
        return "contains a control character"
    if not unicodedata.is_normalized("NFC", device_id):
        return "is not in Unicode normalization form NFC"
    return None


def check_device_id(device_id: str) -> None:
    """Raise `BadDeviceId` unless ``device_id`` is NFC without control characters."""
    problem = device_id_problem(device_id)
    if problem is not None:
        raise BadDeviceId(problem)


def normal_device_id(name: str) -> str:
    """``name`` as a device id in normal form: control characters removed, then NFC (in that order:
    removing a control character can leave a combining mark next to a letter it composes with). What a
    provisioning tool issues; the result may still be empty or over 128 UTF-8 bytes (the caller
    checks)."""
    return unicodedata.normalize("NFC", _CONTROL.sub("", name))
