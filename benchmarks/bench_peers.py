"""Peer cache across processes: how many ``contacts.ResolveUsername`` calls 200 usernames cost.

Each phase runs in a NEW process (this script in ``--worker`` mode) with a fresh Telethon
``StringSession``, so Telethon's own entity cache starts empty every time, as in a re-run notebook:

1. ``cold``: resolve N names through ``PeerCache(path)`` and save the file;
2. ``warm``: a new process, the same file: every name should be a hit (0 calls);
3. ``no_cache``: a new process, ``client.get_input_entity`` straight (what ``peer_cache=False`` does).

One JSON line per phase, then the summary line::

    {"bench": "peers", "names", "resolve_calls_cold", "resolve_calls_warm_new_process",
     "resolve_calls_no_cache_new_process", "lookup_us_p50", "get_us_p50", "telethon_lookup_us_p50",
     "cache_file_bytes", ...}

``lookup_us_p50`` is ``await cache.resolve(client, "@name")`` on a hit (what callers pay);
``get_us_p50`` is the bare ``cache.get``; ``telethon_lookup_us_p50`` is the side-by-side baseline,
Telethon's ``get_input_entity`` for a name its in-memory session already holds.  The cache file lives
in a temp dir (``TGKIT_CACHE_DIR`` points there too), never the user's cache dir.

    .venv/bin/python benchmarks/bench_peers.py [--names 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESOLVE = "contacts.ResolveUsername"


def _p50_us(samples_ns: list[int]) -> float:
    return round(statistics.median(samples_ns) / 1000, 3)


async def _timed_resolves(cache: Any, client: Any, names: list[str], rounds: int) -> list[int]:
    out: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for name in names:
            t0 = clock()
            await cache.resolve(client, name)
            out.append(clock() - t0)
    return out


async def worker(mode: str, n: int, cache_path: Path) -> dict[str, Any]:
    from telethon.sessions import StringSession

    from tgkit.offline import OfflineServer, World, connect_demo
    from tgkit.peers import PeerCache

    world = World(seed=7, channel_messages=10, group_messages=10, public_channels=n, media=False)
    server = OfflineServer(world)
    client = await connect_demo(server=server, session=StringSession())  # empty entity cache
    names = [f"@public_{i:03d}" for i in range(n)]
    out: dict[str, Any] = {"phase": mode, "pid": os.getpid()}
    try:
        server.call_log.reset()
        t0 = time.perf_counter()
        if mode == "no_cache":
            for name in names:
                await client.get_input_entity(name)
        else:
            cache = PeerCache(cache_path)
            for name in names:
                await cache.resolve(client, name)
            cache.save()
        out["seconds"] = round(time.perf_counter() - t0, 4)
        out["resolve_calls"] = server.call_log.count(RESOLVE)
        if mode == "warm":
            timed = await _timed_resolves(cache, client, names, rounds=25)
            out["lookup_us_p50"] = _p50_us(timed)
            gets: list[int] = []
            clock = time.perf_counter_ns
            for _ in range(25):
                for name in names:
                    t = clock()
                    cache.get(name)
                    gets.append(clock() - t)
            out["get_us_p50"] = _p50_us(gets)
            out["stats"] = cache.stats()
            assert server.call_log.count(RESOLVE) == out["resolve_calls"]  # timing made no calls
        if mode == "no_cache":
            # Baseline: Telethon's own in-memory lookup, for names this session has already seen.
            tl: list[int] = []
            clock = time.perf_counter_ns
            for _ in range(25):
                for name in names:
                    t = clock()
                    await client.get_input_entity(name)
                    tl.append(clock() - t)
            out["telethon_lookup_us_p50"] = _p50_us(tl)
    finally:
        await client.disconnect()
    return out


def run_phase(mode: str, n: int, cache_path: Path, env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", mode, "--names", str(n), "--cache", str(cache_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"worker {mode} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--names", type=int, default=200, help="usernames to resolve (public_000..)")
    parser.add_argument("--worker", choices=("cold", "warm", "no_cache"), help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(worker(args.worker, args.names, args.cache))))
        return

    with tempfile.TemporaryDirectory(prefix="tgkit-bench-peers-") as tmp:
        cache_path = Path(tmp) / "peers.msgpack"
        env = {**os.environ, "TGKIT_CACHE_DIR": tmp}  # belt and braces: nothing reaches ~/.cache
        phases = {}
        for mode in ("cold", "warm", "no_cache"):
            phases[mode] = run_phase(mode, args.names, cache_path, env)
            print(json.dumps(phases[mode]))
        size = cache_path.stat().st_size
    warm = phases["warm"]
    summary = {
        "bench": "peers",
        "names": args.names,
        "resolve_calls_cold": phases["cold"]["resolve_calls"],
        "resolve_calls_warm_new_process": warm["resolve_calls"],
        "resolve_calls_no_cache_new_process": phases["no_cache"]["resolve_calls"],
        "lookup_us_p50": warm["lookup_us_p50"],
        "get_us_p50": warm["get_us_p50"],
        "telethon_lookup_us_p50": phases["no_cache"]["telethon_lookup_us_p50"],
        "cache_file_bytes": size,
        "warm_hit_rate": warm["stats"]["hit_rate"],
        "target_met": warm["resolve_calls"] == 0 and warm["lookup_us_p50"] <= 5.0,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
