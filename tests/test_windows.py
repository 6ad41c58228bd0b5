"""Date windows (``since``/``until``): exactly the window's messages, complete id ranges in the
checkpoint, widening a window fetches only the gaps, resume mid-backfill, the chats table's status and
window.  Everything runs the real Telethon client on the offline double."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import tgkit
from tgkit.dataset import ChatPartition, Checkpoint, add_range, missing_ranges
from tgkit.errors import CacheError, ConfigError
from tgkit.offline import CHANNEL_ID, FaultPlan, World, connect_demo

QUIET: dict[str, Any] = {"progress": False, "peer_cache": False, "monitor": False, "metrics": False}
VOLATILE = ("media_path", "media_error")


def world_of(seed: int = 5, n: int = 900) -> World:
    return World(seed=seed, channel_messages=n, group_messages=20, media=False)


def export(
    world: World, out: Path, *, faults: FaultPlan | None = None, **kw: Any
) -> tuple[tgkit.ExportResult, dict[str, int]]:
    """One export of the demo channel; returns the result and the requests the SERVER received."""

    async def go() -> tuple[tgkit.ExportResult, dict[str, int]]:
        client = await connect_demo(world=world, faults=faults)
        try:
            before = client.offline.call_log.snapshot()
            r = await tgkit.export_chat(client, "@tgkit_demo", out, **{**QUIET, **kw})
            after = client.offline.call_log.snapshot()
            return r, {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
        finally:
            await client.disconnect()

    return asyncio.run(go())


def world_dates(world: World) -> list[tuple[int, datetime]]:
    """(id, date) of every channel message that exists, from the world itself."""
    spec = world.spec(CHANNEL_ID)
    return [(i, datetime.fromtimestamp(world.date_of(spec, i), UTC)) for i in world.ids(CHANNEL_ID)]


def in_window(world: World, since: datetime | None, until: datetime | None) -> list[int]:
    return [
        i for i, d in world_dates(world) if (since is None or d >= since) and (until is None or d < until)
    ]


def frame(out: Path) -> pl.DataFrame:
    return tgkit.open_dataset(out).filter(pl.col("chat_id") == CHANNEL_ID).collect()


def cut(world: World, k: int) -> datetime:
    """The date of the k-th existing message (a boundary that falls exactly on a message)."""
    return world_dates(world)[k][1]


# --------------------------------------------------------------------------------------------------


def test_window_exports_exactly_the_messages_dated_inside_it(tmp_path):
    world = world_of()
    since, until = cut(world, 250), cut(world, 430) + timedelta(seconds=1)
    r, calls = export(world, tmp_path / "ds", since=since, until=until, batch_size=70)
    want = in_window(world, since, until)
    df = frame(tmp_path / "ds")
    assert df["id"].to_list() == want  # the boundaries are messages: `since` in, `until` out
    assert df["id"].n_unique() == df.height
    assert df["date"].min() >= since and df["date"].max() < until
    assert r.complete and r.messages == len(want)
    # the offset_date request finds the start (and is reused as the first page): no walk from id 1
    assert calls["messages.GetHistory"] <= math.ceil(len(want) / 100) + 2
    cp = ChatPartition(tmp_path / "ds", CHANNEL_ID).load()
    assert cp is not None and cp.ranges == [[want[0], cp.ranges[0][1]]]
    assert want[-1] <= cp.ranges[0][1] < world_dates(world)[431][0]  # up to the first id at `until`


def test_dates_mean_midnight_utc_and_naive_datetimes_are_utc(tmp_path):
    world = world_of(n=400)
    day0 = cut(world, 100).date() + timedelta(days=1)
    day1 = day0 + timedelta(days=10)
    midnight0 = datetime(day0.year, day0.month, day0.day, tzinfo=UTC)
    midnight1 = datetime(day1.year, day1.month, day1.day, tzinfo=UTC)
    want = in_window(world, midnight0, midnight1)
    assert 0 < len(want) < len(world.ids(CHANNEL_ID))
    export(world, tmp_path / "a", since=day0, until=day1)
    export(world, tmp_path / "b", since=midnight0.replace(tzinfo=None), until=day1.isoformat())
    berlin = midnight0.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    export(world, tmp_path / "c", since=berlin, until=midnight1)
    for name in "abc":
        assert frame(tmp_path / name)["id"].to_list() == want, name
    chats = tgkit.open_dataset(tmp_path / "a", "chats").collect()
    row = chats.filter(pl.col("id") == CHANNEL_ID).row(0, named=True)
    assert (row["status"], row["since"], row["until"]) == ("done", midnight0, midnight1)


def test_bad_windows_are_config_errors_before_anything_is_written(tmp_path):
    world = world_of(n=50)
    with pytest.raises(ConfigError, match="before"):
        export(world, tmp_path / "ds", since=date(2024, 5, 2), until=date(2024, 5, 1))
    with pytest.raises(ConfigError, match="ISO"):
        export(world, tmp_path / "ds", since="last tuesday")
    with pytest.raises(ConfigError):
        export(world, tmp_path / "ds", until=12345)
    assert not (tmp_path / "ds").exists()


def test_widening_the_window_fetches_only_the_missing_messages(tmp_path):
    world = world_of()
    out = tmp_path / "ds"
    d1, d2, d3, d4 = (cut(world, k) for k in (120, 300, 700, 760))
    first, _ = export(world, out, since=d2, until=d3, batch_size=150)
    assert first.messages == len(in_window(world, d2, d3))
    # an earlier `since` backfills the older part only
    second, calls = export(world, out, since=d1, until=d3, batch_size=150)
    missing = in_window(world, d1, d2)
    assert second.messages == len(missing)
    # the lookup page is the backfill's first page; pages until the committed range is reached, plus
    # at most one page that crosses into it and one that meets `until`.  Refetching the committed
    # range would cost at least len(committed) / 100 more.
    assert calls["messages.GetHistory"] <= math.ceil(len(missing) / 100) + 2
    assert calls["messages.GetHistory"] < math.ceil((len(missing) + first.messages) / 100)
    df = frame(out)
    assert df["id"].to_list() == in_window(world, d1, d3)  # sorted, no duplicate, no gap
    # a later `until` adds the newer part
    third, calls = export(world, out, since=d1, until=d4)
    assert third.messages == len(in_window(world, d3, d4))
    assert calls["messages.GetHistory"] <= math.ceil(third.messages / 100) + 2
    assert frame(out)["id"].to_list() == in_window(world, d1, d4)
    # the same window again: nothing to fetch but the lookup and the page at `until`
    again, calls = export(world, out, since=d1, until=d4)
    assert again.messages == 0 and calls["messages.GetHistory"] <= 2


def test_full_export_after_a_window_equals_a_plain_full_export(tmp_path):
    world = world_of()
    windowed, plain = tmp_path / "windowed", tmp_path / "plain"
    export(world, windowed, since=cut(world, 400), until=cut(world, 520), batch_size=90)
    export(world, windowed, since=cut(world, 600), batch_size=90)  # a second island
    r, _ = export(world, windowed, batch_size=90)  # no window: fills the gaps (before, between)
    export(world, plain)
    got = frame(windowed).drop(VOLATILE)
    want = frame(plain).drop(VOLATILE)
    # views depend on the world's clock only; the rows are the same messages
    assert_frame_equal(got, want)
    assert r.complete
    cp = ChatPartition(windowed, CHANNEL_ID).load()
    assert cp is not None and cp.ranges == [[1, cp.last_id]] and cp.last_id == world.ids(CHANNEL_ID)[-1]
    assert not cp.ordered  # the backfill parts were written below the window's: readers sort
    # a raw reader sees the same rows (in file order)
    raw = pl.scan_parquet(windowed / "messages").filter(pl.col("chat_id") == CHANNEL_ID).collect()
    assert sorted(raw["id"].to_list()) == want["id"].to_list()
    chats = tgkit.open_dataset(windowed, "chats").collect().row(0, named=True)
    assert chats["status"] == "done" and chats["since"] is None and chats["until"] is None


def test_new_messages_after_a_window_without_until_are_picked_up(tmp_path):
    world = world_of(n=300)
    out = tmp_path / "ds"
    since = cut(world, 200)
    export(world, out, since=since)
    new = world.add_messages(CHANNEL_ID, 30)
    r, calls = export(world, out, since=since)
    assert r.messages == 30
    assert frame(out)["id"].to_list() == in_window(world, since, None)
    assert frame(out)["id"].tail(30).to_list() == new
    assert calls["messages.GetHistory"] <= 3


@pytest.mark.parametrize("stop", ["interrupt-1", "interrupt-3", "interrupt-5", "error-2", "error-4"])
def test_resume_after_an_interruption_mid_backfill_has_no_gap_and_no_duplicate(tmp_path, stop):
    world = world_of()
    out = tmp_path / "ds"
    d1, d2, d3 = cut(world, 50), cut(world, 520), cut(world, 800)
    export(world, out, since=d2, until=d3, batch_size=60)
    how, n = stop.split("-")
    updates = 0

    def progress(event: dict[str, Any]) -> None:
        nonlocal updates
        if event["event"] == "update":
            updates += 1
            if updates == int(n):
                raise KeyboardInterrupt

    # a fresh server per run: the n-th GetHistory of the backfill run fails (not retried: a 400)
    faults = FaultPlan().rpc_error("CHANNEL_PRIVATE", code=400, request="messages.GetHistory", nth=int(n))
    with pytest.raises(KeyboardInterrupt if how == "interrupt" else tgkit.TelegramError):
        if how == "interrupt":
            export(world, out, since=d1, until=d3, batch_size=60, progress=progress)
        else:
            export(world, out, since=d1, until=d3, batch_size=60, faults=faults)
    cp = ChatPartition(out, CHANNEL_ID).load()
    assert cp is not None
    df = frame(out)
    assert df["id"].n_unique() == df.height
    # whatever was committed is described by the ranges, and every range is really complete
    ids = set(df["id"].to_list())
    for lo, hi in cp.ranges:
        assert {i for i in world.ids(CHANNEL_ID) if lo <= i <= hi} <= ids
    chats = tgkit.open_dataset(out, "chats").collect().row(0, named=True)
    assert chats["status"] == "partial"
    r, _ = export(world, out, since=d1, until=d3, batch_size=60)
    assert r.complete
    assert frame(out)["id"].to_list() == in_window(world, d1, d3)


def test_limit_leaves_the_chat_partial_and_the_rerun_continues(tmp_path):
    world = world_of(n=400)
    out = tmp_path / "ds"
    since = cut(world, 100)
    r, _ = export(world, out, since=since, limit=50)
    assert r.messages == 50 and not r.complete
    assert tgkit.open_dataset(out, "chats").collect()["status"].item() == "partial"
    r, _ = export(world, out, since=since)
    assert r.complete
    assert frame(out)["id"].to_list() == in_window(world, since, None)
    assert tgkit.open_dataset(out, "chats").collect()["status"].item() == "done"


def test_refresh_inside_a_window_does_not_write_the_gaps(tmp_path):
    world = world_of(n=500)
    out = tmp_path / "ds"
    since, until = cut(world, 300), cut(world, 420)
    export(world, out, since=since, until=until)
    export(world, out, since=cut(world, 50), until=cut(world, 120))  # an older island: a gap between
    world.edit_message(CHANNEL_ID, in_window(world, since, until)[-1], text="edited")
    r, _ = export(world, out, since=cut(world, 50), until=until, refresh_days=200)
    assert r.refreshed > 0
    # the run's window (50..420) filled the gap; the refresh before it rewrote only what was there
    want = in_window(world, cut(world, 50), until)
    df = frame(out)
    assert df["id"].to_list() == want
    assert df.filter(pl.col("text") == "edited").height == 1


# --------------------------------------------------------------------------------------------------
# The checkpoint's ranges


def _cp_dict(**extra: Any) -> dict[str, Any]:
    base = Checkpoint(CHANNEL_ID, last_id=500, rows=480).to_dict()
    base.pop("ranges")
    base.update(extra)
    return base


def test_a_checkpoint_without_ranges_means_everything_up_to_last_id():
    cp = Checkpoint.from_dict(_cp_dict())
    assert cp.ranges == [[1, 500]] and cp.covers(1) and cp.covers(500) and not cp.covers(501)
    empty = Checkpoint.from_dict({**_cp_dict(), "last_id": 0, "rows": 0})
    assert empty.ranges == []
    again = Checkpoint.from_dict(json.loads(json.dumps(cp.to_dict())))
    assert again.ranges == [[1, 500]] and again.threads == {} and again.ordered


@pytest.mark.parametrize(
    "bad",
    [
        "1-500",
        [[1]],
        [[0, 5]],
        [[5, 1]],
        [[1, 5], [3, 9]],  # overlapping
        [[10, 20], [1, 5]],  # not sorted
        [[1, 5], [6, 9]],  # adjacent: should have been merged
        [[1, "5"]],
        [[1, True]],
    ],
)
def test_a_corrupt_ranges_field_is_a_cache_error(bad):
    with pytest.raises(CacheError, match="malformed"):
        Checkpoint.from_dict(_cp_dict(ranges=bad))


def test_a_corrupt_ranges_field_on_disk_stops_the_export_and_is_not_overwritten(tmp_path):
    world = world_of(n=60)
    out = tmp_path / "ds"
    export(world, out)
    path = ChatPartition(out, CHANNEL_ID).checkpoint_path
    data = json.loads(path.read_text())
    data["ranges"] = [[5, 1]]
    path.write_text(json.dumps(data))
    before = path.read_bytes()
    with pytest.raises(CacheError):
        export(world, out)
    assert path.read_bytes() == before


intervals = st.lists(st.tuples(st.integers(1, 60), st.integers(0, 15)), max_size=8)


@given(intervals, st.integers(1, 80))
def test_add_range_and_missing_ranges_agree_with_sets(spans, lo):
    ranges: list[list[int]] = []
    covered: set[int] = set()
    for a, n in spans:
        ranges = add_range(ranges, a, a + n)
        covered |= set(range(a, a + n + 1))
        Checkpoint.from_dict({**_cp_dict(), "ranges": ranges})  # always valid: sorted, disjoint, merged
    cp = Checkpoint(1, ranges=ranges)
    assert {i for i in range(1, 100) if cp.covers(i)} == {i for i in covered if i < 100}
    gaps = missing_ranges(ranges, lo)
    assert gaps[-1][1] is None
    missing = set()
    for a, b in gaps:
        missing |= set(range(a, (b if b is not None else 99) + 1))
    assert missing == {i for i in range(lo, 100) if i not in covered}
