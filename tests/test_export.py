"""export_chat / export_messages end to end, through the real Telethon client on the offline double."""

from __future__ import annotations

import asyncio
import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

import tgkit
from tgkit.dataset import ChatPartition
from tgkit.offline import CHANNEL_ID, GROUP_ID, OfflineServer, World, connect_demo
from tgkit.records import CHAT_COLUMNS, MESSAGE_COLUMNS, PEER_COLUMNS, polars_schema


def run(coro):
    return asyncio.run(coro)


async def _with_client(world: World, fn, **kw):
    client = await connect_demo(world=world, **kw)
    try:
        return await fn(client)
    finally:
        await client.disconnect()


def small_world(**kw) -> World:
    kw.setdefault("channel_messages", 640)
    kw.setdefault("group_messages", 150)
    return World(seed=kw.pop("seed", 11), **kw)


def export(world: World, out: Path, chat: str = "@tgkit_demo", **kw) -> tgkit.ExportResult:
    kw.setdefault("progress", False)
    kw.setdefault("peer_cache", False)
    return run(_with_client(world, lambda c: tgkit.export_chat(c, chat, out, **kw)))


def test_export_writes_every_message_once_with_the_typed_schema(tmp_path):
    world = small_world()
    r = export(world, tmp_path / "ds", batch_size=200)
    ids = list(world.ids(CHANNEL_ID))
    df = tgkit.open_dataset(tmp_path / "ds").collect()
    assert df.schema == polars_schema()
    assert df["id"].to_list() == ids  # oldest to newest, no gap, no duplicate
    assert r.messages == r.total_rows == len(ids)
    assert r.last_id == ids[-1]
    assert r.parts_written == math.ceil(len(ids) / 200)
    # pages: ceil(N/100) plus the final empty page that says "no more"
    assert r.api_calls["messages.GetHistory"] == math.ceil(len(ids) / 100) + 1
    assert r.title == "tgkit demo channel"


def test_rows_match_what_telethon_reports(tmp_path):
    world = small_world()
    export(world, tmp_path / "ds")
    df = tgkit.open_dataset(tmp_path / "ds").collect()

    async def fetch(client):
        return await client.get_messages("@tgkit_demo", ids=df["id"].to_list()[:300])

    msgs = run(_with_client(world, fetch))
    by_id = {row["id"]: row for row in df.head(300).iter_rows(named=True)}
    checked_entities = checked_media = checked_fwd = 0
    for m in msgs:
        row = by_id[m.id]
        assert row["date"] == m.date
        assert row["text"] == (m.message if m.action is None else None)
        if m.entities:
            checked_entities += 1
            assert [e["offset"] for e in row["entities"]] == [e.offset for e in m.entities]
            assert [e["length"] for e in row["entities"]] == [e.length for e in m.entities]
        if m.file is not None and m.action is None:
            checked_media += 1
            assert row["media_size"] == m.file.size
            assert row["media_mime"] == m.file.mime_type
        if m.fwd_from is not None:
            checked_fwd += 1
            assert row["fwd_date"] == m.fwd_from.date
            assert row["fwd_post_id"] == m.fwd_from.channel_post
        assert row["views"] == m.views
        if m.reactions:
            assert row["reactions_total"] == sum(r.count for r in m.reactions.results)
        else:
            assert row["reactions_total"] is None  # unknown stays null, never 0
    assert checked_entities and checked_media and checked_fwd


def test_group_columns_replies_threads_services(tmp_path):
    world = small_world()
    export(world, tmp_path / "ds", chat="https://t.me/tgkit_group")
    df = tgkit.open_dataset(tmp_path / "ds").filter(pl.col("chat_id") == GROUP_ID).collect()
    assert df.filter(pl.col("id") == 1)["service_action"].item() == "chat_create"
    replies = df.filter(pl.col("reply_to_id").is_not_null() & pl.col("service_action").is_null())
    assert replies.height > 10
    # a thread id is never newer than the reply, and replies point backwards
    assert (replies["thread_id"] <= replies["reply_to_id"]).all()
    assert (replies["reply_to_id"] < replies["id"]).all()
    assert set(df["sender_kind"].drop_nulls().unique()) == {"user"}
    assert df["views"].null_count() == df.height  # groups have no view counts: null, not 0


