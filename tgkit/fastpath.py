"""The columnar fast path for history pages: TL bytes of a ``messages.getHistory`` answer -> row tuples.

Telethon decodes every page into a tree of objects (a Message with ~50 keyword arguments, its entities,
media, reactions), and ``convert.message_row`` then reads a few fields of it: that decode is ~80% of an
export's CPU.  This module reads the same bytes with ``struct.unpack_from`` and builds the rows directly.

How it stays exact (nothing guessed, nothing lost):

* The readers are *compiled from Telethon's own generated ``from_reader`` code* at first use: the
  statements of each class's ``from_reader`` (flags, ``flags & N`` conditions, primitive reads, vectors,
  nested objects) are translated into position-based reads over the page's bytes.  Layouts, flag bits
  and constructor ids therefore always match the installed Telethon layer; no literal is written here.
  A class whose ``from_reader`` uses anything the translator does not know is simply not compiled.
* Only classes whose values the row builder understands are compiled (messages, peers, forward/reply
  headers, reactions, entities, photos, documents and their sizes/attributes).  Any other constructor
  met inside a page (a new layer's message, a poll, a web page, a service action, a reply markup) is
  decoded by Telethon at that offset (``BinaryReader`` positioned there, ``tgread_object()``) and
  handed to ``convert``'s own code.
* The rows are those of :func:`tgkit.convert.message_row` (a differential hypothesis test proves it).
  If anything at all goes wrong while reading a page fast, Telethon decodes the whole page instead.

The hook is :class:`FastHistoryRequest` (a ``GetHistoryRequest`` whose ``read_result`` returns a
:class:`FastPage`); :func:`history_request` builds it or a plain request (``TGKIT_FAST_DECODE=0`` or
``fast=False``), and :func:`page_rows` gives ids, rows and Telethon messages on demand for either kind
of page.
"""

from __future__ import annotations

import ast
import inspect
import logging
import struct
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat
from typing import Any

from telethon.extensions import BinaryReader
from telethon.tl import functions, types
from telethon.tl.alltlobjects import tlobjects
from telethon.tl.tlobject import TLRequest

from . import convert
from .config import env_flag

__all__ = [
    "FastHistoryRequest",
    "FastPage",
    "PageRows",
    "decode_page",
    "fast_decode_enabled",
    "history_request",
    "install_wrapper_passthrough",
    "page_rows",
]

log = logging.getLogger(__name__)

_I32 = struct.Struct("<i").unpack_from
_U32 = struct.Struct("<I").unpack_from
_I64 = struct.Struct("<q").unpack_from
_F64 = struct.Struct("<d").unpack_from
_NONE8 = (None,) * 8


class _Unsupported(Exception):
    """A ``from_reader`` statement the translator does not know: the class stays with Telethon."""


# --------------------------------------------------------------------------------------------------
# Primitive readers (position-based, bounds-checked like Telethon's BinaryReader)


def _bytes_at(buf: bytes, p: int) -> tuple[bytes, int]:
    n = buf[p]
    if n < 254:
        a = p + 1
        q = p + ((n + 4) & ~3)  # 1 length byte + n bytes, padded to 4
    else:
        n = buf[p + 1] | (buf[p + 2] << 8) | (buf[p + 3] << 16)
        a = p + 4
        q = a + ((n + 3) & ~3)
    if q > len(buf):
        raise BufferError("string runs past the end of the page")
    return buf[a : a + n], q


def _str_at(buf: bytes, p: int) -> tuple[str, int]:
    n = buf[p]
    if n < 254:
        a = p + 1
        q = p + ((n + 4) & ~3)
    else:
        n = buf[p + 1] | (buf[p + 2] << 8) | (buf[p + 3] << 16)
        a = p + 4
        q = a + ((n + 3) & ~3)
    if q > len(buf):
        raise BufferError("string runs past the end of the page")
    return str(buf[a : a + n], "utf-8", "replace"), q


def _bool_at(buf: bytes, p: int) -> tuple[bool, int]:
    value = _U32(buf, p)[0]
    if value == _TRUE_ID:
        return True, p + 4
    if value == _FALSE_ID:
        return False, p + 4
    raise ValueError(f"invalid boolean constructor {value:#x}")


# boolTrue/boolFalse have no Telethon class: take their ids from how Telethon serialises a Bool field
_TRUE_ID = _U32(bytes(functions.account.UpdateStatusRequest(offline=True)), 4)[0]
_FALSE_ID = _U32(bytes(functions.account.UpdateStatusRequest(offline=False)), 4)[0]


def _telethon_at(buf: bytes, p: int) -> tuple[Any, int]:
    """Telethon decodes the object at ``p`` (a constructor this module does not read itself)."""
    reader = BinaryReader(buf)
    reader.set_position(p)
    obj = reader.tgread_object()
    return obj, reader.tell_position()


# Users and chats repeat from page to page: their decoded Telethon objects are reused when the same
# bytes come again.  Keyed by the first 20 bytes (constructor, flags, id), then checked on the whole
# encoding (TL decoding of equal bytes gives equal objects).  Bounded: cleared when it grows too big.
_PEER_CACHE: dict[bytes, list[tuple[bytes, Any]]] = {}
_PEER_CACHE_MAX = 4096


