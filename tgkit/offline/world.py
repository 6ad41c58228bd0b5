"""A seeded, deterministic Telegram world: users, channels, a group, messages and media files.

Messages are generated lazily from ``(seed, chat, id)``: a world of a million messages costs nothing
until a page is asked for, and the same seed gives the same world byte for byte.  The world is mutable
in the ways an incremental export cares about: new messages, edits, deletions, expired file references.

Objects are Telethon's own TL types (the un-patched constructors, which serialise identically and are
cheaper to build); the server turns them into bytes with real TL serialisation.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import random
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from telethon.tl import types

__all__ = ["ChatSpec", "World", "raw_type"]


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
    deleted: set[int] = field(default_factory=set)
    edits: dict[int, dict[str, Any]] = field(default_factory=dict)
    _ids: array | None = None
    _appended_dates: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class FileBlob:
    """A downloadable file: its bytes, its data centre and its current file-reference epoch."""

    data: bytes
    dc_id: int
    kind: str  # "photo" | "document"
    epoch: int = 0


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
        self.seed = seed
        self.media = media
        self.videos = videos and media
        self.deleted_rate = deleted_rate
        self.hostile_names = hostile_names
        self.now = int(END_DATE.timestamp())
        self.users: dict[int, Any] = {}
        self.chats: dict[int, ChatSpec] = {}
        self.channel_objs: dict[int, Any] = {}
        self.usernames: dict[str, tuple[str, int]] = {}  # lower username -> (kind, id)
        self._files: dict[int, FileBlob] = {}
        self._pools: dict[str, list[bytes]] = {}
        self.cache_bytes = cache_bytes
        self._bytes: dict[tuple[int, int], bytes] = {}

        self._add_user(SELF_ID, "Ada", "Researcher", "ada_research", is_self=True)
        self._add_user(BOT_ID, "Demo", "Bot", "demo_bot", bot=True)
        firsts = ("Alex", "Maria", "Ivan", "Li", "Fatima", "Omar", "Sofia", "Yuki", "Noah", "Amara")
        for i in range(group_users):
            self._add_user(USER_BASE + i, firsts[i % len(firsts)], f"Member{i}", f"member_{i:02d}")
        self.group_user_ids = tuple(USER_BASE + i for i in range(group_users))

        self._add_channel(
            ChatSpec(CHANNEL_ID, "broadcast", "tgkit demo channel", "tgkit_demo", channel_messages, days)
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

    # ---------------------------------------------------------------------------------------------
    # peers

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
            status=types.UserStatusRecently(),
        )
        self.usernames[username.lower()] = ("user", uid)

    def _add_channel(self, spec: ChatSpec) -> None:
        spec.max_id = spec.messages
        self.chats[spec.id] = spec
        self.channel_objs[spec.id] = types.Channel(
            id=spec.id,
            title=spec.title,
            photo=types.ChatPhotoEmpty(),
            date=END_DATE - timedelta(days=spec.days + 1),
            broadcast=spec.kind == "broadcast",
            megagroup=spec.kind == "megagroup",
            signatures=spec.kind == "broadcast",
            access_hash=_access_hash(self.seed, spec.id),
            username=spec.username,
            participants_count=len(spec.members) or 1000 + spec.id % 997,
        )
        if spec.username:
            self.usernames[spec.username.lower()] = ("channel", spec.id)

    @property
    def self_user(self) -> Any:
        return self.users[SELF_ID]

    def access_hash(self, peer_id: int) -> int:
        return _access_hash(self.seed, peer_id)

    def resolve_username(self, username: str) -> tuple[str, int] | None:
        return self.usernames.get(username.lower())

    # ---------------------------------------------------------------------------------------------
    # message ids and dates

    def _exists(self, spec: ChatSpec, msg_id: int) -> bool:
        if msg_id < 1 or msg_id > spec.max_id or msg_id in spec.deleted:
            return False
        if msg_id == 1 or msg_id > spec.messages:
            return True
        rng = random.Random(self._key(spec.id, msg_id, 1))
        return rng.random() >= self.deleted_rate

    def ids(self, chat_id: int) -> array:
        """Ascending ids of the messages that exist now (cached until the chat changes)."""
        spec = self.chats[chat_id]
        if spec._ids is None:
            spec._ids = array("q", (i for i in range(1, spec.max_id + 1) if self._exists(spec, i)))
        return spec._ids

    def date_of(self, spec: ChatSpec, msg_id: int) -> int:
        if msg_id > spec.messages:
            return spec._appended_dates[msg_id]
        span = spec.days * 86_400
        start = self.now - span
        return start + (msg_id - 1) * span // max(spec.messages, 1)

    def _key(self, chat_id: int, msg_id: int, salt: int = 0) -> int:
        return ((self.seed * 1_000_003 + chat_id) * 10_000_019 + msg_id) * 7 + salt

    # ---------------------------------------------------------------------------------------------
    # mutations (what incremental exports and refresh runs must notice)

    def add_messages(self, chat_id: int, n: int, *, seconds_apart: int = 60) -> list[int]:
        """Append ``n`` new messages (dated after everything else); returns their ids."""
        spec = self.chats[chat_id]
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
        self._files[file_id].epoch += 1
        self._bytes.pop((file_id // 100_000_000, (file_id // 10) % 10_000_000), None)

    # ---------------------------------------------------------------------------------------------
    # files

    def file_reference(self, file_id: int) -> bytes:
        blob = self._files[file_id]
        return b"ref" + file_id.to_bytes(8, "little", signed=True) + blob.epoch.to_bytes(4, "little")

    def file(self, file_id: int) -> FileBlob | None:
        return self._files.get(file_id)

    def _pool(self, kind: str) -> list[bytes]:
        pool = self._pools.get(kind)
        if pool is None:
            pool = _make_pool(kind, self.seed)
            self._pools[kind] = pool
        return pool

    def _register(self, file_id: int, data_factory, dc_id: int, kind: str) -> bytes:
        blob = self._files.get(file_id)
        if blob is None:
            blob = FileBlob(data_factory(), dc_id, kind)
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
        spec = self.chats[chat_id]
        peer = types.PeerChannel(chat_id)
        if not self._exists(spec, msg_id):
            return _MessageEmpty(id=msg_id, peer_id=peer)
        msg = self._generate(spec, msg_id, peer)
        patch = spec.edits.get(msg_id)
        if patch:
            for k, v in patch.items():
                setattr(msg, k, datetime.fromtimestamp(v, UTC) if k == "edit_date" else v)
        return msg

    def _generate(self, spec: ChatSpec, msg_id: int, peer: Any) -> Any:
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
        if self.media:
            self._media(spec, msg, rng, msg_id, date)
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
            msg.media = types.MessageMediaWebPage(
                webpage=types.WebPageEmpty(id=msg_id, url=f"https://example.org/story/{msg_id}")
            )
        elif r < 0.245:
            msg.media = types.MessageMediaGeo(
                geo=types.GeoPoint(long=rng.uniform(-180, 180), lat=rng.uniform(-85, 85), access_hash=msg_id)
            )
        elif r < 0.25:
            msg.media = types.MessageMediaPoll(
                poll=types.Poll(
                    id=msg_id,
                    question=types.TextWithEntities(text="Which option?", entities=[]),
                    answers=[
                        types.PollAnswer(text=types.TextWithEntities(text=t, entities=[]), option=bytes([i]))
                        for i, t in enumerate(("yes", "no", "maybe"))
                    ],
                    hash=msg_id,
                ),
                results=types.PollResults(total_voters=rng.randrange(0, 500)),
            )

    def _file_id(self, spec: ChatSpec, msg_id: int, salt: int) -> int:
        return (spec.id * 10_000_000 + msg_id) * 10 + salt

    def _photo(self, spec: ChatSpec, msg_id: int, date: datetime) -> Any:
        fid = self._file_id(spec, msg_id, 1)
        pool = self._pool("jpeg")
        data = pool[(fid // 10) % len(pool)]
        ref = self._register(fid, lambda: data, HOME_DC, "photo")
        return types.MessageMediaPhoto(
            photo=types.Photo(
                id=fid,
                access_hash=self.access_hash(fid),
                file_reference=ref,
                date=date,
                sizes=[
                    types.PhotoSize(type="m", w=160, h=120, size=len(data)),
                    types.PhotoSize(type="x", w=160, h=120, size=len(data)),
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
        ref = self._register(fid, lambda: data, dc, "document")
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
        ids = self.ids(chat_id)
        n = len(ids)
        # position (in newest-first order) of the first message older than the offset
        if offset_id:
            pos = n - bisect.bisect_left(ids, offset_id)
        elif offset_date:
            spec = self.chats[chat_id]
            lo, hi = 0, n  # first ascending index whose date >= offset_date
            while lo < hi:
                mid = (lo + hi) // 2
                if self.date_of(spec, ids[mid]) < offset_date:
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


_VIDEO_SHAPES = ((160, 120, 1.0), (128, 96, 0.5), (96, 160, 1.0), (160, 120, 0.4))


def _make_pool(kind: str, seed: int) -> list[bytes]:
    """A few real media files made with PyAV (imported lazily: it is heavy)."""
    if kind == "jpeg":
        return [_encode_jpeg(seed, i) for i in range(6)]
    if kind == "mp4":
        clips = [
            _encode_mp4(seed, i, w, h, dur, audio=(i == 0)) for i, (w, h, dur) in enumerate(_VIDEO_SHAPES)
        ]
        # The last one is a broken upload: a truncated file, as Telegram sometimes serves.
        clips[-1] = clips[-1][: len(clips[-1]) // 3]
        return clips
    raise ValueError(kind)


def _frame_array(seed: int, i: int, w: int, h: int, t: int):
    import numpy as np

    y, x = np.mgrid[0:h, 0:w]
    r = ((x + t * 4 + seed * 13 + i * 40) % 256).astype(np.uint8)
    g = ((y * 2 + t * 3 + i * 70) % 256).astype(np.uint8)
    b = (((x + y) // 2 + seed * 7) % 256).astype(np.uint8)
    return np.dstack([r, g, b])


def _encode_jpeg(seed: int, i: int) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="image2pipe") as out:
        stream = out.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuvj420p"
        frame = av.VideoFrame.from_ndarray(_frame_array(seed, i, 160, 120, 0), format="rgb24")
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def _encode_mp4(seed: int, i: int, w: int, h: int, seconds: float, *, audio: bool) -> bytes:
    import av
    import numpy as np

    fps = 25
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        # one thread: x264's output then does not depend on the machine's core count (same seed, same bytes)
        stream = out.add_stream(
            "libx264", rate=fps, options={"preset": "ultrafast", "crf": "30", "threads": "1"}
        )
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        astream = out.add_stream("aac", rate=16_000) if audio else None
        n = max(int(seconds * fps), 1)
        for t in range(n):
            frame = av.VideoFrame.from_ndarray(_frame_array(seed, i, w, h, t), format="rgb24")
            frame.pts = t
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if astream is not None:
            samples = int(16_000 * seconds)
            tone = (np.sin(np.arange(samples) * 2 * np.pi * 440 / 16_000) * 0.2).astype(np.float32)
            pos = 0
            while pos < samples:
                chunk = tone[pos : pos + 1024]
                af = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="fltp", layout="mono")
                af.sample_rate = 16_000
                af.pts = pos
                for packet in astream.encode(af):
                    out.mux(packet)
                pos += 1024
            for packet in astream.encode():
                out.mux(packet)
    return buf.getvalue()
