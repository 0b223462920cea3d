"""TLS 1.3 contexts with mutual authentication, from the files of the development PKI (``certs``).

``client_context`` is what a Kafka client (aiokafka's ``ssl_context``) uses: it verifies the broker
against the trust bundle and its host name, and presents the identity's certificate. ``server_context``
is the other side, for tests that prove the client's behaviour against a local TLS server.
"""

from __future__ import annotations

import logging
import ssl
import stat
from typing import TYPE_CHECKING

from edgestream.pipeline.errors import ConfigError

if TYPE_CHECKING:
    from edgestream.pipeline.security.pki import TlsFiles

log = logging.getLogger(__name__)


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """A TLS 1.3-only client context: the server must chain to ``files.ca_file`` and match the host
    name it was reached by; the client presents ``files.cert_file``. Raises ConfigError on bad files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = True
    return _configure(context, files)


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A TLS 1.3-only server context that requires a client certificate chaining to ``files.ca_file``.
    Raises ConfigError on bad files."""
    return _configure(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), files)


def _configure(context: ssl.SSLContext, files: TlsFiles) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    # RFC 5280 checks OpenSSL skips by default (Python 3.13 turns them on): our certificates pass them.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    _warn_if_key_is_shared(files)
    try:
        context.load_verify_locations(cafile=files.ca_file)
        context.load_cert_chain(certfile=files.cert_file, keyfile=files.key_file)
    except OSError as e:  # ssl.SSLError is an OSError
        raise ConfigError(
            f"cannot load TLS files (ca {files.ca_file}, cert {files.cert_file}, key {files.key_file}): {e}"
        ) from e
    return context


def _warn_if_key_is_shared(files: TlsFiles) -> None:
    try:
        mode = stat.S_IMODE(files.key_file.stat().st_mode)
    except OSError:
        return  # loading it reports the problem
    if mode & 0o077:
        log.warning("TLS key file %s is readable by group or others (mode %o)", files.key_file, mode)
