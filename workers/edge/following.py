"""A worker's side of the registry: catch up with ``control.models`` before serving, then follow it.

**At start** (:meth:`RegistryFollowing.start`, before the worker joins its consumer group, so before
its first fetch, its ready file and a ready /readyz) the worker reads ``control.models`` to its end and
applies the latest state of every model it serves, each version loaded and verified. Records waiting
in its partitions (a restart, a scale-out) may pin a version, or name a model, that only the registry's
state makes served; fetched before the state is applied, they would be dead-lettered as
``unknown_model``: valid requests lost.

What cannot be applied at start is decided as a serving system that must lose nothing would:

- **The registry cannot be read, or a state's versions cannot be had now** (brokers unreachable,
  the artifact server down: ``artifact_unavailable``; a version this host cannot run:
  ``provider_unavailable``): connecting and reading are retried with a backoff until
  ``registry_start_timeout_s``, then the worker stops with :class:`RegistryNotReady`, never having
  joined its group. Serving the built-in models instead would answer with versions the registry may
  have rolled back from and dead-letter the pins it allows; not starting loses nothing: the group's
  other workers keep the partitions, or the records wait for this one's restart (the orchestrator's
  backoff), and the operator sees a worker that is not ready, with the reason in its log.
- **A state refused on its merits** (unsigned, signed by a key not pinned, badly signed, malformed,
  an artifact that does not hash to its manifest or is missing, a signature that does not match its
  graph) is refused and counted (``edgestream_registry_refused_total``) as when following, and the
  worker starts serving what it would have served: the built-in model of that family (a user's model:
  none). No worker will ever apply such a state, so waiting for it would let one bad record on
  ``control.models`` stop every restart and scale-out of the fleet; the operator's fix (a good signed
  state, e.g. a rollback) is applied as soon as it is published.

**Then** it follows from the end offsets it caught up to (:class:`RecordFollower`), so the records
applied at start are not read again: a state at or below the applied revision that arrives later is a
replay, refused and counted as ``stale_revision`` (``signed_state.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from aiokafka.errors import KafkaError

from edgestream.pipeline.errors import KafkaTimeout, ProviderUnavailable
from edgestream.pipeline.registry import RegistryError
from edgestream.pipeline.registry.client import RecordFollower
from edgestream.pipeline.registry.errors import RegistryNotReady
from edgestream.pipeline.registry.signed_state import accept_state
from edgestream.pipeline.serving.served import ModelCatalog
from edgestream.workers.edge.catalog import trusted_keys
from edgestream.workers.edge.settings import WorkerSettings

log = logging.getLogger(__name__)

RETRY_BACKOFF_S: Final = (0.5, 1.0, 2.0, 5.0)
"""Pauses between attempts to reach ``control.models`` at start (the last one repeats)."""


class RegistryFollowing:
    """Catches ``catalog`` up with the registry (:meth:`start`), then follows it (:meth:`run`); calls
    ``applied`` after each state that took effect while following."""

    def __init__(self, settings: WorkerSettings, catalog: ModelCatalog, applied: Callable[[], None]) -> None:
        self._settings = settings
        self._catalog = catalog
        self._applied = applied
        self._trusted = trusted_keys(settings)
        self._records: RecordFollower | None = None
        self._last_error: BaseException | None = None
        """Why the last attempt to read ``control.models`` failed (named when the start times out)."""

    async def start(self) -> None:
        """Read ``control.models`` to its end and apply each served model's latest state, within
        ``registry_start_timeout_s``; :class:`RegistryNotReady` when that cannot be done (nothing is
        left running then)."""
        timeout_s = self._settings.registry_start_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                latest = await self._read_latest()
                for model, value in latest.items():
                    await self._apply_at_start(model, value)
        except TimeoutError as err:
            await self.stop()
            why = "" if self._last_error is None else f"; last: {self._last_error!r}"
            raise RegistryNotReady(
                f"control.models not read to its end and applied within {timeout_s:.0f} s "
                f"(registry_start_timeout_s){why}"
            ) from err
        except BaseException:
            await self.stop()
            raise
        log.info("registry applied at start: %s", self._revisions())

    async def run(self) -> None:
        """Apply each newer state as it arrives (forever). A state that is unsigned, signed by a key
        the worker does not pin, badly signed, malformed, or not newer than the one applied is refused
        (``catalog.refuse``: logged and counted) and the worker keeps serving what it served."""
        if self._records is None:
            raise RuntimeError("RegistryFollowing.run before start")
        async for model, value in self._records.newer():
            if model not in self._settings.models:
                continue  # another worker's model: none of this worker's business
            try:
                state = accept_state(model, value, self._trusted, self._catalog.revision(model))
            except RegistryError as err:
                self._catalog.refuse(model, err)
                continue
            if await self._catalog.apply(state):
                self._applied()

    async def stop(self) -> None:
        """Stop reading ``control.models``. Idempotent."""
        records, self._records = self._records, None
        if records is not None:
            await records.stop()

    async def _read_latest(self) -> dict[str, bytes]:
        """Every model's latest record, from a started follower kept for :meth:`run`; connecting and
        reading are tried again after a backoff until the caller's deadline cancels this."""
        attempt = 0
        while True:
            records = RecordFollower(
                self._settings.kafka, timeout_ms=int(self._settings.registry_start_timeout_s * 1000)
            )
            try:
                await records.start()
                latest = await records.latest()
            except (KafkaError, KafkaTimeout, OSError) as err:
                await records.stop()
                self._last_error = err
                pause_s = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                attempt += 1
                log.warning("control.models not read (%r); trying again in %.1f s", err, pause_s)
                await asyncio.sleep(pause_s)
                continue
            except BaseException:
                await records.stop()
                raise
            self._records = records
            return latest

    async def _apply_at_start(self, model: str, value: bytes) -> None:
        if model not in self._settings.models:
            return
        try:
            state = accept_state(model, value, self._trusted, self._catalog.revision(model))
            await self._catalog.switch(state)
        except ProviderUnavailable as err:
            self._catalog.refuse(model, err)
            raise RegistryNotReady(f"{model[:64]}: {err}") from err
        except RegistryError as err:
            self._catalog.refuse(model, err)
            if err.retriable:
                raise RegistryNotReady(f"{model[:64]}: {err}") from err
            # Refused on its merits: no worker applies it; this one serves what it would have served.

    def _revisions(self) -> dict[str, int | None]:
        return {name: self._catalog.revision(name) for name in self._settings.models}
