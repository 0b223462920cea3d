"""`EdgeClient`: ask the edge, answer from the local fallback when it cannot answer in time.

``infer(x, deadline_ms)`` seals the input with the device key of the region in use (its ``ts`` on the
corrected clock, ``clock.py``), sends it, and waits for its sealed reply; the reply is opened with the
device's reply key for that region (``open_reply``: another device's, another region's or a tampered
reply is refused and counted, never acted on). When the deadline is about to pass (``fallback_reserve_ms``
before it, more while the event loop has been waking late: ``looplag.py``), no session is up, or the
gateway rejects the request for good, the family's ``tiny`` model answers on the device instead
(``models.py``), and the answer says so. Fallbacks are reported on
the family's next envelope (``fallbacks=``); a late edge answer is reconciled with the fallback's
(``reconcile.py``) and reported (``Transport.report``).

One retry rule: an envelope without ``accepted`` within ``resend_interval_ms`` is resent byte for byte,
each further wait twice the last (at most ``max_resend_interval_ms``: resends must not multiply the
load of an edge slow to confirm), only while ``ts + max_age_ms - clock_margin_ms`` has not passed and
only before the request's deadline; a request is never sealed twice. Replies are deduplicated by
request id (the first copy wins) and acknowledged. Telemetry that can wait (``telemetry``) goes into
the offline queue when no session is up and is flushed in order on the next one; ``offline.py`` drops
what outlived its time to live.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from edgestream.device.actions import ActionHooks, Backoff, refusal_action, rejection_action
from edgestream.device.answers import Answer, ClientSettings, ClientStats
from edgestream.device.clock import ClockOffset
from edgestream.device.looplag import LoopLag
from edgestream.device.models import DeviceModels
from edgestream.device.offline import OfflineQueue
from edgestream.device.reconcile import Given, Reconciler
from edgestream.device.regions import by_distance
from edgestream.device.sessions import Sessions
from edgestream.device.tiers import Link, choose_tier
from edgestream.device.transport import (
    Accepted,
    Connected,
    Disconnected,
    Rejected,
    Reply,
    TransportUnavailable,
)
from edgestream.pipeline.contract.codec import encode_tensor
from edgestream.pipeline.contract.envelope import new_request_id, seal
from edgestream.pipeline.contract.fallbacks import MAX_DIGITS
from edgestream.pipeline.contract.reply import ReplyRefused, open_reply, read_reply_header
from edgestream.pipeline.errors import ShapeMismatch, UnknownModel
from edgestream.pipeline.registry.errors import RegistryError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    import numpy.typing as npt

    from edgestream.device.identity import DeviceIdentity
    from edgestream.device.transport import Event, RegionEndpoint, Transport
    from edgestream.pipeline.contract.actions import DeviceAction
    from edgestream.pipeline.contract.records import ResultRecord
    from edgestream.pipeline.registry.devicecatalogue import CatalogueEntry
    from edgestream.pipeline.registry.signing import TrustedKeys

log = logging.getLogger(__name__)

_MAX_FALLBACK_REPORT: Final = 10**MAX_DIGITS - 1
"""The most one envelope reports (``pipeline/contract/fallbacks.py``'s header holds 6 digits)."""


@dataclass(slots=True)
class _Pending:
    request_id: bytes
    entry: CatalogueEntry
    envelope: bytes
    transport: Transport
    resend_until_s: float
    next_resend_s: float
    outcome: asyncio.Future[ResultRecord | str]
    accepted: bool = False
    resent: int = 0


class EdgeClient:
    """The device SDK: one per device (``docs/device-sdk.md``)."""

    def __init__(
        self,
        identity: DeviceIdentity,
        endpoints: Sequence[RegionEndpoint],
        make_transport: Callable[[RegionEndpoint], Transport],
        trusted: TrustedKeys,
        cache_dir: Path,
        settings: ClientSettings | None = None,
        hooks: ActionHooks | None = None,
    ) -> None:
        self.settings = s = settings or ClientSettings()
        self.identity = identity
        self.hooks = hooks or ActionHooks()
        self.models = DeviceModels(trusted, cache_dir)
        self.clock = ClockOffset()
        self.stats = ClientStats()
        self.reconciler = Reconciler()
        self.backoff = Backoff()
        self.loop_lag = LoopLag(window_s=s.lag_window_s, cap_s=s.max_lag_reserve_ms / 1000.0)
        """How late this client's timers woke lately; the fallback's reserve grows by it."""
        self.offline: OfflineQueue[tuple[str, npt.NDArray[Any], int]] = OfflineQueue()
        self.sessions = Sessions(
            by_distance(endpoints, s.location),
            make_transport,
            self._on_transport,
            timeout_s=s.session_timeout_s,
            retry_nearest_s=s.retry_nearest_s,
        )
        self._pending: dict[bytes, _Pending] = {}
        self._answered: OrderedDict[bytes, None] = OrderedDict()
        self._fallbacks: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_report_s = self._last_catalogue_s = time.monotonic()
        self._refreshing: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the nearest region that answers, sync the clock, take the catalogue (fetched
        and verified, else the verified copy on disk) and load each family's fallback model.
        Raises the catalogue's :class:`RegistryError` when no verified catalogue is available; a start
        that raises (or is cancelled) leaves nothing running: its tasks and transports are closed."""
        try:
            transport = await self.sessions.connect(time.monotonic())
            self._tasks.append(asyncio.create_task(self._ticker()))
            if transport is not None:
                with contextlib.suppress(TransportUnavailable, RegistryError):
                    await self._sync_clock(transport)
                    await self.models.refresh_catalogue(transport.fetch_catalogue, self.clock.now_ms())
            if self.models.catalogue is None and not self.models.load_cached_catalogue(self.clock.now_ms()):
                raise RegistryError("no verified device catalogue (fetched or cached)")
            await self._load_fallbacks(transport)
        except BaseException:
            try:
                await self.close()
            except Exception:  # the start's own error is the one to raise
                log.exception("closing a client whose start failed")
            raise

    async def _load_fallbacks(self, transport: Transport | None) -> None:
        catalogue = self.models.catalogue
        families = sorted({e.family for e in catalogue.models}) if catalogue is not None else []
        for family in families:
            fetch = None if transport is None else transport.fetch_artifact
            with contextlib.suppress(TransportUnavailable):
                await self.models.ensure_fallback(family, fetch)

    async def close(self) -> None:
        """Stop the background work and close every transport."""
        if self._refreshing is not None:
            self._tasks.append(self._refreshing)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.sessions.close()

    async def refresh_catalogue(self) -> None:
        """Fetch the catalogue again (the ``refresh_catalogue`` action), then the fallback models."""
        transport = self.sessions.current
        if transport is None:
            return
        with contextlib.suppress(TransportUnavailable, RegistryError):
            await self.models.refresh_catalogue(transport.fetch_catalogue, self.clock.now_ms())
            await self._load_fallbacks(transport)

    def _refresh_soon(self) -> None:
        """Refresh the catalogue in the background, once at a time."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self.refresh_catalogue())

    def _on_transport(self, transport: Transport) -> None:
        self._tasks.append(asyncio.create_task(self._pump(transport)))

    # --- asking -------------------------------------------------------------------------------

    def family_of(self, kind: str | None, model: str | None) -> str:
        """The model family to ask: ``model``, else the one family of ``kind`` with a fallback."""
        if model is not None:
            return model
        catalogue = self.models.catalogue
        found = sorted({e.family for e in catalogue.models if e.input.kind == kind}) if catalogue else []
        if len(found) != 1:
            raise UnknownModel(f"{kind}: {len(found)} families take it; name the model")
        return found[0]

    def link(self) -> Link:
        """What the device measured of its link."""
        return Link(self.clock.rtt_ms, self.models.bandwidth_kbps)

    async def infer(
        self, x: npt.NDArray[Any], deadline_ms: float, *, kind: str | None = None, model: str | None = None
    ) -> Answer:
        """The edge's answer within ``deadline_ms``, else the local fallback's (module docstring)."""
        started = time.monotonic()
        family = self.family_of(kind, model)
        x = self._item(family, x)
        transport = self.sessions.current
        entry = self._edge_entry(family)
        if entry is None:
            return self._fall_back(family, x, started, None, "not_served", None)
        if transport is None or not transport.connected:
            return self._fall_back(family, x, started, None, "unavailable", None)
        if self.backoff.active(started):
            return self._fall_back(family, x, started, transport.region, "backing_off", None)
        try:
            pending = await self._send(transport, entry, x, started)
        except TransportUnavailable:
            self.sessions.lost(time.monotonic())
            return self._fall_back(family, x, started, transport.region, "unavailable", None)
        now_s = time.monotonic()
        reserve_s = self.loop_lag.reserve_s(self.settings.fallback_reserve_ms / 1000.0, now_s)
        due_s = started + deadline_ms / 1000.0 - reserve_s
        await asyncio.wait((pending.outcome,), timeout=max(0.0, due_s - now_s))  # never cancels it
        if not pending.outcome.done():
            self.loop_lag.note(due_s, time.monotonic())
        self._pending.pop(pending.request_id, None)
        outcome = pending.outcome.result() if pending.outcome.done() else "deadline"
        if isinstance(outcome, str):
            return self._fall_back(family, x, started, transport.region, outcome, pending.request_id)
        self.stats.edge += 1
        return Answer(
            "edge",
            outcome.request_id,
            outcome.model,
            outcome.model_version,
            entry.tier,
            outcome.label,
            outcome.scores,
            (time.monotonic() - started) * 1000.0,
            outcome.region,
        )

    def _item(self, family: str, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """``x`` as an array, once it has the family's item shape (:class:`ShapeMismatch`)."""
        array = np.asarray(x)
        fallback = self.models.fallback_entry(family)
        if fallback is not None and tuple(array.shape) != fallback.input.shape:
            raise ShapeMismatch(f"{family} takes items of shape {fallback.input.shape}, got {array.shape}")
        return array

    def _edge_entry(self, family: str) -> CatalogueEntry | None:
        catalogue = self.models.catalogue
        if catalogue is None:
            return None
        return choose_tier(catalogue.tiers(family), self.settings.device_class, self.link())

    def _seal(self, transport: Transport, entry: CatalogueEntry, x: npt.NDArray[Any]) -> tuple[bytes, bytes]:
        array = np.asarray(x)
        if tuple(array.shape) != entry.input.shape:
            raise ShapeMismatch(f"{entry.family} takes items of shape {entry.input.shape}, got {array.shape}")
        sealer = self.identity.sealer(transport.region)
        if sealer is None:
            raise TransportUnavailable(transport.region, "no_key", "no device key for this region")
        now_ms = self.clock.now_ms()
        request_id = new_request_id(now_ms=now_ms)
        envelope = seal(
            encode_tensor(array, entry.input.wire[0]),  # type: ignore[arg-type]
            device_key=sealer[0],
            device_id=self.identity.device_id,
            key_id=sealer[1],
            kind=entry.input.kind,  # type: ignore[arg-type]
            model=entry.family,
            model_version=entry.version if entry.route == "pin" else None,
            capture_time_ms=now_ms,
            request_id=request_id,
        )
        return request_id, envelope

    async def _send(
        self, transport: Transport, entry: CatalogueEntry, x: npt.NDArray[Any], started: float
    ) -> _Pending:
        request_id, envelope = self._seal(transport, entry, x)
        s = self.settings
        pending = _Pending(
            request_id,
            entry,
            envelope,
            transport,
            started + (s.max_age_ms - s.clock_margin_ms) / 1000.0,
            started + s.resend_interval_ms / 1000.0,
            asyncio.get_running_loop().create_future(),
        )
        self._pending[request_id] = pending
        unsent = self._fallbacks.pop(entry.family, 0)
        reported = min(unsent, _MAX_FALLBACK_REPORT)  # the rest goes on the next ones
        if unsent > reported:
            self._fallbacks[entry.family] = unsent - reported
        try:
            await transport.send(entry.input.kind, envelope, fallbacks=reported)
        except TransportUnavailable:
            self._pending.pop(request_id, None)
            self._fallbacks[entry.family] += reported
            raise
        return pending

    def _fall_back(
        self,
        family: str,
        x: npt.NDArray[Any],
        started: float,
        region: str | None,
        why: str,
        request_id: bytes | None,
    ) -> Answer:
        model = self.models.fallback(family)
        local = model.run(x)
        self._fallbacks[family] += 1
        self.stats.fallback[why.partition(":")[0]] += 1
        entry = model.entry
        if request_id is not None:
            score = max(local.probs) if local.probs else 0.0
            given = Given(family, entry.version, local.label, score)
            self.reconciler.fell_back(request_id, given, time.monotonic())
        rid = request_id or b"\0" * 16
        latency_ms = (time.monotonic() - started) * 1000.0
        return Answer(
            "fallback",
            rid,
            family,
            entry.version,
            entry.tier,
            local.label,
            local.probs,
            latency_ms,
            region,
            why,
        )

    # --- telemetry ----------------------------------------------------------------------------

    async def telemetry(
        self,
        x: npt.NDArray[Any],
        *,
        kind: str | None = None,
        model: str | None = None,
        ttl_s: float | None = None,
    ) -> None:
        """Send ``x`` without waiting for an answer; queued (offline) while no session is up."""
        family = self.family_of(kind, model)
        s = self.settings
        ttl = min(s.offline_ttl_s if ttl_s is None else ttl_s, (s.max_age_ms - s.clock_margin_ms) / 1000.0)
        self.offline.put((family, np.asarray(x), self.clock.now_ms()), ttl_s=ttl, now_s=time.monotonic())
        await self._flush_offline()

    async def _flush_offline(self) -> None:
        transport = self.sessions.current
        if transport is None or not transport.connected or not len(self.offline):
            return
        entries = self.offline.take(time.monotonic())
        for i, (expires_s, (family, x, _captured)) in enumerate(entries):
            entry = self._edge_entry(family)
            if entry is None:
                continue
            try:
                _, envelope = self._seal(transport, entry, x)
                await transport.send(entry.input.kind, envelope)
            except TransportUnavailable:
                self.offline.put_back(entries[i:])
                return
            del expires_s

    # --- events -------------------------------------------------------------------------------

    async def _pump(self, transport: Transport) -> None:
        while True:
            event = await transport.events.get()
            try:
                await self._on_event(transport, event)
            except Exception:  # one bad event never stops the device's reader
                log.exception("while handling %s from %s", type(event).__name__, transport.region)

    async def _on_event(self, transport: Transport, event: Event) -> None:
        if isinstance(event, Reply):
            await self._on_reply(transport, event)
        elif isinstance(event, Accepted):
            pending = self._pending.get(event.request_id)
            if pending is not None:
                pending.accepted = True
            self.backoff.reset()
        elif isinstance(event, Rejected):
            self._on_rejected(event)
        elif isinstance(event, Connected):
            asyncio.create_task(self._on_connected(transport))  # noqa: RUF006 (ends on its own)
        elif isinstance(event, Disconnected) and event.reason.startswith("refused:"):
            await self._act(refusal_action(event.reason.removeprefix("refused:")), event.reason, transport)

    async def _on_connected(self, transport: Transport) -> None:
        with contextlib.suppress(TransportUnavailable):
            await self._sync_clock(transport)
        await self._flush_offline()

    async def _sync_clock(self, transport: Transport) -> None:
        self.clock.add(await transport.sync_clock())

    def _remember(self, request_id: bytes) -> None:
        self._answered[request_id] = None
        while len(self._answered) > self.settings.answered_memory:
            self._answered.popitem(last=False)

    async def _on_reply(self, transport: Transport, reply: Reply) -> None:
        try:
            header, _ = read_reply_header(reply.sealed)
            key = self.identity.reply_key(transport.region, header.key_id)
            if key is None:
                raise ReplyRefused(f"no device key {header.key_id} for {transport.region}")
            record = open_reply(reply.sealed, key, transport.region)
        except ReplyRefused as e:
            self.stats.refused_replies[e.reason] += 1
            return  # not acknowledged: the genuine copy may still come
        rid = record.request_id
        with contextlib.suppress(TransportUnavailable):
            await transport.ack([rid])
        if rid in self._answered:
            self.stats.duplicates += 1
            return
        self._remember(rid)
        pending = self._pending.get(rid)
        if pending is not None and not pending.outcome.done():
            pending.outcome.set_result(record)
            return
        edge = Given(record.model, record.model_version, record.label, max(record.scores, default=0.0))
        agreed = self.reconciler.late_edge(rid, edge, time.monotonic())
        if agreed is None:
            self.stats.other_replies += 1
        elif agreed:
            self.stats.agreed += 1
        else:
            self.stats.disagreed += 1

    def _on_rejected(self, event: Rejected) -> None:
        self.stats.rejected[event.reason] += 1
        action = rejection_action(event.reason)
        pending = None if event.request_id is None else self._pending.get(event.request_id)
        now_s = time.monotonic()
        if action.action == "back_off":
            self.backoff.bump(now_s)
        if pending is not None:
            if action.resend:
                pending.next_resend_s = max(pending.next_resend_s, self.backoff.until_s)
            elif not pending.outcome.done():
                pending.outcome.set_result(f"rejected:{event.reason}")
        transport = None if pending is None else pending.transport
        if action.action != "back_off":
            asyncio.create_task(self._act(action, event.reason, transport))  # noqa: RUF006

    async def _act(self, action: DeviceAction, reason: str, transport: Transport | None) -> None:
        """Apply one row of the action table."""
        self.stats.actions[action.action] += 1
        if action.action == "back_off":
            self.backoff.bump(time.monotonic())
        elif action.action == "refresh_catalogue":
            self._refresh_soon()
        elif action.action == "correct_clock" and transport is not None:
            with contextlib.suppress(TransportUnavailable):
                await self._sync_clock(transport)
        elif action.action == "reprovision_key" and self.hooks.reprovision is not None:
            region = transport.region if transport is not None else ""
            key = await self.hooks.reprovision(region, reason)
            if key is not None and region:
                self.identity.replace(region, key)
                await self.sessions.replace(region)  # a transport authenticates with its own key
                await self.sessions.connect(time.monotonic())
        elif action.action == "fix_client" and self.hooks.fix_client is not None:
            self.hooks.fix_client(reason, action.advice)

    # --- background ---------------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            due_s = time.monotonic() + self.settings.tick_s
            await asyncio.sleep(self.settings.tick_s)
            now_s = time.monotonic()
            self.loop_lag.note(due_s, now_s)
            try:
                await self.sessions.watch(now_s)
                await self._resend(now_s)
                if now_s - self._last_report_s >= self.settings.report_interval_s:
                    await self.send_reports()
                if now_s - self._last_catalogue_s >= self.settings.catalogue_refresh_s:
                    self._last_catalogue_s = now_s
                    self._refresh_soon()
            except Exception:  # the device's background work never stops on one failure
                log.exception("device background step failed")

    async def _resend(self, now_s: float) -> None:
        for pending in list(self._pending.values()):
            if pending.accepted or now_s < pending.next_resend_s or now_s >= pending.resend_until_s:
                continue
            if pending.outcome.done() or not pending.transport.connected:
                continue
            pending.resent += 1
            s = self.settings
            wait_ms = min(s.resend_interval_ms * 2**pending.resent, s.max_resend_interval_ms)
            pending.next_resend_s = now_s + wait_ms / 1000.0
            with contextlib.suppress(TransportUnavailable):
                await pending.transport.send(pending.entry.input.kind, pending.envelope)
                self.stats.resends += 1

    async def send_reports(self) -> None:
        """Send what reconciliation counted since the last report (kept when no session is up)."""
        self._last_report_s = time.monotonic()
        transport = self.sessions.current
        if transport is None or not transport.connected or not self.reconciler.pending_report():
            return
        for body in self.reconciler.reports(self.clock.now_ms()):
            with contextlib.suppress(TransportUnavailable):
                await transport.report(body)
                self.stats.reports_sent += 1
