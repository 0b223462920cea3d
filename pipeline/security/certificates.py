"""The development PKI's certificates: a self-signed CA, the leaves it signs, and their PEM encodings.

Each identity's subject is ``CN=<name>,OU=<principal>,O=edgestream`` and the broker maps it to the Kafka
principal ``User:<principal>`` with ``PRINCIPAL_MAPPING_RULES``: every edge node of a region shares the
ACLs of ``edge-<region>`` while keeping its own certificate. Keys are EC P-256, certificates
ECDSA-SHA256. Everything here is pure: ``pipeline/security/pki.py`` keeps the files.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgestream.pipeline.security.identities import serves_tls

if TYPE_CHECKING:
    from collections.abc import Sequence

    from edgestream.pipeline.security.identities import Identity

ORGANIZATION: Final = "edgestream"
"""The O of every subject this PKI issues."""
PRINCIPAL_MAPPING_RULES: Final = f"RULE:^CN=[^,]+,OU=([a-z0-9-]+),O={ORGANIZATION}$/$1/,DEFAULT"
"""The broker's ``ssl.principal.mapping.rules``: the principal of a certificate is its OU."""
BROKER_DNS_NAMES: Final = ("localhost",)
"""DNS names in the subjectAltName of a certificate that serves (the broker's, a gateway's)."""
BROKER_IP_ADDRESSES: Final = ("127.0.0.1",)
"""IP addresses in the subjectAltName of a certificate that serves."""
CLOCK_SKEW: Final = timedelta(minutes=5)
"""New certificates are valid from this long before now, for peers whose clocks lag."""


def utc_now() -> datetime:
    """The time (UTC) validity periods start from and are checked against."""
    return datetime.now(UTC)


def subject(identity: Identity) -> x509.Name:
    """The certificate subject of ``identity``; its RFC 4514 string is
    ``CN=<name>,OU=<principal>,O=edgestream``."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.principal),
            x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
        ]
    )


def _validity(
    days: int, not_before: datetime | None, not_after: datetime | None
) -> tuple[datetime, datetime]:
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    start_from = utc_now()
    start = not_before if not_before is not None else start_from - CLOCK_SKEW
    end = not_after if not_after is not None else start_from + timedelta(days=days)
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("not_before and not_after must be timezone-aware")
    if end <= start:
        raise ValueError(f"not_after ({end}) must be later than not_before ({start})")
    return start, end


def new_ca(days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new CA key and its self-signed certificate, valid for ``days``. Raises ValueError."""
    start, end = _validity(days, None, None)
    key = ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    # The key id in the name keeps two CAs made the same day apart (chain building matches names).
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"edgestream dev CA {start:%Y-%m-%d} {ski.digest[:4].hex()}"
            ),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def new_leaf(
    identity: Identity,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    days: int,
    not_before: datetime | None,
    not_after: datetime | None,
    hosts: Sequence[str] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key for ``identity`` and its certificate signed by the CA: a client-only leaf, or for the
    broker and a device gateway (`serves_tls`) one that also serves, naming localhost, 127.0.0.1 and
    ``hosts``. Raises ValueError."""
    start, end = _validity(days, not_before, not_after)
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    serves = serves_tls(identity.principal)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH, *([ExtendedKeyUsageOID.SERVER_AUTH] if serves else [])]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject(identity))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if serves:
        builder = builder.add_extension(_broker_names(hosts), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _broker_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.DNSName(dns) for dns in BROKER_DNS_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in BROKER_IP_ADDRESSES]
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def common_name(name: x509.Name) -> str:
    """The CN of ``name``, or its RFC 4514 string when it has none."""
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else name.rfc4514_string()


def cert_pem(cert: x509.Certificate) -> bytes:
    """``cert`` in PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` in PEM: PKCS#8, unencrypted."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
