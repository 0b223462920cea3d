"""The worker's partitions: which are assigned, which are in service, and where each is read from.

An assigned partition (its producer started) waits to be *positioned*: sought to its stable committed
offset, its audit chain continued from the head committed with that offset, and, when it is newly
assigned or was rewound, its replay memory rebuilt up to that offset (``workers/edge/replaymemory.py``):
a restart, a failed commit or a move to another worker does not reopen the replay window nor close it
on a request that never committed. Then it is in service, with
the *epoch* of that positioning: a record belongs to the epoch it was fetched in, and only records of a
partition's current epoch are processed. After a rewind, units already closed may still hold records
fetched before it; they must not commit once the partition is positioned again.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from edgestream.pipeline.serving.auditchain import AuditChain, ChainHead, MalformedChainHead, chain_id
from edgestream.workers.edge.fetching import Fetches
from edgestream.workers.edge.offsets import Committed, UnstableOffsets, stable_committed

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

log = logging.getLogger(__name__)

Rebuild = Callable[[Mapping[TopicPartition, int]], Awaitable[set[TopicPartition]]]
"""Rebuilds the replay memory of newly assigned partitions up to the committed offsets given; returns
the partitions that may be served (the others are tried again next round)."""

POSITION_TIMEOUT_S = 2.0
"""How long one round of positioning waits for stable committed offsets before fetching for the
partitions already in service again (the rest are tried next round)."""


class Partitions:
    """Assignment, positioning and service of the partitions of one consumer."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        fetches: Fetches,
        chains: AuditChain,
        rebuild: Rebuild | None = None,
    ) -> None:
        self._consumer = consumer
        self._fetches = fetches
        self._chains = chains
        self._rebuild = rebuild
        self._to_rebuild: set[TopicPartition] = set()  # assigned or rewound: replay memory not rebuilt yet
        self.serving: dict[TopicPartition, int] = {}
        """Partitions assigned, with their producer started and their position set: each with the
        epoch of that positioning."""
        self._epochs = itertools.count(1)
        self._to_position: set[TopicPartition] = set()  # assigned and producer started
        # Next offsets this worker's own transactions committed: a lower bound on the truth that a
        # committed() answer may lag behind (aiokafka's OffsetFetch has no KIP-447 require_stable).
        self._committed_through: dict[TopicPartition, int] = {}
        # Next offset not yet admitted per partition since it was last positioned: a record fetched
        # twice (the client re-fetching around a broker restart) is admitted once.
        self._next_offset: dict[TopicPartition, int] = {}
        self._generation = 0  # bumped by every assignment change

    def __len__(self) -> int:
        """Partitions assigned: in service or waiting to be positioned."""
        return len(self.serving.keys() | self._to_position)

    def assigned(self, tps: set[TopicPartition]) -> None:
        """``tps`` were assigned and their producers started: position them before their next fetch."""
        self._generation += 1
        self._to_position |= tps
        self._to_rebuild |= tps

    def revoked(self, tps: set[TopicPartition]) -> None:
        """``tps`` are no longer ours: out of service, and not to be positioned."""
        self._generation += 1
        for tp in tps:
            self.serving.pop(tp, None)
        self._fetches.forget(tps)
        self._to_position -= tps
        self._to_rebuild -= tps

    def rewound(self, tp: TopicPartition) -> None:
        """Nothing of ``tp``'s last commit committed: out of service until positioned again, and its
        replay memory rebuilt then. Units built while that commit was in flight had their request ids
        accepted, and an earlier commit may have made them permanent in the guard: only the log up to
        the committed offset says which ids really committed."""
        if self.serving.pop(tp, None) is not None:
            self._fetches.forget([tp])
            self._to_position.add(tp)
            self._to_rebuild.add(tp)

    def committed(self, tp: TopicPartition, next_offset: int) -> None:
        """This worker's own transaction committed ``tp`` up to ``next_offset``."""
        self._committed_through[tp] = max(self._committed_through.get(tp, 0), next_offset)

    async def position_new(self) -> None:
        """Seek newly assigned and rewound partitions to their committed offsets, then serve them.

        Only here, between two fetches: records already handed out are not taken back by a seek (what
        is buffered or in flight for the partition is dropped, ``fetching.py``). Not in the rebalance
        listener either: ``committed()`` there waits for the rebalance that is calling the listener.
        """
        waiting = self._to_position & self._consumer.assignment()
        self._to_position -= self._to_position - waiting  # revoked while waiting
        if not waiting:
            return
        generation = self._generation
        positioned = await self._seek_committed(waiting)
        if generation != self._generation:
            return  # the assignment changed meanwhile: position again from what is assigned now
        fresh = positioned & self._to_rebuild
        if fresh and self._rebuild is not None:
            # Bounded in time by the rebuild itself; one it could not finish yet waits for the next round.
            rebuilt = await self._rebuild({tp: self._next_offset[tp] for tp in fresh})
            if generation != self._generation:
                return
            positioned -= fresh - rebuilt
            fresh = rebuilt
        self._to_rebuild -= fresh
        self._to_position -= positioned
        for tp in positioned:
            self.serving[tp] = next(self._epochs)

    async def _seek_committed(self, tps: set[TopicPartition]) -> set[TopicPartition]:
        """Position each of ``tps`` at its stable committed offset (its beginning when it has none);
        returns the ones positioned. Those whose offsets are not stable yet (a transaction still in
        doubt, the coordinator still loading after a broker restart) wait for the next round.

        The offsets come from OffsetFetch with ``require_stable`` (``workers/edge/offsets.py``): aiokafka's
        ``committed()`` may answer "none" or an older offset right after a broker restart, and reading
        from there would process committed records a second time.
        """
        try:
            committed = await stable_committed(self._consumer, tps, timeout_s=POSITION_TIMEOUT_S)
        except UnstableOffsets as err:
            log.warning("not positioning %d partitions yet: %s", len(tps), err)
            return set()
        positioned: set[TopicPartition] = set()
        for tp, commit in committed.items():
            if tp not in self._consumer.assignment():
                continue  # revoked during an await here (a rebalance): the next round positions it
            offset = None if commit is None else commit.offset
            self._start_chain(tp, commit)
            ours = self._committed_through.get(tp)
            if ours is not None and (offset is None or offset < ours):
                # Cannot happen with a stable answer; if it does, our own commit is the truth.
                log.error(
                    "%s[%d]: stable committed offset %s is below the %d this worker committed",
                    tp.topic,
                    tp.partition,
                    offset,
                    ours,
                )
                offset = ours
            if offset is None:
                try:
                    await self._fetches.seek_to_beginning(tp)
                except KafkaError as err:
                    log.warning(
                        "%s[%d]: first offset not found (%r); next round", tp.topic, tp.partition, err
                    )
                    continue
                if tp not in self._consumer.assignment():  # revoked meanwhile
                    self._fetches.forget([tp])
                    continue
                self._next_offset[tp] = 0
            else:
                self._fetches.seek(tp, offset)
                self._next_offset[tp] = offset
            positioned.add(tp)
        return positioned

    def _start_chain(self, tp: TopicPartition, commit: Committed | None) -> None:
        """Continue the partition's audit chain from the head committed with its offset."""
        chain = chain_id(tp.topic, tp.partition)
        offset = 0 if commit is None else commit.offset
        try:
            head = ChainHead.from_metadata(None if commit is None else commit.metadata)
            self._chains.start(chain, head, offset=offset)
        except MalformedChainHead as err:
            # Keep serving; the old segment's end can no longer be checked against a head, and
            # `audit verify` shows the new segment starting here.
            log.error("%s: %s; starting a new audit chain segment", chain, err)
            self._chains.start(chain, None, offset=offset)

    def unseen(
        self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """The records of ``tp`` not admitted before since it was positioned, in offset order."""
        expected = self._next_offset.get(tp, 0)
        fresh = [r for r in records if r.offset >= expected]
        if len(fresh) < len(records):
            log.warning(
                "%s[%d]: %d records fetched again (from offset %d; next new one is %d); admitted once",
                tp.topic,
                tp.partition,
                len(records) - len(fresh),
                records[0].offset,
                expected,
            )
        if fresh:
            self._next_offset[tp] = fresh[-1].offset + 1
        return fresh
