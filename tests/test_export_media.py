"""Media through the export: downloads and video transcodes recorded per row, failures never abort."""

from __future__ import annotations

import asyncio

import av
import polars as pl

import tgkit
from tgkit.offline import World, connect_demo


async def _export(world: World, out, **kw):
    client = await connect_demo(world=world)
    try:
        return await tgkit.export_chat(client, "@tgkit_demo", out, progress=False, peer_cache=False, **kw)
    finally:
        await client.disconnect()


def test_videos_are_transcoded_and_broken_ones_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("TGKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FORCE_CPU_TRANSCODE", "1")
    world = World(seed=5, channel_messages=135, group_messages=5)  # 6 videos, 2 of them broken
    out = tmp_path / "ds"
    r = asyncio.run(_export(world, out, media=["video"], transcode=True))
    videos = tgkit.open_dataset(out).filter(pl.col("media_type") == "video").collect()
    assert videos.height >= 3
    assert r.media_downloaded == videos.height  # every file was fetched, broken or not
    ok = videos.filter(pl.col("media_error").is_null())
    broken = videos.filter(pl.col("media_error").is_not_null())
    assert ok.height >= 1 and broken.height >= 1 and r.transcoded == ok.height
    for row in ok.iter_rows(named=True):
        path = out / row["media_path"]
        assert path.name.endswith(".720p.mp4")
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert stream.codec_context.height == row["media_height"]  # small clips are never upscaled
    # the world's truncated upload: the original is kept, the error is recorded, the export went on
    for row in broken.iter_rows(named=True):
        assert row["media_error"].startswith("transcode failed")
        assert (out / row["media_path"]).exists()
    assert r.messages == len(world.ids(1001))
    stages = set(r.metrics.stage_table()["stage"].to_list())
    assert {"download", "transcode"} <= stages
