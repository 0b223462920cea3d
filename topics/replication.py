"""How many copies of each partition a cluster keeps: one rule for our topics, the broker's internal
topics (offsets, transaction state) and the Kubernetes resources.

A cluster of three or more brokers keeps three replicas and acknowledges a write once two have it
(``min.insync.replicas`` 2): one broker may be down, or restarting, and writes go on without loss.
A single broker keeps one of each. ``docker-compose.yml`` spells the same numbers for its brokers.
"""

from __future__ import annotations

from typing import Final

MAX_REPLICATION_FACTOR: Final = 3
"""Replicas per partition on a cluster of three or more brokers."""
MIN_INSYNC_REPLICAS: Final = "min.insync.replicas"
"""The topic (and broker) config that says how many replicas must have a write before it is acknowledged."""


def replication_factor(brokers: int) -> int:
    """Replicas per partition on a cluster of ``brokers``: as many as there are, at most three."""
    if brokers < 1:
        raise ValueError(f"a cluster has at least one broker, not {brokers}")
    return min(MAX_REPLICATION_FACTOR, brokers)


def min_insync_replicas(replicas: int) -> int:
    """Replicas that must have a write before it is acknowledged: all but one, at least one."""
    if replicas < 1:
        raise ValueError(f"a partition has at least one replica, not {replicas}")
    return max(1, replicas - 1)
