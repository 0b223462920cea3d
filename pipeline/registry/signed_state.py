"""Signed rollout states: the ``control.models`` record value, signed by a registry key the workers pin.

A rollout state (:class:`~edgestream.pipeline.registry.state.ModelState`) says which versions serve
whom; whoever can write it steers every worker that follows the registry. So every state the publisher
writes (``edgestream registry publish|promote|rollback|pin``, the rollout controller) is signed with the
registry's Ed25519 key, the same key and trusted-keys file as manifests (``signing.py``), and a worker
applies a state only when:

1. the record parses (:class:`MalformedRegistryRecord`, reason ``bad_registry_record``);
2. it is signed at all (:class:`UnsignedState`, ``unsigned_state``: the unsigned format 1);
3. its key is pinned (:class:`UntrustedSigner`, ``untrusted_signer``) and the signature verifies over
   the exact state bytes (:class:`BadStateSignature`, ``bad_signature``);
4. the state inside names the record's key as its model, and parses (``bad_registry_record``);
5. its revision is above the one the worker applied for that model (:class:`StaleRevision`,
   ``stale_revision``): an older signed state replayed onto the topic is a rollback nobody asked for.

The signature is checked before the state's body is parsed, so unauthenticated bytes reach only the
small envelope parser. The record is JSON: ``{"format": 2, "key_id": "ed25519:…", "signature":
base64, "state": "<the state's JSON text>"}``; the signature covers ``b"edgestream.state.v1\\0"`` +
the key id + ``b"\\0"`` + the state text's UTF-8 bytes, so it cannot be replayed as a manifest's, nor
with another key id.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final

from edgestream.pipeline.contract import fields as f
from edgestream.pipeline.registry.errors import (
    BadStateSignature,
    MalformedRegistryRecord,
    StaleRevision,
    UnsignedState,
    UntrustedSigner,
)
from edgestream.pipeline.registry.signing import SigningKey, TrustedKeys
from edgestream.pipeline.registry.state import STATE_FORMAT, ModelState

SIGNED_STATE_FORMAT: Final = 2
"""``format`` of a signed state record (format 1, :data:`STATE_FORMAT`, is the unsigned state)."""
STATE_CONTEXT: Final = b"edgestream.state.v1\0"
"""Prefix of every signed state message (domain separation from manifests)."""
MAX_RECORD_BYTES: Final = 4 << 20
"""Largest record value parsed at all (a state with 200 history entries is tens of KiB)."""
_SIGNATURE_BYTES: Final = 64


@dataclass(frozen=True, slots=True)
class SignedState:
    """A state's exact JSON bytes, the id of the key that signed them, and the signature."""

    body: bytes
    """The state's JSON (:meth:`ModelState.to_bytes`), exactly as signed."""
    key_id: str
    """Id of the signing key (``ed25519:<16 hex>``)."""
    signature: bytes
    """64-byte Ed25519 signature over :meth:`message`."""

    def message(self) -> bytes:
        """What the signature covers: context, key id, a zero byte, the state bytes."""
        return STATE_CONTEXT + self.key_id.encode() + b"\0" + self.body

    def to_bytes(self) -> bytes:
        """The ``control.models`` record value."""
        return f.dump_json(
            {
                "format": SIGNED_STATE_FORMAT,
                "key_id": self.key_id,
                "signature": base64.b64encode(self.signature).decode(),
                "state": self.body.decode(),
            }
        )

    @classmethod
    def from_bytes(cls, value: bytes) -> SignedState:
        """The envelope of a record value (the state inside is not parsed yet). Total: raises only
        :class:`UnsignedState` or :class:`MalformedRegistryRecord`."""
        if type(value) is not bytes or len(value) > MAX_RECORD_BYTES:
            raise MalformedRegistryRecord("registry record is not bytes, or larger than allowed")
        try:
            data = f.mapping(f.load_json(value), "registry record")
            if data.get("format") == STATE_FORMAT:
                raise UnsignedState("registry record is an unsigned state (format 1)")
            if data.get("format") != SIGNED_STATE_FORMAT:
                raise f.FieldError(f"not a signed state record (format {SIGNED_STATE_FORMAT})")
            key_id = f.text(f.field(data, "key_id"), "key_id", max_chars=80)
            signature = base64.b64decode(f.text(f.field(data, "signature"), "signature"), validate=True)
            body = f.text(f.field(data, "state"), "state", max_chars=MAX_RECORD_BYTES).encode()
        except (ValueError, binascii.Error) as e:  # FieldError, UnicodeEncodeError (lone surrogates)
            raise MalformedRegistryRecord(f"malformed registry record: {str(e)[:300]}") from e
        if len(signature) != _SIGNATURE_BYTES:
            raise MalformedRegistryRecord("malformed registry record: the signature is not 64 bytes")
        return cls(body, key_id, signature)

    def verified(self, trusted: TrustedKeys, model: str) -> ModelState:
        """The state, once its signature verifies under a trusted key and it is ``model``'s."""
        if self.key_id not in trusted:
            raise UntrustedSigner(self.key_id, f"rollout state of {model[:64]!r}")
        if not trusted.verifies(self.key_id, self.signature, self.message()):
            raise BadStateSignature(model, self.key_id)
        return self.unverified(model)

    def unverified(self, model: str) -> ModelState:
        """The state, parsed but not verified (display, drift references); it must be ``model``'s."""
        state = ModelState.from_bytes(self.body)
        if state.model != model:
            raise MalformedRegistryRecord(
                f"record keyed {model[:64]!r} holds the state of {state.model[:64]!r}"
            )
        return state


def sign_state(key: SigningKey, state: ModelState) -> SignedState:
    """``state`` signed with ``key``."""
    signed = SignedState(state.to_bytes(), key.key_id, b"")
    return SignedState(signed.body, signed.key_id, key.sign_message(signed.message()))


def decode_state(model: str, value: bytes, trusted: TrustedKeys | None) -> ModelState:
    """The state in ``model``'s record ``value``: verified under ``trusted``, or only parsed when it is
    None. Raises the :class:`RegistryError` that says why it is refused."""
    signed = SignedState.from_bytes(value)
    return signed.unverified(model) if trusted is None else signed.verified(trusted, model)


def accept_state(model: str, value: bytes, trusted: TrustedKeys, applied: int | None) -> ModelState:
    """What a worker applies: ``model``'s verified state, only when its revision is above ``applied``
    (the revision the worker applied for that model; None: none yet)."""
    state = decode_state(model, value, trusted)
    if applied is not None and state.revision <= applied:
        raise StaleRevision(model, state.revision, applied)
    return state
