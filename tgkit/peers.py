"""Cached peer resolution: pay for each ``@username`` once, ever (issue #4).

Telegram bans accounts that resolve too many usernames, and Telethon's Memory/StringSession forget every
entity when the process ends.  :class:`PeerCache` keeps ``(kind, id, access_hash)`` plus the username and
the time it was resolved -- never ``bytes()`` of a TL object, whose constructors change between layers --
in an LRU-bounded dict, persisted to a small versioned msgpack file.  The file format, the key rules and
the two-writer merge rule are documented in docs/PEERS.md.

Telethon is imported lazily (as in :mod:`tgkit.errors`): building a cache costs no Telethon import.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import msgpack

from ._files import atomic_write_bytes
from .config import cache_dir
from .errors import ConfigError, PeerNotFound, is_peer_error, telegram_errors, translate_telethon_error
from .records import CacheEntry

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "PeerCache",
    "PeerCacheWarning",
    "marked_id",
    "normalise_key",
]

T = TypeVar("T")

FORMAT_NAME = "tgkit.peers"
FORMAT_VERSION = 1
DEFAULT_FILE_NAME = "peers.msgpack"

KINDS = ("user", "channel", "chat")
SELF_KEY = "me"  # "me" / "self": Telethon's InputPeerSelf; never cached, never an API call

# Telethon marks channel ids as -(10**12 + id) and chat ids as -id (telethon.utils.get_peer_id); ids of
# channels and chats must stay below 10**12 for the marking to be reversible (utils.resolve_id).
_CHANNEL_MARK = 1_000_000_000_000
_MAX_USER_ID = 2**63 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

# Loading limits: the file is attacker-controlled input as far as we are concerned.
MAX_FILE_BYTES = 64 * 1024 * 1024  # 100k entries are ~5 MB; anything near this is not ours
_MAX_ITEMS = 2_000_000  # per section (entries, names, tombstones)
_MAX_STR = 256
_MAX_TOMBSTONES = 10_000

# Usernames: Telethon's rule (3-32 chars, letter first, no "__", not ending in "_"), ASCII only.
_USERNAME_RE = re.compile(r"[a-z](?:(?!__)[a-z0-9_]){1,30}[a-z0-9]")
_INT_RE = re.compile(r"-?[0-9]{1,20}")
_LINK_HOSTS = ("t.me/", "telegram.me/", "telegram.dog/")
# t.me paths that are not chats (stickers, proxies, folders ...): a clear error beats a bogus lookup.
_NOT_CHAT_PATHS = frozenset(
    {
        "addstickers",
        "addemoji",
        "addlist",
        "addtheme",
        "bg",
        "boost",
        "confirmphone",
        "invoice",
        "iv",
        "joinchat",
        "login",
        "proxy",
        "setlanguage",
        "share",
        "socks",
    }
)

_NORMALISED: dict[str | int, str | int] = {}  # memo of normalise_key for str and int keys (pure)
_NORMALISED_MAX = 65_536

_tl: Any = None  # telethon.tl.types, imported on first use


def _types() -> Any:
    global _tl
    if _tl is None:
        from telethon.tl import types

        _tl = types
    return _tl


def _is_stale(exc: BaseException) -> bool:
    """Telegram says the peer or its access hash is invalid: the RPC error itself (CHANNEL_INVALID ...),
    or tgkit's PeerNotFound translated from one (as export's request boundary raises)."""
    if is_peer_error(exc):
        return True
    cause = exc.__cause__
    return isinstance(exc, PeerNotFound) and cause is not None and is_peer_error(cause)


def _raise_not_found(exc: Exception, key: Any) -> NoReturn:
    if isinstance(exc, PeerNotFound):
        raise exc  # already translated (and chained) by the caller's boundary
    raise translate_telethon_error(exc, peer=key) from exc


def _raw_id(peer: Any) -> int | None:
    return (
        getattr(peer, "channel_id", None) or getattr(peer, "user_id", None) or getattr(peer, "chat_id", None)
    )


class PeerCacheWarning(UserWarning):
    """The peer cache file was unreadable and was moved aside; the cache started empty."""


# --------------------------------------------------------------------------------------------------
# Keys


def normalise_key(key: Any) -> str | int:
    """Normalise a username, link or id to the cache's key: a lower-case username or an int id.

    ``@Name``, ``name``, ``t.me/name``, ``https://t.me/name/123``, ``name.t.me`` and
    ``tg://resolve?domain=name`` all give ``"name"``; ``"-1000000000123"`` and ``t.me/c/123/45`` give the
    marked channel id ``-1000000000123`` (Telethon's ``-100`` prefix); a positive int stays as it is (a
    user id, or a bare channel/chat id: see :meth:`PeerCache.get`).  ``"me"``/``"self"`` give ``"me"``.
    Invite links, phone numbers and other strings raise :class:`~tgkit.errors.ConfigError` (they are
    bad input, not a Telegram answer).
    """
    tk = type(key)
    if tk is str or tk is int:  # exact types: True must not hit the memo entry of 1
        hit = _NORMALISED.get(key)
        if hit is not None:
            return hit
        value = _normalise_str(key) if tk is str else _check_id(key, key)
        if len(_NORMALISED) >= _NORMALISED_MAX:
            _NORMALISED.clear()
        _NORMALISED[key] = value
        return value
    if isinstance(key, int) and not isinstance(key, bool):  # int subclasses (IntEnum, numpy ints ...)
        return _check_id(int(key), key)
    raise ConfigError(f"a peer key must be a username, link or int id, not {type(key).__name__}: {key!r}")


def _check_id(n: int, original: Any) -> int:
    if n > 0:
        if n > _MAX_USER_ID:
            raise ConfigError(f"peer id out of range: {original!r}")
        return n
    if n < 0 and -n < _CHANNEL_MARK:
        return n  # marked chat id
    if n < 0 and 0 < -n - _CHANNEL_MARK < _CHANNEL_MARK:
        return n  # marked channel id
    raise ConfigError(f"not a valid peer id: {original!r}")


def _normalise_str(key: str) -> str | int:
    s = key.strip().lower()
    path: str | None = None
    if s.startswith("tg://"):
        # tg://resolve?domain=name&post=1 -- the only tg:// form that names a public chat
        rest = s[5:]
        if not rest.startswith("resolve?"):
            raise ConfigError(f"not a chat link: {key!r}")
        params = dict(p.partition("=")[::2] for p in rest[8:].split("&"))
        s = params.get("domain", "")
    else:
        had_scheme = False
        for scheme in ("https://", "http://"):
            if s.startswith(scheme):
                s, had_scheme = s[len(scheme) :], True
                break
        if s.startswith("www."):
            s = s[4:]
        for host in _LINK_HOSTS:
            if s.startswith(host):
                path = s[len(host) :]
                break
        else:
            host_part, _, rest = s.partition("/")
            if host_part.endswith(".t.me"):  # https://name.t.me/123
                path = host_part[: -len(".t.me")] + "/" + rest
            elif had_scheme:
                raise ConfigError(f"not a Telegram link: {key!r}")
    if path is not None:
        path = path.split("?", 1)[0].split("#", 1)[0].strip("/")
        parts = path.split("/") if path else [""]
        head = parts[0]
        if head.startswith("+") or head == "joinchat":
            raise ConfigError(
                f"invite links cannot be cached or resolved by name: {key!r} "
                "(join the chat, then use its @username or id)"
            )
        if head == "s" and len(parts) > 1:  # t.me/s/name: the web preview
            parts = parts[1:]
            head = parts[0]
        if head == "c":  # t.me/c/<channel id>/<post>: a private channel by bare id
            if len(parts) < 2 or not parts[1].isdigit() or not 0 < int(parts[1]) < _CHANNEL_MARK:
                raise ConfigError(f"not a valid t.me/c/ link: {key!r}")
            if not all(p.isdigit() for p in parts[2:]):
                raise ConfigError(f"not a chat link: {key!r}")
            return -(_CHANNEL_MARK + int(parts[1]))
        if head in _NOT_CHAT_PATHS:
            raise ConfigError(f"not a chat link: {key!r}")
        if not all(p.isdigit() for p in parts[1:]):  # /123 post, /12/34 topic post
            raise ConfigError(f"not a chat link: {key!r}")
        s = head
        if not _USERNAME_RE.fullmatch(s):
            raise ConfigError(f"not a valid username in link: {key!r}")
        return s
    if s.startswith("@"):
        s = s[1:]
    elif _INT_RE.fullmatch(s):
        return _check_id(int(s), key)
    if s in ("me", "self"):
        return SELF_KEY
    if s.startswith("+") or (s and s[0].isdigit()):
        raise ConfigError(f"phone numbers and invite hashes are not supported as peer keys: {key!r}")
    if not _USERNAME_RE.fullmatch(s):
        raise ConfigError(f"not a username, t.me link or id: {key!r}")
    return s


def marked_id(kind: str, raw_id: int) -> int:
    """Telethon's marked id (``utils.get_peer_id``): user ``id``, chat ``-id``, channel ``-100id``."""
    if kind == "user":
        return raw_id
    if kind == "channel":
        return -(_CHANNEL_MARK + raw_id)
    if kind == "chat":
        return -raw_id
    raise ValueError(f"unknown peer kind {kind!r}")


