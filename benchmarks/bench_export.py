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
        client, chat, out, resume=False, progress=False, peer_cache=False, monitor=False
    )
    return r, time.perf_counter() - t0


def parquet_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.glob("chat_id=*/part-*.parquet"))


async def main_async(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    world = World(seed=args.seed, channel_messages=args.messages, group_messages=10)
    server = OfflineServer(world)
    held = server.preserialise(CHANNEL_ID)
    n = len(world.ids(CHANNEL_ID))
    emit(
        {
            "bench": "export",
            "stage": "world",
            "messages": n,
            "serialised_mb": round(held / 2**20, 1),
            "seconds": round(time.perf_counter() - t0, 2),
        }
    )
    clock = ServerClock(server)
    client = await connect_demo(server=server)
    chat = "@tgkit_demo"
    base_rates, ours_rates, shares, growths = [], [], [], []
    result = None
    with tempfile.TemporaryDirectory(prefix="tgkit-bench-") as tmp:
        out = Path(tmp) / "ds"
        try:
            for rep in range(args.repeats):
                got, secs = await baseline(client, chat)
                assert got == n, (got, n)
                base_rates.append(n / secs)
                emit({"bench": "export", "run": "baseline", "rep": rep, "msgs_per_s": round(n / secs)})

                before_calls = server.call_log.count("messages.GetHistory")
                clock.seconds = 0.0
                gc.collect()
                with RssPeak() as rss:
                    result, secs = await tgkit_run(client, chat, out)
                assert result.messages == n, (result.messages, n)
                ours_rates.append(n / secs)
                shares.append(clock.seconds / secs)
                growths.append(rss.growth_mb)
                history_calls = server.call_log.count("messages.GetHistory") - before_calls
                emit(
                    {
                        "bench": "export",
                        "run": "tgkit",
                        "rep": rep,
                        "msgs_per_s": round(n / secs),
                        "server_share": round(clock.seconds / secs, 3),
                        "rss_growth_mb": round(rss.growth_mb, 1),
                        "history_calls": history_calls,
                    }
                )
            pq_bytes = parquet_bytes(out)
        finally:
            await client.disconnect()
    base, ours = max(base_rates), max(ours_rates)
    return {
        "bench": "export",
        "messages": n,
        "baseline_msgs_per_s": round(base),
        "tgkit_msgs_per_s": round(ours),
        "ratio": round(ours / base, 3),
        "peak_rss_mb": round(max(growths), 1),
        "parquet_bytes_per_msg": round(pq_bytes / n, 1),
        "history_calls": history_calls,
        "history_calls_min": math.ceil(n / 100),
        "server_share": round(min(shares), 3),
        "repeats": args.repeats,
        "python": sys.version.split()[0],
        "cores": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of each side; the best is kept")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    emit(asyncio.run(main_async(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
