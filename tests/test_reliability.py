"""Issue #8: pacing, flood waits, takeout, disconnects, refresh, secrets and hostile input.

Everything that waits runs on virtual time (``tgkit.offline.vtime.run_virtual``): flood waits,
reconnect backoff and Telethon's own 2 s sleep per retried 5xx answer cost no real time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from helpers_export import QUIET, assert_same_rows, dataset_frame, export_world
from polars.testing import assert_frame_equal
from telethon.extensions import BinaryReader
from telethon.sessions import SQLiteSession, StringSession
from telethon.tl import types

import tgkit
from tgkit import convert
from tgkit.dataset import CHECKPOINT_NAME, MANIFEST_NAME, ChatPartition
from tgkit.errors import CacheError, FloodWaitTooLong, TelegramError
from tgkit.offline import CHANNEL_ID, GROUP_ID, FaultPlan, OfflineServer, World, connect_demo
from tgkit.offline.vtime import run_virtual
from tgkit.pacing import DEFAULT_LIMITS, Pacer, RateLimit
from tgkit.records import ExportedMessage, Records

HISTORY = "messages.GetHistory"
ALL_MEDIA = ["photo", "video", "document"]


def _world(n: int = 3000, **kw: Any) -> World:
    return World(seed=21, channel_messages=n, group_messages=10, media=False, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted export of ``_world()``'s channel: what every faulty run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    asyncio.run(export_world(_world(), out, batch_size=1000))
    return out


# --------------------------------------------------------------------------------------------------
# 1. Pacing: the proactive gate and the flood-wait policy


def test_rate_gate_keeps_each_type_under_its_window() -> None:
    async def main() -> list[float]:
        pacer = Pacer({HISTORY: RateLimit(30, 30.0)})
        loop = asyncio.get_running_loop()
        stamps = []
        for _ in range(95):
            await pacer.acquire(HISTORY)
            stamps.append(loop.time())
        return stamps

    stamps, elapsed = run_virtual(main())
    # 30 at once, then one window later the next 30, and so on: never more than 30 in any 30 s
    assert elapsed == pytest.approx(90.0)
    for i in range(len(stamps) - 30):
        assert stamps[i + 30] - stamps[i] >= 30.0 - 1e-9
    assert DEFAULT_LIMITS[HISTORY] == RateLimit(30, 30.0)


def test_default_pacer_does_not_look_at_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        client = await connect_demo(world=_world(200))
        try:
            monkeypatch.setenv("TGKIT_PACING", "adaptive")
            assert Pacer.for_client(client).adaptive  # the double gets what a real account gets
            monkeypatch.setenv("TGKIT_PACING", "fixed")
            assert Pacer.for_client(client).limits[HISTORY] == RateLimit(30, 30.0)
            monkeypatch.setenv("TGKIT_PACING", "off")
            assert Pacer.for_client(client).limits == {} and not Pacer.for_client(client).adaptive
        finally:
            await client.disconnect()

    asyncio.run(main())


def test_flood_wait_on_history_does_not_stall_downloads() -> None:
    async def main() -> dict[str, float]:
        pacer = Pacer()
        loop = asyncio.get_running_loop()
        done: dict[str, float] = {}

        async def history() -> None:
            await pacer.flood_wait(600, HISTORY)
            await pacer.acquire(HISTORY)
            done["history"] = loop.time()

        async def download() -> None:
            await asyncio.sleep(1)
            for _ in range(10):
                await pacer.acquire("upload.GetFile")
            done["download"] = loop.time()

        async def late_history() -> None:  # a second history request arriving during the wait
            await asyncio.sleep(5)
            await pacer.acquire(HISTORY)
            done["late_history"] = loop.time()

        await asyncio.gather(history(), download(), late_history())
        return done

    done, _ = run_virtual(main())
    assert done["download"] == pytest.approx(1.0)  # not a second later than it asked
    assert done["history"] == pytest.approx(600.0)
    assert done["late_history"] == pytest.approx(600.0)  # the block covers the type, not one call


def test_flood_wait_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main(pacer: Pacer, seconds: float) -> None:
        await pacer.flood_wait(seconds, HISTORY, peer="@x")

    (_, elapsed) = run_virtual(main(Pacer(), 900))  # at the default ceiling (15 min): slept
    assert elapsed == pytest.approx(900)
    with pytest.raises(FloodWaitTooLong) as ei:
        run_virtual(main(Pacer(), 901))
    assert ei.value.seconds == 901 and ei.value.peer == "@x" and "ceiling" in str(ei.value)
    monkeypatch.setenv("TGKIT_FLOOD_CEILING", "60")
    with pytest.raises(FloodWaitTooLong):
        run_virtual(main(Pacer(), 61))
    assert Pacer(flood_ceiling=120).flood_ceiling == 120  # the explicit argument wins


def test_short_flood_waits_are_slept_with_a_countdown(tmp_path: Path, reference: Path) -> None:
    plan = FaultPlan().flood_wait(45, request=HISTORY, nth=3).flood_wait(600, request=HISTORY, nth=9)
    events: list[dict[str, Any]] = []

    result, elapsed = run_virtual(
        export_world(_world(), tmp_path, faults=plan, batch_size=1000, progress=events.append)
    )
    assert result.flood_waits == 2 and result.flood_wait_seconds == 645
    assert elapsed >= 645
    countdowns = [e for e in events if e["event"] == "countdown"]
    assert [e["seconds"] for e in countdowns] == [45, 600]
    assert all(HISTORY in e["reason"] for e in countdowns)
    assert_same_rows(tmp_path, reference)


def test_flood_wait_above_ceiling_leaves_a_resumable_checkpoint(tmp_path: Path, reference: Path) -> None:
    plan = FaultPlan().flood_wait(3600, request=HISTORY, nth=12)
    with pytest.raises(FloodWaitTooLong) as ei:
        run_virtual(export_world(_world(), tmp_path, faults=plan, batch_size=250))
    err = ei.value
    assert err.seconds == 3600
    assert err.checkpoint is not None and err.checkpoint.is_file()
    assert err.checkpoint == ChatPartition(tmp_path, CHANNEL_ID).checkpoint_path
    # the dataset opens and holds exactly the oldest rows: no gap
    partial = dataset_frame(tmp_path)
    full = dataset_frame(reference)
    assert 0 < partial.height < full.height
    assert partial.equals(full.head(partial.height))
    # a rerun later completes, with no gap and no duplicate
    result, _ = run_virtual(export_world(_world(), tmp_path, batch_size=250))
    assert result.resumed_from == partial["id"].max()
    assert_same_rows(tmp_path, reference)


# --------------------------------------------------------------------------------------------------
# 2. Takeout


def test_takeout_wraps_requests_and_finishes(tmp_path: Path, small_world: World) -> None:
    async def main() -> tuple[OfflineServer, tgkit.ExportResult]:
        server = OfflineServer(small_world)
        client = await connect_demo(server=server)
        try:
            result = await tgkit.export_chat(
                client, "@tgkit_group", tmp_path, takeout=True, media=ALL_MEDIA, **QUIET
            )
        finally:
            await client.disconnect()
        return server, result

    server, result = asyncio.run(main())
    log = server.call_log
    assert log.count("account.InitTakeoutSession") == 1
    assert log.count("account.FinishTakeoutSession") == 1
    assert server.takeout_sessions == frozenset()
    assert log.takeout[HISTORY] == log.count(HISTORY) > 0  # every history request went through takeout
    assert result.media_downloaded > 0 and log.count("upload.GetFile") > 0
    assert log.takeout["upload.GetFile"] == 0  # downloads are not wrapped
    assert result.total_rows == small_world.chats[GROUP_ID].messages - _deleted(small_world, GROUP_ID)


def test_takeout_survives_flood_waits_and_disconnects(tmp_path: Path, reference: Path) -> None:
    plan = FaultPlan().flood_wait(60, request=HISTORY, nth=3).disconnect(request=HISTORY, nth=6)
    plan.rpc_error("INTERNAL", code=500, request=HISTORY, nth=9)
    server = OfflineServer(_world(), faults=plan)

    async def main() -> tgkit.ExportResult:
        client = await connect_demo(server=server)
        try:
            return await tgkit.export_chat(client, "@tgkit_demo", tmp_path, takeout=True, **QUIET)
        finally:
            await client.disconnect()

    result, elapsed = run_virtual(main())
    assert [r.fired for r in plan.rules] == [1, 1, 1]
    assert result.flood_waits == 1 and result.reconnects == 1 and elapsed >= 60
    assert server.call_log.takeout[HISTORY] == server.call_log.count(HISTORY)
    assert server.call_log.count("account.FinishTakeoutSession") == 1 and not server.takeout_sessions
    assert_same_rows(tmp_path, reference)


def _deleted(world: World, chat_id: int) -> int:
    return world.chats[chat_id].max_id - len(world.ids(chat_id))


def test_takeout_init_delay_is_a_clear_error(tmp_path: Path) -> None:
    async def main(server: OfflineServer) -> None:
        client = await connect_demo(server=server)
        try:
            await tgkit.export_chat(client, "@tgkit_demo", tmp_path, takeout=True, **QUIET)
        finally:
            await client.disconnect()

    server = OfflineServer(_world(200))
    server.takeout_delay = 86_400
    with pytest.raises(TelegramError) as ei:
        asyncio.run(main(server))
    msg = str(ei.value)
    assert "86400" in msg and "takeout" in msg.lower()
    assert ei.value.__cause__ is not None
    assert server.call_log.count(HISTORY) == 0  # nothing was exported outside the takeout session
    assert not isinstance(ei.value, FloodWaitTooLong)


# --------------------------------------------------------------------------------------------------
# 3. Disconnects, 5xx answers, expired file references


def test_disconnects_and_server_errors_mid_export_lose_nothing(tmp_path: Path, reference: Path) -> None:
    plan = FaultPlan()
    for nth in (2, 5, 6, 11, 17, 25):
        plan.disconnect(request=HISTORY, nth=nth)
    for nth in (8, 20):
        plan.drop(request=HISTORY, nth=nth)
    plan.rpc_error("INTERNAL", code=500, request=HISTORY, nth=14)
    plan.rpc_error("RPC_CALL_FAIL", code=500, request=HISTORY, nth=22, times=7)  # beyond Telethon's retries
    plan.rpc_error("Timedout", code=-503, request=HISTORY, nth=28)

    result, elapsed = run_virtual(export_world(_world(), tmp_path, faults=plan, batch_size=700))
    assert all(rule.fired == rule.times for rule in plan.rules), plan.rules
    assert result.reconnects >= 6
    assert elapsed > 0  # backoff and Telethon's 2 s per retry ran on virtual time
    assert_same_rows(tmp_path, reference)


def test_persistent_disconnects_give_up_with_a_resumable_checkpoint(tmp_path: Path, reference: Path) -> None:
    plan = FaultPlan().disconnect(request=HISTORY, nth=10, times=1000)
    with pytest.raises(TelegramError, match="giving up"):
        run_virtual(export_world(_world(), tmp_path, faults=plan, batch_size=300))
    assert dataset_frame(tmp_path).height > 0
    run_virtual(export_world(_world(), tmp_path, batch_size=300))
    assert_same_rows(tmp_path, reference)


def test_expired_file_reference_is_refetched(tmp_path: Path) -> None:
    plan = FaultPlan().expire_file_reference(nth=1).expire_file_reference(nth=4)
    plan.expire_file_reference(nth=9)
    world = World(seed=11, channel_messages=100, group_messages=200)
    result, _ = run_virtual(export_world(world, tmp_path, chat="@tgkit_group", faults=plan, media=ALL_MEDIA))
    assert [r.fired for r in plan.rules] == [1, 1, 1]
    assert result.media_failed == 0 and result.media_downloaded > 0
    df = dataset_frame(tmp_path, drop_volatile=False)
    wanted = df.filter(pl.col("media_type").is_in(ALL_MEDIA))
    assert wanted.height == result.media_downloaded
    assert wanted["media_path"].null_count() == 0
    assert wanted["media_error"].null_count() == wanted.height
    for rel in wanted["media_path"]:
        assert (tmp_path / rel).is_file()


def test_disconnects_and_flood_waits_during_downloads_are_retried(tmp_path: Path) -> None:
    # A dropped connection fails every request in flight, downloads included: they reconnect and retry.
    plan = (
        FaultPlan().disconnect(request="upload.GetFile", nth=3).disconnect(request="upload.GetFile", nth=20)
    )
    plan.disconnect(request=HISTORY, nth=2).rpc_error("INTERNAL", code=500, request="upload.GetFile", nth=30)
    plan.flood_wait(30, request="upload.GetFile", nth=10)  # slept off; blocks downloads only
    world = World(seed=11, channel_messages=100, group_messages=300)
    result, _ = run_virtual(
        export_world(world, tmp_path, chat="@tgkit_group", faults=plan, media=ALL_MEDIA, batch_size=100)
    )
    assert [r.fired for r in plan.rules] == [1, 1, 1, 1, 1]
    assert result.media_failed == 0 and result.reconnects >= 2 and result.flood_waits == 1
    wanted = dataset_frame(tmp_path, drop_volatile=False).filter(pl.col("media_type").is_in(ALL_MEDIA))
    assert wanted.height == result.media_downloaded > 20
    assert wanted["media_error"].null_count() == wanted.height


# --------------------------------------------------------------------------------------------------
# 5. Edits and deletions


def test_refresh_days_captures_edits_views_and_deletions(tmp_path: Path) -> None:
    world = _world(2000)
    ids = list(world.ids(CHANNEL_ID))

    async def main() -> tuple[tgkit.ExportResult, tgkit.ExportResult]:
        client = await connect_demo(world=world)
        try:
            first = await tgkit.export_chat(client, "@tgkit_demo", tmp_path, batch_size=500, **QUIET)
            world.edit_message(CHANNEL_ID, ids[-3], text="edited: now with a correction", views=999_999)
            world.edit_message(CHANNEL_ID, ids[-40], views=123_456)
            world.edit_message(CHANNEL_ID, ids[5], text="too old to be refreshed")  # 90 days ago
            world.delete_messages(CHANNEL_ID, [ids[-2], ids[-30]])
            new = world.add_messages(CHANNEL_ID, 50)
            again = await tgkit.export_chat(
                client, "@tgkit_demo", tmp_path, refresh_days=3, batch_size=500, **QUIET
            )
            assert again.messages == len(new)
            return first, again
        finally:
            await client.disconnect()

    first, again = asyncio.run(main())
    assert again.deleted == 2 and again.refreshed > 0
    df = dataset_frame(tmp_path)
    assert df["id"].is_duplicated().sum() == 0  # one current row per message
    assert df.height == first.total_rows - 2 + 50 == again.total_rows
    row = df.filter(pl.col("id") == ids[-3]).row(0, named=True)
    assert row["text"] == "edited: now with a correction" and row["views"] == 999_999
    assert row["edit_date"] is not None
    assert df.filter(pl.col("id") == ids[-40])["views"].item() == 123_456
    assert df.filter(pl.col("id") == ids[5])["text"].item() != "too old to be refreshed"
    assert df.filter(pl.col("id").is_in([ids[-2], ids[-30]])).height == 0
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["chats"][str(CHANNEL_ID)]["deleted_in_last_refresh"] == sorted([ids[-30], ids[-2]])
    # the refreshed dataset is what a fresh export of the changed world gives (but for the old edit)
    fresh = tmp_path.parent / "fresh"
    asyncio.run(export_world(world, fresh))
    expected = dataset_frame(fresh)
    assert_frame_equal(df.filter(pl.col("id") != ids[5]), expected.filter(pl.col("id") != ids[5]))


# --------------------------------------------------------------------------------------------------
# 6. Secrets


def test_secrets_never_leak(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    api_hash = "5ec7e75ec7e75ec7e75ec7e75ec7e75e"
    # A StringSession carrying an auth key, as a researcher's saved login would.
    seed_session = StringSession()
    seed_session.set_dc(2, "149.154.167.51", 443)
    from telethon.crypto import AuthKey

    seed_session.auth_key = AuthKey(os.urandom(256))
    session_string = seed_session.save()
    key = seed_session.auth_key.key
    assert key is not None
    secrets = {
        "api hash": api_hash.encode(),
        "session string": session_string.encode(),
        "auth key (raw)": key,
        "auth key (hex)": key.hex().encode(),
        "auth key (HEX)": key.hex().upper().encode(),
        "auth key (base64)": base64.b64encode(key),
        "auth key (urlsafe base64)": base64.urlsafe_b64encode(key),
        "auth key (repr)": repr(key).encode(),
    }
    caught: list[str] = []
    plan = FaultPlan().disconnect(request=HISTORY, nth=3).flood_wait(5, request=HISTORY, nth=5)
    plan.flood_wait(5000, request=HISTORY, nth=9)

    async def main() -> list[Any]:
        world = World(seed=5, channel_messages=1200, group_messages=10)
        client = await connect_demo(world=world, faults=plan, session=session_string, api_hash=api_hash)
        objs: list[Any] = [client, client.session, client._sender, plan]
        try:
            assert client.session.auth_key.key == key  # the session really carried the key in
            try:
                await tgkit.export_chat(client, "@tgkit_demo", tmp_path, batch_size=300, **QUIET)
            except FloodWaitTooLong as exc:
                objs.append(exc)
                caught.append(str(exc))
            await asyncio.sleep(5001)  # virtual time: Telethon remembers the wait and refuses until then
            result = await tgkit.export_chat(client, "@tgkit_demo", tmp_path, batch_size=300, **QUIET)
            objs += [result, result.metrics]
            try:
                await tgkit.export_chat(client, "@no_such_chat_here", tmp_path, **QUIET)
            except TelegramError as exc:
                objs.append(exc)
            return objs
        finally:
            await client.disconnect()

    with (
        caplog.at_level(logging.DEBUG),
        caplog.at_level(logging.DEBUG, logger="telethon"),
        caplog.at_level(logging.DEBUG, logger="tgkit"),
    ):
        objs, _ = run_virtual(main())
    assert caught, "the flood wait above the ceiling must have been raised"
    assert any(r.name.startswith("telethon") for r in caplog.records), "Telethon's DEBUG logs not captured"

    haystacks: dict[str, bytes] = {
        "logs": "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records).encode(),
        "log text": caplog.text.encode(),
    }
    for obj in objs:
        haystacks[f"repr {type(obj).__name__}"] = (repr(obj) + str(obj)).encode("utf-8", "replace")
        for arg in getattr(obj, "args", ()):
            haystacks[f"args {type(obj).__name__}"] = repr(arg).encode()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            haystacks[str(path.relative_to(tmp_path))] = path.read_bytes()
    assert any(name.endswith(".parquet") for name in haystacks)
    assert any(name.endswith("metrics.json") for name in haystacks)
    assert any(name.endswith(CHECKPOINT_NAME) for name in haystacks)
    assert MANIFEST_NAME in haystacks
    leaks = [
        f"{what} in {where}" for where, data in haystacks.items() for what, s in secrets.items() if s in data
    ]
    assert not leaks, leaks


def test_state_files_are_private(tmp_path: Path) -> None:
    session_path = tmp_path / "account"  # Telethon adds ".session"

    async def main() -> None:
        from tgkit.peers import PeerCache

        session = SQLiteSession(str(session_path))
        client = await connect_demo(world=_world(300), session=session)
        try:
            cache = PeerCache(tmp_path / "cache" / "peers.msgpack")
            await tgkit.export_chat(
                client, "@tgkit_demo", tmp_path / "out", peer_cache=cache, progress=False, monitor=False
            )
        finally:
            await client.disconnect()

    old = os.umask(0o022)  # a typical umask: files would be 0644 unless tgkit says otherwise
    try:
        asyncio.run(main())
    finally:
        os.umask(old)
    checkpoint = ChatPartition(tmp_path / "out", CHANNEL_ID).checkpoint_path
    for path in (checkpoint, tmp_path / "cache" / "peers.msgpack", Path(f"{session_path}.session")):
        assert path.is_file(), path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path} is {oct(path.stat().st_mode)}"


# --------------------------------------------------------------------------------------------------
# 7. Hostile input


def test_lone_surrogates_become_replacement_characters() -> None:
    recs = Records(
        [
            ExportedMessage(1, 1, 1_700_000_000, text="a\ud800b", post_author="\udfff"),
            ExportedMessage(1, 2, 1_700_000_000, text="pair \ud83d\ude00 ok", fwd_name="fine"),
        ]
    )
    df = recs.to_polars()
    assert df["text"].to_list() == ["a\ufffdb", "pair \U0001f600 ok"]
    assert df["post_author"].to_list() == ["\ufffd", None]


def test_ten_thousand_entities_survive_the_wire_and_the_dataset(tmp_path: Path) -> None:
    text = "x" * 20_000
    msg = types.Message(
        id=7,
        peer_id=types.PeerChannel(CHANNEL_ID),
        date=datetime(2024, 1, 1, tzinfo=UTC),
        message=text,
        entities=[
            types.MessageEntityTextUrl(offset=i * 2, length=1, url=f"https://e.invalid/{i}")
            if i % 2
            else types.MessageEntityBold(offset=i * 2, length=1)
            for i in range(10_000)
        ],
    )
    wire = BinaryReader(bytes(msg)).tgread_object()  # what Telethon would hand us
    row = convert.message_row(wire, CHANNEL_ID)
    assert row is not None
    from tgkit.records import ColumnBatch

    batch = ColumnBatch()
    batch.append_row(row)
    part = ChatPartition(tmp_path, CHANNEL_ID)
    cp = part.start(None)
    part.write_part(cp, batch.to_arrow(), last_id=7)
    df = tgkit.open_dataset(tmp_path).collect()
    ents = df["entities"][0]
    assert len(ents) == 10_000
    assert ents[9_999]["url"] == "https://e.invalid/9999"


def test_hostile_media_names_stay_inside_the_media_folder(tmp_path: Path) -> None:
    world = World(seed=11, channel_messages=50, group_messages=200)  # serves ../../etc/passwd and more
    result = asyncio.run(export_world(world, tmp_path, chat="@tgkit_group", media=True))
    df = dataset_frame(tmp_path, drop_volatile=False)
    names = df["media_file_name"].drop_nulls().to_list()
    assert any(".." in n or "/" in n or "\\" in n for n in names), "the world must serve hostile names"
    media_root = (tmp_path / "_media").resolve()
    paths = df["media_path"].drop_nulls().to_list()
    assert len(paths) == result.media_downloaded > 0
    for rel in paths:
        target = (tmp_path / rel).resolve()
        assert target.is_relative_to(media_root), rel
        assert target.is_file()
    for f in tmp_path.rglob("*"):  # nothing was written anywhere else
        assert f.resolve().is_relative_to(tmp_path.resolve())
    assert not (tmp_path.parent / "etc").exists()


def _checkpoint_other_chat(path: Path) -> None:
    data = json.loads(path.read_text())
    data["chat_id"] = 4242
    path.write_text(json.dumps(data))


CORRUPTIONS = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "random bytes": lambda p: p.write_bytes(random.Random(3).randbytes(300)),
    "empty": lambda p: p.write_bytes(b""),
    "not an object": lambda p: p.write_text("[1, 2, 3]"),
    "wrong chat": _checkpoint_other_chat,
    "negative last_id": lambda p: p.write_text(p.read_text().replace('"last_id": ', '"last_id": -')),
    "part outside": lambda p: p.write_text(p.read_text().replace('"part-000001', '"../../x/part-000001')),
    "deep nesting": lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_checkpoint_is_a_cache_error_and_left_untouched(tmp_path: Path, corruption: str) -> None:
    world = _world(400)
    asyncio.run(export_world(world, tmp_path, batch_size=100))
    part = ChatPartition(tmp_path, CHANNEL_ID)
    path = part.checkpoint_path
    CORRUPTIONS[corruption](path)
    before = path.read_bytes()
    files_before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "_state" not in p.parts)
    with pytest.raises(CacheError):
        asyncio.run(export_world(world, tmp_path))
    assert path.read_bytes() == before
    # no "orphan" part, peers or chats file was removed
    assert (
        sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "_state" not in p.parts)
        == files_before
    )
    with pytest.raises(CacheError):
        tgkit.open_dataset(tmp_path).collect()


def test_corrupt_manifest_does_not_block_an_export(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_bytes(b"\xff\xfe{not json")
    result = asyncio.run(export_world(_world(300), tmp_path))
    assert result.total_rows > 0
    assert (
        json.loads((tmp_path / MANIFEST_NAME).read_text())["chats"][str(CHANNEL_ID)]["rows"]
        == result.total_rows
    )
