"""The peer as a Quix Streams application: ``python -m bench.pipeline peer``.

One ``StreamingDataFrame`` per ingest topic of the region: each record's value goes through
``Answerer.answer`` (open, infer, result) and the result is produced, keyed by the record's key (the
device id), to the topic the region's devices read answers from. Quix's own defaults otherwise (its
librdkafka clients, ``auto_offset_reset`` latest, idempotent producer); ``guarantee`` and
``commit_interval_s`` choose its ``processing_guarantee`` and ``commit_interval``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from quixstreams import Application
from quixstreams.kafka.configuration import ConnectionConfig

from bench.peers.opener import Answerer, load_models
from bench.peers.settings import QUIX_GUARANTEE, PeerSettings
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.catalogue import KINDS, ingest_topic
from edgestream.workers.local.fleet import answers_topic

STATE_DIR = "quix-state"
"""Quix's state directory, under the peer's home (the app keeps no state; Quix wants the path)."""


def connection_config(kafka: KafkaSettings) -> ConnectionConfig:
    """``kafka`` for librdkafka: the same brokers, and over TLS the same CA, certificate and key (so the
    same principal and ACLs) with the broker's host name verified, as every edgestream client does."""
    files = kafka.files
    if kafka.security_protocol != "SSL" or files is None:
        return ConnectionConfig(bootstrap_servers=kafka.bootstrap_servers, security_protocol="plaintext")
    return ConnectionConfig(
        bootstrap_servers=kafka.bootstrap_servers,
        security_protocol="ssl",
        ssl_ca_location=str(files.ca_file),
        ssl_certificate_location=str(files.cert_file),
        ssl_key_location=str(files.key_file),
        ssl_endpoint_identification_algorithm="https",
    )


class _ReadyApplication(Application):
    """An ``Application`` that writes a ready file once it has partitions (the bench waits for it)."""

    def __init__(self, ready_file: Path | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._ready_file = ready_file

    def _on_assign(self, _: Any, topic_partitions: list[Any]) -> None:
        super()._on_assign(_, topic_partitions)
        if self._ready_file is None or not topic_partitions:
            return
        tmp = self._ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "partitions": len(topic_partitions)}))
        tmp.replace(self._ready_file)


def build_app(settings: PeerSettings, answerer: Answerer) -> Application:
    """The application: every ingest topic of the region -> ``answerer`` -> the answers topic."""
    options: dict[str, Any] = {}
    if settings.commit_interval_s is not None:
        options["commit_interval"] = settings.commit_interval_s
    app = _ReadyApplication(
        settings.ready_file,
        broker_address=connection_config(settings.kafka),
        consumer_group=settings.group,
        auto_offset_reset=settings.auto_offset_reset,
        processing_guarantee=QUIX_GUARANTEE[settings.guarantee],
        state_dir=settings.home / STATE_DIR,
        loglevel="WARNING",
        **options,
    )
    out = app.topic(answers_topic(settings.region), value_serializer="bytes", key_serializer="bytes")
    for kind in KINDS:
        source = app.topic(
            ingest_topic(settings.region, kind), value_deserializer="bytes", key_deserializer="bytes"
        )
        sdf = app.dataframe(source).apply(answerer.answer)
        sdf.filter(lambda value: value is not None).to_topic(out)
    return app


def run_peer_process(settings: PeerSettings) -> None:
    """The peer process's main: run until SIGTERM or SIGINT (Quix's handlers), then write the stats."""
    logging.basicConfig(level=logging.WARNING)
    keyring = keyfile.load(settings.home / "keys.json")
    models = load_models(settings.home, settings.model_size, settings.intra_op_threads)
    answerer = Answerer(
        settings.region,
        keyring,
        models,
        max_envelope_bytes=settings.max_envelope_bytes,
        max_body_bytes=settings.max_body_bytes,
    )
    try:
        build_app(settings, answerer).run()
    finally:
        if settings.stats_file is not None:
            stats = {
                "answered": answerer.answered,
                "refused": dict(answerer.refused),
                "infer_s": answerer.infer_s,
                "guarantee": settings.guarantee,
                "commit_interval_s": settings.commit_interval_s,
            }
            settings.stats_file.write_text(json.dumps(stats))
        if settings.ready_file is not None:
            settings.ready_file.unlink(missing_ok=True)
