"""Pacing efficiency against a limiter on virtual time (issue #15).

For each limit profile (``--profile-json FILE_OR_JSON``, repeatable, and/or ``--random-profiles K --seed S``)
the offline double enforces the profile (``tgkit.offline.limits``) and a channel of ``--messages N`` is
exported with ``tgkit.export_chat``, takeout off, then on (where the profile has a takeout section):

* ``cold``: the adaptive pacer with no learned state;
* ``warm``: the state the cold run learned (saved, reloaded), the server's buckets full again, as after
  a pause of an hour;
* ``fixed_gate``: today's fixed gate (``Pacer.fixed()``: 30 GetHistory per 30 s);
* ``telethon``: Telethon's own ``iter_messages`` with its default ``wait_time`` and
  ``flood_sleep_threshold`` (a longer FLOOD_WAIT, which Telethon raises, is slept off and the
  iteration resumed after the last message, as a user script would).

``efficiency = ideal_seconds / seconds`` with ``ideal_seconds = max(0, pages - capacity) / refill_per_s`` for
GetHistory (the takeout bucket when takeout is on): the fastest any client can finish without a wait.
Everything runs on virtual time (``tgkit.offline.vtime``): minutes of Telegram time cost nothing but the
CPU of the export.  One JSON line per run; the last line is the summary.

    python benchmarks/bench_pacing.py --random-profiles 8 --seed 1
    python benchmarks/bench_pacing.py --profile-json strict.json --messages 20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from telethon import errors as tl_errors

import tgkit
from tgkit.offline import OfflineServer, World, connect_demo
from tgkit.offline.limits import LimitProfile, load_profile, random_profile
from tgkit.offline.vtime import VirtualTimeLoop
from tgkit.pacing import Pacer, state_file

T = TypeVar("T")
HISTORY = "messages.GetHistory"
RESOLVE = "contacts.ResolveUsername"
CHAT = "@tgkit_demo"
PAUSE_S = 3600.0  # between the cold and the warm run: the server's buckets are full again
QUIET: dict[str, Any] = {"progress": False, "peer_cache": False, "monitor": False, "metrics": False}


class Clock:
    """A wall clock for the whole benchmark that runs on the virtual loops (and pauses between runs)."""

    def __init__(self) -> None:
        self.now = time.time()

    def run(self, coro: Coroutine[Any, Any, T]) -> tuple[T, float]:
        # thread_grace: the export's Parquet writes run in threads; wait for them rather than jump the
        # clock to an unrelated timer (Telethon's) while they run, so only waits count as time.
        with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(thread_grace=30.0)) as runner:
            loop = runner.get_loop()
            assert isinstance(loop, VirtualTimeLoop)
            original, start, wall = time.time, loop.time(), self.now
            time.time = lambda: wall + (loop.time() - start)
            try:
                result = runner.run(coro)
            finally:
                time.time = original
            self.now = wall + loop.elapsed
            return result, loop.elapsed


async def _export_tgkit(server: OfflineServer, pacer: Pacer, takeout: bool) -> tuple[int, int]:
    client = await connect_demo(server=server)
    try:
        with tempfile.TemporaryDirectory() as out:
            result = await tgkit.export_chat(client, CHAT, out, pacer=pacer, takeout=takeout, **QUIET)
        return result.messages, pacer.flood_waits
    finally:
        await client.disconnect()


async def _export_telethon(server: OfflineServer, takeout: bool) -> tuple[int, int]:
    """Telethon's iter_messages with its defaults; waits above its threshold slept off by the caller."""
    client = await connect_demo(server=server)
    count = last = waits = 0
    try:
        async with contextlib.AsyncExitStack() as stack:
            source: Any = client
            if takeout:
                source = await stack.enter_async_context(client.takeout(channels=True, megagroups=True))
            while True:
                try:
                    async for msg in source.iter_messages(CHAT, reverse=True, min_id=last):
                        count += 1
                        last = msg.id
                    break
                except tl_errors.FloodWaitError as exc:
                    waits += 1
                    await asyncio.sleep(exc.seconds)
                    client._flood_waited_requests.clear()  # Telethon would refuse the request until then
    finally:
        await client.disconnect()
    return count, waits


