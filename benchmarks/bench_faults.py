"""Export under a seeded fault storm with kill -9 restarts, on the offline double; then a 1M-message memory run.

    python benchmarks/bench_faults.py [--messages 50000] [--kills 20] [--seed 1] [--memory-messages 1000000]

A child process exports ``@tgkit_demo`` (``--messages``) and then ``@tgkit_group`` with photo and document
downloads, resuming whatever the previous run committed.  Each run carries a share of the storm -- flood
waits below the ceiling (slept, on virtual time) and above it (``FloodWaitTooLong``: the run ends and is
restarted "later"), hard disconnects, RPC 500s, expired file references -- and the parent SIGKILLs it at
``--kills`` random moments (after a random number of committed rows plus a random sub-delay).  Faults that
did not fire before a kill carry over to the next run.  The final dataset is compared with an
uninterrupted export of the same world, and every file written (datasets, DEBUG logs of Telethon and
tgkit, child output) is searched for the api hash, the session string and the auth key.

JSON lines; the last one is the summary::

    {"bench": "faults", "messages_expected", "messages_exported", "duplicates", "missing", "mismatched",
     "kills", "restarts", "flood_waits", "flood_waits_too_long", "disconnects", "server_errors",
     "expired_refs", "secrets_leaked", "memory_messages", "rss_growth_mb", ...}

Targets: missing == 0, duplicates == 0, secrets_leaked == 0; rss_growth_mb small and independent of size.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import math
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHANNEL, GROUP = "@tgkit_demo", "@tgkit_group"
MEDIA = ["photo", "document"]
HISTORY = "messages.GetHistory"
EXIT_FLOOD = 3


def emit(**kw: Any) -> None:
    print(json.dumps({"bench": "faults", **kw}), flush=True)


# --------------------------------------------------------------------------------------------------
# children


def _world(spec: dict[str, Any]) -> Any:
    from tgkit.offline import World

    return World(
        seed=spec["seed"],
        channel_messages=spec["messages"],
        group_messages=spec["group_messages"],
        videos=False,
    )


def child_export(spec_path: str) -> int:
    """One run: export both chats under this run's faults (virtual time); log every fault as it fires."""
    import tgkit
    from tgkit.offline import Fault, FaultPlan, connect_demo
    from tgkit.offline.vtime import run_virtual

    spec = json.loads(Path(spec_path).read_text())
    log_fd = os.open(spec["fired_log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    class LoggedPlan(FaultPlan):
        def check(self, name: str, occurrence: int) -> Fault | None:
            rule = super().check(name, occurrence)
            if rule is not None:  # one unbuffered write: survives a SIGKILL right after
                os.write(log_fd, (json.dumps({"id": ids[id(rule)], "run": spec["run"]}) + "\n").encode())
            return rule

    plan = LoggedPlan()
    ids: dict[int, int] = {}
    for f in spec["faults"]:
        rule = Fault(f["kind"], f["request"], f["nth"], 1, f["code"], f["message"])
        plan.add(rule)
        ids[id(rule)] = f["id"]

    handler = logging.FileHandler(spec["debug_log"])
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)

    async def main() -> list[Any]:
        client = await connect_demo(
            world=_world(spec),
            faults=plan,
            session=os.environ["BENCH_SESSION"],
            api_hash=os.environ["BENCH_API_HASH"],
        )
        results = []
        try:
            # the double's world has no rate limits: no proactive pacing (its flood waits are still obeyed)
            quiet = {
                "peer_cache": False,
                "progress": False,
                "monitor": False,
                "batch_size": spec["batch"],
                "pacer": tgkit.Pacer.unlimited(),
            }
            results.append(await tgkit.export_chat(client, CHANNEL, spec["out"], **quiet))
            quiet["batch_size"] = 250  # the small group commits often too: kills can land between parts
            results.append(await tgkit.export_chat(client, GROUP, spec["out"], media=MEDIA, **quiet))
        finally:
            await client.disconnect()
        return results

    try:
        results, virtual = run_virtual(main())
    except tgkit.FloodWaitTooLong as exc:
        logging.getLogger("bench").warning("run ended: %s", exc)
        print(json.dumps({"flood_wait_too_long": exc.seconds, "checkpoint": str(exc.checkpoint)}))
        return EXIT_FLOOD
    for r in results:
        logging.getLogger("bench").info("result %r", r)
    print(
        json.dumps(
            {
                "virtual_s": round(virtual, 1),
                "flood_waits": sum(r.flood_waits for r in results),
                "reconnects": sum(r.reconnects for r in results),
                "media_downloaded": sum(r.media_downloaded for r in results),
                "media_failed": sum(r.media_failed for r in results),
                "reprs": [repr(r) for r in results],
            }
        )
    )
    return 0


def child_memory(n: int, out: str) -> int:
    """Export one chat of ``n`` messages; RSS sampled as rows arrive.  Prints one JSON line."""
    import psutil

    import tgkit
    from tgkit.offline import World, connect_demo

    proc = psutil.Process()
    samples: list[tuple[int, float]] = []
    mb = 1024 * 1024

    def on_event(event: dict[str, Any]) -> None:
        done = event.get("messages", 0)
        if not samples or done - samples[-1][0] >= n // 50:
            samples.append((done, proc.memory_info().rss / mb))

    async def main() -> Any:
        world = World(seed=5, channel_messages=n, group_messages=10, media=False, cache_bytes=False)
        client = await connect_demo(world=world)
        try:
            return await tgkit.export_chat(
                client,
                CHANNEL,
                out,
                peer_cache=False,
                progress=on_event,
                monitor=False,
                pacer=tgkit.Pacer.unlimited(),  # the double's world has no rate limits
            )
        finally:
            await client.disconnect()

    rss0 = proc.memory_info().rss / mb
    t0 = time.perf_counter()
    result = asyncio.run(main())
    seconds = time.perf_counter() - t0
    warm = next((rss for done, rss in samples if done >= n // 10), samples[0][1] if samples else rss0)
    peak = max([rss for _, rss in samples] + [proc.memory_info().rss / mb])
    print(
        json.dumps(
            {
                "memory_messages": result.total_rows,
                "rss_start_mb": round(rss0, 1),
                "rss_after_10pct_mb": round(warm, 1),
                "rss_peak_mb": round(peak, 1),
                "rss_growth_mb": round(peak - warm, 1),
                "rss_samples_mb": [round(r, 1) for _, r in samples[:: max(len(samples) // 10, 1)]],
                "memory_msgs_per_s": round(result.total_rows / seconds),
            }
        )
    )
    return 0


# --------------------------------------------------------------------------------------------------
# parent


def _storm(rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(history-request faults, download faults), each with a stable id."""
    history: list[dict[str, Any]] = []

    def add(kind: str, code: int, message: str, request: str | None = HISTORY) -> dict[str, Any]:
        return {"kind": kind, "request": request, "code": code, "message": message}

    for s in (2, 5, 15, 45, 300, 900):  # at or below the 900 s ceiling: slept off
        history.append(add("rpc", 420, f"FLOOD_WAIT_{s}"))
    for _ in range(2):  # above it: FloodWaitTooLong, a resumable checkpoint, a rerun "later"
        history.append(add("rpc", 420, "FLOOD_WAIT_3600"))
    history += [add("disconnect", 0, "") for _ in range(20)]
    history += [add("rpc", 500, "INTERNAL") for _ in range(5)]
    rng.shuffle(history)
    downloads = [add("expire_ref", 400, "FILE_REFERENCE_EXPIRED", "upload.GetFile") for _ in range(3)]
    for i, f in enumerate(history + downloads):
        f["id"] = i
    return history, downloads


def _rows(out: Path) -> int:
    total = 0
    for cp in out.glob("_state/chat_id=*/checkpoint.json"):  # dataset layout 2
        try:
            total += int(json.loads(cp.read_bytes())["rows"])
        except (OSError, ValueError, KeyError):
            pass
    return total


class Parent:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.fired: set[int] = set()
        self.runs = 0
        self.secrets = self._make_secrets()
        self.history, self.downloads = _storm(self.rng)
        self.by_id = {f["id"]: f for f in self.history + self.downloads}
        (work / "logs").mkdir(parents=True)

    def _make_secrets(self) -> dict[str, bytes]:
        from telethon.crypto import AuthKey
        from telethon.sessions import StringSession

        session = StringSession()
        session.set_dc(2, "149.154.167.51", 443)
        session.auth_key = AuthKey(os.urandom(256))
        key = session.auth_key.key
        assert key is not None
        self.env = {**os.environ, "BENCH_SESSION": session.save(), "BENCH_API_HASH": secrets.token_hex(16)}
        return {
            "api_hash": self.env["BENCH_API_HASH"].encode(),
            "session_string": self.env["BENCH_SESSION"].encode(),
            "auth_key_raw": key,
            "auth_key_hex": key.hex().encode(),
            "auth_key_base64": base64.b64encode(key),
            "auth_key_urlsafe_base64": base64.urlsafe_b64encode(key),
        }

    def spawn(self, out: Path, faults: list[dict[str, Any]]) -> tuple[subprocess.Popen[bytes], Path]:
        self.runs += 1
        name = f"run-{self.runs:03d}" if out.name == "storm" else "reference"
        spec = {
            "run": self.runs, "out": str(out), "seed": self.args.seed, "messages": self.args.messages,
            "group_messages": self.args.group_messages, "batch": self.args.batch, "faults": faults,
            "fired_log": str(self.work / "logs" / "fired.jsonl"),
            "debug_log": str(self.work / "logs" / f"{name}.debug.log"),
        }  # fmt: skip
        spec_path = self.work / "logs" / f"{name}.spec.json"
        spec_path.write_text(json.dumps(spec))
        stdout = open(self.work / "logs" / f"{name}.stdout", "wb")  # noqa: SIM115
        stderr = open(self.work / "logs" / f"{name}.stderr", "wb")  # noqa: SIM115
        cmd = [sys.executable, __file__, "--child-export", str(spec_path)]
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=self.env)
        stdout.close()
        stderr.close()
        return proc, self.work / "logs" / f"{name}.stdout"

    def read_fired(self) -> None:
        path = self.work / "logs" / "fired.jsonl"
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    self.fired.add(json.loads(line)["id"])

    def faults_for_run(self, runs_left: int) -> list[dict[str, Any]]:
        """A share of the faults not fired yet, at the first history requests of the run (so they fire
        before the kill); every unfired download fault rides along (they fire once media downloads)."""
        pending = [f for f in self.history if f["id"] not in self.fired]
        share = pending if runs_left <= 1 else pending[: math.ceil(len(pending) / runs_left)]
        gap = 1 if runs_left <= 1 else 2  # the last run may make few requests: every one carries a fault
        out = [{**f, "nth": 2 + gap * i} for i, f in enumerate(share)]
        todo = [f for f in self.downloads if f["id"] not in self.fired]
        out += [{**f, "nth": 3 + 5 * i} for i, f in enumerate(todo)]
        return out

    def run(self) -> dict[str, Any]:
        a = self.args
        storm, ref = self.work / "storm", self.work / "reference"
        ref_proc, _ = self.spawn(ref, [])  # the uninterrupted export, beside the storm
        world_spec = {"seed": a.seed, "messages": a.messages, "group_messages": a.group_messages}
        from tgkit.offline import CHANNEL_ID, GROUP_ID

        world = _world(world_spec)
        channel_rows, group_rows = len(world.ids(CHANNEL_ID)), len(world.ids(GROUP_ID))
        # most kills while the channel streams (a few while starting), the last few during the group's
        # export with media downloads
        in_group = min(3, a.kills // 4)
        targets = sorted(
            0 if self.rng.random() < 0.1 else self.rng.randrange(channel_rows * 9 // 10)
            for _ in range(a.kills - in_group)
        ) + sorted(channel_rows + self.rng.randrange(group_rows * 7 // 10) for _ in range(in_group))
        kills = restarts = 0
        t0 = time.perf_counter()
        ti = 0
        while kills < a.kills:
            target = targets[ti]
            proc, stdout = self.spawn(storm, self.faults_for_run(a.kills - kills + 1))
            while _rows(storm) < target and proc.poll() is None:
                time.sleep(0.01)
            # a short sub-delay in the small group's phase, or the kill lands after its last part
            time.sleep(self.rng.uniform(0, 0.5 if target < channel_rows else 0.05))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            rc = proc.wait()
            self.read_fired()
            if rc == -signal.SIGKILL:
                kills += 1
                ti += 1
            else:
                restarts += 1
                if rc not in (0, EXIT_FLOOD):
                    raise SystemExit(f"run {self.runs} failed ({rc}); see {self.work}/logs")
            emit(
                event="run", run=self.runs, killed=rc == -signal.SIGKILL, exit=rc, target_rows=target,
                rows_committed=_rows(storm), faults_fired=len(self.fired), seconds=round(time.perf_counter() - t0, 1),
            )  # fmt: skip
            if rc == 0:  # finished before the kill: nothing left to kill
                break
        for _ in range(20):  # the final runs: no more kills; a FloodWaitTooLong means "rerun later"
            proc, stdout = self.spawn(storm, self.faults_for_run(1))
            rc = proc.wait()
            self.read_fired()
            emit(
                event="final_run",
                run=self.runs,
                exit=rc,
                rows_committed=_rows(storm),
                faults_fired=len(self.fired),
            )
            if rc == 0:
                final = json.loads(stdout.read_text().splitlines()[-1])
                break
            if rc != EXIT_FLOOD:
                raise SystemExit(f"final run failed ({rc}); see {self.work}/logs")
            restarts += 1
        else:
            raise SystemExit("the export never finished")
        if ref_proc.wait() != 0:
            raise SystemExit(f"reference export failed; see {self.work}/logs")
        storm_seconds = time.perf_counter() - t0
        stats = self.compare(storm, ref)
        fired = [self.by_id[i] for i in self.fired]
        msgs = [f["message"] for f in fired]
        stats.update(
            kills=kills,
            restarts=restarts,
            runs=self.runs - 1,
            flood_waits=sum(m.startswith("FLOOD_WAIT") for m in msgs),
            flood_waits_too_long=msgs.count("FLOOD_WAIT_3600"),
            disconnects=sum(f["kind"] == "disconnect" for f in fired),
            server_errors=msgs.count("INTERNAL"),
            expired_refs=msgs.count("FILE_REFERENCE_EXPIRED"),
            faults_planned=len(self.by_id),
            faults_fired=len(fired),
            last_run_media_failed=final["media_failed"],
            storm_seconds=round(storm_seconds, 1),
        )
        stats["secrets_leaked"], stats["secret_hits"] = self.scan_secrets()
        return stats

    def compare(self, storm: Path, ref: Path) -> dict[str, Any]:
        import polars as pl

        import tgkit

        keys = ["chat_id", "id"]
        got = tgkit.open_dataset(storm).collect()
        want = tgkit.open_dataset(ref).collect()
        missing = want.join(got, on=keys, how="anti").height
        extra = got.join(want, on=keys, how="anti").height
        dups = got.height - got.select(keys).unique().height

        def hashed(df: pl.DataFrame) -> pl.DataFrame:
            body = df.unique(keys, keep="first").drop("media_path", "media_error").sort(keys)
            return body.select(*keys, h=body.hash_rows(seed=1))

        # rows present in both whose content differs (every column but where media files landed)
        both = hashed(got).join(hashed(want), on=keys, how="inner")
        mismatched = both.filter(pl.col("h") != pl.col("h_right")).height
        wanted = pl.col("media_type").is_in(MEDIA)
        return {
            "messages_expected": want.height,
            "messages_exported": got.height,
            "duplicates": dups,
            "missing": missing,
            "unexpected": extra,
            "mismatched": mismatched,
            "media_expected": want.filter(wanted & pl.col("media_path").is_not_null()).height,
            "media_with_path": got.filter(wanted & pl.col("media_path").is_not_null()).height,
            "media_errors": got.filter(wanted & pl.col("media_error").is_not_null())["media_error"]
            .str.slice(0, 40)
            .value_counts()
            .rows(),
        }

    def scan_secrets(self) -> tuple[int, list[str]]:
        hits = []
        for path in self.work.rglob("*"):
            if not path.is_file():
                continue
            data = path.read_bytes()
            hits += [
                f"{name} in {path.relative_to(self.work)}" for name, s in self.secrets.items() if s in data
            ]
        return len(hits), hits[:20]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=50_000, help="channel messages (default 50000)")
    ap.add_argument("--group-messages", type=int, default=2_000, help="group messages, with media downloads")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2_000, help="rows per committed part")
    ap.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    ap.add_argument("--memory-messages", type=int, default=1_000_000, help="0 skips the memory run")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory, removed")
    ap.add_argument("--child-export", metavar="SPEC", help=argparse.SUPPRESS)
    ap.add_argument("--child-memory", nargs=2, metavar=("N", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_export:
        return child_export(args.child_export)
    if args.child_memory:
        return child_memory(int(args.child_memory[0]), args.child_memory[1])

    args.seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tgkit-bench-faults-"))
    try:
        emit(event="start", seed=args.seed, messages=args.messages, group_messages=args.group_messages,
             kills=args.kills, batch=args.batch, workdir=str(work))  # fmt: skip
        stats = Parent(args, work).run()
        emit(event="storm", **stats)
        memory: dict[str, Any] = {}
        if args.memory_messages:
            out = work / "memory"
            cmd = [sys.executable, __file__, "--child-memory", str(args.memory_messages), str(out)]
            done = subprocess.run(cmd, capture_output=True, check=True)
            memory = json.loads(done.stdout.decode().splitlines()[-1])
            emit(event="memory", **memory)
            shutil.rmtree(out, ignore_errors=True)
        summary = {k: stats[k] for k in (
            "messages_expected", "messages_exported", "duplicates", "missing", "mismatched", "kills",
            "restarts", "flood_waits", "flood_waits_too_long", "disconnects", "server_errors", "expired_refs",
            "secrets_leaked", "storm_seconds")}  # fmt: skip
        summary.update({k: memory.get(k) for k in ("memory_messages", "rss_growth_mb", "rss_peak_mb")})
        summary["seed"] = args.seed
        emit(**summary)
        ok = stats["missing"] == 0 and stats["duplicates"] == 0 and stats["secrets_leaked"] == 0
        return 0 if ok else 1
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
