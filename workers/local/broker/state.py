"""A started broker as saved in ``<home>/broker/state.json``, so other processes find and stop it."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgestream.pipeline.errors import BrokerError
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki
from edgestream.pipeline.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BrokerState:
    """A started broker, as saved in ``<home>/broker/state.json``."""

    bootstrap: str
    """``host:port`` of the PLAINTEXT listener, for ``bootstrap_servers``."""
    controller: str
    """``host:port`` of the KRaft controller listener."""
    pid: int
    """Process id of the broker's JVM; -1 for a broker edgestream did not start."""
    log_dir: Path
    """Directory of ``server.log`` (log4j2) and ``broker.out`` (the JVM's stdout and stderr)."""
    data_dir: Path
    """Kafka's ``log.dirs``: the KRaft metadata log and the topic partitions."""
    started_at: float
    """Wall-clock start time, seconds since the epoch."""
    security_protocol: str = "PLAINTEXT"
    """``SSL`` (mutual TLS, ACLs) or ``PLAINTEXT`` on the client listener."""
    tls_root: Path | None = None
    """The PKI directory whose CA the broker trusts (``SSL`` only)."""

    def kafka(self, identity: Identity | None = None, **others: Any) -> KafkaSettings:
        """Client settings for this broker, as ``identity`` (default ``admin``) when it speaks TLS; the
        identity's certificate is issued by the local CA if it has none yet."""
        if self.security_protocol != "SSL":
            return KafkaSettings(bootstrap_servers=self.bootstrap, **others)
        if self.tls_root is None:
            raise BrokerError("the broker speaks TLS but its state names no PKI directory")
        who = identity or Identity.admin()
        files = Pki(self.tls_root).ensure([who])[who]  # issued on first use, reused after
        return KafkaSettings.tls(self.bootstrap, files, **others)

    @property
    def server_log(self) -> Path:
        """The broker's log4j2 log file."""
        return self.log_dir / "server.log"

    def to_json(self) -> str:
        """Serialise for the state file."""
        fields = asdict(self)
        fields["log_dir"] = str(self.log_dir)
        fields["data_dir"] = str(self.data_dir)
        fields["tls_root"] = None if self.tls_root is None else str(self.tls_root)
        return json.dumps(fields, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BrokerState:
        """Parse a state file; raises ``ValueError`` (or ``KeyError``/``TypeError``) when it is not one."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("broker state is not a JSON object")
        return cls(
            bootstrap=str(raw["bootstrap"]),
            controller=str(raw["controller"]),
            pid=int(raw["pid"]),
            log_dir=Path(raw["log_dir"]),
            data_dir=Path(raw["data_dir"]),
            started_at=float(raw["started_at"]),
            security_protocol=str(raw.get("security_protocol", "PLAINTEXT")),
            tls_root=None if raw.get("tls_root") is None else Path(raw["tls_root"]),
        )


def read_state(path: Path) -> BrokerState | None:
    """The state saved in ``path``; None when there is none or it cannot be read (logged)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return BrokerState.from_json(text)
    except (ValueError, KeyError, TypeError) as err:
        log.warning("ignoring unreadable broker state %s: %s", path, err)
        return None


def write_state(path: Path, state: BrokerState) -> None:
    """Save ``state`` in ``path`` atomically (a reader sees the old file or the new one)."""
    partial = path.with_suffix(".json.partial")
    partial.write_text(state.to_json())
    partial.replace(path)
