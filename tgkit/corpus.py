"""Many chats in one run on one account: ``export_chats`` and the dialog list.

    frame = await tgkit.export_chats(client, ["@a", "@b", "@c"], "data/corpus", concurrency=4)
    dialogs = await tgkit.list_dialogs(client, kinds=("channel", "group"))

Every chat goes into the one dataset (``OUT/messages/chat_id=N/`` ...), each through
:func:`tgkit.export_chat` with its own checkpoint, so a rerun of the same call finishes what is
unfinished and picks up new messages everywhere.  Several chats run at a time, and all of them share:

* the account's ONE pacer (:func:`tgkit.telegram.default_pacer`, or the caller's ``pacer=``): Telegram's
  limits are per account and per method, so concurrency overlaps the methods (one chat's history pages
  while another resolves its name or asks for its full channel), never the same method faster.  The
  account's limit is the limit; concurrency does not make it flood more;
* the peer cache (a name resolved, or learned from a page, is never asked for twice);
* one overall progress display (chats done/total, messages, rate, the chats running now, the pacer).

One chat's failure is recorded in the result frame and the others go on: an unknown name
(``PeerNotFound``), a private or banned chat (``TelegramError``), a corrupt checkpoint (``CacheError``).

``FloodWaitTooLong`` (Telegram asked for a wait above the ceiling, ``TGKIT_FLOOD_CEILING``) parks one
METHOD of the account, not the chat: every other chat that needs that method would meet the same wait.
So, for the rest of the run, a request of a parked method fails at once with ``FloodWaitTooLong``
instead of sending it (the chat is recorded ``failed``, what it fetched is committed); chats that do not
need it go on (a ``contacts.ResolveUsername`` wait does not stop chats whose peers are cached; an
``upload.GetFile`` wait only fails media downloads, recorded per row and retried by the next run).
Once ``messages.GetHistory`` is parked, no further chat starts (all would fail): they are recorded
``failed`` with the time to rerun, without a request.  Waiting is the caller's decision: rerun later.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import polars as pl

from . import convert
from .dataset import ChatPartition, prepare_output_dir
from .distributed import read_chats_file
from .errors import CacheError, ConfigError, FloodWaitTooLong, TgkitError
from .jupyter import NullProgress, Progress, ProgressMode, make_progress, run_sync
from .pacing import Pacer
from .peers import PeerCache, normalise_key
from .telegram import Gateway, chat_id_of, default_pacer

__all__ = [
    "DIALOG_SCHEMA",
    "RESULT_SCHEMA",
    "export_chats",
    "export_chats_sync",
    "list_dialogs",
    "list_dialogs_sync",
    "read_chats_file",
]

log = logging.getLogger("tgkit.corpus")

HISTORY = "messages.GetHistory"
KINDS = ("channel", "group", "user")
RESULT_SCHEMA: dict[str, Any] = {
    "chat": pl.String,  # as the caller spelled it
    "chat_id": pl.Int64,  # null when it never resolved
    "title": pl.String,
    "status": pl.String,  # done / failed / skipped
    "rows": pl.Int64,  # rows this run committed (null when nothing is known)
    "total_rows": pl.Int64,  # rows committed for the chat, all runs
    "seconds": pl.Float64,
    "error": pl.String,  # one line: the error's type and message
}
DIALOG_SCHEMA: dict[str, Any] = {
    "id": pl.Int64,
    "kind": pl.String,  # channel / group / user
    "type": pl.String,  # broadcast, megagroup, gigagroup, group, private, bot, self
    "title": pl.String,
    "username": pl.String,
    "chat": pl.String,  # what to pass to export_chat(s): @username, else the marked id
    "unread": pl.Int64,
    "unread_mentions": pl.Int64,
    "last_message_id": pl.Int64,
    "last_message_date": pl.Datetime("us", "UTC"),
    "participants": pl.Int64,
    "archived": pl.Boolean,
    "pinned": pl.Boolean,
    "peer_kind": pl.String,  # user / channel / chat (as in the peers table)
}
_OWN_OPTIONS = frozenset({"client", "chat", "out", "progress", "pacer", "peer_cache"})


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _human(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------------------------------
# The shared pacer, with parked methods


class _RunPacer:
    """The account's pacer as the chats of one run share it.

    A method whose lane the pacer holds blocked for longer than its flood ceiling (Telegram asked for a
    wait above it: :class:`FloodWaitTooLong`) is parked: a request of it raises ``FloodWaitTooLong`` at
    once instead of sleeping for hours in ``acquire``.  Everything else is the account's pacer itself
    (counters, snapshot, save)."""

    def __init__(self, pacer: Pacer) -> None:
        self.inner = pacer

    def parked_for(self, method: str) -> float:
        """Seconds ``method`` stays parked (0 when it is not)."""
        state = self.inner.snapshot().get(method)
        blocked = float((state or {}).get("blocked_for") or 0.0)
        return blocked if blocked > self.inner.flood_ceiling else 0.0

    def parked(self) -> dict[str, float]:
        return {m: left for m in self.inner.snapshot() if (left := self.parked_for(m)) > 0}

    async def acquire(self, name: str, cost: int = 1) -> float:
        left = self.parked_for(name)
        if left:
            raise FloodWaitTooLong(
                f"{name} is parked for another {_human(left)} (Telegram asked for a wait above the "
                f"ceiling of {int(self.inner.flood_ceiling)}s); rerun then to resume",
                seconds=int(left),
            )
        return await self.inner.acquire(name, cost)

    async def flood_wait(self, seconds: float, name: str, **kwargs: Any) -> None:
        await self.inner.flood_wait(seconds, name, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# --------------------------------------------------------------------------------------------------
# Progress: one display for the run; each chat's export reports into it


class _ChatProgress(NullProgress):
    """What one chat's export reports to: counted here (shows nothing) and passed on to the run's bar."""

    def __init__(self, parent: Progress, desc: str) -> None:
        super().__init__(desc=desc, clock=parent.clock)
        self.parent = parent

    def update(self, messages: int = 0, media: int = 0) -> None:
        super().update(messages, media)
        self.parent.update(messages=messages, media=media)

    def media_queued(self, n: int = 1) -> None:
        super().media_queued(n)
        self.parent.media_queued(n)

    def media_done(self, ok: bool = True) -> None:
        super().media_done(ok)
        self.parent.media_done(ok)

    def countdown(self, seconds: float, reason: str = "") -> None:
        super().countdown(seconds, reason)
        self.parent.countdown(seconds, reason)


# --------------------------------------------------------------------------------------------------
# The run


@dataclass(slots=True)
class _Chat:
    index: int
    chat: Any
    label: str
    key: Any = None  # normalised spelling (literal duplicates are skipped before anything is sent)
    row: dict[str, Any] | None = None


class _CorpusRun:
    """One ``export_chats`` call: the chats, the shared pacer/cache/progress, the result rows."""

    def __init__(
        self,
        client: Any,
        chats: list[Any],
        root: Path,
        options: dict[str, Any],
        *,
        concurrency: int,
        pacer: Pacer,
        cache: PeerCache,
        progress: ProgressMode | Progress,
    ) -> None:
        self.client = client
        self.root = root
        self.options = options
        self.concurrency = concurrency
        self.pacer = _RunPacer(pacer)
        self.cache = cache
        self.items = [_Chat(i, c, _label(c)) for i, c in enumerate(chats)]
        self.bar = make_progress(progress, desc=f"export_chats ({len(chats)} chats)")
        self.bar.set_pacer(pacer)
        self.claimed: dict[int, str] = {}  # chat_id -> the entry exporting it
        self.running: list[str] = []
        self.finished: Counter[str] = Counter()
        self.api_calls: Counter[str] = Counter()  # of the resolve steps (exports count their own)
        self._next = 0

    # ---------------------------------------------------------------------------------- driving

    async def run(self) -> pl.DataFrame:
        keys: dict[Any, str] = {}
        for item in self.items:
            try:
                item.key = _chat_key(item.chat)
            except ConfigError as exc:  # bad input: this entry fails, the others go on
                self._record(item, "failed", seconds=0.0, error=_one_line(exc))
                continue
            if item.key in keys:
                self._record(item, "skipped", seconds=0.0, error=f"listed twice (as {keys[item.key]!r})")
            else:
                keys[item.key] = item.label
        self._show()
        workers = [
            asyncio.create_task(self._worker(), name=f"tgkit-export-chats-{i}")
            for i in range(max(1, min(self.concurrency, len(self.items))))
        ]
        try:
            await asyncio.gather(*workers)
        except BaseException as exc:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)  # each export commits on its way out
            self.bar.close(error=exc)
            raise
        self._finish_bar()
        return self.frame()

    async def _worker(self) -> None:
        while self._next < len(self.items):
            item = self.items[self._next]
            self._next += 1
            if item.row is None:
                await self._export(item)

    def frame(self) -> pl.DataFrame:
        rows = [item.row for item in self.items if item.row is not None]
        return pl.DataFrame(rows, schema=RESULT_SCHEMA)

    # ---------------------------------------------------------------------------------- one chat

    async def _export(self, item: _Chat) -> None:
        from .export import export_chat

        loop = asyncio.get_running_loop()
        started = loop.time()
        history = self.pacer.parked_for(HISTORY)
        if history:
            at = datetime.now(UTC) + timedelta(seconds=history)
            self._record(
                item, "failed", seconds=0.0,
                error=f"not started: {HISTORY} is parked for another {_human(history)} after a flood wait "
                f"above the ceiling; rerun after {at:%Y-%m-%d %H:%M} UTC to resume",
            )  # fmt: skip
            return
        child = _ChatProgress(self.bar, item.label)
        chat_id: int | None = None
        before: int | None = None
        self.running.append(item.label)
        self._show()
        try:
            async with Gateway(
                self.client, pacer=cast(Pacer, self.pacer), peer_cache=self.cache, progress=child
            ) as gw:
                try:
                    peer = await gw.resolve(item.chat)
                finally:
                    self.api_calls.update(gw.api_calls)
            chat_id = chat_id_of(peer)
            other = self.claimed.get(chat_id)
            if other is not None:
                self._record(item, "skipped", chat_id=chat_id, seconds=loop.time() - started,
                             error=f"the same chat as {other!r}")  # fmt: skip
                return
            self.claimed[chat_id] = item.label
            before = _committed_rows(self.root, chat_id)
            result = await export_chat(
                self.client, item.chat, self.root, progress=child, pacer=cast(Pacer, self.pacer),
                peer_cache=self.cache, **self.options,
            )  # fmt: skip
            self._record(
                item, "done", chat_id=result.chat_id, title=result.title, rows=result.messages,
                total_rows=result.total_rows, seconds=loop.time() - started,
            )  # fmt: skip
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one chat's failure is recorded; the others go on
            if not isinstance(exc, TgkitError):
                log.warning("export of %s failed unexpectedly", item.label, exc_info=exc)
            total = _committed_rows(self.root, chat_id) if chat_id is not None else None
            self._record(
                item, "failed", chat_id=chat_id, title=_committed_title(self.root, chat_id),
                rows=None if total is None else total - (before or 0), total_rows=total,
                seconds=loop.time() - started, error=_one_line(exc),
            )  # fmt: skip
        finally:
            if item.label in self.running:
                self.running.remove(item.label)
            self._show()

    def _record(self, item: _Chat, status: str, **fields: Any) -> None:
        row = dict.fromkeys(RESULT_SCHEMA)
        row.update(chat=item.label, status=status, **fields)
        item.row = row
        self.finished[status] += 1

    # ---------------------------------------------------------------------------------- display

    def _show(self) -> None:
        total = len(self.items)
        done = sum(self.finished.values())
        text = f"{done}/{total} chats"
        extra = [f"{n} {s}" for s, n in sorted(self.finished.items()) if s != "done" and n]
        if extra:
            text += f" ({', '.join(extra)})"
        if self.running:
            now = ", ".join(self.running[:3]) + (
                f" +{len(self.running) - 3}" if len(self.running) > 3 else ""
            )
            text += f" | now: {now}"
        self.bar.set_stage(text)

    def _finish_bar(self) -> None:
        total = len(self.items)
        parts = [f"{n} {s}" for s, n in sorted(self.finished.items()) if n]
        self.bar.desc = f"export_chats: {total} chats ({', '.join(parts) or 'none'})"
        self.bar.close()


def _label(chat: Any) -> str:
    if isinstance(chat, str | int):
        return str(chat)
    with contextlib.suppress(Exception):  # an InputPeer / entity: its type and id, never its access hash
        return f"{type(chat).__name__}({chat_id_of(chat)})"
    return type(chat).__name__


def _chat_key(chat: Any) -> Any:
    """One spelling per chat (``@Name``, ``t.me/name`` and ``name`` are the same); ConfigError for bad
    input (an invite link, a phone number)."""
    if isinstance(chat, str | int) and not isinstance(chat, bool):
        return normalise_key(chat)
    try:
        return (type(chat).__name__, chat_id_of(chat))
    except Exception as exc:
        raise ConfigError(f"not a chat: {chat!r}") from exc


def _committed_rows(root: Path, chat_id: int | None) -> int | None:
    if chat_id is None:
        return None
    with contextlib.suppress(CacheError, OSError):
        cp = ChatPartition(root, chat_id).load()
        return cp.rows if cp is not None else 0
    return None


def _committed_title(root: Path, chat_id: int | None) -> str | None:
    if chat_id is None:
        return None
    with contextlib.suppress(CacheError, OSError):
        cp = ChatPartition(root, chat_id).load()
        return cp.title if cp is not None else None
    return None


def _chat_list(chats: Any) -> list[Any]:
    if isinstance(chats, pl.DataFrame):
        if "chat" not in chats.columns:
            raise ConfigError("a frame of chats needs a 'chat' column (as list_dialogs returns)")
        chats = chats["chat"]
    if isinstance(chats, pl.Series):
        return [c for c in chats.to_list() if c is not None]
    if isinstance(chats, os.PathLike):
        return list(read_chats_file(chats))
    if isinstance(chats, str):
        return [chats]
    if isinstance(chats, int) or not isinstance(chats, Iterable):
        return [chats]
    items = []
    for c in chats:
        if isinstance(c, str):
            c = c.strip()
            if not c:
                continue
        items.append(c)
    return items


def _peer_cache(peer_cache: PeerCache | bool | None) -> PeerCache:
    if isinstance(peer_cache, PeerCache):
        return peer_cache
    # False: nothing persisted, but the chats of this run still share what was resolved
    return PeerCache(False if peer_cache is False else None)


def export_options(options: dict[str, Any], *, comments: bool, since: Any, until: Any) -> dict[str, Any]:
    """``options`` plus ``comments``/``since``/``until`` (only when asked for, so an ``export_chat``
    without them still runs the plain call), checked against :func:`tgkit.export_chat`'s keywords."""
    from .export import export_chat

    opts = dict(options)
    if comments:
        opts["comments"] = True
    if since is not None:
        opts["since"] = since
    if until is not None:
        opts["until"] = until
    accepted = inspect.signature(export_chat).parameters
    for name in opts:
        if name in _OWN_OPTIONS or name not in accepted:
            # fail here, before a request is sent, not once per chat
            raise ConfigError(f"{name}= is not an option of export_chat in this tgkit")
    return opts


