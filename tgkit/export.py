"""Awaitable export helpers and the streaming export pipeline.

``await export_chat(client, "@channel", out)`` streams a chat oldest-to-newest into a Parquet dataset:
fetch (paced, flood waits handled, reconnects) -> convert (column batches) -> write (parts committed
by the checkpoint), with media downloads and video transcodes running beside it.  A rerun resumes from
the checkpoint and picks up new messages.  ``await export_messages(...)`` returns records for small,
interactive looks.  Every helper has a ``*_sync`` twin.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from typing import Any

import polars as pl
from telethon import errors as tl_errors
from telethon import utils as tl_utils
from telethon.tl import functions, types

from . import convert
from .dataset import MEDIA_DIR, METRICS_DIR, ChatPartition, Checkpoint, open_dataset, prepare_output_dir
from .errors import (
    ExportError,
    FloodWaitTooLong,
    TelegramError,
    TgkitError,
    is_peer_error,
    translate_telethon_error,
)
from .jupyter import Progress, make_progress, run_sync
from .media import media_file_name, normalise_media_kinds, safe_path
from .metrics import MetricsCollector, ResourceMonitor
from .pacing import Pacer
from .records import MESSAGE_COLUMNS, ColumnBatch, Records

__all__ = [
    "ExportResult",
    "export_chat",
    "export_chat_sync",
    "export_messages",
    "export_messages_sync",
]

PAGE = 100  # messages.getHistory returns at most 100 messages
_REFERENCE_REFRESHES = 3  # FILE_REFERENCE_EXPIRED: refetch the message this many times per file
_HISTORY = "messages.GetHistory"
_GET_FILE = "upload.GetFile"
_RETRYABLE = (
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    tl_errors.ServerError,
    tl_errors.RpcCallFailError,
    tl_errors.TimedOutError,
)
_DOWNLOAD_RETRYABLE = tuple(e for e in _RETRYABLE if e is not OSError)
_COL = {name: i for i, name in enumerate(MESSAGE_COLUMNS)}


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
            f"{resumed}, {self.seconds:.1f}s, {self.msgs_per_s:,.0f} msg/s)"
        )


# --------------------------------------------------------------------------------------------------
# The request boundary: pacing, flood waits, reconnects, error translation.


class _Caller:
    """Sends requests for one export: paced, flood waits slept off or raised, disconnects retried."""

    def __init__(
        self,
        client: Any,
        pacer: Pacer,
        metrics: MetricsCollector,
        progress: Progress,
        *,
        peer: Any,
        max_retries: int = 6,
        backoff: float = 1.0,
    ) -> None:
        self.client = client
        self.pacer = pacer
        self.metrics = metrics
        self.progress = progress
        self.peer = peer
        self.max_retries = max_retries
        self.backoff = backoff
        self.reconnects = 0
        self.sent: dict[str, int] = {}
        self._reconnect_lock = asyncio.Lock()
        # Set when the peer came from the peer cache: repairs a stale access hash once (see export_chat).
        self.on_stale_peer: Callable[[], Awaitable[bool]] | None = None

    async def __call__(self, request: Any, name: str, *, via: Any = None) -> Any:
        client = via or self.client
        failures = 0
        while True:
            waited = await self.pacer.acquire(name)
            if waited:
                self.metrics.add_time("pacing", waited)
            self.sent[name] = self.sent.get(name, 0) + 1
            try:
                return await client(request)
            except tl_errors.FloodWaitError as exc:
                t0 = self.metrics.start()
                await self.pacer.flood_wait(
                    exc.seconds,
                    name,
                    peer=self.peer,
                    on_wait=lambda s, n: self.progress.countdown(s, f"FLOOD_WAIT on {n}"),
                )
                self.metrics.stop("flood_wait", t0)
                # Telethon stamped the wait with time.time(); we have waited it out ourselves.
                getattr(self.client, "_flood_waited_requests", {}).pop(request.CONSTRUCTOR_ID, None)
            except _RETRYABLE as exc:
                failures += 1
                if failures > self.max_retries:
                    raise TelegramError(
                        f"giving up after {failures} failures talking to Telegram: {exc}", peer=self.peer
                    ) from exc
                await self._recover(failures)
            except ValueError as exc:
                # Telethon ends its own retries of 5xx answers with ValueError("Request was unsuccessful N time(s)")
                if "unsuccessful" not in str(exc):
                    raise
                failures += 1
                if failures > self.max_retries:
                    raise TelegramError(f"Telegram kept failing: {exc}", peer=self.peer) from exc
                await self._recover(failures)
            except tl_errors.RPCError as exc:
                repair = self.on_stale_peer
                if repair is not None and is_peer_error(exc):
                    self.on_stale_peer = None
                    if await repair():
                        continue  # the peer object every request shares was patched in place: resend
                raise translate_telethon_error(exc, peer=self.peer) from exc

    async def _recover(self, failures: int) -> None:
        delay = min(self.backoff * 2 ** (failures - 1), 60.0)
        self.progress.set_stage(f"reconnecting (attempt {failures})")
        await asyncio.sleep(delay)
        async with self._reconnect_lock:  # one reconnect however many requests (downloads) failed together
            if not self.client.is_connected():
                with contextlib.suppress(*_RETRYABLE):
                    await self.client.connect()
                    self.reconnects += 1
        self.progress.set_stage("fetching")


def _history_request(
    peer: Any,
    *,
    offset_id: int,
    add_offset: int,
    limit: int = PAGE,
    offset_date: datetime | None = None,
    min_id: int = 0,
    max_id: int = 0,
) -> Any:
    return functions.messages.GetHistoryRequest(
        peer=peer,
        offset_id=offset_id,
        offset_date=offset_date,
        add_offset=add_offset,
        limit=limit,
        max_id=max_id,
        min_id=min_id,
        hash=0,
    )


async def _resolve(client: Any, chat: Any, peer_cache: Any) -> Any:
    if isinstance(chat, types.TypeInputPeer):
        return chat
    try:
        if peer_cache is not None:
            return await peer_cache.resolve(client, chat)
        return await client.get_input_entity(chat)
    except TgkitError:
        raise
    except (ValueError, TypeError, tl_errors.RPCError) as exc:
        err = translate_telethon_error(exc, peer=chat)
        if not isinstance(err, TelegramError) or type(err) is TelegramError:
            from .errors import PeerNotFound

            err = PeerNotFound(f"Chat not found: {chat!r} ({exc})", peer=chat)
        raise err from exc


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


def _default_peer_cache(peer_cache: Any) -> Any:
    if peer_cache is False:
        return None
    if peer_cache is None:
        from .peers import PeerCache

        return PeerCache()
    return peer_cache


def _chat_id(peer: Any) -> int:
    """The bare positive id the dataset uses for a chat (Telegram's own, unmarked)."""
    if isinstance(peer, types.InputPeerChannel):
        return peer.channel_id
    if isinstance(peer, types.InputPeerChat):
        return peer.chat_id
    if isinstance(peer, types.InputPeerUser):
        return peer.user_id
    return abs(tl_utils.get_peer_id(peer, add_mark=False))


def _title_of(result: Any, chat_id: int) -> str | None:
    for c in getattr(result, "chats", ()):
        if getattr(c, "id", None) == chat_id:
            return getattr(c, "title", None)
    for u in getattr(result, "users", ()):
        if getattr(u, "id", None) == chat_id:
            return " ".join(filter(None, (u.first_name, u.last_name))) or u.username
    return None


def _api_snapshot(client: Any) -> dict[str, int] | None:
    server = getattr(client, "offline", None)
    return server.call_log.snapshot() if server is not None else None


def _api_delta(before: dict[str, int] | None, client: Any, fallback: dict[str, int]) -> dict[str, int]:
    after = _api_snapshot(client)
    if before is None or after is None:
        return dict(sorted(fallback.items()))
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


# --------------------------------------------------------------------------------------------------
# Media


class _MediaWorker:
    """Downloads (and optionally transcodes) media beside the fetch loop; bounded concurrency."""

    def __init__(
        self,
        client: Any,
        call: _Caller,
        peer: Any,
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
        self.client = client
        self.call = call
        self.peer = peer
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

    def wanted(self, row: tuple) -> bool:
        kind = row[_COL["media_type"]]
        if kind not in self.kinds:
            return False
        size = row[_COL["media_size"]]
        return not (self.max_bytes is not None and size is not None and size > self.max_bytes)

    async def fetch(self, message: Any, row: tuple) -> tuple[str | None, str | None]:
        """Returns (path relative to the dataset, error) for one message's media."""
        async with self.sem:
            try:
                path, error = await self._fetch(message, row)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one file's failure is recorded, never aborts the export
                path, error = None, f"{type(exc).__name__}: {exc}"[:500]
            if path is None:
                self.result.media_failed += 1
            return path, error

    async def _fetch(self, message: Any, row: tuple) -> tuple[str | None, str | None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        kind = row[_COL["media_type"]]
        name = media_file_name(message.id, kind, row[_COL["media_file_name"]], row[_COL["media_mime"]])
        dest = safe_path(self.dir, name)
        t0 = self.metrics.start()
        tmp = dest.with_name(dest.name + ".part")
        refreshes = failures = 0
        while True:
            waited = await self.call.pacer.acquire(_GET_FILE)
            if waited:
                self.metrics.add_time("pacing", waited)
            try:
                await self.client.download_media(message, file=str(tmp))
                break
            except tl_errors.FloodWaitError as exc:
                # Blocks downloads only (history keeps going); above the ceiling this file fails.
                failures += 1
                if failures > self.call.max_retries:
                    raise
                await self.call.pacer.flood_wait(
                    exc.seconds,
                    _GET_FILE,
                    peer=self.call.peer,
                    on_wait=lambda s, n: self.progress.countdown(s, f"FLOOD_WAIT on {n}"),
                )
                flood_marks = getattr(self.client, "_flood_waited_requests", {})
                flood_marks.pop(functions.upload.GetFileRequest.CONSTRUCTOR_ID, None)
                continue
            except _DOWNLOAD_RETRYABLE:
                # The connection dropped under the download (the fetch loop sees it too): back off,
                # reconnect (once for everyone), download again.  Local file errors are not retried.
                failures += 1
                if failures > self.call.max_retries:
                    raise
                await self.call._recover(failures)
                continue
            except tl_errors.FileReferenceExpiredError:
                # A fresh reference can expire again mid-download (a long file, a busy account): a few
                # refreshes, never an endless loop.
                refreshes += 1
                if refreshes > _REFERENCE_REFRESHES:
                    raise
                # References expire; a fresh copy of the message carries a fresh one.
                fresh = await self.call(
                    functions.channels.GetMessagesRequest(self.peer, [types.InputMessageID(message.id)])
                    if isinstance(self.peer, types.InputPeerChannel)
                    else functions.messages.GetMessagesRequest([types.InputMessageID(message.id)]),
                    "channels.GetMessages",
                )
                found = [m for m in fresh.messages if getattr(m, "id", None) == message.id and m.media]
                if not found:
                    return None, "message or media no longer available"
                message = found[0]
        if not tmp.exists():
            return None, "download produced no file"
        tmp.replace(dest)
        self.metrics.stop("download", t0)
        self.result.media_downloaded += 1
        self.progress.update(media=1)
        rel = dest.relative_to(self.root).as_posix()
        if self.transcode and kind in ("video", "video_note", "animation"):
            from . import hardware, video

            t1 = self.metrics.start()
            if self._report is None:
                self._report = await asyncio.to_thread(hardware.probe)
            out = dest.with_name(dest.stem + ".720p.mp4")
            try:
                await video.transcode_async(dest, out, report=self._report)
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
    peers: list[tuple] = field(default_factory=list)  # dataset v2 (#14): peers rows of the batch's pages


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
            self.part.observe_peers(item.peers)  # dataset v2 (#14): committed by commit_tables
            return
        if item.media:
            paths = item.batch.cols["media_path"]
            errors_ = item.batch.cols["media_error"]
            for idx, task in item.media:
                path, err = await task
                paths[idx] = path
                errors_[idx] = err
        t0 = self.metrics.start()
        self.part.observe_peers(item.peers)  # dataset v2 (#14): committed with this part
        table = item.batch.to_arrow()  # GIL-bound: a thread would only contend with the fetch loop
        self.cp, nbytes = await asyncio.to_thread(self.part.write_part, self.cp, table, last_id=item.last_id)
        self.metrics.stop("write", t0)
        self.metrics.add_bytes_written(nbytes)
        self.result.parts_written += 1
        self.result.bytes_written += nbytes
        self.result.messages += table.num_rows
        self.result.total_rows = self.cp.rows
        self.result.last_id = self.cp.last_id


# --------------------------------------------------------------------------------------------------


async def export_chat(
    client: Any,
    chat: Any,
    out: str | Path,
    *,
    resume: bool = True,
    limit: int | None = None,
    batch_size: int = 10_000,
    progress: Any = "auto",
    peer_cache: Any = None,
    media: Any = None,
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
) -> ExportResult:
    """Export ``chat`` into the Parquet dataset at ``out`` (oldest to newest, resumable, incremental).

    ``media``: ``None``/``False`` (no downloads), ``True``/``"all"``, or kinds such as
    ``["photo", "video"]``; files go to ``out/_media/chat_id=<id>/`` and the rows point at them.
    ``transcode=True`` also normalises videos to H.264/720p (VA-API when present, else CPU).
    ``refresh_days=N`` re-reads the last N days on an incremental run to capture edits, reactions,
    view counts and deletions.  With ``media``, a rerun first retries the media of committed rows whose
    download failed (``retry_media=False`` skips that).  ``peer_cache=False`` disables the persistent
    peer cache.
    """
    root = prepare_output_dir(out)  # before any request is sent (upgrades a layout-1 dataset)
    _protect_session_file(client)
    if batch_size < 1:
        from .errors import ConfigError

        raise ConfigError("batch_size must be at least 1")
    kinds = normalise_media_kinds(media)
    started = time.perf_counter()
    collector = MetricsCollector(enabled=bool(metrics))
    resource_monitor = (
        ResourceMonitor(interval=monitor if isinstance(monitor, float) else 0.5) if monitor else None
    )
    bar = make_progress(progress, desc=f"export {chat}")
    cache = _default_peer_cache(peer_cache)
    pace = pacer or Pacer.for_client(client, flood_ceiling=flood_ceiling)
    api_before = _api_snapshot(client)
    saved_threshold = client.flood_sleep_threshold
    client.flood_sleep_threshold = 0  # tgkit's own policy handles every flood wait (countdown, ceiling)
    result = ExportResult(path=root, chat_id=0, peer=str(chat))
    takeout_ctx = None
    writer: _Writer | None = None
    try:
        if resource_monitor is not None:
            resource_monitor.start()
        hits_before = getattr(cache, "hits", None)
        with collector.timer("resolve"):
            peer = await _resolve(client, chat, cache)
        chat_id = _chat_id(peer)
        result.chat_id = chat_id
        part = ChatPartition(root, chat_id)
        cp = part.load() if resume else None
        cp = part.start(cp)
        cp.peer = str(chat)
        result.resumed_from = cp.last_id or None
        result.total_rows = cp.rows
        result.last_id = cp.last_id
        caller = _Caller(client, pace, collector, bar, peer=chat)
        if hits_before is not None and cache.hits > hits_before and hasattr(cache, "recover"):
            # A cache hit asked Telegram nothing: if the first request says CHANNEL_INVALID & co., drop the
            # entry, resolve once more and retry (PeerCache.recover); a fresh peer's error is final.
            caller.on_stale_peer = lambda: cache.recover(client, chat, peer)
        via = None
        if takeout:
            takeout_ctx, via = await _enter_takeout(client, chat)
        worker = (
            _MediaWorker(client, caller, peer, root, chat_id, kinds, max_bytes=media_max_bytes,
                         concurrency=media_concurrency, transcode=transcode, metrics=collector, progress=bar,
                         result=result)
            if kinds else None
        )  # fmt: skip
        if refresh_days and cp.last_id:
            cp = await _refresh(caller, via, peer, part, cp, refresh_days, collector, bar, result, root)
        if worker is not None and cp.parts and retry_media:
            cp = await _retry_media(caller, peer, part, cp, worker, bar, result, root)
        writer = _Writer(part, cp, collector, result, root)
        writer.start()
        bar.set_stage("fetching")
        await _stream(
            caller,
            via,
            peer,
            chat_id,
            cp,
            writer,
            worker,
            collector,
            bar,
            result,
            limit=limit,
            batch_size=batch_size,
            peer_cache=cache,
        )
        await writer.close()
        writer = None
        # dataset v2 (#14): the chats row (after the history: a stale cached peer is repaired by then), then
        # commit it and the run's peers (and a new title) even without new rows
        part.set_chat(**await _chat_metadata(caller, peer))
        final = part.load() or cp
        if result.title:
            final.title = result.title
            part.set_chat(title=result.title)
        part.commit_tables(final)
        bar.set_stage("done")
    except BaseException as exc:
        if writer is not None:
            # commit what was fetched and converted before the failure: a rerun resumes after it
            with contextlib.suppress(BaseException):
                await asyncio.shield(writer.close())
        if isinstance(exc, FloodWaitTooLong | ExportError) and result.chat_id:
            exc.checkpoint = ChatPartition(root, result.chat_id).checkpoint_path
        bar.close()
        raise
    finally:
        client.flood_sleep_threshold = saved_threshold
        if takeout_ctx is not None:
            with contextlib.suppress(Exception):
                await takeout_ctx.__aexit__(None, None, None)
        if resource_monitor is not None:
            resource_monitor.stop()
        if cache is not None:
            with contextlib.suppress(Exception):
                cache.save()
        result.seconds = time.perf_counter() - started
        result.flood_waits = pace.flood_waits
        result.flood_wait_seconds = pace.flood_wait_s
        result.api_calls = _api_delta(api_before, client, getattr(locals().get("caller"), "sent", {}))
        result.reconnects = getattr(locals().get("caller"), "reconnects", 0)
        collector.set_api_calls(result.api_calls)
        if cache is not None and hasattr(cache, "stats"):
            collector.set_cache_stats("peer_cache", cache.stats())
        collector.count("messages", result.messages)
        collector.finish()
        result.metrics = collector
        if result.chat_id and metrics:
            with contextlib.suppress(OSError):
                result.metrics_path = collector.to_json(
                    root / METRICS_DIR / f"chat_id={result.chat_id}" / "metrics.json"
                )
            if resource_monitor is not None:
                with contextlib.suppress(OSError):
                    result.resources_path = resource_monitor.samples.to_parquet(
                        root / METRICS_DIR / f"chat_id={result.chat_id}" / "resources.parquet"
                    )
    bar.close()
    return result


async def _chat_metadata(caller: _Caller, peer: Any) -> dict[str, Any]:
    """dataset v2 (#14): the chats row's metadata: one GetFullChannel (or GetFullChat) per chat and run."""
    if isinstance(peer, types.InputPeerChannel):
        full = await caller(functions.channels.GetFullChannelRequest(peer), "channels.GetFullChannel")
    elif isinstance(peer, types.InputPeerChat):
        full = await caller(functions.messages.GetFullChatRequest(peer.chat_id), "messages.GetFullChat")
    else:
        return {"kind": "user", "type": "private"}
    return convert.chat_fields(full)


async def _enter_takeout(client: Any, chat: Any) -> tuple[Any, Any]:
    ctx = client.takeout(finalize=True, channels=True, megagroups=True, users=True, chats=True)
    try:
        takeout_client = await ctx.__aenter__()
    except tl_errors.TakeoutInitDelayError as exc:
        raise TelegramError(
            f"Telegram delays takeout sessions for new logins: confirm the data export request in another "
            f"Telegram app, or retry in {exc.seconds}s (or export without takeout=True)",
            peer=chat,
        ) from exc
    return ctx, takeout_client


async def _stream(
    caller: _Caller,
    via: Any,
    peer: Any,
    chat_id: int,
    cp: Checkpoint,
    writer: _Writer,
    worker: _MediaWorker | None,
    m: MetricsCollector,
    bar: Progress,
    result: ExportResult,
    *,
    limit: int | None,
    batch_size: int,
    peer_cache: Any = None,
) -> None:
    """Fetch pages oldest-to-newest after the checkpoint, prefetching one page ahead."""

    def fetch(offset: int) -> asyncio.Task:
        return asyncio.ensure_future(
            caller(_history_request(peer, offset_id=offset, add_offset=-PAGE), _HISTORY, via=via)
        )

    remaining = limit
    batch = ColumnBatch()
    media_tasks: list[tuple[int, asyncio.Task]] = []
    peers: list[tuple] = []  # dataset v2 (#14): free names from every page's .users/.chats
    top = cp.last_id
    pending: asyncio.Task | None = fetch(top + 1)
    first = True
    try:
        while True:
            assert pending is not None  # the loop breaks before it would await nothing
            t0 = m.start()
            page = await pending
            m.stop("fetch", t0)
            result.pages += 1
            msgs = page.messages
            peers.extend(convert.peer_rows(page.users, page.chats, int(time.time())))
            if first:
                first = False
                result.title = _title_of(page, chat_id)
                if peer_cache is not None and hasattr(peer_cache, "learn"):
                    peer_cache.learn(page)  # free knowledge: the page's .chats/.users (first page only)
                count = getattr(page, "count", None)
                if count is not None:
                    bar.set_total(max(count - cp.rows, len(msgs)) if remaining is None else remaining)
            if not msgs:
                break
            top = max(msg.id for msg in msgs)
            done = remaining is not None and remaining <= len(msgs)
            pending = None if done else fetch(top + 1)
            t1 = m.start()
            chunk = sorted(msgs, key=lambda x: x.id)
            if remaining is not None:
                chunk = chunk[:remaining]
                top = chunk[-1].id if chunk else top
            rows = [row for row in map(convert.message_row, chunk, repeat(chat_id)) if row is not None]
            if worker is not None:
                base = len(batch)
                for i, (msg, row) in enumerate(
                    zip((x for x in chunk if not isinstance(x, types.MessageEmpty)), rows)
                ):
                    if worker.wanted(row):
                        media_tasks.append((base + i, asyncio.create_task(worker.fetch(msg, row))))
            batch.extend_rows(rows)
            added = len(rows)
            m.stop("convert", t1)
            bar.update(messages=added)
            if remaining is not None:
                remaining -= len(chunk)
            if len(batch) >= batch_size:
                await writer.submit(_Pending(batch, top, media_tasks, peers))
                batch, media_tasks, peers = ColumnBatch(), [], []
            if done:
                break
    except BaseException:
        if pending is not None:
            pending.cancel()
        for _, task in media_tasks:
            task.cancel()
        if len(batch):
            # keep what was fetched: media that did not finish is recorded as interrupted
            for idx, _task in media_tasks:
                batch.cols["media_error"][idx] = "interrupted"
            await writer.submit(_Pending(batch, top, [], peers))
        raise
    if len(batch):
        await writer.submit(_Pending(batch, top, media_tasks, peers))
    elif peers:
        await writer.submit(_Pending(batch, top, [], peers))  # no rows: peers only (committed at the end)


async def _retry_media(
    caller: _Caller,
    peer: Any,
    part: ChatPartition,
    cp: Checkpoint,
    worker: _MediaWorker,
    bar: Progress,
    result: ExportResult,
    root: Path,
) -> Checkpoint:
    """Download again the media of committed rows that recorded an error (an interrupted run, a
    transient failure), and swap the parts that held them for corrected ones."""
    for name, ids in list(part.failed_media(cp, sorted(worker.kinds))):
        bar.set_stage(f"retrying {len(ids)} media file(s)")
        fixed: dict[int, tuple[str | None, str | None]] = {}
        for start in range(0, len(ids), PAGE):
            chunk = [types.InputMessageID(i) for i in ids[start : start + PAGE]]
            if isinstance(peer, types.InputPeerChannel):
                page = await caller(
                    functions.channels.GetMessagesRequest(peer, chunk), "channels.GetMessages"
                )
            else:
                page = await caller(functions.messages.GetMessagesRequest(chunk), "messages.GetMessages")
            jobs = []
            for msg in page.messages:
                row = convert.message_row(msg, part.chat_id)
                if row is not None and worker.wanted(row):
                    jobs.append((msg.id, asyncio.create_task(worker.fetch(msg, row))))
            for msg_id, task in jobs:
                fixed[msg_id] = await task
        if not fixed:
            continue
        recovered = sum(1 for p, err in fixed.values() if err is None and p is not None)
        result.media_retried += len(fixed)
        result.media_recovered += recovered
        cp = await asyncio.to_thread(part.patch_media, cp, name, fixed)  # dataset v2 (#14): in ChatPartition
    return cp


async def _refresh(
    caller: _Caller,
    via: Any,
    peer: Any,
    part: ChatPartition,
    cp: Checkpoint,
    days: float,
    m: MetricsCollector,
    bar: Progress,
    result: ExportResult,
    root: Path,
) -> Checkpoint:
    """Re-read the last ``days`` of already-exported messages; keep one current row per message.

    Rows whose message no longer exists are dropped from the dataset and counted in ``deleted``.
    """
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
    batch = ColumnBatch()
    seen: set[int] = set()
    offset = lo
    while offset <= cp.last_id:
        t0 = m.start()
        page = await caller(_history_request(peer, offset_id=offset, add_offset=-PAGE), _HISTORY, via=via)
        m.stop("fetch", t0)
        result.pages += 1
        msgs = [x for x in page.messages if x.id <= cp.last_id]
        if not page.messages:
            break
        part.observe_peers(convert.peer_rows(page.users, page.chats, int(time.time())))  # dataset v2 (#14)
        for msg in sorted(msgs, key=lambda x: x.id):
            row = convert.message_row(msg, part.chat_id)
            if row is not None:
                batch.append_row(row)
                seen.add(row[1])
        offset = max(x.id for x in page.messages) + 1
        if offset > cp.last_id:
            break
    # dataset v2 (#14): the merge (media paths kept, deletions found) lives in ChatPartition
    new_cp, nbytes, gone = await asyncio.to_thread(
        part.apply_refresh, cp, batch.to_polars(), lo, refreshed_until=int(time.time())
    )
    result.deleted = len(gone)
    result.refreshed = len(seen)
    result.bytes_written += nbytes
    result.total_rows = new_cp.rows
    return new_cp


# --------------------------------------------------------------------------------------------------


async def export_messages(
    client: Any,
    chat: Any,
    *,
    limit: int | None = None,
    min_id: int = 0,
    max_id: int = 0,
    since: datetime | None = None,
    until: datetime | None = None,
    peer_cache: Any = False,
    pacer: Pacer | None = None,
    progress: Any = False,
) -> Records:
    """The newest ``limit`` messages (optionally only ids in (min_id, max_id) and dates in
    [since, until)) as slotted records, oldest first.  For small, interactive looks; use
    :func:`export_chat` for whole chats."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            from .errors import ConfigError

            raise ConfigError(f"{name} must be timezone-aware (e.g. datetime(..., tzinfo=timezone.utc))")
    bar = make_progress(progress, total=limit, desc=f"messages {chat}")
    peer = await _resolve(client, chat, _default_peer_cache(peer_cache))
    chat_id = _chat_id(peer)
    pace = pacer or Pacer.for_client(client)
    caller = _Caller(client, pace, MetricsCollector(enabled=False), bar, peer=chat)
    saved = client.flood_sleep_threshold
    client.flood_sleep_threshold = 0
    rows: list[Any] = []
    offset_id, offset_date = max_id, until
    since_ts = since.timestamp() if since is not None else None
    try:
        while limit is None or len(rows) < limit:
            want = PAGE if limit is None else min(PAGE, limit - len(rows))
            page = await caller(
                _history_request(
                    peer,
                    offset_id=offset_id,
                    add_offset=0,
                    limit=want,
                    offset_date=offset_date,
                    min_id=min_id,
                ),
                _HISTORY,
            )
            msgs = [x for x in page.messages if not isinstance(x, types.MessageEmpty)]
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
        client.flood_sleep_threshold = saved
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
