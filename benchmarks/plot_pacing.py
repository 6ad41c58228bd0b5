"""Plot the adaptive pacer's rate over time for docs/PACING.md (a virtual-time export on the double).

    python benchmarks/plot_pacing.py [--out docs/pacing_rate.png] [--messages 40000]

Exports a channel twice against one limit profile (cold: nothing learned; warm: the learned state, the
server's buckets full again) and draws, for each run, the pacer's rate, the requests actually sent (per
10 s), the learned limit, the server's true refill rate and the FLOOD_WAITs.  Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import tgkit
from tgkit.offline import OfflineServer, World, connect_demo
from tgkit.offline.limits import LimitProfile, MethodLimit
from tgkit.offline.vtime import run_virtual
from tgkit.pacing import Pacer

HISTORY = "messages.GetHistory"
PROFILE = LimitProfile("example", {HISTORY: MethodLimit(40, 1.3, escalation=3.0)})


async def _export(server: OfflineServer, pacer: Pacer) -> list[tuple[float, str, float | None, float | None]]:
    pacer.record_history = True
    client = await connect_demo(server=server)
    t0 = asyncio.get_running_loop().time()
    try:
        with tempfile.TemporaryDirectory() as out:
            await tgkit.export_chat(
                client, "@tgkit_demo", out, pacer=pacer, progress=False, peer_cache=False, monitor=False,
                metrics=False,
            )  # fmt: skip
    finally:
        await client.disconnect()
    return [(t - t0, ev, rate, limit) for t, name, ev, rate, limit in pacer.history if name == HISTORY]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/pacing_rate.png")
    ap.add_argument("--messages", type=int, default=40_000)
    args = ap.parse_args()
    world = World(5, channel_messages=args.messages, group_messages=10, media=False)
    server = OfflineServer(world, limits=PROFILE)
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as state:
        path = Path(state) / "pacing.msgpack"
        cold = Pacer(state_path=path)
        runs["cold"], _ = run_virtual(_export(server, cold), thread_grace=30.0)
        cold.save()
        assert server.limits is not None
        server.limits.refill()
        warm = Pacer(state_path=path)
        warm._saved_at = (warm._saved_at or 0.0) - 3600  # as after an hour's pause
        runs["warm"], _ = run_virtual(_export(server, warm), thread_grace=30.0)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = PROFILE.methods[HISTORY]
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True, constrained_layout=True)
    summary: dict[str, Any] = {"bench": "plot_pacing", "refill_per_s": spec.refill_per_s}
    for ax, (label, hist) in zip(axes, runs.items(), strict=True):
        sends = [h for h in hist if h[1] == "send"]
        times = [t for t, _, _, _ in sends]
        end = times[-1] if times else 0.0
        bins = [0] * (int(end // 10) + 1)
        for t in times:
            bins[int(t // 10)] += 1
        ax.bar([i * 10 + 5 for i in range(len(bins))], [b / 10 for b in bins], width=9, color="#c8d7ea",
               label="requests sent (per s, 10 s bins)")  # fmt: skip
        ax.step(times, [r or 0 for _, _, r, _ in sends], where="post", color="#1f5fa8", label="pacer rate")
        ax.step(times, [lim or float("nan") for _, _, _, lim in sends], where="post", color="#2a9d4b",
                linestyle="--", label="learned limit")  # fmt: skip
        ax.axhline(spec.refill_per_s, color="#b03030", linewidth=1, label="server refill (true)")
        floods = [t for t, ev, _, _ in hist if ev == "flood"]
        for i, t in enumerate(floods):
            ax.axvline(t, color="#e08a00", linewidth=1.5, label="FLOOD_WAIT" if i == 0 else None)
        ax.set_ylim(0, max(3 * spec.refill_per_s, 1))
        ax.set_ylabel("GetHistory / s")
        ax.set_title(f"{label} run: {len(times)} requests in {end:.0f} s (virtual)")
        summary[f"{label}_seconds"] = round(end, 1)
        summary[f"{label}_learned"] = sends[-1][3] if sends else None
        summary[f"{label}_flood_waits"] = len(floods)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds (virtual time)")
    fig.suptitle(f"Adaptive pacer vs a token bucket of {spec.capacity:.0f} + {spec.refill_per_s}/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
