"""Relative output paths, as the README's examples and a newcomer's first run use them (issue #20).

Every test here runs from a fresh temporary working directory, so a path that is only right when it is
absolute (or only right from the repository root) fails.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import tgkit
from tgkit.offline import CHANNEL_ID, World, connect_demo


@pytest.fixture
def in_tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TGKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


async def _export(world: World, out: str, **kw):
    client = await connect_demo(world=world)
    try:
        return await tgkit.export_chat(client, "@tgkit_demo", out, progress=False, peer_cache=False, **kw)
    finally:
        await client.disconnect()


def _media_rows(out: str) -> pl.DataFrame:
    return tgkit.open_dataset(out).filter(pl.col("media_type").is_in(["photo", "video"])).collect()


def test_relative_out_with_media_then_rerun_downloads_nothing(in_tmp_cwd: Path) -> None:
    world = World(seed=11, channel_messages=160, group_messages=5)
    out = "data/exports/rel"  # relative, as in the README
    r = asyncio.run(_export(world, out, media=["photo", "video"]))
    rows = _media_rows(out)
    assert rows.height > 0
    assert r.media_failed == 0, rows["media_error"].drop_nulls().to_list()[:3]
    assert r.media_downloaded == rows.height
    assert rows["media_error"].null_count() == rows.height
    for rel in rows["media_path"].to_list():
        assert rel is not None and not Path(rel).is_absolute()
        assert (in_tmp_cwd / out / rel).is_file()
    assert r.path.is_absolute() and r.path == (in_tmp_cwd / out)

    again = asyncio.run(_export(world, out, media=["photo", "video"]))
    assert again.messages == 0
    assert again.media_downloaded == 0 and again.media_failed == 0 and again.media_retried == 0
    assert again.api_calls.get("upload.GetFile", 0) == 0


def test_cli_demo_from_another_directory_leaves_no_media_errors(in_tmp_cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGKIT_")}
    env["TGKIT_CACHE_DIR"] = str(in_tmp_cwd / "cache")
    proc = subprocess.run(
        [sys.executable, "-m", "tgkit.cli", "demo", "--out", "demo-out", "--no-plots"],
        cwd=in_tmp_cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "0 failed" in proc.stdout
    lf = tgkit.open_dataset(in_tmp_cwd / "demo-out")
    # the demo downloads the channel's photos and videos (the group's media is not requested)
    media = lf.filter(
        (pl.col("chat_id") == CHANNEL_ID) & pl.col("media_type").is_in(["photo", "video"])
    ).collect()
    assert media.height > 0
    assert media["media_error"].drop_nulls().to_list() == []
    for rel in media["media_path"].to_list():
        assert rel is not None and (in_tmp_cwd / "demo-out" / rel).is_file()
