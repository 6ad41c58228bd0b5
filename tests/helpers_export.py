"""Helpers for the reliability and crash-resume tests; also a child script for kill -9 tests.

As a script: ``python tests/helpers_export.py OUT SEED MESSAGES BATCH [LATENCY]`` exports ``@tgkit_demo`` of
``World(seed=SEED, channel_messages=MESSAGES, group_messages=10, media=False)`` into OUT (resuming
whatever is there) and exits 0.  The parent kills it at random moments and reruns it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import polars as pl
from polars.testing import assert_frame_equal

import tgkit
from tgkit.offline import FaultPlan, World, connect_demo

# columns that legitimately differ between two exports of the same world (where files landed)
VOLATILE = ("media_path", "media_error")
QUIET = {"peer_cache": False, "progress": False, "monitor": False}


async def export_world(
    world: World,
    out: str | Path,
    *,
    chat: str = "@tgkit_demo",
    faults: FaultPlan | None = None,
    client: Any = None,
    **kwargs: Any,
) -> tgkit.ExportResult:
    """One export of ``chat`` on ``world`` (a fresh client unless ``client`` is given)."""
    own = client is None
    if own:
        client = await connect_demo(world=world, faults=faults)
    try:
        return await tgkit.export_chat(client, chat, out, **{**QUIET, **kwargs})
    finally:
        if own:
            await client.disconnect()


def dataset_frame(out: str | Path, *, drop_volatile: bool = True) -> pl.DataFrame:
    df = tgkit.open_dataset(out).collect().sort("chat_id", "id")
    return df.drop(*VOLATILE) if drop_volatile else df


def assert_same_rows(got: str | Path, expected: str | Path) -> None:
    """Row for row, every column but where media files landed; no duplicate ids."""
    a, b = dataset_frame(got), dataset_frame(expected)
    assert a.select("chat_id", "id").is_duplicated().sum() == 0, "duplicate rows"
    missing = set(b["id"].to_list()) - set(a["id"].to_list())
    assert not missing, f"{len(missing)} rows missing, e.g. {sorted(missing)[:5]}"
    assert_frame_equal(a, b)


def _child(out: str, seed: int, messages: int, batch: int, latency: float = 0.0) -> None:
    async def run() -> None:
        world = World(seed=seed, channel_messages=messages, group_messages=10, media=False)
        # latency: each request's round trip, so a kill test's sub-second delays land across the export
        # (the fast path exports tens of thousands of messages a second without it)
        client = await connect_demo(world=world, latency=latency)
        try:
            await export_world(world, out, batch_size=batch, client=client)
        finally:
            await client.disconnect()

    asyncio.run(run())


if __name__ == "__main__":
    _child(
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
        float(sys.argv[5] if len(sys.argv) > 5 else 0),
    )
