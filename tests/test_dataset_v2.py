"""Dataset layout 2 (#14): the default calls of pyarrow, Polars and DuckDB read exactly tgkit's rows;
peers and chats tables; names joined onto messages; layout-1 datasets open and upgrade crash-safely."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from helpers_export import export_world
from polars.testing import assert_frame_equal

import tgkit
from tgkit.dataset import ChatPartition, read_manifest, upgrade
from tgkit.offline import CHANNEL_ID, GROUP_ID, World, connect_demo
from tgkit.records import CHAT_COLUMNS, MESSAGE_COLUMNS, PEER_COLUMNS

LAYOUT1 = Path(__file__).parent / "data" / "layout1"
DESKTOP = Path(__file__).parent / "fixtures" / "desktop"
UTC_US = pl.Datetime("us", "UTC")


def _world() -> World:
    return World(seed=7, channel_messages=500, group_messages=400)


def _export(world: World, out: Path, chat: str, **kw: Any) -> tgkit.ExportResult:
    return asyncio.run(export_world(world, out, chat=chat, **kw))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both demo chats, each in two runs (a resumed export), media on for the channel."""
    out = tmp_path_factory.mktemp("demo") / "out"
    world = _world()
    _export(world, out, "@tgkit_demo", limit=300, batch_size=120, media=["photo"])
    _export(world, out, "@tgkit_demo", batch_size=120, media=["photo"])
    _export(world, out, "@tgkit_group", limit=150, batch_size=100)
    _export(world, out, "@tgkit_group", batch_size=100)
    return out


def _canon(df: pl.DataFrame, columns: tuple[str, ...], key: list[str]) -> pl.DataFrame:
    return df.select(columns).sort(key)


def _assert_types(df: pl.DataFrame, dates: tuple[str, ...]) -> None:
    # DuckDB hands timestamptz over in the session's zone name for UTC ("Etc/UTC" on this machine)
    for name in dates:
        dtype = df.schema[name]
        assert isinstance(dtype, pl.Datetime) and dtype.time_unit == "us", (name, dtype)
        assert dtype.time_zone in ("UTC", "Etc/UTC"), (name, dtype)


def _utc(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.col(pl.Datetime).dt.convert_time_zone("UTC"))


def test_default_readers_give_exactly_the_message_rows(demo: Path) -> None:
    want = _canon(tgkit.open_dataset(demo).collect(), MESSAGE_COLUMNS, ["chat_id", "id"])
    world = _world()
    assert want.height == len(world.ids(CHANNEL_ID)) + len(world.ids(GROUP_ID))
    assert want.schema["chat_id"] == pl.Int64
    messages = demo / "messages"
    polars_glob = pl.scan_parquet(f"{messages}/**/*.parquet", hive_partitioning=True).collect()
    polars_dir = pl.scan_parquet(messages).collect()
    duck = duckdb.sql(f"select * from read_parquet('{messages}/**/*.parquet', hive_partitioning=true)").pl()
    for name, got in (("polars glob", polars_glob), ("polars dir", polars_dir), ("duckdb", duck)):
        assert got.schema["chat_id"] == pl.Int64, name
        _assert_types(got, ("date", "edit_date", "fwd_date"))
        assert_frame_equal(_canon(_utc(got), MESSAGE_COLUMNS, ["chat_id", "id"]), want, check_dtypes=True)
    # pyarrow's default call reads every row; its partition inference types a path key int32 (no file or
    # metadata changes that: see docs/SCHEMA.md), the explicit hive schema gives int64
    table = ds.dataset(messages, format="parquet", partitioning="hive").to_table()
    assert pa.types.is_integer(table.schema.field("chat_id").type)
    got = pl.from_arrow(table).with_columns(pl.col("chat_id").cast(pl.Int64))
    assert isinstance(got, pl.DataFrame)
    _assert_types(got, ("date",))
    assert_frame_equal(_canon(got, MESSAGE_COLUMNS, ["chat_id", "id"]), want)
    typed = ds.dataset(
        messages,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("chat_id", pa.int64())]), flavor="hive"),
    ).to_table()
    assert typed.schema.field("chat_id").type == pa.int64()
    assert_frame_equal(_canon(pl.from_arrow(typed), MESSAGE_COLUMNS, ["chat_id", "id"]), want)  # type: ignore[arg-type]


