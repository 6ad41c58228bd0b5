"""The ONLY module that reads Telethon message types: Telethon objects -> rows, records, column batches.

A row is a tuple in ``MESSAGE_COLUMNS`` order with dates as int epoch seconds and the two list columns
as lists of plain tuples.  The bulk path appends rows straight into a :class:`ColumnBatch`; the record
path wraps the same rows in :class:`ExportedMessage` for small interactive calls.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import repeat
from typing import Any

from telethon.tl import types

from .records import ColumnBatch, Entity, ExportedMessage, Reaction, gc_paused

__all__ = [
    "append_messages",
    "chat_fields",
    "dialog_rows",
    "entity_type_name",
    "media_kind",
    "message_row",
    "peer_kind_id",
    "peer_rows",
    "row_to_record",
    "to_records",
]

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_ENTITY_NAMES: dict[type, str] = {}
_ACTION_NAMES: dict[type, str] = {}

# Telethon decodes into its patched classes (ABCs: isinstance on them is slow), so the hot path compares
# exact types against both the patched and the generated classes.
_MessageService = types.MessageService
_MessageEmpty = types.MessageEmpty


def _both(cls: type) -> frozenset[type]:
    return frozenset(
        k for k in cls.__mro__ if k.__name__ == cls.__name__ and k.__module__.startswith("telethon")
    )


_EMPTY = _both(types.MessageEmpty)
_SERVICE = _both(types.MessageService)
_PLAIN = _both(types.Message)


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def entity_type_name(cls: type) -> str:
    """``MessageEntityTextUrl`` -> ``"text_url"`` (cached per class)."""
    name = _ENTITY_NAMES.get(cls)
    if name is None:
        name = _snake(cls.__name__.removeprefix("MessageEntity"))
        _ENTITY_NAMES[cls] = name
    return name


def action_name(cls: type) -> str:
    """``MessageActionPinMessage`` -> ``"pin_message"`` (cached per class)."""
    name = _ACTION_NAMES.get(cls)
    if name is None:
        name = _snake(cls.__name__.removeprefix("MessageAction"))
        _ACTION_NAMES[cls] = name
    return name


def peer_kind_id(peer: Any) -> tuple[str | None, int | None]:
    """``PeerUser(5)`` -> ``("user", 5)``; bare positive ids, as Telegram sends them."""
    if peer is None:
        return None, None
    cls = type(peer)
    if cls is types.PeerUser:
        return "user", peer.user_id
    if cls is types.PeerChannel:
        return "channel", peer.channel_id
    if cls is types.PeerChat:
        return "chat", peer.chat_id
    return None, None


def _dt(value: Any) -> int | None:
    return None if value is None else int(value.timestamp())


# Per entity class: (type name, has url, has user_id, has document_id, has language).  getattr with a
# default on a missing attribute raises and catches AttributeError inside: ~10x a plain attribute read.
_ENTITY_SPECS: dict[type, tuple[str, bool, bool, bool, bool]] = {}


def _entity_spec(entity: Any) -> tuple[str, bool, bool, bool, bool]:
    cls = type(entity)
    spec = (entity_type_name(cls), hasattr(entity, "url"), hasattr(entity, "user_id"),
            hasattr(entity, "document_id"), hasattr(entity, "language"))  # fmt: skip
    _ENTITY_SPECS[cls] = spec
    return spec


def _entities(items: list[Any] | None) -> list[tuple] | None:
    if items is None:
        return None
    out = []
    specs = _ENTITY_SPECS
    for e in items:
        spec = specs.get(type(e)) or _entity_spec(e)
        out.append(
            (
                spec[0],
                e.offset,
                e.length,
                e.url if spec[1] else None,
                e.user_id if spec[2] else None,
                e.document_id if spec[3] else None,
                e.language if spec[4] else None,
            )
        )
    return out


def _reactions(reactions: Any) -> tuple[list[tuple] | None, int | None]:
    if reactions is None:
        return None, None
    out = []
    total = 0
    for rc in reactions.results or ():
        r = rc.reaction
        count = rc.count
        total += count
        cls = type(r)
        if cls is _ReactionEmoji:
            out.append((r.emoticon, None, count))
        elif cls is _ReactionCustomEmoji:
            out.append((None, r.document_id, count))
        elif cls is _ReactionPaid:
            out.append(("paid", None, count))
        else:
            out.append((cls.__name__, None, count))
    return out, total


_ReactionEmoji = types.ReactionEmoji
_ReactionCustomEmoji = types.ReactionCustomEmoji
_ReactionPaid = types.ReactionPaid

_DOC_KIND_ATTRS = (
    (types.DocumentAttributeSticker, "sticker"),
    (types.DocumentAttributeAnimated, "animation"),
)


def media_kind(media: Any) -> str | None:
    """The dataset's ``media_type`` for a Telethon media object."""
    return _media(media)[0]


