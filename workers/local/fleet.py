"""A simulated device fleet: devices across the regions publish sealed inputs and await their results.

The devices (``devices``) are placed, routed and keyed before any of them sends. Devices draw
embeddings and frames from the models' held-out split, seal them, publish to their region's ingest
topic, and wait for their own result by request id on the region's replies topic (the fast replies,
sent before the unit commits and sealed to the device: each is opened with its device's reply key,
``pipeline/contract/reply.py``; a second copy of an answer is counted as a duplicate and ignored). A
result that does not arrive within the device's deadline is answered by the device's local fallback
model (the tiny model of the same family); a result that arrives later is counted as late. End-to-end
latency is capture -> result received, on one clock.

Embeddings come from the held-out split until a scenario sets ``Fleet.inputs`` to one of the two
disjoint halves of the scanner-shifted data (``pipeline.models.shift``); every answer is kept with the
version that gave it and the kind of input (``Answer``), in time or late, for accuracy per version.

A share of the devices may be SDK phones instead (``phones.py``, ``phone_fraction``; none by
default): they ask through the regions' gateways with ``EdgeClient.infer``, over simulated links
(``links.py``), and their answers (the edge's or their fallback's) are counted with the others';
what each device class and link saw is in ``FleetReport.devices``.

A configurable fraction of deliberately bad records (tampered ciphertext, unknown model, wrong shape,
garbage bytes) exercises the dead-letter path; they are counted, not awaited. The ground truth of a
share of the requests goes to ``cloud.labels`` as the region's backend would send it, connected as
``backend-<region>`` (``fleet_kafka``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from opentelemetry.trace import Span

from edgestream.device.answers import Answer as PhoneAnswer
from edgestream.device.looplag import LoopLag
from edgestream.pipeline.contract.cloud import Label
from edgestream.pipeline.contract.codec import Compressed, encode_tensor
from edgestream.pipeline.contract.envelope import new_request_id, packed_payload, seal, seal_payload
from edgestream.pipeline.contract.fallbacks import FallbackReports
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.contract.reply import ReplyKey, ReplyRefused, open_reply
from edgestream.pipeline.heap import freeze_startup_heap
from edgestream.pipeline.models import ModelStore, load_dataset, spec
from edgestream.pipeline.models.shift import Pool, shifted_pools
from edgestream.pipeline.observability.sla import RoundTrip
from edgestream.pipeline.observability.tracing import Tracing, tracing_from_env
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.keyring import KeyRing
from edgestream.pipeline.serving.inference import InferenceSession
from edgestream.topics.catalogue import (
    LABELS_TOPIC,
    device_group_prefix,
    ingest_topic,
    parse_topic,
    replies_topic,
)
from edgestream.workers.local.device_tracing import DeviceTracing, answered, fell_back
from edgestream.workers.local.devices import Device, make_devices
from edgestream.workers.local.fleet_kafka import backend_kafka, device_kafka
from edgestream.workers.local.fleet_settings import BAD_KINDS, MODEL_FOR_KIND, FleetSettings, Inputs, Kind
from edgestream.workers.local.fleetreport import Answer, FleetReport, NoAnswer, Progress, RegionReport
from edgestream.workers.local.phones import Phone, Phones, plan_phones
from edgestream.workers.local.rdkafka import DeviceConsumer, DeviceProducer

log = logging.getLogger(__name__)

SWEEP_IDLE_S: Final = 0.01
"""How long the fallback sweep sleeps while no request waits (a new one is due a deadline later)."""

_NO_INPUTS: np.ndarray[Any, Any] = np.zeros(0, dtype=np.uint8)

_ingest_topic = functools.lru_cache(maxsize=1024)(ingest_topic)
"""``ingest_topic``, its region checked once per (region, kind), not per request."""


def answers_topic(region: str) -> str:
    """The topic a device of ``region`` reads its answers from (the edge's fast replies): the one place
    that says which, so whatever answers devices (the worker, and the bench's echo and peer) writes
    where they listen."""
    return replies_topic(region)


@dataclass(slots=True)
class _Pending:
    region: str
    kind: Kind
    truth: int
    capture_ms: int
    deadline_s: float
    inputs: np.ndarray[Any, Any]
    source: Inputs
    span: Span | None = None  # its trace, when the fleet traces
    device_id: str = ""  # who sent it: its fallback is reported on that device's next request


class Fleet:
    """Runs the simulated devices against the edge workers."""

    def __init__(self, settings: FleetSettings, keyring: KeyRing, tracing: Tracing | None = None) -> None:
        self.settings = settings
        self.tracing = tracing
        """Where the devices' request spans go (``device_tracing.py``); None: untraced."""
        self._traces = None if tracing is None else DeviceTracing(tracing.tracer, settings.deadline_ms)
        self.devices = make_devices(settings, keyring)
        self._keyring = keyring
        self.phone_plans = plan_phones(settings, self.devices)
        """Which devices are SDK phones (none without ``phone_fraction``)."""
        phone_ids = {p.device.device_id for p in self.phone_plans}
        self._phones: Phones | None = None
        self._phone_calls: set[asyncio.Task[None]] = set()
        self._reply_keys = {
            d.device_id.encode(): (ReplyKey(d.key), d.region)
            for d in self.devices
            if d.device_id not in phone_ids  # a phone's replies come through its gateway
        }
        self._ciphers = {d.device_id: AESGCM(d.key) for d in self.devices}
        """Each device's envelope cipher, built once (``seal`` takes one): not per request."""
        self.refused_replies: Counter[str] = Counter()
        """Replies read but refused by ``open_reply`` (another device's, tampered), by reason."""
        self._rng = np.random.default_rng(settings.seed)
        self._pyrng = random.Random(settings.seed + 1)
        store = ModelStore(settings.home / "models")
        self._data = {kind: load_dataset(kind) for kind in MODEL_FOR_KIND}
        first, second = shifted_pools()
        self._shifted: dict[Inputs, Pool] = {"shifted-a": first, "shifted-b": second}
        self.inputs: Inputs = "original"
        """Where embeddings are drawn from now; a scenario may change it while the fleet runs."""
        self._specs = {kind: spec(name) for kind, name in MODEL_FOR_KIND.items()}
        self._payloads: dict[tuple[Kind, Inputs, int], Compressed] = {}
        self._fallback = {
            kind: InferenceSession(store.get(name, "tiny")) for kind, name in MODEL_FOR_KIND.items()
        }
        self._pending: OrderedDict[bytes, _Pending] = OrderedDict()
        self.loop_lag = LoopLag(window_s=settings.lag_window_s, cap_s=settings.max_lag_reserve_ms / 1000.0)
        """How late the sweep woke lately; the Kafka-native devices' reserve grows by it."""
        self._labels: dict[str, DeviceProducer] = {}
        """Region -> the producer of its labels (as ``backend-<region>``), when labels are sent."""
        self._expired: dict[bytes, _Pending] = {}
        self._answered: set[bytes] = set()
        self._fallbacks = FallbackReports()
        self.report = FleetReport(
            {r.name: RegionReport() for r in settings.regions}, time.time(), 0.0, 0.0, 0
        )

    async def run(
        self,
        on_progress: Callable[[Progress], None] | None = None,
        *,
        until: asyncio.Event | None = None,
        sending: asyncio.Event | None = None,
        sent: asyncio.Event | None = None,
    ) -> FleetReport:
        """Send for ``duration_s`` (or until ``until`` is set, if sooner), wait up to ``drain_s`` for the
        rest, return the report. ``sending`` is set as the first request is about to go (the clients
        started), ``sent`` once every request has gone (the broker acknowledged them)."""
        producers: dict[str, DeviceProducer] = {}
        consumers: dict[str, DeviceConsumer] = {}
        tasks: list[asyncio.Task[None]] = []
        try:
            for region in self.report.regions:
                if self.settings.label_fraction > 0:  # as the region's backend would send them
                    # Labels are not on the device's path: batched for up to 200 ms (at 20 ms they were
                    # 62 produce requests a second in the demo, 5% of what its broker served).
                    labels = backend_kafka(self.settings, region)
                    self._labels[region] = DeviceProducer(
                        labels, f"edgestream-fleet-labels-{region}", linger_ms=200, poll_interval_s=0.05
                    )
                    await self._labels[region].start()
                kafka = device_kafka(self.settings, region)
                producers[region] = DeviceProducer(kafka, f"edgestream-fleet-{region}")
                await producers[region].start()
                # A device reads its region's replies from their end as of now, before it sends.
                consumers[region] = DeviceConsumer(
                    kafka,
                    f"edgestream-fleet-{region}",
                    f"{device_group_prefix(region)}fleet",  # never joined nor committed to
                    self._on_records,
                )
                topic = answers_topic(region)
                await consumers[region].start_from_end(topic, parse_topic(topic).spec.partitions)
            tasks.append(asyncio.create_task(self._sweep()))
            await self.start_phones()
            freeze_startup_heap("fleet")
            if sending is not None:
                sending.set()
            await self._send_all(producers, on_progress, until)
            if sent is not None:
                sent.set()
            await self._drain(on_progress)
            for consumer in consumers.values():
                if consumer.failure is not None:  # its replies went unread: the report would lie
                    raise consumer.failure
        finally:
            for call in self._phone_calls:
                call.cancel()
            await asyncio.gather(*self._phone_calls, return_exceptions=True)
            if self._phones is not None:
                await self._phones.close()
                self.report.devices = self._phones.rows()
                self.report.loop_lag_peak_ms["phones"] = self._phones.loop_lag_peak_s() * 1000.0
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(
                *(c.stop() for c in consumers.values()),
                *(p.stop() for p in producers.values()),
                *(p.stop() for p in self._labels.values()),
                return_exceptions=True,
            )
            if self.tracing is not None:  # every span ended so far is exported when run returns
                await asyncio.to_thread(self.tracing.provider.force_flush)
        self.report.total_s = time.time() - self.report.started_at
        self.report.unanswered = len(self._pending)
        self.report.no_answer.extend(
            NoAnswer(p.capture_ms, p.region, "direct", "run_ended") for p in self._pending.values()
        )
        self.report.refused_replies = dict(self.refused_replies)
        self.report.loop_lag_peak_ms["direct"] = self.loop_lag.peak_s * 1000.0
        return self.report

    async def start_phones(self) -> None:
        """Start the phones' SDKs (connect, verify the catalogue, fetch the fallback model), once; run
        does it when it was not done before."""
        if self.phone_plans and self._phones is None:
            self._phones = await Phones.start(self.settings, self.phone_plans, self._keyring)
            self.report.phones_not_started = dict(self._phones.not_started)

    async def _send_all(
        self,
        producers: Mapping[str, DeviceProducer],
        on_progress: Callable[[Progress], None] | None,
        until: asyncio.Event | None,
    ) -> None:
        interval_s = 1.0 / self.settings.rate_per_s
        start_s = time.monotonic()
        end_s = start_s + self.settings.duration_s
        next_s = start_s
        next_progress_s = start_s
        deliveries: list[asyncio.Future[Any]] = []
        n = 0
        while next_s < end_s and (until is None or not until.is_set()):
            delay_s = next_s - time.monotonic()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            device = self.devices[n % len(self.devices)]
            n += 1
            phone = None if self._phones is None else self._phones.by_id.get(device.device_id)
            if phone is not None:
                self._call_phone(phone)
            elif self._pyrng.random() < self.settings.bad_fraction:
                deliveries.append(await self._send_bad(producers[device.region], device))
            else:
                deliveries.append(await self._send_one(producers[device.region], device))
            next_s += interval_s
            if len(deliveries) >= 256:
                await asyncio.gather(*deliveries)
                deliveries.clear()
            now_s = time.monotonic()
            if on_progress is not None and now_s >= next_progress_s:
                on_progress(self._progress(now_s - start_s))
                next_progress_s = now_s + 0.25
        await asyncio.gather(*deliveries)
        self.report.send_s = time.monotonic() - start_s

    def _pick(self, kind: Kind) -> tuple[np.ndarray[Any, Any], int, Inputs, int]:
        """A row of ``kind``'s inputs of the moment: its input, its truth, its pool and index there."""
        if kind == "embedding" and self.inputs != "original":
            pool = self._shifted[self.inputs]
            i = int(self._rng.integers(len(pool.y)))
            return pool.X[i], int(pool.y[i]), self.inputs, i
        data = self._data[kind]
        i = int(self._rng.integers(len(data.y_test)))
        return data.X_test[i], int(data.y_test[i]), "original", i

    def _payload(self, kind: Kind, source: Inputs, i: int, x: np.ndarray[Any, Any]) -> Compressed:
        """The row's body encoded, packed and compressed once (`packed_payload`): each request seals it
        with its own request id, capture time and nonce. The rows are a fixed data set (a few hundred
        per pool), so the cache holds at most that many small payloads."""
        key = (kind, source, i)
        payload = self._payloads.get(key)
        if payload is None:
            payload = self._payloads[key] = packed_payload(encode_tensor(x, self._specs[kind].input_dtype))
        return payload

    async def _send_one(self, producer: DeviceProducer, device: Device) -> asyncio.Future[Any]:
        kind: Kind = "frame" if self._pyrng.random() < self.settings.frame_fraction else "embedding"
        x, truth, source, i = self._pick(kind)
        payload = self._payload(kind, source, i, x)
        capture_ms = int(time.time() * 1000)
        request_id = new_request_id()
        topic = _ingest_topic(device.region, kind)
        span, headers = (
            (None, None)
            if self._traces is None
            else self._traces.request(device.region, MODEL_FOR_KIND[kind], topic, capture_ms)
        )
        envelope = seal_payload(
            payload,
            device_key=self._ciphers[device.device_id],
            device_id=device.device_id,
            key_id=device.key_id,
            kind=kind,
            model=MODEL_FOR_KIND[kind],
            capture_time_ms=capture_ms,
            request_id=request_id,
        )
        self._pending[request_id] = _Pending(
            device.region,
            kind,
            truth,
            capture_ms,
            time.monotonic() + self.settings.deadline_ms / 1000.0,
            x,
            source,
            span,
            device.device_id,
        )
        report = self._fallbacks.header(device.device_id, MODEL_FOR_KIND[kind])
        if report is not None:
            headers = [*(headers or []), report]
        self.report.regions[device.region].sent += 1
        delivery: asyncio.Future[Any] = producer.send(
            topic, envelope, key=device.device_id.encode(), headers=headers
        )
        labels = self._labels.get(device.region)
        if labels is not None and self._pyrng.random() < self.settings.label_fraction:
            label = Label(request_id, MODEL_FOR_KIND[kind], truth, capture_ms)
            sent = labels.send(LABELS_TOPIC, label.to_bytes(), key=request_id)  # flushed at stop
            sent.add_done_callback(_label_delivered)
        return delivery

    def _call_phone(self, phone: Phone) -> None:
        """One phone asks (in the background: the fleet's load stays open loop)."""
        call = asyncio.create_task(self._phone_asks(phone))
        self._phone_calls.add(call)
        call.add_done_callback(self._phone_calls.discard)

    async def _phone_asks(self, phone: Phone) -> None:
        assert self._phones is not None
        kind: Kind = "frame" if self._pyrng.random() < self.settings.frame_fraction else "embedding"
        x, truth, source, _ = self._pick(kind)
        region = self.report.regions[phone.plan.device.region]
        capture_ms = time.time() * 1000.0
        region.sent += 1
        path = f"phone/{phone.plan.link}"
        try:
            answer = await self._phones.ask(phone, x, self.settings.deadline_ms, kind)
        except asyncio.CancelledError:
            self.report.no_answer.append(NoAnswer(capture_ms, phone.plan.device.region, path, "cancelled"))
            raise
        model = MODEL_FOR_KIND[kind]
        if answer is None:  # raised (no verified fallback): counted in the devices' rows
            self.report.no_answer.append(NoAnswer(capture_ms, phone.plan.device.region, path, "error"))
            return
        deadline_ms = self.settings.deadline_ms
        if answer.source == "fallback":
            region.fallbacks += 1
            region.fallback_correct += int(answer.label == truth)
            trip = RoundTrip(
                capture_ms,
                region_name(answer, phone),
                model,
                None,
                answer.latency_ms,
                "fallback",
                deadline_ms,
                path,
            )
            self.report.round_trips.append(trip)
            return
        region.results += 1
        region.correct += int(answer.label == truth)
        region.latencies_ms.append(answer.latency_ms)
        region.result_times_s.append(time.time() - self.report.started_at)
        capture_s = capture_ms / 1000.0 - self.report.started_at
        region.answers.append(Answer(capture_s, answer.model, answer.version, answer.label == truth, source))
        trip = RoundTrip(
            capture_ms,
            region_name(answer, phone),
            answer.model,
            answer.version,
            answer.latency_ms,
            "answered",
            deadline_ms,
            path,
        )
        self.report.round_trips.append(trip)
        labels = self._labels.get(answer.region or "")
        if labels is not None and self._pyrng.random() < self.settings.label_fraction:
            label = Label(answer.request_id, model, truth, int(capture_ms))
            sent = labels.send(LABELS_TOPIC, label.to_bytes(), key=answer.request_id)
            sent.add_done_callback(_label_delivered)

    async def _send_bad(self, producer: DeviceProducer, device: Device) -> asyncio.Future[Any]:
        how = self._pyrng.choice(BAD_KINDS)
        kind: Kind = "embedding"
        x, _, _, _ = self._pick(kind)
        body = encode_tensor(x, self._specs[kind].input_dtype)
        model = MODEL_FOR_KIND[kind]
        if how == "wrong_shape":
            body = encode_tensor(np.concatenate([x, x]), self._specs[kind].input_dtype)
        elif how == "unknown_model":
            model = "no-such-model"
        envelope = seal(
            body,
            device_key=self._ciphers[device.device_id],
            device_id=device.device_id,
            key_id=device.key_id,
            kind=kind,
            model=model,
        )
        if how == "tampered":
            buf = bytearray(envelope)
            buf[-3] ^= 0x01  # inside the GCM tag / ciphertext
            envelope = bytes(buf)
        elif how == "garbage":
            envelope = self._pyrng.randbytes(self._pyrng.randint(1, 200))
        self.report.regions[device.region].bad_sent += 1
        delivery: asyncio.Future[Any] = producer.send(
            _ingest_topic(device.region, kind), envelope, key=device.device_id.encode()
        )
        return delivery

    def _on_records(self, records: list[Any], now_ms: float) -> None:
        """A batch of the replies topic (librdkafka's messages), read at ``now_ms``."""
        for record in records:
            value = record.value()
            opener = self._reply_keys.get(record.key() or b"")
            if value is None or opener is None:
                continue  # not one of ours (another fleet's device)
            try:  # the device's own reply key, its own region: any other reply is refused
                result = open_reply(value, opener[0], opener[1])
            except ReplyRefused as err:
                self.refused_replies[err.reason] += 1
                continue
            self._on_result(result, now_ms)

    def _on_result(self, result: ResultRecord, now_ms: float) -> None:
        rid = result.request_id
        pending = self._pending.pop(rid, None)
        if pending is None:
            region = self.report.regions.get(result.region)
            if region is not None:
                expired = self._expired.pop(rid, None)
                if expired is not None:
                    region.late += 1
                    region.answers.append(self._answer(expired, result, late=True))
                elif rid in self._answered:
                    region.duplicates += 1
            return
        self._answered.add(rid)
        if pending.span is not None:
            answered(pending.span, result, now_ms)
        region = self.report.regions[pending.region]
        region.results += 1
        region.correct += int(result.label == pending.truth)
        region.latencies_ms.append(now_ms - pending.capture_ms)
        region.result_times_s.append(now_ms / 1000.0 - self.report.started_at)
        region.batch_sizes.append(result.batch_size)
        region.answers.append(self._answer(pending, result, late=False))
        request = (pending.capture_ms, pending.region, result.model, result.model_version)
        latency_ms = now_ms - pending.capture_ms
        self.report.round_trips.append(RoundTrip(*request, latency_ms, "answered", self.settings.deadline_ms))

    def _answer(self, pending: _Pending, result: ResultRecord, *, late: bool) -> Answer:
        return Answer(
            pending.capture_ms / 1000.0 - self.report.started_at,
            result.model,
            result.model_version,
            result.label == pending.truth,
            pending.source,
            late,
        )

    async def _sweep(self) -> None:
        """Answer each request whose edge answer has not come ``fallback_reserve_ms`` before its
        deadline with the fallback. Requests wait in capture order and share one deadline, so the
        first one is the next due: the sweep sleeps until then (a 10 ms poll, which it was, answered
        fallbacks up to 10 ms past the deadline). The reserve grows while the loop wakes late."""
        base_s = self.settings.fallback_reserve_ms / 1000.0
        while True:
            now_s = time.monotonic()
            reserve_s = self.loop_lag.reserve_s(base_s, now_s)
            due_s = next(iter(self._pending.values())).deadline_s - reserve_s if self._pending else None
            wake_s = now_s + SWEEP_IDLE_S if due_s is None else max(now_s, due_s)
            await asyncio.sleep(wake_s - now_s)
            woke_s = time.monotonic()
            self.loop_lag.note(wake_s, woke_s)
            now_s = woke_s + self.loop_lag.reserve_s(base_s, woke_s)
            while self._pending:
                rid, pending = next(iter(self._pending.items()))
                if pending.deadline_s > now_s:
                    break
                del self._pending[rid]
                self._fallback_answer(pending)
                pending.inputs = _NO_INPUTS  # kept for a late answer's accounting, not its input
                self._expired[rid] = pending

    def _fallback_answer(self, pending: _Pending) -> None:
        if pending.span is not None:
            fell_back(pending.span, time.time() * 1000.0)
        labels, _ = self._fallback[pending.kind].run(pending.inputs[np.newaxis, ...])
        region = self.report.regions[pending.region]
        region.fallbacks += 1
        self._fallbacks.fell_back(pending.device_id, MODEL_FOR_KIND[pending.kind])
        region.fallback_correct += int(int(labels[0]) == pending.truth)
        request = (pending.capture_ms, pending.region, MODEL_FOR_KIND[pending.kind], None)
        latency_ms = time.time() * 1000.0 - pending.capture_ms
        self.report.round_trips.append(RoundTrip(*request, latency_ms, "fallback", self.settings.deadline_ms))

    async def _drain(self, on_progress: Callable[[Progress], None] | None) -> None:
        end_s = time.monotonic() + self.settings.drain_s
        while (self._pending or self._phone_calls) and time.monotonic() < end_s:
            await asyncio.sleep(0.05)
            if on_progress is not None:
                on_progress(self._progress(self.settings.duration_s))
        if on_progress is not None:
            on_progress(self._progress(self.settings.duration_s))

    def _progress(self, elapsed_s: float) -> Progress:
        totals = self.report.totals()
        recent = totals.latencies_ms[-2000:]
        p99 = float(np.percentile(recent, 99)) if recent else None
        return Progress(
            elapsed_s, self.settings.duration_s, totals.sent, totals.results, totals.fallbacks, p99
        )


def region_name(answer: PhoneAnswer, phone: Phone) -> str:
    """The region a phone's answer is counted in: where its request went, else the phone's own."""
    return answer.region or phone.plan.device.region


def _label_delivered(delivery: asyncio.Future[Any]) -> None:
    """Log a label the broker did not take (an ACL that does not let ``backend-<region>`` write
    ``cloud.labels``): unlogged, the cloud's accuracy would just go missing."""
    if not delivery.cancelled() and delivery.exception() is not None:
        log.warning("a label was not delivered to %s: %r", LABELS_TOPIC, delivery.exception())


def make_fleet(settings: FleetSettings) -> Fleet:
    """The fleet of ``settings``, its devices placed (and enrolled), not running."""
    keyring = keyfile.load(settings.key_file or settings.home / "keys.json")
    return Fleet(settings, keyring, tracing_from_env("edgestream-fleet"))


async def run_fleet(
    settings: FleetSettings, on_progress: Callable[[Progress], None] | None = None
) -> FleetReport:
    """Build the fleet from settings and run it."""
    return await make_fleet(settings).run(on_progress)