def test_rerun_resumes_and_picks_up_new_messages(tmp_path):
    world = small_world()
    out = tmp_path / "ds"
    first = export(world, out, batch_size=300)
    again = export(world, out)
    assert again.messages == 0
    assert again.resumed_from == first.last_id
    new_ids = world.add_messages(CHANNEL_ID, 130)
    third = export(world, out)
    assert third.messages == 130
    assert third.api_calls["messages.GetHistory"] == 3  # two pages of new messages + the empty one
    df = tgkit.open_dataset(out).collect()
    assert df["id"].to_list() == list(world.ids(CHANNEL_ID))
    assert df["id"].tail(130).to_list() == new_ids


def test_two_chats_share_one_dataset_partitioned_by_chat(tmp_path):
    world = small_world()
    out = tmp_path / "ds"
    export(world, out)
    export(world, out, chat="@tgkit_group")
    counts = dict(tgkit.open_dataset(out).group_by("chat_id").len().collect().iter_rows())
    assert counts == {CHANNEL_ID: len(world.ids(CHANNEL_ID)), GROUP_ID: len(world.ids(GROUP_ID))}
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["layout"] == 2 and set(manifest["chats"]) == {str(CHANNEL_ID), str(GROUP_ID)}
    # plain Parquet: pyarrow reads the parts without tgkit
    table = pq.read_table(out / "messages" / f"chat_id={CHANNEL_ID}")
    assert table.num_rows == counts[CHANNEL_ID]


def test_empty_chat_exports_the_full_schema(tmp_path):
    world = World(seed=3, channel_messages=0, group_messages=5, media=False)
    r = export(world, tmp_path / "ds")
    assert r.messages == 0
    lf = tgkit.open_dataset(tmp_path / "ds")
    assert lf.collect_schema() == polars_schema()
    assert lf.collect().height == 0


def test_limit_exports_the_oldest_n(tmp_path):
    world = small_world()
    r = export(world, tmp_path / "ds", limit=150)
    assert r.messages == 150
    assert tgkit.open_dataset(tmp_path / "ds").collect()["id"].to_list() == list(world.ids(CHANNEL_ID))[:150]


def test_unknown_chat_is_peer_not_found_naming_it(tmp_path):
    with pytest.raises(tgkit.PeerNotFound, match="no_such_channel"):
        export(small_world(), tmp_path / "ds", chat="@no_such_channel")


