"""export_corpus on a LocalCluster of worker processes: 1, 2 and 4 accounts on the offline double.

Each account is its own bottleneck: the double's limiter (one per account, messages.GetHistory
capacity 15, refilled at 5/s, REAL time), so k accounts should export k times faster.  Every account
worker paces itself with its own adaptive pacer, which starts COLD in each run (a fresh pacing dir):
it has to find the limit (FLOOD_WAITs, counted per run as "flood_waits") and that learning is part of
the measured time.  In the 4-account run one worker process is killed (kill -9) in the middle of a chat:
Dask re-runs its task elsewhere, the chat resumes from its checkpoint, and the nanny's replacement
process starts its pacer from the state the dead one saved after its last chat.

Untimed setup: each account's peer cache is filled with the 24 chats beforehand (as a previous run
would have), because the pacer spends contacts.ResolveUsername sparingly (a few, then one a minute:
a wait there lasts hours on Telegram); without it a 1-account run would spend ~20 minutes resolving.

    PYTHONPATH=$PWD python benchmarks/bench_distributed.py            # ~3 minutes on 2 cores
    PYTHONPATH=$PWD python benchmarks/bench_distributed.py --seed 11 --profile other.json

Prints one JSON line per run, and last:
{"bench": "distributed", "engine": "dask", "chats", "messages", "msgs_per_s_1", "msgs_per_s_2",
 "msgs_per_s_4", "scaling_2", "scaling_4", "worker_killed", "missing", "duplicates", "secrets_leaked"}

Secrets: every account has a random api hash and session string in the environment the workers inherit;
the run greps the scheduler/worker/nanny logs, the processes' stdout/stderr and the pickled task
specifications the scheduler received for them.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import secrets
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import distributed
import polars as pl

import tgkit
from tgkit.distributed import _build_world, _local_cluster, load_accounts
from tgkit.offline import connect_demo
from tgkit.peers import PeerCache

DEFAULT_PROFILE = {
    "name": "bench-5-per-s",
    "methods": {"messages.GetHistory": {"capacity": 15, "refill_per_s": 5, "escalation": 2}},
}


class SpecRecorder(distributed.SchedulerPlugin):
    def __init__(self) -> None:
        self.blobs: list[bytes] = []

    def update_graph(self, scheduler, *, keys, **kwargs) -> None:
        for key in keys:
            ts = scheduler.tasks.get(key)
            if ts is not None and ts.run_spec is not None:
                self.blobs.append(pickle.dumps(ts.run_spec))


def session_string() -> str:
    from telethon.crypto import AuthKey
    from telethon.sessions import StringSession

    s = StringSession()
    s.set_dc(2, "149.154.167.51", 443)
    s.auth_key = AuthKey(os.urandom(256))
    return s.save()


def write_accounts(path: Path, n: int, args: argparse.Namespace, profile_path: Path) -> Path:
    text = (
        f'[offline]\nseed = {args.seed}\nlimits = "{profile_path}"\n'
        f"world = {{channel_messages = 200, group_messages = 100, public_channels = {args.chats}, "
        f"media = false}}\n"
        f'add_messages = {{"public_*" = {args.messages - 20}}}\n'
    )
    for i in range(n):
        name = f"acct{i}"
        text += f'\n[[accounts]]\nname = "{name}"\napi_hash_env = "{name.upper()}_API_HASH"\n'
        text += f'session_env = "{name.upper()}_SESSION"\n'
        text += f'peer_cache = "peers-{name}.msgpack"\n'
    path.write_text(text)
    return path


def warm_peer_caches(world, accounts_path: Path, chats: list[str]) -> None:
    """Resolve every chat once per account into its peer cache (untimed; see the module docs)."""

    async def warm(account) -> None:
        client = await connect_demo(world=world, account=account.name)
        try:
            cache = PeerCache(account.peer_cache)
            for chat in chats:
                await cache.resolve(client, chat)
            cache.save()
        finally:
            await client.disconnect()

    for account in load_accounts(accounts_path).values():
        tgkit.run_sync(warm(account))


def run_once(
    k: int, args, tmp: Path, profile_path: Path, world, chats, kill: bool, expected_s: float
) -> dict:
    accounts_path = write_accounts(tmp / f"accounts-{k}.toml", k, args, profile_path)
    warm_peer_caches(world, accounts_path, chats)
    out = tmp / f"out-{k}"
    cluster = _local_cluster(load_accounts(accounts_path).values(), dashboard=False)
    recorder = SpecRecorder()
    cluster.scheduler.add_plugin(recorder, name="spec-recorder")
    client = distributed.Client(cluster)
    killed: list[int] = []
    try:
        client.run(lambda: __import__("tgkit.export") and None)  # warm imports outside the timing
        pids = client.run(os.getpid)
        victim = sorted(pids)[0]

        def killer() -> None:
            time.sleep(expected_s * 0.4)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not client.processing().get(victim):
                time.sleep(0.05)
            time.sleep(1.0)  # inside a chat (each takes several seconds)
            os.kill(pids[victim], signal.SIGKILL)
            killed.append(pids[victim])

        thread = threading.Thread(target=killer, daemon=True) if kill else None
        t0 = time.perf_counter()
        if thread is not None:
            thread.start()
        frame = tgkit.export_corpus_sync(
            accounts_path, chats, out, client=client, progress=False, batch_size=args.batch_size,
            metrics=False, monitor=False, pacing="adaptive", pacing_dir=tmp / f"pacing-{k}",
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        if thread is not None:
            thread.join()
        logs = (
            repr(client.get_worker_logs())
            + repr(client.get_worker_logs(nanny=True))
            + repr(client.get_scheduler_logs())
        )
    finally:
        client.close()
        cluster.close()
    data = tgkit.open_dataset(out).collect()
    missing = 0
    for chat in chats:
        cid = world.resolve_username(chat[1:])[1]
        got = set(data.filter(pl.col("chat_id") == cid)["id"].to_list())
        missing += len(set(world.ids(cid)) - got)
    duplicates = data.height - data.select("chat_id", "id").unique().height
    return {
        "run": f"{k}-accounts",
        "accounts": k,
        "seconds": round(seconds, 2),
        "messages": data.height,
        "msgs_per_s": round(data.height / seconds, 1),
        "done": int((frame["status"] == "done").sum()),
        "flood_waits": int(frame["flood_waits"].sum()),
        "attempts": int(frame["attempts"].sum()),
        "worker_killed": bool(killed),
        "missing": missing,
        "duplicates": duplicates,
        "_logs": logs,
        "_blobs": b"".join(recorder.blobs),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--chats", type=int, default=24)
    p.add_argument("--messages", type=int, default=1500, help="messages per chat (before ~3%% deletions)")
    p.add_argument(
        "--profile", type=Path, default=None, help="limiter profile JSON (default: GetHistory 5/s)"
    )
    p.add_argument("--batch-size", type=int, default=500, help="rows per committed part")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tgkit-bench-dist-"))
    profile_path = args.profile.resolve() if args.profile else tmp / "profile.json"
    if args.profile is None:
        profile_path.write_text(json.dumps(DEFAULT_PROFILE))
    world = _build_world(
        {
            "seed": args.seed,
            "world": {
                "channel_messages": 200,
                "group_messages": 100,
                "public_channels": args.chats,
                "media": False,
            },
            "add_messages": {"public_*": args.messages - 20},
        }
    )
    chats = [f"@public_{i:03d}" for i in range(args.chats)]
    secret_values = []
    for i in range(4):
        for suffix, value in (("API_HASH", secrets.token_hex(16)), ("SESSION", session_string())):
            os.environ[f"ACCT{i}_{suffix}"] = value
            secret_values.append(value)

    # Capture the stdout/stderr every worker process inherits (fd level) to grep it for secrets.
    capture = tmp / "processes.log"
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(capture, os.O_WRONLY | os.O_CREAT, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    results = []
    try:
        r1 = run_once(1, args, tmp, profile_path, world, chats, kill=False, expected_s=0)
        results.append(r1)
        for k in (2, 4):
            results.append(run_once(k, args, tmp, profile_path, world, chats, kill=k == 4,
                                    expected_s=r1["seconds"] / k))  # fmt: skip
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(fd)
    output = capture.read_text(errors="replace")
    leaked = 0
    for r in results:
        logs, blobs = r.pop("_logs"), r.pop("_blobs")
        for value in secret_values:
            leaked += logs.count(value) + blobs.count(value.encode())
        print(json.dumps(r))
    leaked += sum(output.count(v) for v in secret_values)
    by_k = {r["accounts"]: r for r in results}
    rate1 = by_k[1]["msgs_per_s"]
    print(
        json.dumps(
            {
                "bench": "distributed",
                "engine": "dask",
                "chats": args.chats,
                "messages": by_k[1]["messages"],
                "msgs_per_s_1": rate1,
                "msgs_per_s_2": by_k[2]["msgs_per_s"],
                "msgs_per_s_4": by_k[4]["msgs_per_s"],
                "scaling_2": round(by_k[2]["msgs_per_s"] / rate1, 2),
                "scaling_4": round(by_k[4]["msgs_per_s"] / rate1, 2),
                "worker_killed": by_k[4]["worker_killed"],
                "missing": sum(r["missing"] for r in results),
                "duplicates": sum(r["duplicates"] for r in results),
                "secrets_leaked": leaked,
            }
        )
    )


if __name__ == "__main__":
    main()
