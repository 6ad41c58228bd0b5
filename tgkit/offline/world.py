"""A seeded, deterministic Telegram world: users, channels, groups, messages, dialogs and media files.

Messages are generated lazily from ``(seed, chat, id)``: a world of a million messages costs nothing
until a page is asked for, and the same seed gives the same world byte for byte.  The world is mutable
in the ways an incremental export cares about: new messages, edits, deletions, expired file references.

Beside the public chats (the demo channel, its linked discussion group with comments, the demo group,
forward sources, optional public channels) every account has its own "mailbox", as on Telegram: Saved
Messages, private chats and a basic group whose message ids are numbered per account.  ``World.account``
adds accounts, so several clients can work on one world (each through its own ``OfflineServer``).
Features added after the first worlds were committed draw from their own RNG streams (salted keys), so
the messages those worlds had stay what they were.

Objects are Telethon's own TL types (the un-patched constructors, which serialise identically and are
cheaper to build); the server turns them into bytes with real TL serialisation.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import re
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from telethon.tl import types

from .files import (
    AVATAR_SIZES,
    PHOTO_SIZES,
    VIDEO_SHAPES,
    encode_jpeg,
    encode_mp4,
    encode_webm,
    lottie_tgs,
    stripped_thumb,
)

__all__ = ["ChatSpec", "DialogRow", "World", "raw_type"]


def raw_type(cls: type) -> type:
    """The plain generated TL class behind a Telethon-patched one (``types.Message`` is patched)."""
    for klass in cls.__mro__:
        if klass.__module__ == "telethon.tl.types":
            return klass
    return cls


_Message = raw_type(types.Message)
_MessageService = raw_type(types.MessageService)
_MessageEmpty = raw_type(types.MessageEmpty)

SELF_ID = 100_000_001
BOT_ID = 3_001
CHANNEL_ID = 1_001
GROUP_ID = 1_002
DISCUSSION_ID = 1_003  # the demo channel's linked discussion group (comments live here)
BASIC_GROUP_ID = 4_001  # a basic group (types.Chat) in every account's mailbox
ACCOUNT_BASE = 100_100_000  # ids of accounts added with World.account(name)
PHOTO_BASE = 9_000_000_000_000  # profile photo ids
PRIVATE_CHAT_USERS = 4  # private chats with member_00.. member_03 (and one with the bot)
SOURCE_BASE = 1_100
USER_BASE = 2_001
PUBLIC_BASE = 5_000
HOME_DC = 2
OTHER_DC = 4
END_DATE = datetime(2026, 9, 30, tzinfo=UTC)

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "at",
    "this",
    "from",
    "have",
    "not",
    "are",
    "or",
    "but",
    "an",
    "they",
    "which",
    "one",
    "you",
    "were",
    "all",
    "we",
    "her",
    "she",
    "there",
    "been",
    "their",
    "has",
    "would",
    "when",
    "who",
    "will",
    "more",
    "if",
    "no",
    "out",
    "so",
    "said",
    "what",
    "up",
    "its",
    "about",
    "into",
    "than",
    "them",
    "can",
    "only",
    "other",
    "new",
    "some",
    "could",
    "time",
    "these",
    "two",
    "may",
    "then",
    "do",
    "first",
    "any",
    "my",
    "now",
    "such",
    "like",
    "our",
    "over",
    "man",
    "me",
    "even",
    "most",
    "made",
    "after",
    "also",
    "did",
    "many",
    "before",
    "must",
    "through",
    "back",
    "years",
    "where",
    "much",
    "your",
    "way",
    "well",
    "down",
    "should",
    "because",
    "each",
    "just",
    "those",
    "people",
    "how",
    "too",
    "little",
    "state",
    "good",
    "very",
    "make",
    "world",
    "still",
    "own",
    "see",
    "men",
    "work",
    "long",
    "get",
    "here",
    "between",
    "both",
    "life",
    "being",
    "under",
    "never",
    "day",
    "same",
    "another",
    "know",
    "while",
    "last",
    "might",
    "us",
    "great",
    "old",
    "year",
    "off",
    "come",
    "since",
    "against",
    "go",
    "came",
    "right",
    "used",
    "take",
    "three",
    "research",
    "data",
    "channel",
    "report",
    "news",
    "update",
    "analysis",
    "vote",
    "city",
    "market",
    "energy",
    "policy",
    "health",
]
_EMOJI = ("🙂", "🔥", "👍", "❤️", "😂", "🎉", "🤔", "👀", "🚀", "📈")
_HASHTAGS = ("#news", "#update", "#research", "#data", "#breaking", "#analysis", "#тест", "#daily")
_REACTIONS = ("👍", "❤", "🔥", "😂", "😢", "🎉", "🤯", "👎")
_DOC_NAMES = (
    "report.pdf",
    "dataset.csv",
    "notes.txt",
    "slides.pptx",
    "archive.zip",
    "Отчёт 2026.pdf",
    "photo of the day.jpg",
)
# Hostile names Telegram clients can send; tgkit must keep files inside the media folder.
HOSTILE_NAMES = (
    "../../etc/passwd",
    "/absolute/path/evil.sh",
    "con.txt",
    "a\x00b.pdf",
    "x" * 300 + ".bin",
    "..",
    "nested/dir/file.txt",
    "C:\\Windows\\system32\\evil.dll",
)


def _access_hash(seed: int, peer_id: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{peer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit Telegram's entity offsets use."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le")) // 2


@dataclass(slots=True)
class ChatSpec:
    """One chat of the world."""

    id: int
    kind: str  # "broadcast" | "megagroup"
    title: str
    username: str | None
    messages: int
    days: int
    dc_id: int = HOME_DC
    members: tuple[int, ...] = ()
    # mutable overlay
    max_id: int = 0
    linked_chat_id: int | None = None  # broadcast <-> its discussion group
    discussion_of: int | None = None  # set on a discussion group: the channel whose posts it discusses
    deleted: set[int] = field(default_factory=set)
    edits: dict[int, dict[str, Any]] = field(default_factory=dict)
    _ids: array | None = None
    _appended_dates: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class FileBlob:
    """A downloadable file: its bytes, its data centre and its current file-reference epoch.

    ``thumbs`` are the other sizes by Telegram's type letter (a photo's "s"/"m"/"x", a video's "m",
    a profile photo's "a"/"c"); ``data`` is what a download without ``thumb_size`` (documents) or with
    the largest size (photos) returns.
    """

    data: bytes
    dc_id: int
    kind: str  # "photo" | "document" | "profile"
    epoch: int = 0
    thumbs: dict[str, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class DialogRow:
    """One entry of an account's dialog list (``messages.getDialogs``)."""

    peer: Any  # PeerUser | PeerChat | PeerChannel
    top_message: int
    date: int  # the top message's date (epoch seconds)
    rank: int  # tie-break among equal dates: position in the world's peer order
    unread_count: int
    read_inbox_max_id: int
    read_outbox_max_id: int
    pinned: bool = False
    folder_id: int | None = None  # 1: archived
    channel: bool = False


@dataclass(slots=True)
class _Thread:
    """The discussion group's copy of one channel post and the comments under it."""

    post: int
    copy_id: int
    comments: int  # exact number of comments (ids copy_id + 1 .. copy_id + comments)