def _raw_readers(folder: Path) -> dict[str, pl.DataFrame]:
    out = {
        "pyarrow": pl.from_arrow(ds.dataset(folder, format="parquet", partitioning="hive").to_table()),
        "polars glob": pl.scan_parquet(f"{folder}/**/*.parquet", hive_partitioning=True).collect(),
        "polars dir": pl.scan_parquet(folder).collect(),
        "duckdb": duckdb.sql(
            f"select * from read_parquet('{folder}/**/*.parquet', hive_partitioning=true)"
        ).pl(),
    }
    return {k: _utc(v) for k, v in out.items() if isinstance(v, pl.DataFrame)}


def test_default_readers_give_the_chats_rows(demo: Path) -> None:
    want = tgkit.open_dataset(demo, "chats").collect()
    assert want["id"].to_list() == [CHANNEL_ID, GROUP_ID]
    for name, got in _raw_readers(demo / "chats").items():
        assert got.schema["id"] == pl.Int64, name
        _assert_types(got, ("created", "last_export"))
        assert_frame_equal(_canon(got, CHAT_COLUMNS, ["id"]), want)
    messages = tgkit.open_dataset(demo).collect()
    for row in want.iter_rows(named=True):
        mine = messages.filter(pl.col("chat_id") == row["id"])
        assert (row["rows"], row["first_id"], row["last_id"]) == (
            mine.height,
            mine["id"].min(),
            mine["id"].max(),
        )
        assert row["kind"] == "channel" and row["source"] == "api" and row["title"]
        assert row["about"]  # from GetFullChannel
        assert row["last_export"] is not None and row["created"] is not None
    assert want.filter(pl.col("id") == GROUP_ID)["type"].item() == "megagroup"
    assert want.filter(pl.col("id") == GROUP_ID)["participants_count"].item() == len(
        _world().chats[GROUP_ID].members
    )
    assert want.filter(pl.col("id") == CHANNEL_ID)["type"].item() == "broadcast"


def test_default_readers_see_the_peers_tgkit_deduplicates(demo: Path) -> None:
    want = tgkit.open_dataset(demo, "peers").collect()
    assert want.select("kind", "id").is_duplicated().sum() == 0
    for name, got in _raw_readers(demo / "peers").items():
        assert got.schema["id"] == pl.Int64, name
        _assert_types(got, ("first_seen", "last_seen"))
        # raw: one row per peer per exported chat that saw it; the latest observation is tgkit's row
        latest = (
            got.sort("last_seen")
            .group_by("kind", "id")
            .agg(pl.exclude("first_seen").last(), pl.col("first_seen").min())
        )
        assert_frame_equal(
            _canon(latest, PEER_COLUMNS, ["kind", "id"]), _canon(want, PEER_COLUMNS, ["kind", "id"])
        )


def test_every_sender_and_forward_source_has_a_name(demo: Path) -> None:
    named = tgkit.with_names(tgkit.open_dataset(demo), tgkit.open_dataset(demo, "peers")).collect()
    assert named.height == tgkit.open_dataset(demo).collect().height  # the join adds no row
    group = named.filter((pl.col("chat_id") == GROUP_ID) & pl.col("sender_id").is_not_null())
    assert group.height > 0 and group["sender_name"].null_count() == 0
    senders = set(group["sender_id"].to_list())
    peers = tgkit.open_dataset(demo, "peers").filter(pl.col("kind") == "user").collect()
    assert senders <= set(peers["id"].to_list())
    fwd = named.filter(pl.col("fwd_peer_id").is_not_null() | pl.col("fwd_name").is_not_null())
    assert fwd.height > 0 and fwd["fwd_from"].null_count() == 0
    # the names are Telegram's: compare with the world's own objects
    world = _world()
    for uid in list(senders)[:20]:
        user = world.users[uid]
        row = peers.filter(pl.col("id") == uid).row(0, named=True)
        assert (row["first_name"], row["last_name"], row["username"]) == (
            user.first_name,
            user.last_name,
            user.username,
        )


def test_one_full_chat_request_per_chat_and_run(tmp_path: Path) -> None:
    async def go() -> dict[str, int]:
        client = await connect_demo(world=_world())
        try:
            before = client.offline.call_log.snapshot()
            await tgkit.export_chat(
                client, "@tgkit_group", tmp_path, progress=False, peer_cache=False, monitor=False
            )
            after = client.offline.call_log.snapshot()
        finally:
            await client.disconnect()
        return {k: v - before.get(k, 0) for k, v in after.items()}

    calls = asyncio.run(go())
    assert calls.get("GetFullChannelRequest", calls.get("channels.GetFullChannel")) == 1, calls


