"""The development PKI: subjects and the principals they map to, file modes, idempotent ensure, rotation,
CA rotation, CLI.

Chains are checked with ``cryptography``'s verifier (RFC 5280 path building against the trust bundle);
``test_tls.py`` checks the same files in real TLS handshakes.
"""

from __future__ import annotations

import os
import re
import stat
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)
from typer.testing import CliRunner, Result

from edgestream.cli import app
from edgestream.pipeline.errors import ConfigError
from edgestream.pipeline.security.certificates import CLOCK_SKEW, PRINCIPAL_MAPPING_RULES
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import RENEW_WITHIN, NotIssued, Pki, PkiError, TlsFiles

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

EDGE = Identity.edge("eu-west")
ALL = [
    Identity.broker(),
    Identity.admin(),
    Identity.aggregator(),
    Identity.edge("eu-west"),
    Identity.edge("eu-west", "node-2"),
    Identity.device("eu-west"),
    Identity.edge("us-east"),
]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A PKI with its CA, in a fresh directory."""
    pki = Pki(tmp_path / "tls")
    assert pki.init() is True
    return pki


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _bundle(pki: Pki) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pki.ca_file.read_bytes())


def _verify(pki: Pki, cert_file: Path) -> None:
    """Verify a client certificate against the PKI's trust bundle as it is now (raises VerificationError).

    The web PKI profile requires a subjectAltName in every leaf; client certificates here have none.
    """
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    verifier = (
        PolicyBuilder()
        .store(Store(_bundle(pki)))
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy)
        .build_client_verifier()
    )
    verifier.verify(_cert(cert_file), [])


def _kafka_principal(subject: str) -> str:
    """Apply ``PRINCIPAL_MAPPING_RULES`` the way Kafka does: the first matching RULE, else DEFAULT."""
    rule, default = PRINCIPAL_MAPPING_RULES.rsplit(",", 1)
    assert default == "DEFAULT"
    pattern, replacement, flags = rule.removeprefix("RULE:").split("/")
    assert flags == ""
    match = re.fullmatch(pattern, subject)
    return match.expand(replacement.replace("$1", r"\1")) if match else subject


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, mtime, size) of every file and directory under ``root``, the root included."""
    entries: dict[str, tuple[int, int, int]] = {}
    for path in [root, *root.rglob("*")]:
        st = path.stat()
        entries[str(path.relative_to(root))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return entries


def test_subject_is_rfc4514_and_the_broker_rule_maps_it_to_the_principal(pki: Pki) -> None:
    for identity in ALL:
        subject = _cert(pki.issue(identity).cert_file).subject.rfc4514_string()
        assert subject == f"CN={identity.name},OU={identity.principal},O=edgestream"
        assert _kafka_principal(subject) == identity.principal
    ca_subject = _bundle(pki)[0].subject.rfc4514_string()
    assert _kafka_principal(ca_subject) == ca_subject  # the CA falls through to DEFAULT
    assert ca_subject.startswith("CN=edgestream dev CA ")


# -- files on disk ----------------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run with umask 0, so modes on disk are exactly the modes requested at creation."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
def test_keys_are_0600_from_creation_and_directories_0700(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: dict[str, tuple[int, int]] = {}
    real_open = os.open

    def recording_open(
        path: str | os.PathLike[str], flags: int, mode: int = 0o777, *, dir_fd: int | None = None
    ) -> int:
        created[os.fspath(path)] = (flags, mode)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError("modes are set at creation, never changed after")

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(os, "chmod", no_chmod)
    pki = Pki(tmp_path / "home" / "tls")
    pki.ensure(ALL)
    pki.rotate(EDGE)
    pki.rotate_ca()
    pki.issue(Identity.admin())
    monkeypatch.undo()

    keys = [p for p in pki.root.rglob("*") if p.name in {"ca.key", "key.pem"}]
    assert len(keys) == len(ALL) + 1 + 2  # every identity, the previous edge pair, two CAs
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert b"PRIVATE KEY" in key.read_bytes()
    for path in [pki.root, *pki.root.rglob("*")]:
        if path.is_dir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
        elif path.name.endswith(".pem"):
            assert stat.S_IMODE(path.stat().st_mode) == (0o600 if path.name == "key.pem" else 0o644), path
    # Each key file was created by os.open with O_EXCL and mode 0600 (then renamed into place).
    key_opens = [
        (flags, mode) for path, (flags, mode) in created.items() if path.endswith(("ca.key", "key.pem"))
    ]
    assert len(key_opens) == len(ALL) + 1 + 1 + 2  # ensure, rotate, issue again; both CAs
    assert all(flags & os.O_EXCL and flags & os.O_CREAT and mode == 0o600 for flags, mode in key_opens)


def test_each_key_belongs_to_its_certificate(pki: Pki) -> None:
    for files in pki.ensure(ALL).values():
        key = serialization.load_pem_private_key(files.key_file.read_bytes(), password=None)
        assert key.public_key() == _cert(files.cert_file).public_key()


def test_layout(pki: Pki) -> None:
    files = pki.issue(Identity.edge("eu-west", "node-2"))
    assert files == TlsFiles(
        ca_file=pki.root / "ca-bundle.pem",
        cert_file=pki.root / "identities/edge-eu-west/node-2/current/cert.pem",
        key_file=pki.root / "identities/edge-eu-west/node-2/current/key.pem",
    )
    assert pki.files(Identity.edge("eu-west", "node-2")) == files
    assert (pki.root / "ca/current/ca.pem").is_file()
    assert (pki.root / "ca/current/ca.key").is_file()
    assert Pki.in_home(pki.root.parent).root == pki.root
    assert not [p for p in pki.root.rglob(".*") if p.name != ".lock"]  # no staging left behind


def test_files_of_an_identity_never_issued_is_a_clear_error(pki: Pki) -> None:
    with pytest.raises(NotIssued, match="no current certificate for edge-eu-west/worker") as info:
        pki.files(EDGE)
    assert isinstance(info.value, ConfigError)
    pki.issue(EDGE)
    with pytest.raises(NotIssued, match="no previous certificate"):
        pki.files(EDGE, previous=True)


def test_issue_without_a_ca_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="no CA"):
        Pki(tmp_path / "tls").issue(EDGE)


# -- init and ensure --------------------------------------------------------------------------------


def test_init_keeps_an_existing_ca(pki: Pki) -> None:
    before = _snapshot(pki.root)
    assert pki.init() is False
    assert _snapshot(pki.root) == before


def test_ensure_twice_writes_nothing_the_second_time(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "tls")
    first = pki.ensure(ALL)
    assert set(first) == set(ALL)
    before = _snapshot(pki.root)
    assert pki.ensure(ALL) == first
    assert _snapshot(pki.root) == before


def test_ensure_reissues_only_what_expires_soon_or_is_missing(pki: Pki) -> None:
    now = datetime.now(UTC)
    pki.ensure(ALL)
    soon = pki.issue(EDGE, not_after=now + RENEW_WITHIN - timedelta(hours=1))
    later = pki.issue(Identity.admin(), not_after=now + RENEW_WITHIN + timedelta(hours=1))
    soon_serial = _cert(soon.cert_file).serial_number
    later_serial = _cert(later.cert_file).serial_number
    untouched = {
        i: _cert(pki.files(i).cert_file).serial_number for i in ALL if i not in {EDGE, Identity.admin()}
    }
    new = Identity.aggregator()  # removed below, so ensure must issue it again
    os.remove(pki.files(new).cert_file)

    result = pki.ensure(ALL)

    assert _cert(result[EDGE].cert_file).serial_number != soon_serial
    assert _cert(result[EDGE].cert_file).not_valid_after_utc > now + timedelta(days=29)
    assert _cert(result[Identity.admin()].cert_file).serial_number == later_serial
    assert result[new].cert_file.is_file()
    for identity, serial in untouched.items():
        if identity != new:
            assert _cert(result[identity].cert_file).serial_number == serial


# -- certificate profiles ---------------------------------------------------------------------------


def test_broker_certificate_serves_localhost_and_loopback(pki: Pki) -> None:
    cert = _cert(pki.issue(Identity.broker()).cert_file)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [IPv4Address("127.0.0.1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_client_certificates_are_client_only_leaves(pki: Pki) -> None:
    cert = _cert(pki.issue(EDGE).cert_file)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert not constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=30) + CLOCK_SKEW


def test_ca_certificate(pki: Pki) -> None:
    [ca] = _bundle(pki)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == timedelta(days=3650) + CLOCK_SKEW


def test_expired_certificate_from_the_override_does_not_verify(pki: Pki) -> None:
    now = datetime.now(UTC)
    files = pki.issue(EDGE, not_before=now - timedelta(days=10), not_after=now - timedelta(days=1))
    assert _cert(files.cert_file).not_valid_after_utc < now
    with pytest.raises(VerificationError, match="not valid at validation time"):
        _verify(pki, files.cert_file)
    [info] = [i for i in pki.status() if i.identity == EDGE]
    assert info.days_left < 0


def test_validity_overrides_are_checked(pki: Pki) -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        pki.issue(EDGE, not_after=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="later than not_before"):
        pki.issue(EDGE, not_before=now, not_after=now - timedelta(seconds=1))
    with pytest.raises(ValueError, match="days must be >= 1"):
        pki.issue(EDGE, days=0)


def test_a_certificate_from_another_ca_does_not_verify(pki: Pki, tmp_path: Path) -> None:
    foreign = Pki(tmp_path / "other")
    foreign.init()
    files = foreign.issue(EDGE)
    _verify(foreign, files.cert_file)
    with pytest.raises(VerificationError):
        _verify(pki, files.cert_file)


# -- rotation ---------------------------------------------------------------------------------------


def test_rotate_keeps_both_pairs_valid_until_retire(pki: Pki) -> None:
    old = pki.issue(EDGE)
    old_cert = old.cert_file.read_bytes()
    new = pki.rotate(EDGE)
    previous = pki.files(EDGE, previous=True)

    assert new == pki.files(EDGE) == old  # the current paths stay; their content is new
    assert previous.cert_file.read_bytes() == old_cert
    assert new.cert_file.read_bytes() != old_cert
    assert new.key_file.read_bytes() != previous.key_file.read_bytes()
    _verify(pki, new.cert_file)
    _verify(pki, previous.cert_file)
    slots = {(i.slot, i.signed_by) for i in pki.status() if i.identity == EDGE}
    assert slots == {("current", "current"), ("previous", "current")}

    with pytest.raises(PkiError, match="retire it first"):
        pki.rotate(EDGE)

    pki.retire(EDGE)
    assert not previous.cert_file.parent.exists()
    with pytest.raises(NotIssued):
        pki.files(EDGE, previous=True)
    _verify(pki, pki.files(EDGE).cert_file)
    with pytest.raises(NotIssued, match="nothing to retire"):
        pki.retire(EDGE)


def test_rotate_needs_an_issued_identity(pki: Pki) -> None:
    with pytest.raises(NotIssued):
        pki.rotate(EDGE)


def test_ca_rotation_trusts_both_cas_until_retire_ca(pki: Pki) -> None:
    old_leaf = pki.issue(EDGE)
    old_cert = old_leaf.cert_file.read_bytes()
    [old_ca] = _bundle(pki)
    old_ca_key = pki.root / "ca/current/ca.key"
    old_ca_key_bytes = old_ca_key.read_bytes()

    pki.rotate_ca()
    bundle = _bundle(pki)
    assert len(bundle) == 2
    assert bundle[1] == old_ca
    assert bundle[0].subject != old_ca.subject
    assert old_leaf.cert_file.read_bytes() == old_cert  # re-issues nothing by itself
    new_leaf = pki.issue(Identity.admin())
    assert _cert(new_leaf.cert_file).issuer == bundle[0].subject
    _verify(pki, old_leaf.cert_file)  # signed by the previous CA
    _verify(pki, new_leaf.cert_file)  # signed by the current CA
    signed_by = {i.identity: i.signed_by for i in pki.status() if i.identity is not None}
    assert signed_by == {EDGE: "previous", Identity.admin(): "current"}
    assert [(i.slot, i.signed_by) for i in pki.status() if i.identity is None] == [
        ("current", "current"),
        ("previous", "previous"),
    ]
    with pytest.raises(PkiError, match="retire_ca first"):
        pki.rotate_ca()

    orphans = pki.retire_ca()
    assert [(o.identity, o.slot) for o in orphans] == [(EDGE, "current")]
    assert _bundle(pki) == [bundle[0]]
    assert not (pki.root / "ca/previous").exists()
    assert all(p.read_bytes() != old_ca_key_bytes for p in pki.root.rglob("ca.key"))
    _verify(pki, new_leaf.cert_file)
    with pytest.raises(VerificationError):
        _verify(pki, old_leaf.cert_file)
    assert {i.identity: i.signed_by for i in pki.status() if i.identity is not None}[EDGE] == "untrusted"

    pki.ensure([EDGE])  # replaces the leaf no trusted CA signed
    _verify(pki, pki.files(EDGE).cert_file)
    with pytest.raises(PkiError, match="no previous CA"):
        pki.retire_ca()


def test_rotate_ca_needs_a_ca(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="no CA"):
        Pki(tmp_path / "tls").rotate_ca()


def test_full_rotation_without_downtime(pki: Pki) -> None:
    """CA rotation end to end: at every step each identity's current pair verifies against the bundle."""
    identities = [Identity.broker(), EDGE]
    pki.ensure(identities)

    def all_verify() -> None:
        for identity in identities:
            _verify(pki, pki.files(identity).cert_file)

    pki.rotate_ca()
    all_verify()
    for identity in identities:
        pki.rotate(identity)
        all_verify()
        _verify(pki, pki.files(identity, previous=True).cert_file)
        pki.retire(identity)
    pki.retire_ca()
    all_verify()
    assert len(_bundle(pki)) == 1


def test_status_reports_every_certificate(pki: Pki) -> None:
    pki.ensure(ALL)
    pki.rotate(EDGE)
    infos = pki.status()
    assert infos[0].identity is None
    assert infos[0].slot == "current"
    leaves = [(i.identity, i.slot) for i in infos[1:]]
    assert sorted(leaves, key=str) == sorted([(i, "current") for i in ALL] + [(EDGE, "previous")], key=str)
    for info in infos[1:]:
        assert info.identity is not None
        assert info.subject == f"CN={info.identity.name},OU={info.identity.principal},O=edgestream"
        assert info.issuer == infos[0].issuer
        assert 29 <= info.days_left <= 30
        assert info.serial == _cert(info.cert_file).serial_number


def test_no_key_material_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    pki = Pki(tmp_path / "tls")
    pki.ensure(ALL)
    pki.rotate(EDGE)
    pki.rotate_ca()
    assert caplog.records
    assert "PRIVATE KEY" not in caplog.text


# -- command line -----------------------------------------------------------------------------------


def _cli(*args: str) -> Result:
    return CliRunner().invoke(app, ["certs", *args], env={"COLUMNS": "200"}, catch_exceptions=False)


def test_cli_init_issue_rotate_retire_list(tmp_path: Path) -> None:
    home = str(tmp_path)
    result = _cli("init", "--home", home, "--region", "eu-west", "-r", "us-east")
    assert result.exit_code == 0, result.output
    assert "15 new, 0 kept" in result.output  # the CA and 14 leaves
    pki = Pki.in_home(tmp_path)
    assert {i.identity for i in pki.status()} == {
        None,
        Identity.broker(),
        Identity.admin(),
        Identity.aggregator(),
        Identity.registry(),
        Identity.edge("eu-west"),
        Identity.device("eu-west"),
        Identity.backend("eu-west"),
        Identity.edge("us-east"),
        Identity.device("us-east"),
        Identity.backend("us-east"),
        Identity.gateway("eu-west"),
        Identity.gateway("eu-west", "wss"),
        Identity.gateway("us-east"),
        Identity.gateway("us-east", "wss"),
    }
    assert "0 new, 15 kept" in _cli("init", "--home", home, "-r", "eu-west", "-r", "us-east").output

    result = _cli("issue", "edge-eu-west", "node-2", "--days", "5", "--home", home)
    assert result.exit_code == 0, result.output
    assert 4 <= _cli_days_left(pki, Identity.edge("eu-west", "node-2")) <= 5
    assert _cli("rotate", "device-eu-west", "--home", home).exit_code == 0
    pki.files(Identity.device("eu-west"), previous=True)
    assert _cli("retire", "device-eu-west", "gateway", "--home", home).exit_code == 0
    assert _cli("rotate-ca", "--home", home).exit_code == 0
    assert len(_bundle(pki)) == 2
    result = _cli("retire-ca", "--home", home)
    assert result.exit_code == 0
    assert "re-issue it" in result.stderr

    result = _cli("list", "--home", home)
    assert result.exit_code == 0
    for identity in ("broker/broker", "edge-eu-west/node-2", "device-us-east/gateway", "untrusted CA"):
        assert identity in result.output
    assert "PRIVATE KEY" not in result.output


def _cli_days_left(pki: Pki, identity: Identity) -> int:
    [info] = [i for i in pki.status() if i.identity == identity]
    return info.days_left


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["issue", "edge-eu-west"], "no CA"),
        (["issue", "Edge"], "principal 'Edge'"),
        (["rotate", "admin"], "no current certificate for admin/admin"),
        (["retire", "admin"], "no previous certificate"),
        (["rotate-ca"], "no CA"),
        (["retire-ca"], "no previous CA"),
    ],
)
def test_cli_errors_exit_1_with_a_message(tmp_path: Path, args: list[str], message: str) -> None:
    result = _cli(*args, "--home", str(tmp_path))
    assert result.exit_code == 1
    assert message in result.stderr


def test_cli_list_of_an_empty_home(tmp_path: Path) -> None:
    result = _cli("list", "--home", str(tmp_path))
    assert result.exit_code == 0
    assert "no certificates" in result.output


def test_the_broker_certificate_names_the_extra_hosts_it_is_reached_by(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "tls")
    pki.init()
    files = pki.issue(Identity.broker(), hosts=["kafka-1", "10.0.0.7", "kafka-1"])
    cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "kafka-1"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "10.0.0.7"]
    with pytest.raises(ValueError, match="only the certificates of the broker, gateways and the registry"):
        pki.issue(Identity.admin(), hosts=["kafka-1"])


def test_a_gateway_certificate_serves_tls_to_devices_and_is_a_kafka_client(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "tls")
    pki.init()
    files = pki.issue(Identity.gateway("eu-west", "wss"), hosts=["gw.example"])
    cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "gw.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert Identity.of("gateway-eu-west") == Identity.gateway("eu-west")
