"""A real S3-compatible server for the tests: SeaweedFS's ``weed server -s3`` on loopback, in a temp dir.

``weed`` is built by ``deploy/s3/install-seaweedfs.sh`` (``make s3-tools``) into
``$EDGESTREAM_S3_TOOLS/bin`` (default ``~/.cache/edgestream/s3-tools``); without it the tests that need
it skip and say how to build it, and while a background build runs they wait for it (bounded), as the
chart tests wait for theirs. The server runs one master, one volume server, a filer and the S3 gateway in
one process, every port a free one on 127.0.0.1, its S3 API over TLS (a certificate for localhost and
127.0.0.1 from a PKI made for it, the project's own), with two identities from a static config: a
publisher (read and write) and a reader (read only). It is ready when the publisher has created the
bucket and written to it: each request is tried until then, under a deadline, while the process is
checked to be alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from pydantic import SecretStr

from edgestream.pipeline.registry.s3config import S3Settings
from edgestream.pipeline.security.identities import Identity
from edgestream.pipeline.security.pki import Pki
from tests.background_build import BackgroundBuild

TOOLS: Final = Path(os.environ.get("EDGESTREAM_S3_TOOLS", Path.home() / ".cache/edgestream/s3-tools"))
WEED: Final = TOOLS / "bin" / "weed"
BUILD_WAIT_S: Final = 1800.0
"""How long a test waits for install-seaweedfs.sh's background build of ``weed`` (see the script for
its measured time)."""
BUILD: Final = BackgroundBuild(TOOLS, "SeaweedFS is", BUILD_WAIT_S)
START_TIMEOUT_S: Final = 90.0
"""How long the server may take to answer S3 requests (a few seconds here; a busy machine more)."""
STOP_TIMEOUT_S: Final = 5.0
"""How long a stopping server may take before it is killed (it waits on its own timers otherwise)."""
BUCKET: Final = "edgestream-models"
PUBLISHER: Final = ("publisher-key", "publisher-secret-0123456789")
READER: Final = ("reader-key", "reader-secret-0123456789")


@dataclass(frozen=True)
class SeaweedS3:
    """A running server: where its S3 API is, the CA its certificate chains to, the two key pairs."""

    endpoint_url: str
    """``https://127.0.0.1:<port>``."""
    ca_file: Path
    """The CA bundle the server's certificate chains to."""
    log_file: Path
    """The server's output."""

    def settings(
        self, prefix: str, *, keys: tuple[str, str] = PUBLISHER, bucket: str = BUCKET, **others: Any
    ) -> S3Settings:
        """Settings for ``s3://<bucket>/<prefix>`` on this server with the key pair ``keys``; ``others``
        override any field (``ca_file``...)."""
        fields: dict[str, Any] = {
            "url": f"s3://{bucket}/{prefix}",
            "endpoint_url": self.endpoint_url,
            "access_key_id": SecretStr(keys[0]),
            "secret_access_key": SecretStr(keys[1]),
            "ca_file": self.ca_file,
            "timeout_s": 10,
        }
        return S3Settings(**{**fields, **others})

    def env(self, prefix: str, variable_prefix: str) -> dict[str, str]:
        """The publisher's settings as environment variables, e.g. ``EDGESTREAM_REGISTRY_S3__``."""
        return {
            f"{variable_prefix}URL": f"s3://{BUCKET}/{prefix}",
            f"{variable_prefix}ENDPOINT_URL": self.endpoint_url,
            f"{variable_prefix}ACCESS_KEY_ID": PUBLISHER[0],
            f"{variable_prefix}SECRET_ACCESS_KEY": PUBLISHER[1],
            f"{variable_prefix}CA_FILE": str(self.ca_file),
        }

    def client(self) -> Any:
        """A plain boto3 client as the publisher: what a test uses to tamper with the bucket."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session(
            aws_access_key_id=PUBLISHER[0], aws_secret_access_key=PUBLISHER[1], region_name="us-east-1"
        ).client(
            "s3",
            endpoint_url=self.endpoint_url,
            verify=str(self.ca_file),
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "total_max_attempts": 1},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                connect_timeout=5,
                read_timeout=10,
            ),
        )


def weed_binary() -> Path:
    """The built ``weed``, after waiting (bounded) for a background build; a skip saying how to build
    it when there is none."""
    BUILD.wait()
    if not WEED.is_file():
        pytest.skip(
            f"SeaweedFS's weed is not built in {WEED.parent}: run deploy/s3/install-seaweedfs.sh "
            f"(make s3-tools; needs Go and the Go module proxy); {_log_tail()}"
        )
    return WEED


def _log_tail() -> str:
    return BUILD.log_tail()


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (held open together, so no two are the same)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _s3_config(path: Path) -> Path:
    identities = [
        {
            "name": "publisher",
            "credentials": [{"accessKey": PUBLISHER[0], "secretKey": PUBLISHER[1]}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        },
        {
            "name": "reader",
            "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
            "actions": ["Read", "List"],
        },
    ]
    path.write_text(json.dumps({"identities": identities}))
    return path


def _command(weed: Path, root: Path, tls_cert: Path, tls_key: Path) -> tuple[list[str], int, list[int]]:
    """The command line, the S3 port, and the gRPC ports (weed names local sockets in /tmp by them)."""
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = _free_ports(8)
    data = root / "data"
    data.mkdir()
    command = [
        str(weed),
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.volumeSizeLimitMB=64",
        "-master.telemetry=false",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={root / 's3.sock'}",
        f"-s3.config={_s3_config(root / 's3.json')}",
        f"-s3.cert.file={tls_cert}",
        f"-s3.key.file={tls_key}",
    ]
    return command, s3, [master_grpc, volume_grpc, filer_grpc, s3_grpc]


@contextlib.contextmanager
def running_seaweedfs(weed: Path, root: Path) -> Iterator[SeaweedS3]:
    """``weed server -s3`` in ``root``, ready (the bucket made), stopped at the end."""
    pki = Pki(root / "tls")
    pki.init()
    files = pki.issue(Identity.registry())  # names localhost and 127.0.0.1
    command, port, grpc_ports = _command(weed, root, files.cert_file, files.key_file)
    log_file = root / "weed.log"
    with log_file.open("wb") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    server = SeaweedS3(f"https://127.0.0.1:{port}", pki.ca_file, log_file)
    try:
        _wait_ready(server, child)
        yield server
    finally:
        child.terminate()
        try:
            child.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # its data is a temp dir: nothing to lose
            child.kill()
            child.wait(timeout=10)
        for grpc_port in grpc_ports:  # what a killed weed leaves behind (the ports were ours)
            for left in Path("/tmp").glob(f"seaweedfs-*-grpc-{grpc_port}.sock"):
                left.unlink(missing_ok=True)


def _wait_ready(server: SeaweedS3, child: subprocess.Popen[bytes]) -> None:
    """Until the publisher has created the bucket and written an object into it: the S3 gateway answers
    only once the filer, and the filer once the master and a volume server, are up, and the bucket's
    first write waits for its volumes to be grown (4-5 s here), which no test should have to absorb."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = server.client()
    steps = [
        lambda: client.create_bucket(Bucket=BUCKET),
        lambda: client.put_object(Bucket=BUCKET, Key="ready-probe", Body=b"ready"),
    ]
    deadline = time.monotonic() + START_TIMEOUT_S
    last = ""
    while steps and time.monotonic() < deadline:
        if child.poll() is not None:
            pytest.fail(f"weed exited with {child.returncode}: {_tail(server.log_file)}")
        try:
            steps[0]()
            steps.pop(0)
            continue
        except ClientError as err:
            last = f"{type(err).__name__}: {err}"
        except BotoCoreError as err:
            last = f"{type(err).__name__}: {err}"
        time.sleep(0.5)
    if steps:
        pytest.fail(
            f"SeaweedFS's S3 API not ready after {START_TIMEOUT_S:.0f} s ({last}): {_tail(server.log_file)}"
        )


def _tail(path: Path) -> str:
    return " / ".join(path.read_text(errors="replace").splitlines()[-8:])
