"""The Parquet dataset: three tables every engine reads by its default call, a checkpoint per chat as the
commit point, a manifest, and crash-safe upgrade of the older layout.

Layout 2 (``_manifest.json`` says ``"layout": 2``)::

    OUT/
      messages/chat_id=<id>/part-NNNNNN.parquet   one row per message (hive key chat_id, not stored in the file)
      peers/c<chat_id>-NNNNNN.parquet             who the export of <chat_id> saw (one row per peer)
      chats/c<chat_id>-NNNNNN.parquet             one row: the chat's metadata and the export's own facts
      _manifest.json                              summary of every chat (atomic rewrite, under a lock)
      _state/chat_id=<id>/checkpoint.json         the commit point of one chat (parts, peers and chats files)
      _state/tmp/                                 files being written (renamed into place when complete)
      _state/lock                                 flock: manifest updates and the layout upgrade
      _media/  _metrics/  _plots/                 downloaded files, metrics, plots

Everything that is not a table starts with ``_``, and a table folder holds only complete Parquet files:
pyarrow.dataset (hive), Spark, DuckDB ``read_parquet('OUT/messages/**/*.parquet', hive_partitioning=true)``
and Polars ``scan_parquet('OUT/messages')`` read exactly the committed rows.  ``chat_id`` is not stored in
the message files: every reader takes it from the folder name, so no reader meets two types for it
(pyarrow infers int32 from a path and refused to merge it with the files' int64).

A file exists for readers only once its chat's checkpoint lists it.  A crash between the rename of a
file and the checkpoint update leaves an uncommitted file: :func:`open_dataset` ignores it and the next
write to that chat removes it (raw readers see it until then).  Each chat's peers and chats files carry
its name, so processes exporting different chats into one dataset never write the same file; the
manifest is rewritten under ``_state/lock``.

Layout 1 (``OUT/chat_id=<id>/part-*.parquet`` + ``_checkpoint.json``, ``OUT/manifest.json``) still opens;
:func:`prepare_output_dir` (every writer calls it) upgrades it in place, one chat at a time, each chat
committed by its new checkpoint (see :func:`upgrade`).
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._files import atomic_write_bytes
from .errors import CacheError, ConfigError, ExportError
from .records import (
    CHAT_COLUMNS,
    MESSAGE_COLUMNS,
    PEER_COLUMNS,
    arrow_schema,
    polars_schema,
    rows_to_arrow,
    table_polars_schema,
    table_schema,
)

__all__ = [
    "CHECKPOINT_NAME",
    "LAYOUT",
    "MANIFEST_NAME",
    "MEDIA_DIR",
    "METRICS_DIR",
    "PLOTS_DIR",
    "TABLES",
    "ChatPartition",
    "ChatPrivacy",
    "Checkpoint",
    "check_output_dir",
    "open_dataset",
    "prepare_output_dir",
    "read_manifest",
    "update_manifest",
    "upgrade",
    "with_names",
]

FORMAT = "tgkit.dataset"
VERSION = 2  # of the checkpoint and manifest files
LAYOUT = 2
TABLES = ("messages", "peers", "chats")
MESSAGES_DIR, PEERS_DIR, CHATS_DIR = TABLES
STATE_DIR = "_state"
MEDIA_DIR = "_media"
METRICS_DIR = "_metrics"
PLOTS_DIR = "_plots"
CHECKPOINT_NAME = "checkpoint.json"
MANIFEST_NAME = "_manifest.json"
LEGACY_CHECKPOINT_NAME = "_checkpoint.json"  # layout 1: OUT/chat_id=<id>/_checkpoint.json
LEGACY_MANIFEST_NAME = "manifest.json"
LEGACY_PLOTS_DIR = "plots"
_MAX_STATE_BYTES = 64 * 1024 * 1024
_SIDE_FILE = re.compile(r"^c(\d+)-(\d{6})\.parquet$")
# zstd level 1 with dictionaries only where values repeat: measured on the demo mix, writing takes
# 2.4 us/msg instead of 4.3 (level 3, dictionaries everywhere) for 63 instead of 59 bytes per message.
DICTIONARY_COLUMNS = [
    "sender_kind", "fwd_peer_kind", "post_author", "media_type", "media_mime", "service_action", "fwd_name",
    "kind", "source", "lang_code", "type",
]  # fmt: skip
_FILE_COLUMNS = [c for c in MESSAGE_COLUMNS if c != "chat_id"]  # chat_id lives in the folder name


def _read_json_state(path: Path, what: str) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > _MAX_STATE_BYTES:
            raise CacheError(f"{what} {path} is {size} bytes: too large to be a tgkit {what}")
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except CacheError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CacheError(
            f"{what} {path} is unreadable or corrupt ({type(exc).__name__}); move it aside to start over"
        ) from exc
    if not isinstance(data, dict):
        raise CacheError(f"{what} {path} is not a JSON object")
    return data


@dataclass(slots=True)
class Checkpoint:
    """Where an export of one chat stands: the committed files, and which message ids are complete.

    ``ranges`` are sorted, disjoint, closed id intervals ``[lo, hi]`` whose every message (that exists
    on Telegram) is committed: what history runs fetched, so a later run fetches only the gaps.  Rows
    outside them are comments fetched through a channel (``threads``: channel post id ->
    ``[replies seen, largest comment id, id of the post's copy here]``).  A checkpoint written before
    ranges existed (only ``last_id``) means ``[[1, last_id]]``: every run then started at the first
    message.  ``ordered`` is False once a part was written below an earlier one (a backfill, comments):
    readers then sort the chat's rows by id."""

    chat_id: int
    last_id: int = 0
    parts: list[str] = field(default_factory=list)
    rows: int = 0
    peer: str | None = None
    title: str | None = None
    updated_at: float = 0.0
    refreshed_until: int = 0  # date (epoch s) up to which a refresh run re-read messages
    first_id: int = 0  # smallest committed message id (0: none yet)
    peers_file: str | None = None  # this chat's file under peers/
    chat_file: str | None = None  # this chat's file under chats/
    ranges: list[list[int]] = field(default_factory=list)  # complete id intervals [lo, hi], sorted
    threads: dict[int, list[int]] = field(default_factory=dict)  # post -> [replies, max comment id, copy id]
    ordered: bool = True  # parts in id order, none overlapping (else readers sort)

    def covers(self, msg_id: int) -> bool:
        """Whether ``msg_id`` lies in a complete range."""
        i = bisect.bisect_right(self.ranges, [msg_id, _INF]) - 1
        return i >= 0 and self.ranges[i][0] <= msg_id <= self.ranges[i][1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "kind": "checkpoint", "chat_id": self.chat_id,
            "last_id": self.last_id, "parts": list(self.parts), "rows": self.rows, "peer": self.peer,
            "title": self.title, "updated_at": self.updated_at, "refreshed_until": self.refreshed_until,
            "first_id": self.first_id, "peers_file": self.peers_file, "chat_file": self.chat_file,
            "ranges": [list(r) for r in self.ranges],
            "threads": {str(k): list(v) for k, v in sorted(self.threads.items())}, "ordered": self.ordered,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "checkpoint") -> Checkpoint:
        if data.get("format") != FORMAT or data.get("kind") != "checkpoint":
            raise CacheError(f"{source} is not a tgkit checkpoint")
        if data.get("version") not in (1, VERSION):
            raise CacheError(
                f"{source} has version {data.get('version')!r}; this tgkit reads 1 and {VERSION}"
            )
        try:
            cp = cls(
                chat_id=_int(data["chat_id"]), last_id=_int(data["last_id"]),
                parts=[_part_name(p) for p in data["parts"]], rows=_int(data["rows"]),
                peer=_opt_str(data.get("peer")), title=_opt_str(data.get("title")),
                updated_at=float(data.get("updated_at") or 0.0),
                refreshed_until=_int(data.get("refreshed_until") or 0),
                first_id=_int(data.get("first_id") or 0),
                peers_file=_side_name(data.get("peers_file")), chat_file=_side_name(data.get("chat_file")),
            )  # fmt: skip
            if "ranges" in data:
                cp.ranges = _ranges(data["ranges"])
            elif cp.last_id:  # written before ranges: every run started at the first message
                cp.ranges = [[1, cp.last_id]]
            cp.threads = _threads(data.get("threads") or {})
            ordered = data.get("ordered", True)
            if not isinstance(ordered, bool):
                raise TypeError("ordered must be a boolean")
            cp.ordered = ordered
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheError(f"{source} is malformed: {exc}") from exc
        if cp.last_id < 0 or cp.rows < 0:
            raise CacheError(f"{source} is malformed: negative counts")
        return cp


_INF = 1 << 62


def _ranges(v: Any) -> list[list[int]]:
    """Validated complete ranges: sorted, disjoint, non-adjacent ``[lo, hi]`` with ``1 <= lo <= hi``."""
    if not isinstance(v, list):
        raise TypeError("ranges must be a list")
    out: list[list[int]] = []
    for r in v:
        if not isinstance(r, list) or len(r) != 2:
            raise ValueError(f"bad id range {r!r}")
        lo, hi = _int(r[0]), _int(r[1])
        if lo < 1 or hi < lo or (out and lo <= out[-1][1] + 1):
            raise ValueError(f"id ranges not sorted and disjoint at {r!r}")
        out.append([lo, hi])
    return out


def _threads(v: Any) -> dict[int, list[int]]:
    if not isinstance(v, dict):
        raise TypeError("threads must be an object")
    out: dict[int, list[int]] = {}
    for k, t in v.items():
        if not isinstance(t, list) or len(t) != 3:
            raise ValueError(f"bad thread entry {k!r}")
        out[int(k)] = [_int(x) for x in t]
    return out


def add_range(ranges: Sequence[Sequence[int]], lo: int, hi: int) -> list[list[int]]:
    """``ranges`` with ``[lo, hi]`` added (merged with overlapping and adjacent ones)."""
    if hi < lo:
        return [list(r) for r in ranges]
    out: list[list[int]] = []
    for a, b in ranges:
        if b < lo - 1 or a > hi + 1:
            out.append([a, b])
        else:
            lo, hi = min(lo, a), max(hi, b)
    out.append([lo, hi])
    out.sort()
    return out


def missing_ranges(ranges: Sequence[Sequence[int]], lo: int) -> list[tuple[int, int | None]]:
    """The gaps at or above ``lo`` (``(a, b)`` closed, the last ``(a, None)``: up to the newest)."""
    out: list[tuple[int, int | None]] = []
    at = lo
    for a, b in ranges:
        if b < at:
            continue
        if a > at:
            out.append((at, a - 1))
        at = max(at, b + 1)
    out.append((at, None))
    return out


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {type(v).__name__}")
    return v


def _opt_str(v: Any) -> str | None:
    if v is not None and not isinstance(v, str):
        raise TypeError("expected a string")
    return v


def _part_name(v: Any) -> str:
    if (
        not isinstance(v, str)
        or "/" in v
        or "\\" in v
        or not v.startswith("part-")
        or not v.endswith(".parquet")
    ):
        raise ValueError(f"bad part name {v!r}")
    return v


def _side_name(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not _SIDE_FILE.match(v):
        raise ValueError(f"bad table file name {v!r}")
    return v


def check_output_dir(out: str | os.PathLike[str]) -> Path:
    """Make sure ``out`` can hold a dataset (before any request is sent); returns it as an absolute Path.

    The root is resolved once, here, so every path derived from it during a run (media files, metrics)
    compares and relativises against the same absolute base, whatever the working directory.
    """
    path = Path(out).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ExportError(f"output path {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tgkit-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ExportError(f"output directory {path} is not writable: {exc.strerror or exc}") from exc
    return path


def prepare_output_dir(out: str | os.PathLike[str], *, privacy: Mapping[str, Any] | None = None) -> Path:
    """:func:`check_output_dir`, then upgrade a layout-1 dataset found there to layout 2 (crash-safe).

    ``privacy``: the manifest's ``"privacy"`` block the writer will record (a pseudonymised export,
    see :mod:`tgkit.privacy`), or None for plain rows.  A dataset is never continued with another key,
    nor plain rows mixed with pseudonymised ones (:class:`~tgkit.errors.ConfigError`, before any request)."""
    root = check_output_dir(out)
    try:
        upgrade(root)
    except OSError as exc:
        raise ExportError(f"upgrading the dataset at {root} failed: {exc.strerror or exc}") from exc
    _check_privacy(root, privacy)
    return root


def _check_privacy(root: Path, privacy: Mapping[str, Any] | None) -> None:
    try:
        manifest = read_manifest(root)
    except CacheError:
        # The manifest is rebuilt from the checkpoints, but it is the only record of pseudonymisation:
        # with no chat committed yet there is nothing to mix, otherwise we cannot tell and must not guess.
        if _v2_chats(root) or _legacy_chats(root):
            raise
        manifest = {}
    found = manifest.get("privacy")
    found = found if isinstance(found, dict) and found.get("pseudonymised") else None
    if privacy is None:
        if found is not None:
            raise ConfigError(
                f"{root} holds a pseudonymised dataset (key fingerprint {found.get('key_fingerprint')}); "
                "continue it with pseudonymise=<the key file it was made with>, or write elsewhere"
            )
        return
    if found is not None:
        if found.get("key_fingerprint") != privacy.get("key_fingerprint"):
            raise ConfigError(
                f"{root} was pseudonymised with another key (fingerprint {found.get('key_fingerprint')}, "
                f"this key's is {privacy.get('key_fingerprint')}); use the key file it was made with"
            )
        if list(found.get("keep") or []) != list(privacy.get("keep") or []):
            raise ConfigError(
                f"{root} was pseudonymised with keep={tuple(found.get('keep') or [])}, "
                f"not {tuple(privacy.get('keep') or [])}"
            )
        return
    if manifest.get("chats") or _v2_chats(root) or _legacy_chats(root):
        raise ConfigError(
            f"{root} holds a dataset that is not pseudonymised; refusing to mix it with pseudonyms"
        )


_held = threading.local()  # roots whose lock this thread holds (the lock is re-entrant per thread)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive flock on ``OUT/_state/lock``: one process (and thread) at a time rewrites shared
    files.  Re-entrant within a thread (the upgrade commits chats while holding it)."""
    held: set[Path] = _held.__dict__.setdefault("roots", set())
    key = Path(root).resolve()
    if key in held:
        yield
        return
    state = root / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(key)
        yield
    finally:
        held.discard(key)
        os.close(fd)  # closing releases the lock


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _stage(root: Path, table: pa.Table, final: Path) -> int:
    """Write ``table`` to ``final``: a temporary file under ``_state/tmp`` (never inside a table folder,
    where Polars would trip over it), fsynced, renamed into place.  Returns the bytes written."""
    tmp_dir = root / STATE_DIR / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{final.parent.name}.{final.name}.", suffix=".tmp", dir=tmp_dir)
    os.close(fd)
    try:
        names = set(table.column_names)
        pq.write_table(table, tmp, compression="zstd", compression_level=1, write_statistics=True,
                       use_dictionary=[c for c in DICTIONARY_COLUMNS if c in names])  # fmt: skip
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(final.parent)
    return final.stat().st_size


def _now() -> int:
    return int(time.time())


class ChatPrivacy(Protocol):
    """What a :class:`ChatPartition` asks of a pseudonymiser (``Pseudonymiser.for_chat``, see
    :mod:`tgkit.privacy`): every row passes through it before it is written, so nothing identifying
    reaches the disk.  Rows handed to the partition stay plain; what it reads back is already private."""

    chat_id: int  # the id the chat is stored under (its pseudonym for a private chat)

    def messages(self, frame: Any) -> Any:
        """A message frame (Arrow or Polars, any subset of the columns), pseudonymised; a ``chat_id``
        column holds :attr:`chat_id`."""
        ...

    def peers(self, rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
        """Peers rows (``PEER_COLUMNS`` order, dates as epoch seconds), pseudonymised."""
        ...

    def chat(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Fields of this chat's chats row (``CHAT_COLUMNS`` names), pseudonymised."""
        ...

    def label(self, peer: str | None, title: str | None) -> tuple[str | None, str | None]:
        """The checkpoint's and manifest's ``peer`` and ``title`` for this chat."""
        ...

    def manifest(self) -> dict[str, Any]:
        """The manifest's ``"privacy"`` block."""
        ...

    def manifest_extra(self, extra: dict[str, Any]) -> dict[str, Any]:
        """The writer's extra manifest fields for this chat, without what could identify."""
        ...


class ChatPartition:
    """One chat's share of a dataset, and the one writer both ``export_chat`` and ``import_desktop`` use:
    its message parts, its peers and chats rows, its checkpoint (the commit point), orphan cleanup and
    the patches of committed parts (media retries, refreshes).

    Peers seen while writing (:meth:`observe_peers`) and the chat's metadata (:meth:`set_chat`) are
    committed with the next part (or by :meth:`commit_tables`): one peers file and one chats file per
    chat, rewritten under a new name and swapped by the checkpoint.

    ``privacy`` (a :class:`ChatPrivacy`, from ``Pseudonymiser.for_chat``) pseudonymises every message,
    peers and chats row, the checkpoint's and manifest's labels before they are written; the chat is
    then stored under ``privacy.chat_id`` and the manifest records the privacy block."""

    def __init__(
        self, root: Path, chat_id: int, *, source: str = "api", privacy: ChatPrivacy | None = None
    ) -> None:
        self.root = Path(root)
        self.privacy = privacy
        if privacy is not None:
            chat_id = privacy.chat_id
        self.chat_id = chat_id
        self.source = source
        self.dir = self.root / MESSAGES_DIR / f"chat_id={chat_id}"
        self.state_dir = self.root / STATE_DIR / f"chat_id={chat_id}"
        self.checkpoint_path = self.state_dir / CHECKPOINT_NAME
        self.manifest_extra: dict[str, Any] = {}
        self._peers: dict[tuple[str, int], list[Any]] = {}
        self._peers_dirty = False
        self._chat: dict[str, Any] = {}

    # -- loading and starting

    def load(self) -> Checkpoint | None:
        """The committed checkpoint, or None for a fresh chat.  Raises CacheError if it is corrupt or
        belongs to another chat; nothing is overwritten in that case."""
        return _load_checkpoint(self.checkpoint_path, self.chat_id, self.dir)

    def start(self, checkpoint: Checkpoint | None) -> Checkpoint:
        """Prepare for writing: remove the files no checkpoint committed (parts, peers and chats files of
        this chat) and load the committed peers and chat metadata, so later commits extend them."""
        cp = checkpoint or Checkpoint(self.chat_id)
        if self.privacy is not None:  # the marker goes first: no checkpoint of this dataset without it
            _mark_private(self.root, self.privacy.manifest())
        if self.dir.is_dir():
            committed = set(cp.parts)
            for entry in self.dir.iterdir():
                if entry.name not in committed:
                    _remove(entry)
        for table, keep in ((PEERS_DIR, cp.peers_file), (CHATS_DIR, cp.chat_file)):
            for entry in self._side_files(table):
                if entry.name != keep:
                    _remove(entry)
        if self.state_dir.is_dir():  # a checkpoint write a kill interrupted
            for entry in self.state_dir.glob(f".{CHECKPOINT_NAME}.*.tmp"):
                _remove(entry)
        tmp_dir = self.root / STATE_DIR / "tmp"
        if tmp_dir.is_dir():  # what a killed write of this chat left (other chats' writers keep theirs)
            mine = (
                f"chat_id={self.chat_id}.",
                f"{PEERS_DIR}.c{self.chat_id}-",
                f"{CHATS_DIR}.c{self.chat_id}-",
            )
            for entry in tmp_dir.iterdir():
                if entry.name.startswith(mine):
                    _remove(entry)
        self._peers.clear()
        self._peers_dirty = False
        if cp.peers_file:
            for row in pq.read_table(self.root / PEERS_DIR / cp.peers_file).to_pylist():
                values = [row[c] for c in PEER_COLUMNS]
                for i, c in enumerate(PEER_COLUMNS):
                    if c in ("first_seen", "last_seen") and values[i] is not None:
                        values[i] = int(values[i].timestamp())
                self._peers[(values[1], values[0])] = values
        self._chat = {}
        if cp.chat_file:
            rows = pq.read_table(self.root / CHATS_DIR / cp.chat_file).to_pylist()
            if rows:
                self._chat = {k: _epoch(v) for k, v in rows[0].items() if v is not None}
        return cp

    def _side_files(self, table: str) -> list[Path]:
        folder = self.root / table
        if not folder.is_dir():
            return []
        return [p for p in folder.glob(f"c{self.chat_id}-*.parquet") if _SIDE_FILE.match(p.name)]

    # -- what gets committed with the next part

    def observe_peers(self, rows: Sequence[Sequence[Any]]) -> None:
        """Record peers rows (``PEER_COLUMNS`` order, from :func:`tgkit.convert.peer_rows` or an import):
        the latest observation wins, ``first_seen`` keeps the earliest; a ``min`` observation (Telegram
        sent only part of the object) never erases what a full one told."""
        if self.privacy is not None:
            rows = self.privacy.peers(rows)
        book = self._peers
        i_first, i_last, i_min = (PEER_COLUMNS.index(c) for c in ("first_seen", "last_seen", "min"))
        for row in rows:
            key = (row[1], row[0])
            old = book.get(key)
            new = list(row)
            if old is not None:
                if new[i_min]:
                    new = [o if v is None else v for v, o in zip(new, old)]
                    new[i_min] = old[i_min]
                new[i_first] = min(old[i_first], new[i_first])
                new[i_last] = max(old[i_last], new[i_last])
                if new == old:
                    continue
            book[key] = new
            self._peers_dirty = True

    def set_chat(self, **fields: Any) -> None:
        """Metadata for this chat's row in ``chats`` (``CHAT_COLUMNS`` names; None values are ignored)."""
        unknown = set(fields) - set(CHAT_COLUMNS)
        if unknown:
            raise ConfigError(f"unknown chats columns: {', '.join(sorted(unknown))}")
        if self.privacy is not None:
            fields = self.privacy.chat(fields)
        self._chat.update({k: v for k, v in fields.items() if v is not None})

    def chat_row(self, cp: Checkpoint) -> tuple:
        row = dict(self._chat)
        row.update(
            id=self.chat_id, first_id=cp.first_id or None, last_id=cp.last_id or None, rows=cp.rows,
            last_export=_now(), source=row.get("source") or self.source,
            refreshed_until=cp.refreshed_until or None,
        )  # fmt: skip
        if row.get("title") is None and cp.title is not None:
            row["title"] = cp.title
        return tuple(row.get(c) for c in CHAT_COLUMNS)

    # -- committing

    def commit(self, cp: Checkpoint) -> None:
        """Make ``cp`` the committed state: the checkpoint (atomic rewrite), then the manifest."""
        self._label(cp)
        extra = self.manifest_extra or None
        privacy = None
        if self.privacy is not None:
            extra = self.privacy.manifest_extra(dict(extra or {})) or None
            privacy = self.privacy.manifest()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.checkpoint_path, json.dumps(cp.to_dict(), indent=1).encode())
        _fsync_dir(self.state_dir)
        update_manifest(self.root, cp, extra=extra, privacy=privacy)

    def _label(self, cp: Checkpoint) -> None:
        if self.privacy is not None:
            cp.peer, cp.title = self.privacy.label(cp.peer, cp.title)

    def _commit_with_tables(self, cp: Checkpoint, dropped: Sequence[Path] = ()) -> Checkpoint:
        """Write the peers file (if new peers were seen) and the chats row, commit ``cp`` listing them,
        then remove what it superseded (``dropped`` and the previous side files)."""
        self._label(cp)  # the chats row falls back to the checkpoint's title
        old = [self.root / PEERS_DIR / cp.peers_file] if cp.peers_file and self._peers_dirty else []
        if self._peers_dirty:
            name = self._next_side_name(PEERS_DIR, cp.peers_file)
            table = rows_to_arrow("peers", sorted(self._peers.values(), key=lambda r: (r[1], r[0])))
            _stage(self.root, table, self.root / PEERS_DIR / name)
            cp.peers_file = name
        if cp.chat_file:
            old.append(self.root / CHATS_DIR / cp.chat_file)
        name = self._next_side_name(CHATS_DIR, cp.chat_file)
        _stage(self.root, rows_to_arrow("chats", [self.chat_row(cp)]), self.root / CHATS_DIR / name)
        cp.chat_file = name
        self.commit(cp)
        self._peers_dirty = False
        for path in (*old, *dropped):
            with contextlib.suppress(OSError):
                path.unlink()
        return cp

    def _next_side_name(self, table: str, current: str | None) -> str:
        seq = int(current[-14:-8]) + 1 if current else 1
        return f"c{self.chat_id}-{seq:06d}.parquet"

    def commit_tables(self, cp: Checkpoint) -> Checkpoint:
        """Commit the peers and chats rows without a new part (the end of a run, a title change)."""
        new = _copy(cp)
        new.updated_at = time.time()
        return self._commit_with_tables(new)

    def next_part_name(self, cp: Checkpoint) -> str:
        seq = 1 + max((int(p[5:11]) for p in cp.parts if p[5:11].isdigit()), default=0)
        return f"part-{seq:06d}.parquet"

    def write_part(
        self,
        cp: Checkpoint,
        table: pa.Table,
        *,
        last_id: int,
        covered: Sequence[tuple[int, int]] | None = None,
        threads: dict[int, list[int]] | None = None,
    ) -> tuple[Checkpoint, int]:
        """Write a part and commit it (with the peers and chats rows) in the checkpoint; returns the new
        checkpoint and the bytes written.  ``table`` has the message schema (its ``chat_id`` column is
        this chat's id and is not stored: the folder name carries it).

        ``covered``: the id ranges this part completes (history pages fetched without a gap); by
        default ``[(1, last_id)]``, what a writer that always starts at the first message completes
        (imports).  Comments pass ``covered=()`` and their ``threads`` entries.  The caller guarantees
        no row's id is already committed.  With ``privacy``, ``table`` is
        plain and is pseudonymised here."""
        if self.privacy is not None:
            table = self.privacy.messages(table)
        name = self.next_part_name(cp)
        nbytes = self._stage_part(table, name)
        new = _copy(cp)
        new.parts.append(name)
        new.rows += table.num_rows
        new.last_id = max(cp.last_id, last_id)
        if table.num_rows:
            low = pc.min(table["id"]).as_py()
            new.first_id = min(cp.first_id, low) if cp.first_id else low
            if cp.parts and low < cp.last_id:
                new.ordered = False  # below an earlier part: readers sort
        for lo, hi in [(1, last_id)] if covered is None else covered:
            new.ranges = add_range(new.ranges, lo, hi)
        if threads:
            new.threads.update(threads)
        new.updated_at = time.time()
        return self._commit_with_tables(new), nbytes

    def mark_complete(
        self,
        cp: Checkpoint,
        covered: Sequence[tuple[int, int]] = (),
        *,
        threads: dict[int, list[int]] | None = None,
    ) -> Checkpoint:
        """Commit complete id ranges (or comment threads) that brought no rows (every message in them
        deleted or already committed), with the peers and chats rows."""
        new = _copy(cp)
        for lo, hi in covered:
            new.ranges = add_range(new.ranges, lo, hi)
            new.last_id = max(new.last_id, hi)
        if threads:
            new.threads.update(threads)
        new.updated_at = time.time()
        return self._commit_with_tables(new)

    def set_run(self, *, status: str | None, since: int | None, until: int | None) -> None:
        """The chats row's ``status`` and window (``since``/``until``, epoch seconds; None clears)."""
        for key, value in (("status", status), ("since", since), ("until", until)):
            if value is None:
                self._chat.pop(key, None)
            else:
                self._chat[key] = value

    def committed_ids(self, cp: Checkpoint, *, outside_ranges: bool = False) -> set[int]:
        """Ids of the committed rows (only those outside the complete ranges: comments)."""
        if not cp.parts:
            return set()
        ids = pl.read_parquet([str(self.dir / p) for p in cp.parts], columns=["id"])["id"].to_list()
        return {i for i in ids if not cp.covers(i)} if outside_ranges else set(ids)

    def replace_parts(self, cp: Checkpoint, table: pa.Table, *, last_id: int) -> tuple[Checkpoint, int]:
        """Compact: write ``table`` as one new part that replaces every committed part (refresh runs).

        The new checkpoint is the commit point; old parts are removed after it (or by the next start)."""
        name = self.next_part_name(cp)  # numbered after the old parts, so never one of them
        nbytes = self._stage_part(table, name)
        new = _copy(cp)
        new.parts, new.rows, new.last_id = [name], table.num_rows, max(cp.last_id, last_id)
        new.first_id = pc.min(table["id"]).as_py() if table.num_rows else 0
        new.ordered = True  # the caller hands the rows sorted by id
        new.updated_at = time.time()
        return self._commit_with_tables(new, [self.dir / p for p in cp.parts]), nbytes

    def swap_part(self, cp: Checkpoint, old: str, table: pa.Table) -> tuple[Checkpoint, int]:
        """Replace committed part ``old`` by ``table`` (same rows, corrected values), keeping its place in
        the part order; the checkpoint commits the swap, then the old file is removed (or by the next start)."""
        if old not in cp.parts:
            raise CacheError(f"part {old} is not committed in {self.checkpoint_path}")
        name = self.next_part_name(cp)
        nbytes = self._stage_part(table, name)
        new = _copy(cp)
        new.parts = [name if p == old else p for p in cp.parts]
        new.updated_at = time.time()
        return self._commit_with_tables(new, [self.dir / old]), nbytes

    def _stage_part(self, table: pa.Table, name: str) -> int:
        if "chat_id" in table.column_names:
            ids = table["chat_id"]
            if table.num_rows and (
                pc.min(ids).as_py() != self.chat_id or pc.max(ids).as_py() != self.chat_id
            ):
                raise ExportError(f"rows of another chat in a part of chat {self.chat_id}")
            table = table.drop_columns(["chat_id"])
        return _stage(self.root, table, self.dir / name)

    # -- reading and patching committed parts

    def read(self, cp: Checkpoint, name: str | None = None) -> pl.DataFrame:
        """The committed rows (or part ``name``'s), typed, with ``chat_id``."""
        parts = [name] if name is not None else cp.parts
        if not parts:
            return pl.DataFrame(schema=polars_schema())
        df = pl.read_parquet([str(self.dir / p) for p in parts])
        if name is None and not cp.ordered:
            df = df.sort("id")
        return df.with_columns(chat_id=pl.lit(self.chat_id, pl.Int64)).select(MESSAGE_COLUMNS)

    def failed_media(self, cp: Checkpoint, kinds: Sequence[str]) -> Iterator[tuple[str, list[int]]]:
        """(part, message ids) of committed rows whose download failed and left no file, part by part."""
        for name in list(cp.parts):
            probe = pl.read_parquet(
                self.dir / name, columns=["id", "media_type", "media_path", "media_error"]
            )
            ids = probe.filter(
                # a row with a file but an error (a transcode that failed) keeps its original: not retried
                pl.col("media_error").is_not_null()
                & pl.col("media_path").is_null()
                & pl.col("media_type").is_in(sorted(kinds))
            )["id"].to_list()
            if ids:
                yield name, ids

    def patch_media(
        self, cp: Checkpoint, name: str, fixed: dict[int, tuple[str | None, str | None]]
    ) -> Checkpoint:
        """Set (media_path, media_error) of the given message ids in part ``name`` and swap the part.
        A row keeps its old path unless the new result has a path and no error."""
        upd = pl.DataFrame(
            {
                "id": list(fixed),
                "media_path": [p for p, _ in fixed.values()],
                "media_error": [e for _, e in fixed.values()],
            },
            schema={"id": pl.Int64, "media_path": pl.String, "media_error": pl.String},
        )
        if self.privacy is not None:  # the plain paths and errors of a retry
            upd = self.privacy.messages(upd)
        upd = upd.rename({"media_path": "_path", "media_error": "_err"})
        df = (
            self.read(cp, name)
            .join(upd, on="id", how="left", maintain_order="left")
            .with_columns(
                media_path=pl.when(pl.col("_err").is_null() & pl.col("_path").is_not_null())
                .then(pl.col("_path"))
                .otherwise(pl.col("media_path")),
                media_error=pl.when(pl.col("id").is_in(list(fixed)))
                .then(pl.col("_err"))
                .otherwise(pl.col("media_error")),
            )
            .drop("_path", "_err")
        )
        new, _ = self.swap_part(cp, name, df.to_arrow().cast(arrow_schema()))
        return new

    def apply_refresh(
        self, cp: Checkpoint, fresh: pl.DataFrame, since_id: int, *, refreshed_until: int
    ) -> tuple[Checkpoint, int, list[int]]:
        """Replace the committed rows with id >= ``since_id`` by ``fresh`` (a refresh re-read them),
        keeping their media paths (a refresh does not download); rows missing from ``fresh`` were deleted
        on Telegram (listed in the manifest as ``deleted_in_last_refresh``).  One compacted part replaces
        the old ones.  Returns (checkpoint, bytes written, deleted ids)."""
        if self.privacy is not None:  # fresh rows are plain, the committed ones already private
            fresh = self.privacy.messages(fresh)
        existing = self.read(cp)
        old_ids = existing.filter(pl.col("id") >= since_id)["id"]
        keep = existing.select("id", "media_path", "media_error")
        fresh = (
            fresh.drop("media_path", "media_error").join(keep, on="id", how="left").select(existing.columns)
        )
        gone = sorted(set(old_ids.to_list()) - set(fresh["id"].to_list()))
        merged = pl.concat([existing.filter(pl.col("id") < since_id), fresh]).sort("id")
        self.manifest_extra["deleted_in_last_refresh"] = gone[:1000]
        base = _copy(cp)
        base.refreshed_until = refreshed_until
        new, nbytes = self.replace_parts(base, merged.to_arrow().cast(arrow_schema()), last_id=cp.last_id)
        return new, nbytes, gone


def _copy(cp: Checkpoint) -> Checkpoint:
    return Checkpoint(cp.chat_id, cp.last_id, list(cp.parts), cp.rows, cp.peer, cp.title, cp.updated_at,
                      cp.refreshed_until, cp.first_id, cp.peers_file, cp.chat_file,
                      [list(r) for r in cp.ranges], {k: list(v) for k, v in cp.threads.items()},
                      cp.ordered)  # fmt: skip


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _epoch(v: Any) -> Any:
    return int(v.timestamp()) if isinstance(v, datetime) else v


def _load_checkpoint(path: Path, chat_id: int, parts_dir: Path) -> Checkpoint | None:
    if not path.exists():
        return None
    data = _read_json_state(path, "checkpoint")
    cp = Checkpoint.from_dict(data, source=f"checkpoint {path}")
    if cp.chat_id != chat_id:
        raise CacheError(
            f"checkpoint {path} belongs to chat {cp.chat_id}, not {chat_id}; "
            "refusing to mix chats (move it aside to start over)"
        )
    missing = [p for p in cp.parts if not (parts_dir / p).is_file()]
    if missing:
        raise CacheError(f"checkpoint {path} lists missing parts: {', '.join(missing[:3])}")
    return cp


# --------------------------------------------------------------------------------------------------
# The manifest


def update_manifest(
    root: Path,
    cp: Checkpoint,
    *,
    extra: dict[str, Any] | None = None,
    privacy: Mapping[str, Any] | None = None,
) -> None:
    """Record one chat's state in ``_manifest.json`` (atomic rewrite under the dataset lock; other chats
    are kept, and so is what earlier runs recorded for this chat, and the ``privacy`` block; a given
    ``privacy`` block is merged into it)."""
    root = Path(root)
    with _locked(root):
        try:
            manifest = read_manifest(root)
        except CacheError:
            manifest = {}
        found = manifest.get("chats")
        chats: dict[str, Any] = found if isinstance(found, dict) else {}
        previous = chats.get(str(cp.chat_id))
        entry = dict(previous) if isinstance(previous, dict) else {}
        entry.update(
            {
                "dir": f"{MESSAGES_DIR}/chat_id={cp.chat_id}",
                "rows": cp.rows,
                "last_id": cp.last_id,
                "parts": len(cp.parts),
                "peer": cp.peer,
                "title": cp.title,
                "updated_at": cp.updated_at,
            }
        )
        if extra:
            entry.update(extra)
        chats[str(cp.chat_id)] = entry
        _write_manifest(root, chats, _merged_privacy(manifest, privacy))


def _merged_privacy(manifest: dict[str, Any], privacy: Mapping[str, Any] | None) -> dict[str, Any] | None:
    found = manifest.get("privacy")
    block = dict(found) if isinstance(found, dict) else {}
    if privacy:
        block.update(privacy)
    return block or None


def _mark_private(root: Path, privacy: Mapping[str, Any]) -> None:
    """Record the ``privacy`` block in the manifest (before a pseudonymised writer commits anything)."""
    with _locked(root):
        try:
            manifest = read_manifest(root)
        except CacheError:
            manifest = {}
        found = manifest.get("privacy")
        if isinstance(found, dict) and all(found.get(k) == v for k, v in privacy.items()):
            return
        found_chats = manifest.get("chats")
        _write_manifest(
            root, found_chats if isinstance(found_chats, dict) else {}, _merged_privacy(manifest, privacy)
        )


def _write_manifest(root: Path, chats: dict[str, Any], privacy: Mapping[str, Any] | None = None) -> None:
    manifest = {
        "format": FORMAT, "version": VERSION, "layout": LAYOUT, "kind": "manifest",
        "columns": list(MESSAGE_COLUMNS), "schema": arrow_schema().to_string(show_schema_metadata=False),
        "tables": {
            name: {"path": name, "columns": list(table_schema(name).names),
                   **({"partitioning": "hive: chat_id=<id> (Int64, not stored in the files)"}
                      if name == MESSAGES_DIR else {})}
            for name in TABLES
        },
        "chats": dict(sorted(chats.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0)),
    }  # fmt: skip
    if privacy:
        manifest["privacy"] = dict(privacy)
    atomic_write_bytes(
        root / MANIFEST_NAME, json.dumps(manifest, indent=1, ensure_ascii=False).encode(), mode=0o644
    )


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest (``_manifest.json``, or a layout-1 ``manifest.json``), or {} when there is none."""
    for name in (MANIFEST_NAME, LEGACY_MANIFEST_NAME):
        path = Path(root) / name
        if path.exists():
            data = _read_json_state(path, "manifest")
            if data.get("format") != FORMAT:
                raise CacheError(f"{path} is not a tgkit manifest")
            return data
    return {}


# --------------------------------------------------------------------------------------------------
# Layout 1 -> 2


def _legacy_chats(root: Path) -> list[int]:
    out = []
    for d in root.glob("chat_id=*"):
        with contextlib.suppress(ValueError):
            if d.is_dir():
                out.append(int(d.name.split("=", 1)[1]))
    return sorted(out)


def _v2_chats(root: Path) -> list[int]:
    out = []
    for d in (root / STATE_DIR).glob("chat_id=*"):
        with contextlib.suppress(ValueError):
            if (d / CHECKPOINT_NAME).is_file():
                out.append(int(d.name.split("=", 1)[1]))
    return sorted(out)


def upgrade(root: str | os.PathLike[str], *, on_step: Callable[[str], None] | None = None) -> bool:
    """Upgrade a layout-1 dataset at ``root`` to layout 2 in place; returns True if there was anything to do.

    Crash-safe at every step (a kill -9 leaves a dataset that :func:`open_dataset` reads whole, and the
    next call finishes): for each chat, its parts are rewritten under ``messages/`` (the chat_id column
    moves to the folder name), its chats row written, then its new checkpoint commits the chat; only
    then are the old checkpoint and parts removed.  Until a chat's new checkpoint exists, readers use its
    old one.  The layout-1 manifest and ``plots/`` go last.  ``on_step(name)`` is called after each step
    (tests kill the process there)."""
    root = Path(root)
    step = on_step or (lambda _name: None)
    legacy = _legacy_chats(root)
    old_manifest = root / LEGACY_MANIFEST_NAME
    if not legacy and not old_manifest.exists() and not (root / LEGACY_PLOTS_DIR).is_dir():
        return False
    with _locked(root):
        try:
            old_manifest_data = read_manifest(root)
        except CacheError:
            old_manifest_data = {}
        old_chats = old_manifest_data.get("chats") or {}
        for chat_id in _legacy_chats(root):
            _upgrade_chat(root, chat_id, old_chats.get(str(chat_id)) or {}, step)
        step("chats")
        chats: dict[str, Any] = {}
        if (root / MANIFEST_NAME).exists():
            with contextlib.suppress(CacheError):
                chats = dict(read_manifest(root).get("chats") or {})
        for key, entry in old_chats.items() if isinstance(old_chats, dict) else ():
            if isinstance(entry, dict):
                merged = dict(entry)
                merged.update(chats.get(key) or {})
                merged["dir"] = f"{MESSAGES_DIR}/chat_id={key}"
                chats[key] = merged
        _write_manifest(root, chats, _merged_privacy(old_manifest_data, None))  # a pseudonymised one stays so
        step("manifest")
        with contextlib.suppress(FileNotFoundError):
            old_manifest.unlink()
        plots = root / LEGACY_PLOTS_DIR
        if plots.is_dir():
            target = root / PLOTS_DIR
            if target.exists():
                shutil.rmtree(plots)
            else:
                os.replace(plots, target)
        step("done")
    return True


def _upgrade_chat(root: Path, chat_id: int, info: dict[str, Any], step: Callable[[str], None]) -> None:
    old_dir = root / f"chat_id={chat_id}"
    old_cp_path = old_dir / LEGACY_CHECKPOINT_NAME
    part = ChatPartition(root, chat_id, source=str(info.get("source") or "api"))
    if part.load() is None:
        old = _load_checkpoint(old_cp_path, chat_id, old_dir)
        if old is not None:
            cp = part.start(None)  # removes what an interrupted upgrade of this chat left
            first_id = 0
            for name in old.parts:
                table = pq.read_table(old_dir / name).cast(arrow_schema())
                _stage(root, table.drop_columns(["chat_id"]), part.dir / name)
                if table.num_rows:
                    low = pc.min(table["id"]).as_py()
                    first_id = min(first_id, low) if first_id else low
                step("part")
            cp = Checkpoint(chat_id, old.last_id, list(old.parts), old.rows, old.peer, old.title,
                            old.updated_at, old.refreshed_until, first_id,
                            ranges=old.ranges)  # fmt: skip
            part.set_chat(title=old.title, type=info.get("type"), media_root=info.get("media_root"),
                          source=info.get("source"))  # fmt: skip
            part.manifest_extra = {k: v for k, v in info.items() if k not in ("dir",)}
            part._commit_with_tables(cp)
            step("checkpoint")
    # committed in layout 2: the old files go, checkpoint first (old parts without it are plain orphans)
    with contextlib.suppress(FileNotFoundError):
        old_cp_path.unlink()
    step("old-checkpoint")
    shutil.rmtree(old_dir, ignore_errors=True)
    step("old-parts")


# --------------------------------------------------------------------------------------------------
# Reading


def _checkpoints(root: Path) -> list[tuple[Checkpoint, Path, bool]]:
    """Every chat's committed checkpoint with its parts folder: layout 2 first choice, else layout 1."""
    found: dict[int, tuple[Checkpoint, Path, bool]] = {}
    for chat_id in _legacy_chats(root):
        old_dir = root / f"chat_id={chat_id}"
        cp = _load_checkpoint(old_dir / LEGACY_CHECKPOINT_NAME, chat_id, old_dir)
        if cp is not None:
            found[chat_id] = (cp, old_dir, True)
    for chat_id in _v2_chats(root):
        part = ChatPartition(root, chat_id)
        cp = part.load()
        if cp is not None:
            found[chat_id] = (cp, part.dir, False)
    return [found[k] for k in sorted(found)]


def open_dataset(path: str | os.PathLike[str], table: str = "messages") -> pl.LazyFrame:
    """A Polars LazyFrame over a dataset's committed rows (typed, also when empty).

    ``table``: ``"messages"`` (one row per message), ``"peers"`` (one row per user/channel/chat the
    exports saw, the latest observation of each; ``first_seen`` the earliest) or ``"chats"`` (one row
    per exported chat).  Layout-1 datasets open too (their peers table is empty)."""
    if table not in TABLES:
        raise ConfigError(f"table must be one of {', '.join(TABLES)}, got {table!r}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ExportError(f"no dataset at {root}")
    cps = _checkpoints(root)
    if table == "messages":
        return _open_messages(cps)
    schema = table_polars_schema(table)
    attr = "peers_file" if table == "peers" else "chat_file"
    files = [str(root / table / getattr(cp, attr)) for cp, _, _ in cps if getattr(cp, attr)]
    lf = pl.scan_parquet(files) if files else pl.LazyFrame(schema=schema)
    if table == "peers":
        return (
            lf.group_by("kind", "id")
            .agg(pl.exclude("first_seen").sort_by("last_seen").last(), pl.col("first_seen").min())
            .select(schema.names())
            .sort("kind", "id")
        )
    legacy = [_legacy_chat_row(cp, root) for cp, _, is_legacy in cps if is_legacy or not cp.chat_file]
    if legacy:
        extra = pl.from_arrow(rows_to_arrow("chats", legacy)).lazy()  # type: ignore[union-attr]
        lf = pl.concat([lf, extra]) if files else extra
    return lf.sort("id")


def _legacy_chat_row(cp: Checkpoint, root: Path) -> tuple:
    try:
        info = (read_manifest(root).get("chats") or {}).get(str(cp.chat_id)) or {}
    except CacheError:
        info = {}
    row = {
        "id": cp.chat_id, "title": cp.title, "last_id": cp.last_id or None, "rows": cp.rows,
        "last_export": int(cp.updated_at) or None, "source": info.get("source") or "api",
        "type": info.get("type"), "media_root": info.get("media_root"),
        "refreshed_until": cp.refreshed_until or None, "first_id": cp.first_id or None,
    }  # fmt: skip
    return tuple(row.get(c) for c in CHAT_COLUMNS)


def _open_messages(cps: list[tuple[Checkpoint, Path, bool]]) -> pl.LazyFrame:
    def scan(files: list[str]) -> pl.LazyFrame:
        return pl.scan_parquet(files, hive_partitioning=True, hive_schema={"chat_id": pl.Int64}).select(
            MESSAGE_COLUMNS
        )

    frames = []
    if all(cp.ordered for cp, _, legacy in cps if not legacy):
        current = [str(d / p) for cp, d, legacy in cps if not legacy for p in cp.parts]
        if current:
            frames.append(scan(current))
    else:
        # a chat whose parts are not in id order (a backfill, comments) is sorted on its own; runs of
        # ordered chats stay one scan
        run: list[str] = []
        for cp, d, legacy in cps:
            if legacy or not cp.parts:
                continue
            if cp.ordered:
                run.extend(str(d / p) for p in cp.parts)
                continue
            if run:
                frames.append(scan(run))
                run = []
            frames.append(scan([str(d / p) for p in cp.parts]).sort("id"))
        if run:
            frames.append(scan(run))
        if len(frames) > 1:
            frames = [pl.concat(frames)]
    old = [str(d / p) for cp, d, legacy in cps if legacy for p in cp.parts]
    if old:
        frames.append(pl.scan_parquet(old, hive_partitioning=False).select(MESSAGE_COLUMNS))
    if not frames:
        return pl.LazyFrame(schema=polars_schema())
    if len(frames) == 1:
        return frames[0]
    # both layouts while an upgrade is under way: keep chat order
    return pl.concat(frames).sort("chat_id", maintain_order=True)


def with_names(messages: pl.LazyFrame | pl.DataFrame, peers: pl.LazyFrame | pl.DataFrame) -> Any:
    """``messages`` with the names of their senders and forward sources from ``peers`` (both as
    :func:`open_dataset` returns them): adds ``sender_name``, ``sender_username``, ``fwd_peer_name`` and
    ``fwd_from`` (the forward's source name: the peer's name, else the name shown in the header).
    A DataFrame in gives a DataFrame out."""
    eager = isinstance(messages, pl.DataFrame)
    lf = messages.lazy()
    names = peers.lazy().select("id", "kind", "name", "username")
    senders = names.rename(
        {"id": "sender_id", "kind": "sender_kind", "name": "sender_name", "username": "sender_username"}
    )
    sources = names.select(fwd_peer_id="id", fwd_peer_kind="kind", fwd_peer_name="name")
    lf = (
        lf.join(senders, on=["sender_id", "sender_kind"], how="left", maintain_order="left")
        .join(sources, on=["fwd_peer_id", "fwd_peer_kind"], how="left", maintain_order="left")
        .with_columns(fwd_from=pl.coalesce("fwd_peer_name", "fwd_name"))
    )
    return lf.collect() if eager else lf
