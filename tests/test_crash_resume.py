"""kill -9 at any moment leaves a dataset that opens and a checkpoint that resumes: no gap, no duplicate.

A real subprocess (``tests/helpers_export.py``) exports a seeded world; the parent SIGKILLs it at 20
random moments (after the child has committed a random number of rows, plus a random sub-delay, so
kills land before the first commit, mid-part, mid-rename and mid-checkpoint alike), checks the dataset
after every kill, reruns it, and finally compares it row for row with an uninterrupted export.

The size here keeps the test near a minute on two busy cores; ``benchmarks/bench_faults.py`` runs the
full 50k-message, 20-kill version (plus a fault storm).  Replay a failure with KILL_TEST_SEED=<seed>.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers_export import assert_same_rows, dataset_frame

from tgkit.dataset import CHECKPOINT_NAME, ChatPartition
from tgkit.offline import CHANNEL_ID, World

CHILD = Path(__file__).with_name("helpers_export.py")
MESSAGES = 20_000
BATCH = 1_000
KILLS = 20
LATENCY = 0.01  # s per request: ~10k msg/s, so a 0-0.3 s sub-delay kills within about three parts
WORLD_SEED = 13


def _child(out: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, str(CHILD), str(out), str(WORLD_SEED), str(MESSAGES), str(BATCH), str(LATENCY)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _committed_rows(checkpoint: Path) -> int:
    try:
        return int(json.loads(checkpoint.read_bytes())["rows"])
    except FileNotFoundError:
        return 0


def test_kill_9_at_random_moments_then_resume(tmp_path: Path) -> None:
    seed = int(os.environ.get("KILL_TEST_SEED") or random.SystemRandom().randrange(2**31))
    print(f"kill test seed: {seed} (replay with KILL_TEST_SEED={seed})")
    rng = random.Random(seed)
    expected_ids = list(
        World(seed=WORLD_SEED, channel_messages=MESSAGES, group_messages=10, media=False).ids(CHANNEL_ID)
    )
    out, ref = tmp_path / "killed", tmp_path / "reference"
    reference = _child(ref)  # the uninterrupted export runs beside the kills (the other core)
    checkpoint = ChatPartition(out, CHANNEL_ID).checkpoint_path
    # kill points: committed rows to wait for (ascending, well below the end so every kill hits a
    # live process; a few at 0: killed while starting) and a random sub-delay after that
    targets = sorted(
        0 if rng.random() < 0.15 else rng.randrange(len(expected_ids) * 7 // 10) for _ in range(KILLS)
    )
    kills = []
    try:
        for i, target in enumerate(targets):
            child = _child(out)
            delay = rng.uniform(0, 0.3)
            deadline = time.monotonic() + 60
            while _committed_rows(checkpoint) < target and child.poll() is None:
                assert time.monotonic() < deadline, "the child stopped making progress"
                time.sleep(0.01)
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
            _, err = child.communicate()
            assert child.returncode == -signal.SIGKILL, f"kill {i}: the child exited first: {err.decode()}"
            # after every kill: the checkpoint loads, the dataset opens, and it holds a prefix of the chat
            cp = ChatPartition(out, CHANNEL_ID).load()
            if cp is not None:
                got = dataset_frame(out)["id"].to_list()
                assert got == expected_ids[: len(got)], f"kill {i}: gap or duplicate after {target} rows"
                assert cp.rows == len(got) and (cp.last_id == (got[-1] if got else 0))
                kills.append((target, round(delay, 3), cp.rows))
            else:
                kills.append((target, round(delay, 3), 0))
        final = _child(out)
        _, err = final.communicate(timeout=120)
        assert final.returncode == 0, err.decode()
        _, err = reference.communicate(timeout=120)
        assert reference.returncode == 0, err.decode()
    finally:
        for proc in (reference,):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print("kills (target rows, sub-delay s, rows committed after the kill):", kills)
    assert len(kills) == KILLS
    assert len({rows for *_, rows in kills}) >= 5  # kills spread over the export
    assert_same_rows(out, ref)
    assert dataset_frame(out)["id"].to_list() == expected_ids
    # no temporary or orphan files were left behind by the final run
    part = ChatPartition(out, CHANNEL_ID)
    cp = part.load()
    assert cp is not None
    leftovers = {p.name for p in part.dir.iterdir()} - set(cp.parts)
    leftovers |= {p.name for p in part.state_dir.iterdir()} - {CHECKPOINT_NAME}
    leftovers |= {p.name for p in (out / "_state" / "tmp").iterdir()}
    leftovers |= {p.name for p in (out / "peers").iterdir()} - {cp.peers_file}
    leftovers |= {p.name for p in (out / "chats").iterdir()} - {cp.chat_file}
    assert not leftovers, leftovers


def test_leftovers_of_a_crash_are_ignored_then_removed(tmp_path: Path) -> None:
    """The states a kill can leave, made by hand: an uncommitted part (renamed, checkpoint not yet
    updated), half-written temp files of a part and of the checkpoint."""
    import asyncio

    from helpers_export import export_world

    world = World(seed=WORLD_SEED, channel_messages=600, group_messages=10, media=False)
    asyncio.run(export_world(world, tmp_path, batch_size=200, limit=400))
    chat_dir = ChatPartition(tmp_path, CHANNEL_ID).dir
    committed = dataset_frame(tmp_path)
    part = sorted(chat_dir.glob("part-*.parquet"))[-1]
    orphan = chat_dir / "part-000099.parquet"
    orphan.write_bytes(part.read_bytes())  # a complete part no checkpoint lists
    state = tmp_path / "_state"
    junk = [
        state / "tmp" / f"chat_id={CHANNEL_ID}.part-000003.parquet.x1.tmp",
        state / "tmp" / f"peers.c{CHANNEL_ID}-000009.parquet.x3.tmp",
        state / f"chat_id={CHANNEL_ID}" / f".{CHECKPOINT_NAME}.x2.tmp",
    ]
    for path in junk:
        path.write_bytes(b"half written")
    assert dataset_frame(tmp_path).equals(committed)  # readers see committed parts only
    asyncio.run(export_world(world, tmp_path, batch_size=200))
    assert not orphan.exists() and not any(p.exists() for p in junk)
    assert dataset_frame(tmp_path)["id"].to_list() == list(world.ids(CHANNEL_ID))