def _run_profile(
    profile: LimitProfile, world: World, clock: Clock, state_dir: Path, index: int
) -> list[dict[str, Any]]:
    rows = []
    for takeout in (False, True):
        if takeout and HISTORY not in profile.takeout:
            continue
        spec = profile.limit_for(HISTORY, takeout=takeout)
        server = OfflineServer(world, limits=profile)
        assert server.limits is not None
        account = f"bench-{index}-{'takeout' if takeout else 'plain'}"
        state_file(account, state_dir).unlink(missing_ok=True)
        for run in ("cold", "warm", "fixed_gate", "telethon"):
            server.limits.refill()
            clock.now += PAUSE_S
            passed_before = server.limits.passed[HISTORY]
            resolve_before = server.call_log.flood_waits[RESOLVE]
            learned: float | None = None
            if run == "telethon":
                (messages, floods), seconds = clock.run(_export_telethon(server, takeout))
            else:
                pacer = (
                    Pacer.fixed()
                    if run == "fixed_gate"
                    else Pacer.for_account(account, state_dir=state_dir, mode="adaptive")
                )
                (messages, floods), seconds = clock.run(_export_tgkit(server, pacer, takeout))
                if run != "fixed_gate":
                    clock.run(_save(pacer))
                    learned = (pacer.snapshot().get(HISTORY) or {}).get("limit")
            pages = server.limits.passed[HISTORY] - passed_before
            ideal = max(0.0, pages - spec.capacity) / spec.refill_per_s if spec else 0.0
            rows.append(
                {
                    "bench": "pacing_run",
                    "profile": profile.name,
                    "takeout": takeout,
                    "run": run,
                    "messages": messages,
                    "pages": pages,
                    "capacity": spec.capacity if spec else None,
                    "refill_per_s": spec.refill_per_s if spec else None,
                    "learned_refill": None if learned is None else round(learned, 4),
                    "seconds": round(seconds, 1),
                    "ideal_seconds": round(ideal, 1),
                    "efficiency": round(ideal / seconds, 4) if seconds > 0 else 1.0,
                    "flood_waits": floods,
                    "resolve_flood_waits": server.call_log.flood_waits[RESOLVE] - resolve_before,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


async def _save(pacer: Pacer) -> None:
    pacer.save()


def _summary(rows: list[dict[str, Any]], profiles: int) -> dict[str, Any]:
    def eff(run: str) -> list[float]:
        return [r["efficiency"] for r in rows if r["run"] == run]

    def floods(run: str) -> list[int]:
        return [r["flood_waits"] for r in rows if r["run"] == run]

    ours = [r for r in rows if r["run"] in ("cold", "warm")]
    return {
        "bench": "pacing",
        "profiles": profiles,
        "runs": len(rows),
        "cold_efficiency_median": round(statistics.median(eff("cold")), 4),
        "cold_efficiency_min": round(min(eff("cold")), 4),
        "warm_efficiency_median": round(statistics.median(eff("warm")), 4),
        "warm_efficiency_min": round(min(eff("warm")), 4),
        "cold_flood_waits_max": max(floods("cold")),
        "warm_flood_waits_max": max(floods("warm")),
        "resolve_flood_waits": sum(r["resolve_flood_waits"] for r in ours),
        "baseline_fixed_gate_efficiency_median": round(statistics.median(eff("fixed_gate")), 4),
        "baseline_fixed_gate_flood_waits_max": max(floods("fixed_gate")),
        "baseline_telethon_default_efficiency_median": round(statistics.median(eff("telethon")), 4),
        "baseline_telethon_default_flood_waits_max": max(floods("telethon")),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile-json", action="append", default=[], help="a profile: JSON text or a file")
    ap.add_argument("--random-profiles", type=int, default=0, help="K seeded random profiles")
    ap.add_argument("--seed", type=int, default=1, help="seed of the random profiles and of the world")
    ap.add_argument("--messages", type=int, default=100_000, help="messages in the exported channel")
    args = ap.parse_args(argv)
    profiles = [load_profile(p) for p in args.profile_json]
    rng = random.Random(args.seed)
    profiles += [random_profile(rng) for _ in range(args.random_profiles)]
    if not profiles:
        ap.error("give --profile-json and/or --random-profiles")
    world = World(args.seed, channel_messages=args.messages, group_messages=10, media=False)
    clock = Clock()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as state_dir:
        for i, profile in enumerate(profiles):
            print(json.dumps({"bench": "pacing_profile", **profile.to_dict()}), flush=True)
            rows += _run_profile(profile, world, clock, Path(state_dir), i)
    print(json.dumps(_summary(rows, len(profiles))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
