"""Issue #15: the limiter of the double and the adaptive pacer (virtual time only)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from telethon import errors as tl_errors
from telethon.tl import functions, types

import tgkit
from tgkit.errors import FloodWaitTooLong
from tgkit.offline import CHANNEL_ID, OfflineServer, World, connect_demo
from tgkit.offline.limits import Limiter, LimitProfile, MethodLimit, load_profile, no_limits, random_profile
from tgkit.offline.vtime import run_virtual
from tgkit.pacing import PRIORS, Pacer, PacingStateWarning, state_file

HISTORY = "messages.GetHistory"
RESOLVE = "contacts.ResolveUsername"
GET_FILE = "upload.GetFile"
QUIET: dict[str, Any] = {"progress": False, "peer_cache": False, "monitor": False, "metrics": False}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _limiter(
    methods: dict[str, MethodLimit], takeout: dict[str, MethodLimit] | None = None
) -> tuple[Limiter, Clock]:
    clock = Clock()
    return Limiter(LimitProfile("t", methods, takeout or {}), clock=clock), clock


# --------------------------------------------------------------------------------------------------
# The limiter


def test_bucket_floods_until_full_again() -> None:
    lim, clock = _limiter({HISTORY: MethodLimit(5, 0.5, jitter=0.0)})
    assert [lim.check(HISTORY) for _ in range(5)] == [None] * 5
    clock.t = 1.0  # half a token back
    assert lim.check(HISTORY) == 9  # (5 - 0.5) / 0.5 = 9 s until the bucket is full
    clock.t = 10.0
    assert [lim.check(HISTORY) for _ in range(5)] == [None] * 5  # full again when the wait ended
    assert lim.check(HISTORY) == 10
    assert lim.flood_waits[HISTORY] == 2 and lim.passed[HISTORY] == 10


def test_jitter_is_small_seeded_and_rounded_up() -> None:
    def waits(seed: int) -> list[int]:
        clock = Clock()
        lim = Limiter(LimitProfile("t", {HISTORY: MethodLimit(20, 1.0, jitter=0.1)}), seed=seed, clock=clock)
        out = []
        for _ in range(6):
            while (w := lim.check(HISTORY)) is None:
                pass
            out.append(w)
            clock.t += w
        return out

    a = waits(1)
    assert a == waits(1) and a != waits(2)
    assert all(20 <= w <= 22 for w in a)


def test_calling_while_flooded_escalates_and_a_quiet_period_resets() -> None:
    spec = MethodLimit(2, 1.0, escalation=4.0, quiet_s=100.0, jitter=0.0)
    lim, clock = _limiter({HISTORY: spec})
    lim.check(HISTORY), lim.check(HISTORY)
    assert lim.check(HISTORY) == 2
    clock.t = 1.0
    assert lim.check(HISTORY) == 8  # again while flooded: 2 * 4, starting now
    clock.t = 2.0
    assert lim.check(HISTORY) == 32
    clock.t = 34.0  # the wait is over; the level stays until a quiet period passed
    lim.check(HISTORY), lim.check(HISTORY)
    assert lim.check(HISTORY) == 2 * 16  # time to full (2 s) times escalation ** 2
    clock.t = 66.0 + 100.0  # quiet for 100 s after the last flood ended
    lim.check(HISTORY), lim.check(HISTORY)
    assert lim.check(HISTORY) == 2


def test_daily_budget_waits_until_the_day_turns() -> None:
    lim, clock = _limiter({RESOLVE: MethodLimit(100, 10.0, daily=3, jitter=0.0)})
    clock.t = 86_400.0 * 5 + 3_600.0
    assert [lim.check(RESOLVE) for _ in range(3)] == [None] * 3
    assert lim.check(RESOLVE) == 86_400 - 3_600
    clock.t = 86_400.0 * 6
    assert lim.check(RESOLVE) is None


def test_takeout_buckets_are_separate_and_higher() -> None:
    lim, _ = _limiter({HISTORY: MethodLimit(2, 1.0)}, {HISTORY: MethodLimit(10, 5.0)})
    assert [lim.check(HISTORY, takeout=True) for _ in range(10)] == [None] * 10
    assert lim.check(HISTORY, takeout=True) is not None
    assert [lim.check(HISTORY) for _ in range(2)] == [None, None]  # the account's own bucket is untouched
    assert lim.check(HISTORY) is not None
    # a method with no takeout section uses the account's bucket, wrapped or not
    lim2, _ = _limiter({GET_FILE: MethodLimit(1, 1.0)}, {HISTORY: MethodLimit(10, 5.0)})
    assert lim2.check(GET_FILE, takeout=True) is None and lim2.check(GET_FILE) is not None


def test_get_file_is_limited_per_data_centre() -> None:
    lim, _ = _limiter({GET_FILE: MethodLimit(3, 1.0)})
    assert [lim.check(GET_FILE, dc_id=2) for _ in range(3)] == [None] * 3
    assert lim.check(GET_FILE, dc_id=2) is not None
    assert lim.check(GET_FILE, dc_id=4) is None


def test_get_by_ids_costs_one_token_per_message() -> None:
    lim, _ = _limiter({"channels.GetMessages": MethodLimit(10, 1.0)})
    req = functions.channels.GetMessagesRequest(
        types.InputChannel(1, 1), [types.InputMessageID(i) for i in range(4)]
    )
    assert lim.check("channels.GetMessages", req) is None
    assert lim.check("channels.GetMessages", req) is None
    assert lim.check("channels.GetMessages", req) is not None  # 8 used, 4 more do not fit in 10
    one = functions.channels.GetMessagesRequest(types.InputChannel(1, 1), [types.InputMessageID(1)])
    assert lim.check("channels.GetMessages", one) is not None  # flooded: the whole method waits


def test_profiles_load_from_json_text_file_and_dict(tmp_path: Path) -> None:
    text = json.dumps(
        {
            "name": "strict",
            "methods": {
                HISTORY: {"capacity": 30, "refill_per_s": 1.0, "escalation": 4.0},
                RESOLVE: {"capacity": 5, "refill_per_s": 0.05, "escalation": 10.0, "daily": 200},
                GET_FILE: {"capacity": 40, "refill_per_s": 20.0},
            },
            "takeout": {HISTORY: {"capacity": 100, "refill_per_s": 4.0}},
        }
    )
    path = tmp_path / "strict.json"
    path.write_text(text)
    a, b, c = load_profile(text), load_profile(path), load_profile(json.loads(text))
    assert a == b == c
    assert a.methods[RESOLVE].daily == 200 and a.takeout[HISTORY].refill_per_s == 4.0
    assert load_profile(a.to_json()) == a
    assert a.limit_for("channels.GetFullChannel") is None  # absent: unlimited
    with pytest.raises(ValueError, match="unknown"):
        load_profile('{"name": "x", "methods": {"m": {"capacity": 1, "refill_per_s": 1, "burst": 2}}}')
    with pytest.raises(ValueError, match="capacity"):
        load_profile('{"methods": {"m": {"capacity": 0, "refill_per_s": 1}}}')


def test_random_profiles_are_seeded_and_match_the_evidence() -> None:
    rng = random.Random(5)
    profiles = [random_profile(rng) for _ in range(50)]
    again = random.Random(5)
    assert [p.to_dict() for p in profiles[:3]] == [random_profile(again).to_dict() for _ in range(3)]
    assert random_profile(9) == random_profile(9) != random_profile(10)
    for p in profiles:
        h, t, r = p.methods[HISTORY], p.takeout[HISTORY], p.methods[RESOLVE]
        assert 10 <= h.capacity <= 60 and 0.3 <= h.refill_per_s <= 2.0
        assert 2.0 <= t.refill_per_s <= 8.0 and 50 <= t.capacity <= 200 and t.refill_per_s >= h.refill_per_s
        assert r.capacity <= 10 and r.refill_per_s < 0.1 and r.escalation >= 5 and r.daily is not None
        assert p.methods[GET_FILE].refill_per_s >= 10
    assert len({p.methods[HISTORY].refill_per_s for p in profiles}) > 40
    assert no_limits().limit_for(HISTORY) is None


def test_the_double_answers_flood_waits_from_its_limiter(small_world: World) -> None:
    profile = LimitProfile("t", {HISTORY: MethodLimit(3, 0.5, jitter=0.0)})

    async def main() -> tuple[list[int], float, dict[str, int]]:
        client = await connect_demo(world=small_world, limits=profile)
        client.flood_sleep_threshold = 0
        peer = await client.get_input_entity("@tgkit_demo")
        req = functions.messages.GetHistoryRequest(peer, 0, None, 0, 10, 0, 0, 0)
        waits = []
        try:
            for _ in range(3):
                await client(req)
            with pytest.raises(tl_errors.FloodWaitError) as ei:
                await client(req)
            waits.append(ei.value.seconds)
            await asyncio.sleep(ei.value.seconds)
            client._flood_waited_requests.clear()
            await client(req)  # the bucket is full again
            return waits, asyncio.get_running_loop().time(), dict(client.offline.call_log.flood_waits)
        finally:
            await client.disconnect()

    (waits, _, floods), elapsed = run_virtual(main())
    assert waits == [6] and floods == {HISTORY: 1}
    assert elapsed == pytest.approx(6.0)
    assert OfflineServer(small_world).limits is None  # the demo world: limit-free


# --------------------------------------------------------------------------------------------------
# The pacer against the limiter


async def _drive(pacer: Pacer, lim: Limiter, pages: int, *, takeout: bool = False) -> float:
    """What an export does with history requests: acquire, send, sleep off a flood wait."""
    loop = asyncio.get_running_loop()
    t0, got = loop.time(), 0
    while got < pages:
        await pacer.acquire(HISTORY)
        wait = lim.check(HISTORY, takeout=takeout)
        if wait is None:
            got += 1
        else:
            await pacer.flood_wait(wait, HISTORY)
    return loop.time() - t0


@pytest.mark.parametrize(
    ("capacity", "refill"), [(12, 0.4), (45, 1.7), (150, 6.0)], ids=["strict", "generous", "takeout"]
)
def test_pacer_converges_to_the_server_limit(capacity: int, refill: float, tmp_path: Path) -> None:
    profile = LimitProfile("p", {HISTORY: MethodLimit(capacity, refill, escalation=3.0)})
    lim = Limiter(profile, seed=capacity)
    pages = 1000
    ideal = (pages - capacity) / refill
    cold = Pacer(state_path=tmp_path / "state.msgpack")
    elapsed, _ = run_virtual(_drive(cold, lim, pages))
    learned = cold.snapshot()[HISTORY]["limit"]
    assert learned is not None and 0.95 * refill <= learned <= refill  # a lower bound, and a tight one
    assert cold.flood_waits <= 3
    assert ideal / elapsed >= 0.85
    cold.save()
    lim.refill()  # a pause: the server's buckets are full again
    warm = Pacer(state_path=tmp_path / "state.msgpack")
    warm._saved_at = (warm._saved_at or 0) - 3600  # saved an hour ago
    elapsed, _ = run_virtual(_drive(warm, lim, pages))
    assert warm.flood_waits == 0
    assert ideal / elapsed >= 0.95


def test_a_lower_limit_later_is_learned_again() -> None:
    lim = Limiter(LimitProfile("p", {HISTORY: MethodLimit(30, 1.5)}), seed=3)
    pacer = Pacer()

    async def main() -> None:
        await _drive(pacer, lim, 600)
        lim.profile = LimitProfile("p", {HISTORY: MethodLimit(20, 0.6)})  # the account got stricter
        lim.refill()
        await _drive(pacer, lim, 600)

    run_virtual(main())
    learned = pacer.snapshot()[HISTORY]["limit"]
    assert learned is not None and learned <= 0.6


def test_flooded_method_is_never_retried_before_the_wait_ends() -> None:
    async def main() -> list[float]:
        pacer = Pacer()
        loop = asyncio.get_running_loop()
        stamps = []

        async def one() -> None:
            await pacer.acquire(HISTORY)
            stamps.append(loop.time())

        await one()
        flood = asyncio.create_task(pacer.flood_wait(120, HISTORY))
        await asyncio.sleep(0)
        await asyncio.gather(*(one() for _ in range(5)))
        await flood
        return stamps

    stamps, _ = run_virtual(main())
    assert stamps[0] == 0 and all(t >= 120 for t in stamps[1:])


def test_resolve_wait_never_blocks_other_methods() -> None:
    async def main() -> dict[str, float]:
        pacer = Pacer()
        loop = asyncio.get_running_loop()
        done: dict[str, float] = {}

        async def resolve() -> None:
            await pacer.flood_wait(800, RESOLVE)
            await pacer.acquire(RESOLVE)
            done["resolve"] = loop.time()

        async def history() -> None:
            await asyncio.sleep(1)
            for _ in range(20):
                await pacer.acquire(HISTORY)
            done["history"] = loop.time()

        await asyncio.gather(resolve(), history())
        snap = pacer.snapshot()
        assert snap[RESOLVE]["blocked_for"] == 0
        return done

    done, _ = run_virtual(main())
    assert done["history"] == pytest.approx(1.0) and done["resolve"] == pytest.approx(800.0)
    assert not PRIORS[RESOLVE].explore


def test_concurrent_acquirers_are_served_in_order_and_only_the_head_sleeps() -> None:
    async def main() -> tuple[list[int], int]:
        pacer = Pacer({HISTORY: tgkit.RateLimit(1, 1.0)})
        order: list[int] = []
        sleeps = 0
        real_sleep = asyncio.sleep

        async def counting_sleep(delay: float, *a: Any) -> Any:
            nonlocal sleeps
            sleeps += 1
            return await real_sleep(delay, *a)

        async def worker(i: int) -> None:
            await pacer.acquire(HISTORY)
            order.append(i)

        asyncio.sleep = counting_sleep  # type: ignore[assignment]
        try:
            tasks = [asyncio.create_task(worker(i)) for i in range(8)]
            await asyncio.gather(*tasks)
        finally:
            asyncio.sleep = real_sleep
        return order, sleeps

    (order, sleeps), elapsed = run_virtual(main())
    assert order == list(range(8))
    assert sleeps == 7  # one timer per request that had to wait, not one per waiter per wake-up
    assert elapsed == pytest.approx(7.0)


def test_snapshot_shows_rate_limit_and_countdown() -> None:
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        pacer = Pacer()
        await pacer.acquire(HISTORY)
        before = pacer.snapshot()
        task = asyncio.create_task(pacer.flood_wait(30, HISTORY))
        await asyncio.sleep(10)
        during = pacer.snapshot()
        await task
        return before, during

    (before, during), _ = run_virtual(main())
    assert before[HISTORY] == {"rate": PRIORS[HISTORY].rate, "limit": None, "blocked_for": 0.0}
    assert during[HISTORY]["blocked_for"] == pytest.approx(20.0)
    assert Pacer.unlimited().snapshot() == {}


# --------------------------------------------------------------------------------------------------
# Persistence


_finite = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
_window = st.lists(_finite, min_size=4, max_size=4).map(lambda w: [*w, 1.0])
_method_state = st.fixed_dictionaries(
    {
        "refill": st.one_of(st.none(), _finite),
        "refill_max": st.one_of(st.none(), _finite),
        "cap": st.one_of(st.none(), _finite),
        "exact": st.booleans(),
        "windows": st.lists(_window, max_size=8),
        "tokens": _finite,
        "blocked_for": _finite,
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(methods=st.dictionaries(st.sampled_from([*sorted(PRIORS), "x.Other"]), _method_state, max_size=5))
def test_state_file_round_trips(methods: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "pacing.msgpack"
    pacer = Pacer(state_path=path)
    pacer._saved = {k: dict(v) for k, v in methods.items()}
    pacer.save()
    again = Pacer(state_path=path)
    assert again._saved == {
        k: {**v, "windows": [[float(x) for x in w] for w in v["windows"]]} for k, v in methods.items()
    }
    assert again._saved_at is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_learned_state_persists_per_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TGKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TGKIT_PACING", "adaptive")
    lim = Limiter(LimitProfile("p", {HISTORY: MethodLimit(20, 1.0)}), seed=1)
    pacer = Pacer.for_account("+1 555 0100")
    assert pacer.state_path is not None and pacer.state_path.parent == tmp_path
    assert "555" in pacer.state_path.name and " " not in pacer.state_path.name
    run_virtual(_drive(pacer, lim, 400))
    learned = pacer.snapshot()[HISTORY]["limit"]
    pacer.save()
    again = Pacer.for_account("+1 555 0100")

    async def first_rate() -> Any:
        await again.acquire(HISTORY)
        return again.snapshot()[HISTORY]

    snap, _ = run_virtual(first_rate())
    assert snap["limit"] == learned and snap["rate"] == pytest.approx(learned)  # starts at the learned rate
    assert Pacer.for_account("someone else").snapshot() == {}
    monkeypatch.setenv("TGKIT_PACING", "off")
    assert not Pacer.for_account("+1 555 0100").adaptive
    text = again.state_path.read_bytes() if again.state_path else b""
    assert b"555" not in text  # the file holds numbers and method names only


@pytest.mark.parametrize(
    "damage",
    [b"", b"garbage", b"\x93\xactgkit.pacing\x01\x00{}", b"\x93\xactgkit.pacing\x09\x00"],
    ids=["empty", "garbage", "bad-crc", "wrong-version"],
)
def test_corrupt_state_file_warns_and_starts_from_the_prior(tmp_path: Path, damage: bytes) -> None:
    path = tmp_path / "pacing.msgpack"
    path.write_bytes(damage)
    with pytest.warns(PacingStateWarning, match="starting from the prior"):
        pacer = Pacer(state_path=path)

    async def main() -> Any:
        await pacer.acquire(HISTORY)
        return pacer.snapshot()[HISTORY]

    snap, _ = run_virtual(main())
    assert snap["limit"] is None and snap["rate"] == PRIORS[HISTORY].rate
    pacer.save()  # a good file replaces the bad one
    Pacer(state_path=path)  # no warning now (filterwarnings=error would fail this test)


def test_truncated_state_file(tmp_path: Path) -> None:
    path = tmp_path / "pacing.msgpack"
    lim = Limiter(LimitProfile("p", {HISTORY: MethodLimit(20, 1.0)}), seed=1)
    pacer = Pacer(state_path=path)
    run_virtual(_drive(pacer, lim, 200))
    pacer.save()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.warns(PacingStateWarning):
        assert Pacer(state_path=path)._saved == {}


def test_state_file_name_is_safe(tmp_path: Path) -> None:
    assert state_file("alice", tmp_path) == tmp_path / "pacing-alice.msgpack"
    odd = state_file("../../etc/passwd", tmp_path)
    assert odd.parent == tmp_path and "/" not in odd.name[len("pacing-") :]
    with pytest.raises(tgkit.ConfigError):
        state_file("", tmp_path)


# --------------------------------------------------------------------------------------------------
# Through the export


def test_export_paced_by_the_adaptive_pacer_never_floods_resolve(tmp_path: Path) -> None:
    world = World(seed=3, channel_messages=6000, group_messages=300, media=False)
    profile = LimitProfile(
        "strict",
        {
            HISTORY: MethodLimit(10, 0.8, escalation=4.0),
            RESOLVE: MethodLimit(2, 1 / 3600, escalation=20.0, daily=5),
        },
    )

    async def main() -> tuple[list[tgkit.ExportResult], OfflineServer]:
        client = await connect_demo(world=world, limits=profile)
        cache = tgkit.PeerCache(path=tmp_path / "peers.msgpack")
        pacer = Pacer()
        try:
            results = []
            for i, chat in enumerate(["@tgkit_demo", "@tgkit_group", "@tgkit_demo"]):
                kw = {**QUIET, "peer_cache": cache}
                results.append(await tgkit.export_chat(client, chat, tmp_path / f"out{i}", pacer=pacer, **kw))
            return results, client.offline
        finally:
            await client.disconnect()

    (results, server), elapsed = run_virtual(main())
    log = server.call_log
    assert log.flood_waits[RESOLVE] == 0
    assert log.count(RESOLVE) == 2  # the third export found @tgkit_demo in the peer cache
    assert results[0].total_rows > 5000 and results[2].total_rows == results[0].total_rows
    assert log.flood_waits[HISTORY] <= 3
    pages = server.limits.passed[HISTORY] if server.limits else 0
    assert elapsed >= (pages - 10) / 0.8 * 0.99  # the server's limit held
    # each result counts its own run's waits (the pacer they share counts them all)
    assert sum(r.flood_waits for r in results) == log.flood_waits[HISTORY]


def test_limiter_wait_above_the_ceiling_leaves_a_resumable_checkpoint(tmp_path: Path) -> None:
    world = World(seed=4, channel_messages=3000, group_messages=10, media=False)
    # 10 requests, then an hour to refill: the wait is above a 15-minute ceiling
    profile = LimitProfile("harsh", {HISTORY: MethodLimit(10, 10 / 3600, jitter=0.0)})

    async def export(limits: Any) -> tgkit.ExportResult:
        client = await connect_demo(world=world, limits=limits)
        try:
            return await tgkit.export_chat(
                client, "@tgkit_demo", tmp_path, pacer=Pacer(), batch_size=200, **QUIET
            )
        finally:
            await client.disconnect()

    with pytest.raises(FloodWaitTooLong) as ei:
        run_virtual(export(profile))
    err = ei.value
    assert err.seconds > 900 and "rerun in" in str(err)
    assert err.checkpoint is not None and err.checkpoint.is_file()
    partial = tgkit.open_dataset(tmp_path).collect()
    assert 0 < partial.height < 3000
    result, _ = run_virtual(export(None))  # later, when the limit allows: resumes after the checkpoint
    assert result.resumed_from == partial["id"].max()
    assert tgkit.open_dataset(tmp_path).collect()["id"].is_duplicated().sum() == 0
    assert result.chat_id == CHANNEL_ID
    assert math.isfinite(result.flood_wait_seconds)