def test_reruns_refreshes_and_resumes_keep_one_row_per_peer_and_chat(tmp_path: Path) -> None:
    world = _world()
    out = tmp_path / "ds"
    _export(world, out, "@tgkit_group", limit=100, batch_size=50)
    first = tgkit.open_dataset(out, "peers").collect()
    _export(world, out, "@tgkit_group", batch_size=50)
    _export(world, out, "@tgkit_group", refresh_days=3)
    _export(world, out, "@tgkit_group")  # nothing new
    _export(world, out, "@tgkit_demo", limit=50)
    peers = tgkit.open_dataset(out, "peers").collect()
    chats = tgkit.open_dataset(out, "chats").collect()
    assert peers.select("kind", "id").is_duplicated().sum() == 0
    assert sorted(chats["id"].to_list()) == [CHANNEL_ID, GROUP_ID]
    assert set(first["id"].to_list()) <= set(peers["id"].to_list())
    # first_seen stays the first run's, last_seen moves on
    joined = first.join(peers, on=["kind", "id"], suffix="_now")
    assert (joined["first_seen_now"] == joined["first_seen"]).all()
    assert (joined["last_seen_now"] >= joined["last_seen"]).all()
    messages = tgkit.open_dataset(out).collect()
    for row in chats.iter_rows(named=True):
        assert row["rows"] == messages.filter(pl.col("chat_id") == row["id"]).height
    # each chat keeps exactly one committed peers file and one chats file
    for chat_id in (CHANNEL_ID, GROUP_ID):
        cp = ChatPartition(out, chat_id).load()
        assert cp is not None
        assert [p.name for p in (out / "peers").glob(f"c{chat_id}-*")] == [cp.peers_file]
        assert [p.name for p in (out / "chats").glob(f"c{chat_id}-*")] == [cp.chat_file]


def test_two_writers_of_different_chats_share_a_dataset(tmp_path: Path) -> None:
    world = _world()

    async def both() -> None:
        await asyncio.gather(
            export_world(world, tmp_path, chat="@tgkit_demo", batch_size=50),
            export_world(world, tmp_path, chat="@tgkit_group", batch_size=50),
        )

    asyncio.run(both())
    manifest = read_manifest(tmp_path)
    assert set(manifest["chats"]) == {str(CHANNEL_ID), str(GROUP_ID)}
    counts = dict(tgkit.open_dataset(tmp_path).group_by("chat_id").len().collect().iter_rows())
    assert counts == {CHANNEL_ID: len(world.ids(CHANNEL_ID)), GROUP_ID: len(world.ids(GROUP_ID))}
    assert tgkit.open_dataset(tmp_path, "chats").collect().height == 2


def test_a_desktop_imports_peers_carry_the_names_in_the_file(tmp_path: Path) -> None:
    result = tgkit.import_desktop(DESKTOP / "account", out=tmp_path, progress=False)
    peers = tgkit.open_dataset(tmp_path, "peers").collect()
    shown: dict[tuple[str, int], str] = {}
    data = json.loads((DESKTOP / "account" / "result.json").read_text(encoding="utf-8"))
    for key in ("chats", "left_chats"):
        for chat in (data.get(key) or {}).get("list", []):
            for m in chat.get("messages", []):
                for name_key, id_key in (
                    ("from", "from_id"),
                    ("actor", "actor_id"),
                    ("forwarded_from", "forwarded_from_id"),
                ):
                    pid, name = m.get(id_key), m.get(name_key)
                    if isinstance(pid, str) and name:
                        kind = pid.rstrip("0123456789")
                        shown[(kind, int(pid[len(kind) :]))] = name
    assert shown
    got = {(r["kind"], r["id"]): r["name"] for r in peers.iter_rows(named=True)}
    for key, name in shown.items():
        assert got[key] == name, key
    assert set(peers["source"].to_list()) == {"telegram_desktop"}
    chats = tgkit.open_dataset(tmp_path, "chats").collect()
    assert sorted(chats["id"].to_list()) == sorted({c.id for c in result.chats if c.messages})
    assert set(chats["source"].to_list()) == {"telegram_desktop"}
    assert chats["media_root"].null_count() == 0
    named = tgkit.with_names(tgkit.open_dataset(tmp_path), peers.lazy()).collect()
    with_sender = named.filter(pl.col("sender_id").is_not_null())
    assert with_sender["sender_name"].null_count() == 0


# --------------------------------------------------------------------------------------------------
# Layout 1


def _layout1(tmp_path: Path) -> Path:
    out = tmp_path / "old"
    shutil.copytree(LAYOUT1, out)
    return out


