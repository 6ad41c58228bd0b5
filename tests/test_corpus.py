"""export_chats (many chats, one pacer), list_dialogs and the corpus CLI, on the offline double."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers_export import QUIET, dataset_frame
from polars.testing import assert_frame_equal

import tgkit
from tgkit import offline
from tgkit.cli import main
from tgkit.offline import FaultPlan, OfflineServer, World, connect_demo
from tgkit.offline.limits import LimitProfile, MethodLimit, random_profile
from tgkit.offline.vtime import run_virtual
from tgkit.offline.world import CHANNEL_ID, GROUP_ID, PUBLIC_BASE, SELF_ID
from tgkit.pacing import Pacer

HISTORY = "messages.GetHistory"
FULL = "channels.GetFullChannel"
CHATS = ["@tgkit_demo", "@tgkit_group", "@no_such_chat_here"]


def _world(**kw: Any) -> World:
    return World(seed=7, channel_messages=350, group_messages=120, media=False, **kw)


def test_export_chats_equals_separate_exports_and_records_the_unknown_chat(tmp_path: Path) -> None:
    world = _world()

    async def main_() -> tuple[pl.DataFrame, list[tgkit.ExportResult]]:
        client = await connect_demo(world=world)
        try:
            frame = await tgkit.export_chats(client, CHATS, tmp_path / "corpus", concurrency=3, **QUIET)
            single = [
                await tgkit.export_chat(client, chat, tmp_path / "single", **QUIET) for chat in CHATS[:2]
            ]
        finally:
            await client.disconnect()
        return frame, single

    frame, single = asyncio.run(main_())
    assert frame["chat"].to_list() == CHATS  # input order
    assert frame.schema == pl.Schema(tgkit.corpus.RESULT_SCHEMA)
    done = frame.filter(pl.col("status") == "done")
    assert done["chat_id"].to_list() == [r.chat_id for r in single]
    assert done["rows"].to_list() == [r.messages for r in single] == done["total_rows"].to_list()
    assert done["title"].to_list() == [r.title for r in single]
    assert_frame_equal(dataset_frame(tmp_path / "corpus"), dataset_frame(tmp_path / "single"))
    bad = frame.row(2, named=True)
    assert bad["status"] == "failed" and bad["chat_id"] is None and bad["rows"] is None
    assert bad["error"].startswith("PeerNotFound") and "no_such_chat_here" in bad["error"]
    assert "\n" not in bad["error"]
    chats = tgkit.open_dataset(tmp_path / "corpus", table="chats").collect()
    assert sorted(chats["id"].to_list()) == sorted(done["chat_id"].to_list())


def test_duplicates_are_skipped_before_and_after_resolving(tmp_path: Path) -> None:
    world = _world()
    marked = str(-(10**12 + GROUP_ID))  # the group's marked id: another spelling of @tgkit_group

    async def main_() -> pl.DataFrame:
        client = await connect_demo(world=world)
        try:
            await tgkit.list_dialogs(client, peer_cache=False)  # Telethon now knows the group's hash
            return await tgkit.export_chats(
                client, ["@tgkit_group", "https://t.me/TGKIT_GROUP", marked], tmp_path, concurrency=1, **QUIET
            )
        finally:
            await client.disconnect()

    frame = asyncio.run(main_())
    assert frame["status"].to_list() == ["done", "skipped", "skipped"]
    assert "listed twice" in frame["error"][1] and "the same chat as '@tgkit_group'" in frame["error"][2]
    assert frame["chat_id"][2] == GROUP_ID


def test_rerun_sends_only_what_new_messages_need(tmp_path: Path) -> None:
    world = _world()
    cache = tgkit.PeerCache(tmp_path / "peers.msgpack")
    opts = {**QUIET, "peer_cache": cache}

    async def main_() -> tuple[pl.DataFrame, dict[str, int]]:
        client = await connect_demo(world=world)
        try:
            await tgkit.export_chats(client, CHATS[:2], tmp_path / "out", **opts)
            new = 150
            world.add_messages(CHANNEL_ID, new)
            before = client.offline.call_log.snapshot()
            frame = await tgkit.export_chats(client, CHATS[:2], tmp_path / "out", **opts)
            after = client.offline.call_log.snapshot()
        finally:
            await client.disconnect()
        return frame, {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}

    frame, calls = asyncio.run(main_())
    assert frame["status"].to_list() == ["done", "done"]
    new_rows = frame["rows"].to_list()
    assert new_rows == [150, 0]
    # per chat: the pages holding the new messages, one page that finds nothing new, one full channel
    pages = sum(math.ceil(n / 100) + 1 for n in new_rows)
    assert calls == {HISTORY: pages, FULL: 2}
    assert dataset_frame(tmp_path / "out").select("chat_id", "id").is_duplicated().sum() == 0


def _flood_world_run(tmp_path: Path, faults: FaultPlan, chats: list[str], cache: Any) -> Any:
    world = _world(public_channels=3)

    async def main_() -> tuple[pl.DataFrame, dict[str, int]]:
        client = await connect_demo(world=world, faults=faults)
        try:
            frame = await tgkit.export_chats(
                client, chats, tmp_path, concurrency=1, pacer=Pacer.unlimited(flood_ceiling=60),
                **{**QUIET, "peer_cache": cache},
            )  # fmt: skip
            return frame, client.offline.call_log.snapshot()
        finally:
            await client.disconnect()

    return run_virtual(main_())[0]


def test_a_parked_history_method_stops_the_run_without_more_requests(tmp_path: Path) -> None:
    faults = FaultPlan().flood_wait(3600, request=HISTORY, nth=2)
    chats = ["@tgkit_demo", "@public_000", "@public_001"]
    frame, calls = _flood_world_run(tmp_path, faults, chats, False)
    assert frame["status"].to_list() == ["failed"] * 3
    assert frame["error"][0].startswith("FloodWaitTooLong") and "3600" in frame["error"][0]
    assert frame["rows"][0] == 100  # the page before the flood is committed
    for err in frame["error"][1:]:
        assert err.startswith("not started") and HISTORY in err and "rerun after" in err
    assert calls[HISTORY] == 2  # nothing was sent for the chats that could not start
    assert calls.get("contacts.ResolveUsername", 0) == 1


def test_a_parked_resolve_fails_only_the_chats_that_need_it(tmp_path: Path) -> None:
    cache = tgkit.PeerCache(False)
    world = _world(public_channels=3)

    async def warm() -> None:  # the cache knows @public_001 (as a dialog list or an earlier run would)
        client = await connect_demo(world=world)
        try:
            async with tgkit.telegram.Gateway(client, pacer=Pacer.unlimited(), peer_cache=cache) as gw:
                await gw.resolve("@public_001")
        finally:
            await client.disconnect()

    asyncio.run(warm())
    faults = FaultPlan().flood_wait(3600, request="contacts.ResolveUsername", nth=1)
    frame, calls = _flood_world_run(tmp_path, faults, ["@public_000", "@public_002", "@public_001"], cache)
    assert frame["status"].to_list() == ["failed", "failed", "done"]
    assert "FloodWaitTooLong" in frame["error"][0] and "parked" in frame["error"][1]
    assert calls["contacts.ResolveUsername"] == 1  # the parked method was not asked again
    assert frame["rows"][2] > 0


def _limited_run(concurrency: int, profile: LimitProfile) -> tuple[float, dict[str, int], pl.DataFrame]:
    world = World(seed=3, channel_messages=50, group_messages=20, public_channels=8, media=False)
    for i in range(8):
        world.add_messages(PUBLIC_BASE + i, 580)
    chats = [f"@public_{i:03d}" for i in range(8)]

    async def main_() -> tuple[pl.DataFrame, dict[str, int]]:
        server = OfflineServer(world, limits=profile)
        client = await connect_demo(server=server, latency=0.2)
        cache = tgkit.PeerCache(False)
        pacer = Pacer()
        try:
            await tgkit.list_dialogs(client, pacer=pacer, peer_cache=cache)
            frame = await tgkit.export_chats(
                client, chats, f"out-c{concurrency}", concurrency=concurrency, pacer=pacer,
                **{**QUIET, "peer_cache": cache, "metrics": False},
            )  # fmt: skip
        finally:
            await client.disconnect()
        return frame, dict(server.call_log.flood_waits)

    (frame, floods), seconds = run_virtual(main_(), thread_grace=30.0)
    return seconds, floods, frame


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_concurrency_does_not_flood_more_on_a_limited_account(seed: int, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = random_profile(seed)
    profile = LimitProfile(base.name, {**base.methods, FULL: MethodLimit(3, 0.5, 2.0)}, base.takeout)
    s1, f1, frame1 = _limited_run(1, profile)
    s4, f4, frame4 = _limited_run(4, profile)
    assert frame1["status"].to_list() == frame4["status"].to_list() == ["done"] * 8
    assert frame1["rows"].to_list() == frame4["rows"].to_list()
    # Methods the pacer paces (a prior: history, resolve) flood no more at 4 than at 1.  A method without
    # a prior (GetFullChannel) is unpaced until it floods, so 4 chats reaching it sooner than 1 may
    # meet one more wait (seed 1): a prior for it belongs in tgkit.pacing.PRIORS.
    for method in tgkit.pacing.PRIORS:
        assert f4.get(method, 0) <= f1.get(method, 0), (method, f1, f4)
    assert s4 <= s1 * 1.05, (s1, s4)  # the account's limits bound both; 4 never costs more than noise


# --------------------------------------------------------------------------------------------------
# dialogs


def test_list_dialogs_is_the_worlds_dialog_list() -> None:
    world = _world(public_channels=120)  # more than one GetDialogs page

    async def main_() -> tuple[pl.DataFrame, pl.DataFrame, int]:
        client = await connect_demo(world=world)
        try:
            all_ = await tgkit.list_dialogs(client, peer_cache=False)
            pages = client.offline.call_log.count("messages.GetDialogs")
            groups = await tgkit.list_dialogs(client, kinds=("group",), archived=False, peer_cache=False)
        finally:
            await client.disconnect()
        return all_, groups, pages

    frame, groups, pages = asyncio.run(main_())
    expected = world.dialogs(SELF_ID)
    assert pages == math.ceil(len(expected) / 100)
    assert frame.schema == pl.Schema(tgkit.corpus.DIALOG_SCHEMA)
    assert frame.height == len(expected)
    pinned = [r for r in expected if r.pinned]
    rest = [r for r in expected if not r.pinned]
    order = [tgkit.convert.peer_kind_id(r.peer) for r in pinned + rest]  # pinned first, then newest first
    assert list(zip(frame["peer_kind"], frame["id"], strict=True)) == order
    by = {(k, i): r for (k, i), r in zip(order, pinned + rest, strict=True)}
    for row in frame.iter_rows(named=True):
        r = by[(row["peer_kind"], row["id"])]
        assert row["unread"] == r.unread_count and row["pinned"] == r.pinned
        assert row["archived"] == (r.folder_id == 1)
        assert row["last_message_id"] == (r.top_message or None)
    assert set(frame.filter(pl.col("id") == CHANNEL_ID)["kind"]) == {"channel"}
    assert frame.filter(pl.col("id") == SELF_ID)["type"].to_list() == ["self"]
    assert set(groups["kind"]) == {"group"} and not groups["archived"].any()
    assert set(groups["id"]) == set(
        frame.filter((pl.col("kind") == "group") & ~pl.col("archived"))["id"].to_list()
    )


def test_dialogs_feed_export_chats_without_resolving(tmp_path: Path) -> None:
    world = _world(public_channels=2)

    async def main_() -> tuple[pl.DataFrame, dict[str, int]]:
        client = await connect_demo(world=world)
        cache = tgkit.PeerCache(False)
        try:
            dialogs = await tgkit.list_dialogs(client, kinds="channel", peer_cache=cache)
            dialogs = dialogs.filter(pl.col("chat").str.starts_with("@public_"))
            frame = await tgkit.export_chats(client, dialogs, tmp_path, **{**QUIET, "peer_cache": cache})
            return frame, client.offline.call_log.snapshot()
        finally:
            await client.disconnect()

    frame, calls = asyncio.run(main_())
    assert frame["status"].to_list() == ["done", "done"]
    assert "contacts.ResolveUsername" not in calls


def test_bad_options_fail_before_anything_is_sent(tmp_path: Path) -> None:
    async def main_() -> None:
        client = await connect_demo(world=_world())
        try:
            with pytest.raises(tgkit.ConfigError, match="concurrency"):
                await tgkit.export_chats(client, CHATS, tmp_path, concurrency=0)
            with pytest.raises(tgkit.ConfigError, match="no_such_option"):
                await tgkit.export_chats(client, CHATS, tmp_path, no_such_option=1)
            with pytest.raises(tgkit.ConfigError, match="kinds"):
                await tgkit.list_dialogs(client, kinds=("channels",))
            assert client.offline.call_log.count(HISTORY) == 0
        finally:
            await client.disconnect()

    asyncio.run(main_())


# --------------------------------------------------------------------------------------------------
# CLI


@pytest.fixture
def demo_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> World:
    """`tgkit export/chats` with a real-account environment whose client is the double's."""
    world = _world()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TGKIT_API_ID", "12345")
    monkeypatch.setenv("TGKIT_API_HASH", "0" * 32)
    monkeypatch.setenv("TGKIT_SESSION", str(tmp_path / "account"))
    monkeypatch.setenv("TGKIT_CACHE_DIR", str(tmp_path / "cache"))

    async def client(settings: Any) -> Any:
        return await offline.connect_demo(world=world)

    monkeypatch.setattr("tgkit.cli._real_client", client)
    return world