@dataclass(slots=True)
class _Mailbox:
    """An account's own message-id space: Saved Messages, private chats, its basic group."""

    self_id: int
    peers: list[tuple[str, int]]  # conversation index -> ("user" | "chat", id)
    peer_of: array  # message id - 1 -> conversation index
    dates: array  # message id - 1 -> date (epoch seconds, ascending)
    by_peer: dict[tuple[str, int], array]  # ascending ids per conversation


class World:
    """A seeded Telegram world.  ``World(seed=7)`` twice gives identical messages and files."""

    def __init__(
        self,
        seed: int = 7,
        *,
        channel_messages: int = 5_000,
        group_messages: int = 2_000,
        group_users: int = 20,
        days: int = 90,
        public_channels: int = 0,
        media: bool = True,
        videos: bool = True,
        deleted_rate: float = 0.03,
        hostile_names: bool = True,
        cache_bytes: bool = True,
    ) -> None:
        self.params: dict[str, Any] = {
            "seed": seed,
            "channel_messages": channel_messages,
            "group_messages": group_messages,
            "group_users": group_users,
            "days": days,
            "public_channels": public_channels,
            "media": media,
            "videos": videos,
            "deleted_rate": deleted_rate,
            "hostile_names": hostile_names,
            "cache_bytes": cache_bytes,
        }
        self.seed = seed
        self.days = days
        self.media = media
        self.videos = videos and media
        self.deleted_rate = deleted_rate
        self.hostile_names = hostile_names
        self.now = int(END_DATE.timestamp())
        self._origin = self.now  # generated dates count back from here (``now`` moves on with new messages)
        self.users: dict[int, Any] = {}
        self.chats: dict[int, ChatSpec] = {}
        self.channel_objs: dict[int, Any] = {}
        self.usernames: dict[str, tuple[str, int]] = {}  # lower username -> (kind, id)
        self.accounts: dict[str, int] = {"ada": SELF_ID}  # account name -> its user id
        self._files: dict[int, FileBlob] = {}
        self._pools: dict[str, list[Any]] = {}
        self.cache_bytes = cache_bytes
        self._bytes: dict[tuple[int, int], bytes] = {}
        self._profile_photos: dict[int, tuple[str, int]] = {}  # photo id -> ("user" | "channel" | "chat", id)
        self._threads: list[_Thread] = []  # the discussion group's threads, in post order
        self._thread_of: dict[int, int] = {}  # post id -> index in _threads
        self._thread_starts = array("q")  # copy ids, ascending
        self._threads_upto = 0  # channel ids scanned for threads
        self._mailboxes: dict[int, _Mailbox] = {}
        self._stripped_cache: dict[tuple[str, int], bytes] = {}

        self._add_user(SELF_ID, "Ada", "Researcher", "ada_research", is_self=True)
        self._add_user(BOT_ID, "Demo", "Bot", "demo_bot", bot=True)
        firsts = ("Alex", "Maria", "Ivan", "Li", "Fatima", "Omar", "Sofia", "Yuki", "Noah", "Amara")
        for i in range(group_users):
            self._add_user(USER_BASE + i, firsts[i % len(firsts)], f"Member{i}", f"member_{i:02d}")
        self.group_user_ids = tuple(USER_BASE + i for i in range(group_users))

        self._add_channel(
            ChatSpec(
                CHANNEL_ID,
                "broadcast",
                "tgkit demo channel",
                "tgkit_demo",
                channel_messages,
                days,
                linked_chat_id=DISCUSSION_ID,
            )
        )
        self._add_channel(
            ChatSpec(
                GROUP_ID,
                "megagroup",
                "tgkit demo group",
                "tgkit_group",
                group_messages,
                days,
                members=self.group_user_ids,
            )
        )
        for i in range(5):
            self._add_channel(ChatSpec(SOURCE_BASE + i, "broadcast", f"Source {i}", f"source_{i}", 50, days))
        self.source_ids = tuple(SOURCE_BASE + i for i in range(5))
        for i in range(public_channels):
            self._add_channel(
                ChatSpec(PUBLIC_BASE + i, "broadcast", f"Public channel {i}", f"public_{i:03d}", 20, days)
            )
        # Added after the chats above, so their objects and messages stay as they were.
        self._add_channel(
            ChatSpec(
                DISCUSSION_ID,
                "megagroup",
                "tgkit demo comments",
                "tgkit_demo_chat",
                0,  # grows with the channel's commented posts (see _sync_discussion)
                days,
                members=self.group_user_ids,
                linked_chat_id=CHANNEL_ID,
                discussion_of=CHANNEL_ID,
            )
        )
        self.basic_group = types.Chat(
            id=BASIC_GROUP_ID,
            title="tgkit reading club",
            photo=self._chat_photo("chat", BASIC_GROUP_ID),
            participants_count=1 + min(5, group_users),
            date=END_DATE - timedelta(days=days + 2),
            version=1,
        )

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> World:
        """The same world in another process: ``World.from_params(world.params)`` (plain, picklable)."""
        return cls(**params)

    # ---------------------------------------------------------------------------------------------
    # peers

    def _rng(self, *parts: object) -> random.Random:
        """A separate, deterministic RNG stream (string seeds hash the same in every process)."""
        return random.Random(":".join(str(p) for p in (self.seed, *parts)))

    def _stripped(self, kind: str, peer_id: int) -> bytes:
        key = (kind, peer_id)
        data = self._stripped_cache.get(key)
        if data is None:
            rng = self._rng("stripped", kind, peer_id)
            colours = [
                (rng.randrange(40, 230), rng.randrange(40, 230), rng.randrange(40, 230)) for _ in range(2)
            ]
            data = self._stripped_cache[key] = stripped_thumb(colours, 40, 40)
        return data

    def _photo_id(self, kind: str, peer_id: int) -> int:
        return PHOTO_BASE + peer_id * 10 + {"user": 1, "channel": 2, "chat": 3}[kind]

    def _profile_dc(self, peer_id: int) -> int:
        return OTHER_DC if peer_id % 3 == 0 else HOME_DC

    def _user_photo(self, uid: int, *, always: bool = False) -> Any:
        if not always and self._rng("avatar", "user", uid).random() >= 0.6:
            return None
        pid = self._photo_id("user", uid)
        self._profile_photos[pid] = ("user", uid)
        return types.UserProfilePhoto(
            photo_id=pid, dc_id=self._profile_dc(uid), stripped_thumb=self._stripped("user", uid)
        )

    def _chat_photo(self, kind: str, peer_id: int, *, always: bool = True) -> Any:
        if not always and self._rng("avatar", kind, peer_id).random() >= 0.5:
            return types.ChatPhotoEmpty()
        pid = self._photo_id(kind, peer_id)
        self._profile_photos[pid] = (kind, peer_id)
        return types.ChatPhoto(
            photo_id=pid, dc_id=self._profile_dc(peer_id), stripped_thumb=self._stripped(kind, peer_id)
        )

    def _add_user(self, uid: int, first: str, last: str, username: str, *, is_self=False, bot=False) -> None:
        self.users[uid] = types.User(
            id=uid,
            is_self=is_self,
            bot=bot,
            bot_info_version=1 if bot else None,
            access_hash=_access_hash(self.seed, uid),
            first_name=first,
            last_name=last,
            username=username,
            photo=self._user_photo(uid, always=is_self or bot or uid >= ACCOUNT_BASE),
            status=types.UserStatusRecently(),
        )
        self.usernames[username.lower()] = ("user", uid)

    def _add_channel(self, spec: ChatSpec) -> None:
        spec.max_id = spec.messages
        self.chats[spec.id] = spec
        featured = spec.id in (CHANNEL_ID, GROUP_ID, DISCUSSION_ID)
        self.channel_objs[spec.id] = types.Channel(
            id=spec.id,
            title=spec.title,
            photo=self._chat_photo("channel", spec.id, always=featured),
            date=END_DATE - timedelta(days=spec.days + 1),
            broadcast=spec.kind == "broadcast",
            megagroup=spec.kind == "megagroup",
            signatures=spec.kind == "broadcast",
            has_link=spec.linked_chat_id is not None or None,
            access_hash=_access_hash(self.seed, spec.id),
            username=spec.username,
            participants_count=self.participants_count(spec),
        )
        if spec.username:
            self.usernames[spec.username.lower()] = ("channel", spec.id)

    def participants_count(self, spec: ChatSpec) -> int:
        return len(spec.members) or 1000 + spec.id % 997

    def about(self, chat_id: int) -> str:
        """The chat's description (channels.getFullChannel / messages.getFullChat ``about``)."""
        spec = self.chats.get(chat_id)
        if chat_id == BASIC_GROUP_ID:
            return "We read one paper a week. Offline double of a basic group."
        if spec is None:
            return ""
        if chat_id == CHANNEL_ID:
            return "Daily research news and data updates. Comments: @tgkit_demo_chat"
        if chat_id == GROUP_ID:
            return "Open discussion for tgkit users. Be kind; no spam."
        if spec.discussion_of:
            return "Comments on posts of @tgkit_demo."
        if chat_id in self.source_ids:
            return f"{spec.title}: a news desk whose posts other channels forward."
        return f"{spec.title}: a public channel of the offline world."

    @property
    def self_user(self) -> Any:
        return self.users[SELF_ID]

    def account(self, name: str | None = None) -> int:
        """The user id of account ``name`` (created on first use; ``None``/"ada" is the demo's own user).

        Every account is a distinct user of this world with its own Saved Messages, private chats and
        basic group; the public chats are shared.  Same seed and name, same id in every process.
        """
        if name is None:
            return SELF_ID
        key = name.lower()
        uid = self.accounts.get(key)
        if uid is not None:
            return uid
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,23}", key):
            raise ValueError(f"account names are letters, digits and _ (at most 24), got {name!r}")
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        uid = ACCOUNT_BASE + int.from_bytes(digest, "little") % 800_000
        while uid in self.users:  # a hash collision between two names: take the next free id
            uid += 1
        self._add_user(uid, key.replace("_", " ").title(), "Researcher", f"{key}_research")
        self.accounts[key] = uid
        return uid

    def access_hash(self, peer_id: int) -> int:
        return _access_hash(self.seed, peer_id)

    def resolve_username(self, username: str) -> tuple[str, int] | None:
        return self.usernames.get(username.lower())

    # ---------------------------------------------------------------------------------------------
    # message ids and dates

    def _exists(self, spec: ChatSpec, msg_id: int) -> bool:
        if msg_id < 1 or msg_id > spec.max_id or msg_id in spec.deleted:
            return False
        if msg_id == 1 or msg_id > spec.messages or spec.discussion_of:
            return True
        return self._seeded_exists(spec, msg_id)

    def _seeded_exists(self, spec: ChatSpec, msg_id: int) -> bool:
        """Whether the seed deleted the message (later ``delete_messages`` calls aside)."""
        if msg_id == 1 or msg_id > spec.messages:
            return True
        rng = random.Random(self._key(spec.id, msg_id, 1))
        return rng.random() >= self.deleted_rate

    def spec(self, chat_id: int) -> ChatSpec:
        """The chat's spec, brought up to date (a discussion group grows with its channel)."""
        spec = self.chats[chat_id]
        if spec.discussion_of:
            self._sync_discussion(spec)
        return spec

    def ids(self, chat_id: int) -> array:
        """Ascending ids of the messages that exist now (cached until the chat changes)."""
        spec = self.spec(chat_id)
        if spec._ids is None:
            spec._ids = array("q", (i for i in range(1, spec.max_id + 1) if self._exists(spec, i)))
        return spec._ids

    def date_of(self, spec: ChatSpec, msg_id: int) -> int:
        if spec.discussion_of:
            return self._discussion_date(spec, msg_id)
        if msg_id > spec.messages:
            return spec._appended_dates[msg_id]
        span = spec.days * 86_400
        start = self._origin - span
        return start + (msg_id - 1) * span // max(spec.messages, 1)

    def _key(self, chat_id: int, msg_id: int, salt: int = 0) -> int:
        return ((self.seed * 1_000_003 + chat_id) * 10_000_019 + msg_id) * 7 + salt

    # ---------------------------------------------------------------------------------------------
    # mutations (what incremental exports and refresh runs must notice)

    def add_messages(self, chat_id: int, n: int, *, seconds_apart: int = 60) -> list[int]:
        """Append ``n`` new messages (dated after everything else); returns their ids.

        New posts of the demo channel may carry comments: its discussion group grows with them.
        """
        spec = self.chats[chat_id]
        if spec.discussion_of:
            raise ValueError("a discussion group grows with its channel: add messages to the channel")
        last = self.date_of(spec, spec.max_id) if spec.max_id else self.now
        new = []
        for _ in range(n):
            spec.max_id += 1
            last += seconds_apart
            spec._appended_dates[spec.max_id] = last
            new.append(spec.max_id)
        self.now = max(self.now, last)
        spec._ids = None
        return new

    def edit_message(
        self, chat_id: int, msg_id: int, *, text: str | None = None, views: int | None = None
    ) -> None:
        spec = self.chats[chat_id]
        patch = spec.edits.setdefault(msg_id, {})
        self._bytes.pop((chat_id, msg_id), None)
        if text is not None:
            patch["message"] = text
            patch["entities"] = []
            patch["edit_date"] = self.now
        if views is not None:
            patch["views"] = views

    def delete_messages(self, chat_id: int, ids: list[int]) -> None:
        spec = self.chats[chat_id]
        spec.deleted.update(ids)
        spec._ids = None
        for i in ids:
            self._bytes.pop((chat_id, i), None)

    def expire_file_reference(self, file_id: int) -> None:
        """Rotate a file's reference: old references now get FILE_REFERENCE_EXPIRED."""
        blob = self.file(file_id)
        if blob is None:
            raise KeyError(file_id)
        blob.epoch += 1
        chat_id, msg_id = file_id // 100_000_000, (file_id // 10) % 10_000_000
        self._bytes.pop((chat_id, msg_id), None)
        if chat_id == CHANNEL_ID and msg_id in self._thread_of:  # its discussion copy carries the file too
            self._bytes.pop((DISCUSSION_ID, self._threads[self._thread_of[msg_id]].copy_id), None)

    # ---------------------------------------------------------------------------------------------
    # files

    def file_reference(self, file_id: int) -> bytes:
        blob = self.file(file_id)
        if blob is None:
            raise KeyError(file_id)
        return b"ref" + file_id.to_bytes(8, "little", signed=True) + blob.epoch.to_bytes(4, "little")

    def file(self, file_id: int) -> FileBlob | None:
        blob = self._files.get(file_id)
        if blob is None and file_id in self._profile_photos:
            # profile photos are drawn on first use (PyAV), not when their owner is made
            _kind, peer_id = self._profile_photos[file_id]
            sizes = self._pool("avatar")[peer_id % 4]
            blob = FileBlob(sizes["c"], self._profile_dc(peer_id), "profile", thumbs=dict(sizes))
            self._files[file_id] = blob
        return blob

    def file_bytes(self, file_id: int, thumb_size: str = "") -> bytes | None:
        """What ``upload.getFile`` serves for this location (None: no such size)."""
        blob = self.file(file_id)
        if blob is None:
            return None
        if blob.kind == "document":
            return blob.data if not thumb_size else blob.thumbs.get(thumb_size)
        return blob.thumbs.get(thumb_size)  # photos: always one of their sizes

    def profile_photo_owner(self, photo_id: int) -> tuple[str, int] | None:
        return self._profile_photos.get(photo_id)

    def profile_photo(self, photo_id: int) -> Any:
        """The full ``Photo`` of a profile photo (what getFullChannel/getFullUser carry)."""
        blob = self.file(photo_id)
        owner = self._profile_photos.get(photo_id)
        if blob is None or owner is None:
            return types.PhotoEmpty(id=photo_id)
        return types.Photo(
            id=photo_id,
            access_hash=self.access_hash(photo_id),
            file_reference=self.file_reference(photo_id),
            date=END_DATE - timedelta(days=self.days),
            sizes=[
                types.PhotoStrippedSize(type="i", bytes=self._stripped(*owner)),
                *(
                    types.PhotoSize(type=t, w=side, h=side, size=len(blob.thumbs[t]))
                    for t, side in AVATAR_SIZES
                ),
            ],
            dc_id=blob.dc_id,
        )

    def _pool(self, kind: str) -> list[Any]:
        pool = self._pools.get(kind)
        if pool is None:
            pool = _make_pool(kind, self.seed)
            self._pools[kind] = pool
        return pool

    def _register(
        self, file_id: int, data_factory, dc_id: int, kind: str, thumbs: dict[str, bytes] | None = None
    ) -> bytes:
        blob = self._files.get(file_id)
        if blob is None:
            blob = FileBlob(data_factory(), dc_id, kind, thumbs=thumbs or {})
            self._files[file_id] = blob
        return self.file_reference(file_id)

    # ---------------------------------------------------------------------------------------------
    # messages

    def message_bytes(self, chat_id: int, msg_id: int) -> bytes:
        """The serialised message (cached unless ``cache_bytes=False``; mutations invalidate)."""
        key = (chat_id, msg_id)
        data = self._bytes.get(key)
        if data is None:
            data = bytes(self.message(chat_id, msg_id))
            if self.cache_bytes:
                self._bytes[key] = data
        return data

    def message(self, chat_id: int, msg_id: int) -> Any:
        """The message as Telegram would send it now, or MessageEmpty if it does not exist."""
        spec = self.spec(chat_id)
        peer = types.PeerChannel(chat_id)
        if not self._exists(spec, msg_id):
            return _MessageEmpty(id=msg_id, peer_id=peer)
        if spec.discussion_of:
            msg = self._discussion_message(spec, msg_id, peer)
        else:
            msg = self._generate(spec, msg_id, peer)
        patch = spec.edits.get(msg_id)
        if patch:
            for k, v in patch.items():
                setattr(msg, k, datetime.fromtimestamp(v, UTC) if k == "edit_date" else v)
        return msg

    def _generate(self, spec: ChatSpec, msg_id: int, peer: Any, *, full: bool = True) -> Any:
        # full=False: no media and no link to the discussion group (how the thread index reads posts;
        # both come after every draw the rest of the message makes, so the rest is the same)
        rng = random.Random(self._key(spec.id, msg_id))
        date = datetime.fromtimestamp(self.date_of(spec, msg_id), UTC)
        broadcast = spec.kind == "broadcast"
        from_id = None if broadcast else types.PeerUser(spec.members[rng.randrange(len(spec.members))])

        if msg_id == 1:
            action = (
                types.MessageActionChannelCreate(title=spec.title)
                if broadcast
                else types.MessageActionChatCreate(title=spec.title, users=list(spec.members[:3]))
            )
            return _MessageService(
                id=1, peer_id=peer, date=date, action=action, post=broadcast, from_id=from_id
            )
        roll = rng.random()
        if roll < 0.02 and msg_id > 10:
            target = rng.randrange(2, msg_id)
            return _MessageService(
                id=msg_id,
                peer_id=peer,
                date=date,
                action=types.MessageActionPinMessage(),
                post=broadcast,
                from_id=from_id,
                reply_to=types.MessageReplyHeader(reply_to_msg_id=target),
            )
        if roll < 0.035 and not broadcast:
            action = (
                types.MessageActionChatJoinedByLink(inviter_id=spec.members[0])
                if rng.random() < 0.5
                else types.MessageActionChatAddUser(users=[spec.members[rng.randrange(len(spec.members))]])
            )
            return _MessageService(id=msg_id, peer_id=peer, date=date, action=action, from_id=from_id)

        text, entities = self._text(rng)
        msg = _Message(
            id=msg_id,
            peer_id=peer,
            date=date,
            message=text,
            post=broadcast,
            from_id=from_id,
            entities=entities or None,
        )
        age_days = max((self.now - int(date.timestamp())) / 86_400, 0.01)
        if broadcast:
            msg.views = int(200 + 5_000 * (1 - 1 / (1 + age_days)) * (0.5 + rng.random()))
            msg.forwards = rng.randrange(0, 40)
            if rng.random() < 0.3:
                msg.post_author = rng.choice(("Editor", "Night desk", "Ada R."))
            if rng.random() < 0.4:
                msg.replies = types.MessageReplies(replies=rng.randrange(0, 60), replies_pts=msg_id)
                if full and spec.linked_chat_id:
                    self._link_comments(spec, msg)
        else:
            if msg_id > 5 and rng.random() < 0.35:
                top = max(2, msg_id - rng.randrange(1, 40))
                target = rng.randrange(top, msg_id)
                msg.reply_to = types.MessageReplyHeader(
                    reply_to_msg_id=target, reply_to_top_id=top if target != top else None
                )
            if rng.random() < 0.03:
                msg.via_bot_id = BOT_ID
        if rng.random() < 0.12:
            msg.fwd_from = self._forward(rng, date)
        if rng.random() < 0.08:
            msg.edit_date = date + timedelta(minutes=rng.randrange(1, 600))
        if rng.random() < 0.01:
            msg.pinned = True
        if rng.random() < 0.3:
            msg.reactions = self._reactions(rng)
        if self.media and full:
            self._media(spec, msg, rng, msg_id, date)
        return msg

    # ---------------------------------------------------------------------------------------------
    # the discussion group: a copy of every post with comments enabled, then the comments under it

    def _scan_threads(self, upto: int) -> None:
        """Index the channel's posts up to ``upto``: which carry comments, and how many."""
        if upto <= self._threads_upto:
            return
        channel = self.chats[CHANNEL_ID]
        peer = types.PeerChannel(CHANNEL_ID)
        next_id = self._threads[-1].copy_id + 1 + self._threads[-1].comments if self._threads else 2
        for post in range(self._threads_upto + 1, upto + 1):
            # seeded deletions count, later delete_messages calls do not (Telegram keeps the copy)
            if post == 1 or not self._seeded_exists(channel, post):
                continue
            replies = getattr(self._generate(channel, post, peer, full=False), "replies", None)
            if replies is None:
                continue
            self._thread_of[post] = len(self._threads)
            self._threads.append(_Thread(post, next_id, replies.replies))
            self._thread_starts.append(next_id)
            next_id += 1 + replies.replies
        self._threads_upto = upto

    def _sync_discussion(self, spec: ChatSpec) -> None:
        self._scan_threads(self.chats[spec.discussion_of or CHANNEL_ID].max_id)
        total = self._threads[-1].copy_id + self._threads[-1].comments if self._threads else 1
        if total != spec.max_id:
            spec.max_id = spec.messages = total
            spec._ids = None

    def thread(self, post_id: int) -> _Thread | None:
        """The discussion thread of a demo channel post (None: comments are off for it)."""
        self._scan_threads(self.chats[CHANNEL_ID].max_id)
        index = self._thread_of.get(post_id)
        return None if index is None else self._threads[index]

    def thread_of_message(self, msg_id: int) -> _Thread | None:
        """The thread a discussion-group message belongs to (its copy or one of its comments)."""
        self.spec(DISCUSSION_ID)
        i = bisect.bisect_right(self._thread_starts, msg_id) - 1
        if i < 0:
            return None
        t = self._threads[i]
        return t if msg_id <= t.copy_id + t.comments else None

    def comment_ids(self, post_id: int) -> array:
        t = self.thread(post_id)
        return array("q", range(t.copy_id + 1, t.copy_id + 1 + t.comments) if t else ())

    def _link_comments(self, spec: ChatSpec, msg: Any) -> None:
        t = self.thread(msg.id)
        if t is None:
            return
        msg.replies.comments = True
        msg.replies.channel_id = spec.linked_chat_id
        if t.comments:
            msg.replies.max_id = t.copy_id + t.comments

    def _post_gap(self, post: int) -> int:
        channel = self.chats[CHANNEL_ID]
        if post > channel.messages:
            return 50
        return max(channel.days * 86_400 // max(channel.messages, 1) - 4, 1)

    def _discussion_date(self, spec: ChatSpec, msg_id: int) -> int:
        channel = self.chats[CHANNEL_ID]
        if msg_id <= 1:
            return self.date_of(channel, 1) + 1 if channel.max_id else self._origin
        t = self.thread_of_message(msg_id)
        if t is None:
            return self._origin
        post_date = self.date_of(channel, t.post)
        if msg_id == t.copy_id:
            return post_date + 1
        k = msg_id - t.copy_id  # 1..comments
        return post_date + 2 + k * self._post_gap(t.post) // (t.comments + 1)

    def _discussion_message(self, spec: ChatSpec, msg_id: int, peer: Any) -> Any:
        date = datetime.fromtimestamp(self.date_of(spec, msg_id), UTC)
        if msg_id == 1:
            return _MessageService(
                id=1, peer_id=peer, date=date, action=types.MessageActionChannelCreate(title=spec.title)
            )
        t = self.thread_of_message(msg_id)
        if t is None:
            return _MessageEmpty(id=msg_id, peer_id=peer)
        channel = self.chats[CHANNEL_ID]
        source = types.PeerChannel(CHANNEL_ID)
        if msg_id == t.copy_id:
            post = self._generate(channel, t.post, source)
            patch = channel.edits.get(t.post, {})
            return _Message(
                id=msg_id,
                peer_id=peer,
                date=date,
                message=patch.get("message", post.message),
                entities=patch.get("entities", post.entities) or None,
                from_id=source,
                fwd_from=types.MessageFwdHeader(
                    date=post.date,
                    from_id=source,
                    channel_post=t.post,
                    post_author=post.post_author,
                    saved_from_peer=source,
                    saved_from_msg_id=t.post,
                ),
                media=post.media,
                grouped_id=post.grouped_id,
                replies=types.MessageReplies(
                    replies=t.comments,
                    replies_pts=msg_id + t.comments,
                    max_id=t.copy_id + t.comments if t.comments else None,
                ),
            )
        rng = self._rng("comment", msg_id)
        sender = spec.members[rng.randrange(len(spec.members))] if spec.members else SELF_ID
        k = msg_id - t.copy_id
        if k > 1 and rng.random() < 0.3:
            target = t.copy_id + rng.randrange(1, k)
            reply = types.MessageReplyHeader(reply_to_msg_id=target, reply_to_top_id=t.copy_id)
        else:
            reply = types.MessageReplyHeader(reply_to_msg_id=t.copy_id)
        text, entities = self._text(rng)
        msg = _Message(
            id=msg_id,
            peer_id=peer,
            date=date,
            message=text or rng.choice(_EMOJI),
            entities=entities or None,
            from_id=types.PeerUser(sender),
            reply_to=reply,
        )
        if rng.random() < 0.15:
            msg.reactions = self._reactions(rng)
        return msg

    def _text(self, rng: random.Random) -> tuple[str, list[Any]]:
        parts: list[str] = []
        entities: list[Any] = []
        pos = 0  # UTF-16 offset

        def add(chunk: str, entity=None) -> None:
            nonlocal pos
            if parts:
                parts.append(" ")
                pos += 1
            if entity is not None:
                entities.append(entity(pos, utf16_len(chunk)))
            parts.append(chunk)
            pos += utf16_len(chunk)

        n_words = rng.choice((0, 3, 6, 8, 10, 12, 16, 24, 40))
        words = rng.choices(_WORDS, k=n_words)
        rolls = [rng.random() for _ in range(n_words)]
        for i, (word, r) in enumerate(zip(words, rolls)):
            if r >= 0.15:
                if parts:
                    parts.append(" ")
                    pos += 1
                parts.append(word)
                pos += len(word)
            elif r < 0.03:
                add(rng.choice(_HASHTAGS), types.MessageEntityHashtag)
            elif r < 0.05:
                add(f"@member_{rng.randrange(20):02d}", types.MessageEntityMention)
            elif r < 0.065:
                add(f"https://example.org/{word}/{rng.randrange(1000)}", types.MessageEntityUrl)
            elif r < 0.08:
                add(word.upper(), types.MessageEntityBold)
            elif r < 0.085:
                url = f"https://example.com/{word}"
                add(word, lambda o, n, url=url: types.MessageEntityTextUrl(o, n, url))
            elif r < 0.09:
                uid = USER_BASE + rng.randrange(20)
                add(word.title(), lambda o, n, uid=uid: types.MessageEntityMentionName(o, n, uid))
            elif r < 0.1:
                emoji = rng.choice(_EMOJI)
                doc = 5_000_000_000 + rng.randrange(50)
                add(emoji, lambda o, n, doc=doc: types.MessageEntityCustomEmoji(o, n, doc))
            elif r < 0.14:
                add(rng.choice(_EMOJI))
            elif r < 0.145 and i == n_words - 1:
                add("print('hi')", lambda o, n: types.MessageEntityPre(o, n, "python"))
            else:
                add(word, types.MessageEntityItalic)
        return "".join(parts), entities

    def _forward(self, rng: random.Random, date: datetime) -> Any:
        fdate = date - timedelta(hours=rng.randrange(1, 72))
        r = rng.random()
        if r < 0.5:
            src = SOURCE_BASE + rng.randrange(5)
            return types.MessageFwdHeader(
                date=fdate,
                from_id=types.PeerChannel(src),
                channel_post=rng.randrange(1, 50),
                post_author="Source desk" if rng.random() < 0.3 else None,
            )
        if r < 0.85:
            return types.MessageFwdHeader(date=fdate, from_id=types.PeerUser(USER_BASE + rng.randrange(20)))
        return types.MessageFwdHeader(date=fdate, from_name="Hidden Sender")

    def _reactions(self, rng: random.Random) -> Any:
        results = []
        for emoji in rng.sample(_REACTIONS, rng.randrange(1, 4)):
            results.append(
                types.ReactionCount(reaction=types.ReactionEmoji(emoticon=emoji), count=rng.randrange(1, 300))
            )
        if rng.random() < 0.2:
            doc = 5_000_000_000 + rng.randrange(50)
            results.append(
                types.ReactionCount(
                    reaction=types.ReactionCustomEmoji(document_id=doc), count=rng.randrange(1, 30)
                )
            )
        if rng.random() < 0.05:
            results.append(types.ReactionCount(reaction=types.ReactionPaid(), count=rng.randrange(1, 10)))
        return types.MessageReactions(results=results)

    def _media(self, spec: ChatSpec, msg: Any, rng: random.Random, msg_id: int, date: datetime) -> None:
        # Albums: ids 10..12 of every block of 50 are three photos sent together.
        block = msg_id % 50
        if 10 <= block <= 12 and msg_id > 12:
            msg.grouped_id = spec.id * 1_000_000 + msg_id // 50
            msg.media = self._photo(spec, msg_id, date)
            return
        r = rng.random()
        if r < 0.12:
            msg.media = self._photo(spec, msg_id, date)
        elif r < 0.16 and self.videos:
            msg.media = self._video(spec, msg_id, date, rng)
        elif r < 0.20:
            msg.media = self._document(spec, msg_id, date, rng)
        elif r < 0.215:
            msg.media = self._voice(spec, msg_id, date, rng)
        elif r < 0.225:
            msg.media = self._sticker(spec, msg_id, date)
        elif r < 0.24:
            msg.media = self._webpage(spec, msg_id, date)
        elif r < 0.245:
            msg.media = types.MessageMediaGeo(
                geo=types.GeoPoint(long=rng.uniform(-180, 180), lat=rng.uniform(-85, 85), access_hash=msg_id)
            )
        elif r < 0.25:
            msg.media = self._poll(spec, msg_id, rng.randrange(0, 500))

    def _poll(self, spec: ChatSpec, msg_id: int, total: int) -> Any:
        # Which results Telegram sends is drawn from its own stream: the message's draws stay as they were.
        sub = self._rng("poll", spec.id, msg_id)
        kind = sub.random()
        quiz = 0.5 <= kind < 0.7
        answers = ("yes", "no", "maybe")
        poll = types.Poll(
            id=msg_id,
            question=types.TextWithEntities(text="Which option?", entities=[]),
            answers=[
                types.PollAnswer(text=types.TextWithEntities(text=t, entities=[]), option=bytes([i]))
                for i, t in enumerate(answers)
            ],
            hash=msg_id,
            quiz=quiz or None,
            closed=(sub.random() < 0.3) or None,
        )
        if kind < 0.7:  # full results (a channel shows them to every subscriber)
            cuts = sorted(sub.randrange(0, total + 1) for _ in range(len(answers) - 1))
            counts = [b - a for a, b in zip([0, *cuts], [*cuts, total])]
            correct = sub.randrange(len(answers)) if quiz else -1
            results = types.PollResults(
                results=[
                    types.PollAnswerVoters(
                        option=bytes([i]), voters=n, recent_voters=[], correct=(i == correct) or None
                    )
                    for i, n in enumerate(counts)
                ],
                total_voters=total,
                solution="Because the data says so." if quiz else None,
                solution_entities=[] if quiz else None,
            )
        elif kind < 0.9:  # only the number of voters (results hidden until one votes)
            results = types.PollResults(total_voters=total)
        else:  # nothing yet
            results = types.PollResults()
        return types.MessageMediaPoll(poll=poll, results=results)

    def _webpage(self, spec: ChatSpec, msg_id: int, date: datetime) -> Any:
        url = f"https://example.org/story/{msg_id}"
        sub = self._rng("webpage", spec.id, msg_id)
        kind = sub.random()
        if kind < 0.2:  # no preview (the site gave none)
            return types.MessageMediaWebPage(webpage=types.WebPageEmpty(id=msg_id, url=url))
        if kind < 0.3:  # Telegram still fetching it
            return types.MessageMediaWebPage(
                webpage=types.WebPagePending(id=msg_id, date=date + timedelta(seconds=5), url=url)
            )
        words = [sub.choice(_WORDS[140:]) for _ in range(3)]
        site = sub.choice(("Example News", "Data Desk", "Research Weekly"))
        page = types.WebPage(
            id=msg_id,
            url=url,
            display_url=url.removeprefix("https://"),
            hash=sub.randrange(1, 2**31),
            type="article",
            site_name=site,
            title=" ".join(words).capitalize(),
            description=f"{site} on {' and '.join(words[:2])}: what the numbers show.",
        )
        if sub.random() < 0.5:
            page.photo = self._photo(spec, msg_id, date, salt=6).photo
        return types.MessageMediaWebPage(webpage=page)

    def _file_id(self, spec: ChatSpec, msg_id: int, salt: int) -> int:
        return (spec.id * 10_000_000 + msg_id) * 10 + salt

    def _photo(self, spec: ChatSpec, msg_id: int, date: datetime, *, salt: int = 1) -> Any:
        fid = self._file_id(spec, msg_id, salt)
        pool = self._pool("photo")
        index = (fid // 10) % len(pool)
        sizes = pool[index]
        largest = PHOTO_SIZES[-1][0]
        ref = self._register(fid, lambda: sizes[largest], HOME_DC, "photo", thumbs=dict(sizes))
        return types.MessageMediaPhoto(
            photo=types.Photo(
                id=fid,
                access_hash=self.access_hash(fid),
                file_reference=ref,
                date=date,
                sizes=[
                    types.PhotoStrippedSize(type="i", bytes=self._stripped("photo", index)),
                    *(types.PhotoSize(type=t, w=w, h=h, size=len(sizes[t])) for t, w, h in PHOTO_SIZES),
                ],
                dc_id=HOME_DC,
            )
        )

    def _video(self, spec: ChatSpec, msg_id: int, date: datetime, rng: random.Random) -> Any:
        fid = self._file_id(spec, msg_id, 2)
        pool = self._pool("mp4")
        idx = (fid // 10) % len(pool)
        data = pool[idx]
        # Every seventh video lives on another data centre; half of those say so in the document
        # (given the Document, Telethon's download_file borrows an exported sender at once), the other
        # half claim the home DC (FILE_MIGRATE_4).  download_media passes Telethon only the file
        # location, so it always asks the home DC first and gets FILE_MIGRATE_4.
        dc = OTHER_DC if (fid // 10) % 7 == 0 else HOME_DC
        declared_dc = HOME_DC if (fid // 10) % 14 == 0 else dc
        thumb = self._pool("video_thumb")[idx]
        ref = self._register(fid, lambda: data, dc, "document", thumbs={"m": thumb})
        w, h, dur = _VIDEO_SHAPES[idx]
        return types.MessageMediaDocument(
            document=types.Document(
                id=fid,
                access_hash=self.access_hash(fid),
                file_reference=ref,
                date=date,
                mime_type="video/mp4",
                size=len(data),
                dc_id=declared_dc,
                thumbs=[
                    types.PhotoStrippedSize(type="i", bytes=self._stripped("video", idx)),
                    types.PhotoSize(type="m", w=w, h=h, size=len(thumb)),
                ],
                attributes=[
                    types.DocumentAttributeVideo(duration=dur, w=w, h=h, supports_streaming=True),
                    types.DocumentAttributeFilename(file_name=f"clip_{msg_id}.mp4"),
                ],
            ),
            video=True,
        )

    def _document(self, spec: ChatSpec, msg_id: int, date: datetime, rng: random.Random) -> Any:
        fid = self._file_id(spec, msg_id, 3)
        size = rng.randrange(200, 20_000)
        if self.hostile_names and rng.random() < 0.15:
            name = HOSTILE_NAMES[rng.randrange(len(HOSTILE_NAMES))]
        else:
            name = _DOC_NAMES[rng.randrange(len(_DOC_NAMES))]
        mime = {
            "pdf": "application/pdf",
            "csv": "text/csv",
            "txt": "text/plain",
            "zip": "application/zip",
            "jpg": "image/jpeg",
        }.get(name.rsplit(".", 1)[-1], "application/octet-stream")
        ref = self._register(fid, lambda: random.Random(fid).randbytes(size), HOME_DC, "document")
        return types.MessageMediaDocument(
            document=types.Document(
                id=fid,
                access_hash=self.access_hash(fid),
                file_reference=ref,
                date=date,
                mime_type=mime,
                size=size,
                dc_id=HOME_DC,
                attributes=[types.DocumentAttributeFilename(file_name=name)],
            )
        )

    def _voice(self, spec: ChatSpec, msg_id: int, date: datetime, rng: random.Random) -> Any:
        fid = self._file_id(spec, msg_id, 4)
        size = rng.randrange(1_000, 8_000)
        ref = self._register(fid, lambda: random.Random(fid).randbytes(size), HOME_DC, "document")
        return types.MessageMediaDocument(
            document=types.Document(
                id=fid,
                access_hash=self.access_hash(fid),
                file_reference=ref,
                date=date,
                mime_type="audio/ogg",
                size=size,
                dc_id=HOME_DC,
                attributes=[types.DocumentAttributeAudio(duration=rng.randrange(1, 60), voice=True)],
            ),
            voice=True,
        )

    def _sticker(self, spec: ChatSpec, msg_id: int, date: datetime) -> Any:
        fid = self._file_id(spec, msg_id, 5)
        sub = self._rng("sticker", spec.id, msg_id)
        kind = sub.random()
        if kind >= 0.5:  # half of them animated (Lottie) or video (WebM) stickers, as on Telegram today
            animated = kind < 0.8
            data = self._pool("tgs" if animated else "webm")[sub.randrange(2 if animated else 1)]
            ref = self._register(fid, lambda: data, HOME_DC, "document")
            stickerset = types.InputStickerSetID(
                id=7_700_000 + (fid % 3), access_hash=self.access_hash(fid % 3)
            )
            sticker = types.DocumentAttributeSticker(alt=sub.choice(_EMOJI), stickerset=stickerset)
            attributes: list[Any] = (
                [types.DocumentAttributeImageSize(w=512, h=512), sticker]
                if animated
                else [types.DocumentAttributeVideo(duration=0.5, w=512, h=512), sticker]
            )
            attributes.append(
                types.DocumentAttributeFilename(
                    file_name="AnimatedSticker.tgs" if animated else "sticker.webm"
                )
            )
            return types.MessageMediaDocument(
                document=types.Document(
                    id=fid,
                    access_hash=self.access_hash(fid),
                    file_reference=ref,
                    date=date,
                    mime_type="application/x-tgsticker" if animated else "video/webm",
                    size=len(data),
                    dc_id=HOME_DC,
                    attributes=attributes,
                )
            )
        ref = self._register(fid, lambda: random.Random(fid).randbytes(900), HOME_DC, "document")
        return types.MessageMediaDocument(
            document=types.Document(
                id=fid,
                access_hash=self.access_hash(fid),
                file_reference=ref,
                date=date,
                mime_type="image/webp",
                size=900,
                dc_id=HOME_DC,
                attributes=[
                    types.DocumentAttributeSticker(alt="🙂", stickerset=types.InputStickerSetEmpty()),
                    types.DocumentAttributeFilename(file_name="sticker.webp"),
                ],
            )
        )

    # ---------------------------------------------------------------------------------------------

    def peers_of(self, messages: list[Any]) -> tuple[list[Any], list[Any]]:
        """The users and chats a page references (Telegram sends them alongside the messages)."""
        users: dict[int, Any] = {}
        chats: dict[int, Any] = {}
        for m in messages:
            for peer in (
                getattr(m, "peer_id", None),
                getattr(m, "from_id", None),
                getattr(getattr(m, "fwd_from", None), "from_id", None),
            ):
                if isinstance(peer, types.PeerUser) and peer.user_id in self.users:
                    users[peer.user_id] = self.users[peer.user_id]
                elif isinstance(peer, types.PeerChannel) and peer.channel_id in self.channel_objs:
                    chats[peer.channel_id] = self.channel_objs[peer.channel_id]
            bot = getattr(m, "via_bot_id", None)
            if bot in self.users:
                users[bot] = self.users[bot]
        return list(users.values()), list(chats.values())

    def history(
        self,
        chat_id: int,
        *,
        offset_id: int = 0,
        offset_date: int | None = None,
        add_offset: int = 0,
        limit: int = 100,
        max_id: int = 0,
        min_id: int = 0,
    ) -> tuple[list[int], int]:
        """Ids (newest first) that messages.getHistory returns for these arguments, and the total count."""
        spec = self.spec(chat_id)
        return page_ids(
            self.ids(chat_id),
            lambda i: self.date_of(spec, i),
            offset_id=offset_id,
            offset_date=offset_date,
            add_offset=add_offset,
            limit=limit,
            max_id=max_id,
            min_id=min_id,
        )

    # ---------------------------------------------------------------------------------------------
    # an account's mailbox: Saved Messages, private chats, the basic group (ids numbered per account)

    def mailbox(self, self_id: int) -> _Mailbox:
        box = self._mailboxes.get(self_id)
        if box is None:
            box = self._mailboxes[self_id] = self._make_mailbox(self_id)
        return box

    def _make_mailbox(self, self_id: int) -> _Mailbox:
        rng = self._rng("mailbox", self_id)
        convs: list[tuple[str, int]] = [("user", self_id)]
        sizes = [24]
        for uid in self.group_user_ids[:PRIVATE_CHAT_USERS]:
            convs.append(("user", uid))
            sizes.append(rng.randrange(6, 30))
        convs.append(("user", BOT_ID))
        sizes.append(8)
        if self.group_user_ids:
            convs.append(("chat", BASIC_GROUP_ID))
            sizes.append(40)
        span = self.days * 86_400
        stamps = sorted(
            (self._origin - span + rng.randrange(span), ci, j) for ci, n in enumerate(sizes) for j in range(n)
        )
        peer_of = array("i")
        dates = array("q")
        by_peer: dict[tuple[str, int], array] = {c: array("q") for c in convs}
        last = 0
        for gid, (date, ci, _) in enumerate(stamps, start=1):
            last = max(date, last + 1)  # ids ascend with dates
            peer_of.append(ci)
            dates.append(last)
            by_peer[convs[ci]].append(gid)
        return _Mailbox(self_id, convs, peer_of, dates, by_peer)

    def mailbox_history(self, self_id: int, peer: tuple[str, int], **kw: Any) -> tuple[list[int], int]:
        box = self.mailbox(self_id)
        ids = box.by_peer.get(peer, array("q"))
        return page_ids(ids, lambda i: box.dates[i - 1], **kw)

    def mailbox_message(self, self_id: int, msg_id: int) -> Any:
        """Message ``msg_id`` of the account's own id space (MessageEmpty if there is none)."""
        box = self.mailbox(self_id)
        if not 1 <= msg_id <= len(box.dates):
            return _MessageEmpty(id=msg_id)
        kind, pid = box.peers[box.peer_of[msg_id - 1]]
        date = datetime.fromtimestamp(box.dates[msg_id - 1], UTC)
        rng = self._rng("mail", self_id, msg_id)
        me = types.PeerUser(self_id)
        if kind == "chat":
            members = (self_id, *self.group_user_ids[:5])
            sender = members[rng.randrange(len(members))]
            peer: Any = types.PeerChat(pid)
            if msg_id == box.by_peer[(kind, pid)][0]:
                return _MessageService(
                    id=msg_id,
                    peer_id=peer,
                    date=date,
                    from_id=types.PeerUser(members[1]),
                    action=types.MessageActionChatCreate(title=self.basic_group.title, users=list(members)),
                    out=sender == self_id or None,
                )
            text, entities = self._text(rng)
            return _Message(
                id=msg_id,
                peer_id=peer,
                date=date,
                message=text or "👍",
                entities=entities or None,
                from_id=types.PeerUser(sender),
                out=sender == self_id or None,
            )
        text, entities = self._text(rng)
        if pid == self_id:  # Saved Messages: notes, and posts saved from the demo channel
            msg = _Message(
                id=msg_id,
                peer_id=me,
                date=date,
                message=text,
                entities=entities or None,
                out=True,
                from_id=me,
                saved_peer_id=me,
            )
            channel = self.chats[CHANNEL_ID]
            if rng.random() < 0.5 and channel.messages > 1:
                post = rng.randrange(2, channel.messages + 1)
                src = types.PeerChannel(CHANNEL_ID)
                msg.fwd_from = types.MessageFwdHeader(
                    date=datetime.fromtimestamp(min(self.date_of(channel, post), box.dates[msg_id - 1]), UTC),
                    from_id=src,
                    channel_post=post,
                    saved_from_peer=src,
                    saved_from_msg_id=post,
                )
                msg.saved_peer_id = src
            return msg
        out = rng.random() < 0.45
        return _Message(
            id=msg_id,
            peer_id=types.PeerUser(pid),
            date=date,
            message=text or rng.choice(_EMOJI),
            entities=entities or None,
            out=out or None,
            from_id=me if out else None,  # incoming private messages carry no from_id (layer 119+)
        )

    # ---------------------------------------------------------------------------------------------
    # the dialog list

    def dialogs(self, self_id: int) -> list[DialogRow]:
        """The account's dialogs, newest top message first (pinned order is applied by the server)."""
        rows: list[DialogRow] = []
        rank = 0
        for cid, spec in self.chats.items():
            rank += 1
            ids = self.ids(cid)
            top = ids[-1] if ids else 0
            date = self.date_of(spec, top) if top else int(self.channel_objs[cid].date.timestamp())
            sub = self._rng("dialog", self_id, cid)
            unread = 0 if spec.kind == "broadcast" and sub.random() < 0.3 else sub.randrange(0, 40)
            unread = min(unread, len(ids))
            read = ids[-1 - unread] if unread < len(ids) else 0
            if not unread:
                read = top
            rows.append(
                DialogRow(
                    types.PeerChannel(cid),
                    top,
                    date,
                    rank,
                    unread,
                    read,
                    top,
                    pinned=cid == CHANNEL_ID,
                    folder_id=1 if cid in self.source_ids[3:] else None,
                    channel=True,
                )
            )
        box = self.mailbox(self_id)
        for kind, pid in box.peers:
            rank += 1
            ids = box.by_peer[(kind, pid)]
            if not ids:
                continue
            top = ids[-1]
            sub = self._rng("dialog", self_id, kind, pid)
            unread = 0 if pid == self_id else sub.randrange(0, 4)
            peer = types.PeerChat(pid) if kind == "chat" else types.PeerUser(pid)
            rows.append(
                DialogRow(
                    peer,
                    top,
                    box.dates[top - 1],
                    rank,
                    unread,
                    ids[-1 - unread] if unread < len(ids) else 0,
                    top,
                    pinned=pid == self_id,
                    folder_id=1 if pid == BOT_ID else None,
                )
            )
        rows.sort(key=lambda r: (r.date, r.rank), reverse=True)
        return rows


_VIDEO_SHAPES = VIDEO_SHAPES


def page_ids(
    ids: Any,
    date_of: Any,
    *,
    offset_id: int = 0,
    offset_date: int | None = None,
    add_offset: int = 0,
    limit: int = 100,
    max_id: int = 0,
    min_id: int = 0,
) -> tuple[list[int], int]:
    """messages.getHistory's paging over ascending ``ids``: (ids newest first, total count)."""
    n = len(ids)
    # position (in newest-first order) of the first message older than the offset
    if offset_id:
        pos = n - bisect.bisect_left(ids, offset_id)
    elif offset_date:
        lo, hi = 0, n  # first ascending index whose date >= offset_date
        while lo < hi:
            mid = (lo + hi) // 2
            if date_of(ids[mid]) < offset_date:
                lo = mid + 1
            else:
                hi = mid
        pos = n - lo
    else:
        pos = 0
    start = pos + add_offset
    end = start + max(limit, 0)
    start = max(start, 0)
    end = min(end, n)
    out = [ids[n - 1 - i] for i in range(start, end)] if end > start else []
    if max_id:
        out = [i for i in out if i < max_id]
    if min_id:
        out = [i for i in out if i > min_id]
    return out, n


def _make_pool(kind: str, seed: int) -> list[Any]:
    """A few real media files made with PyAV (imported lazily: it is heavy)."""
    if kind == "photo":  # every size of six pictures: {"s": ..., "m": ..., "x": ...}
        return [{t: encode_jpeg(seed, i, w, h, scale=160 / w) for t, w, h in PHOTO_SIZES} for i in range(6)]
    if kind == "avatar":
        return [
            {t: encode_jpeg(seed, 10 + i, side, side, scale=160 / side) for t, side in AVATAR_SIZES}
            for i in range(4)
        ]
    if kind == "video_thumb":  # the first frame of each clip, as a JPEG of the clip's size
        return [encode_jpeg(seed, i, w, h) for i, (w, h, _) in enumerate(_VIDEO_SHAPES)]
    if kind == "mp4":
        clips = [
            encode_mp4(seed, i, w, h, dur, audio=(i == 0)) for i, (w, h, dur) in enumerate(_VIDEO_SHAPES)
        ]
        # The last one is a broken upload: a truncated file, as Telegram sometimes serves.
        clips[-1] = clips[-1][: len(clips[-1]) // 3]
        return clips
    if kind == "tgs":
        return [lottie_tgs(seed, i) for i in range(2)]
    if kind == "webm":
        return [encode_webm(seed, 0)]
    raise ValueError(kind)
