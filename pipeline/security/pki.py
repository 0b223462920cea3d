"""A development PKI for mutual TLS with Kafka: one CA, a certificate per identity, rotation in place.

Who the identities are is in ``pipeline/security/identities.py``, what their certificates hold in
``pipeline/security/certificates.py``; this module keeps them in a directory.

Layout of the directory (``<home>/tls`` by default); directories are 0700, private keys 0600 from the
moment they are created, certificates and the bundle 0644::

    <root>/
      .lock                          flock held by every operation that writes
      ca-bundle.pem                  trust bundle: the current CA, then the previous one while rotating
      ca/current/ca.pem, ca.key      the CA that signs new certificates
      ca/previous/ca.pem, ca.key     only between rotate_ca() and retire_ca()
      identities/<principal>/<name>/
        current/cert.pem, key.pem    the pair an identity uses
        previous/cert.pem, key.pem   only between rotate() and retire()

A pair is written into a fresh hidden directory beside its slot and renamed into place, so a reader sees
the old pair or the new one, never a certificate with the wrong key. Rotation without downtime:

- a leaf: ``rotate`` (new pair current, old pair previous; both chain to the same CA), move every user
  to the new pair, ``retire`` (deletes the old pair);
- the CA: ``rotate_ca`` (new CA, bundle holds both), reload the bundle everywhere, ``rotate`` each
  identity (new leaves come from the new CA), ``retire`` them, then ``retire_ca`` (bundle holds the new
  CA only; the old CA key is deleted). ``ensure`` re-issues any leaf no trusted CA signed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.security.certificates import (
    cert_pem,
    common_name,
    key_pem,
    new_ca,
    new_leaf,
    utc_now,
)
from edgestream.pipeline.security.identities import Identity, serves_tls
from edgestream.pipeline.settings import DEFAULT_HOME

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

log = logging.getLogger(__name__)

DEFAULT_ROOT: Final = DEFAULT_HOME / "tls"
"""Where the PKI lives unless told otherwise."""
DEFAULT_CA_DAYS: Final = 3650
"""Validity of a new CA."""
DEFAULT_LEAF_DAYS: Final = 30
"""Validity of a new leaf certificate."""
RENEW_WITHIN: Final = timedelta(days=7)
"""``ensure`` re-issues a leaf that expires sooner than this."""

Slot = Literal["current", "previous"]
"""Which of the two pairs of an identity (or which of the two CAs)."""

_CURRENT: Final[Slot] = "current"
_PREVIOUS: Final[Slot] = "previous"
_CA_CERT: Final = "ca.pem"
_CA_KEY: Final = "ca.key"
_CERT: Final = "cert.pem"
_KEY: Final = "key.pem"
_BUNDLE: Final = "ca-bundle.pem"
_PRIVATE_MODE: Final = 0o600
_PUBLIC_MODE: Final = 0o644
_DIR_MODE: Final = 0o700


class PkiError(ConfigError):
    """A PKI operation cannot be done in the directory's present state."""


class NotIssued(PkiError):
    """An identity has no certificate (or no previous one) in the PKI."""

    def __init__(self, identity: Identity, root: Path, slot: Slot = "current") -> None:
        hint = "issue it first (edgestream certs issue)" if slot == "current" else "nothing to retire"
        super().__init__(f"no {slot} certificate for {identity} in {root}: {hint}")
        self.identity = identity
        self.slot = slot


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The three PEM files a TLS endpoint needs."""

    ca_file: Path
    """Trust bundle: every CA currently trusted."""
    cert_file: Path
    """The identity's certificate (leaf only)."""
    key_file: Path
    """The identity's private key (PKCS#8, unencrypted, mode 0600)."""


@dataclass(frozen=True, slots=True)
class CertInfo:
    """One certificate in the PKI, as ``status`` reports it."""

    identity: Identity | None
    """Whose certificate it is; None for a CA."""
    slot: Slot
    """``current`` or ``previous`` (pair of an identity, or CA)."""
    subject: str
    """Subject, RFC 4514."""
    serial: int
    """Serial number."""
    not_after: datetime
    """End of validity (UTC)."""
    days_left: int
    """Whole days of validity left when ``status`` ran; negative once expired."""
    issuer: str
    """Common name of the CA that signed it (a CA names itself)."""
    signed_by: Slot | Literal["untrusted"]
    """Which trusted CA signed it, or ``untrusted`` when none in the bundle did."""
    cert_file: Path
    """Where the certificate is."""


