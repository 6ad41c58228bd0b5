"""Awaitable export helpers and the streaming export pipeline.

``await export_chat(client, "@channel", out)`` streams a chat oldest-to-newest into a Parquet dataset:
fetch (through the gateway, :mod:`tgkit.telegram`: paced, flood waits handled, reconnects) -> convert
(column batches) -> write (parts committed by the checkpoint), with media downloads and video transcodes
running beside it.  One export is an :class:`_ExportRun`: ``async with`` it owns the gateway (flood
threshold, takeout), the resource monitor, the peer-cache save and the metrics files; its methods are
the stages.  A rerun resumes from the checkpoint and picks up new messages.  ``await
export_messages(...)`` returns records for small, interactive looks.  Every helper has a ``*_sync`` twin.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import polars as pl

from . import convert, fastpath
from .dataset import (
    MEDIA_DIR,
    METRICS_DIR,
    ChatPartition,
    Checkpoint,
    missing_ranges,
    open_dataset,
)
from .errors import ConfigError, ExportError, FloodWaitTooLong, TgkitError, write_error, write_errors
from .jupyter import Progress, ProgressMode, format_rate, format_seconds, make_progress, run_sync
from .media import media_file_name, normalise_media_kinds, safe_path
from .metrics import MetricsCollector, ResourceMonitor
from .pacing import Pacer
from .privacy import Pseudonymiser, prepare_output  # [privacy] export-time pseudonymisation (#19)
from .records import MESSAGE_COLUMNS, ColumnBatch, Records
from .telegram import PAGE, Gateway, chat_id_of, chat_kind_of, default_pacer, page_peer, page_title

if TYPE_CHECKING:
    from .peers import PeerCache

__all__ = [
    "ExportResult",
    "MediaKinds",
    "export_chat",
    "export_chat_sync",
    "export_messages",
    "export_messages_sync",
]

_COL = {name: i for i, name in enumerate(MESSAGE_COLUMNS)}
_ID, _DATE, _THREAD = _COL["id"], _COL["date"], _COL["thread_id"]

# ``media=``: None/False (no downloads), True/"all", one kind ("photo") or several (["photo", "video"]).
MediaKinds = bool | str | Iterable[str] | None


@dataclass(slots=True)
class ExportResult:
    """What an export did: where the data is, how much, how fast, what it cost."""

    path: Path
    chat_id: int
    peer: str
    title: str | None = None
    messages: int = 0  # rows written by this run
    total_rows: int = 0  # rows committed for this chat, all runs
    last_id: int = 0
    resumed_from: int | None = None
    seconds: float = 0.0
    parts_written: int = 0
    bytes_written: int = 0
    pages: int = 0
    media_downloaded: int = 0
    media_failed: int = 0
    media_retried: int = 0  # rows whose earlier failed download was tried again by this run
    media_recovered: int = 0
    transcoded: int = 0
    flood_waits: int = 0
    flood_wait_seconds: float = 0.0
    reconnects: int = 0
    refreshed: int = 0
    deleted: int = 0
    comments: int = 0  # rows written into the linked discussion group (comments and their posts' copies)
    complete: bool = False  # every message of the window is committed (False: stopped by ``limit``)
    api_calls: dict[str, int] = field(default_factory=dict)
    metrics: MetricsCollector | None = field(default=None, repr=False)
    metrics_path: Path | None = None
    resources_path: Path | None = None

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    def open(self) -> pl.LazyFrame:
        """This chat's rows in the dataset, lazily."""
        return open_dataset(self.path).filter(pl.col("chat_id") == self.chat_id)

    def frame(self) -> pl.DataFrame:
        return self.open().collect()

    def __repr__(self) -> str:
        resumed = f", resumed after id {self.resumed_from}" if self.resumed_from else ""
        return (
            f"ExportResult({self.peer!r} -> {self.path}: {self.messages} new rows, {self.total_rows} total"
            f"{resumed}, {format_seconds(self.seconds)}, {format_rate(self.msgs_per_s)} msg/s)"
        )


# --------------------------------------------------------------------------------------------------
# Helpers


def _protect_session_file(client: Any) -> None:
    """Telethon creates a SQLite session file with the umask's mode (often 0644), and it holds the auth
    key: make it 0600 (owner only) whenever tgkit is handed a client that uses one."""
    name = getattr(getattr(client, "session", None), "filename", None)
    if not isinstance(name, str) or name == ":memory:":
        return
    with contextlib.suppress(OSError):
        path = Path(name)
        if path.is_file() and path.stat().st_mode & 0o077:
            path.chmod(0o600)


def _default_peer_cache(peer_cache: PeerCache | bool | None) -> PeerCache | None:
    if peer_cache is False:
        return None
    if peer_cache is None or peer_cache is True:
        from .peers import PeerCache

        return PeerCache()
    return peer_cache


# --------------------------------------------------------------------------------------------------
# Media


