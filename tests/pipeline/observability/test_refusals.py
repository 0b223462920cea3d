"""Refusals: authorization errors classified through their causes, TLS failures counted from what
aiokafka logs and swallows, and nothing else counted."""

from __future__ import annotations

import logging
import ssl

from aiokafka import errors

from edgestream.pipeline.observability.refusals import RefusalLog, refusal_kind


def test_each_authorization_error_and_tls_failure_has_its_kind() -> None:
    assert refusal_kind(errors.TopicAuthorizationFailedError("t")) == "topic_authorization"
    assert refusal_kind(errors.GroupAuthorizationFailedError("g")) == "group_authorization"
    assert refusal_kind(errors.TransactionalIdAuthorizationFailed()) == "transactional_id_authorization"
    assert refusal_kind(errors.ClusterAuthorizationFailedError()) == "cluster_authorization"
    assert refusal_kind(ssl.SSLCertVerificationError("certificate verify failed")) == "tls"
    assert refusal_kind(errors.KafkaConnectionError("down")) is None
    assert refusal_kind(ValueError("x")) is None


def test_a_refusal_wrapped_by_another_error_is_found_through_its_cause() -> None:
    outer = RuntimeError("commit failed")
    outer.__cause__ = errors.TopicAuthorizationFailedError("edge.r.results")
    assert refusal_kind(outer) == "topic_authorization"
    implicit = RuntimeError("while handling")
    implicit.__context__ = ssl.SSLError(1, "handshake")
    assert refusal_kind(implicit) == "tls"
    looping = RuntimeError("a")
    looping.__cause__ = RuntimeError("b")
    looping.__cause__.__cause__ = looping  # a cycle ends at the bound, not in a hang
    assert refusal_kind(looping) is None


def test_the_log_handler_counts_tls_failures_aiokafka_swallows_and_nothing_else() -> None:
    counted: list[str] = []
    client = logging.getLogger("aiokafka.client")
    with RefusalLog(counted.append):
        client.error('Unable connect to "%s:%s": %s', "h", 9093, ssl.SSLError(1, "tlsv1 alert unknown ca"))
        client.error('Unable connect to "%s:%s": %s', "h", 9093, ConnectionRefusedError(111, "refused"))
        client.warning("plain %s", "message")
    client.error('Unable connect to "%s:%s": %s', "h", 9093, ssl.SSLError(1, "after removal"))
    assert counted == ["tls"]