def _validate(entry: Any) -> str | None:
    """Why ``entry`` is not a valid :class:`CacheEntry`, or None.  Exact types: bools are not ints."""
    kind, pid, ahash, uname, at = entry.kind, entry.id, entry.access_hash, entry.username, entry.resolved_at
    if kind not in KINDS or type(kind) is not str:
        return f"kind {kind!r}"
    if type(pid) is not int or pid <= 0 or pid > (_MAX_USER_ID if kind == "user" else _CHANNEL_MARK - 1):
        return f"id {pid!r}"
    if kind == "chat":
        if ahash is not None:
            return "a chat with an access hash"
    elif type(ahash) is not int or not _INT64_MIN <= ahash <= _INT64_MAX:
        return f"access_hash {ahash!r}"
    if uname is not None and (type(uname) is not str or not _USERNAME_RE.fullmatch(uname.lower())):
        return f"username {uname!r}"
    if type(at) not in (int, float) or not math.isfinite(at) or at < 0:
        return f"resolved_at {at!r}"
    return None


# --------------------------------------------------------------------------------------------------


class _Snapshot:
    """A parsed, validated cache file."""

    __slots__ = ("entries", "names", "tombstones")

    def __init__(self) -> None:
        self.entries: dict[int, CacheEntry] = {}  # marked id -> entry, in LRU order (oldest first)
        self.names: dict[str, int] = {}  # every name -> marked id
        self.tombstones: dict[int, float] = {}