class _MediaWorker:
    """Downloads (and optionally transcodes) media beside the fetch loop; bounded concurrency.  The
    gateway does the downloading (pacing, flood waits, reconnects, reference refreshes)."""

    def __init__(
        self,
        gateway: Gateway,
        peer: Any,
        label: Any,
        root: Path,
        chat_id: int,
        kinds: frozenset[str],
        *,
        max_bytes: int | None,
        concurrency: int,
        transcode: bool,
        metrics: MetricsCollector,
        progress: Progress,
        result: ExportResult,
    ) -> None:
        self.gateway = gateway
        self.peer = peer
        self.label = label
        self.dir = root / MEDIA_DIR / f"chat_id={chat_id}"
        self.kinds = kinds
        self.max_bytes = max_bytes
        self.sem = asyncio.Semaphore(concurrency)
        self.transcode = transcode
        self.metrics = metrics
        self.progress = progress
        self.result = result
        self.root = root
        self._report: Any = None
        self.privacy: Any = None  # [privacy] ChatPartition.privacy: files saved under pseudonymous names

    def _disk(self, dest: Path) -> Path:
        """[privacy] Where the file a row points at (``dest``) is saved: itself, or its pseudonymous name."""
        if self.privacy is None:
            return dest
        return self.root / self.privacy.media_file(dest.relative_to(self.root).as_posix())

    def wanted(self, row: tuple) -> bool:
        kind = row[_COL["media_type"]]
        if kind not in self.kinds:
            return False
        size = row[_COL["media_size"]]
        return not (self.max_bytes is not None and size is not None and size > self.max_bytes)

    async def fetch(self, message: Any, row: tuple) -> tuple[str | None, str | None]:
        """Returns (path relative to the dataset, error) for one message's media."""
        self.progress.media_queued(1)
        async with self.sem:
            try:
                path, error = await self._fetch(message, row)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one file's failure is recorded, never aborts the export
                path, error = None, f"{type(exc).__name__}: {exc}"[:500]
            if path is None:
                self.result.media_failed += 1
            self.progress.media_done(path is not None)
            return path, error

    async def _fetch(self, message: Any, row: tuple) -> tuple[str | None, str | None]:
        kind = row[_COL["media_type"]]
        name = media_file_name(message.id, kind, row[_COL["media_file_name"]], row[_COL["media_mime"]])
        dest = safe_path(self.dir, name)
        disk = self._disk(dest)  # [privacy]
        disk.parent.mkdir(parents=True, exist_ok=True)
        t0 = self.metrics.start()
        if not await self.gateway.download(message, disk, peer=self.peer, label=self.label):
            return None, "message or media no longer available"
        self.metrics.stop("download", t0)
        self.result.media_downloaded += 1
        rel = dest.relative_to(self.root).as_posix()
        if self.transcode and kind in ("video", "video_note", "animation"):
            from . import hardware, video

            t1 = self.metrics.start()
            if self._report is None:
                self._report = await asyncio.to_thread(hardware.probe)
            out = dest.with_name(dest.stem + ".720p.mp4")
            try:
                await video.transcode_async(disk, self._disk(out), report=self._report)  # [privacy] _disk
            except TgkitError as exc:
                return rel, f"transcode failed: {exc}"[:500]
            finally:
                self.metrics.stop("transcode", t1)
            self.result.transcoded += 1
            rel = out.relative_to(self.root).as_posix()
        return rel, None


# --------------------------------------------------------------------------------------------------
# The writer: one part at a time, in order, off the event loop.


@dataclass(slots=True)
class _Pending:
    batch: ColumnBatch
    last_id: int
    media: list[tuple[int, asyncio.Task]]
    peers: list[tuple] = field(default_factory=list)  # peers rows of the batch's pages (names, for free)
    covered: list[tuple[int, int]] = field(default_factory=list)  # id ranges complete once it commits


