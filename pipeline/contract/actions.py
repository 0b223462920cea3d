"""What a device does about each dead-letter reason: the per-reason action table of ``docs/contract.md``
(section 9, "What a device does about each reason"), as data a device SDK can act on.

A refused request gets no reply (contract section 10), so a device learns a reason only from what
relays it (a gateway that reports refusals, its team's ``edgestream dlq inspect``); whatever relays it
passes the stable reason code of ``pipeline/errors.py``, and the device acts by this table. Every
reason a worker can dead-letter has exactly one row (``tests/pipeline/contract/test_actions.py``
checks it against the error classes and against the table in the document).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from collections.abc import Mapping

Action = Literal["fix_client", "refresh_catalogue", "reprovision_key", "correct_clock", "back_off", "drop"]
"""What a device does: fix its build (a bug or a setting: report it, do not retry), refresh its model
catalogue, fetch its device key again, correct its clock, wait before sending again, or nothing
beyond dropping the request (answering it from its local fallback model)."""

ACTION_LABELS: Final[Mapping[Action, str]] = MappingProxyType(
    {
        "fix_client": "fix the client",
        "refresh_catalogue": "refresh the catalogue",
        "reprovision_key": "re-provision the key",
        "correct_clock": "correct the clock",
        "back_off": "back off",
        "drop": "drop",
    }
)
"""How the document's table spells each action."""


@dataclass(frozen=True, slots=True)
class DeviceAction:
    """One row of the table."""

    action: Action
    """What the device does."""
    resend: bool
    """True when, once it has acted, the device may resend the same envelope unchanged (inside the
    replay window): only when the refused copy left no trace at the edge. Otherwise whatever it sends
    next is a new envelope (a new request id, nonce and capture time)."""
    advice: str
    """The row's explanation, as the document shows it."""


_FIX_PRODUCER: Final = (
    'The record is not where its device id puts it: fix the producer ("Where a record goes").'
)
"""The advice of the three placement refusals (record key, partition, topic)."""

DEVICE_ACTIONS: Final[Mapping[str, DeviceAction]] = MappingProxyType(
    {
        "oversized": DeviceAction(
            "fix_client", False, "Over a size limit (above): send a smaller input or a smaller model tier."
        ),
        "undecodable": DeviceAction("fix_client", False, "Not an envelope of section 3: an encoder bug."),
        "bad_version": DeviceAction(
            "fix_client", False, "Send contract version 1, the one this edge speaks."
        ),
        "bad_device_id": DeviceAction(
            "fix_client", False, "Send the id exactly as provisioned, in NFC, without control characters."
        ),
        "unknown_model": DeviceAction(
            "refresh_catalogue", False, "The model or pinned version is not served here: pick one listed."
        ),
        "pin_not_allowed": DeviceAction(
            "refresh_catalogue", False, "That version may not be pinned (now): unpin, or pin one listed."
        ),
        "bad_shape": DeviceAction(
            "refresh_catalogue", False, "Not the model's input spec (section 4): encode to the refreshed one."
        ),
        "unknown_key": DeviceAction(
            "reprovision_key", False, "The region has no such key id: fetch the key of its current one."
        ),
        "retired_key": DeviceAction(
            "reprovision_key", False, "The key id's rotation window ended: fetch the key of the current one."
        ),
        "forgotten_device": DeviceAction(
            "reprovision_key", False, "The id was erased for good: stop using it; provision a new id."
        ),
        "bad_tag": DeviceAction(
            "reprovision_key", False, "Wrong key; if a fresh key fails too, fix the client (test vectors)."
        ),
        "bad_compression": DeviceAction("fix_client", False, "Not one zstd frame of section 5: a bug."),
        "bad_body": DeviceAction("fix_client", False, "Not a body of section 4: an encoder bug."),
        "non_finite": DeviceAction(
            "drop", False, "NaN or infinity in the input (fix the encoder) or in the model's answer."
        ),
        "key_mismatch": DeviceAction("fix_client", False, _FIX_PRODUCER),
        "wrong_partition": DeviceAction("fix_client", False, _FIX_PRODUCER),
        "wrong_topic": DeviceAction("fix_client", False, _FIX_PRODUCER),
        "stale": DeviceAction(
            "correct_clock", False, "Outside the skew band when read: correct the clock, capture again."
        ),
        "replayed": DeviceAction("drop", False, "A copy of a request already answered: nothing to do."),
        "rate_limited": DeviceAction(
            "back_off", True, "Over the device's rate: wait, then resend inside the replay window."
        ),
        "infer_failed": DeviceAction(
            "back_off", False, "The edge could not run the model; the request is spent."
        ),
        "internal": DeviceAction("back_off", False, "The edge failed on this record; the request is spent."),
    }
)
"""Every dead-letter reason, in the order of section 9's table, with what a device does about it."""

GATEWAY_ACTIONS: Final[Mapping[str, DeviceAction]] = MappingProxyType(
    {
        # Refusals: the session was not established (``refused``, then the connection closes).
        "bad_frame": DeviceAction("fix_client", False, "The gateway could not read a frame: a client bug."),
        "bad_device_id": DEVICE_ACTIONS["bad_device_id"],
        "unknown_device": DeviceAction(
            "reprovision_key",
            False,
            "No auth key of this id and key id in the gateway's directory: re-provision.",
        ),
        "bad_signature": DeviceAction(
            "reprovision_key",
            False,
            "The signature did not verify: wrong key; if a fresh one fails, fix the client.",
        ),
        "auth_timeout": DeviceAction(
            "back_off", False, "No auth in time (a slow link): reconnect after a pause."
        ),
        "overloaded": DeviceAction(
            "back_off", False, "The gateway is full: reconnect later or use the next region."
        ),
        # Rejections: the session goes on, this envelope was not produced.
        "undecodable": DEVICE_ACTIONS["undecodable"],
        "device_mismatch": DeviceAction(
            "fix_client", False, "The envelope's device id is not the session's: send only your own."
        ),
        "too_large": DeviceAction(
            "fix_client", False, "Over the envelope (or report) limit: a smaller input or model tier."
        ),
        "rate_limited": DEVICE_ACTIONS["rate_limited"],
        "unavailable": DeviceAction(
            "back_off", True, "The gateway could not produce it: resend it unchanged, or fail over."
        ),
    }
)
"""What a device does about each reason a gateway refuses a session or rejects an envelope for
(``docs/contract.md``, "Gateway"). Codes shared with `DEVICE_ACTIONS` have the same row."""

UNKNOWN_REASON_ACTION: Final = DeviceAction(
    "back_off", False, "A reason this client does not know (a newer edge): back off, report it."
)
"""What a device does about a reason code not in `DEVICE_ACTIONS`."""


def device_action(reason: str) -> DeviceAction:
    """The row for ``reason`` (a dead-letter reason, or a gateway's refusal or rejection);
    `UNKNOWN_REASON_ACTION` for a code this build does not know."""
    return DEVICE_ACTIONS.get(reason) or GATEWAY_ACTIONS.get(reason, UNKNOWN_REASON_ACTION)
