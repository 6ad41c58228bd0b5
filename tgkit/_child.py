"""One way to run a piece of tgkit in a child process (libva queries, trial encodes, transcodes).

A crash (a segfault in a driver or FFmpeg) or a hang stays in the child: the parent gets a reason, never
a dead process.  The child is ``python -c "import <module>; sys.exit(<module>._child_main())"``, given the
task as JSON on stdin; it prints its reply as one JSON object line (the last one counts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ChildResult", "child_env", "run_child"]


def child_env() -> dict[str, str]:
    """The parent's environment, with this tgkit first on ``PYTHONPATH`` and libva quiet."""
    env = dict(os.environ)
    pkg_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    env.setdefault("LIBVA_MESSAGING_LEVEL", "1")  # errors only; LIBVA_DRIVER_NAME passes through
    return env


@dataclass(slots=True)
class ChildResult:
    """What a child left: its reply (the last JSON object line on stdout) or why there is none."""

    reply: dict[str, Any] | None
    returncode: int
    timed_out: bool = False
    stderr_tail: str = ""  # the last line the child wrote on stderr (at most 300 characters)

    @property
    def problem(self) -> str:
        """Why the child failed, in a few words; "" when it replied and exited 0."""
        if self.timed_out:
            return "timed out"
        if self.returncode < 0:
            return f"crashed (signal {-self.returncode})"
        if self.returncode != 0 or self.reply is None:
            return f"exit {self.returncode}: {self.stderr_tail or 'no output'}"
        return ""


def run_child(module: str, task: dict[str, Any], timeout: float) -> ChildResult:
    """Run ``module._child_main()`` in a fresh interpreter with ``task``; killed after ``timeout`` s."""
    cmd = [sys.executable, "-c", f"import sys, {module} as m; sys.exit(m._child_main())"]
    try:
        proc = subprocess.run(
            cmd, input=json.dumps(task), capture_output=True, text=True, timeout=timeout, env=child_env()
        )
    except subprocess.TimeoutExpired:
        return ChildResult(None, -9, timed_out=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    tail = (proc.stderr.strip().splitlines() or [""])[-1][:300]
    return ChildResult(json.loads(lines[-1]) if lines else None, proc.returncode, stderr_tail=tail)
