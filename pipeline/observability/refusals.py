"""TLS and authorization refusals, where a process can observe them.

Two places show them. An authorization error (topic, group, transactional id, cluster) is *raised* to
the caller by aiokafka: the worker's fatal error, say (:func:`refusal_kind` classifies it, its causes
included). A TLS failure is not: aiokafka logs it ("Unable connect to ...: <SSLError>") and retries,
and bootstrap ends in a ``KafkaConnectionError`` that no longer carries it. :class:`RefusalLog`, a
logging handler on the ``aiokafka`` logger, counts those from the log records' arguments. It sees only
records the ``aiokafka`` logger lets through (ERROR and WARNING by default) and counts every client of
the process, so two workers in one process (tests) count each other's.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

from aiokafka import errors

AIOKAFKA_LOGGER = "aiokafka"
"""The logger :class:`RefusalLog` listens on (its children included)."""
_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (errors.TopicAuthorizationFailedError, "topic_authorization"),
    (errors.GroupAuthorizationFailedError, "group_authorization"),
    (errors.TransactionalIdAuthorizationFailed, "transactional_id_authorization"),
    (errors.ClusterAuthorizationFailedError, "cluster_authorization"),
    (ssl.SSLError, "tls"),
)
_MAX_CHAIN = 8  # causes followed at most: a cycle or a deep chain costs nothing more


def refusal_kind(err: BaseException) -> str | None:
    """The refusal ``err`` is (or was caused by), as a kind of ``edgestream_refusals_total``; None for
    any other error."""
    seen: BaseException | None = err
    for _ in range(_MAX_CHAIN):
        if seen is None:
            return None
        for cls, kind in _KINDS:
            if isinstance(seen, cls):
                return kind
        seen = seen.__cause__ or seen.__context__
    return None


class RefusalLog(logging.Handler):
    """Counts the TLS failures aiokafka logs and swallows; ``install``/``remove`` or ``with``."""

    def __init__(self, count: Callable[[str], None]) -> None:
        super().__init__(level=logging.WARNING)
        self._count = count

    def emit(self, record: logging.LogRecord) -> None:
        """Count a record whose arguments (or exception) hold a TLS error; never raises."""
        try:
            args = record.args if isinstance(record.args, tuple) else ()
            found = [a for a in args if isinstance(a, BaseException)]
            if record.exc_info is not None and record.exc_info[1] is not None:
                found.append(record.exc_info[1])
            for err in found:
                if refusal_kind(err) == "tls":
                    self._count("tls")
                    return
        except Exception:  # a metric must never break logging
            return

    def install(self) -> RefusalLog:
        """Listen on the ``aiokafka`` logger."""
        logging.getLogger(AIOKAFKA_LOGGER).addHandler(self)
        return self

    def remove(self) -> None:
        """Stop listening. Idempotent."""
        logging.getLogger(AIOKAFKA_LOGGER).removeHandler(self)

    def __enter__(self) -> RefusalLog:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()