def _media(media: Any) -> tuple:
    """(type, mime, size, duration, width, height, file_name, file_id)."""
    if media is None or isinstance(media, types.MessageMediaEmpty):
        return (None,) * 8
    if isinstance(media, types.MessageMediaPhoto):
        photo = media.photo
        if not isinstance(photo, types.Photo):
            return ("photo", None, None, None, None, None, None, None)
        best = None
        for size in photo.sizes:
            if isinstance(size, types.PhotoSize | types.PhotoSizeProgressive) and (
                best is None or size.w * size.h >= best.w * best.h
            ):
                best = size
        nbytes = None
        w = h = None
        if best is not None:
            w, h = best.w, best.h
            nbytes = best.size if isinstance(best, types.PhotoSize) else max(best.sizes)
        return ("photo", "image/jpeg", nbytes, None, w, h, None, photo.id)
    if isinstance(media, types.MessageMediaDocument):
        doc = media.document
        if not isinstance(doc, types.Document):
            return ("document", None, None, None, None, None, None, None)
        kind = "document"
        duration = w = h = name = None
        for attr in doc.attributes:
            cls = type(attr)
            if cls is types.DocumentAttributeFilename:
                name = attr.file_name
            elif cls is types.DocumentAttributeVideo:
                duration, w, h = float(attr.duration), attr.w, attr.h
                if kind == "document":
                    kind = "video_note" if attr.round_message else "video"
            elif cls is types.DocumentAttributeAudio:
                duration = float(attr.duration)
                if kind == "document":
                    kind = "voice" if attr.voice else "audio"
            elif cls is types.DocumentAttributeImageSize:
                w, h = attr.w, attr.h
            else:
                for attr_cls, attr_kind in _DOC_KIND_ATTRS:
                    if cls is attr_cls:
                        kind = attr_kind
        return (kind, doc.mime_type, doc.size, duration, w, h, name, doc.id)
    if isinstance(media, types.MessageMediaWebPage):
        return ("webpage",) + (None,) * 7
    if isinstance(media, types.MessageMediaPoll):
        return ("poll",) + (None,) * 7
    if isinstance(media, types.MessageMediaGeo | types.MessageMediaGeoLive | types.MessageMediaVenue):
        return ("geo",) + (None,) * 7
    if isinstance(media, types.MessageMediaContact):
        return ("contact",) + (None,) * 7
    return ("other",) + (None,) * 7


def message_row(m: Any, chat_id: int) -> tuple | None:
    """One message as a row tuple (``MESSAGE_COLUMNS`` order), or None for ``MessageEmpty``."""
    cls = type(m)
    if cls in _EMPTY or (cls not in _PLAIN and cls not in _SERVICE and isinstance(m, _MessageEmpty)):
        return None
    from_id = m.from_id
    if from_id is None:
        sender_kind, sender_id = ("channel", chat_id) if m.post else (None, None)
    else:
        sender_kind, sender_id = peer_kind_id(from_id)

    reply = m.reply_to
    reply_to_id = thread_id = None
    if reply is not None and type(reply) is types.MessageReplyHeader:
        reply_to_id = reply.reply_to_msg_id
        thread_id = reply.reply_to_top_id or reply_to_id

    fwd = m.fwd_from
    if fwd is not None:
        fwd_kind, fwd_id = peer_kind_id(fwd.from_id)
        fwd_name, fwd_date, fwd_post = fwd.from_name, _dt(fwd.date), fwd.channel_post
    else:
        fwd_kind = fwd_id = fwd_name = fwd_date = fwd_post = None

    if cls in _SERVICE or (cls not in _PLAIN and isinstance(m, _MessageService)):
        action = m.action
        return (
            chat_id, m.id, int(m.date.timestamp()), sender_id, sender_kind, None, None,
            reply_to_id, thread_id, None, None, None, None, None,
            None, None, None, None, None, m.pinned or False, None, None,
            None, None, None, None, None, None, None, None, None, None,
            None, None, action_name(type(action)) if action is not None else None, None,
        )  # fmt: skip

    replies = m.replies
    reactions, reactions_total = _reactions(m.reactions)
    (mtype, mime, size, duration, width, height, fname, fid) = _media(m.media)
    return (
        chat_id, m.id, int(m.date.timestamp()), sender_id, sender_kind, m.message,
        _entities(m.entities), reply_to_id, thread_id, fwd_id, fwd_kind, fwd_name, fwd_date, fwd_post,
        m.views, m.forwards, replies.replies if replies is not None else None, _dt(m.edit_date),
        m.grouped_id, bool(m.pinned), m.post_author, m.via_bot_id,
        mtype, mime, size, duration, width, height, fname, fid, None, None,
        reactions, reactions_total, None, None,
    )  # fmt: skip