class _Writer:
    def __init__(
        self, part: ChatPartition, cp: Checkpoint, metrics: MetricsCollector, result: ExportResult, root: Path
    ) -> None:
        self.part = part
        self.cp = cp
        self.metrics = metrics
        self.result = result
        self.root = root
        self.queue: asyncio.Queue[_Pending | None] = asyncio.Queue(
            maxsize=2
        )  # backpressure: memory stays flat
        self.task: asyncio.Task | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="tgkit-writer")

    async def submit(self, pending: _Pending) -> None:
        if self.error is not None:
            raise self.error
        await self.queue.put(pending)

    async def close(self) -> None:
        await self.queue.put(None)
        if self.task is not None:
            await self.task
        if self.error is not None:
            raise self.error

    async def _run(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue
            try:
                await self._write(item)
            except BaseException as exc:  # surfaced to the fetch loop at its next submit/close
                self.error = exc
                for _, task in item.media:
                    task.cancel()

    async def _write(self, item: _Pending) -> None:
        if not len(item.batch):
            self.part.observe_peers(item.peers)  # committed by commit_tables at the end of the run
            if item.covered:  # a gap with nothing left in it (deleted messages)
                with write_errors(self.part.dir):
                    self.cp = await asyncio.to_thread(self.part.mark_complete, self.cp, item.covered)
            return
        if item.media:
            paths = item.batch.cols["media_path"]
            errors_ = item.batch.cols["media_error"]
            for idx, task in item.media:
                path, err = await task
                paths[idx] = path
                errors_[idx] = err
        t0 = self.metrics.start()
        self.part.observe_peers(item.peers)  # committed with this part
        table = item.batch.to_arrow()  # GIL-bound: a thread would only contend with the fetch loop
        with write_errors(self.part.dir):  # disk full, permission: an ExportError naming the folder
            self.cp, nbytes = await asyncio.to_thread(
                self.part.write_part, self.cp, table, last_id=item.last_id, covered=item.covered
            )
        self.metrics.stop("write", t0)
        self.metrics.add_bytes_written(nbytes)
        self.result.parts_written += 1
        self.result.bytes_written += nbytes
        self.result.messages += table.num_rows
        self.result.total_rows = self.cp.rows
        self.result.last_id = self.cp.last_id


# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# The export run: one chat, one `async with`, the stages as methods.


@dataclass(slots=True)
class _Options:
    """What ``export_chat`` was asked to do (its keyword arguments, resolved)."""

    resume: bool = True
    limit: int | None = None
    batch_size: int = 10_000
    kinds: frozenset[str] = frozenset()
    media_max_bytes: int | None = 50 * 1024 * 1024
    media_concurrency: int = 3
    transcode: bool = False
    takeout: bool = False
    refresh_days: float = 0
    retry_media: bool = True
    metrics: bool = True
    monitor: bool | float = True
    fast_decode: bool | None = None  # None: TGKIT_FAST_DECODE, default on
    since: int | None = None  # date window [since, until), epoch seconds UTC; None: open
    until: int | None = None
    comments: bool = False
    pseudonymiser: Pseudonymiser | None = None  # [privacy] rows pseudonymised before they are written


# One writer per chat partition in a process: a corpus run may export a discussion group while a
# channel's comments stage writes into the same partition.  (Across processes: distributed.py's flocks.)
_CHAT_LOCKS: weakref.WeakValueDictionary[tuple[str, int], asyncio.Lock] = weakref.WeakValueDictionary()


@contextlib.asynccontextmanager
async def _chat_lock(root: Path, chat_id: int) -> AsyncIterator[None]:
    key = (str(root), chat_id)
    lock = _CHAT_LOCKS.get(key)
    if lock is None:
        lock = _CHAT_LOCKS[key] = asyncio.Lock()
    async with lock:
        yield


def _window_bound(value: Any, name: str) -> int | None:
    """``since``/``until`` as epoch seconds: a ``date`` is midnight UTC, a naive datetime is UTC, an
    aware one is converted, an ISO string is parsed the same way."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ConfigError(f"{name}={value!r} is not an ISO date or datetime") from exc
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return math.ceil(value.timestamp())  # dates are whole seconds: [12:00:00.5, ...) starts at :01
    if isinstance(value, date):
        return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp())
    raise ConfigError(f"{name} must be a date, a datetime or an ISO string, got {type(value).__name__}")


class _ExportRun:
    """One export of one chat.

    ``async with _ExportRun(...) as run: await run.execute()``.  Entering opens the resource monitor,
    the gateway (flood threshold, request counting) and the takeout session if asked; leaving commits
    what was converted before a failure, closes them in reverse order, saves the peer cache, and writes
    the metrics files.  ``run.result`` is the :class:`ExportResult`.

    Where things happen (for hooks): a history page is requested in :meth:`_fetch_page` and converted
    in :meth:`_stream` (``convert.message_row`` into a :class:`ColumnBatch`); media is queued in
    :meth:`_stream` (``_MediaWorker.fetch`` tasks travel with the batch); a part is written by
    :class:`_Writer` (``ChatPartition.write_part`` + the manifest); progress is updated in
    :meth:`_stream` (``bar.update``) and by the media worker (``update(media=1)``).
    """

    def __init__(
        self,
        client: Any,
        chat: Any,
        root: Path,
        options: _Options,
        *,
        progress: ProgressMode | Progress,
        peer_cache: PeerCache | bool | None,
        pacer: Pacer | None,
        flood_ceiling: float | None,
    ) -> None:
        self.chat = chat
        self.root = root
        self.opts = options
        self.metrics = MetricsCollector(enabled=bool(options.metrics))
        monitor = options.monitor
        self.monitor = (
            ResourceMonitor(interval=monitor if isinstance(monitor, float) else 0.5) if monitor else None
        )
        self.bar = make_progress(progress, desc=f"export {chat}")
        self.cache = _default_peer_cache(peer_cache)
        self.pacer = pacer if pacer is not None else default_pacer(client, flood_ceiling)
        self.bar.set_pacer(self.pacer)
        self.gateway = Gateway(
            client, pacer=self.pacer, metrics=self.metrics, progress=self.bar, peer_cache=self.cache
        )
        self.result = ExportResult(path=root, chat_id=0, peer=str(chat))
        self.peer: Any = None
        self.part: ChatPartition | None = None
        self.worker: _MediaWorker | None = None
        self.writer: _Writer | None = None
        self._skip: set[int] = set()  # ids committed outside the complete ranges (comments): not rewritten
        self._stack = contextlib.AsyncExitStack()

    # ---------------------------------------------------------------------------------- lifetime

    async def __aenter__(self) -> _ExportRun:
        stack = self._stack
        try:
            if self.monitor is not None:
                self.monitor.start()
                stack.callback(self.monitor.stop)
            await stack.enter_async_context(self.gateway)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc is not None:
                await self._commit_on_failure(exc)
        finally:
            await self._stack.aclose()  # takeout finished, gateway closed (threshold restored), monitor
            self._finish(failed=exc is not None)
        if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
            # a writer outside the part writer (media folder, manifest, checkpoint): one tgkit error
            err = write_error(exc, self.root)
            err.checkpoint = self._checkpoint_path()
            raise err from exc

    def _checkpoint_path(self) -> Path | None:
        return self.part.checkpoint_path if self.part is not None else None

    async def _commit_on_failure(self, exc: BaseException) -> None:
        if self.writer is not None:
            # commit what was fetched and converted before the failure: a rerun resumes after it
            with contextlib.suppress(BaseException):
                await asyncio.shield(self.writer.close())
        if isinstance(exc, FloodWaitTooLong | ExportError) and self.part is not None:
            exc.checkpoint = self.part.checkpoint_path
        self.bar.close(error=exc)

    def _finish(self, *, failed: bool) -> None:
        result, collector, cache = self.result, self.metrics, self.cache
        if self.part is not None and self.part.privacy is not None:  # [privacy] no real id or name leaves
            result.chat_id = self.part.chat_id
            peer, result.title = self.part.privacy.label(result.peer, result.title)
            result.peer = peer or result.peer
        if cache is not None:
            with contextlib.suppress(Exception):
                cache.save()
        with contextlib.suppress(OSError):
            self.pacer.save()  # what it learned of the account's limits (a no-op without a state file)
        result.seconds = self.bar.stop()  # the progress's clock: its final line and this repr agree
        result.flood_waits = self.gateway.flood_waits  # this run's, not the shared pacer's totals
        result.flood_wait_seconds = self.gateway.flood_wait_s
        result.api_calls = self.gateway.api_calls
        result.reconnects = self.gateway.reconnects
        collector.set_api_calls(result.api_calls)
        if cache is not None:
            collector.set_cache_stats("peer_cache", cache.stats())
        collector.count("messages", result.messages)
        collector.finish()
        result.metrics = collector
        if result.chat_id and self.opts.metrics:
            where = self.root / METRICS_DIR / f"chat_id={result.chat_id}"
            try:
                with write_errors(where):
                    result.metrics_path = collector.to_json(where / "metrics.json")
                    if self.monitor is not None:
                        result.resources_path = self.monitor.samples.to_parquet(where / "resources.parquet")
            except ExportError:
                if not failed:  # the data is committed; say the disk is full rather than hide it
                    raise
        self.bar.close()

    # ---------------------------------------------------------------------------------- stages

    async def execute(self) -> ExportResult:
        """Resolve, (refresh, retry media,) stream new messages; the result is also ``self.result``."""
        opts, result, bar, gw = self.opts, self.result, self.bar, self.gateway
        with self.metrics.timer("resolve"):
            self.peer = await gw.resolve(self.chat)
        chat_id = chat_id_of(self.peer)
        result.chat_id = chat_id  # the real id while the run converts rows (_finish: the stored one)
        await self._stack.enter_async_context(_chat_lock(self.root, chat_id))
        privacy = None  # [privacy] the partition pseudonymises every row; stored under the chat's pseudonym
        if opts.pseudonymiser is not None:
            privacy = opts.pseudonymiser.for_chat(chat_id, chat_kind_of(self.peer))
        part = self.part = ChatPartition(self.root, chat_id, privacy=privacy)
        cp = part.load() if opts.resume else None
        cp = part.start(cp)
        cp.peer = str(self.chat)
        if cp.threads:  # comments fetched through the channel live here too: never written twice
            self._skip = part.committed_ids(cp, outside_ranges=True)
        part.set_run(status="partial", since=opts.since, until=opts.until)  # "done" once complete
        result.resumed_from = cp.last_id or None
        result.total_rows = cp.rows
        result.last_id = cp.last_id
        if opts.takeout:
            await self._stack.enter_async_context(gw.takeout(peer=self.chat))
        if opts.kinds:
            self.worker = _MediaWorker(
                gw, self.peer, self.chat, self.root, chat_id, opts.kinds,
                max_bytes=opts.media_max_bytes, concurrency=opts.media_concurrency,
                transcode=opts.transcode, metrics=self.metrics, progress=bar, result=result,
            )  # fmt: skip
            self.worker.privacy = privacy  # [privacy]
        if opts.refresh_days and cp.last_id:
            cp = await self._refresh(cp)
        if self.worker is not None and cp.parts and opts.retry_media:
            cp = await self._retry_media(cp)
        writer = self.writer = _Writer(part, cp, self.metrics, result, self.root)
        writer.start()
        bar.set_stage("fetching")
        await self._stream(cp)
        bar.set_stage("downloading media" if self.worker is not None else "writing")
        await writer.close()
        self.writer = None
        # the chats row (after the history: a stale cached peer is repaired by then); then commit it and
        # the run's peers (and a new title) even when there were no new rows
        metadata = await self._chat_metadata()
        part.set_chat(**metadata)
        part.set_run(status="done" if result.complete else "partial", since=opts.since, until=opts.until)
        final = part.load() or cp
        if result.title:
            final.title = result.title
            part.set_chat(title=result.title)
        with write_errors(part.dir):
            final = part.commit_tables(final)
        linked = metadata.get("linked_chat_id")
        if opts.comments and metadata.get("type") == "broadcast" and linked:
            await self._comments(final, int(linked))
        bar.set_stage("done")
        return result

    async def _chat_metadata(self) -> dict[str, Any]:
        """The chats row's metadata: one GetFullChannel (or GetFullChat) per chat and run."""
        full = await self.gateway.full_chat(self.peer, label=self.chat)
        if full is None:
            return {"kind": "user", "type": "private"}
        return convert.chat_fields(full)

    def _fetch_page(self, offset: int) -> Awaitable[Any]:
        """The history page of messages after ``offset - 1`` (oldest first), through the gateway."""
        return self.gateway.history(
            self.peer,
            offset_id=offset,
            add_offset=-PAGE,
            label=self.chat,
            chat_id=self.result.chat_id,
            fast=self.opts.fast_decode,
        )

    def _fetch_since(self, since: int) -> Awaitable[Any]:
        """The oldest page at or after date ``since``: ``offset_date`` with ``add_offset=-PAGE`` (what
        Telethon's ``iter_messages(offset_date=..., reverse=True)`` sends).  Asked from one second
        earlier, so a message dated exactly ``since`` is in it whichever side Telegram's offset_date
        is exclusive on; the caller drops what is older."""
        return self.gateway.history(
            self.peer,
            offset_id=0,
            offset_date=datetime.fromtimestamp(since - 1, UTC),
            add_offset=-PAGE,
            label=self.chat,
            chat_id=self.result.chat_id,
            fast=self.opts.fast_decode,
        )

    async def _stream(self, cp: Checkpoint) -> None:
        """Fetch, oldest to newest, what the window needs and the checkpoint lacks: the gaps between
        its complete id ranges at or above the window's first message (one ``offset_date`` request
        finds it), up to the first message dated at or after ``until``.  One page is prefetched ahead;
        each batch commits the id ranges its pages completed."""
        assert self.writer is not None
        writer, worker, m, bar, result = self.writer, self.worker, self.metrics, self.bar, self.result
        opts, chat_id, skip = self.opts, result.chat_id, self._skip
        fetch = self._fetch_page
        remaining = opts.limit
        batch_size = opts.batch_size
        since, until = opts.since, opts.until
        batch = ColumnBatch()
        media_tasks: list[tuple[int, asyncio.Task]] = []
        peers: list[tuple] = []  # free names from every page's .users/.chats
        covered: list[tuple[int, int]] = []  # id ranges the batch completes
        top = cp.last_id
        pending: asyncio.Future | None = None
        first = True

        def take(page: Any) -> fastpath.PageRows:
            nonlocal first
            result.pages += 1
            view = fastpath.page_rows(page, chat_id)
            m.count("pages_fast" if view.fast else "pages_telethon")
            peers.extend(convert.peer_rows(page.users, page.chats, int(time.time())))
            if first:
                first = False
                result.title = page_title(page, chat_id)
                if self.cache is not None:
                    self.cache.learn(page)  # free knowledge: the page's .chats/.users (first page only)
                count = getattr(page, "count", None)
                if count is not None and since is None and until is None:
                    bar.set_total(max(count - cp.rows, len(view.ids)) if remaining is None else remaining)
            return view

        limited = False  # stopped by `limit`: the window is not complete
        try:
            lo: int | None = 1
            ready: fastpath.PageRows | None = None
            if since is not None:
                t0 = m.start()
                view = take(await self._fetch_since(since))
                m.stop("fetch", t0)
                at_since = [
                    i
                    for i, row in zip(view.ids, view.rows, strict=True)
                    if row is not None and row[_DATE] >= since
                ]
                if at_since:
                    lo = min(at_since)
                elif len(view.ids) == PAGE:  # a full page dated a second before `since`: after it
                    lo = max(view.ids) + 1
                else:
                    lo = None  # nothing at or after `since` yet
                ready = view
            stop = False
            for a, b in missing_ranges(cp.ranges, lo) if lo is not None else ():
                if ready is not None and a == lo:
                    view, ready = ready, None  # the since page is this gap's first page
                else:
                    ready = None
                    t0 = m.start()
                    view = take(await fetch(a))
                    m.stop("fetch", t0)
                while True:
                    ids, page_rows = view.ids, view.rows
                    if not ids:
                        # nothing at or above the offset: a bounded gap is complete (deleted messages)
                        if b is not None:
                            covered.append((a, b))
                        stop = b is None  # the newest message
                        break
                    end = None  # "gap" (reached committed ids), "until", "limit"
                    hi = 0
                    kept = []
                    for i in sorted(range(len(ids)), key=ids.__getitem__):
                        msg_id = ids[i]
                        if msg_id < a:
                            continue  # the since page reaches a second before `since`
                        if b is not None and msg_id > b:
                            end = "gap"
                            break
                        row = page_rows[i]
                        if until is not None and row is not None and row[_DATE] >= until:
                            end = "until"
                            break
                        if remaining is not None:
                            if remaining <= 0:
                                end = "limit"
                                break
                            remaining -= 1
                        hi = msg_id
                        if row is not None and msg_id not in skip:  # MessageEmpty: no row
                            kept.append((i, row))
                    if end is None and remaining is not None and remaining <= 0:
                        end = "limit"
                    if end is None:
                        hi = max(hi, max(ids))
                        pending = asyncio.ensure_future(fetch(hi + 1))
                    t1 = m.start()
                    rows = [row for _, row in kept]
                    if worker is not None:
                        base = len(batch)
                        for k, (i, row) in enumerate(kept):
                            if worker.wanted(row):
                                task = asyncio.create_task(worker.fetch(view.message_for(i), row))
                                media_tasks.append((base + k, task))
                    done_to = b if end == "gap" else hi
                    batch.extend_rows(rows)
                    # the rows and the range they complete travel together (nothing that can raise between)
                    if done_to is not None and done_to >= a:
                        top = max(top, done_to)
                        if covered and covered[-1][0] == a:
                            covered[-1] = (a, done_to)
                        else:
                            covered.append((a, done_to))
                    m.stop("convert", t1)
                    bar.update(messages=len(rows))
                    if len(batch) >= batch_size:
                        await writer.submit(_Pending(batch, top, media_tasks, peers, covered))
                        batch, media_tasks, peers, covered = ColumnBatch(), [], [], []
                    if end is not None:
                        stop = end != "gap"
                        limited = end == "limit"
                        break
                    assert pending is not None
                    t0 = m.start()
                    page = await pending
                    pending = None
                    m.stop("fetch", t0)
                    view = take(page)
                if stop:
                    break
            result.complete = not limited
        except BaseException:
            if pending is not None:
                pending.cancel()
            for _, task in media_tasks:
                task.cancel()
            if len(batch) or covered:
                # keep what was fetched: media that did not finish is recorded as interrupted
                for idx, _task in media_tasks:
                    batch.cols["media_error"][idx] = "interrupted"
                await writer.submit(_Pending(batch, top, [], peers, covered))
            raise
        if len(batch) or covered:
            await writer.submit(_Pending(batch, top, media_tasks, peers, covered))
        elif peers:
            await writer.submit(_Pending(batch, top, [], peers))  # no rows: peers only (committed at the end)

    async def _retry_media(self, cp: Checkpoint) -> Checkpoint:
        """Download again the media of committed rows that recorded an error (an interrupted run, a
        transient failure), and swap the parts that held them for corrected ones."""
        assert self.part is not None and self.worker is not None
        part, worker, bar, result = self.part, self.worker, self.bar, self.result
        for name, ids in list(part.failed_media(cp, sorted(worker.kinds))):
            bar.set_stage(f"retrying {len(ids)} media file(s)")
            fixed: dict[int, tuple[str | None, str | None]] = {}
            for start in range(0, len(ids), PAGE):
                messages = await self.gateway.get_messages(
                    self.peer, ids[start : start + PAGE], label=self.chat
                )
                jobs = []
                for msg in messages:
                    row = convert.message_row(msg, result.chat_id)  # [privacy] the real id, not part's
                    if row is not None and worker.wanted(row):
                        jobs.append((msg.id, asyncio.create_task(worker.fetch(msg, row))))
                for msg_id, task in jobs:
                    fixed[msg_id] = await task
            if not fixed:
                continue
            recovered = sum(1 for p, err in fixed.values() if err is None and p is not None)
            result.media_retried += len(fixed)
            result.media_recovered += recovered
            with write_errors(part.dir):
                cp = await asyncio.to_thread(part.patch_media, cp, name, fixed)
        return cp

    async def _refresh(self, cp: Checkpoint) -> Checkpoint:
        """Re-read the last ``refresh_days`` of already-exported messages; keep one current row per
        message.  Rows whose message no longer exists are dropped and counted in ``deleted``."""
        assert self.part is not None
        part, m, bar, result, days = self.part, self.metrics, self.bar, self.result, self.opts.refresh_days
        bar.set_stage(f"refreshing last {days:g} days")
        existing = part.read(cp)
        if existing.is_empty():
            return cp
        newest = existing["date"].max()
        assert isinstance(newest, datetime)
        since = int(newest.timestamp() - days * 86_400)
        old_ids = existing.filter(pl.col("date") >= datetime.fromtimestamp(since, UTC))["id"]
        if old_ids.is_empty():
            return cp
        lo = int(old_ids.min())  # type: ignore[arg-type]
        # only what the dataset holds is refreshed: a message in a gap of a windowed export stays for
        # the run that fills the gap (else it would be written twice)
        have = set(existing["id"].to_list())
        batch = ColumnBatch()
        seen: set[int] = set()
        offset = lo
        while offset <= cp.last_id:
            t0 = m.start()
            page = await self._fetch_page(offset)
            m.stop("fetch", t0)
            result.pages += 1
            view = fastpath.page_rows(page, result.chat_id)  # [privacy] the real id, not part's
            m.count("pages_fast" if view.fast else "pages_telethon")
            if not view.ids:
                break
            part.observe_peers(convert.peer_rows(page.users, page.chats, int(time.time())))
            for i in sorted(range(len(view.ids)), key=view.ids.__getitem__):
                row = view.rows[i]
                if row is not None and row[1] <= cp.last_id and (row[1] in have or cp.covers(row[1])):
                    batch.append_row(row)
                    seen.add(row[1])
            offset = max(view.ids) + 1
            if offset > cp.last_id:
                break
        # the merge (media paths kept, deletions found) lives in ChatPartition
        with write_errors(part.dir):
            new_cp, nbytes, gone = await asyncio.to_thread(
                part.apply_refresh, cp, batch.to_polars(), lo, refreshed_until=int(time.time())
            )
        result.deleted = len(gone)
        result.refreshed = len(seen)
        result.bytes_written += nbytes
        result.total_rows = new_cp.rows
        return new_cp

    async def _comments(self, cp: Checkpoint, group_id: int) -> None:
        """The comments under the channel's posts, into the linked discussion group's partition.

        Only posts whose ``replies`` count differs from what the group's checkpoint recorded (new
        posts, new or deleted comments) are asked, each from its largest known comment id on
        (``messages.GetReplies`` paged oldest first), with the discussion group's copy of the post
        (``channels.GetMessages``, 100 per request): a comment's ``thread_id`` is the copy's ``id``,
        the copy's ``fwd_post_id`` the post's ``id``.  Rows are the group's messages exactly as its
        own history export gives them; an id already committed there is never written again."""
        assert self.part is not None
        gw, bar, result, m = self.gateway, self.bar, self.result, self.metrics
        posts = (
            pl.read_parquet([str(self.part.dir / p) for p in cp.parts], columns=["id", "replies"])
            if cp.parts
            else pl.DataFrame(schema={"id": pl.Int64, "replies": pl.Int64})
        )
        async with _chat_lock(self.root, group_id):
            pz = self.opts.pseudonymiser  # [privacy] comments are written pseudonymised too
            group = ChatPartition(
                self.root, group_id, privacy=pz.for_chat(group_id, "channel") if pz is not None else None
            )
            gcp = group.start(group.load())
            known = gcp.threads
            todo = [
                (post, n)
                for post, n in posts.filter(pl.col("replies") > 0).sort("id").iter_rows()
                if known.get(post, [-1])[0] != n
            ]
            if not todo:
                return
            have = group.committed_ids(gcp)
            rows: list[tuple] = []
            copies: list[int] = []
            threads: dict[int, list[int]] = {}
            group_peer: Any = None

            async def flush() -> None:
                nonlocal gcp, rows, copies, threads
                for start in range(0, len(copies) if group_peer is not None else 0, PAGE):
                    for msg in await gw.get_messages(
                        group_peer, copies[start : start + PAGE], label=self.chat
                    ):
                        row = convert.message_row(msg, group_id)
                        if row is not None:
                            rows.append(row)
                if rows or threads:
                    batch = ColumnBatch()
                    batch.extend_rows(sorted(rows, key=lambda r: r[_ID]))
                    with write_errors(group.dir):
                        if rows:
                            gcp, nbytes = await asyncio.to_thread(
                                group.write_part, gcp, batch.to_arrow(), last_id=max(r[_ID] for r in rows),
                                covered=(), threads=threads,
                            )  # fmt: skip
                            result.bytes_written += nbytes
                        else:
                            gcp = await asyncio.to_thread(group.mark_complete, gcp, threads=threads)
                    result.comments += len(rows)
                rows, copies, threads = [], [], {}

            for k, (post, n) in enumerate(todo):
                bar.set_stage(f"comments: post {k + 1}/{len(todo)}")
                seen, last, copy = known.get(post, [0, 0, 0])
                fetched = 0
                offset = last + 1
                while True:
                    t0 = m.start()
                    page = await gw.replies(
                        self.peer, post, offset_id=offset, add_offset=-PAGE, label=self.chat
                    )
                    m.stop("fetch", t0)
                    result.pages += 1
                    view = fastpath.page_rows(page, group_id)
                    group.observe_peers(convert.peer_rows(page.users, page.chats, int(time.time())))
                    if group_peer is None:
                        group_peer = page_peer(page, group_id)
                        for c in page.chats:
                            if getattr(c, "id", None) == group_id:
                                group.set_chat(**convert.chat_fields(c), linked_chat_id=result.chat_id)
                        if not gcp.ranges:  # the group holds only what came through the channel
                            group.set_chat(status="comments")
                    for msg_id, row in zip(view.ids, view.rows, strict=True):
                        if msg_id < offset or row is None:
                            continue
                        fetched += 1
                        last = max(last, msg_id)
                        copy = copy or row[_THREAD] or 0
                        if msg_id not in have:
                            have.add(msg_id)
                            rows.append(row)
                    # a short page ends the thread once the count is reached (Telegram may return short
                    # pages mid-way, as Telethon notes: then ask again)
                    if not view.ids or (len(view.ids) < PAGE and seen + fetched >= n):
                        break
                    offset = max(view.ids) + 1
                threads[post] = [n, last, copy]
                if copy and copy not in have:
                    have.add(copy)
                    copies.append(copy)
                if len(rows) >= self.opts.batch_size:
                    await flush()
            await flush()


# --------------------------------------------------------------------------------------------------


async def export_chat(
    client: Any,
    chat: Any,
    out: str | Path,
    *,
    resume: bool = True,
    limit: int | None = None,
    batch_size: int = 10_000,
    progress: ProgressMode | Progress = "auto",
    peer_cache: PeerCache | bool | None = None,
    media: MediaKinds = None,
    media_max_bytes: int | None = 50 * 1024 * 1024,
    media_concurrency: int = 3,
    transcode: bool = False,
    takeout: bool = False,
    refresh_days: float = 0,
    retry_media: bool = True,
    metrics: bool = True,
    monitor: bool | float = True,
    pacer: Pacer | None = None,
    flood_ceiling: float | None = None,
    fast_decode: bool | None = None,
    since: date | datetime | str | None = None,
    until: date | datetime | str | None = None,
    comments: bool = False,
    pseudonymise: str | os.PathLike[str] | Pseudonymiser | None = None,
) -> ExportResult:
    """Export ``chat`` into the Parquet dataset at ``out`` (oldest to newest, resumable, incremental).

    ``since``/``until``: export only messages dated ``since <= date < until`` (a ``date`` is midnight
    UTC, a naive datetime UTC, an aware one converted; ISO strings too).  The checkpoint records which
    id ranges are complete, so a later run with a wider window (or none) fetches only what is missing.
    ``comments=True`` on a channel with a discussion group also exports the comments under its posts
    into the group's ``chat_id`` (see docs/ARCHITECTURE.md, "Date windows and comments").

    ``media``: ``None``/``False`` (no downloads), ``True``/``"all"``, or kinds such as
    ``["photo", "video"]``; files go to ``out/_media/chat_id=<id>/`` and the rows point at them.
    ``transcode=True`` also normalises videos to H.264/720p (VA-API when present, else CPU).
    ``refresh_days=N`` re-reads the last N days on an incremental run to capture edits, reactions,
    view counts and deletions.  With ``media``, a rerun first retries the media of committed rows whose
    download failed (``retry_media=False`` skips that).  ``peer_cache=False`` disables the persistent
    peer cache.  ``pacer``: how requests are paced (default: ``TGKIT_PACING``; ``off`` for none, e.g.
    ``Pacer.unlimited()`` for the offline demo world); flood waits above ``flood_ceiling`` seconds raise
    :class:`~tgkit.errors.FloodWaitTooLong` after committing what was fetched.  ``fast_decode=False``
    (or ``TGKIT_FAST_DECODE=0``) reads history pages with Telethon's decoder instead of tgkit's
    columnar fast path (same rows, slower).
    ``pseudonymise=KEYFILE`` (or a :class:`~tgkit.privacy.Pseudonymiser`) writes the dataset pseudonymised
    (docs/PRIVACY.md): nothing identifying reaches the disk, a private chat is stored under its pseudonym
    (``ExportResult.chat_id``), media files under pseudonymous names; a dataset is only continued with
    the key it was made with (a plain export refuses a pseudonymised dataset and vice versa).
    """
    since_s, until_s = _window_bound(since, "since"), _window_bound(until, "until")
    if since_s is not None and until_s is not None and since_s >= until_s:
        raise ConfigError(f"since ({since}) must be before until ({until})")
    # before any request is sent (upgrades a layout-1 dataset; [privacy] checks the key against it)
    root, pz = prepare_output(out, pseudonymise)
    _protect_session_file(client)
    if batch_size < 1:
        raise ConfigError("batch_size must be at least 1")
    options = _Options(
        resume=resume,
        limit=limit,
        batch_size=batch_size,
        kinds=normalise_media_kinds(media),
        media_max_bytes=media_max_bytes,
        media_concurrency=media_concurrency,
        transcode=transcode,
        takeout=takeout,
        refresh_days=refresh_days,
        retry_media=retry_media,
        metrics=metrics,
        monitor=monitor,
        fast_decode=fast_decode,
        since=since_s,
        until=until_s,
        comments=comments,
        pseudonymiser=pz,  # [privacy]
    )
    run = _ExportRun(
        client,
        chat,
        root,
        options,
        progress=progress,
        peer_cache=peer_cache,
        pacer=pacer,
        flood_ceiling=flood_ceiling,
    )
    async with run:
        await run.execute()
    return run.result


async def export_messages(
    client: Any,
    chat: Any,
    *,
    limit: int | None = None,
    min_id: int = 0,
    max_id: int = 0,
    since: datetime | None = None,
    until: datetime | None = None,
    peer_cache: PeerCache | bool | None = False,
    pacer: Pacer | None = None,
    progress: ProgressMode | Progress = False,
) -> Records:
    """The newest ``limit`` messages (optionally only ids in (min_id, max_id) and dates in
    [since, until)) as slotted records, oldest first.  For small, interactive looks; use
    :func:`export_chat` for whole chats."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise ConfigError(f"{name} must be timezone-aware (e.g. datetime(..., tzinfo=timezone.utc))")
    bar = make_progress(progress, total=limit, desc=f"messages {chat}")
    gateway = Gateway(client, pacer=pacer, progress=bar, peer_cache=_default_peer_cache(peer_cache))
    rows: list[Any] = []
    offset_id, offset_date = max_id, until
    since_ts = since.timestamp() if since is not None else None
    try:
        async with gateway:
            peer = await gateway.resolve(chat)
            chat_id = chat_id_of(peer)
            while limit is None or len(rows) < limit:
                want = PAGE if limit is None else min(PAGE, limit - len(rows))
                page = await gateway.history(
                    peer,
                    offset_id=offset_id,
                    limit=want,
                    offset_date=offset_date,
                    min_id=min_id,
                    label=chat,
                    takeout=False,
                )
                # MessageEmpty (a deleted id) carries no date
                msgs = [x for x in page.messages if getattr(x, "date", None) is not None]
                if not page.messages:
                    break
                stop = False
                for msg in msgs:  # newest first
                    if since_ts is not None and msg.date.timestamp() < since_ts:
                        stop = True
                        break
                    rows.append(msg)
                    if limit is not None and len(rows) >= limit:
                        break
                bar.update(messages=len(msgs))
                if stop:
                    break
                offset_id, offset_date = min(x.id for x in page.messages), None
                if offset_id <= min_id + 1:
                    break
    finally:
        bar.close()
    rows.sort(key=lambda x: x.id)
    return Records(convert.to_records(rows, chat_id))


def _sync(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    def twin(*args: Any, **kwargs: Any) -> Any:
        return run_sync(fn(*args, **kwargs))

    twin.__name__ = f"{fn.__name__}_sync"
    twin.__qualname__ = twin.__name__
    twin.__doc__ = (
        f"Blocking twin of :func:`{fn.__name__}` (works in scripts and inside a running notebook loop)."
    )
    return twin


export_chat_sync = _sync(export_chat)
export_messages_sync = _sync(export_messages)
