"""Export throughput: tgkit.export_chat to Parquet vs a bare Telethon iter_messages loop, same double.

    python benchmarks/bench_export.py                 # 100,000 messages
    python benchmarks/bench_export.py --messages 1000000

Prints JSON lines; the last one is the summary the issue asks for.  The offline double serves
pre-serialised pages (its share of the time is reported as ``server_share``), so the figure is about
Telethon's decoding plus what each side does with the messages.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

import tgkit
from tgkit.offline import CHANNEL_ID, OfflineServer, World, connect_demo


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


class RssPeak:
    """Samples this process's RSS every few ms in a thread; ``growth_mb`` is peak minus start."""

    def __init__(self, interval: float = 0.005) -> None:
        self.proc = psutil.Process()
        self.interval = interval
        self.start_rss = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssPeak:
        gc.collect()
        self.start_rss = self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start_rss) / 2**20


class ServerClock:
    """Time spent inside the double's request handler (the double's share of a run)."""

    def __init__(self, server: OfflineServer) -> None:
        self.seconds = 0.0
        inner = server.handle

        def timed(data: bytes, dc_id: int):
            t0 = time.perf_counter()
            try:
                return inner(data, dc_id)
            finally:
                self.seconds += time.perf_counter() - t0

        server.handle = timed  # type: ignore[method-assign]


async def baseline(client, chat: str) -> tuple[int, float]:
    n = 0
    t0 = time.perf_counter()
    async for _ in client.iter_messages(chat, wait_time=0):
        n += 1
    return n, time.perf_counter() - t0


async def tgkit_run(client, chat: str, out: Path) -> tuple[tgkit.ExportResult, float]:
    t0 = time.perf_counter()
    r = await tgkit.export_chat(
        client,
        chat,
        out,
        resume=False,
        progress=False,
        peer_cache=False,
        monitor=False,
        pacer=tgkit.Pacer.unlimited(),  # the double's world has no rate limits
    )
    return r, time.perf_counter() - t0


def parquet_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.glob("messages/chat_id=*/part-*.parquet"))


async def worker(args: argparse.Namespace) -> dict:
    """One measurement in a fresh process: build the world, serialise it, time one side."""
    t0 = time.perf_counter()
    world = World(seed=args.seed, channel_messages=args.messages, group_messages=10)
    server = OfflineServer(world)
    held = server.preserialise(CHANNEL_ID)
    n = len(world.ids(CHANNEL_ID))
    setup_s = time.perf_counter() - t0
    clock = ServerClock(server)
    client = await connect_demo(server=server)
    chat = "@tgkit_demo"
    out: dict = {
        "side": args.worker,
        "messages": n,
        "serialised_mb": round(held / 2**20, 1),
        "setup_s": round(setup_s, 2),
    }
    try:
        await client.get_input_entity(chat)  # both sides start with the peer resolved
        gc.collect()
        cpu0 = time.process_time()
        if args.worker == "baseline":
            got, secs = await baseline(client, chat)
            assert got == n, (got, n)
        else:
            with tempfile.TemporaryDirectory(prefix="tgkit-bench-") as tmp:
                before = server.call_log.count("messages.GetHistory")
                with RssPeak() as rss:
                    result, secs = await tgkit_run(client, chat, Path(tmp) / "ds")
                assert result.messages == n, (result.messages, n)
                counters = result.metrics.counters
                fast, slow = counters.get("pages_fast", 0), counters.get("pages_telethon", 0)
                out.update(
                    pages_fast=fast,
                    pages_telethon=slow,
                    fastpath_share=round(fast / (fast + slow), 4) if fast + slow else None,
                    rss_growth_mb=round(rss.growth_mb, 1),
                    history_calls=server.call_log.count("messages.GetHistory") - before,
                    parquet_bytes=parquet_bytes(Path(tmp) / "ds"),
                    stages={row["stage"]: row["total_s"] for row in result.metrics.stage_table().to_dicts()},
                )
        cpu = time.process_time() - cpu0  # every thread of the process: the work, whatever the machine does
        out.update(
            seconds=round(secs, 3),
            msgs_per_s=round(n / secs),
            cpu_s=round(cpu, 3),
            server_share=round(clock.seconds / secs, 3),
        )
    finally:
        await client.disconnect()
    return out


def run_worker(args: argparse.Namespace, side: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        side,
        "--messages",
        str(args.messages),
        "--seed",
        str(args.seed),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def orchestrate(args: argparse.Namespace) -> dict:
    """Alternate the two sides, each in a fresh process (no heap or cache carried from one to the other)."""
    runs: dict[str, list[dict]] = {"baseline": [], "tgkit": []}
    for rep in range(args.repeats):
        for side in ("baseline", "tgkit") if rep % 2 == 0 else ("tgkit", "baseline"):
            r = run_worker(args, side)
            runs[side].append(r)
            emit({"bench": "export", "run": side, "rep": rep, **r})
    base = max(r["msgs_per_s"] for r in runs["baseline"])
    best = max(runs["tgkit"], key=lambda r: r["msgs_per_s"])
    n = best["messages"]
    return {
        "bench": "export",
        "messages": n,
        "baseline_msgs_per_s": base,
        "tgkit_msgs_per_s": best["msgs_per_s"],
        "ratio": round(best["msgs_per_s"] / base, 3),
        # pages read by tgkit.fastpath / all history pages (the rest were decoded by Telethon)
        "fastpath_share": min(r["fastpath_share"] for r in runs["tgkit"]),
        # the same comparison in CPU seconds (best of each side): steadier on a shared machine
        "cpu_ratio": round(
            min(r["cpu_s"] for r in runs["baseline"]) / min(r["cpu_s"] for r in runs["tgkit"]), 3
        ),
        "peak_rss_mb": max(r["rss_growth_mb"] for r in runs["tgkit"]),
        "parquet_bytes_per_msg": round(best["parquet_bytes"] / n, 1),
        "history_calls": best["history_calls"],
        "history_calls_min": math.ceil(n / 100),
        "server_share": min(r["server_share"] for r in runs["tgkit"]),
        "repeats": args.repeats,
        "python": sys.version.split()[0],
        "cores": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each side; the best is kept")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--worker", choices=("baseline", "tgkit"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    emit(asyncio.run(worker(args)) if args.worker else orchestrate(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
