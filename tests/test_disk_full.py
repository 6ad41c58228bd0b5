"""A write that fails (a file size limit standing in for a full disk) ends an export with one clear error,
keeps what was committed, and a rerun completes the dataset with no gap and no duplicate.

The limit is RLIMIT_FSIZE set inside a child process (with SIGXFSZ ignored, so the write fails with
EFBIG instead of killing the process): the same as ``(ulimit -f N; trap '' XFSZ; tgkit demo ...)``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers_export import assert_same_rows, export_world

from tgkit.dataset import MANIFEST_NAME, ChatPartition
from tgkit.offline import CHANNEL_ID, World

resource = pytest.importorskip("resource", reason="needs RLIMIT_FSIZE (POSIX)")

HERE = Path(__file__).parent
ROOT = HERE.parent
SEED, MESSAGES, BATCH = 21, 3000, 250

# Runs argv[2:] as `python -m <argv[1]>` (or a script path) under a file size limit of argv[0] bytes.
_LIMITED = """
import resource, runpy, signal, sys
limit = int(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
target, sys.argv = sys.argv[2], sys.argv[2:]
if target.endswith(".py"):
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def _limited(limit: int, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGKIT_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(HERE), env.get("PYTHONPATH")) if p)
    env["TGKIT_PACING"] = "off"
    env["TGKIT_CACHE_DIR"] = str(cwd / "cache")
    return subprocess.run(
        [sys.executable, "-c", _LIMITED, str(limit), *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def _world() -> World:
    return World(seed=SEED, channel_messages=MESSAGES, group_messages=10, media=False)


def test_cli_demo_on_a_full_disk_prints_one_line_naming_the_path(tmp_path: Path) -> None:
    out = tmp_path / "x"
    proc = _limited(
        200 * 1024, "tgkit.cli", "demo", "--out", str(out), "--no-media", "--no-plots", cwd=tmp_path
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.replace("\r", "\n").splitlines() if ln.startswith("tgkit:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert str(out) in lines[0] and "file too large" in lines[0]


def test_export_stopped_by_a_size_limit_resumes_without_gap_or_duplicate(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    asyncio.run(export_world(_world(), ref, batch_size=BATCH))
    cp = ChatPartition(ref, CHANNEL_ID).load()
    assert cp is not None
    sizes = [(ChatPartition(ref, CHANNEL_ID).dir / name).stat().st_size for name in cp.parts]
    # a limit that the first k parts fit under and part k+1 does not: the run must commit k parts
    k = next(i for i in range(1, len(sizes)) if sizes[i] > max(sizes[:i]))
    limit = max(sizes[:k])
    out = tmp_path / "out"
    proc = _limited(
        limit, str(HERE / "helpers_export.py"), str(out), str(SEED), str(MESSAGES), str(BATCH), cwd=tmp_path
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tgkit.errors.ExportError: cannot write ") and str(out) in last, proc.stderr[
        -2000:
    ]
    partial = ChatPartition(out, CHANNEL_ID).load()
    assert partial is not None and len(partial.parts) == k
    assert partial.parts == cp.parts[:k]
    assert partial.rows == sum(
        pq.read_metadata(ChatPartition(ref, CHANNEL_ID).dir / n).num_rows for n in cp.parts[:k]
    )
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["chats"][str(CHANNEL_ID)]["rows"] == partial.rows

    again = asyncio.run(export_world(_world(), out, batch_size=BATCH))
    assert again.resumed_from == partial.last_id and again.messages == cp.rows - partial.rows
    assert_same_rows(out, ref)
