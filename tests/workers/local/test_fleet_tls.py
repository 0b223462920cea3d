"""How the simulated devices connect over TLS: from a PKI they may write (issued on demand), and from
one mounted read-only with only the bundle and their own identity, as docker-compose.yml does."""

from __future__ import annotations

import errno
import os
import shutil
from typing import TYPE_CHECKING

import pytest

from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import NotIssued, Pki
from edgestream.pipeline.settings import KafkaSettings
from edgestream.workers.local.fleet_kafka import device_kafka
from edgestream.workers.local.fleet_settings import FleetSettings

if TYPE_CHECKING:
    from pathlib import Path

REGION = "eu-west"
"""The region whose devices connect."""


def settings(tls_root: Path) -> FleetSettings:
    """Fleet settings over TLS with the PKI at ``tls_root``; the kafka files only satisfy KafkaSettings."""
    kafka = KafkaSettings(
        bootstrap_servers="kafka-1:9092",
        security_protocol="SSL",
        ssl_ca_file=tls_root / "ca-bundle.pem",
        ssl_cert_file=tls_root / "cert.pem",
        ssl_key_file=tls_root / "key.pem",
    )
    return FleetSettings(kafka=kafka, tls_root=tls_root)


def read_only(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Make every open for writing under ``root`` fail as on a read-only mount (the tests run as root,
    whom file modes do not stop)."""
    real_open = os.open

    def refusing(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: int) -> int:
        writes = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if writes and os.path.abspath(path).startswith(f"{root}{os.sep}"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)


def test_a_writable_pki_issues_the_devices_certificate(tmp_path: Path) -> None:
    kafka = device_kafka(settings(tmp_path / "tls"), REGION)
    issued = Pki(tmp_path / "tls").files(Identity.device(REGION))
    assert kafka.files == issued
    assert kafka.bootstrap_servers == "kafka-1:9092"


def test_a_read_only_pki_with_the_devices_identity_is_used_as_issued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = Pki(tmp_path / "host")
    issued = pki.ensure([Identity.device(REGION)])[Identity.device(REGION)]
    view = tmp_path / "container"  # what compose mounts: the bundle and the identity's folder, no CA
    (view / "identities" / "device-eu-west").mkdir(parents=True)
    shutil.copy2(pki.ca_file, view / "ca-bundle.pem")
    shutil.copytree(issued.cert_file.parent.parent, view / "identities" / "device-eu-west" / "gateway")
    read_only(monkeypatch, view)
    kafka = device_kafka(settings(view), REGION)
    files = kafka.files
    assert files is not None
    assert files.cert_file.read_bytes() == issued.cert_file.read_bytes()
    assert files.key_file.read_bytes() == issued.key_file.read_bytes()
    assert files.ca_file == view / "ca-bundle.pem"
    assert not (view / "ca").exists()  # no CA was made up in its place


def test_a_read_only_pki_without_the_identity_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = tmp_path / "container"
    view.mkdir()
    read_only(monkeypatch, view)
    with pytest.raises(NotIssued, match="device-eu-west/gateway"):
        device_kafka(settings(view), REGION)
