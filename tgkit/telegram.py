"""The one gateway between tgkit and Telethon: every request tgkit makes goes through a :class:`Gateway`.

``async with Gateway(client, pacer=..., metrics=..., progress=...) as gw:`` owns, for its duration:

- Telethon's flood policy: ``client.flood_sleep_threshold = 0`` (restored on exit), so every FLOOD_WAIT
  reaches tgkit's :class:`~tgkit.pacing.Pacer` (sleep with a countdown under the ceiling, else
  :class:`~tgkit.errors.FloodWaitTooLong`);
- pacing and counting: ``pacer.acquire(method)`` before EVERY request Telethon sends on the gateway's
  behalf (the pages tgkit asks for, and what Telethon sends inside ``download_media`` and
  ``get_input_entity``: each ``upload.GetFile`` chunk, ``auth.ExportAuthorization`` ...), and one count per
  request by method name (``messages.GetHistory``: the name comes from the request's type, so no caller can
  mislabel it).  :attr:`Gateway.api_calls` is the only ``api_calls`` figure tgkit reports, the same on a
  real account and on the offline double;
- retries: reconnects with exponential backoff (one reconnect however many requests failed together),
  stale cached access hashes (drop, resolve once, resend), expired file references (refetch the message);
- takeout sessions (:meth:`Gateway.takeout`), downloads (:meth:`Gateway.download`) and peer resolution
  (:meth:`Gateway.resolve`, with :class:`~tgkit.peers.PeerCache` as the data structure);
- error translation: Telethon's errors leave as tgkit's (:func:`tgkit.errors.telegram_errors`).

How the counting sees Telethon's own requests: while a gateway is open, the client's ``_call`` (the one
method every Telethon request passes through, ``TelegramClient.__call__`` and the download iterators
alike) is wrapped; the wrapper paces and counts the requests of the gateway whose task sent them (a
context variable), so two exports sharing a client count their own calls.  Requests Telethon writes
straight onto a connection are counted where the gateway knows they happen: the ``InitConnection`` /
``help.GetConfig`` of a reconnect the gateway makes, and the ``auth.ImportAuthorization`` that opens a
connection to another data centre.  Not counted: Telethon's internal resends below ``_call`` (a dropped
connection resent by the sender, the retries of a 5xx answer inside ``_call``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from telethon import errors as tl_errors
from telethon import utils as tl_utils
from telethon.tl import functions, types

from .config import setting
from .errors import TelegramError, is_peer_error, telegram_errors, translate_telethon_error
from .jupyter import NullProgress, Progress
from .metrics import MetricsCollector
from .pacing import Pacer

if TYPE_CHECKING:
    from .peers import PeerCache

__all__ = [
    "HANDLED_ERRORS",
    "PAGE",
    "Gateway",
    "chat_id_of",
    "chat_kind_of",
    "default_pacer",
    "page_peer",
    "page_title",
    "request_name",
]

PAGE = 100  # messages.getHistory returns at most 100 messages
REFERENCE_REFRESHES = 3  # FILE_REFERENCE_EXPIRED: refetch the message this many times per file

# Errors a retry can cure: the connection (ConnectionError is an OSError), a timeout, Telegram's 5xx.
_RETRYABLE: tuple[type[BaseException], ...] = (
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    tl_errors.ServerError,
    tl_errors.RpcCallFailError,
    tl_errors.TimedOutError,
)
# A download also writes a local file: an OSError that is not a connection error is the disk's, not retried.
_DOWNLOAD_RETRYABLE = tuple(e for e in _RETRYABLE if e is not OSError)

# Every Telethon error class the gateway catches and handles before translating (the test in
# tests/test_telegram.py checks each one maps to a documented tgkit error when handling gives up).
HANDLED_ERRORS: tuple[type[BaseException], ...] = (
    tl_errors.FloodWaitError,
    tl_errors.ServerError,
    tl_errors.RpcCallFailError,
    tl_errors.TimedOutError,
    tl_errors.FileReferenceExpiredError,
    tl_errors.TakeoutInitDelayError,
    tl_errors.ChannelInvalidError,
    tl_errors.ChannelPrivateError,
    tl_errors.PeerIdInvalidError,
    tl_errors.UsernameNotOccupiedError,
    tl_errors.UsernameInvalidError,
    tl_errors.AuthKeyUnregisteredError,
    tl_errors.RPCError,
)

# Wrappers Telethon (or Telegram) puts around the request that names the work.
_WRAPPERS = (
    functions.InvokeWithLayerRequest,
    functions.InitConnectionRequest,
    functions.InvokeWithoutUpdatesRequest,
    functions.InvokeWithTakeoutRequest,
    functions.InvokeAfterMsgRequest,
    functions.InvokeAfterMsgsRequest,
    functions.InvokeWithMessagesRangeRequest,
)
_NAMES: dict[type, str] = {}


def request_name(request: Any) -> str:
    """``messages.GetHistory`` for a ``functions.messages.GetHistoryRequest`` (wrappers unwrapped)."""
    while isinstance(request, _WRAPPERS):
        request = request.query
    cls = type(request)
    name = _NAMES.get(cls)
    if name is None:
        # a subclass of a Telethon request (the fast path's FastHistoryRequest) is named by its Telethon base
        tl = next((c for c in cls.__mro__ if c.__module__.startswith("telethon.tl.functions")), cls)
        module = tl.__module__.rsplit(".", 1)[-1]
        base = tl.__name__.removesuffix("Request")
        name = _NAMES[cls] = base if module == "functions" else f"{module}.{base}"
    return name


# One pacer per client: everything a client does (several chats, media downloads) shares its account's limit.
_CLIENT_PACERS: weakref.WeakKeyDictionary[Any, Pacer] = weakref.WeakKeyDictionary()


def default_pacer(
    client: Any = None, flood_ceiling: float | None = None, *, pacing: str | None = None
) -> Pacer:
    """The pacer used when the caller passes none.

    ``pacing`` (``TGKIT_PACING``): ``adaptive`` (default) learns the account's limits and persists them
    per account (``Pacer.for_account``, keyed by the logged-in user's id) so the next run starts at the
    learned rate; ``fixed`` is the old 30-per-30-s gate; ``off`` paces nothing (flood waits are still
    obeyed).  With a ``client``, the same pacer is returned for every later call on that client.
    """
    mode = str(setting("pacing", pacing, "adaptive")).strip().lower()
    if mode == "off":
        return Pacer.unlimited(flood_ceiling=flood_ceiling)
    if client is None:
        return Pacer.default(mode=mode, flood_ceiling=flood_ceiling)
    try:
        pacer = _CLIENT_PACERS.get(client)
    except TypeError:  # not weak-referenceable: no sharing
        pacer = None
    if pacer is None:
        account = getattr(client, "_self_id", None)  # Telethon learns it when it connects
        if account:
            pacer = Pacer.for_account(f"user{account}", mode=mode, flood_ceiling=flood_ceiling)
        else:
            pacer = Pacer.default(mode=mode, flood_ceiling=flood_ceiling)
        with contextlib.suppress(TypeError):
            _CLIENT_PACERS[client] = pacer
    elif flood_ceiling is not None:
        pacer.flood_ceiling = float(flood_ceiling)
    return pacer


def chat_id_of(peer: Any) -> int:
    """The bare positive id the dataset uses for a chat (Telegram's own, unmarked)."""
    if isinstance(peer, types.InputPeerChannel):
        return int(peer.channel_id)
    if isinstance(peer, types.InputPeerChat):
        return int(peer.chat_id)
    if isinstance(peer, types.InputPeerUser):
        return int(peer.user_id)
    return abs(tl_utils.get_peer_id(peer, add_mark=False))


def page_peer(page: Any, chat_id: int) -> Any:
    """An ``InputPeer`` for channel/supergroup ``chat_id`` from the ``.chats`` of an answer (with its
    access hash), or None when the answer does not carry it."""
    for c in getattr(page, "chats", ()):
        if getattr(c, "id", None) == chat_id and isinstance(c, types.Channel) and c.access_hash is not None:
            return types.InputPeerChannel(c.id, c.access_hash)
    return None


def chat_kind_of(peer: Any) -> str:
    """The kind (``user``/``channel``/``chat``) of a resolved chat, as the peers and chats tables name it."""
    if isinstance(peer, types.InputPeerChannel):
        return "channel"
    if isinstance(peer, types.InputPeerChat):
        return "chat"
    return "user"


def page_title(page: Any, chat_id: int) -> str | None:
    """The chat's title (or a user's name) from the ``.chats``/``.users`` a history page carries."""
    for c in getattr(page, "chats", ()):
        if getattr(c, "id", None) == chat_id:
            return getattr(c, "title", None)
    for u in getattr(page, "users", ()):
        if getattr(u, "id", None) == chat_id:
            return " ".join(filter(None, (u.first_name, u.last_name))) or u.username
    return None


def _message_key(peer: Any, msg_id: int) -> tuple[int | None, int]:
    return (peer.channel_id if isinstance(peer, types.PeerChannel) else None), msg_id


# --------------------------------------------------------------------------------------------------
# The hook: one per client, shared by every gateway open on it.

_ACTIVE: contextvars.ContextVar[Gateway | None] = contextvars.ContextVar("tgkit_gateway", default=None)


# Methods whose requests may overlap on one client (file chunks: generous per-DC limits, and downloads
# run several at a time).  Every other method has at most one request in flight per client: several
# exports sharing a client (tgkit.export_chats) never have two requests of one method on the wire when
# Telegram answers the first with a FLOOD_WAIT (the second would be refused too, and a request made
# while flooded can make the wait longer).  A single export never had two anyway (one page at a time).
OVERLAPPING_METHODS = frozenset({"upload.GetFile", "upload.GetWebFile", "upload.GetCdnFile"})


class _Hook:
    __slots__ = ("count", "had_call", "had_exported", "in_flight", "threshold")

    def __init__(self, threshold: Any, had_call: bool, had_exported: bool) -> None:
        self.count = 0
        self.threshold = threshold
        self.had_call = had_call
        self.had_exported = had_exported
        self.in_flight: dict[str, asyncio.Lock] = {}  # method -> the one request of it on the wire

    def gate(self, request: Any) -> asyncio.Lock | None:
        if isinstance(request, list):
            return None
        name = request_name(request)
        if name in OVERLAPPING_METHODS:
            return None
        lock = self.in_flight.get(name)
        if lock is None:
            lock = self.in_flight[name] = asyncio.Lock()
        return lock


_HOOKS: weakref.WeakKeyDictionary[Any, _Hook] = weakref.WeakKeyDictionary()


def _install(client: Any) -> None:
    hook = _HOOKS.get(client)
    if hook is None:
        state = vars(client)
        hook = _HOOKS[client] = _Hook(
            client.flood_sleep_threshold, "_call" in state, "_create_exported_sender" in state
        )
        original_call = client._call
        original_exported = client._create_exported_sender

        async def _call(
            sender: Any, request: Any, ordered: bool = False, flood_sleep_threshold: Any = None
        ) -> Any:
            gw = _ACTIVE.get()
            if gw is None or gw.client is not client:
                return await original_call(sender, request, ordered, flood_sleep_threshold)
            gate = hook.gate(request)
            if gate is None:
                await gw._before_send(request)
                return await original_call(sender, request, ordered, flood_sleep_threshold)
            async with gate:  # one request of this method on the wire (paced after the previous answer)
                await gw._before_send(request)
                return await original_call(sender, request, ordered, flood_sleep_threshold)

        async def _create_exported_sender(dc_id: int) -> Any:
            sender = await original_exported(dc_id)
            gw = _ACTIVE.get()
            if gw is not None and gw.client is client:
                # Telethon sent InvokeWithLayer(InitConnection(ImportAuthorization)) on the new connection
                # directly, below _call: count it here.
                gw.calls["auth.ImportAuthorization"] += 1
            return sender

        client._call = _call
        client._create_exported_sender = _create_exported_sender
        # tgkit's pacer handles every flood wait (countdown, ceiling); Telethon must not sleep on its own.
        client.flood_sleep_threshold = 0
    hook.count += 1


def _uninstall(client: Any) -> None:
    hook = _HOOKS.get(client)
    if hook is None:
        return
    hook.count -= 1
    if hook.count > 0:
        return
    del _HOOKS[client]
    for name, had in (("_call", hook.had_call), ("_create_exported_sender", hook.had_exported)):
        if not had:
            vars(client).pop(name, None)
    client.flood_sleep_threshold = hook.threshold


# --------------------------------------------------------------------------------------------------


class Gateway:
    """Sends every request of one piece of work (an export, a look at recent messages) to Telegram.

    ``async with Gateway(client, ...) as gw`` then ``await gw.call(request)``,
    ``await gw.download(message, dest, peer=...)``, ``await gw.resolve("@name")``.  Counts are in
    :attr:`api_calls`, reconnects in :attr:`reconnects`; flood waits in the pacer's counters.
    """

    def __init__(
        self,
        client: Any,
        *,
        pacer: Pacer | None = None,
        metrics: MetricsCollector | None = None,
        progress: Progress | None = None,
        peer_cache: PeerCache | None = None,
        flood_ceiling: float | None = None,
        max_retries: int = 6,
        backoff: float = 1.0,
    ) -> None:
        self.client = client
        self.pacer = pacer if pacer is not None else default_pacer(client, flood_ceiling)
        self.metrics = metrics if metrics is not None else MetricsCollector(enabled=False)
        self.progress = progress if progress is not None else NullProgress()
        self.peer_cache = peer_cache
        self.max_retries = max_retries
        self.backoff = backoff
        self.calls: Counter[str] = Counter()
        self.reconnects = 0
        self.flood_waits = 0  # FLOOD_WAITs slept off for this gateway's requests
        self.flood_wait_s = 0.0
        self._reconnect_lock = asyncio.Lock()
        self._entered = 0
        self._takeout: Any = None
        # peers resolved from the cache, by identity: a stale access hash is repaired once per peer
        self._cached: dict[int, tuple[Any, Any, Any]] = {}

    @property
    def api_calls(self) -> dict[str, int]:
        """Requests sent by this gateway, by method name (sorted)."""
        return dict(sorted((k, v) for k, v in self.calls.items() if v))

    async def __aenter__(self) -> Gateway:
        if self._entered == 0:
            _install(self.client)
        self._entered += 1
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._entered -= 1
        if self._entered == 0:
            _uninstall(self.client)

    # ---------------------------------------------------------------------------------- sending

    async def _before_send(self, request: Any) -> None:
        """Runs inside Telethon's ``_call`` for every request of this gateway: pace, count, and drop
        Telethon's own flood stamp (the pacer has just made us wait whatever Telegram asked for)."""
        marks = getattr(self.client, "_flood_waited_requests", None)
        for r in request if isinstance(request, list) else (request,):
            name = request_name(r)
            waited = await self.pacer.acquire(name)
            if waited:
                self.metrics.add_time("pacing", waited)
            self.calls[name] += 1
            if marks:
                marks.pop(r.CONSTRUCTOR_ID, None)

    async def call(self, request: Any, *, peer: Any = None, takeout: bool = False) -> Any:
        """Send ``request`` (a Telethon ``TLRequest``) and return Telegram's answer.

        Flood waits are slept off (or raise :class:`FloodWaitTooLong` above the ceiling), connection
        failures and 5xx answers retried with backoff and a reconnect, a stale cached peer repaired once.
        ``peer`` names the chat in errors; ``takeout=True`` sends through the open takeout session, if
        any.  Anything else raises tgkit's error, chained to Telethon's.
        """
        self._check_open()
        token = _ACTIVE.set(self)
        failures = 0
        try:
            with telegram_errors(peer=peer):
                while True:
                    via = self._takeout if takeout and self._takeout is not None else self.client
                    try:
                        return await via(request)
                    except tl_errors.FloodWaitError as exc:
                        await self._flood_wait(exc, request_name(request), peer)
                    except _RETRYABLE as exc:
                        failures += 1
                        self._give_up_after(failures, exc, peer)
                        await self._recover(failures)
                    except ValueError as exc:
                        # Telethon ends its own retries of 5xx answers with ValueError("Request was
                        # unsuccessful N time(s)")
                        if "unsuccessful" not in str(exc):
                            raise
                        failures += 1
                        self._give_up_after(failures, exc, peer)
                        await self._recover(failures)
                    except tl_errors.RPCError as exc:
                        if is_peer_error(exc) and await self._repair(request):
                            continue  # the peer object the request holds was patched in place: resend
                        raise
        finally:
            _ACTIVE.reset(token)

    def _give_up_after(self, failures: int, exc: BaseException, peer: Any) -> None:
        if failures > self.max_retries:
            raise TelegramError(
                f"giving up after {failures} failures talking to Telegram: {type(exc).__name__}: {exc}",
                peer=peer,
            ) from exc

    async def _flood_wait(self, exc: Any, name: str, peer: Any) -> None:
        # The request that was refused names the method (a download's GetFile, not the outer call).
        refused = getattr(exc, "request", None)
        method = request_name(refused) if refused is not None else name
        t0 = self.metrics.start()
        await self.pacer.flood_wait(
            exc.seconds,
            method,
            peer=peer,
            on_wait=lambda s, n: self.progress.countdown(s, f"FLOOD_WAIT on {n}"),
        )
        # this gateway's own waits: the pacer is shared by every export on the client, its totals are not
        self.flood_waits += 1
        self.flood_wait_s += float(exc.seconds)
        self.metrics.stop("flood_wait", t0)

    async def _recover(self, failures: int) -> None:
        delay = min(self.backoff * 2 ** (failures - 1), 60.0)
        self.progress.set_stage(f"reconnecting (attempt {failures})")
        await asyncio.sleep(delay)
        async with self._reconnect_lock:  # one reconnect however many requests (downloads) failed together
            if not self.client.is_connected():
                with contextlib.suppress(*_RETRYABLE):
                    await self.client.connect()
                    self.reconnects += 1
                    # connect() sent InvokeWithLayer(InitConnection(help.GetConfig)) on the connection
                    self.calls["help.GetConfig"] += 1
        self.progress.set_stage("fetching")

    def _check_open(self) -> None:
        if not self._entered:
            raise RuntimeError("use the gateway inside `async with gateway:`")

    # ---------------------------------------------------------------------------------- requests

    async def history(
        self,
        peer: Any,
        *,
        offset_id: int,
        add_offset: int = 0,
        limit: int = PAGE,
        offset_date: datetime | None = None,
        min_id: int = 0,
        max_id: int = 0,
        label: Any = None,
        takeout: bool = True,
        chat_id: int | None = None,
        fast: bool | None = None,
    ) -> Any:
        """One ``messages.GetHistory`` page (through the takeout session when one is open).

        With ``chat_id`` (the dataset's id for the rows), the page is read by the columnar fast path
        (``fast`` / ``TGKIT_FAST_DECODE``, default on; see :mod:`tgkit.fastpath`) and consumed with
        :func:`tgkit.fastpath.page_rows`."""
        from .fastpath import history_request

        request = history_request(
            peer, chat_id=chat_id or 0, offset_id=offset_id, add_offset=add_offset, limit=limit,
            offset_date=offset_date, min_id=min_id, max_id=max_id, fast=fast if chat_id is not None else False,
        )  # fmt: skip
        return await self.call(request, peer=label, takeout=takeout)

    async def replies(
        self,
        peer: Any,
        msg_id: int,
        *,
        offset_id: int = 0,
        add_offset: int = 0,
        limit: int = PAGE,
        label: Any = None,
    ) -> Any:
        """One ``messages.GetReplies`` page: the comments under channel post ``msg_id`` (they live in
        the linked discussion group).  Paged like history: ``offset_id=n, add_offset=-limit`` gives the
        ``limit`` oldest comments with id >= n (as Telethon's ``iter_messages(reply_to=..., reverse=True)``;
        ``min_id``/``max_id`` are left 0, as Telethon does: Telegram answers them unreliably)."""
        request = functions.messages.GetRepliesRequest(
            peer=peer, msg_id=msg_id, offset_id=offset_id, offset_date=None, add_offset=add_offset,
            limit=limit, max_id=0, min_id=0, hash=0,
        )  # fmt: skip
        return await self.call(request, peer=label)

    async def full_chat(self, peer: Any, *, label: Any = None) -> Any:
        """``channels.GetFullChannel`` / ``messages.GetFullChat`` of a channel / basic group (None for a
        user: the chats table needs nothing more for a private chat)."""
        if isinstance(peer, types.InputPeerChannel):
            return await self.call(functions.channels.GetFullChannelRequest(peer), peer=label)
        if isinstance(peer, types.InputPeerChat):
            return await self.call(functions.messages.GetFullChatRequest(peer.chat_id), peer=label)
        return None

    async def get_messages(self, peer: Any, ids: Sequence[int], *, label: Any = None) -> list[Any]:
        """Messages ``ids`` of ``peer`` (channels.GetMessages for channels, else messages.GetMessages)."""
        wanted = [types.InputMessageID(i) for i in ids]
        if isinstance(peer, types.InputPeerChannel):
            request: Any = functions.channels.GetMessagesRequest(peer, wanted)
        else:
            request = functions.messages.GetMessagesRequest(wanted)
        page = await self.call(request, peer=label)
        return list(page.messages)

    async def dialog_pages(
        self, *, folder_id: int | None = None, limit: int | None = None
    ) -> AsyncIterator[Any]:
        """The account's dialog list, one ``messages.GetDialogs`` answer at a time, paged as Telethon's
        ``iter_dialogs`` pages it: pinned dialogs come on the first page only; each next page starts at
        the last dialog with a message (its date, id and peer) and excludes the pinned ones.  Stops on
        a ``messages.Dialogs`` answer (the whole list), a short page, a page with nothing new, or after
        ``limit`` dialogs.  ``folder_id``: 0 the main list, 1 the archive, None both."""
        request = functions.messages.GetDialogsRequest(
            offset_date=None, offset_id=0, offset_peer=types.InputPeerEmpty(), limit=PAGE, hash=0,
            exclude_pinned=False, folder_id=folder_id,
        )  # fmt: skip
        seen: set[int] = set()
        while limit is None or len(seen) < limit:
            request.limit = PAGE if limit is None else min(PAGE, limit - len(seen))
            page = await self.call(request)
            ids = [tl_utils.get_peer_id(d.peer) for d in page.dialogs if isinstance(d, types.Dialog)]
            new = [i for i in ids if i not in seen]
            seen.update(new)
            yield page
            count = getattr(page, "count", None)
            if (
                not new
                or len(page.dialogs) < request.limit
                or not isinstance(page, types.messages.DialogsSlice)
                or (count is not None and len(seen) >= count)
            ):
                return
            # Pinned dialogs break the date order of a page: the offset is the last dialog that has a
            # message (channels number messages per channel, so the key includes the channel).
            messages = {_message_key(m.peer_id, m.id): m for m in page.messages if hasattr(m, "peer_id")}
            tops = (messages.get(_message_key(d.peer, d.top_message)) for d in reversed(page.dialogs))
            last = next((m for m in tops if m is not None), None)
            entities = {tl_utils.get_peer_id(x): x for x in (*page.users, *page.chats)}
            tail = next((entities[i] for i in reversed(new) if i in entities), None)
            request.exclude_pinned = True
            request.offset_id = last.id if last is not None else 0
            request.offset_date = last.date if last is not None else None
            request.offset_peer = (
                tl_utils.get_input_peer(tail) if tail is not None else types.InputPeerEmpty()
            )

    # ---------------------------------------------------------------------------------- peers

    async def resolve(self, chat: Any) -> Any:
        """An ``InputPeer`` for ``chat`` (``@name``, link, id, or an InputPeer as is): from the peer
        cache when it has it (no request), else asked of Telegram once and remembered.  A peer from the
        cache that Telegram later calls stale (CHANNEL_INVALID ...) is dropped, resolved once more and
        patched in place by :meth:`call`.  Unknown chats raise :class:`PeerNotFound`."""
        if isinstance(chat, types.TypeInputPeer):
            return chat
        self._check_open()
        cache = self.peer_cache
        key: Any = chat
        if cache is not None:
            with telegram_errors(peer=chat, resolving=True):
                key, peer = cache.lookup(chat)
            if peer is not None:
                if not isinstance(peer, types.InputPeerSelf):
                    self._cached[id(peer)] = (peer, chat, key)
                return peer
            cache.api_calls += 1
        peer = await self._fetch_peer(key, chat)
        if cache is not None:
            cache.remember(key, peer)
        return peer

    async def _fetch_peer(self, key: Any, label: Any) -> Any:
        token = _ACTIVE.set(self)
        failures = 0
        try:
            with telegram_errors(peer=label, resolving=True):
                while True:
                    try:
                        return await self.client.get_input_entity(key)
                    except tl_errors.FloodWaitError as exc:
                        await self._flood_wait(exc, "contacts.ResolveUsername", label)
                    except _RETRYABLE as exc:
                        failures += 1
                        self._give_up_after(failures, exc, label)
                        await self._recover(failures)
        finally:
            _ACTIVE.reset(token)

    async def _repair(self, request: Any) -> bool:
        """Telegram rejected a peer that came from the cache: drop it, resolve once more, patch the
        access hash in place (every request holding the object is fixed).  False if nothing to repair
        or the name now points at another peer."""
        target = getattr(request, "peer", None)
        found = self._cached.pop(id(target), None) if target is not None else None
        if found is None or self.peer_cache is None:
            return False
        peer, chat, key = found
        self.peer_cache.invalidate(key)
        self.peer_cache.api_calls += 1
        fresh = await self._fetch_peer(key, chat)
        self.peer_cache.remember(key, fresh)
        if type(fresh) is not type(peer) or chat_id_of(fresh) != chat_id_of(peer):
            return False
        if hasattr(peer, "access_hash"):
            peer.access_hash = fresh.access_hash
        return True

    # ---------------------------------------------------------------------------------- downloads

    async def download(self, message: Any, dest: Path, *, peer: Any, label: Any = None) -> bool:
        """Download ``message``'s media to ``dest`` (written as ``dest.part``, renamed when complete).

        Flood waits block downloads only (history keeps going); dropped connections are retried after a
        reconnect; an expired file reference is refreshed by fetching the message again (a few times,
        never endlessly).  False when the message or its media no longer exists.  Failures raise tgkit
        errors (an ``OSError`` of the local disk passes through unchanged).
        """
        self._check_open()
        tmp = dest.with_name(dest.name + ".part")
        refreshes = failures = 0
        token = _ACTIVE.set(self)
        try:
            with telegram_errors(peer=label):
                while True:
                    try:
                        await self.client.download_media(message, file=str(tmp))
                        break
                    except tl_errors.FloodWaitError as exc:
                        failures += 1
                        if failures > self.max_retries:
                            raise
                        await self._flood_wait(exc, "upload.GetFile", label)
                    except _DOWNLOAD_RETRYABLE as exc:
                        # The connection dropped under the download: back off, reconnect (once for
                        # everyone), download again.  Local file errors are not retried.
                        failures += 1
                        self._give_up_after(failures, exc, label)
                        await self._recover(failures)
                    except tl_errors.FileReferenceExpiredError:
                        refreshes += 1
                        if refreshes > REFERENCE_REFRESHES:
                            raise
                        # References expire; a fresh copy of the message carries a fresh one.
                        fresh = await self.get_messages(peer, [message.id], label=label)
                        found = [m for m in fresh if getattr(m, "id", None) == message.id and m.media]
                        if not found:
                            return False
                        message = found[0]
        finally:
            _ACTIVE.reset(token)
        if not tmp.exists():
            raise TelegramError("download produced no file", peer=label)
        tmp.replace(dest)
        return True

    # ---------------------------------------------------------------------------------- takeout

    @contextlib.asynccontextmanager
    async def takeout(self, *, peer: Any = None) -> AsyncIterator[Gateway]:
        """Open a takeout session (lower flood limits for exports): history pages go through it until
        the block ends, then the session is finished."""
        self._check_open()
        ctx = self.client.takeout(finalize=True, channels=True, megagroups=True, users=True, chats=True)
        token = _ACTIVE.set(self)
        try:
            try:
                takeout_client = await ctx.__aenter__()
            except tl_errors.TakeoutInitDelayError as exc:
                raise TelegramError(
                    f"Telegram delays takeout sessions for new logins: confirm the data export request in "
                    f"another Telegram app, or retry in {exc.seconds}s (or export without takeout=True)",
                    peer=peer,
                ) from exc
            except tl_errors.RPCError as exc:
                raise translate_telethon_error(exc, peer=peer) from exc
        finally:
            _ACTIVE.reset(token)
        self._takeout = takeout_client
        try:
            yield self
        finally:
            self._takeout = None
            token = _ACTIVE.set(self)
            try:
                # finish the session whatever happened (what was exported stays exported)
                with contextlib.suppress(Exception):
                    await ctx.__aexit__(None, None, None)
            finally:
                _ACTIVE.reset(token)