class Pki:
    """A development CA and the certificates it issued, in one directory (layout in the module doc).

    Operations that write hold an exclusive lock on ``<root>/.lock``, so processes that ``ensure`` their
    certificates at start cannot race each other. Never logs or shows key material.
    """

    __slots__ = ("root",)

    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        """A PKI rooted at ``root``; nothing is read or written until an operation runs."""
        self.root = root
        """The PKI directory."""

    def __repr__(self) -> str:
        return f"Pki(root={self.root!r})"

    @classmethod
    def in_home(cls, home: Path) -> Pki:
        """The PKI of a local state directory: ``<home>/tls``."""
        return cls(home / "tls")

    @property
    def ca_file(self) -> Path:
        """The trust bundle (every CA currently trusted), e.g. for the broker's truststore."""
        return self.root / _BUNDLE

    # -- the CA -------------------------------------------------------------------------------------

    def init(self, ca_days: int = DEFAULT_CA_DAYS) -> bool:
        """Create the CA and the trust bundle unless a CA exists. True when it created one."""
        with self._locked():
            return self._init(ca_days)

    def rotate_ca(self, ca_days: int = DEFAULT_CA_DAYS) -> None:
        """Make a new current CA, keep the old one as previous, and trust both; re-issues nothing.

        Raises PkiError without a CA, or while a previous CA is still trusted (``retire_ca`` first).
        """
        with self._locked():
            if not self._ca_dir(_CURRENT).is_dir():
                raise PkiError(f"no CA in {self.root}: run init first")
            if self._ca_dir(_PREVIOUS).is_dir():
                raise PkiError(f"{self.root} still trusts a previous CA: retire_ca first")
            key, cert = new_ca(ca_days)
            self._install(
                self._ca_dir(_CURRENT),
                {_CA_CERT: cert_pem(cert)},
                {_CA_KEY: key_pem(key)},
                keep_previous=True,
            )
            self._write_bundle()
            log.info("new CA %s; the previous CA stays trusted until retire_ca", common_name(cert.subject))

    def retire_ca(self) -> list[CertInfo]:
        """Stop trusting the previous CA and delete its key. Returns the leaves it had signed, which no
        longer verify (``ensure`` or ``issue`` replaces them). Raises PkiError when there is none."""
        with self._locked():
            previous = self._ca_dir(_PREVIOUS)
            if not previous.is_dir():
                raise PkiError(f"{self.root} has no previous CA to retire")
            retired = _load_cert(previous / _CA_CERT)
            orphans = [
                info for info in self._status() if info.identity is not None and info.signed_by == _PREVIOUS
            ]
            self._remove(previous)
            self._write_bundle()
            log.info("retired CA %s", common_name(retired.subject))
            for info in orphans:
                log.warning("%s (%s pair) was signed by the retired CA", info.identity, info.slot)
            return orphans

    # -- leaves -------------------------------------------------------------------------------------

    def issue(
        self,
        identity: Identity,
        days: int = DEFAULT_LEAF_DAYS,
        *,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        hosts: Sequence[str] = (),
    ) -> TlsFiles:
        """Issue a new key and certificate for ``identity`` from the current CA, replacing its current
        pair (the previous pair, if any, stays). ``not_before``/``not_after`` (timezone-aware) override
        the validity, e.g. to make an expired certificate for a test. ``hosts``: more names (DNS names
        or IP addresses) the broker (or a device gateway) is reached by, beyond localhost and 127.0.0.1
        (e.g. ``kafka-1`` in a compose network). Raises PkiError without a CA, ValueError for hosts on a
        client identity."""
        if hosts and not serves_tls(identity.principal):
            raise ValueError("only the certificates of the broker, gateways and the registry name hosts")
        with self._locked():
            return self._issue(identity, days, not_before, not_after, keep_previous=False, hosts=hosts)

    def files(self, identity: Identity, *, previous: bool = False) -> TlsFiles:
        """The files of ``identity``'s current (or previous) pair. Raises NotIssued when absent."""
        slot = _PREVIOUS if previous else _CURRENT
        pair = self._pair_dir(identity, slot)
        cert_file, key_file = pair / _CERT, pair / _KEY
        if not (cert_file.is_file() and key_file.is_file()):
            raise NotIssued(identity, self.root, slot)
        return TlsFiles(ca_file=self.ca_file, cert_file=cert_file, key_file=key_file)

    def ensure(
        self, identities: Iterable[Identity], days: int = DEFAULT_LEAF_DAYS
    ) -> dict[Identity, TlsFiles]:
        """Create the CA if needed and issue every identity that has no certificate, one expiring within
        ``RENEW_WITHIN``, or one no trusted CA signed. Writes nothing when all are fine."""
        with self._locked():
            self._init(DEFAULT_CA_DAYS)
            trusted = self._trusted_cas()
            renew_by = utc_now() + RENEW_WITHIN
            result: dict[Identity, TlsFiles] = {}
            for identity in dict.fromkeys(identities):
                try:
                    cert = _load_cert(self.files(identity).cert_file)
                    fine = cert.not_valid_after_utc > renew_by and _signed_by(cert, trusted) != "untrusted"
                except NotIssued:
                    fine = False
                if not fine:
                    self._issue(identity, days, None, None, keep_previous=False)
                result[identity] = self.files(identity)
            return result

    def rotate(self, identity: Identity, days: int = DEFAULT_LEAF_DAYS) -> TlsFiles:
        """Issue a new pair for ``identity`` and keep the current one as previous (both stay valid)
        until ``retire``. Raises NotIssued when it has no pair, PkiError while a previous pair exists."""
        with self._locked():
            self.files(identity)
            if self._pair_dir(identity, _PREVIOUS).exists():
                raise PkiError(f"{identity} still has a previous pair: retire it first")
            return self._issue(identity, days, None, None, keep_previous=True)

    def retire(self, identity: Identity) -> None:
        """Delete ``identity``'s previous key and certificate. Raises NotIssued when there is none."""
        with self._locked():
            previous = self._pair_dir(identity, _PREVIOUS)
            if not previous.is_dir():
                raise NotIssued(identity, self.root, _PREVIOUS)
            self._remove(previous)
            log.info("retired the previous pair of %s", identity)

    def status(self) -> list[CertInfo]:
        """Every certificate: the CAs first (current, previous), then each identity's pairs by name."""
        return self._status()

    # -- internals ----------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.parent.mkdir(parents=True, exist_ok=True)
        _mkdir(self.root)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, _PRIVATE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _ca_dir(self, slot: Slot) -> Path:
        return self.root / "ca" / slot

    def _pair_dir(self, identity: Identity, slot: Slot) -> Path:
        return self.root / "identities" / identity.principal / identity.name / slot

    def _init(self, ca_days: int) -> bool:
        if self._ca_dir(_CURRENT).is_dir():
            if not self.ca_file.is_file():
                self._write_bundle()
            return False
        key, cert = new_ca(ca_days)
        self._install(
            self._ca_dir(_CURRENT), {_CA_CERT: cert_pem(cert)}, {_CA_KEY: key_pem(key)}, keep_previous=False
        )
        self._write_bundle()
        log.info("created CA %s in %s", common_name(cert.subject), self.root)
        return True

    def _trusted_cas(self) -> dict[Slot, x509.Certificate]:
        slots: tuple[Slot, ...] = (_CURRENT, _PREVIOUS)
        return {
            slot: _load_cert(self._ca_dir(slot) / _CA_CERT)
            for slot in slots
            if (self._ca_dir(slot) / _CA_CERT).is_file()
        }

    def _issue(
        self,
        identity: Identity,
        days: int,
        not_before: datetime | None,
        not_after: datetime | None,
        *,
        keep_previous: bool,
        hosts: Sequence[str] = (),
    ) -> TlsFiles:
        ca_dir = self._ca_dir(_CURRENT)
        if not ca_dir.is_dir():
            raise PkiError(f"no CA in {self.root}: run init first")
        ca_cert = _load_cert(ca_dir / _CA_CERT)
        ca_key = _load_key(ca_dir / _CA_KEY)
        key, cert = new_leaf(identity, ca_cert, ca_key, days, not_before, not_after, hosts)
        pair = self._pair_dir(identity, _CURRENT)
        self._install(pair, {_CERT: cert_pem(cert)}, {_KEY: key_pem(key)}, keep_previous=keep_previous)
        log.info(
            "issued %s (serial %x, valid until %s)", identity, cert.serial_number, cert.not_valid_after_utc
        )
        return self.files(identity)

    def _install(
        self, target: Path, public: dict[str, bytes], private: dict[str, bytes], *, keep_previous: bool
    ) -> None:
        """Write the files into a new hidden directory beside ``target`` and rename it into place; the
        old ``target`` becomes ``previous`` (``keep_previous``) or is deleted."""
        for directory in reversed(target.parents):
            if self.root in directory.parents:  # the root itself exists (``_locked``)
                _mkdir(directory)
        staging = Path(tempfile.mkdtemp(prefix=".new-", dir=target.parent))  # mode 0700
        try:
            for name, data in public.items():
                _write_new(staging / name, data, _PUBLIC_MODE)
            for name, data in private.items():
                _write_new(staging / name, data, _PRIVATE_MODE)
        except BaseException:
            shutil.rmtree(staging)
            raise
        old: Path | None = None
        if target.exists():
            old = (
                target.parent / _PREVIOUS if keep_previous else target.parent / f".old-{secrets.token_hex(4)}"
            )
            os.rename(target, old)
        os.rename(staging, target)
        if old is not None and not keep_previous:
            shutil.rmtree(old)

    def _remove(self, directory: Path) -> None:
        """Delete a directory of key material: rename it aside first so no half-deleted pair is seen."""
        doomed = directory.parent / f".old-{secrets.token_hex(4)}"
        os.rename(directory, doomed)
        shutil.rmtree(doomed)

    def _write_bundle(self) -> None:
        data = b"".join(cert_pem(cert) for cert in self._trusted_cas().values())
        staging = self.root / f".{_BUNDLE}.{secrets.token_hex(4)}"
        try:
            _write_new(staging, data, _PUBLIC_MODE)
            os.replace(staging, self.ca_file)
        finally:
            staging.unlink(missing_ok=True)

    def _status(self) -> list[CertInfo]:
        now = utc_now()
        trusted = self._trusted_cas()
        infos = [
            _info(None, slot, cert, self._ca_dir(slot) / _CA_CERT, slot, now)
            for slot, cert in trusted.items()
        ]
        identities_dir = self.root / "identities"
        if not identities_dir.is_dir():
            return infos
        for principal_dir in sorted(identities_dir.iterdir()):
            for name_dir in sorted(principal_dir.iterdir()) if principal_dir.is_dir() else ():
                try:
                    identity = Identity(principal_dir.name, name_dir.name)
                except ValueError:
                    continue  # a staging directory or something not ours
                for slot in (_CURRENT, _PREVIOUS):
                    cert_file = self._pair_dir(identity, slot) / _CERT
                    if cert_file.is_file():
                        cert = _load_cert(cert_file)
                        infos.append(_info(identity, slot, cert, cert_file, _signed_by(cert, trusted), now))
        return infos


