"""The pacer against the limiter alone (no Telethon, no export): bench_pacing's question in seconds.

bench_pacing.py measures the real thing (export_chat through Telethon on the double) and costs minutes of
CPU per profile; this drives ``Pacer`` and ``Limiter`` directly with the same loop an export runs (acquire,
send, sleep off a FLOOD_WAIT), so many seeds can be checked quickly.  Same profiles, same efficiency.

    python benchmarks/sim_pacing.py --random-profiles 8 --seed 11 [--pages 971]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tgkit.offline.limits import Limiter, LimitProfile, load_profile, random_profile
from tgkit.offline.vtime import run_virtual
from tgkit.pacing import Pacer

HISTORY = "messages.GetHistory"


async def _drive(pacer: Pacer, limiter: Limiter, pages: int, takeout: bool) -> float:
    loop = asyncio.get_running_loop()
    t0, got = loop.time(), 0
    while got < pages:
        await pacer.acquire(HISTORY)
        wait = limiter.check(HISTORY, takeout=takeout)
        if wait is None:
            got += 1
        else:
            await pacer.flood_wait(wait, HISTORY)
    return loop.time() - t0


def _runs(profile: LimitProfile, seed: int, pages: int, state_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for takeout in (False, True):
        spec = profile.limit_for(HISTORY, takeout=takeout)
        if spec is None or (takeout and HISTORY not in profile.takeout):
            continue
        limiter = Limiter(profile, seed=seed)
        path = state_dir / f"{profile.name}-{takeout}.msgpack"
        ideal = max(0.0, pages - spec.capacity) / spec.refill_per_s
        for run in ("cold", "warm", "fixed_gate"):
            limiter.refill()
            pacer = Pacer.fixed() if run == "fixed_gate" else Pacer(state_path=path)
            if run == "warm" and pacer._saved_at is not None:
                pacer._saved_at = (
                    time.time() - 3600
                )  # as after an hour's pause (run_virtual restarts the clock)
            seconds, _ = run_virtual(_drive(pacer, limiter, pages, takeout))
            if run == "cold":
                pacer.save()
            rows.append(
                {
                    "bench": "sim_pacing_run",
                    "profile": profile.name,
                    "takeout": takeout,
                    "run": run,
                    "efficiency": round(ideal / seconds, 4) if seconds else 1.0,
                    "flood_waits": pacer.flood_waits,
                    "refill_per_s": spec.refill_per_s,
                    "learned_refill": (pacer.snapshot().get(HISTORY) or {}).get("limit"),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile-json", action="append", default=[])
    ap.add_argument("--random-profiles", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pages", type=int, default=971, help="successful GetHistory calls (971: 100k messages)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    profiles = [load_profile(p) for p in args.profile_json]
    profiles += [random_profile(rng) for _ in range(args.random_profiles)]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as state:
        for i, profile in enumerate(profiles):
            rows += _runs(profile, args.seed * 1000 + i, args.pages, Path(state))

    def pick(run: str, key: str) -> list[Any]:
        return [r[key] for r in rows if r["run"] == run]

    print(
        json.dumps(
            {
                "bench": "sim_pacing",
                "seed": args.seed,
                "profiles": len(profiles),
                "pages": args.pages,
                "cold_efficiency_median": round(statistics.median(pick("cold", "efficiency")), 4),
                "cold_efficiency_min": min(pick("cold", "efficiency")),
                "warm_efficiency_min": min(pick("warm", "efficiency")),
                "cold_flood_waits_max": max(pick("cold", "flood_waits")),
                "warm_flood_waits_max": max(pick("warm", "flood_waits")),
                "baseline_fixed_gate_efficiency_median": round(
                    statistics.median(pick("fixed_gate", "efficiency")), 4
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