async def export_chats(
    client: Any,
    chats: Iterable[Any] | pl.DataFrame | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    concurrency: int = 4,
    comments: bool = False,
    since: Any = None,
    until: Any = None,
    progress: ProgressMode | Progress = "auto",
    pacer: Pacer | None = None,
    peer_cache: PeerCache | bool | None = None,
    flood_ceiling: float | None = None,
    **export_chat_options: Any,
) -> pl.DataFrame:
    """Export every chat of ``chats`` into the one dataset at ``out``, ``concurrency`` at a time.

    ``chats``: names, links, ids (a list, a chats file as a ``Path``, or a frame with a ``chat`` column
    such as :func:`list_dialogs` returns).  ``comments``, ``since``, ``until`` and every other keyword
    go to each :func:`tgkit.export_chat`.  All chats share the account's one pacer (``pacer``, default
    :func:`tgkit.telegram.default_pacer`), one peer cache (``peer_cache=False``: kept in memory only)
    and one progress display.  A rerun of the same call finishes what is unfinished and picks up new
    messages everywhere (per-chat checkpoints).

    Returns one row per entry, in input order: chat, chat_id, title, status (``done``; ``failed`` with
    the error; ``skipped``: listed twice, or the same chat as an earlier entry), rows (new this run),
    total_rows, seconds, error.  A method parked by :class:`~tgkit.errors.FloodWaitTooLong` fails the
    chats that need it for the rest of the run (see :mod:`tgkit.corpus`).
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"concurrency must be a whole number >= 1, not {concurrency!r}")
    items = _chat_list(chats)
    options = export_options(export_chat_options, comments=comments, since=since, until=until)
    root = prepare_output_dir(out)  # before any request is sent (upgrades a layout-1 dataset)
    shared = pacer if pacer is not None else default_pacer(client, flood_ceiling)
    cache = _peer_cache(peer_cache)
    run = _CorpusRun(
        client, items, root, options, concurrency=concurrency, pacer=shared, cache=cache, progress=progress
    )
    try:
        return await run.run()
    finally:
        with contextlib.suppress(Exception):
            cache.save()
        with contextlib.suppress(OSError):
            shared.save()


# --------------------------------------------------------------------------------------------------
# Dialogs


async def list_dialogs(
    client: Any,
    *,
    kinds: Iterable[str] = KINDS,
    archived: bool | None = None,
    limit: int | None = None,
    pacer: Pacer | None = None,
    peer_cache: PeerCache | bool | None = None,
) -> pl.DataFrame:
    """The account's dialogs (its chats list) as a Polars frame, pinned first, then newest first.

    ``kinds``: any of ``channel`` (broadcast channels), ``group`` (supergroups and basic groups),
    ``user`` (people, bots, Saved Messages).  ``archived``: None both lists, True the archive only,
    False the main list only.  ``limit``: at most this many dialogs are fetched (before ``kinds``
    filters them).  Columns: :data:`DIALOG_SCHEMA`; ``chat`` is what to pass to :func:`export_chats`.
    The pages' users and chats go into the peer cache (free: exporting them later resolves nothing).
    """
    wanted = {kinds} if isinstance(kinds, str) else set(kinds)
    unknown = wanted - set(KINDS)
    if unknown:
        raise ConfigError(f"kinds: unknown {sorted(unknown)}; use any of {', '.join(KINDS)}")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, not {limit}")
    cache: PeerCache | None = None if peer_cache is False else _peer_cache(peer_cache)
    folder = None if archived is None else (1 if archived else 0)
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    try:
        async with Gateway(client, pacer=pacer, peer_cache=cache) as gw:
            async for page in gw.dialog_pages(folder_id=folder, limit=limit):
                if cache is not None:
                    cache.learn(page)
                for row in convert.dialog_rows(page):
                    key = (row["peer_kind"], row["id"])
                    if key not in seen:
                        seen.add(key)
                        rows.append(row)
    finally:
        if cache is not None:
            with contextlib.suppress(Exception):
                cache.save()
    if limit is not None:
        rows = rows[:limit]
    frame = pl.DataFrame(
        [{k: r[k] for k in DIALOG_SCHEMA} for r in rows],
        schema={**DIALOG_SCHEMA, "last_message_date": pl.Int64},
    )
    frame = frame.with_columns(
        pl.from_epoch("last_message_date", time_unit="s")
        .dt.replace_time_zone("UTC")
        .cast(DIALOG_SCHEMA["last_message_date"])
    )
    return frame.filter(pl.col("kind").is_in(sorted(wanted)))


def export_chats_sync(*args: Any, **kwargs: Any) -> pl.DataFrame:
    """Blocking twin of :func:`export_chats` (works in scripts and inside a running notebook loop)."""
    return run_sync(export_chats(*args, **kwargs))


def list_dialogs_sync(*args: Any, **kwargs: Any) -> pl.DataFrame:
    """Blocking twin of :func:`list_dialogs` (works in scripts and inside a running notebook loop)."""
    return run_sync(list_dialogs(*args, **kwargs))