def test_a_layout1_dataset_opens(tmp_path: Path) -> None:
    out = _layout1(tmp_path)
    df = tgkit.open_dataset(out).collect()
    assert df.height == 35 and df.schema["chat_id"] == pl.Int64
    assert df.group_by("chat_id").len().sort("chat_id").rows() == [(CHANNEL_ID, 20), (GROUP_ID, 15)]
    chats = tgkit.open_dataset(out, "chats").collect()
    assert chats["id"].to_list() == [CHANNEL_ID, GROUP_ID] and chats["rows"].to_list() == [20, 15]
    assert tgkit.open_dataset(out, "peers").collect().height == 0
    assert (out / "manifest.json").exists() and not (out / "messages").exists()  # reading changes nothing


def test_the_next_export_upgrades_a_layout1_dataset_in_place(tmp_path: Path) -> None:
    out = _layout1(tmp_path)
    before = tgkit.open_dataset(out).collect()
    world = World(seed=7)  # the world the fixture was exported from (tgkit demo's)
    result = _export(world, out, "@tgkit_demo", limit=10)
    assert result.resumed_from == 20 and result.messages == 10
    assert not list(out.glob("chat_id=*")) and not (out / "manifest.json").exists()
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["layout"] == 2 and set(manifest["chats"]) == {str(CHANNEL_ID), str(GROUP_ID)}
    after = tgkit.open_dataset(out).collect()
    assert_frame_equal(after.filter(pl.col("id") <= 20).filter(pl.col("chat_id") == CHANNEL_ID),
                       before.filter(pl.col("chat_id") == CHANNEL_ID))  # fmt: skip
    assert_frame_equal(
        after.filter(pl.col("chat_id") == GROUP_ID), before.filter(pl.col("chat_id") == GROUP_ID)
    )
    assert after.filter(pl.col("chat_id") == CHANNEL_ID)["id"].to_list() == list(range(1, 31))
    # the upgraded files are read by the default calls too
    raw = pl.scan_parquet(out / "messages").collect()
    assert raw.height == after.height and raw.schema["chat_id"] == pl.Int64


def test_an_import_upgrades_a_layout1_dataset(tmp_path: Path) -> None:
    out = _layout1(tmp_path)
    tgkit.import_desktop(DESKTOP / "new_2023", out=out, progress=False)
    assert not list(out.glob("chat_id=*")) and read_manifest(out)["layout"] == 2
    chats = tgkit.open_dataset(out, "chats").collect()
    assert {CHANNEL_ID, GROUP_ID} <= set(chats["id"].to_list()) and chats.height == 3


_KILLER = """
import os, signal, sys
from tgkit.dataset import upgrade
steps = []
def on_step(name):
    steps.append(name)
    if len(steps) == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
upgrade(sys.argv[1], on_step=on_step)
print(len(steps))
"""


def test_kill_9_during_the_upgrade_leaves_an_openable_dataset_and_a_rerun_finishes(tmp_path: Path) -> None:
    want = tgkit.open_dataset(LAYOUT1).collect()
    want_chats = tgkit.open_dataset(LAYOUT1, "chats").collect().select("id", "rows", "last_id", "title")
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    root = Path(__file__).parent.parent
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    full = _layout1(tmp_path / "full")
    done = subprocess.run(
        [sys.executable, str(script), str(full), "0"], capture_output=True, env=env, text=True
    )
    assert done.returncode == 0, done.stderr
    steps = int(done.stdout)
    assert steps >= 10  # parts, checkpoints and removals of two chats, then manifest and cleanup
    for at in range(1, steps + 1):
        out = _layout1(tmp_path / f"k{at}")
        child = subprocess.run([sys.executable, str(script), str(out), str(at)], capture_output=True, env=env)
        assert child.returncode == -signal.SIGKILL, (at, child.stderr.decode())
        got = tgkit.open_dataset(out).collect()
        assert_frame_equal(got, want), f"killed after step {at}"
        assert (
            tgkit.open_dataset(out, "chats")
            .collect()
            .select("id", "rows", "last_id", "title")
            .equals(want_chats)
        )
        assert upgrade(out) or at == steps
        assert not list(out.glob("chat_id=*")) and not (out / "manifest.json").exists()
        assert read_manifest(out)["layout"] == 2
        assert_frame_equal(tgkit.open_dataset(out).collect(), want)
        assert_frame_equal(
            pl.scan_parquet(out / "messages").collect().select(MESSAGE_COLUMNS).sort("chat_id", "id"), want
        )
        leftovers = (
            [p for p in (out / "_state" / "tmp").iterdir()] if (out / "_state" / "tmp").exists() else []
        )
        assert not leftovers, leftovers