# -- status -----------------------------------------------------------------------------------------


def _signed_by(cert: x509.Certificate, trusted: dict[Slot, x509.Certificate]) -> Slot | Literal["untrusted"]:
    for slot, ca in trusted.items():
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return slot
    return "untrusted"


def _info(
    identity: Identity | None,
    slot: Slot,
    cert: x509.Certificate,
    cert_file: Path,
    signed_by: Slot | Literal["untrusted"],
    now: datetime,
) -> CertInfo:
    not_after = cert.not_valid_after_utc
    return CertInfo(
        identity=identity,
        slot=slot,
        subject=cert.subject.rfc4514_string(),
        serial=cert.serial_number,
        not_after=not_after,
        days_left=(not_after - now) // timedelta(days=1),
        issuer=common_name(cert.issuer),
        signed_by=signed_by,
        cert_file=cert_file,
    )


# -- files ------------------------------------------------------------------------------------------


def _mkdir(path: Path) -> None:
    """Create ``path`` with mode 0700 (an existing directory is left as it is)."""
    try:
        path.mkdir(mode=_DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (it must not exist) with ``mode`` from the start, and write ``data`` durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as e:
        raise PkiError(f"cannot read certificate {path}: {e}") from e


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise PkiError(f"cannot read CA key {path}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"CA key {path} is not an EC key")
    return key