class PeerCache:
    """Peer resolution cache: memory (LRU) + an optional msgpack file, with TTL and stats.

    ``path=None`` uses ``cache_dir()/peers.msgpack`` (``TGKIT_CACHE_DIR``, else the platform cache dir),
    ``path=False`` keeps the cache in memory only.  The file is read lazily on first use and written by
    :meth:`save` (also on :meth:`close` / leaving a ``with`` block when something changed).  Not
    thread-safe; meant for one event loop.
    """

    __slots__ = (
        "_by_name",
        "_clock",
        "_dirty",
        "_entries",
        "_loaded",
        "_names_of",
        "_tombstones",
        "api_calls",
        "evictions",
        "expired",
        "hits",
        "invalidations",
        "max_entries",
        "misses",
        "path",
        "ttl",
    )

    def __init__(
        self,
        path: str | os.PathLike[str] | bool | None = None,
        *,
        max_entries: int = 100_000,
        ttl: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if path is True:
            path = None
        if max_entries < 1:
            raise ConfigError(f"max_entries must be >= 1, not {max_entries}")
        if ttl is not None and not ttl > 0:
            raise ConfigError(f"ttl must be > 0 seconds or None, not {ttl}")
        self.path: Path | None = (
            None if path is False else (cache_dir() / DEFAULT_FILE_NAME if path is None else Path(path))
        )
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()  # marked id -> entry, LRU order
        self._by_name: dict[str, int] = {}  # lower-case username or alias -> marked id
        self._names_of: dict[int, list[str]] = {}  # marked id -> the names pointing at it
        self._tombstones: dict[int, float] = {}  # marked id -> when it was invalidated (for merges)
        self._loaded = self.path is None
        self._dirty = False
        self.hits = self.misses = self.evictions = self.expired = self.invalidations = self.api_calls = 0

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "memory"
        return f"PeerCache({where}, {len(self._entries)} entries)"

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._entries)

    def __enter__(self) -> PeerCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------- lookups

    def get(self, key: Any) -> CacheEntry | None:
        """The cached entry for ``key`` or None; counts a hit or a miss (an expired entry is a miss).

        A bare positive id is ambiguous (user 123, channel 123 and chat 123 can all exist): it is looked
        up as a user first, then as a channel (marked ``-1000000000123``), then as a chat (``-123``),
        among cached entries only.  Marked ids and usernames are exact.
        """
        nk = _NORMALISED.get(key) if type(key) is str or type(key) is int else None
        return self._get(normalise_key(key) if nk is None else nk)

    def _get(self, nk: str | int) -> CacheEntry | None:
        if not self._loaded:
            self._load()
        if type(nk) is str:
            mid = self._by_name.get(nk)
            entry = self._entries.get(mid) if mid is not None else None
        else:
            mid, entry = self._lookup_id(nk)  # type: ignore[arg-type]
        if entry is None:
            self.misses += 1
            return None
        if self.ttl is not None and self._clock() - entry.resolved_at > self.ttl:
            self._drop(mid)  # type: ignore[arg-type]
            self.expired += 1
            self.misses += 1
            return None
        self._entries.move_to_end(mid)  # type: ignore[arg-type]
        self.hits += 1
        return entry

    def _lookup_id(self, n: int) -> tuple[int | None, CacheEntry | None]:
        entries = self._entries
        entry = entries.get(n)
        if entry is not None or n < 0:
            return n, entry
        for mid in (-(_CHANNEL_MARK + n), -n):  # bare id: channel, then chat
            if n < _CHANNEL_MARK:
                entry = entries.get(mid)
                if entry is not None:
                    return mid, entry
        return None, None

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is cached (no stats, no TTL check, no LRU touch)."""
        self._ensure_loaded()
        try:
            nk = normalise_key(key)
        except ConfigError:
            return False
        if type(nk) is str:
            return self._by_name.get(nk) in self._entries
        return self._lookup_id(nk)[1] is not None  # type: ignore[arg-type]

    def entries(self) -> list[CacheEntry]:
        """All entries, least recently used first."""
        self._ensure_loaded()
        return list(self._entries.values())

    # ---------------------------------------------------------------------------------- updates

    def put(self, entry: CacheEntry, *keys: Any) -> None:
        """Store ``entry`` (replacing the same peer), indexed by its username and by extra ``keys``.

        Username keys become aliases of the entry; id keys must be the entry's own id.
        """
        self._ensure_loaded()
        problem = _validate(entry)
        if problem:
            raise ValueError(f"invalid CacheEntry ({problem}): {entry!r}")
        mid = marked_id(entry.kind, entry.id)
        names: list[str] = []
        for key in keys:
            nk = normalise_key(key)
            if type(nk) is str:
                if nk == SELF_KEY:
                    raise ValueError("'me' cannot be cached")
                names.append(nk)
            elif nk != mid and nk != entry.id:
                raise ValueError(f"key {key!r} is not the id of {entry!r}")
        self._store(mid, entry, names, replace_names=False)

    def _store(self, mid: int, entry: CacheEntry, names: Iterable[str], *, replace_names: bool) -> None:
        entries = self._entries
        if mid in entries:
            entries[mid] = entry  # keeps its LRU position: learning is not using
        else:
            entries[mid] = entry
            if len(entries) > self.max_entries:
                self._evict()
        self._tombstones.pop(mid, None)
        wanted = [entry.username.lower()] if entry.username else []
        wanted.extend(n for n in names if n not in wanted)
        if replace_names:
            # Fresh, complete knowledge (a full User/Channel): names it no longer holds are stale.
            for old in [n for n in self._names_of.get(mid, ()) if n not in wanted]:
                self._unlink(old)
        for name in wanted:
            self._link(name, mid)
        self._dirty = True

    def _link(self, name: str, mid: int) -> None:
        old = self._by_name.get(name)
        if old == mid:
            return
        if old is not None:
            self._unlink(name)
            prev = self._entries.get(old)
            if prev is not None and prev.username is not None and prev.username.lower() == name:
                # Usernames are unique: the newer claim wins and the old owner no longer holds it.
                self._entries[old] = CacheEntry(prev.kind, prev.id, prev.access_hash, None, prev.resolved_at)
        self._by_name[name] = mid
        self._names_of.setdefault(mid, []).append(name)

    def _unlink(self, name: str) -> None:
        mid = self._by_name.pop(name, None)
        if mid is not None:
            names = self._names_of.get(mid)
            if names is not None:
                names.remove(name)
                if not names:
                    del self._names_of[mid]

    def _drop(self, mid: int) -> CacheEntry | None:
        entry = self._entries.pop(mid, None)
        for name in self._names_of.pop(mid, ()):
            if self._by_name.get(name) == mid:
                del self._by_name[name]
        self._dirty = True
        return entry

    def _evict(self) -> None:
        while len(self._entries) > self.max_entries:
            mid = next(iter(self._entries))
            self._drop(mid)
            self.evictions += 1

    def invalidate(self, key: Any) -> bool:
        """Drop the entry for ``key`` (Telegram said its id or access hash is stale); True if one was cached.

        The drop is remembered (a tombstone) so that :meth:`save` does not bring the entry back from a
        file another process wrote earlier.
        """
        self._ensure_loaded()
        nk = normalise_key(key)
        mid = self._by_name.get(nk) if type(nk) is str else self._lookup_id(nk)[0]  # type: ignore[arg-type]
        if mid is None or mid not in self._entries:
            if type(nk) is str:
                self._unlink(nk)
            return False
        self._drop(mid)
        self._tombstones[mid] = self._clock()
        self.invalidations += 1
        return True

    def clear(self) -> None:
        """Forget every entry (the file is rewritten empty on the next :meth:`save`)."""
        self._ensure_loaded()
        now = self._clock()
        for mid in self._entries:
            self._tombstones[mid] = now
        self._entries.clear()
        self._by_name.clear()
        self._names_of.clear()
        self._dirty = True

    def learn(self, obj: Any) -> int:
        """Cache every usable peer in a Telethon result: its ``.users``/``.chats``, or a User/Channel/Chat
        (or a list of them).  Free knowledge -- no API call.  Returns how many peers were stored.

        Skipped: ``min`` constructors (their access hash is not usable), peers without an access hash,
        empty/forbidden chats.
        """
        tl = _types()
        if isinstance(obj, list | tuple):
            return sum(self.learn(o) for o in obj)
        if isinstance(obj, tl.User | tl.Channel | tl.Chat | tl.ChannelForbidden):
            return self._learn_one(obj, tl)
        count = 0
        for attr in ("users", "chats"):
            items = getattr(obj, attr, None)
            if isinstance(items, list):
                for item in items:
                    count += self._learn_one(item, tl)
        return count

    def _learn_one(self, obj: Any, tl: Any) -> int:
        if isinstance(obj, tl.User):
            kind = "user"
        elif isinstance(obj, tl.Channel | tl.ChannelForbidden):
            kind = "channel"
        elif isinstance(obj, tl.Chat):
            kind = "chat"
        else:
            return 0  # UserEmpty, ChatEmpty, ChatForbidden (no way to use it), unknown constructors
        if getattr(obj, "min", False):
            return 0
        ahash = getattr(obj, "access_hash", None) if kind != "chat" else None
        if kind != "chat" and ahash is None:
            return 0
        username = getattr(obj, "username", None)
        candidates = [username] if username else []
        for u in getattr(obj, "usernames", None) or ():  # collectible / extra usernames
            if getattr(u, "active", False) and u.username:
                candidates.append(u.username)
        names: list[str] = []
        valid: list[str] = []
        for name in candidates:
            low = name.lower() if type(name) is str else ""
            if _USERNAME_RE.fullmatch(low) and low not in names:
                names.append(low)
                valid.append(name)
        username = valid[0] if valid else None
        entry = CacheEntry(kind, obj.id, ahash, username, self._clock())
        if _validate(entry) is not None:
            return 0
        self._ensure_loaded()
        self._store(
            marked_id(kind, obj.id),
            entry,
            names,
            replace_names=True,
        )
        return 1

    # ---------------------------------------------------------------------------------- resolving

    def input_peer(self, entry: CacheEntry) -> Any:
        """The Telethon ``InputPeerUser``/``InputPeerChannel``/``InputPeerChat`` for ``entry``."""
        tl = _tl or _types()
        kind = entry.kind
        if kind == "channel":
            return tl.InputPeerChannel(entry.id, entry.access_hash)
        if kind == "user":
            return tl.InputPeerUser(entry.id, entry.access_hash)
        if kind == "chat":
            return tl.InputPeerChat(entry.id)
        raise ValueError(f"unknown peer kind {kind!r}")

    def lookup(self, key: Any) -> tuple[str | int, Any]:
        """The data-structure half of resolving: ``(normalised key, InputPeer or None)``.

        A hit returns the cached peer (``"me"`` gives ``InputPeerSelf``); a miss returns None and the
        caller asks Telegram (the gateway, :meth:`tgkit.telegram.Gateway.resolve`) and hands the answer
        to :meth:`remember`.  Hits and misses are counted.
        """
        tl = _tl or _types()
        nk = _NORMALISED.get(key) if type(key) is str or type(key) is int else None
        if nk is None:
            nk = self._key_from(key, tl)
        if nk == SELF_KEY:
            return nk, tl.InputPeerSelf()
        entry = self._get(nk)
        return nk, (self.input_peer(entry) if entry is not None else None)

    async def resolve(self, client: Any, key: Any, *, refresh: bool = False) -> Any:
        """A Telethon InputPeer for ``key``: from the cache, else one ``client.get_input_entity`` call.

        A username is passed to Telethon as the bare name, an id as the marked id (a bare positive id
        not in the cache is therefore resolved as a user, as Telethon does).  ``refresh=True`` drops the
        cached entry first.  Failure raises :class:`~tgkit.errors.PeerNotFound` (or another tgkit error)
        chained to Telethon's error; bad keys raise :class:`~tgkit.errors.ConfigError`.  (Exports resolve
        through the gateway, which adds pacing, flood waits and retries around the same two halves.)
        """
        if refresh:
            tl = _tl or _types()
            nk = self._key_from(key, tl)
            if nk == SELF_KEY:
                return tl.InputPeerSelf()
            self.invalidate(nk)
        else:
            nk, peer = self.lookup(key)
            if peer is not None:
                return peer
        return await self._fetch(client, nk, key)

    def _key_from(self, key: Any, tl: Any) -> str | int:
        if type(key) is str or isinstance(key, int):
            return normalise_key(key)
        from telethon import utils
        from telethon.tl.tlobject import TLObject

        if isinstance(key, TLObject):
            self.learn(key)  # a full entity teaches us its hash for free
            try:
                return normalise_key(utils.get_peer_id(key))
            except TypeError as exc:
                raise ConfigError(f"cannot use {type(key).__name__} as a peer key") from exc
        return normalise_key(key)

    async def _fetch(self, client: Any, nk: str | int, original: Any) -> Any:
        self.api_calls += 1
        with telegram_errors(peer=original, resolving=True):
            peer = await client.get_input_entity(nk)
        self.remember(nk, peer)
        return peer

    def remember(self, nk: str | int, peer: Any) -> None:
        """Store what Telegram answered for the normalised key ``nk`` (the other half of :meth:`lookup`).
        ``InputPeerSelf`` and ``*FromMessage`` peers (min-derived) are not cached."""
        tl = _tl or _types()
        now = self._clock()
        entry: CacheEntry | None = None
        if isinstance(peer, tl.InputPeerChannel):
            entry = CacheEntry("channel", peer.channel_id, peer.access_hash, None, now)
        elif isinstance(peer, tl.InputPeerUser):
            entry = CacheEntry("user", peer.user_id, peer.access_hash, None, now)
        elif isinstance(peer, tl.InputPeerChat):
            entry = CacheEntry("chat", peer.chat_id, None, None, now)
        if entry is None:
            return
        if type(nk) is str:
            entry.username = nk
        if _validate(entry) is None:
            self._ensure_loaded()
            mid = marked_id(entry.kind, entry.id)
            old = self._entries.get(mid)
            if old is not None and old.username and entry.username is None:
                entry.username = old.username  # an id lookup must not forget the name
            self._store(mid, entry, [nk] if type(nk) is str else [], replace_names=False)

    async def with_peer(self, client: Any, key: Any, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``await fn(input_peer)``; if Telegram says a *cached* peer is stale (CHANNEL_INVALID,
        PEER_ID_INVALID ...), drop the entry, resolve once more and retry once.

        This is the invalidation path: a cache hit costs no API call, so staleness only shows when the
        peer is used.  A peer error on a freshly resolved peer raises :class:`~tgkit.errors.PeerNotFound`.
        """
        hits_before = self.hits
        peer = await self.resolve(client, key)
        from_cache = self.hits > hits_before
        try:
            return await fn(peer)
        except Exception as exc:
            if not _is_stale(exc):
                raise
            if not from_cache:
                _raise_not_found(exc, key)
        peer = await self.resolve(client, key, refresh=True)
        try:
            return await fn(peer)
        except Exception as exc:
            if _is_stale(exc):
                _raise_not_found(exc, key)
            raise

    async def recover(self, client: Any, key: Any, peer: Any) -> bool:
        """Telegram rejected ``peer`` (resolved for ``key`` from this cache) as stale: drop the entry,
        resolve once more (one API call) and patch ``peer``'s access hash in place, so every request
        that already holds the object is fixed.  False if ``key`` now names another peer (the caller
        should give up: its state belongs to the old one).  Resolution failures raise as in
        :meth:`resolve`.  For callers that cannot wrap their work in :meth:`with_peer` (export)."""
        fresh = await self.resolve(client, key, refresh=True)
        if type(fresh) is not type(peer) or _raw_id(fresh) != _raw_id(peer):
            return False
        if hasattr(peer, "access_hash"):
            peer.access_hash = fresh.access_hash
        return True

    # ---------------------------------------------------------------------------------- reporting

    def stats(self) -> dict[str, Any]:
        """Hits, misses, evictions, API calls made and saved (every hit saved one), entries, hit rate."""
        looked = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "expired": self.expired,
            "invalidations": self.invalidations,
            "api_calls": self.api_calls,
            "api_calls_saved": self.hits,
            "entries": len(self),
            "hit_rate": self.hits / looked if looked else 0.0,
        }

    def to_polars(self) -> Any:
        """One row per entry (least recently used first): kind, id, marked_id, access_hash, username,
        names (every name that points at it), resolved_at (UTC)."""
        import polars as pl

        rows = self.entries()
        return pl.DataFrame(
            {
                "kind": [e.kind for e in rows],
                "id": [e.id for e in rows],
                "marked_id": [marked_id(e.kind, e.id) for e in rows],
                "access_hash": [e.access_hash for e in rows],
                "username": [e.username for e in rows],
                "names": [sorted(self._names_of.get(marked_id(e.kind, e.id), ())) for e in rows],
                "resolved_at": [int(e.resolved_at * 1_000_000) for e in rows],
            },
            schema={
                "kind": pl.String,
                "id": pl.Int64,
                "marked_id": pl.Int64,
                "access_hash": pl.Int64,
                "username": pl.String,
                "names": pl.List(pl.String),
                "resolved_at": pl.Int64,
            },
        ).with_columns(pl.col("resolved_at").cast(pl.Datetime("us", "UTC")))

    # ---------------------------------------------------------------------------------- persistence

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._load()

    def _load(self) -> None:
        self._loaded = True
        assert self.path is not None
        snap = _read_file(self.path)
        if snap is None:
            return
        now = self._clock()
        ttl = self.ttl
        for mid, entry in snap.entries.items():
            if ttl is not None and now - entry.resolved_at > ttl:
                continue
            self._entries[mid] = entry
        for name, mid in snap.names.items():
            if mid in self._entries:
                self._link(name, mid)
        self._tombstones.update(snap.tombstones)
        if len(self._entries) > self.max_entries:
            self._evict()

    def save(self) -> None:
        """Write the cache file: merge with what is on disk, then write atomically (temp + rename, 0600).

        Merge rule (two processes writing one file): the union of both sides' entries; for a peer on
        both sides the newer ``resolved_at`` wins; an entry invalidated by either side is dropped unless
        it was resolved again after the invalidation; then the least recently used beyond
        ``max_entries`` go.  Writers serialise on a lock file where ``fcntl`` exists.
        """
        if self.path is None:
            return
        self._ensure_loaded()
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with _locked(path):
                disk = _read_file(path)
                if disk is not None:
                    self._merge(disk)
                _write_file(path, self._snapshot())
        except OSError as exc:
            from .errors import CacheError

            raise CacheError(f"cannot write the peer cache {path}: {exc}") from exc
        self._dirty = False

    def close(self) -> None:
        """Save if anything changed since the last load/save."""
        if self._dirty and self.path is not None:
            self.save()

    def _merge(self, disk: _Snapshot) -> None:
        tomb = self._tombstones
        for mid, t in disk.tombstones.items():
            if t > tomb.get(mid, -1.0):
                tomb[mid] = t
        entries = self._entries
        # Ours that another process invalidated after we resolved them.
        for mid in [m for m, e in entries.items() if m in tomb and e.resolved_at <= tomb[m]]:
            self._drop(mid)
        newcomers: list[tuple[int, CacheEntry]] = []
        for mid, entry in disk.entries.items():
            if mid in tomb and entry.resolved_at <= tomb[mid]:
                continue
            if self.ttl is not None and self._clock() - entry.resolved_at > self.ttl:
                continue
            ours = entries.get(mid)
            if ours is None:
                newcomers.append((mid, entry))
            elif entry.resolved_at > ours.resolved_at:
                entries[mid] = entry
        # Theirs-only entries go in as least recently used (in their own LRU order).
        for mid, entry in reversed(newcomers):
            entries[mid] = entry
            entries.move_to_end(mid, last=False)
        # Names: for a name both sides know, the side whose peer was resolved more recently wins.
        for name, mid in disk.names.items():
            if mid not in entries:
                continue
            current = self._by_name.get(name)
            if current is None or (
                current in entries and entries[mid].resolved_at > entries[current].resolved_at
            ):
                self._link(name, mid)
        for mid, entry in list(entries.items()):  # an entry's username field follows the name index
            if entry.username and self._by_name.get(entry.username.lower()) != mid:
                entries[mid] = CacheEntry(entry.kind, entry.id, entry.access_hash, None, entry.resolved_at)
        if len(entries) > self.max_entries:
            self._evict()
        if len(tomb) > _MAX_TOMBSTONES:
            keep = sorted(tomb.items(), key=lambda kv: kv[1])[-_MAX_TOMBSTONES:]
            tomb.clear()
            tomb.update(keep)

    def _snapshot(self) -> dict[str, Any]:
        now = self._clock()
        ttl = self.ttl
        out_entries = []
        kept: set[int] = set()
        for mid, e in self._entries.items():
            if ttl is not None and now - e.resolved_at > ttl:
                continue
            out_entries.append([e.kind, e.id, e.access_hash, e.username, float(e.resolved_at)])
            kept.add(mid)
        names = [[name, mid] for name, mid in self._by_name.items() if mid in kept]
        tombs = sorted(self._tombstones.items(), key=lambda kv: kv[1])[-_MAX_TOMBSTONES:]
        return {
            "entries": out_entries,
            "names": names,
            "tombstones": [[mid, float(t)] for mid, t in tombs],
        }


