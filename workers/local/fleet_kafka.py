"""How the simulated fleet's parts connect to Kafka over TLS: each as the identity a real one would use.

The devices of a region connect as ``device-<region>`` (they write its ingest and read its replies);
the labels the fleet reports for them, standing in for the region's backend (a chargeback, a human
review), go out as ``backend-<region>``, the one principal besides ``admin`` allowed to write
``cloud.labels``. So a demo proves the backend's ACLs as well as the devices'. Without TLS every part
connects with the fleet's own settings.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.settings import KafkaSettings

if TYPE_CHECKING:
    from edgestream.workers.local.fleet_settings import FleetSettings

log = logging.getLogger(__name__)


def connect_as(settings: FleetSettings, identity: Identity) -> KafkaSettings:
    """How a part of the fleet connects as ``identity`` over TLS, with the certificate ``tls_root``
    holds, issued (or renewed) first where the PKI can be written. A PKI that cannot be written
    (docker-compose.yml mounts only the bundle and the devices' own identity, read-only) is used as
    issued. Raises ConfigError when the identity has no certificate there. ``settings.kafka`` as it is
    without TLS."""
    kafka = settings.kafka
    if kafka.security_protocol != "SSL":
        return kafka
    pki = Pki(settings.tls_root or settings.home / "tls")
    try:
        files = pki.ensure([identity])[identity]
    except OSError as e:
        log.info("PKI %s cannot be written (%s): %s connects as issued", pki.root, e.strerror, identity)
        files = pki.files(identity)
    return KafkaSettings.tls(kafka.bootstrap_servers, files, request_timeout_ms=kafka.request_timeout_ms)


def device_kafka(settings: FleetSettings, region: str) -> KafkaSettings:
    """How the devices of ``region`` connect: as ``device-<region>`` (:func:`connect_as`)."""
    return connect_as(settings, Identity.device(region))


def backend_kafka(settings: FleetSettings, region: str) -> KafkaSettings:
    """How the labels of ``region``'s requests are sent: as ``backend-<region>`` (:func:`connect_as`)."""
    return connect_as(settings, Identity.backend(region))