def append_messages(batch: ColumnBatch, messages: Iterable[Any], chat_id: int) -> int:
    """Bulk path: append Telethon messages straight into column lists; returns rows added."""
    rows = [row for row in map(message_row, messages, repeat(chat_id)) if row is not None]
    batch.extend_rows(rows)
    return len(rows)


def row_to_record(row: tuple) -> ExportedMessage:
    rec = ExportedMessage(*row)
    ents: Any = rec.entities  # still plain tuples here
    if ents is not None:
        rec.entities = [Entity(*e) for e in ents]
    rxs: Any = rec.reactions
    if rxs is not None:
        rec.reactions = [Reaction(*r) for r in rxs]
    return rec


def to_records(messages: Iterable[Any], chat_id: int) -> list[ExportedMessage]:
    """Record path (small, interactive): slotted records, built with the cyclic collector paused."""
    out = []
    with gc_paused():
        for m in messages:
            row = message_row(m, chat_id)
            if row is not None:
                out.append(row_to_record(row))
    return out


# --------------------------------------------------------------------------------------------------
# Peers and chats: the names and metadata every history page carries for free (``.users``/``.chats``).


def _peer_row(obj: Any, seen: int) -> tuple | None:
    """One User/Channel/Chat as a row in ``PEER_COLUMNS`` order, or None for empty constructors."""
    cls = type(obj)
    if isinstance(obj, types.User):
        first, last = obj.first_name, obj.last_name
        name = " ".join(filter(None, (first, last))) or obj.username
        return (
            obj.id, "user", obj.username, first, last, None, obj.phone, bool(obj.bot), bool(obj.verified),
            bool(obj.scam), bool(obj.fake), bool(obj.premium), bool(obj.deleted), seen, seen,
            name, None, None, None, obj.lang_code, obj.photo is not None and not isinstance(
                obj.photo, types.UserProfilePhotoEmpty), bool(obj.min), "api",
        )  # fmt: skip
    if isinstance(obj, types.Channel):
        return (
            obj.id, "channel", obj.username, None, None, obj.title, None, None, bool(obj.verified),
            bool(obj.scam), bool(obj.fake), None, None, seen, seen,
            obj.title, bool(obj.megagroup), bool(obj.broadcast), bool(obj.forum), None,
            not isinstance(obj.photo, types.ChatPhotoEmpty), bool(obj.min), "api",
        )  # fmt: skip
    if isinstance(obj, types.ChannelForbidden):
        return (
            obj.id, "channel", None, None, None, obj.title, None, None, None, None, None, None, None, seen,
            seen, obj.title, bool(obj.megagroup), bool(obj.broadcast), None, None, None, False, "api",
        )  # fmt: skip
    if isinstance(obj, types.Chat | types.ChatForbidden):
        has_photo = None if cls is types.ChatForbidden else not isinstance(obj.photo, types.ChatPhotoEmpty)
        return (
            obj.id, "chat", None, None, None, obj.title, None, None, None, None, None, None,
            bool(getattr(obj, "deactivated", False)), seen, seen, obj.title, None, None, None, None,
            has_photo, False, "api",
        )  # fmt: skip
    return None  # UserEmpty, ChatEmpty, unknown constructors


def peer_rows(users: Iterable[Any] | None, chats: Iterable[Any] | None, seen: int) -> list[tuple]:
    """The ``peers`` rows of a page's ``.users`` and ``.chats`` (``seen``: epoch seconds of the observation).

    Costs no request: every history page already carries the users and chats its messages mention
    (senders, forward sources, mentioned users, the chat itself)."""
    out = []
    for obj in (*(users or ()), *(chats or ())):
        row = _peer_row(obj, seen)
        if row is not None:
            out.append(row)
    return out