# --------------------------------------------------------------------------------------------------
# The file: a msgpack stream of two objects, the header [FORMAT_NAME, FORMAT_VERSION, crc32(body)] and
# the body map.  The CRC makes a flipped bit or a torn write a rejected file instead of a wrong peer.


def _write_file(path: Path, body: dict[str, Any]) -> None:
    packed = msgpack.packb(body, use_bin_type=True)
    data = msgpack.packb([FORMAT_NAME, FORMAT_VERSION, zlib.crc32(packed)], use_bin_type=True) + packed
    atomic_write_bytes(path, data)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: atomic rename still holds; concurrent merges may lose a race
        yield
        return
    fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read_file(path: Path) -> _Snapshot | None:
    """Parse and validate the cache file; None if it does not exist.  A bad file is moved aside with a
    :class:`PeerCacheWarning` and reads as empty -- never an exception, never a half-trusted entry."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise _Corrupt(f"{size} bytes is larger than the {MAX_FILE_BYTES} byte limit")
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except _Corrupt as exc:
        _move_aside(path, str(exc))
        return _Snapshot()
    except OSError as exc:
        warnings.warn(
            f"peer cache {path} is unreadable ({exc}); starting with an empty cache",
            PeerCacheWarning,
            stacklevel=3,
        )
        return _Snapshot()
    try:
        return _parse(data)
    except Exception as exc:  # hostile input: any failure of the parser is "corrupt"
        _move_aside(path, f"{type(exc).__name__}: {exc}"[:200])
        return _Snapshot()


class _Corrupt(Exception):
    pass


def _parse(data: bytes) -> _Snapshot:
    # Walk the stream with read_array_header()/read_map_header(): they return the declared length
    # without allocating, so every container the unpacker itself builds is tiny (max_array_len=8) and
    # a hostile "2**32 elements" header costs nothing but an OutOfData at the end of the bytes.
    if len(data) > MAX_FILE_BYTES:
        raise _Corrupt("file too large")
    u = msgpack.Unpacker(
        raw=False,
        strict_map_key=True,
        max_buffer_size=max(len(data), 1),
        max_str_len=_MAX_STR,
        max_bin_len=0,
        max_ext_len=0,
        max_array_len=8,
        max_map_len=4,
    )
    u.feed(data)
    header = u.unpack()
    if not (isinstance(header, list) and len(header) >= 2 and header[0] == FORMAT_NAME):
        raise _Corrupt("not a tgkit peer cache")
    if type(header[1]) is not int or header[1] != FORMAT_VERSION:
        raise _Corrupt(f"format version {header[1]!r}, this tgkit reads version {FORMAT_VERSION}")
    if len(header) != 3 or type(header[2]) is not int or header[2] != zlib.crc32(data[u.tell() :]):
        raise _Corrupt("checksum mismatch (a torn or damaged file)")
    if u.read_map_header() != 3:
        raise _Corrupt("unexpected body layout")
    snap = _Snapshot()
    seen: set[str] = set()
    for _ in range(3):
        section = u.unpack()
        if section not in ("entries", "names", "tombstones") or section in seen:
            raise _Corrupt(f"unexpected section {section!r}"[:200])
        seen.add(section)
        n = u.read_array_header()
        if n > _MAX_ITEMS:
            raise _Corrupt(f"{n} items in {section}")
        for _ in range(n):
            _PARSERS[section](u.unpack(), snap)
    with contextlib.suppress(msgpack.OutOfData):
        u.skip()
        raise _Corrupt("trailing data after the body")
    for name, mid in snap.names.items():
        if mid not in snap.entries:
            raise _Corrupt(f"name {name!r} points at no entry")
    return snap


def _parse_entry(row: Any, snap: _Snapshot) -> None:
    if not isinstance(row, list) or len(row) != 5:
        raise _Corrupt(f"bad entry {row!r}"[:200])
    entry = CacheEntry(*row)
    problem = _validate(entry)
    if problem:
        raise _Corrupt(f"bad entry ({problem})")
    mid = marked_id(entry.kind, entry.id)
    if mid in snap.entries:
        raise _Corrupt(f"duplicate entry {mid}")
    snap.entries[mid] = entry


def _parse_name(item: Any, snap: _Snapshot) -> None:
    if not (
        isinstance(item, list)
        and len(item) == 2
        and type(item[0]) is str
        and _USERNAME_RE.fullmatch(item[0])
        and type(item[1]) is int
    ):
        raise _Corrupt(f"bad name {item!r}"[:200])
    snap.names[item[0]] = item[1]


def _parse_tombstone(item: Any, snap: _Snapshot) -> None:
    if not (
        isinstance(item, list)
        and len(item) == 2
        and type(item[0]) is int
        and type(item[1]) in (int, float)
        and math.isfinite(item[1])
    ):
        raise _Corrupt(f"bad tombstone {item!r}"[:200])
    snap.tombstones[item[0]] = float(item[1])


_PARSERS: dict[str, Callable[[Any, _Snapshot], None]] = {
    "entries": _parse_entry,
    "names": _parse_name,
    "tombstones": _parse_tombstone,
}


def _move_aside(path: Path, why: str) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{time.time_ns() % 1_000_000_000:09d}"
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, target)
        where = f"moved to {target}"
    except FileNotFoundError:
        where = "already moved by another process"
    except OSError as exc:
        where = f"could not be moved aside ({exc})"
    warnings.warn(
        f"peer cache {path} is corrupt or from another version ({why}); {where}; starting empty",
        PeerCacheWarning,
        stacklevel=4,
    )
