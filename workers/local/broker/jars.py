"""The broker's jars: resolved once with Maven from ``deploy/kafka/pom.xml`` into a cache outside git.

The pom travels in this package as ``pom.xml`` (a link to ``deploy/kafka/pom.xml`` in the checkout, a
copy in a wheel), so an installed edgestream resolves the same jars as the checkout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edgestream.pipeline.errors import BrokerError
from edgestream.workers.local.broker.java import check_java, find_executable
from edgestream.workers.local.broker.output import strip_colours, tail
from edgestream.workers.local.broker.posix import file_lock

if TYPE_CHECKING:
    from edgestream.workers.local.broker.settings import BrokerSettings

log = logging.getLogger(__name__)

POM_PATH = Path(__file__).with_name("pom.xml")
"""The Maven project that lists the broker's jars (``deploy/kafka/pom.xml``, shipped in this package)."""

_MARKER_NAME = ".complete"


class JarCache:
    """One Kafka version's jars in ``<cache_dir>/kafka-<version>/libs``, resolved by the current pom."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.kafka_version = settings.kafka_version
        """The version of ``org.apache.kafka:kafka_2.13`` this cache holds."""
        cache_root = (settings.cache_dir or Path.home() / ".cache" / "edgestream").expanduser()
        self.cache_dir = cache_root.resolve() / f"kafka-{settings.kafka_version}"
        """This Kafka version's jar cache: ``libs/`` and the completion marker."""
        self.libs_dir = self.cache_dir / "libs"
        """The jars, for ``java -cp '<libs_dir>/*'``."""

    def ready(self) -> bool:
        """True when this version's jars are resolved (by the current pom) into ``libs_dir``."""
        try:
            marker = json.loads((self.cache_dir / _MARKER_NAME).read_text())
        except (OSError, ValueError):
            return False
        return (
            isinstance(marker, dict) and marker.get("pom_sha256") == _pom_sha256() and self.libs_dir.is_dir()
        )

    def fetch(self, quiet: bool = False) -> Path:
        """Resolve the broker's jars with Maven into ``libs_dir`` (once; instant when cached).

        ``quiet`` runs Maven with ``-q``; otherwise Maven's output is logged at INFO. On failure the
        ``BrokerError`` carries the tail of Maven's output either way.
        """
        if self.ready():
            return self.libs_dir
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.cache_dir / ".lock"):  # another process may be resolving the same version
            if self.ready():
                return self.libs_dir
            self._resolve(quiet)
        return self.libs_dir

    def _resolve(self, quiet: bool) -> None:
        pom_sha256 = _pom_sha256()
        mvn = find_executable("mvn")
        check_java()
        staging = Path(tempfile.mkdtemp(prefix="libs.", dir=self.cache_dir))
        command = [
            mvn,
            "-B",
            "-q" if quiet else "--no-transfer-progress",
            "-Dstyle.color=never",
            "-f",
            str(POM_PATH),
            f"-Dkafka.version={self.kafka_version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
        ]
        log.info("resolving Kafka %s jars with Maven into %s", self.kafka_version, self.libs_dir)
        started_s = time.monotonic()
        try:
            done = subprocess.run(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
            )
            if not quiet:
                for line in strip_colours(done.stdout).splitlines():
                    log.info("mvn: %s", line)
            jars = sorted(staging.glob("*.jar"))
            if done.returncode != 0 or not jars:
                raise BrokerError(
                    f"Maven could not resolve Kafka {self.kafka_version} "
                    f"(exit {done.returncode}, {len(jars)} jars); `{' '.join(command)}` said:\n"
                    f"{tail(done.stdout) or '(no output)'}"
                )
            shutil.rmtree(self.libs_dir, ignore_errors=True)
            staging.rename(self.libs_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        marker = {
            "kafka_version": self.kafka_version,
            "pom_sha256": pom_sha256,
            "jars": [jar.name for jar in jars],
            "resolved_at": time.time(),
        }
        (self.cache_dir / _MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
        log.info("resolved %d jars in %.1f s", len(jars), time.monotonic() - started_s)


def _pom_sha256() -> str:
    try:
        return hashlib.sha256(POM_PATH.read_bytes()).hexdigest()
    except FileNotFoundError as err:
        raise BrokerError(
            f"{POM_PATH} is missing: this installation of edgestream lacks its package data "
            "(reinstall it, or `pip install -e .` from a checkout)"
        ) from err