def chat_fields(obj: Any) -> dict[str, Any]:
    """Metadata for the ``chats`` table from a Channel/Chat/User or from a full-chat answer
    (``messages.ChatFull`` of GetFullChannel/GetFullChat): only the fields the object carries."""
    full = getattr(obj, "full_chat", None)
    if full is not None:
        out: dict[str, Any] = {"about": full.about}
        count = getattr(full, "participants_count", None)
        if count is None and isinstance(getattr(full, "participants", None), types.ChatParticipants):
            count = len(full.participants.participants)
        out["participants_count"] = count
        if isinstance(full, types.ChannelFull):
            out["linked_chat_id"] = full.linked_chat_id
        for chat in getattr(obj, "chats", ()) or ():
            if getattr(chat, "id", None) == full.id:
                out.update(chat_fields(chat))
        return out
    if isinstance(obj, types.Channel):
        return {
            "kind": "channel", "title": obj.title, "username": obj.username, "created": _dt(obj.date),
            "type": "megagroup" if obj.megagroup else "broadcast" if obj.broadcast else "channel",
        }  # fmt: skip
    if isinstance(obj, types.Chat):
        return {"kind": "chat", "title": obj.title, "created": _dt(obj.date), "type": "group"}
    if isinstance(obj, types.User):
        name = " ".join(filter(None, (obj.first_name, obj.last_name))) or obj.username
        return {
            "kind": "user",
            "title": name,
            "username": obj.username,
            "type": "bot" if obj.bot else "private",
        }
    if isinstance(obj, types.ChannelForbidden | types.ChatForbidden):
        return {"kind": "chat" if isinstance(obj, types.ChatForbidden) else "channel", "title": obj.title}
    return {}


# --------------------------------------------------------------------------------------------------
# Dialogs (messages.getDialogs pages)


def _dialog_key(peer: Any, msg_id: int) -> tuple[int | None, int]:
    # Channels number their messages themselves; users and basic groups share the account's id space.
    return (peer.channel_id if isinstance(peer, types.PeerChannel) else None), msg_id


def dialog_rows(page: Any) -> list[dict[str, Any]]:
    """One dict per dialog of a ``messages.Dialogs``/``DialogsSlice`` page, in page order.

    Keys: ``id`` (bare), ``peer_kind`` (user/channel/chat), ``kind`` (``channel`` for a broadcast
    channel, ``group`` for a supergroup or basic group, ``user`` for a person or bot), ``type``
    (broadcast, megagroup, gigagroup, group, private, bot, self), ``title``, ``username``, ``unread``,
    ``unread_mentions``, ``last_message_id``, ``last_message_date`` (epoch s), ``participants`` (None
    for users and where Telegram does not say), ``archived``, ``pinned``, ``chat`` (what to pass to
    ``export_chat``: ``@username``, else the marked id).  A dialog whose peer the page does not carry
    is left out (Telegram sends that rarely; Telethon skips it too)."""
    entities: dict[tuple[str, int], Any] = {}
    for obj in (*page.users, *page.chats):
        if isinstance(obj, types.User):
            entities[("user", obj.id)] = obj
        elif isinstance(obj, types.Channel | types.ChannelForbidden):
            entities[("channel", obj.id)] = obj
        elif isinstance(obj, types.Chat | types.ChatForbidden):
            entities[("chat", obj.id)] = obj
    dates = {_dialog_key(m.peer_id, m.id): m.date for m in page.messages if getattr(m, "date", None)}
    out = []
    for d in page.dialogs:
        if not isinstance(d, types.Dialog):
            continue  # DialogFolder: the archive folder's own entry, not a chat
        peer_kind, pid = peer_kind_id(d.peer)
        if peer_kind is None or pid is None:
            continue
        ent = entities.get((peer_kind, pid))
        if ent is None:
            continue
        username = getattr(ent, "username", None)
        participants = getattr(ent, "participants_count", None)
        if isinstance(ent, types.User):
            kind, title = "user", " ".join(filter(None, (ent.first_name, ent.last_name))) or username
            typ = "self" if ent.is_self else "bot" if ent.bot else "private"
            participants = None
        elif peer_kind == "channel":
            broadcast = bool(getattr(ent, "broadcast", False))
            kind, title = ("channel" if broadcast else "group"), ent.title
            typ = (
                "broadcast" if broadcast else "gigagroup" if getattr(ent, "gigagroup", False) else "megagroup"
            )
        else:
            kind, title, typ = "group", ent.title, "group"
        marked = pid if peer_kind == "user" else -pid if peer_kind == "chat" else -(10**12 + pid)
        out.append(
            {
                "id": pid, "peer_kind": peer_kind, "kind": kind, "type": typ, "title": title,
                "username": username, "unread": d.unread_count, "unread_mentions": d.unread_mentions_count,
                "last_message_id": d.top_message or None,
                "last_message_date": _dt(dates.get(_dialog_key(d.peer, d.top_message))),
                "participants": participants, "archived": d.folder_id == 1, "pinned": bool(d.pinned),
                "chat": f"@{username}" if username else str(marked),
            }
        )  # fmt: skip
    return out
