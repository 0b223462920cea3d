"""ReplayGuard: replays and stale captures refused per device, staged like the Kafka transaction,
bounded memory that no device can use against another."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from edgestream.pipeline.errors import ContractError, ReplayedRequest, StaleCapture
from edgestream.pipeline.serving.replay import ReplayGuard

T0_MS = 1_700_000_000_000
AGE_MS = 60_000
FUTURE_MS = 5_000
WINDOW_MS = AGE_MS + FUTURE_MS


def rid(n: int) -> bytes:
    return n.to_bytes(16, "big")


DEV = "dev-1"


def guard(
    max_entries: int = 10_000,
    window_ms: int = WINDOW_MS,
    *,
    max_devices: int = 10_000,
    max_ids: int = 1_000_000,
    floor_buckets: int = 1 << 16,
) -> ReplayGuard[int]:
    return ReplayGuard(
        window_ms=window_ms,
        max_age_ms=AGE_MS,
        max_future_skew_ms=FUTURE_MS,
        max_ids_per_device=max_entries,
        max_devices=max_devices,
        max_ids=max_ids,
        floor_buckets=floor_buckets,
    )


class _Admit:
    """``check`` then ``accept``, as admission does for a record that passes the rate limit."""

    def __init__(self, g: ReplayGuard[int], device: str = DEV) -> None:
        self.g = g
        self.device = device

    def __call__(self, partition: int, request_id: bytes, capture_ms: int, now_ms: int) -> None:
        self.g.check(partition, self.device, request_id, capture_ms, now_ms)
        self.g.accept(partition, self.device, request_id, capture_ms, now_ms)


def test_refuses_a_window_shorter_than_the_skew_band() -> None:
    with pytest.raises(ValueError, match="window_ms"):
        guard(window_ms=WINDOW_MS - 1)
    guard(window_ms=WINDOW_MS)
    with pytest.raises(ValueError, match="max_ids_per_device"):
        guard(max_entries=0)
    with pytest.raises(ValueError, match="max_devices"):
        guard(max_devices=0)


def test_a_committed_id_seen_again_is_replayed() -> None:
    g = guard()
    admit = _Admit(g)
    admit(0, rid(1), T0_MS, now_ms=T0_MS)
    g.commit(0)
    with pytest.raises(ReplayedRequest) as info:
        admit(0, rid(1), T0_MS, now_ms=T0_MS + 10)
    err = info.value
    assert isinstance(err, ContractError)
    assert (err.reason, err.stage, err.request_id) == ("replayed", "validate", rid(1))
    assert "00000000-0000-0000-0000-000000000001" in str(err)
    admit(0, rid(2), T0_MS, now_ms=T0_MS + 10)  # another id is fine


def test_a_duplicate_inside_one_open_transaction_is_replayed() -> None:
    g = guard()
    admit = _Admit(g)
    admit(0, rid(1), T0_MS, now_ms=T0_MS)
    with pytest.raises(ReplayedRequest):
        admit(0, rid(1), T0_MS, now_ms=T0_MS)


@pytest.mark.parametrize(
    ("capture_ms", "stale"),
    [
        (T0_MS - AGE_MS, False),
        (T0_MS - AGE_MS - 1, True),
        (T0_MS + FUTURE_MS, False),
        (T0_MS + FUTURE_MS + 1, True),
    ],
)
def test_stale_in_both_directions_with_inclusive_limits(capture_ms: int, stale: bool) -> None:
    g = guard()
    admit = _Admit(g)
    if not stale:
        admit(0, rid(1), capture_ms, now_ms=T0_MS)
        return
    with pytest.raises(StaleCapture) as info:
        admit(0, rid(1), capture_ms, now_ms=T0_MS)
    err = info.value
    assert (err.reason, err.stage) == ("stale", "validate")
    assert err.skew_ms == T0_MS - capture_ms
    if capture_ms < T0_MS:
        assert str(err) == f"capture time is {AGE_MS + 1} ms in the past, beyond the allowed {AGE_MS} ms"
    else:
        assert (
            str(err) == f"capture time is {FUTURE_MS + 1} ms in the future, beyond the allowed {FUTURE_MS} ms"
        )
    assert g.entries(0, DEV) == 0  # a refused record is not remembered


def test_abort_forgets_pending_ids_so_the_redelivery_is_accepted() -> None:
    g = guard()
    admit = _Admit(g)
    for n in (1, 2, 3):
        admit(0, rid(n), T0_MS, now_ms=T0_MS)
    g.abort(0)
    assert g.entries(0, DEV) == 0
    for n in (1, 2, 3):  # the same batch, redelivered
        admit(0, rid(n), T0_MS, now_ms=T0_MS + 100)
    g.commit(0)
    with pytest.raises(ReplayedRequest):
        admit(0, rid(2), T0_MS, now_ms=T0_MS + 200)


def test_abort_keeps_what_earlier_transactions_committed() -> None:
    g = guard()
    admit = _Admit(g)
    admit(0, rid(1), T0_MS, now_ms=T0_MS)
    g.commit(0)
    admit(0, rid(2), T0_MS, now_ms=T0_MS)
    g.abort(0)
    with pytest.raises(ReplayedRequest):
        admit(0, rid(1), T0_MS, now_ms=T0_MS)
    admit(0, rid(2), T0_MS, now_ms=T0_MS)


def test_an_id_is_remembered_exactly_as_long_as_it_could_pass_the_age_check() -> None:
    # Worst case: captured at the future limit, so it stays fresh for the whole window.
    g = guard()
    admit = _Admit(g)
    capture_ms = T0_MS + FUTURE_MS
    admit(0, rid(1), capture_ms, now_ms=T0_MS)
    g.commit(0)
    with pytest.raises(ReplayedRequest):  # age == AGE_MS: still fresh, still remembered
        admit(0, rid(1), capture_ms, now_ms=T0_MS + WINDOW_MS)
    with pytest.raises(StaleCapture):  # one ms later it is stale, so forgetting it is safe
        admit(0, rid(1), capture_ms, now_ms=T0_MS + WINDOW_MS + 1)
    assert g.entries(0, DEV) == 0  # expired on the way


def test_expiry_is_lazy_and_from_the_front() -> None:
    g = guard()
    admit = _Admit(g)
    for n in range(100):
        admit(0, rid(n), T0_MS + n, now_ms=T0_MS + n)
    g.commit(0)
    admit(0, rid(1000), T0_MS + WINDOW_MS + 50, now_ms=T0_MS + WINDOW_MS + 50)
    # seen at T0+0..T0+49 are older than the window; T0+50.. are not (yet).
    assert g.entries(0, DEV) == 100 - 50 + 1


def test_a_clock_stepping_back_cannot_resurrect_a_forgotten_id() -> None:
    g = guard()
    admit = _Admit(g)
    admit(0, rid(1), T0_MS, now_ms=T0_MS)
    g.commit(0)
    admit(0, rid(2), T0_MS + WINDOW_MS + 1, now_ms=T0_MS + WINDOW_MS + 1)  # forgets rid(1)
    assert g.entries(0, DEV) == 1
    with pytest.raises(StaleCapture):  # the clock stepped back to T0: treated as standing still
        admit(0, rid(1), T0_MS, now_ms=T0_MS)


def test_bounded_memory_evicts_the_oldest_and_tightens_the_accepted_age() -> None:
    g = guard(max_entries=3)
    admit = _Admit(g)
    for n in (1, 2, 3):
        admit(0, rid(n), T0_MS + n, now_ms=T0_MS + 10)
    g.commit(0)
    assert g.floor_ms(0, DEV) is None
    admit(0, rid(4), T0_MS + 4, now_ms=T0_MS + 10)  # full: evicts rid(1), captured at T0+1
    assert g.entries(0, DEV) == 3
    assert g.floor_ms(0, DEV) == T0_MS + 1
    with pytest.raises(StaleCapture) as info:  # the evicted id, well inside max_age, is refused
        admit(0, rid(1), T0_MS + 1, now_ms=T0_MS + 10)
    assert info.value.allowed_ms == 10 - 1 - 1  # the tightened age: captures after T0+1 only
    with pytest.raises(StaleCapture):  # so is a new id captured no later than the evicted one
        admit(0, rid(99), T0_MS, now_ms=T0_MS + 10)
    with pytest.raises(ReplayedRequest):  # remembered ids are still replays
        admit(0, rid(2), T0_MS + 2, now_ms=T0_MS + 10)
    admit(0, rid(5), T0_MS + 2, now_ms=T0_MS + 10)  # captured after the floor: accepted
    g.commit(0)
    for n in range(100, 1100):
        admit(0, rid(n), T0_MS + n, now_ms=T0_MS + n)
        assert g.entries(0, DEV) <= 3
        if n % 7 == 0:
            g.commit(0)
    g.commit(0)
    with pytest.raises(StaleCapture):  # an id evicted long ago
        admit(0, rid(500), T0_MS + 500, now_ms=T0_MS + 1100)


def test_a_floor_raised_by_evicting_pending_ids_is_dropped_on_abort() -> None:
    g = guard(max_entries=2)
    admit = _Admit(g)
    for n in (1, 2, 3):  # one batch larger than the bound: rid(1) is evicted while pending
        admit(0, rid(n), T0_MS + n, now_ms=T0_MS + 10)
    assert g.floor_ms(0, DEV) == T0_MS + 1
    with pytest.raises(StaleCapture):  # a duplicate of it in the same batch is still refused
        admit(0, rid(1), T0_MS + 1, now_ms=T0_MS + 10)
    g.abort(0)
    assert (g.entries(0, DEV), g.floor_ms(0, DEV)) == (0, None)
    admit(0, rid(1), T0_MS + 1, now_ms=T0_MS + 20)  # the redelivery is accepted
    admit(0, rid(2), T0_MS + 2, now_ms=T0_MS + 20)
    g.commit(0)
    with pytest.raises(ReplayedRequest):
        admit(0, rid(1), T0_MS + 1, now_ms=T0_MS + 20)


def test_a_floor_raised_by_evicting_committed_ids_survives_an_abort() -> None:
    g = guard(max_entries=2)
    admit = _Admit(g)
    for n in (1, 2):
        admit(0, rid(n), T0_MS + n, now_ms=T0_MS + 10)
    g.commit(0)
    admit(0, rid(3), T0_MS + 3, now_ms=T0_MS + 10)  # evicts the committed rid(1)
    g.abort(0)
    assert g.floor_ms(0, DEV) == T0_MS + 1
    with pytest.raises(StaleCapture):
        admit(0, rid(1), T0_MS + 1, now_ms=T0_MS + 10)


def test_a_floor_raised_in_a_committed_transaction_survives_a_later_abort() -> None:
    g = guard(max_entries=2)
    admit = _Admit(g)
    for n in (1, 2, 3):  # rid(1) evicted while pending
        admit(0, rid(n), T0_MS + n, now_ms=T0_MS + 10)
    g.commit(0)
    g.abort(0)  # the next transaction aborts
    assert g.floor_ms(0, DEV) == T0_MS + 1
    with pytest.raises(StaleCapture):
        admit(0, rid(1), T0_MS + 1, now_ms=T0_MS + 10)


def test_partitions_are_independent() -> None:
    g = guard()
    admit = _Admit(g)
    admit(0, rid(1), T0_MS, now_ms=T0_MS)
    admit(1, rid(1), T0_MS, now_ms=T0_MS)  # not compared across partitions
    admit(1, rid(2), T0_MS, now_ms=T0_MS)
    g.commit(0)
    g.abort(1)
    assert (g.entries(0, DEV), g.entries(1, DEV), g.entries(2, DEV)) == (1, 0, 0)
    with pytest.raises(ReplayedRequest):
        admit(0, rid(1), T0_MS, now_ms=T0_MS)
    admit(1, rid(1), T0_MS, now_ms=T0_MS)


def test_forget_drops_a_revoked_partition() -> None:
    g = guard(max_entries=1)
    admit = _Admit(g)
    admit(0, rid(1), T0_MS, now_ms=T0_MS)
    admit(0, rid(2), T0_MS + 1, now_ms=T0_MS)
    g.commit(0)
    g.forget(0)
    assert (g.entries(0, DEV), g.floor_ms(0, DEV)) == (0, None)
    # The documented limit: a new owner's window starts empty.
    admit(0, rid(1), T0_MS, now_ms=T0_MS)
    g.forget(7)  # never seen: nothing to do
    g.commit(7)
    g.abort(7)


# --- one device cannot harm another --------------------------------------------------------------


def test_one_devices_future_skewed_flood_never_makes_another_device_stale() -> None:
    # The attack of issue 12: the memory bound at 100 ids, one device sends 300 envelopes captured
    # 4.9 s ahead. The bound was per partition, and evicting the flood's ids raised the partition's
    # floor past every honest capture: 50 of 50 honest envelopes were refused as stale.
    g = guard(max_entries=100)
    flood = _Admit(g, "dev-flood")
    for n in range(300):
        flood(0, rid(n), T0_MS + 4_600 + n, now_ms=T0_MS)
    g.commit(0)
    assert g.floor_ms(0, "dev-flood") is not None  # the flooding device pays for its own flood
    for n in range(50):
        honest = _Admit(g, f"dev-honest-{n}")
        honest(0, rid(1000 + n), T0_MS, now_ms=T0_MS + 1)  # accepted: no StaleCapture
        assert g.floor_ms(0, f"dev-honest-{n}") is None
    g.commit(0)
    assert g.lossy_evictions == 0


def test_a_device_can_only_evict_its_own_ids() -> None:
    g = guard(max_entries=5)
    victim = _Admit(g, "dev-victim")
    for n in range(5):
        victim(0, rid(n), T0_MS, now_ms=T0_MS)
    g.commit(0)
    attacker = _Admit(g, "dev-attacker")
    for n in range(100, 10_100):  # its own floor rises, so it may only move forward
        attacker(0, rid(n), T0_MS - 9_000 + n, now_ms=T0_MS + 10)
        if n % 64 == 0:
            g.commit(0)
    g.commit(0)
    assert g.entries(0, "dev-attacker") == 5
    assert (g.entries(0, "dev-victim"), g.floor_ms(0, "dev-victim")) == (5, None)
    for n in range(5):  # every one of the victim's ids is still a replay, not merely stale
        with pytest.raises(ReplayedRequest):
            victim(0, rid(n), T0_MS, now_ms=T0_MS + 20)
    victim(0, rid(99), T0_MS, now_ms=T0_MS + 20)  # and its new captures at T0 are still fresh


def test_the_same_request_id_from_two_devices_is_two_requests() -> None:
    g = guard()
    _Admit(g, "dev-a")(0, rid(1), T0_MS, now_ms=T0_MS)
    _Admit(g, "dev-b")(0, rid(1), T0_MS, now_ms=T0_MS)  # another device's id cannot block this one
    g.commit(0)
    with pytest.raises(ReplayedRequest):
        _Admit(g, "dev-a")(0, rid(1), T0_MS, now_ms=T0_MS)


def test_check_keeps_nothing_for_a_record() -> None:
    g = guard()
    g.check(0, DEV, rid(1), T0_MS, now_ms=T0_MS)  # passed, but another check refused it (the rate)
    assert (len(g), g.devices(), g.entries(0, DEV)) == (0, 0, 0)
    _Admit(g)(0, rid(1), T0_MS, now_ms=T0_MS + 1)  # so it is not a replay when it comes again
    g.commit(0)
    with pytest.raises(ReplayedRequest):  # accepting twice without checking is refused too
        g.accept(0, DEV, rid(1), T0_MS, now_ms=T0_MS + 2)


def test_the_device_bound_evicts_the_least_recent_device_without_reopening_its_window() -> None:
    g = guard(max_devices=2)
    _Admit(g, "dev-a")(0, rid(1), T0_MS, now_ms=T0_MS)
    _Admit(g, "dev-b")(0, rid(2), T0_MS + 5, now_ms=T0_MS + 5)
    g.commit(0)
    _Admit(g, "dev-c")(0, rid(3), T0_MS + 9, now_ms=T0_MS + 10)  # a third device: dev-a goes
    g.commit(0)
    assert (g.devices(), g.entries(0, "dev-a"), g.lossy_evictions) == (2, 0, 1)
    with pytest.raises(StaleCapture):  # its id was forgotten, but it cannot be accepted again
        _Admit(g, "dev-a")(0, rid(1), T0_MS, now_ms=T0_MS + 20)
    _Admit(g, "dev-a")(0, rid(4), T0_MS + 1, now_ms=T0_MS + 20)  # its later captures are fine
    g.commit(0)
    with pytest.raises(ReplayedRequest):  # dev-c's state is intact (dev-b's went for dev-a's)
        _Admit(g, "dev-c")(0, rid(3), T0_MS + 9, now_ms=T0_MS + 20)


def test_evicting_a_device_whose_ids_expired_loses_nothing() -> None:
    g = guard(max_devices=1, floor_buckets=1)
    _Admit(g, "dev-a")(0, rid(1), T0_MS, now_ms=T0_MS)
    g.commit(0)
    later_ms = T0_MS + WINDOW_MS + 1
    _Admit(g, "dev-b")(0, rid(2), later_ms - AGE_MS, now_ms=later_ms)
    g.commit(0)
    assert (g.devices(), g.lossy_evictions) == (1, 0)
    assert g.floor_ms(0, "dev-c") is None  # nothing kept in the (only) bucket


def test_an_evicted_floor_touches_only_devices_without_state_in_its_bucket() -> None:
    g = guard(max_devices=2, floor_buckets=1)  # one bucket: every device shares it
    _Admit(g, "dev-a")(0, rid(1), T0_MS + 100, now_ms=T0_MS)
    _Admit(g, "dev-b")(0, rid(2), T0_MS, now_ms=T0_MS)
    g.commit(0)
    _Admit(g, "dev-b")(0, rid(3), T0_MS, now_ms=T0_MS + 1)  # dev-b is the most recent
    _Admit(g, "dev-c")(0, rid(4), T0_MS + 200, now_ms=T0_MS + 2)  # dev-a goes: bucket floor T0+100
    g.commit(0)
    assert g.lossy_evictions == 1
    assert g.floor_ms(0, "dev-b") is None  # a device with state is not affected...
    _Admit(g, "dev-b")(0, rid(5), T0_MS + 50, now_ms=T0_MS + 3)
    g.commit(0)
    assert g.floor_ms(0, "dev-d") == T0_MS + 100  # ...one without state starts from the bucket
    with pytest.raises(StaleCapture):
        _Admit(g, "dev-d")(0, rid(6), T0_MS + 100, now_ms=T0_MS + 4)
    _Admit(g, "dev-d")(0, rid(7), T0_MS + 101, now_ms=T0_MS + 4)


def test_the_id_bound_is_global_and_spares_devices_in_the_open_transaction() -> None:
    g = guard(max_ids=4)
    for n in range(4):
        _Admit(g, f"dev-{n}")(0, rid(n), T0_MS, now_ms=T0_MS)
    g.commit(0)
    for n in range(4, 10):  # six devices in one transaction: none of them is evicted
        _Admit(g, f"dev-{n}")(0, rid(n), T0_MS, now_ms=T0_MS + 1)
    assert (len(g), g.devices()) == (6, 6)
    g.commit(0)
    assert (len(g), g.devices()) == (4, 4)  # back within the bound once they are committed
    for n in range(6, 10):
        with pytest.raises(ReplayedRequest):
            _Admit(g, f"dev-{n}")(0, rid(n), T0_MS, now_ms=T0_MS + 2)
    for n in range(4):
        with pytest.raises(StaleCapture):
            _Admit(g, f"dev-{n}")(0, rid(n), T0_MS, now_ms=T0_MS + 2)


# --- a new owner's memory ---------------------------------------------------------------------------


def test_remembered_ids_are_committed_at_once() -> None:
    g = guard(max_entries=2)
    assert g.remember(0, DEV, rid(1), T0_MS, now_ms=T0_MS + 10)
    assert not g.remember(0, DEV, rid(1), T0_MS, now_ms=T0_MS + 10)  # already known
    assert not g.remember(0, DEV, rid(2), T0_MS - AGE_MS - 11, now_ms=T0_MS + 10)  # stale now
    assert not g.remember(0, DEV, rid(3), T0_MS + 10 + FUTURE_MS + 1, now_ms=T0_MS + 10)
    g.abort(0)  # not pending: an abort keeps it
    with pytest.raises(ReplayedRequest):
        _Admit(g)(0, rid(1), T0_MS, now_ms=T0_MS + 20)
    assert g.remember(0, DEV, rid(4), T0_MS + 1, now_ms=T0_MS + 20)
    assert g.remember(0, DEV, rid(5), T0_MS + 2, now_ms=T0_MS + 20)  # evicts rid(1): its own floor
    assert g.floor_ms(0, DEV) == T0_MS
    with pytest.raises(StaleCapture):
        _Admit(g)(0, rid(1), T0_MS, now_ms=T0_MS + 30)


def test_a_held_partition_refuses_every_capture_up_to_its_floor() -> None:
    g = guard()
    g.hold(0, T0_MS + FUTURE_MS)
    for device in ("dev-a", "dev-b"):
        assert g.floor_ms(0, device) == T0_MS + FUTURE_MS
        with pytest.raises(StaleCapture):
            _Admit(g, device)(0, rid(1), T0_MS + FUTURE_MS, now_ms=T0_MS)
    _Admit(g, "dev-a")(1, rid(1), T0_MS, now_ms=T0_MS)  # other partitions are not held
    _Admit(g, "dev-a")(0, rid(2), T0_MS + FUTURE_MS + 1, now_ms=T0_MS + 1)
    g.forget(0)
    assert g.floor_ms(0, "dev-b") is None


# --- a consumer over a log with redeliveries ------------------------------------------------------


@dataclass(slots=True)
class _Record:
    request_id: bytes
    capture_ms: int
    original: bool
    """False when an earlier offset of the log carries the same request."""


def _log(rng: random.Random, length: int, start_ms: int) -> list[_Record]:
    out: list[_Record] = []
    for offset in range(length):
        if out and rng.random() < 0.2:
            earlier = out[rng.randrange(max(0, len(out) - 50), len(out))]
            out.append(_Record(earlier.request_id, earlier.capture_ms, original=False))
        else:
            capture_ms = start_ms + offset - rng.randrange(0, 2_000)
            out.append(_Record(rng.randbytes(16), capture_ms, original=True))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_redeliveries_are_never_flagged_and_every_replay_is_caught(seed: int) -> None:
    rng = random.Random(seed)
    g = guard()
    admit = _Admit(g)
    logs = {p: _log(rng, 600, T0_MS) for p in range(3)}
    position = dict.fromkeys(logs, 0)
    now_ms = T0_MS
    false_flags = missed = caught = aborts = 0
    while any(position[p] < len(logs[p]) for p in logs):
        # One transaction: a batch from every partition that has records left.
        batch_end = {p: min(len(logs[p]), position[p] + rng.randrange(1, 40)) for p in logs}
        flagged: dict[int, list[bool]] = {}
        for p in logs:
            flagged[p] = []
            for record in logs[p][position[p] : batch_end[p]]:
                now_ms += rng.randrange(0, 4)
                try:
                    admit(p, record.request_id, record.capture_ms, now_ms=now_ms)
                    flagged[p].append(False)
                except ReplayedRequest:
                    flagged[p].append(True)
        outcome = rng.choice(["commit", "commit", "abort", "crash"])
        for p in logs:
            for record, was_flagged in zip(logs[p][position[p] : batch_end[p]], flagged[p], strict=True):
                false_flags += was_flagged and record.original
                if outcome == "commit":  # only a committed batch's outcome is visible
                    missed += not was_flagged and not record.original
                    caught += was_flagged
            if outcome == "commit":
                g.commit(p)
                position[p] = batch_end[p]
            else:  # an aborted (or crashed) transaction: the batch is fetched again
                g.abort(p)
        aborts += outcome != "commit"
    assert false_flags == 0
    assert missed == 0
    assert caught == sum(not r.original for log in logs.values() for r in log)
    assert aborts > 0


# --- a model-based test against a reference that remembers everything ----------------------------

SMALL_AGE_MS = 50
SMALL_FUTURE_MS = 20
SMALL_WINDOW_MS = SMALL_AGE_MS + SMALL_FUTURE_MS
DEVICES = ("dev-a", "dev-b", "dev-c")

_Where = tuple[int, str]
"""(partition, device): what the guard keeps state for."""


@dataclass(slots=True)
class _Reference:
    """Every id ever accepted (committed or pending) per partition and device, never forgotten."""

    committed: dict[_Where, set[bytes]] = field(default_factory=dict)
    pending: dict[_Where, set[bytes]] = field(default_factory=dict)
    now_ms: int = 0

    def decide(self, where: _Where, request_id: bytes, capture_ms: int, now_ms: int) -> str:
        self.now_ms = max(self.now_ms, now_ms)
        skew_ms = self.now_ms - capture_ms
        if skew_ms > SMALL_AGE_MS or -skew_ms > SMALL_FUTURE_MS:
            return "stale"
        if request_id in self.committed.get(where, set()) | self.pending.get(where, set()):
            return "replayed"
        return "accepted"

    def settle(self, partition: int, keep: bool) -> None:
        for where in [w for w in self.pending if w[0] == partition]:
            ids = self.pending.pop(where)
            if keep:
                self.committed.setdefault(where, set()).update(ids)


class _GuardVersusReference(RuleBasedStateMachine):
    """Random check/accept/commit/abort/forget sequences over replays of a fixed set of records, from
    several devices on several partitions.

    A replay re-sends a record: same device, request id and capture time (all authenticated).
    """

    max_entries = 1_000_000
    max_devices = 1_000
    max_ids = 1_000_000
    partitions = 3

    def __init__(self) -> None:
        super().__init__()
        self.guard: ReplayGuard[int] = ReplayGuard(
            window_ms=SMALL_WINDOW_MS,
            max_age_ms=SMALL_AGE_MS,
            max_future_skew_ms=SMALL_FUTURE_MS,
            max_ids_per_device=self.max_entries,
            max_devices=self.max_devices,
            max_ids=self.max_ids,
            floor_buckets=2,
        )
        self.ref = _Reference()
        self.records: list[tuple[str, bytes, int]] = []
        self.now_ms = T0_MS

    @initialize()
    def start(self) -> None:
        self.records.append((DEVICES[0], rid(0), T0_MS))
        self._check(0, *self.records[0])

    @rule(step_ms=st.integers(-10, 40))
    def tick(self, step_ms: int) -> None:
        self.now_ms += step_ms

    @rule(
        n=st.integers(0, 2),
        d=st.integers(0, 2),
        capture_offset_ms=st.integers(-SMALL_AGE_MS - 5, SMALL_FUTURE_MS + 5),
    )
    def check_new(self, n: int, d: int, capture_offset_ms: int) -> None:
        record = (DEVICES[d], rid(len(self.records)), self.now_ms + capture_offset_ms)
        self.records.append(record)
        self._check(n % self.partitions, *record)

    @rule(n=st.integers(0, 2), pick=st.integers(0, 10_000))
    def check_replay(self, n: int, pick: int) -> None:
        # Mostly recent records, so that replays are often still fresh.
        recent = self.records[-8:]
        self._check(n % self.partitions, *recent[pick % len(recent)])

    @rule(n=st.integers(0, 2))
    def commit(self, n: int) -> None:
        self.guard.commit(n % self.partitions)
        self.ref.settle(n % self.partitions, keep=True)

    @rule(n=st.integers(0, 2))
    def abort(self, n: int) -> None:
        self.guard.abort(n % self.partitions)
        self.ref.settle(n % self.partitions, keep=False)

    @rule(n=st.integers(0, 2))
    def forget(self, n: int) -> None:
        partition = n % self.partitions
        self.guard.forget(partition)
        self.ref.settle(partition, keep=False)
        for where in [w for w in self.ref.committed if w[0] == partition]:
            del self.ref.committed[where]

    def _check(self, partition: int, device: str, request_id: bytes, capture_ms: int) -> None:
        where = (partition, device)
        expected = self.ref.decide(where, request_id, capture_ms, self.now_ms)
        floor_ms = self.guard.floor_ms(partition, device)
        try:
            self.guard.check(partition, device, request_id, capture_ms, self.now_ms)
            self.guard.accept(partition, device, request_id, capture_ms, self.now_ms)
            got = "accepted"
        except StaleCapture:
            got = "stale"
        except ReplayedRequest:
            got = "replayed"
        if got == "accepted":
            self.ref.pending.setdefault(where, set()).add(request_id)
        if floor_ms is None:
            assert got == expected  # without eviction the guard is exact
        else:
            # Bounded memory may refuse more (as stale, at or below the floor), never accept more,
            # and never call a record replayed that is not.
            assert got == expected or (got == "stale" and capture_ms <= floor_ms)

    @invariant()
    def bounded(self) -> None:
        for partition in range(self.partitions):
            for device in DEVICES:
                assert self.guard.entries(partition, device) <= self.max_entries
        in_transactions = len(self.ref.pending)  # devices with pending ids may exceed the bounds
        assert self.guard.devices() <= self.max_devices + in_transactions
        assert len(self.guard) <= self.max_ids + sum(len(ids) for ids in self.ref.pending.values())


class _GuardVersusReferenceUnderPressure(_GuardVersusReference):
    max_entries = 3
    partitions = 1


class _GuardVersusReferenceOverTheGlobalBounds(_GuardVersusReference):
    max_entries = 4
    max_devices = 2
    max_ids = 5


TestGuardVersusReference = _GuardVersusReference.TestCase
TestGuardVersusReferenceUnderPressure = _GuardVersusReferenceUnderPressure.TestCase
TestGuardVersusReferenceOverTheGlobalBounds = _GuardVersusReferenceOverTheGlobalBounds.TestCase
for _case in (
    TestGuardVersusReference,
    TestGuardVersusReferenceUnderPressure,
    TestGuardVersusReferenceOverTheGlobalBounds,
):
    _case.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
