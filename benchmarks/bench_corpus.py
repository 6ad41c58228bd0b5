"""Many chats on one account: ``export_chats`` at concurrency 1 vs 4 against a limiter (issue #16).

A world with ``--chats`` public channels (grown to ``--messages`` messages each) is exported with
``tgkit.export_chats`` twice per limit profile, each run on a fresh server with the same profile (full
buckets), a fresh adaptive pacer and an empty peer cache: ``concurrency=1`` (the baseline: one chat
after another, as the sequential crawlers do) and ``concurrency=4``.  Everything runs on virtual time
(``tgkit.offline.vtime``), so minutes of Telegram time cost only the export's CPU.

Peers: ``cold`` (every name is resolved: ``contacts.ResolveUsername`` is the strictest limit, a handful
then one a minute) and ``warm`` (the dialog list taught the peer cache every chat first).  ``--latency``:
the round trip of every request (the double answers after it), which concurrency overlaps.

Profiles: ``--profile-json FILE_OR_JSON`` (repeatable) and/or ``--random-profiles K --seed S``
(``tgkit.offline.limits.random_profile``).  Every profile also gets a per-chat cost each run pays once
per chat: ``channels.GetFullChannel`` as a bucket (``--full-capacity``, ``--full-refill``) unless the
profile has its own.  The claim: at 4 the run takes no more virtual time and no more flood waits than
at 1 (the pacer is shared: concurrency overlaps methods, never one method faster), and with the
per-chat cost it is faster (one chat's history pages overlap another's resolve and full channel).

One JSON line per run; the last line is the summary over every profile:
``{"bench": "corpus", "chats", "messages", "seconds_c1", "seconds_c4", "flood_waits_c1",
"flood_waits_c4", "failed", ...}``.

    python benchmarks/bench_corpus.py --random-profiles 3 --seed 1
    python benchmarks/bench_corpus.py --profile-json strict.json --chats 20 --messages 600
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from typing import Any

import tgkit
from tgkit.offline import OfflineServer, World, connect_demo
from tgkit.offline.limits import LimitProfile, MethodLimit, load_profile, random_profile
from tgkit.offline.vtime import run_virtual
from tgkit.offline.world import PUBLIC_BASE
from tgkit.pacing import Pacer

FULL = "channels.GetFullChannel"
QUIET: dict[str, Any] = {"progress": False, "peer_cache": False, "monitor": False, "metrics": False}


def _world(chats: int, messages: int, seed: int) -> World:
    world = World(seed, channel_messages=50, group_messages=20, public_channels=chats, media=False)
    for i in range(chats):
        world.add_messages(PUBLIC_BASE + i, max(0, messages - 20))
    return world


def _with_full_cost(profile: LimitProfile, capacity: int, refill: float) -> LimitProfile:
    if FULL in profile.methods:
        return profile
    methods = {**profile.methods, FULL: MethodLimit(capacity, refill, 2.0)}
    return LimitProfile(profile.name, methods, dict(profile.takeout))


async def _run(
    world: World, profile: LimitProfile, chats: list[str], concurrency: int, *, warm: bool, latency: float
) -> dict[str, Any]:
    server = OfflineServer(world, limits=profile)
    client = await connect_demo(server=server, latency=latency)
    pacer = Pacer()  # adaptive, nothing learned: both runs start equal
    cache = tgkit.PeerCache(False)
    try:
        if warm:  # the peers are known (the dialog list taught them, or an earlier run): no resolving
            await tgkit.list_dialogs(client, pacer=pacer, peer_cache=cache)
        with tempfile.TemporaryDirectory() as out:
            frame = await tgkit.export_chats(
                client, chats, out, concurrency=concurrency, pacer=pacer, **{**QUIET, "peer_cache": cache}
            )
    finally:
        await client.disconnect()
    return {
        "rows": int(frame["rows"].fill_null(0).sum()),
        "failed": int((frame["status"] == "failed").sum()),
        "flood_waits": sum(server.call_log.flood_waits.values()),
        "flood_waits_by_method": dict(server.call_log.flood_waits),
        "requests": server.call_log.snapshot(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chats", type=int, default=20)
    p.add_argument("--messages", type=int, default=400, help="messages per chat")
    p.add_argument("--profile-json", action="append", default=[], help="a limit profile (file or JSON)")
    p.add_argument("--random-profiles", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--world-seed", type=int, default=7)
    p.add_argument("--full-capacity", type=int, default=3, help="GetFullChannel bucket (per-chat cost)")
    p.add_argument("--full-refill", type=float, default=0.2, help="GetFullChannel refill per second")
    p.add_argument("--latency", type=float, default=0.1, help="seconds from request to answer (a round trip)")
    args = p.parse_args(argv)

    profiles = [load_profile(x) for x in args.profile_json]
    profiles += [random_profile(args.seed * 1000 + i) for i in range(args.random_profiles)]
    if not profiles:
        profiles = [random_profile(args.seed)]
    chats = [f"@public_{i:03d}" for i in range(args.chats)]
    runs: list[dict[str, Any]] = []
    for profile, peers in ((p, peers) for p in profiles for peers in ("cold", "warm")):
        profile = _with_full_cost(profile, args.full_capacity, args.full_refill)
        row: dict[str, Any] = {
            "bench": "corpus_run", "profile": profile.name, "peers": peers, "chats": args.chats,
            "latency": args.latency,
        }  # fmt: skip
        for c in (1, 4):
            world = _world(args.chats, args.messages, args.world_seed)  # a fresh world: same messages
            run = _run(world, profile, chats, c, warm=peers == "warm", latency=args.latency)
            result, seconds = run_virtual(run, thread_grace=30.0)
            row.update(
                {
                    "messages": result["rows"],
                    f"seconds_c{c}": round(seconds, 1),
                    f"flood_waits_c{c}": result["flood_waits"],
                    f"failed_c{c}": result["failed"],
                    f"flood_waits_by_method_c{c}": result["flood_waits_by_method"],
                    f"history_requests_c{c}": result["requests"].get("messages.GetHistory", 0),
                }
            )
        row["speedup"] = round(row["seconds_c1"] / row["seconds_c4"], 3) if row["seconds_c4"] else None
        runs.append(row)
        print(json.dumps(row), flush=True)
    summary = {
        "bench": "corpus",
        "chats": args.chats,
        "messages": sum(r["messages"] for r in runs),
        "seconds_c1": round(sum(r["seconds_c1"] for r in runs), 1),
        "seconds_c4": round(sum(r["seconds_c4"] for r in runs), 1),
        "flood_waits_c1": sum(r["flood_waits_c1"] for r in runs),
        "flood_waits_c4": sum(r["flood_waits_c4"] for r in runs),
        "failed": sum(r["failed_c1"] + r["failed_c4"] for r in runs),
        "profiles": len(runs),
        "c4_not_slower": all(r["seconds_c4"] <= r["seconds_c1"] for r in runs),
        "c4_no_more_floods": all(r["flood_waits_c4"] <= r["flood_waits_c1"] for r in runs),
        "min_speedup": min((r["speedup"] or 0.0) for r in runs),
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
