"""Cost of observing an export: the same export with metrics + resource monitor off and on.

    python benchmarks/bench_metrics.py                # 100,000 messages, 8 runs of each side
    python benchmarks/bench_metrics.py --messages 50000 --runs 6

Each run is a fresh process (no heap or cache carried between runs), in ABBA order so drift in the
machine's speed hits both sides alike.  Wall time on a shared 2-core VM moves by +-20% between runs, so
the summary also gives the same comparison in CPU seconds of the whole process (all threads: the monitor
thread's own work counts against "on").  Prints JSON lines; the last is the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tgkit
from tgkit.offline import CHANNEL_ID, OfflineServer, World, connect_demo


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


class Accounting:
    """Adds up the CPU time the observing itself takes inside an "on" run: every resource sample (in the
    monitor thread), the metrics/resources files written at the end, and every stage timer (count x
    the measured cost of one start/stop pair).  Precise where wall-clock medians on a noisy VM are not;
    it does not see GIL hand-offs between the monitor thread and the loop (a few per sample)."""

    def __init__(self) -> None:
        from tgkit import metrics

        self.seconds = 0.0
        for cls, name in (
            (metrics.ResourceMonitor, "sample"),
            (metrics.MetricsCollector, "to_json"),
            (metrics.ResourceSamples, "to_parquet"),
        ):
            setattr(cls, name, self._timed(getattr(cls, name)))

    def _timed(self, fn):
        # CPU time of the calling thread: a sample taken in the monitor thread may wait for the GIL,
        # and that wait is not work taken from the export
        def wrapper(*a, **kw):
            t0 = time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds += time.thread_time() - t0

        return wrapper

    @staticmethod
    def timer_cost_s() -> float:
        from tgkit.metrics import MetricsCollector

        m = MetricsCollector()
        t0 = time.perf_counter()
        for _ in range(20_000):
            m.stop("x", m.start())
        return (time.perf_counter() - t0) / 20_000


async def worker(args: argparse.Namespace) -> dict:
    world = World(seed=args.seed, channel_messages=args.messages, group_messages=10)
    server = OfflineServer(world)
    server.preserialise(CHANNEL_ID)
    client = await connect_demo(server=server)
    on = args.worker == "on"
    accounting = Accounting() if on else None
    try:
        await client.get_input_entity("@tgkit_demo")
        with tempfile.TemporaryDirectory(prefix="tgkit-bench-") as tmp:
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            r = await tgkit.export_chat(
                client,
                "@tgkit_demo",
                Path(tmp) / "ds",
                progress=False,
                peer_cache=False,
                metrics=on,
                monitor=on,
                pacer=tgkit.Pacer.unlimited(),  # the double's world has no rate limits
            )
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            samples = len(pl_read(r.resources_path)) if on and r.resources_path else 0
    finally:
        await client.disconnect()
    out = {
        "mode": args.worker,
        "seconds": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "messages": r.messages,
        "resource_samples": samples,
    }
    if accounting is not None and r.metrics is not None:
        timers = int(r.metrics.stage_table()["count"].sum())
        observed = accounting.seconds + timers * Accounting.timer_cost_s()
        out.update(
            observing_s=round(observed, 4), timers=timers, observing_pct=round(observed / wall * 100, 3)
        )
    return out


def pl_read(path: Path) -> list:
    import polars as pl

    return pl.read_parquet(path).rows()


def run_worker(args: argparse.Namespace, mode: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        mode,
        "--messages",
        str(args.messages),
        "--seed",
        str(args.seed),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def orchestrate(args: argparse.Namespace) -> dict:
    times: dict[str, list[dict]] = {"off": [], "on": []}
    order = [("off", "on"), ("on", "off")]
    for i in range(args.runs):
        for mode in order[i % 2]:
            r = run_worker(args, mode)
            times[mode].append(r)
            emit({"bench": "metrics", "run": i, **r})

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in times[mode])

    off, on = med("off", "seconds"), med("on", "seconds")
    off_cpu, on_cpu = med("off", "cpu_s"), med("on", "cpu_s")
    return {
        "bench": "metrics",
        "runs": args.runs,
        "messages": times["on"][0]["messages"],
        "off_s_median": round(off, 3),
        "on_s_median": round(on, 3),
        "overhead_pct": round((on - off) / off * 100, 2),
        "off_cpu_s_median": round(off_cpu, 3),
        "on_cpu_s_median": round(on_cpu, 3),
        "cpu_overhead_pct": round((on_cpu - off_cpu) / off_cpu * 100, 2),
        # what observing costs, added up inside the "on" runs (see Accounting): the precise figure
        "accounted_overhead_pct": round(statistics.median(r["observing_pct"] for r in times["on"]), 3),
        "wall_spread_pct": round(
            (max(r["seconds"] for r in times["off"]) / min(r["seconds"] for r in times["off"]) - 1) * 100, 1
        ),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=100_000)
    # 4 pairs once gave +7% from drift alone; 8 pairs gave -0.06% wall / +0.94% CPU on the same code
    p.add_argument("--runs", type=int, default=8, help="runs of each side (ABBA order)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--worker", choices=("on", "off"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    emit(asyncio.run(worker(args)) if args.worker else orchestrate(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
