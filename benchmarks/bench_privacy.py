"""Pseudonymisation throughput, per batch as the export writer will call it (issue #19).

Exports a demo world (channel + group, no media) once, then, for every committed part (the writer's
batches, ``batch_size`` rows each), measures side by side in one run:

* ``pseudonymise``  ``Pseudonymiser.messages(table)`` on the Arrow table (what the writer will call)
* ``write``         the writer's own Parquet write of the same table (zstd 1, the dataset's options):
                    the baseline, so ``ratio`` says what pseudonymising adds to writing a part
* ``text_rows``     how many rows went through the per-row text rewrite (the vectorised pre-filter
                    sends the others around it)

Each side is timed best-of ``repeats`` over all parts (wall and this thread's CPU); the first pass of
the pseudonymiser, which fills its HMAC memo, is reported apart (``cold``).  Then the whole-dataset
``tgkit.pseudonymise`` (read, transform, write, manifest) is timed once.

``python benchmarks/bench_privacy.py [--messages 100000] [--seed 7]`` prints JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

import tgkit
from tgkit.dataset import DICTIONARY_COLUMNS, committed_parts
from tgkit.offline import World, connect_demo
from tgkit.privacy import _TEXT_HINT, Pseudonymiser, pseudonymise


async def _export(out: Path, messages: int, seed: int) -> None:
    world = World(seed=seed, channel_messages=messages * 2 // 3, group_messages=messages // 3, media=False)
    client = await connect_demo(world=world)
    try:
        for chat in ("@tgkit_demo", "@tgkit_group"):
            await tgkit.export_chat(client, chat, out, progress=False, peer_cache=False, monitor=False)
    finally:
        await client.disconnect()


def _timed(fn, repeats: int) -> tuple[float, float]:
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.thread_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.thread_time() - c0)
    return best_wall, best_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "src"
        t0 = time.perf_counter()
        asyncio.run(_export(src, args.messages, args.seed))
        export_s = time.perf_counter() - t0
        tables = [pq.read_table(p) for p in committed_parts(src)]
        rows = sum(t.num_rows for t in tables)
        text_rows = sum(
            pl.DataFrame(pl.from_arrow(t)).select(pl.col("text").str.contains(_TEXT_HINT).sum()).item()
            for t in tables
        )
        key = root / "key"
        pz = Pseudonymiser(key)
        w0 = time.perf_counter()
        for t in tables:
            pz.messages(t)
        cold = time.perf_counter() - w0

        def transform() -> None:
            for t in tables:
                pz.messages(t)

        def write() -> None:
            for i, t in enumerate(tables):
                pq.write_table(t, root / f"w{i}.parquet", compression="zstd", compression_level=1,
                               use_dictionary=DICTIONARY_COLUMNS, write_statistics=True)  # fmt: skip

        p_wall, p_cpu = _timed(transform, args.repeats)
        b_wall, b_cpu = _timed(write, args.repeats)
        common = {"messages": rows, "parts": len(tables), "seed": args.seed}
        print(json.dumps({"bench": "privacy", "side": "write", **common, "s": round(b_wall, 4),
                          "rows_per_s": round(rows / b_wall), "cpu_rows_per_s": round(rows / b_cpu)}))  # fmt: skip
        print(json.dumps({"bench": "privacy", "side": "pseudonymise", **common, "s": round(p_wall, 4),
                          "rows_per_s": round(rows / p_wall), "cpu_rows_per_s": round(rows / p_cpu),
                          "cold_rows_per_s": round(rows / cold), "text_rows": text_rows}))  # fmt: skip
        w0 = time.perf_counter()
        pseudonymise(src, root / "out", key_file=key)
        whole = time.perf_counter() - w0
        print(json.dumps({"bench": "privacy", "summary": True, **common, "ratio_vs_write": round(p_wall / b_wall, 3),
                          "cpu_ratio_vs_write": round(p_cpu / b_cpu, 3),
                          "dataset_s": round(whole, 3), "dataset_rows_per_s": round(rows / whole),
                          "export_s": round(export_s, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
