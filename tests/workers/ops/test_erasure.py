"""Erasure by key against the real broker: a forgotten device's retained envelopes cannot be opened, its
new ones are dead-lettered ``forgotten_device``, and ``edgestream devices forget`` counts what it covered."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner, Result

from edgestream.cli import app
from edgestream.pipeline.contract.codec import encode_tensor
from edgestream.pipeline.contract.deadletter import DeadLetter
from edgestream.pipeline.contract.envelope import decode_envelope, new_request_id, open_envelope, seal
from edgestream.pipeline.contract.records import ResultRecord
from edgestream.pipeline.errors import AuthenticationFailed, ForgottenDevice
from edgestream.pipeline.models import load_dataset, spec
from edgestream.pipeline.security import keyfile
from edgestream.pipeline.security.derive import derive_device_key
from edgestream.pipeline.security.keyfile import enroll, forget
from edgestream.pipeline.security.keysource import KeyFileWatcher
from edgestream.pipeline.settings import KafkaSettings
from edgestream.topics.catalogue import KINDS, Kind, dlq_topic, ingest_topic, results_topic
from edgestream.workers.ops.erasure import retained_envelopes

from ..conftest import EdgeRegion, RunningWorker, eventually, read_topic

pytestmark = pytest.mark.broker

MODEL: dict[Kind, str] = {"embedding": "embedding-scorer", "frame": "frame-classifier"}
MAX_BYTES = 1 << 20


async def _send(
    region: EdgeRegion,
    producer: AIOKafkaProducer,
    device_id: str,
    device_key: bytes,
    count: int,
    kind: Kind = "embedding",
) -> list[bytes]:
    """``count`` inputs of ``kind`` sealed by ``device_id`` under key id 1; their request ids."""
    data = load_dataset(kind)
    ids = []
    for i in range(count):
        rid = new_request_id()
        envelope = seal(
            encode_tensor(data.X_test[i], spec(MODEL[kind]).input_dtype),
            device_key=device_key,
            device_id=device_id,
            key_id=1,
            kind=kind,
            model=MODEL[kind],
            capture_time_ms=int(time.time() * 1000),
            request_id=rid,
        )
        await producer.send(ingest_topic(region.name, kind), envelope, key=device_id.encode())
        ids.append(rid)
    await producer.flush()
    return ids


async def _answered(region: EdgeRegion, expect: int) -> Counter[bytes]:
    results = await read_topic(region.bootstrap, results_topic(region.name), expect=expect)
    return Counter(ResultRecord.from_bytes(r.value).request_id for r in results)


async def test_a_forgotten_device_is_refused_and_its_retained_envelopes_cannot_be_opened(
    edge_region: EdgeRegion, running_worker: RunningWorker, producer: AIOKafkaProducer
) -> None:
    """One enrolled device and one that never was, answered alike; the enrolled one is forgotten while
    the worker runs: its later envelopes are dead-lettered ``forgotten_device``, the other device is
    still answered, and nothing the broker retains of the forgotten one opens with the keys left."""
    region = edge_region.name
    key_file = edge_region.home / f"keys-{region}.json"
    gone, kept = "dev-gone", "dev-kept"
    gone_key = enroll(key_file, region, gone)
    kept_key = keyfile.load(key_file).device_key(region, kept, 1)  # never enrolled: the public salt
    worker = await running_worker(keyring=KeyFileWatcher(key_file, required_regions=[region]))

    before = await _send(edge_region, producer, gone, gone_key, 20)
    before += await _send(edge_region, producer, kept, kept_key, 20)
    answered = await _answered(edge_region, expect=40)
    assert set(answered) == set(before), worker.stats.as_dict()

    tombstone = forget(key_file, region, gone)
    assert tombstone.forgotten

    def worker_has_forgotten() -> bool:
        enrolment = worker.keyring.enrolment(region, gone)  # what the fetch loop admits with now
        return enrolment is not None and enrolment.forgotten

    assert await eventually(worker_has_forgotten, timeout_s=10)
    refused = await _send(edge_region, producer, gone, gone_key, 10)
    after = await _send(edge_region, producer, kept, kept_key, 10)

    answered = await _answered(edge_region, expect=50)
    assert set(answered) == {*before, *after}, "the other device is still answered, the forgotten one not"
    assert max(answered.values()) == 1
    letters = [
        DeadLetter.from_record(r)
        for r in await read_topic(edge_region.bootstrap, dlq_topic(region), expect=len(refused))
    ]
    assert Counter((letter.reason, letter.stage) for letter in letters) == {
        ("forgotten_device", "decrypt"): 10
    }
    assert {
        decode_envelope(letter.value, max_envelope_bytes=MAX_BYTES).request_id for letter in letters
    } == set(refused)

    retained = await retained_envelopes(edge_region.bootstrap, region, gone)
    by_topic = {t.topic: t for t in retained.topics}
    assert list(by_topic) == [*(ingest_topic(region, kind) for kind in KINDS), dlq_topic(region)]
    embedding, frame, dlq = (
        by_topic[ingest_topic(region, "embedding")],
        by_topic[ingest_topic(region, "frame")],
        by_topic[dlq_topic(region)],
    )
    assert (embedding.envelopes, embedding.key_ids, embedding.undecodable) == (30, {1: 30}, 0)
    assert (frame.envelopes, frame.key_ids) == (0, {})
    assert (dlq.envelopes, dlq.key_ids, dlq.undecodable) == (10, {1: 10}, 0)
    assert (retained.envelopes, retained.topics_holding) == (40, 2)
    assert embedding.retention_ms == 6 * 3_600_000, "the broker's retention, as the catalogue sets it"
    assert (await retained_envelopes(edge_region.bootstrap, region, kept)).envelopes == 30

    # Every envelope of the forgotten device the broker still holds, read back: none opens.
    ring = keyfile.load(key_file)
    master = bytes.fromhex(
        json.loads(key_file.read_text())["regions"][region]["1"]["key"]
    )  # only the salt went
    stored = await read_topic(edge_region.bootstrap, ingest_topic(region, "embedding"), expect=60)
    stored += await read_topic(edge_region.bootstrap, dlq_topic(region), expect=10)
    mine = [decode_envelope(r.value, max_envelope_bytes=MAX_BYTES) for r in stored if r.key == gone.encode()]
    assert len(mine) == 40
    for envelope in mine:
        with pytest.raises(ForgottenDevice) as info:
            ring.device_key(region, envelope.device_id, envelope.key_id)
        assert info.value.reason == "forgotten_device"
        with pytest.raises(AuthenticationFailed) as failed:
            open_envelope(
                envelope, derive_device_key(master, gone, envelope.key_id), max_body_bytes=MAX_BYTES
            )
        assert failed.value.reason == "bad_tag"
    assert open_envelope(mine[0], gone_key, max_body_bytes=MAX_BYTES), "the device's own copy still opens"


async def _cli(bootstrap: KafkaSettings, *args: str) -> Result:
    """Run ``edgestream <args> --bootstrap <bootstrap>`` in a thread (it runs its own event loop)."""
    kafka = bootstrap
    argv = [*args, "--bootstrap", kafka.bootstrap_servers]
    env = {"COLUMNS": "250", **kafka.to_env("EDGESTREAM_KAFKA_")}  # the TLS files of the admin identity
    return await asyncio.to_thread(CliRunner().invoke, app, argv, env=env, catch_exceptions=False)


async def test_devices_forget_says_what_it_covered(
    edge_region: EdgeRegion, producer: AIOKafkaProducer
) -> None:
    region = edge_region.name
    key_file = edge_region.home / f"keys-{region}.json"
    device_key = enroll(key_file, region, "dev-cli")
    other_key = enroll(key_file, region, "dev-other")
    await _send(edge_region, producer, "dev-cli", device_key, 3, "embedding")
    await _send(edge_region, producer, "dev-cli", device_key, 2, "frame")
    await _send(edge_region, producer, "dev-other", other_key, 4, "embedding")
    await producer.send_and_wait(ingest_topic(region, "frame"), b"\x00garbage", key=b"dev-cli")

    result = await _cli(
        edge_region.bootstrap, "devices", "forget", "dev-cli", "--region", region, "--path", str(key_file)
    )
    assert result.exit_code == 0, result.output
    assert f"{region}: device dev-cli forgotten at" in result.output
    assert (
        "device dev-cli forgotten: 5 envelopes in 2 topics are now unreadable "
        "(retained until their topic's retention expires)"
    ) in result.output
    rows = {
        cells[0]: cells[1:]
        for line in result.output.splitlines()
        if len(cells := [cell.strip() for cell in line.strip("│ ").split("│")]) == 7
    }
    assert rows[ingest_topic(region, "embedding")][:2] == ["3", "1: 3"], result.output
    assert rows[ingest_topic(region, "frame")][:2] == ["2", "1: 2"]
    assert rows[dlq_topic(region)][:2] == ["0", "-"]
    assert rows[ingest_topic(region, "frame")][3:] == ["6 h", "1", "0"], "retention, not envelopes, other"
    assert "1 further record(s) keyed by it are not its envelopes" in result.output
    with pytest.raises(ForgottenDevice):
        keyfile.load(key_file).device_key(region, "dev-cli", 1)
    assert keyfile.load(key_file).device_key(region, "dev-other", 1) == other_key

    again = await _cli(
        edge_region.bootstrap, "devices", "forget", "dev-cli", "--region", region, "--path", str(key_file)
    )
    assert again.exit_code == 0, again.output
    assert "was forgotten already" in again.output
    assert "5 envelopes in 2 topics" in again.output
