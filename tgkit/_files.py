"""Atomic file writes, the one way tgkit replaces a state file (checkpoint, manifest, caches, metrics).

A temporary file in the same directory is written, fsynced, given its mode, then renamed over the target:
readers see the old file or the new one, never half of one, and a crash leaves at most a ``.tmp`` file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object], *, mode: int = 0o600) -> Path:
    """Call ``write(tmp_path)`` to produce the file (e.g. a Parquet writer), then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> Path:
    """Write ``data`` to ``path`` atomically, created with ``mode`` (0600: state files may hold ids)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), mode=mode)