def test_output_path_that_is_a_file_fails_before_any_request(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("not a folder")
    server = OfflineServer(small_world())

    async def go(client):
        before = server.call_log.total
        with pytest.raises(tgkit.ExportError, match="not a directory"):
            await tgkit.export_chat(client, "@tgkit_demo", target, progress=False, peer_cache=False)
        return server.call_log.total - before

    assert run(_with_client(server.world, go, server=server)) == 0
    assert target.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_fails_before_any_request(tmp_path):  # pragma: no cover - CI runs as root
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(tgkit.ExportError, match="not writable"):
        export(small_world(), ro / "ds")


def test_corrupt_or_foreign_checkpoint_is_cache_error_and_left_alone(tmp_path):
    world = small_world()
    out = tmp_path / "ds"
    export(world, out, limit=100)
    cp_path = ChatPartition(out, CHANNEL_ID).checkpoint_path
    good = cp_path.read_bytes()
    for bad in (b"{not json", b"\x00\xff" * 50, good.replace(str(CHANNEL_ID).encode(), b"999", 1)):
        cp_path.write_bytes(bad)
        with pytest.raises(tgkit.CacheError):
            export(world, out)
        assert cp_path.read_bytes() == bad  # nothing overwritten
    cp_path.write_bytes(good)
    assert export(world, out).messages == len(world.ids(CHANNEL_ID)) - 100


def test_orphan_part_from_a_crash_is_ignored_then_removed(tmp_path):
    world = small_world()
    out = tmp_path / "ds"
    export(world, out, limit=200, batch_size=100)
    chat_dir = out / "messages" / f"chat_id={CHANNEL_ID}"
    # a crash after renaming a part but before committing the checkpoint leaves this behind
    orphan = chat_dir / "part-000099.parquet"
    orphan.write_bytes((chat_dir / "part-000001.parquet").read_bytes())
    assert tgkit.open_dataset(out).collect().height == 200
    export(world, out)
    assert not orphan.exists()
    assert tgkit.open_dataset(out).collect()["id"].to_list() == list(world.ids(CHANNEL_ID))


def test_failure_mid_export_commits_what_was_fetched_and_resumes(tmp_path):
    world = small_world()
    out = tmp_path / "ds"
    server = OfflineServer(world)
    # the 4th history page fails for good (not retryable): the export stops with a clear error
    server.faults.rpc_error("CHANNEL_PRIVATE", request="messages.GetHistory", nth=4)

    async def go(client):
        with pytest.raises(tgkit.PeerNotFound):
            await tgkit.export_chat(
                client, "@tgkit_demo", out, progress=False, peer_cache=False, batch_size=10_000
            )

    run(_with_client(world, go, server=server))
    cp = ChatPartition(out, CHANNEL_ID).load()
    assert cp is not None and cp.rows == 300  # three pages converted before the failure were committed
    r = export(world, out)
    assert r.resumed_from == cp.last_id
    assert tgkit.open_dataset(out).collect()["id"].to_list() == list(world.ids(CHANNEL_ID))


def test_keyboard_interrupt_commits_and_resumes(tmp_path):
    world = small_world()
    out = tmp_path / "ds"
    pages = 0

    def progress(event):
        nonlocal pages
        if event["event"] == "update":
            pages += 1
            if pages == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export(world, out, progress=progress, batch_size=10_000)
    cp = ChatPartition(out, CHANNEL_ID).load()
    assert cp is not None and cp.rows > 0
    export(world, out)
    assert tgkit.open_dataset(out).collect()["id"].to_list() == list(world.ids(CHANNEL_ID))


def test_media_download_paths_stay_inside_and_files_match(tmp_path):
    world = small_world(hostile_names=True)
    out = tmp_path / "ds"
    r = export(world, out, media=["photo", "video", "document"], batch_size=250)
    df = tgkit.open_dataset(out).collect()
    with_media = df.filter(pl.col("media_type").is_in(["photo", "video", "document"]))
    assert r.media_downloaded == with_media.height > 20
    assert with_media["media_error"].null_count() == with_media.height
    media_root = (out / "_media").resolve()
    for row in with_media.iter_rows(named=True):
        path = (out / row["media_path"]).resolve()
        assert path.is_relative_to(media_root)
        assert path.stat().st_size == row["media_size"]
        blob = world.file(row["media_file_id"])
        assert blob is not None and path.read_bytes() == blob.data
    # hostile names from the world ended up as plain names inside the folder
    names = df["media_file_name"].drop_nulls().to_list()
    assert any(".." in n or "/" in n for n in names)
    # videos on another data centre were fetched too (exported authorisation)
    assert r.api_calls.get("auth.ImportAuthorization", 0) >= 1


def test_media_kind_filter_and_size_cap(tmp_path):
    world = small_world()
    r = export(world, tmp_path / "ds", media="photo", media_max_bytes=10**9)
    df = tgkit.open_dataset(tmp_path / "ds").collect()
    assert df.filter(pl.col("media_path").is_not_null())["media_type"].unique().to_list() == ["photo"]
    r2 = export(world, tmp_path / "ds2", media="document", media_max_bytes=1000)
    df2 = tgkit.open_dataset(tmp_path / "ds2").collect()
    downloaded = df2.filter(pl.col("media_path").is_not_null())
    assert (downloaded["media_size"] <= 1000).all()
    assert r.media_downloaded > 0 and r2.media_downloaded == downloaded.height
    with pytest.raises(tgkit.ConfigError, match="unknown media kind"):
        export(world, tmp_path / "ds3", media="holograms")


def test_metrics_and_resources_written_next_to_the_dataset(tmp_path):
    r = export(small_world(), tmp_path / "ds")
    assert r.metrics is not None
    stages = set(r.metrics.stage_table()["stage"].to_list())
    assert {"resolve", "fetch", "convert", "write"} <= stages
    loaded = tgkit.MetricsCollector.from_json(r.metrics_path)
    assert loaded.api_calls == r.api_calls
    assert r.resources_path is not None and pl.read_parquet(r.resources_path).height >= 1


def test_export_messages_returns_slotted_records(tmp_path):
    world = small_world()
    ids = list(world.ids(CHANNEL_ID))

    async def go(client):
        newest = await tgkit.export_messages(client, "@tgkit_demo", limit=30)
        window = await tgkit.export_messages(client, "@tgkit_demo", min_id=100, max_id=200)
        d = datetime.fromtimestamp(world.date_of(world.chats[CHANNEL_ID], 300), UTC)
        dated = await tgkit.export_messages(client, "@tgkit_demo", since=d, limit=1000)
        return newest, window, dated

    newest, window, dated = run(_with_client(world, go))
    assert [m.id for m in newest] == ids[-30:]
    assert [m.id for m in window] == [i for i in ids if 100 < i < 200]
    assert [m.id for m in dated] == [i for i in ids if i >= 300]
    assert not hasattr(newest[0], "__dict__")
    df = newest.to_polars()
    assert df.schema == polars_schema() and df.height == 30
    with pytest.raises(tgkit.ConfigError, match="timezone-aware"):
        run(
            _with_client(world, lambda c: tgkit.export_messages(c, "@tgkit_demo", since=datetime(2026, 1, 1)))
        )


def test_sync_twin_works_in_a_script(tmp_path):
    world = small_world()
    client = tgkit.run_sync(connect_demo(world=world))
    try:
        r = tgkit.export_chat_sync(client, "@tgkit_demo", tmp_path / "ds", progress=False, peer_cache=False)
        recs = tgkit.export_messages_sync(client, "@tgkit_demo", limit=5)
    finally:
        client.disconnect()  # outside a loop Telethon runs its own disconnect on the client's loop
    assert r.messages == len(world.ids(CHANNEL_ID)) and len(recs) == 5


def test_schema_doc_is_generated_from_the_code():
    from tgkit import schema_doc

    doc = (Path(__file__).parent.parent / "docs" / "SCHEMA.md").read_text(encoding="utf-8")
    assert doc == schema_doc.render(), (
        "docs/SCHEMA.md is stale: run python -m tgkit.schema_doc > docs/SCHEMA.md"
    )
    assert set(schema_doc.COLUMN_DOCS) == set(MESSAGE_COLUMNS)
    assert set(schema_doc.PEER_DOCS) == set(PEER_COLUMNS) and set(schema_doc.CHAT_DOCS) == set(CHAT_COLUMNS)


def test_rerun_retries_media_that_failed_and_fixes_the_rows(tmp_path):
    world = small_world()
    out = tmp_path / "ds"
    server = OfflineServer(world)
    # the first five downloads fail for good in this run (not an error tgkit retries within a run)
    server.faults.rpc_error("FILE_ID_INVALID", request="upload.GetFile", nth=1, times=5)

    async def go(client, **kw):
        return await tgkit.export_chat(
            client,
            "@tgkit_demo",
            out,
            progress=False,
            peer_cache=False,
            media=["photo", "document"],
            batch_size=200,
            **kw,
        )

    first = run(_with_client(world, go, server=server))
    df1 = tgkit.open_dataset(out).collect()
    failed = df1.filter(pl.col("media_error").is_not_null())
    assert first.media_failed == failed.height == 5
    assert failed["media_path"].null_count() == 5
    parts_before = ChatPartition(out, CHANNEL_ID).load().parts  # type: ignore[union-attr]

    second = run(_with_client(world, go, server=server))
    assert second.media_retried == 5 and second.media_recovered == 5 and second.messages == 0
    df2 = tgkit.open_dataset(out).collect()
    assert df2["id"].to_list() == df1["id"].to_list()  # same rows, same order: no gap, no duplicate
    assert df2.filter(pl.col("media_type").is_in(["photo", "document"]))["media_error"].null_count() == (
        df2.filter(pl.col("media_type").is_in(["photo", "document"])).height
    )
    for row in df2.filter(pl.col("id").is_in(failed["id"].implode())).iter_rows(named=True):
        assert (out / row["media_path"]).read_bytes() == world.file(row["media_file_id"]).data
    # only the parts holding those rows were swapped; the others are untouched
    parts_after = ChatPartition(out, CHANNEL_ID).load().parts  # type: ignore[union-attr]
    assert len(parts_after) == len(parts_before) and 0 < len(set(parts_after) - set(parts_before)) < len(
        parts_before
    )
    assert sorted(
        p.name for p in (out / "messages" / f"chat_id={CHANNEL_ID}").glob("part-*.parquet")
    ) == sorted(parts_after)
    # a third run has nothing left to retry
    assert run(_with_client(world, go, server=server)).media_retried == 0