def test_cli_export_many_chats_exit_codes(demo_cli: World, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["export", "@tgkit_demo", "@no_such_chat_here", "--out", "data", "--concurrency", "2"])
    out, err = capsys.readouterr()
    assert code == 3
    assert "Traceback" not in err
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert failed == [line for line in failed if "@no_such_chat_here: PeerNotFound" in line] and failed
    assert "@tgkit_demo: done" in out and "done=1 failed=1 skipped=0" in out
    assert f"dataset: {Path('data').resolve()}" in out
    assert tgkit.open_dataset("data").select("chat_id").unique().collect()["chat_id"].to_list() == [
        CHANNEL_ID
    ]

    Path("chats.txt").write_text("# corpus\n@tgkit_demo  # the channel\n\n@tgkit_group\n@TGKIT_DEMO\n")
    code = main(["export", "--chats-file", "chats.txt", "--out", "data"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "done=2 failed=0 skipped=1" in out and "@tgkit_group: done" in out
    counts = tgkit.open_dataset("data").group_by("chat_id").len().collect()
    assert sorted(counts["chat_id"].to_list()) == [CHANNEL_ID, GROUP_ID]


def test_cli_chats_lists_and_writes_parquet(demo_cli: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chats", "--kinds", "channel,group"]) == 0
    out = capsys.readouterr().out
    assert "@tgkit_demo" in out and "@tgkit_group" in out and "Ada Researcher" not in out
    assert main(["chats", "--out", "lists/dialogs.parquet"]) == 0
    frame = pl.read_parquet("lists/dialogs.parquet")
    assert frame.height == len(demo_cli.dialogs(SELF_ID))
    assert main(["chats", "--kinds", "chanel"]) == 2
    assert "--kinds" in capsys.readouterr().err


def test_cli_all_dialogs_and_bad_dates(demo_cli: World, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["export", "--all-dialogs", "--kinds", "group", "--out", "d", "--concurrency", "3"])
    _, err = capsys.readouterr()
    assert code == 0, err
    exported = set(tgkit.open_dataset("d").select("chat_id").unique().collect()["chat_id"].to_list())
    groups = {r.peer.channel_id for r in demo_cli.dialogs(SELF_ID) if getattr(r.peer, "channel_id", 0)}
    assert GROUP_ID in exported and CHANNEL_ID not in exported and exported - {4001} <= groups
    with pytest.raises(SystemExit) as exc:
        main(["export", "@tgkit_demo", "--out", "d", "--since", "2026-13-01"])
    assert exc.value.code == 2
    assert "not a date" in capsys.readouterr().err
    assert main(["export", "--out", "d"]) == 2  # nothing to export: one line
    assert "give a CHAT" in capsys.readouterr().err