def _cached_peer_at(buf: bytes, p: int) -> tuple[Any, int]:
    head = buf[p : p + 20]
    bucket = _PEER_CACHE.get(head)
    if bucket is not None:
        for data, obj in bucket:
            if buf.startswith(data, p):
                return obj, p + len(data)
    obj, q = _telethon_at(buf, p)
    if bucket is None:
        if len(_PEER_CACHE) >= _PEER_CACHE_MAX:
            _PEER_CACHE.clear()
        bucket = _PEER_CACHE[head] = []
    elif len(bucket) >= 8:
        bucket.pop(0)
    bucket.append((buf[p:q], obj))
    return obj, q


def _obj_at(buf: bytes, p: int) -> tuple[Any, int]:
    """A boxed TL object at ``p``: a compiled class gives ``(cls, *fields)``, any other a Telethon object."""
    dec = _DECODERS.get(_U32(buf, p)[0])
    if dec is not None:
        return dec(buf, p + 4)
    return _telethon_at(buf, p)


# --------------------------------------------------------------------------------------------------
# The translator: Telethon's generated from_reader -> a position-based reader returning a tuple.

_PRIMITIVES = {
    # reader method -> (template with {t} for the target, the value kind)
    "read_int": ("{t} = _I32(buf, p)[0]; p += 4", "int"),
    "read_long": ("{t} = _I64(buf, p)[0]; p += 8", "long"),
    "read_double": ("{t} = _F64(buf, p)[0]; p += 8", "double"),
    "tgread_date": ("{t} = _I32(buf, p)[0]; p += 4", "date"),  # epoch seconds (Telethon: a datetime)
    "tgread_string": ("{t}, p = _str_at(buf, p)", "string"),
    "tgread_bytes": ("{t}, p = _bytes_at(buf, p)", "bytes"),
    "tgread_bool": ("{t}, p = _bool_at(buf, p)", "bool"),
    # _obj_at inlined (one call frame less per nested object: ~10% of a page)
    "tgread_object": (
        "_d = _DGET(_U32(buf, p)[0])\n{t}, p = _d(buf, p + 4) if _d is not None else _telethon_at(buf, p)",
        "object",
    ),
}


@dataclass(slots=True)
class _Layout:
    """A compiled class: its field names (tuple index = position + 1), their kinds, the reader."""

    cls: type
    fields: tuple[str, ...]
    kinds: dict[str, str]
    decode: Callable[[bytes, int], tuple[tuple, int]]

    def index(self, name: str) -> int:
        return self.fields.index(name) + 1


