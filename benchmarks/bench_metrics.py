"""Cost of observing an export: the same export with metrics + resource monitor off and on, alternating.

    python benchmarks/bench_metrics.py                # 100,000 messages, 3 runs each
    python benchmarks/bench_metrics.py --messages 50000 --runs 5

Prints JSON lines; the last is the summary (medians, overhead in percent).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tgkit
from tgkit.offline import CHANNEL_ID, OfflineServer, World, connect_demo


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


async def run(args: argparse.Namespace) -> dict:
    world = World(seed=args.seed, channel_messages=args.messages, group_messages=10)
    server = OfflineServer(world)
    server.preserialise(CHANNEL_ID)
    client = await connect_demo(server=server)
    times: dict[str, list[float]] = {"off": [], "on": []}
    try:
        with tempfile.TemporaryDirectory(prefix="tgkit-bench-") as tmp:
            # warm-up: first-touch costs (imports, Telethon's caches) paid by neither side
            await tgkit.export_chat(
                client, "@tgkit_demo", Path(tmp) / "warm", progress=False, peer_cache=False, limit=2000
            )
            for i in range(args.runs):
                for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
                    gc.collect()
                    on = mode == "on"
                    t0 = time.perf_counter()
                    r = await tgkit.export_chat(
                        client,
                        "@tgkit_demo",
                        Path(tmp) / mode,
                        resume=False,
                        progress=False,
                        peer_cache=False,
                        metrics=on,
                        monitor=on,
                    )
                    secs = time.perf_counter() - t0
                    times[mode].append(secs)
                    emit(
                        {
                            "bench": "metrics",
                            "run": i,
                            "mode": mode,
                            "seconds": round(secs, 3),
                            "messages": r.messages,
                        }
                    )
    finally:
        await client.disconnect()
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    return {
        "bench": "metrics",
        "runs": args.runs,
        "messages": args.messages,
        "off_s_median": round(off, 3),
        "on_s_median": round(on, 3),
        "overhead_pct": round((on - off) / off * 100, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    emit(asyncio.run(run(p.parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