def _reader_call(node: ast.AST) -> str | None:
    """``reader.<method>()`` -> method name (no arguments allowed)."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "reader"
        and not node.args
        and not node.keywords
    ):
        return node.func.attr
    return None


class _Translator:
    def __init__(self, spans: str | None) -> None:
        self.lines: list[str] = []
        self.kinds: dict[str, str] = {}
        self.fields: tuple[str, ...] = ()
        self.spans = spans  # record (start, end) of each element of this vector field
        self.loops = 0

    def emit(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)

    def block(self, stmts: Sequence[ast.stmt], depth: int) -> None:
        for stmt in stmts:
            self.stmt(stmt, depth)

    def stmt(self, s: ast.stmt, depth: int) -> None:
        if isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name):
            target = s.targets[0].id
            method = _reader_call(s.value)
            if method is not None:
                if method not in _PRIMITIVES:
                    raise _Unsupported(method)
                template, kind = _PRIMITIVES[method]
                for line in template.format(t=target).split("\n"):
                    self.emit(depth, line)
                self.kinds[target] = kind
                return
            if self._plain(s.value):  # bool(flags & N), [], None
                self.emit(depth, ast.unparse(s))
                self.kinds.setdefault(target, "flag" if isinstance(s.value, ast.Call) else "none")
                return
            raise _Unsupported(ast.unparse(s))
        if isinstance(s, ast.Expr):
            if _reader_call(s.value) == "read_int":  # a vector's constructor id, skipped as Telethon does
                self.emit(depth, "p += 4")
                return
            call = s.value
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr == "append"
                and isinstance(call.func.value, ast.Name)
                and len(call.args) == 1
                and isinstance(call.args[0], ast.Name)
            ):
                self.emit(depth, ast.unparse(s))
                return
            raise _Unsupported(ast.unparse(s))
        if isinstance(s, ast.If) and self._flag_test(s.test):
            self.emit(depth, f"if {ast.unparse(s.test)}:")
            self.block(s.body, depth + 1)
            if s.orelse:
                self.emit(depth, "else:")
                self.block(s.orelse, depth + 1)
            return
        if isinstance(s, ast.For):
            it = s.iter
            if not (
                isinstance(it, ast.Call)
                and isinstance(it.func, ast.Name)
                and it.func.id == "range"
                and len(it.args) == 1
                and _reader_call(it.args[0]) == "read_int"
                and not s.orelse
            ):
                raise _Unsupported(ast.unparse(s))
            self.loops += 1
            n = f"_n{self.loops}"
            self.emit(depth, f"{n} = _I32(buf, p)[0]; p += 4")
            self.emit(depth, f"for _ in range({n}):")
            appended = [
                b.value.func.value.id  # type: ignore[attr-defined]
                for b in s.body
                if isinstance(b, ast.Expr) and isinstance(b.value, ast.Call)
                and isinstance(b.value.func, ast.Attribute) and b.value.func.attr == "append"
            ]  # fmt: skip
            if self.spans is not None and appended == [f"_{self.spans}"]:
                self.emit(depth + 1, "_q = p")
                self.block(s.body, depth + 1)
                self.emit(depth + 1, "_spans.append((_q, p))")
            else:
                self.block(s.body, depth + 1)
            for name in appended:
                self.kinds[name] = "vector:" + self.kinds.get("_x", "?")
            return
        if isinstance(s, ast.Return):
            ret = s.value
            if not (isinstance(ret, ast.Call) and isinstance(ret.func, ast.Name) and ret.func.id == "cls"):
                raise _Unsupported(ast.unparse(s))
            names = []
            values = []
            for kw in ret.keywords:
                if kw.arg is None or not isinstance(kw.value, ast.Name):
                    raise _Unsupported(ast.unparse(s))
                names.append(kw.arg)
                values.append(kw.value.id)
            self.fields = tuple(names)
            self.kinds = {n: self.kinds.get(v, "?") for n, v in zip(names, values)}
            elems = ["_CLS", *values, *(["_spans"] if self.spans is not None else [])]
            self.emit(depth, f"return ({', '.join(elems)},), p")
            return
        raise _Unsupported(ast.unparse(s))

    @staticmethod
    def _plain(value: ast.AST) -> bool:
        if isinstance(value, ast.List) and not value.elts:
            return True
        if isinstance(value, ast.Constant) and value.value is None:
            return True
        return (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id == "bool"
            and len(value.args) == 1
            and _Translator._flag_test(value.args[0])
        )

    @staticmethod
    def _flag_test(test: ast.AST) -> bool:
        return (
            isinstance(test, ast.BinOp)
            and isinstance(test.op, ast.BitAnd)
            and isinstance(test.left, ast.Name)
            and test.left.id.startswith("flags")
            and isinstance(test.right, ast.Constant)
            and isinstance(test.right.value, int)
        )


def _compile(cls: type, *, spans: str | None = None) -> _Layout | None:
    """Translate ``cls.from_reader`` into a fast reader, or None if it uses anything unknown."""
    try:
        source = textwrap.dedent(inspect.getsource(cls.from_reader))  # type: ignore[attr-defined]
        fn = ast.parse(source).body[0]
        assert isinstance(fn, ast.FunctionDef)
        tr = _Translator(spans)
        body = fn.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # a docstring
        tr.block(body, 1)
        if not tr.fields and not any(line.strip().startswith("return") for line in tr.lines):
            raise _Unsupported("no return")
    except (OSError, TypeError, SyntaxError, AssertionError, _Unsupported) as exc:
        log.debug("fast path: %s stays with Telethon (%s)", cls.__name__, exc)
        return None
    head = ["def decode(buf, p):"]
    if spans is not None:
        head.append("    _spans = []")
    code = "\n".join(head + tr.lines) + "\n"
    namespace: dict[str, Any] = {
        "_CLS": cls,
        "_I32": _I32,
        "_I64": _I64,
        "_F64": _F64,
        "_str_at": _str_at,
        "_bytes_at": _bytes_at,
        "_bool_at": _bool_at,
        "_obj_at": _obj_at,
        "_U32": _U32,
        "_DGET": _DECODERS.get,
        "_telethon_at": _telethon_at,
    }
    exec(compile(code, f"<tgkit.fastpath {cls.__name__}>", "exec"), namespace)  # generated from Telethon
    return _Layout(cls, tr.fields, tr.kinds, namespace["decode"])


# --------------------------------------------------------------------------------------------------
# Which classes are read fast (their tuples are understood by the row builder below), built once.

_DECODERS: dict[int, Callable[[bytes, int], tuple[Any, int]]] = {}
_LAYOUTS: dict[type, _Layout] = {}
_PAGE_LAYOUTS: dict[int, _Layout] = {}
_READY: list[bool] = []
# cls -> (type name, then tuple indexes of url, user_id, document_id, language (0: none), offset, length)
_ENTITY_ROW: dict[type, tuple[Any, ...]] = {}
_ID_INDEX: dict[type, int] = {}  # message classes -> index of their id

_PAGE_CLASSES = (types.messages.ChannelMessages, types.messages.MessagesSlice, types.messages.Messages)
_PEER_CLASSES = (
    types.User,
    types.UserEmpty,
    types.Channel,
    types.ChannelForbidden,
    types.Chat,
    types.ChatEmpty,
    types.ChatForbidden,
)
_ROW_FIELDS = {
    # the fields the row builder reads, per class: a class whose layout lacks one stays with Telethon
    types.Message: (
        "id",
        "date",
        "message",
        "post",
        "pinned",
        "from_id",
        "reply_to",
        "fwd_from",
        "views",
        "forwards",
        "replies",
        "edit_date",
        "grouped_id",
        "post_author",
        "via_bot_id",
        "media",
        "entities",
        "reactions",
    ),
    types.MessageService: ("id", "date", "post", "from_id", "reply_to", "action"),
    types.PeerUser: ("user_id",),
    types.PeerChannel: ("channel_id",),
    types.PeerChat: ("chat_id",),
    types.MessageFwdHeader: ("from_id", "from_name", "date", "channel_post"),
    types.MessageReplyHeader: ("reply_to_msg_id", "reply_to_top_id"),
    types.MessageReplies: ("replies",),
    types.MessageReactions: ("results",),
    types.ReactionCount: ("reaction", "count"),
    types.ReactionEmoji: ("emoticon",),
    types.ReactionCustomEmoji: ("document_id",),
    types.ReactionPaid: (),
    types.MessageMediaPhoto: ("photo",),
    types.MessageMediaDocument: ("document",),
    types.Photo: ("id", "sizes"),
    types.PhotoSize: ("w", "h", "size"),
    types.PhotoSizeProgressive: ("w", "h", "sizes"),
    types.Document: ("id", "mime_type", "size", "attributes"),
    types.DocumentAttributeFilename: ("file_name",),
    types.DocumentAttributeVideo: ("duration", "w", "h", "round_message"),
    types.DocumentAttributeAudio: ("duration", "voice"),
    types.DocumentAttributeImageSize: ("w", "h"),
}
# Read fast but never looked into (skipped quickly inside photos, documents and stickers).
_OPAQUE = (
    types.PhotoEmpty,
    types.DocumentEmpty,
    types.PhotoSizeEmpty,
    types.PhotoStrippedSize,
    types.PhotoCachedSize,
    types.PhotoPathSize,
    types.DocumentAttributeSticker,
    types.DocumentAttributeAnimated,
    types.DocumentAttributeHasStickers,
    types.DocumentAttributeCustomEmoji,
    types.InputStickerSetID,
    types.InputStickerSetShortName,
    types.InputStickerSetEmpty,
    types.MessageEmpty,
)


def _prepare() -> bool:
    """Compile the readers once (at first use, never at import); False if messages cannot be read fast."""
    if _READY:
        return _READY[0]
    ok = True
    for cls in (*_ROW_FIELDS, *_OPAQUE):
        layout = _compile(cls)
        if layout is None or not set(_ROW_FIELDS.get(cls, ())) <= set(layout.fields):
            if cls in (types.Message, types.MessageService):
                ok = False
            continue
        _LAYOUTS[cls] = layout
    # Entities: every MessageEntity* whose row fields are plain values (url, ids, language)
    for cls in tlobjects.values():
        if cls.__name__.startswith("MessageEntity") and cls.__module__ == types.__name__:
            layout = _compile(cls)
            if layout is None or not {"offset", "length"} <= set(layout.fields):
                continue
            idx = []
            for name in ("url", "user_id", "document_id", "language"):
                if name in layout.fields:
                    if layout.kinds.get(name) not in ("string", "long", "int"):
                        break
                    idx.append(layout.index(name))
                else:
                    idx.append(0)
            else:
                _LAYOUTS[cls] = layout
                _ENTITY_ROW[cls] = (
                    convert.entity_type_name(cls),
                    *idx,
                    layout.index("offset"),
                    layout.index("length"),
                )  # type: ignore[assignment]
    for layout in _LAYOUTS.values():
        # Telethon instantiates tlobjects[id] (the patched Message classes): the tuples name that class
        patched = tlobjects.get(layout.cls.CONSTRUCTOR_ID)  # type: ignore[attr-defined]
        if patched is not None and patched is not layout.cls:
            layout.cls = patched
        layout.decode.__globals__["_CLS"] = layout.cls  # each reader has its own namespace
        _DECODERS[layout.cls.CONSTRUCTOR_ID] = layout.decode  # type: ignore[attr-defined]
        if "id" in layout.fields:
            _ID_INDEX[layout.cls] = layout.index("id")
    for cls in _PEER_CLASSES:
        _DECODERS[cls.CONSTRUCTOR_ID] = _peer_decoder
    for cls in _PAGE_CLASSES:
        layout = _compile(cls, spans="messages")
        if layout is not None and {"messages", "chats", "users"} <= set(layout.fields):
            _PAGE_LAYOUTS[cls.CONSTRUCTOR_ID] = layout
    ok = ok and bool(_PAGE_LAYOUTS)
    if ok:
        _build_row_readers()
    _READY.append(ok)
    return ok


def _peer_decoder(buf: bytes, p: int) -> tuple[Any, int]:
    return _cached_peer_at(buf, p - 4)


# --------------------------------------------------------------------------------------------------
# Rows from the compiled tuples: the same values as convert.message_row, field by field.

_ROW_BUILDERS: dict[type, Callable[[tuple, int], tuple | None]] = {}


def _build_row_readers() -> None:
    L = _LAYOUTS
    peer_kind = {L[c].cls: (k, L[c].index(f)) for c, k, f in (
        (types.PeerUser, "user", "user_id"),
        (types.PeerChannel, "channel", "channel_id"),
        (types.PeerChat, "chat", "chat_id"),
    )}  # fmt: skip

    def peer(v: Any) -> tuple[str | None, int | None]:
        if type(v) is tuple:
            kind = peer_kind.get(v[0])
            return (kind[0], v[kind[1]]) if kind is not None else (None, None)
        return convert.peer_kind_id(v)

    # reply header
    reply_cls = L[types.MessageReplyHeader].cls if types.MessageReplyHeader in L else None
    r_msg = L[types.MessageReplyHeader].index("reply_to_msg_id") if reply_cls else 0
    r_top = L[types.MessageReplyHeader].index("reply_to_top_id") if reply_cls else 0

    def reply(v: Any) -> tuple[int | None, int | None]:
        if v is None:
            return None, None
        if type(v) is tuple:
            if v[0] is not reply_cls:
                return None, None
            rid = v[r_msg]
            return rid, v[r_top] or rid
        if type(v) is types.MessageReplyHeader:
            rid = v.reply_to_msg_id
            return rid, v.reply_to_top_id or rid
        return None, None

    fwd_cls = L[types.MessageFwdHeader].cls if types.MessageFwdHeader in L else None
    f_from, f_name, f_date, f_post = (
        (L[types.MessageFwdHeader].index(n) for n in ("from_id", "from_name", "date", "channel_post"))
        if fwd_cls else (0, 0, 0, 0)
    )  # fmt: skip

    def fwd(v: Any) -> tuple:
        if v is None:
            return None, None, None, None, None
        if type(v) is tuple and v[0] is fwd_cls:
            kind, pid = peer(v[f_from]) if v[f_from] is not None else (None, None)
            return pid, kind, v[f_name], v[f_date], v[f_post]
        kind, pid = convert.peer_kind_id(v.from_id)
        date = v.date
        return pid, kind, v.from_name, None if date is None else int(date.timestamp()), v.channel_post

    replies_cls = L[types.MessageReplies].cls if types.MessageReplies in L else None
    rp_n = L[types.MessageReplies].index("replies") if replies_cls else 0

    # reactions
    rx_cls = L[types.MessageReactions].cls if types.MessageReactions in L else None
    rx_results = L[types.MessageReactions].index("results") if rx_cls else 0
    rc_cls = L[types.ReactionCount].cls if types.ReactionCount in L else None
    rc_reaction = L[types.ReactionCount].index("reaction") if rc_cls else 0
    rc_count = L[types.ReactionCount].index("count") if rc_cls else 0
    emoji_cls = L[types.ReactionEmoji].cls if types.ReactionEmoji in L else None
    custom_cls = L[types.ReactionCustomEmoji].cls if types.ReactionCustomEmoji in L else None
    paid_cls = L[types.ReactionPaid].cls if types.ReactionPaid in L else None

    def reactions(v: Any) -> tuple[list[tuple] | None, int | None]:
        if v is None:
            return None, None
        if type(v) is not tuple or v[0] is not rx_cls:
            return convert._reactions(v)
        out: list[tuple] = []
        total = 0
        for rc in v[rx_results] or ():
            if type(rc) is not tuple or rc[0] is not rc_cls:
                one, n = convert._reactions(types.MessageReactions(results=[rc]))
                out.extend(one or ())
                total += n or 0
                continue
            r = rc[rc_reaction]
            count = rc[rc_count]
            total += count
            if type(r) is tuple:
                cls = r[0]
                if cls is emoji_cls:
                    out.append((r[1], None, count))
                elif cls is custom_cls:
                    out.append((None, r[1], count))
                elif cls is paid_cls:
                    out.append(("paid", None, count))
                else:
                    out.append((cls.__name__, None, count))
            else:
                one, _ = convert._reactions(types.MessageReactions(results=[types.ReactionCount(r, count)]))
                out.extend(one or ())
        return out, total

    entity_row = _ENTITY_ROW
    entities_of = convert._entities

    def entities(v: list | None) -> list[tuple] | None:
        if v is None:
            return None
        out: list[tuple] = []
        for e in v:
            if type(e) is tuple:
                spec = entity_row[e[0]]
                out.append((spec[0], e[spec[5]], e[spec[6]], e[spec[1]] if spec[1] else None,
                            e[spec[2]] if spec[2] else None, e[spec[3]] if spec[3] else None,
                            e[spec[4]] if spec[4] else None))  # fmt: skip
            else:
                out.extend(entities_of([e]) or ())
        return out

    media = _media_reader()

    # Message and MessageService
    m = L[types.Message]
    mi = {name: m.index(name) for name in _ROW_FIELDS[types.Message]}
    (i_id, i_date, i_text, i_post, i_pinned, i_from, i_reply, i_fwd, i_views, i_fwds, i_replies,
     i_edit, i_grouped, i_author, i_via, i_media, i_ents, i_rx) = (
        mi[n] for n in _ROW_FIELDS[types.Message])  # fmt: skip

    def message(t: tuple, chat_id: int) -> tuple:
        from_id = t[i_from]
        if from_id is None:
            sender_kind, sender_id = ("channel", chat_id) if t[i_post] else (None, None)
        elif type(from_id) is tuple and from_id[0] in peer_kind:
            kind = peer_kind[from_id[0]]
            sender_kind, sender_id = kind[0], from_id[kind[1]]
        else:
            sender_kind, sender_id = peer(from_id)
        reply_to_id, thread_id = reply(t[i_reply])
        fwd_id, fwd_kind, fwd_name, fwd_date, fwd_post = fwd(t[i_fwd])
        rp = t[i_replies]
        if rp is not None:
            rp = rp[rp_n] if type(rp) is tuple and rp[0] is replies_cls else rp.replies
        rx, rx_total = reactions(t[i_rx])
        md = t[i_media]
        mrow = _NONE8 if md is None else media(md)
        return (
            chat_id, t[i_id], t[i_date], sender_id, sender_kind, t[i_text], entities(t[i_ents]),
            reply_to_id, thread_id, fwd_id, fwd_kind, fwd_name, fwd_date, fwd_post,
            t[i_views], t[i_fwds], rp, t[i_edit], t[i_grouped], t[i_pinned], t[i_author], t[i_via],
            *mrow, None, None, rx, rx_total, None, None,
        )  # fmt: skip

    s = L[types.MessageService]
    s_id, s_date, s_post, s_from, s_reply, s_action = (s.index(n) for n in _ROW_FIELDS[types.MessageService])
    action_name = convert.action_name

    def service(t: tuple, chat_id: int) -> tuple:
        from_id = t[s_from]
        if from_id is None:
            sender_kind, sender_id = ("channel", chat_id) if t[s_post] else (None, None)
        else:
            sender_kind, sender_id = peer(from_id)
        reply_to_id, thread_id = reply(t[s_reply])
        action = t[s_action]
        name = None if action is None else action_name(action[0] if type(action) is tuple else type(action))
        return (
            chat_id, t[s_id], t[s_date], sender_id, sender_kind, None, None,
            reply_to_id, thread_id, None, None, None, None, None,
            None, None, None, None, None, False, None, None,
            None, None, None, None, None, None, None, None, None, None,
            None, None, name, None,
        )  # fmt: skip

    _ROW_BUILDERS[m.cls] = message
    _ROW_BUILDERS[s.cls] = service
    if types.MessageEmpty in L:
        _ROW_BUILDERS[L[types.MessageEmpty].cls] = _empty_row


def _empty_row(t: tuple, chat_id: int) -> None:
    return None


def _media_reader() -> Callable[[Any], tuple]:
    L = _LAYOUTS
    photo_media = L.get(types.MessageMediaPhoto)
    doc_media = L.get(types.MessageMediaDocument)
    photo = L.get(types.Photo)
    doc = L.get(types.Document)
    size_l = L.get(types.PhotoSize)
    prog_l = L.get(types.PhotoSizeProgressive)
    mp_photo = photo_media.index("photo") if photo_media else 0
    md_doc = doc_media.index("document") if doc_media else 0
    p_id, p_sizes = (photo.index("id"), photo.index("sizes")) if photo else (0, 0)
    d_id, d_mime, d_size, d_attrs = (
        (doc.index("id"), doc.index("mime_type"), doc.index("size"), doc.index("attributes"))
        if doc
        else (0,) * 4
    )
    size_cls = size_l.cls if size_l else None
    prog_cls = prog_l.cls if prog_l else None
    s_w, s_h, s_size = (size_l.index("w"), size_l.index("h"), size_l.index("size")) if size_l else (0, 0, 0)
    g_w, g_h, g_sizes = (prog_l.index("w"), prog_l.index("h"), prog_l.index("sizes")) if prog_l else (0, 0, 0)
    attr = {}
    for cls, names in (
        (types.DocumentAttributeFilename, ("file_name",)),
        (types.DocumentAttributeVideo, ("duration", "w", "h", "round_message")),
        (types.DocumentAttributeAudio, ("duration", "voice")),
        (types.DocumentAttributeImageSize, ("w", "h")),
    ):
        if cls in L:
            attr[L[cls].cls] = (cls, tuple(L[cls].index(n) for n in names))
    fname_cls = L[types.DocumentAttributeFilename].cls if types.DocumentAttributeFilename in L else None
    video_cls = L[types.DocumentAttributeVideo].cls if types.DocumentAttributeVideo in L else None
    audio_cls = L[types.DocumentAttributeAudio].cls if types.DocumentAttributeAudio in L else None
    image_cls = L[types.DocumentAttributeImageSize].cls if types.DocumentAttributeImageSize in L else None
    kind_attrs = {}
    for a_cls, a_kind in convert._DOC_KIND_ATTRS:
        kind_attrs[a_cls] = a_kind
        if a_cls in L:
            kind_attrs[L[a_cls].cls] = a_kind
    photo_cls = photo.cls if photo else None
    document_cls = doc.cls if doc else None
    media_photo_cls = photo_media.cls if photo_media else None
    media_doc_cls = doc_media.cls if doc_media else None
    tel_media = convert._media

    def read_photo(ph: Any) -> tuple:
        if type(ph) is not tuple or ph[0] is not photo_cls:
            if type(ph) is tuple or not isinstance(ph, types.Photo):
                return ("photo",) + (None,) * 7
            return tel_media(types.MessageMediaPhoto(photo=ph))
        best_w = best_h = nbytes = best_area = None
        for sz in ph[p_sizes]:
            if type(sz) is tuple:
                cls = sz[0]
                if cls is size_cls:
                    w, h = sz[s_w], sz[s_h]
                    if best_area is None or w * h >= best_area:
                        best_area, best_w, best_h, nbytes = w * h, w, h, sz[s_size]
                elif cls is prog_cls:
                    w, h = sz[g_w], sz[g_h]
                    if best_area is None or w * h >= best_area:
                        best_area, best_w, best_h, nbytes = w * h, w, h, max(sz[g_sizes])
            elif isinstance(sz, types.PhotoSize | types.PhotoSizeProgressive) and (
                best_area is None or sz.w * sz.h >= best_area
            ):
                best_area, best_w, best_h = sz.w * sz.h, sz.w, sz.h
                nbytes = sz.size if isinstance(sz, types.PhotoSize) else max(sz.sizes)
        if best_area is None:
            return ("photo", "image/jpeg", None, None, None, None, None, ph[p_id])
        return ("photo", "image/jpeg", nbytes, None, best_w, best_h, None, ph[p_id])

    def read_doc(d: Any) -> tuple:
        if type(d) is not tuple or d[0] is not document_cls:
            if type(d) is tuple or not isinstance(d, types.Document):
                return ("document",) + (None,) * 7
            return tel_media(types.MessageMediaDocument(document=d))
        kind = "document"
        duration = w = h = name = None
        for a in d[d_attrs]:
            if type(a) is tuple:
                cls = a[0]
                spec = attr.get(cls)
                if spec is not None:
                    ix = spec[1]
                    if cls is fname_cls:
                        name = a[ix[0]]
                    elif cls is video_cls:
                        duration, w, h = float(a[ix[0]]), a[ix[1]], a[ix[2]]
                        if kind == "document":
                            kind = "video_note" if a[ix[3]] else "video"
                    elif cls is audio_cls:
                        duration = float(a[ix[0]])
                        if kind == "document":
                            kind = "voice" if a[ix[1]] else "audio"
                    elif cls is image_cls:
                        w, h = a[ix[0]], a[ix[1]]
                else:
                    k = kind_attrs.get(cls)
                    if k is not None:
                        kind = k
            else:
                # one attribute Telethon decoded: let convert read a one-attribute document
                one = tel_media(types.MessageMediaDocument(document=types.Document(
                    id=0, access_hash=0, file_reference=b"", date=None, mime_type="", size=0, dc_id=0,
                    attributes=[a])))  # fmt: skip
                okind, _, _, odur, ow, oh, oname, _ = one
                cls = type(a)
                if cls is types.DocumentAttributeFilename:
                    name = oname
                elif cls is types.DocumentAttributeVideo:
                    duration, w, h = odur, ow, oh
                    if kind == "document":
                        kind = okind
                elif cls is types.DocumentAttributeAudio:
                    duration = odur
                    if kind == "document":
                        kind = okind
                elif cls is types.DocumentAttributeImageSize:
                    w, h = ow, oh
                elif okind != "document":
                    kind = okind
        return (kind, d[d_mime], d[d_size], duration, w, h, name, d[d_id])

    def media(md: Any) -> tuple:
        if type(md) is tuple:
            cls = md[0]
            if cls is media_photo_cls:
                ph = md[mp_photo]
                return ("photo",) + (None,) * 7 if ph is None else read_photo(ph)
            if cls is media_doc_cls:
                d = md[md_doc]
                return ("document",) + (None,) * 7 if d is None else read_doc(d)
            raise TypeError(f"no media reader for {cls.__name__}")  # not reached: only these compile
        return tel_media(md)

    return media


# --------------------------------------------------------------------------------------------------
# Pages


class FastPage:
    """A history page read fast: Telethon-compatible where Telethon looks, rows where tgkit looks.

    ``CONSTRUCTOR_ID``/``SUBCLASS_OF_ID`` are those of the TL answer; ``users``/``chats`` are real Telethon
    objects (Telethon's session keeps learning peers from them); ``count`` is Telegram's total (None for
    ``messages.Messages``).  ``ids``/``rows`` are per message in page order (a row is None for
    ``MessageEmpty``), for ``chat_id``; :meth:`message` decodes one Telethon Message on demand from its
    bytes, and ``messages`` decodes them all (for code that wants Telethon objects).
    """

    __slots__ = (
        "CONSTRUCTOR_ID",
        "SUBCLASS_OF_ID",
        "_body",
        "_messages",
        "_spans",
        "chat_id",
        "chats",
        "count",
        "ids",
        "rows",
        "topics",
        "users",
    )

    def __init__(
        self,
        cls: type,
        body: bytes,
        spans: list[tuple[int, int]],
        ids: list[int],
        rows: list[tuple | None],
        chat_id: int,
        count: int | None,
        chats: list[Any],
        users: list[Any],
        topics: list[Any],
    ) -> None:
        self.CONSTRUCTOR_ID = cls.CONSTRUCTOR_ID  # type: ignore[attr-defined]
        self.SUBCLASS_OF_ID = cls.SUBCLASS_OF_ID  # type: ignore[attr-defined]
        self._body = body
        self._spans = spans
        self._messages: list[Any] | None = None
        self.ids = ids
        self.rows = rows
        self.chat_id = chat_id
        self.count = count
        self.chats = chats
        self.users = users
        self.topics = topics

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"FastPage({len(self.ids)} messages, count={self.count}, chat_id={self.chat_id})"

    def message(self, i: int) -> Any:
        """The Telethon Message of the ``i``-th message, decoded from its bytes (media downloads need it)."""
        if self._messages is not None:
            return self._messages[i]
        return _telethon_at(self._body, self._spans[i][0])[0]

    @property
    def messages(self) -> list[Any]:
        if self._messages is None:
            self._messages = [_telethon_at(self._body, a)[0] for a, _ in self._spans]
        return self._messages


def decode_page(body: bytes, chat_id: int, start: int = 0) -> FastPage | None:
    """Read a GetHistory answer at ``body[start:]`` fast; None when it is not a page this path reads
    (e.g. ``messages.MessagesNotModified``).  Raises on malformed bytes (callers fall back)."""
    if not _prepare():
        return None
    layout = _PAGE_LAYOUTS.get(_U32(body, start)[0])
    if layout is None:
        return None
    t, _end = layout.decode(body, start + 4)
    fields = layout.fields
    get = dict(zip(fields, t[1:])).get
    spans = t[-1]
    messages: list[Any] = get("messages") or []
    builders = _ROW_BUILDERS
    ids: list[int] = []
    rows: list[tuple | None] = []
    message_row = convert.message_row
    for m in messages:
        if type(m) is tuple:
            build = builders.get(m[0])
            if build is None:  # a compiled class without a row reader cannot happen; be strict anyway
                raise TypeError(f"no row reader for {m[0].__name__}")
            ids.append(m[_ID_INDEX[m[0]]])
            rows.append(build(m, chat_id))
        else:
            ids.append(m.id)
            rows.append(message_row(m, chat_id))
    for row, mid in zip(rows, ids):
        if row is not None and row[1] != mid:
            raise AssertionError("row id does not match the message id")
    chats: list[Any] = get("chats") or []
    users: list[Any] = get("users") or []
    return FastPage(
        layout.cls, body, spans, ids, rows, chat_id, get("count"), chats, users, get("topics") or []
    )


# --------------------------------------------------------------------------------------------------
# The request hook


class FastHistoryRequest(functions.messages.GetHistoryRequest):  # type: ignore[misc]
    """``messages.getHistory`` whose answer is read by the fast path (same bytes on the wire).

    ``read_result`` returns a :class:`FastPage`; if the page cannot be read fast (an unexpected answer,
    malformed bytes, a bug here), Telethon decodes it from the same bytes instead: a page is never lost.
    """

    def __init__(self, *args: Any, chat_id: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chat_id = chat_id

    def read_result(self, reader: BinaryReader) -> Any:  # type: ignore[override]
        start = reader.tell_position()
        body = reader.get_bytes()
        if not isinstance(body, bytes):
            body = bytes(body)
        try:
            page = decode_page(body, self.chat_id, start)
        except Exception as exc:  # any failure: Telethon reads the page (counted as not fast)
            log.warning(
                "fast decode of a history page failed (%s: %s); Telethon decoded it", type(exc).__name__, exc
            )
            page = None
        if page is None:
            reader.set_position(start)
            return reader.tgread_object()
        return page


def _passthrough_read_result(self: Any, reader: BinaryReader) -> Any:
    return self.query.read_result(reader)


def install_wrapper_passthrough() -> None:
    """Make Telethon's generic wrapper requests (InvokeWithTakeout, InvokeWithoutUpdates, InvokeWithLayer,
    InvokeAfterMsg, ...) read their answer with the wrapped request's ``read_result``.

    Telethon 1.45's wrappers inherit ``TLRequest.read_result`` (a bare ``tgread_object()``), so under
    ``client.takeout()`` or ``receive_updates=False`` any request with its own ``read_result`` is
    decoded generically: the fast path would silently turn off.  For every request that does not
    override ``read_result`` the behaviour is unchanged (the inner request's is the same bare read).
    Idempotent; installed on first use of a fast request, never at import.
    """
    if _WRAPPERS_DONE:
        return
    for cls in tlobjects.values():
        if _is_generic_wrapper(cls):
            setattr(cls, "read_result", _passthrough_read_result)  # noqa: B010
    _WRAPPERS_DONE.append(True)


def _is_generic_wrapper(cls: Any) -> bool:
    """``invokeWithX {X:Type} ... query:!X = X`` requests that still read with TLRequest's bare reader."""
    return (
        issubclass(cls, TLRequest)
        and cls.__module__ == functions.__name__
        and "query" in inspect.signature(cls).parameters
        and getattr(cls, "SUBCLASS_OF_ID", None) == functions.InvokeWithLayerRequest.SUBCLASS_OF_ID
        and getattr(cls, "read_result", None) is TLRequest.read_result
    )


_WRAPPERS_DONE: list[bool] = []


def fast_decode_enabled(explicit: bool | None = None) -> bool:
    """``fast_decode=`` argument > ``TGKIT_FAST_DECODE`` > on."""
    if explicit is not None:
        return bool(explicit)
    return env_flag("TGKIT_FAST_DECODE", True)


def history_request(
    peer: Any,
    *,
    chat_id: int,
    offset_id: int,
    add_offset: int,
    limit: int = 100,
    offset_date: datetime | None = None,
    min_id: int = 0,
    max_id: int = 0,
    fast: bool | None = None,
) -> Any:
    """A ``messages.getHistory`` request: read by the fast path (``fast`` / ``TGKIT_FAST_DECODE``,
    default on) or plain Telethon.  ``chat_id`` is the dataset's chat id for the rows."""
    kwargs = dict(
        peer=peer,
        offset_id=offset_id,
        offset_date=offset_date,
        add_offset=add_offset,
        limit=limit,
        max_id=max_id,
        min_id=min_id,
        hash=0,
    )
    if fast_decode_enabled(fast):
        install_wrapper_passthrough()
        return FastHistoryRequest(chat_id=chat_id, **kwargs)
    return functions.messages.GetHistoryRequest(**kwargs)


@dataclass(slots=True)
class PageRows:
    """One page as tgkit consumes it: message ids (page order), rows (None for MessageEmpty), the Telethon
    Message of a position on demand, and whether the page was read fast."""

    ids: list[int]
    rows: list[tuple | None]
    message_for: Callable[[int], Any]
    fast: bool


def page_rows(page: Any, chat_id: int) -> PageRows:
    """Ids, rows and messages of a history page, whether the fast path or Telethon decoded it."""
    if type(page) is FastPage and page.chat_id == chat_id:
        return PageRows(page.ids, page.rows, page.message, True)
    msgs = getattr(page, "messages", None) or []
    return PageRows(
        [m.id for m in msgs],
        list(map(convert.message_row, msgs, repeat(chat_id))),
        msgs.__getitem__,
        False,
    )
