"""Import Telegram Desktop exports (``result.json``) into the records, frames and datasets of an API export.

Telegram Desktop's "Export chat history" writes ``result.json``: one chat (``{name, type, id, messages}``) or,
for a full-account export, chats nested under ``chats.list`` / ``left_chats.list``.  This module streams it
with ijson (C backend) so memory stays flat however large the file, and maps every message onto the one
schema in :mod:`tgkit.records` (see docs/DESKTOP_IMPORT.md for the field-by-field mapping).

* A single-chat file is parsed by ijson's C object builder (``ijson.items``).  A full-account file goes through
  ijson's parse events so each message can be tied to its chat without holding a chat in memory; that path
  is about 2x slower (measured, see the doc).
* A file cut short imports everything complete before the cut; :class:`DesktopTruncatedWarning` says where
  it stopped and ``report.stopped_at`` keeps it.  Non-JSON, non-UTF-8 or non-Desktop input raises
  :class:`DesktopFormatError`.
* Desktop writes control characters as ``\\xHH`` (not valid JSON); those escapes are repaired on the fly.
* ``import_desktop(path, out=DIR)`` writes the batches into a :mod:`tgkit.dataset` (``export_chat``'s
  layout); ids at or below a chat's checkpoint are skipped, so a re-import is idempotent.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, overload

import ijson
import polars as pl
import pyarrow.compute as pc

from .dataset import ChatPartition, Checkpoint, open_dataset
from .errors import ConfigError, DesktopFormatError, ExportError
from .privacy import Pseudonymiser, prepare_output  # [privacy] import-time pseudonymisation (#19)
from .records import (
    MESSAGE_COLUMNS,
    PEER_COLUMNS,
    ColumnBatch,
    Entity,
    ExportedMessage,
    Reaction,
    Records,
    gc_paused,
)

if TYPE_CHECKING:
    from .jupyter import ProgressMode

__all__ = [
    "DesktopBatches",
    "DesktopChat",
    "DesktopExportNotFound",
    "DesktopFormatError",
    "DesktopImportReport",
    "DesktopImportResult",
    "DesktopRecords",
    "DesktopStop",
    "DesktopTruncatedWarning",
    "import_desktop",
    "iter_desktop_batches",
]


class DesktopExportNotFound(DesktopFormatError, FileNotFoundError):
    """No ``result.json`` at the given path (also a :class:`FileNotFoundError`)."""


class DesktopTruncatedWarning(UserWarning):
    """``result.json`` ended (or broke) before its last message; everything complete before is imported.

    ``.report`` is the import's report; ``.report.stopped_at`` says where it stopped.
    """

    def __init__(self, message: str, report: DesktopImportReport) -> None:
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------------
# The report


@dataclass(slots=True)
class DesktopChat:
    """One chat of the export: its bare id, name, Desktop type and how many messages were imported."""

    id: int
    name: str | None
    type: str | None
    messages: int = 0
    last_message_id: int | None = None
    left: bool = False  # from ``left_chats`` (chats the account has left)


@dataclass(slots=True)
class DesktopStop:
    """Where a cut or corrupt file stopped.

    ``byte_offset`` is how many bytes of the file were read when parsing failed: exact for a file that is
    simply cut short, the end of the 64 KiB block holding the damage otherwise.  ``chat_index`` counts
    chats from 0; ``messages_in_chat`` is how many messages of that chat were imported and
    ``last_message_id`` the id of the last one.
    """

    byte_offset: int
    reason: str
    chat_id: int | None = None
    chat_index: int | None = None
    messages_in_chat: int = 0
    last_message_id: int | None = None


@dataclass(slots=True)
class DesktopImportReport:
    """What an import read, kept, skipped and did not recognise; live while the import runs."""

    path: Path
    bytes_total: int
    kind: str | None = None  # "chat" (one chat's export) | "account" (full export with chats.list)
    bytes_read: int = 0
    messages: int = 0
    chats: list[DesktopChat] = field(default_factory=list)
    naive_dates: int = 0  # messages whose date was local time without an offset (date_naive=True)
    media_unavailable: int = 0  # media rows whose file is not in the export (media_error set)
    skipped: int = 0  # messages that could not be imported (no id/date, "unsupported", malformed)
    skipped_examples: list[str] = field(default_factory=list)
    repaired_escapes: int = 0  # Desktop's invalid ``\\xHH`` escapes rewritten as ``\\u00HH``
    unknown_fields: Counter[str] = field(default_factory=Counter)
    unknown_entity_types: Counter[str] = field(default_factory=Counter)
    unknown_actions: Counter[str] = field(default_factory=Counter)
    unknown_reaction_types: Counter[str] = field(default_factory=Counter)
    stopped_at: DesktopStop | None = None

    @property
    def truncated(self) -> bool:
        """True when the file ended or broke before its last message."""
        return self.stopped_at is not None

    def summary(self) -> str:
        """One line for logs and the CLI."""
        text = f"{self.messages} messages from {len(self.chats)} chat(s) in {self.path.name}"
        if self.skipped:
            text += f", {self.skipped} skipped"
        if self.stopped_at is not None:
            stop = self.stopped_at
            text += f"; STOPPED at byte {stop.byte_offset} ({stop.reason})"
        return text


# --------------------------------------------------------------------------------------------------
# Mapping tables: Desktop's names -> the names the API path derives from Telethon class names.

# Desktop text part type -> entity type (Telethon MessageEntityX -> snake_case x); "plain" is not an entity.
ENTITY_TYPES: dict[str, str] = {
    "mention": "mention",
    "hashtag": "hashtag",
    "bot_command": "bot_command",
    "link": "url",
    "email": "email",
    "bold": "bold",
    "italic": "italic",
    "code": "code",
    "pre": "pre",
    "text_link": "text_url",
    "mention_name": "mention_name",
    "phone": "phone",
    "cashtag": "cashtag",
    "underline": "underline",
    "strikethrough": "strike",
    "blockquote": "blockquote",
    "bank_card": "bank_card",
    "spoiler": "spoiler",
    "custom_emoji": "custom_emoji",
    "unknown": "unknown",
}

# Desktop service "action" -> service_action (Telethon MessageActionX -> snake_case x).
SERVICE_ACTIONS: dict[str, str] = {
    "create_group": "chat_create",
    "edit_group_title": "chat_edit_title",
    "edit_group_photo": "chat_edit_photo",
    "delete_group_photo": "chat_delete_photo",
    "invite_members": "chat_add_user",
    "remove_members": "chat_delete_user",
    "join_group_by_link": "chat_joined_by_link",
    "join_group_by_request": "chat_joined_by_request",
    "create_channel": "channel_create",
    "migrate_to_supergroup": "chat_migrate_to",
    "migrate_from_group": "channel_migrate_from",
    "pin_message": "pin_message",
    "clear_history": "history_clear",
    "score_in_game": "game_score",
    "send_payment": "payment_sent",
    "refunded_payment": "payment_refunded",
    "phone_call": "phone_call",
    "take_screenshot": "screenshot_taken",
    "custom_action": "custom_action",
    "allow_sending_messages": "bot_allowed",
    "attach_menu_bot_allowed": "bot_allowed",
    "web_app_bot_allowed": "bot_allowed",
    "send_passport_values": "secure_values_sent",
    "joined_telegram": "contact_sign_up",
    "proximity_reached": "geo_proximity_reached",
    "group_call": "group_call",
    "invite_to_group_call": "invite_to_group_call",
    "group_call_scheduled": "group_call_scheduled",
    "set_messages_ttl": "set_messages_ttl",
    "edit_chat_theme": "set_chat_theme",
    "send_webview_data": "web_view_data_sent",
    "send_premium_gift": "gift_premium",
    "send_stars_gift": "gift_stars",
    "stars_prize": "prize_stars",
    "send_star_gift": "star_gift",
    "topic_created": "topic_create",
    "topic_edit": "topic_edit",
    "suggest_profile_photo": "suggest_profile_photo",
    "requested_peer": "requested_peer",
    "gift_code_prize": "gift_code",
    "giveaway_launch": "giveaway_launch",
    "giveaway_results": "giveaway_results",
    "set_chat_wallpaper": "set_chat_wall_paper",
    "set_same_chat_wallpaper": "set_chat_wall_paper",
    "boost_apply": "boost_apply",
}

# Service fields holding the id of the message the action refers to (the API puts it in reply_to).
_ACTION_REF_FIELDS = ("message_id", "game_message_id", "invoice_message_id")

# Desktop "media_type" of a file -> media_type; a file without one is a "document".
MEDIA_TYPES: dict[str, str] = {
    "sticker": "sticker",
    "video_message": "video_note",
    "voice_message": "voice",
    "animation": "animation",
    "video_file": "video",
    "audio_file": "audio",
}

# Every message field tgkit knows (mapped or deliberately dropped); anything else is counted in
# report.unknown_fields.  Taken from Telegram Desktop's export_output_json.cpp (2018-2025).
KNOWN_FIELDS: frozenset[str] = frozenset(
    """
    id type date date_unixtime edited edited_unixtime from from_id author forwarded_from forwarded_from_id
    saved_from reply_to_message_id reply_to_peer_id via_bot text text_entities inline_bot_buttons reactions
    photo photo_file_size width height media_spoiler self_destruct_period_seconds file file_name file_size
    thumbnail thumbnail_file_size media_type sticker_emoji performer title mime_type duration_seconds
    contact_information contact_vcard contact_vcard_file_size location_information
    live_location_period_seconds place_name address game_title game_description game_link
    invoice_information poll giveaway_information giveaway_results paid_stars_amount
    actor actor_id action message_id members inviter game_message_id score amount currency
    invoice_message_id recurring discard_reason information_text reason_app_id reason_app_name
    reason_domain values to to_id distance duration period schedule_date emoticon cost months new_title
    new_icon_emoji_id button_id peers gift_code boost_peer_id unclaimed via_giveaway winners stars boosts
    peer_name peer_id charge_id boost_peer_name is_unclaimed giveaway_msg_id transaction_id gift_id
    is_limited is_anonymous gift_text
    """.split()  # noqa: SIM905 - a word list reads better than 100 quoted strings
)

# The row layout this module builds; a schema change must be reflected here (and fails loudly).
_ROW_COLUMNS = (
    "chat_id", "id", "date", "sender_id", "sender_kind", "text", "entities", "reply_to_id", "thread_id",
    "fwd_peer_id", "fwd_peer_kind", "fwd_name", "fwd_date", "fwd_post_id", "views", "forwards", "replies",
    "edit_date", "grouped_id", "pinned", "post_author", "via_bot_id", "media_type", "media_mime",
    "media_size", "media_duration", "media_width", "media_height", "media_file_name", "media_file_id",
    "media_path", "media_error", "reactions", "reactions_total", "service_action", "date_naive",
)  # fmt: skip
assert _ROW_COLUMNS == MESSAGE_COLUMNS, "desktop.py row layout and the records schema drifted"
_ENTITIES_AT = _ROW_COLUMNS.index("entities")
_REACTIONS_AT = _ROW_COLUMNS.index("reactions")

_CHANNEL_TYPES = frozenset({"public_channel", "private_channel"})
# Desktop chat type -> the peer kind of the chat itself (and the chats table's kind)
_CHAT_PEER_KINDS = {
    "personal_chat": "user", "bot_chat": "user", "saved_messages": "user", "private_group": "chat",
    "private_supergroup": "channel", "public_supergroup": "channel", "private_channel": "channel",
    "public_channel": "channel",
}  # fmt: skip
_PEER_KINDS = ("user", "channel", "chat")
_PEER_RE = re.compile(r"([a-z_]+)(\d+)\Z")
_EPOCH_SLACK = 86_400  # old exports wrote edited="1970-01-01T.." (epoch in local time) for "never edited"
_MAX_EXAMPLES = 10


# --------------------------------------------------------------------------------------------------
# Reading the bytes

_X_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\x([0-9A-Fa-f]{2})")


class _Source:
    """``result.json``'s bytes as ijson reads them: counts bytes read, skips a UTF-8 BOM, and rewrites
    Desktop's ``\\xHH`` escapes (it writes control characters that way, which JSON forbids) as ``\\u00HH``.

    An escape is never split between two reads: a trailing run of backslashes is held back to the next one.
    """

    __slots__ = ("_carry", "_f", "_first", "eof", "pos", "repaired")

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.restart()

    def restart(self) -> None:
        """Read again from the start of the file."""
        self._f.seek(0)
        self._carry = b""
        self._first = True
        self.pos = 0
        self.eof = False
        self.repaired = 0

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        while True:
            data = self._f.read(n)
            self.pos += len(data)
            if self._first:
                self._first = False
                if data.startswith(b"\xef\xbb\xbf"):
                    data = data[3:]
            if not data:
                self.eof = True
                out, self._carry = self._carry, b""
                return self._repair(out)
            buf = self._carry + data if self._carry else data
            cut = len(buf)
            tail = buf.rfind(b"\\", max(0, cut - 3))
            if tail >= 0:  # a backslash in the last 3 bytes: hold back its whole run
                cut = tail
                while cut > 0 and buf[cut - 1] == 0x5C:
                    cut -= 1
            out, self._carry = buf[:cut], buf[cut:]
            if out:
                return self._repair(out)

    def _repair(self, out: bytes) -> bytes:
        if b"\\x" not in out:
            return out
        fixed, count = _X_ESCAPE.subn(rb"\1\\u00\2", out)
        self.repaired += count
        return fixed


def _resolve_input(path_or_dir: str | Path) -> Path:
    path = Path(path_or_dir).expanduser()
    if path.is_dir():
        candidate = path / "result.json"
        if candidate.is_file():
            return candidate
        if (path / "messages.html").exists() or (path / "export_results.html").exists():
            raise DesktopFormatError(
                f"{path} holds an HTML export; re-export in Telegram Desktop with format "
                "'Machine-readable JSON' to get result.json",
                path=path,
            )
        raise DesktopExportNotFound(
            f"no result.json in {path} (expected a Telegram Desktop JSON export)", path=path
        )
    if not path.is_file():
        raise DesktopExportNotFound(f"{path} does not exist", path=path)
    return path


def _sniff(path: Path) -> None:
    """Reject what is clearly not a Desktop JSON export before parsing, with a message that names the fix."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise DesktopFormatError(f"cannot read {path}: {exc.strerror or exc}", path=path) from exc
    if not head.strip():
        raise DesktopFormatError(f"{path} is empty", path=path)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head[:64]:
        raise DesktopFormatError(
            f"{path} is UTF-16/UTF-32 encoded; Telegram Desktop writes UTF-8 (was it re-saved by an editor?)",
            path=path,
        )
    body = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    first = body.lstrip()[:1]
    if first == b"<":
        raise DesktopFormatError(
            f"{path} is HTML, not JSON; export with format 'Machine-readable JSON' in Telegram Desktop",
            path=path,
        )
    if first != b"{":
        raise DesktopFormatError(f"{path} is not a JSON object (starts with {first!r})", path=path)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason != "unexpected end of data":  # a character cut at the 4 KiB boundary is fine
            raise DesktopFormatError(
                f"{path} is not UTF-8 (byte {exc.start}: {exc.reason}); Telegram Desktop writes UTF-8",
                path=path,
            ) from exc


# --------------------------------------------------------------------------------------------------
# One message -> one row


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _utf16_len(s: str) -> int:
    # Telegram counts UTF-16 code units: characters outside the BMP (most emoji) count twice.
    return len(s) if s.isascii() else len(s.encode("utf-16-le")) // 2


def _naive_epoch(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


class _Converter:
    """Turns Desktop message dicts into rows in ``MESSAGE_COLUMNS`` order (entities/reactions as tuples)."""

    def __init__(self, root: Path, report: DesktopImportReport) -> None:
        self.root_real = os.path.realpath(root)
        self.root_prefix = os.path.join(self.root_real, "")
        self.report = report
        self.chat_id = 0
        self.chat_is_channel = False
        self._peers: dict[Any, tuple[int | None, str | None]] = {}
        # names the file shows for peers, per chat: {chat_id: {(kind, id): name}} (the peers table)
        self.names: dict[int, dict[tuple[str, int], str]] = {}

    def set_chat(self, chat: DesktopChat) -> None:
        self.chat_id = chat.id
        self.chat_is_channel = chat.type in _CHANNEL_TYPES
        self._peers.clear()
        kind = _CHAT_PEER_KINDS.get(chat.type or "")
        if kind is not None and chat.name:
            self.names.setdefault(chat.id, {})[(kind, chat.id)] = chat.name

    def name(self, peer: tuple[int | None, str | None], name: Any) -> None:
        """Remember the name the file shows beside a peer id (``from``, ``actor``, ``forwarded_from``)."""
        pid, kind = peer
        if pid is not None and kind in _PEER_KINDS and isinstance(name, str) and name:
            self.names.setdefault(self.chat_id, {})[(kind, pid)] = name

    # -- pieces

    def peer(self, value: Any) -> tuple[int | None, str | None]:
        if value is None:
            return None, None
        hit = self._peers.get(value)
        if hit is not None:
            return hit
        if isinstance(value, int) and not isinstance(value, bool):
            # Files before 2021 carry bare numbers: users, or the channel itself for channel posts.
            result: tuple[int | None, str | None] = (
                value,
                "channel" if self.chat_is_channel and value == self.chat_id else "user",
            )
        elif isinstance(value, str) and value.isdigit():
            return self.peer(int(value))
        elif isinstance(value, str) and (match := _PEER_RE.match(value)):
            result = (int(match.group(2)), match.group(1))  # unknown prefixes are kept raw
        else:
            result = (None, None)
        self._peers[value] = result
        return result

    def text(self, text: Any, parts: Any) -> tuple[str | None, list[tuple[Any, ...]] | None]:
        if not isinstance(parts, list):
            if not isinstance(text, list):
                return (text if isinstance(text, str) or text is None else str(text)), None
            parts = text
        elif isinstance(text, str) and (
            not parts or (len(parts) == 1 and isinstance(parts[0], dict) and parts[0].get("type") == "plain")
        ):
            return text, None  # the common case: plain text, no entities
        pieces: list[str] = []
        entities: list[tuple[Any, ...]] = []
        offset = 0
        piece: Any
        for part in parts:
            if isinstance(part, str):
                piece, kind = part, None
            elif isinstance(part, dict):
                piece, kind = part.get("text"), part.get("type")
                if not isinstance(piece, str):
                    piece = "" if piece is None else str(piece)
            else:
                continue
            length = _utf16_len(piece)
            if kind is not None and kind != "plain":
                name = ENTITY_TYPES.get(kind)
                if name is None:
                    name = str(kind)
                    self.report.unknown_entity_types[name] += 1
                language = part.get("language")
                entities.append(
                    (
                        name,
                        offset,
                        length,
                        part.get("href"),
                        _int(part.get("user_id")),
                        _int(part.get("document_id")),
                        language if isinstance(language, str) else None,
                    )
                )
            pieces.append(piece)
            offset += length
        joined = "".join(pieces)
        if isinstance(text, str) and not entities:
            return text, None
        return joined, (entities or None)

    def media_path(self, value: Any) -> tuple[str | None, str | None]:
        if not isinstance(value, str) or not value:
            return None, "no file path in the export"
        if value.startswith("(") and value.endswith(")"):
            return None, value[1:-1]  # Desktop's placeholder: "File not included. Change data ..."
        # realpath follows symlinks, so a link pointing outside the export is caught too
        full = os.path.realpath(os.path.join(self.root_real, value))
        if not full.startswith(self.root_prefix):
            return None, f"path escapes the export folder: {value}"
        if not os.path.isfile(full):
            return None, f"file missing from the export folder: {value}"
        return full[len(self.root_prefix) :].replace(os.sep, "/"), None

    def reactions(self, items: Any) -> tuple[list[tuple[Any, ...]] | None, int | None]:
        if not isinstance(items, list):
            return None, None
        out: list[tuple[Any, ...]] = []
        total = 0
        for r in items:
            if not isinstance(r, dict):
                continue
            count = _int(r.get("count")) or 0
            kind = r.get("type")
            if kind == "emoji":
                out.append((r.get("emoji"), None, count))
            elif kind == "custom_emoji":
                out.append((None, _int(r.get("document_id")), count))
            elif kind == "paid":
                out.append(("paid", None, count))  # as the API path stores ReactionPaid
            else:  # as the API path: the raw type name in ``emoji``
                self.report.unknown_reaction_types[str(kind)] += 1
                out.append((str(kind), _int(r.get("document_id")), count))
            total += count
        return out, total

    # -- the row

    def row(self, m: Any) -> list[Any] | None:
        try:
            return self._row(m)
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
            mid = m.get("id") if isinstance(m, dict) else None
            self.skip(f"chat {self.chat_id} message {mid}: {type(exc).__name__}: {exc}")
            return None

    def skip(self, why: str) -> None:
        report = self.report
        report.skipped += 1
        if len(report.skipped_examples) < _MAX_EXAMPLES:
            report.skipped_examples.append(why)

    def _row(self, m: dict[str, Any]) -> list[Any] | None:
        get = m.get
        report = self.report
        mid = _int(get("id"))
        kind = get("type")
        if kind == "unsupported" or mid is None:
            self.skip(f"chat {self.chat_id} message {get('id')}: type {kind!r} without content")
            return None
        naive = False
        date: int | None
        raw = get("date_unixtime")
        if raw is not None:
            date = int(raw)
        else:
            date = _naive_epoch(get("date"))
            if date is None:
                self.skip(f"chat {self.chat_id} message {mid}: no date")
                return None
            naive = True
            report.naive_dates += 1
        raw = get("edited_unixtime")
        if raw is not None:
            edit_date: int | None = int(raw)
        else:
            edit_date = _naive_epoch(get("edited"))
            if edit_date is not None and abs(edit_date) <= _EPOCH_SLACK:
                edit_date = None

        service = kind == "service"
        text, entities = self.text(get("text"), get("text_entities"))
        reply_to = _int(get("reply_to_message_id"))
        action = None
        if service:
            sender_id, sender_kind = self.peer(get("actor_id"))
            self.name((sender_id, sender_kind), get("actor"))
            if not text:
                text = None  # the API's MessageService has no text
            raw_action = get("action")
            if raw_action is None:
                raw_action = "custom_action" if "information_text" in m else None
            if raw_action is not None:
                action = SERVICE_ACTIONS.get(raw_action)
                if action is None:
                    action = str(raw_action)
                    report.unknown_actions[action] += 1
            for ref_field in _ACTION_REF_FIELDS:
                ref = get(ref_field)
                if ref is not None:
                    reply_to = _int(ref)
                    break
        else:
            sender_id, sender_kind = self.peer(get("from_id"))
            self.name((sender_id, sender_kind), get("from"))

        fwd_name = get("forwarded_from")
        fwd_id, fwd_kind = self.peer(get("forwarded_from_id"))
        self.name((fwd_id, fwd_kind), fwd_name)

        media_type = mime = size = duration = width = height = file_name = path = error = None
        if not service:  # the API's MessageService carries no media (a new group photo is in the action)
            if "photo" in m:
                media_type = "photo"
                size = _int(get("photo_file_size"))
                path, error = self.media_path(get("photo"))
            elif "file" in m or "media_type" in m:
                raw_media = get("media_type")
                media_type = "document" if raw_media is None else MEDIA_TYPES.get(raw_media, str(raw_media))
                mime = get("mime_type")
                size = _int(get("file_size"))
                file_name = get("file_name")
                seconds = get("duration_seconds")
                duration = float(seconds) if seconds is not None else None
                path, error = self.media_path(get("file"))
            elif "poll" in m:
                media_type = "poll"
            elif "contact_information" in m:
                media_type = "contact"
            elif "location_information" in m or "place_name" in m:
                media_type = "geo"
            elif (
                "game_title" in m
                or "invoice_information" in m
                or "giveaway_information" in m
                or "giveaway_results" in m
                or "paid_stars_amount" in m
            ):
                media_type = "other"
            if media_type is not None:
                width = _int(get("width"))
                height = _int(get("height"))
            if error is not None:
                report.media_unavailable += 1

        reactions, reactions_total = self.reactions(get("reactions"))
        if not m.keys() <= KNOWN_FIELDS:
            for key in m.keys() - KNOWN_FIELDS:
                report.unknown_fields[key] += 1
        return [
            self.chat_id, mid, date, sender_id, sender_kind, text, entities, reply_to, None,
            fwd_id, fwd_kind, fwd_name, None, None, None, None, None,
            edit_date, None, None, get("author"), None, media_type, mime,
            size, duration, width, height, file_name, None,
            path, error, reactions, reactions_total, action, naive,
        ]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Streaming the file: one chat (fast path) or a full-account export (event path)

_CHAT_LISTS = {"chats": False, "left_chats": True}  # top-level key -> "left" flag


class DesktopBatches(Iterator[tuple[int, ColumnBatch]]):
    """Iterator of ``(chat_id, ColumnBatch)`` over a Desktop export; ``.report`` fills in as it runs.

    A batch never mixes chats and holds at most ``batch_size`` rows.  Closing the iterator (or finishing
    it) closes the file.  On a cut file the iterator ends normally after the last complete message and
    emits :class:`DesktopTruncatedWarning`; on non-UTF-8 content it raises :class:`DesktopFormatError`.
    """

    def __init__(
        self,
        path_or_dir: str | Path,
        *,
        batch_size: int = 5000,
        on_progress: Callable[[DesktopImportReport], Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        path = _resolve_input(path_or_dir)
        _sniff(path)
        self.path = path
        self.report = DesktopImportReport(path=path, bytes_total=path.stat().st_size)
        self._batch_size = batch_size
        self._on_progress = on_progress
        self._converter: _Converter | None = None
        self._gen = self._batches()

    def take_peers(self, chat_id: int, seen: int) -> list[tuple[Any, ...]]:
        """The ``peers`` rows of the names read so far in chat ``chat_id`` (each handed over once)."""
        names = self._converter.names.pop(chat_id, {}) if self._converter is not None else {}
        return [_peer_row(kind, pid, name, seen) for (kind, pid), name in names.items()]

    def __iter__(self) -> DesktopBatches:
        return self

    def __next__(self) -> tuple[int, ColumnBatch]:
        return next(self._gen)

    def close(self) -> None:
        """Stop early and close the file."""
        self._gen.close()

    # -- rows and batches

    def rows(self) -> Iterator[list[Any]]:
        """The converted rows (``MESSAGE_COLUMNS`` order), one chat after another; the batches' source."""
        report = self.report
        conv = self._converter = _Converter(self.path.parent, report)
        chat: DesktopChat | None = None
        src: _Source | None = None
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed below; an OSError must become a TgkitError
        except OSError as exc:
            raise DesktopFormatError(
                f"cannot read {self.path}: {exc.strerror or exc}", path=self.path, report=report
            ) from exc
        try:
            with f:
                src = _Source(f)
                for chat_now, message in self._messages(src):
                    if chat_now is not chat:
                        chat = chat_now
                        conv.set_chat(chat)
                    row = conv.row(message)
                    if row is None:
                        continue
                    chat.messages += 1
                    chat.last_message_id = row[1]
                    report.messages += 1
                    report.bytes_read = src.pos
                    yield row
        except OSError as exc:  # an I/O error mid-file (a disk or network share failing)
            raise DesktopFormatError(
                f"reading {self.path} failed after {report.bytes_read} bytes: {exc.strerror or exc}",
                path=self.path,
                report=report,
            ) from exc
        finally:
            if src is not None:
                report.bytes_read = src.pos
                report.repaired_escapes = src.repaired

    def _batches(self) -> Generator[tuple[int, ColumnBatch], None, None]:
        report = self.report
        size = self._batch_size
        on_progress = self._on_progress
        rows: list[list[Any]] = []
        chat_id: int | None = None
        for row in self.rows():
            if (row[0] != chat_id or len(rows) >= size) and rows:
                yield chat_id, _to_batch(rows)  # type: ignore[misc]
                if on_progress is not None:
                    on_progress(report)
                rows = []
            chat_id = row[0]
            rows.append(row)
        if rows:
            yield chat_id, _to_batch(rows)  # type: ignore[misc]
        if on_progress is not None:
            on_progress(report)

    # -- parsing

    def _messages(self, src: _Source) -> Iterator[tuple[DesktopChat, dict[str, Any]]]:
        report = self.report
        events = ijson.parse(src, use_float=True)
        header: dict[str, Any] = {}
        try:
            for prefix, event, value in events:
                if prefix == "" and event == "map_key":
                    if value == "messages":
                        report.kind = "chat"
                        break
                    if value in _CHAT_LISTS:
                        report.kind = "account"
                        break
                elif "." not in prefix and prefix in ("name", "type", "id"):
                    header[prefix] = value
        except ijson.JSONError as exc:
            self._stop(exc, src, started=False)
            return
        if report.kind is None:
            raise DesktopFormatError(
                f"{self.path} is JSON but not a Telegram Desktop export (no 'messages' or 'chats')",
                path=self.path,
                report=report,
            )
        try:
            if report.kind == "chat":
                chat = self._new_chat(header, left=False)
                # Start again from byte 0 and let the C parser build the messages: ~2x faster than events.
                del events
                src.restart()
                for message in ijson.items(src, "messages.item", use_float=True):
                    yield chat, message
            else:
                yield from self._account_messages(events)
        except ijson.JSONError as exc:
            self._stop(exc, src, started=True)

    def _stop(self, exc: Exception, src: _Source, *, started: bool) -> None:
        report = self.report
        reason = _stop_reason(exc)
        report.bytes_read = src.pos
        if "UTF8" in reason and not (src.eof and _ends_mid_character(self.path)):
            raise DesktopFormatError(
                f"{self.path} is not valid UTF-8 near byte {src.pos} (Telegram Desktop writes UTF-8; "
                f"was the file re-encoded?): {reason}",
                path=self.path,
                report=report,
            ) from exc
        if not started and "premature EOF" not in reason:
            raise DesktopFormatError(
                f"{self.path} is not valid JSON: {reason}", path=self.path, report=report
            ) from exc
        chat = report.chats[-1] if report.chats else None
        stop = DesktopStop(
            byte_offset=src.pos,
            reason=reason,
            chat_id=chat.id if chat else None,
            chat_index=len(report.chats) - 1 if chat else None,
            messages_in_chat=chat.messages if chat else 0,
            last_message_id=chat.last_message_id if chat else None,
        )
        report.stopped_at = stop
        warnings.warn(
            DesktopTruncatedWarning(
                f"{self.path.name} stopped at byte {src.pos} of {report.bytes_total} ({reason}); "
                f"imported {report.messages} complete message(s) before it",
                report,
            ),
            stacklevel=2,
        )

    def _new_chat(self, header: dict[str, Any], *, left: bool) -> DesktopChat:
        chat_id = _int(header.get("id"))
        if chat_id is None:
            raise DesktopFormatError(
                f"{self.path}: chat #{len(self.report.chats)} ({header.get('name')!r}) has no numeric 'id' "
                "before its messages",
                path=self.path,
                report=self.report,
            )
        name, kind = header.get("name"), header.get("type")
        chat = DesktopChat(
            id=chat_id,
            name=name if isinstance(name, str) else None,
            type=kind if isinstance(kind, str) else None,
            left=left,
        )
        self.report.chats.append(chat)
        return chat

    def _account_messages(self, events: Iterator[tuple[str, str, Any]]) -> Iterator[tuple[DesktopChat, Any]]:
        # ijson's parse events arrive in blocks; the C builder assembles messages (fed with map(), no Python
        # per event) and Python only looks at the few events that open a chat and carry its name/type/id.
        backend = ijson.get_backend(ijson.backend_name)
        built: list[Any] = ijson.sendable_list()
        starts = {(f"{key}.list.item", "start_map", None): left for key, left in _CHAT_LISTS.items()}
        builders = {
            left: backend.items_basecoro(built, f"{key}.list.item.messages.item").send
            for key, left in _CHAT_LISTS.items()
        }
        state = "outside"  # -> "header" -> "messages" -> "after" -> "outside"
        base = ""  # prefix of the current chat object
        left = False
        header: dict[str, Any] = {}
        chat: DesktopChat | None = None
        error: Exception | None = None
        while True:
            block: list[tuple[str, str, Any]] = []
            try:
                block.extend(islice(events, 4096))  # keeps what was parsed before an error
            except ijson.JSONError as exc:
                error = exc
            if not block and error is None:
                break
            i, n = 0, len(block)
            while i < n:
                if state == "outside":
                    found = n
                    for marker, is_left in starts.items():
                        at = _index(block, marker, i)
                        if at < found:
                            found, left = at, is_left
                    if found == n:
                        break
                    base = block[found][0]
                    header = {}
                    state, i = "header", found + 1
                elif state == "header":
                    while i < n:
                        prefix, event, value = block[i]
                        i += 1
                        if prefix == base:
                            if event == "map_key" and value == "messages":
                                chat = self._new_chat(header, left=left)
                                state = "messages"
                                break
                            if event == "end_map":  # a chat without messages
                                self._new_chat(header, left=left)
                                state = "outside"
                                break
                        elif prefix.startswith(base) and prefix.count(".") == base.count(".") + 1:
                            header[prefix.rpartition(".")[2]] = value
                elif state == "messages":
                    end = _index(block, (base + ".messages", "end_array", None), i)
                    deque(map(builders[left], block[i:end]), maxlen=0)
                    assert chat is not None
                    for message in built:
                        yield chat, message
                    built.clear()
                    if end < n:
                        state = "after"
                    i = end + 1
                else:  # "after": skip whatever follows messages inside the chat object
                    end = _index(block, (base, "end_map", None), i)
                    if end < n:
                        state = "outside"
                    i = end + 1
            if error is not None:
                raise error


def _index(block: list[tuple[str, str, Any]], marker: tuple[str, str, Any], start: int) -> int:
    try:
        return block.index(marker, start)
    except ValueError:
        return len(block)


def _stop_reason(exc: Exception) -> str:
    return str(exc).split("\n", 1)[0].strip() or type(exc).__name__


def _ends_mid_character(path: Path) -> bool:
    """True when the file's last bytes are the start of a UTF-8 character cut short (a cut file)."""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 4))
        tail = f.read()
    for back in range(1, len(tail) + 1):
        byte = tail[-back]
        if byte & 0xC0 != 0x80:  # the last byte that starts a character
            need = 4 if byte >= 0xF0 else 3 if byte >= 0xE0 else 2 if byte >= 0xC0 else 1
            return back < need
    return False


_FLAT_COLUMNS = tuple(
    (i, name) for i, name in enumerate(_ROW_COLUMNS) if i not in (_ENTITIES_AT, _REACTIONS_AT)
)


def _to_batch(rows: list[list[Any]]) -> ColumnBatch:
    # Transposing with zip() is ~3x faster than 34 list.append calls per row.
    batch = ColumnBatch()
    columns = list(zip(*rows))
    for i, name in _FLAT_COLUMNS:
        batch.cols[name].extend(columns[i])
    add_entities, add_reactions = batch.add_entities, batch.add_reactions
    for row in rows:
        add_entities(row[_ENTITIES_AT])
        add_reactions(row[_REACTIONS_AT])
    batch.n = len(rows)
    return batch


def _peer_row(kind: str, pid: int, name: str, seen: int) -> tuple[Any, ...]:
    row: dict[str, Any] = {"id": pid, "kind": kind, "name": name, "first_seen": seen, "last_seen": seen,
                           "min": True, "source": "telegram_desktop"}  # fmt: skip
    if kind != "user":
        row["title"] = name  # a user's display name is not split into first/last by Desktop
    return tuple(row.get(c) for c in PEER_COLUMNS)


def iter_desktop_batches(
    path_or_dir: str | Path,
    *,
    batch_size: int = 5000,
    on_progress: Callable[[DesktopImportReport], Any] | None = None,
) -> DesktopBatches:
    """Stream a Telegram Desktop export as ``(chat_id, ColumnBatch)`` pairs, at most ``batch_size`` rows each.

    ``path_or_dir`` is ``result.json`` or the export folder holding it.  ``on_progress(report)`` is called
    after every batch (``report.bytes_read``/``bytes_total``/``messages``).  The returned iterator's
    ``.report`` is a :class:`DesktopImportReport`.  Format errors that can be seen up front raise here.
    """
    return DesktopBatches(path_or_dir, batch_size=batch_size, on_progress=on_progress)


class DesktopRecords(Records):
    """:class:`~tgkit.records.Records` from a Desktop export, with the import's ``.report``."""

    __slots__ = ("report",)

    def __init__(self, items: Any = (), report: DesktopImportReport | None = None) -> None:
        super().__init__(items)
        self.report = report


@dataclass(slots=True)
class DesktopImportResult:
    """What ``import_desktop(..., out=DIR)`` wrote: the dataset, its chats, the counts, the read report."""

    path: Path  # the dataset folder
    source: Path  # the result.json that was read
    report: DesktopImportReport = field(repr=False)
    messages: int = 0  # rows written by this run
    already_present: int = 0  # rows not written: at or below their chat's checkpoint (imported before)
    parts_written: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    # [privacy] chat id in the file -> id it is stored under (its pseudonym when pseudonymised)
    stored_ids: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def chats(self) -> list[DesktopChat]:
        """The chats read (``messages`` = rows read per chat, written or already present)."""
        return self.report.chats

    @property
    def truncated(self) -> bool:
        """True when ``result.json`` ended or broke before its last message (see ``stopped_at``)."""
        return self.report.stopped_at is not None

    @property
    def stopped_at(self) -> DesktopStop | None:
        return self.report.stopped_at

    def open(self) -> pl.LazyFrame:
        """The rows of this import's chats in the dataset (all runs), lazily."""
        ids = sorted({self.stored_ids.get(c.id, c.id) for c in self.report.chats})
        return open_dataset(self.path).filter(pl.col("chat_id").is_in(ids))

    def summary(self) -> str:
        """One line for logs and the CLI."""
        text = (
            f"{self.messages} new messages from {len(self.chats)} chat(s) of {self.source.name} "
            f"into {self.path} in {self.seconds:.1f}s"
        )
        if self.already_present:
            text += f"; {self.already_present} already in the dataset"
        if self.report.skipped:
            text += f"; {self.report.skipped} skipped"
        if self.report.stopped_at is not None:
            stop = self.report.stopped_at
            text += f"; STOPPED at byte {stop.byte_offset} ({stop.reason})"
        return text


class _DatasetWriter:
    """Commits batches as parts of their chat's partition (:class:`~tgkit.dataset.ChatPartition`, the
    writer ``export_chat`` uses too), skipping ids its checkpoint already holds; the names the file
    shows go to ``peers``, the chat's header to ``chats``."""

    def __init__(
        self,
        root: Path,
        result: DesktopImportResult,
        batches: DesktopBatches,
        pseudonymiser: Pseudonymiser | None = None,
    ) -> None:
        self.root = root
        self.pseudonymiser = pseudonymiser  # [privacy]
        self.result = result
        self.batches = batches
        self.chat_id: int | None = None
        self.part: ChatPartition | None = None
        self.cp: Checkpoint | None = None
        self.floor = 0  # the checkpoint's last_id when this run reached the chat
        self.chat_type: str | None = None
        # media_path is relative to the Desktop export folder: the manifest and chats row say which one
        self.media_root = str(result.source.parent.resolve())
        self.seen = int(time.time())

    @property
    def manifest_extra(self) -> dict[str, Any]:
        return {"source": "telegram_desktop", "type": self.chat_type, "media_root": self.media_root}

    def _open(self, chat_id: int) -> None:
        self.close()
        chat = next((c for c in reversed(self.result.report.chats) if c.id == chat_id), None)
        privacy = None  # [privacy] rows pseudonymised by the partition; media paths (Desktop's files) nulled
        if self.pseudonymiser is not None:
            kind = _CHAT_PEER_KINDS.get(chat.type or "") if chat is not None else None
            privacy = self.pseudonymiser.for_chat(chat_id, kind, media_paths=False)
        part = ChatPartition(self.root, chat_id, source="telegram_desktop", privacy=privacy)
        self.result.stored_ids[chat_id] = part.chat_id
        cp = part.start(part.load())  # CacheError for a corrupt checkpoint or another chat's
        if cp.title is None and chat is not None:
            cp.title = chat.name
        self.chat_id, self.part, self.cp, self.floor = chat_id, part, cp, cp.last_id
        self.chat_type = chat.type if chat is not None else None
        part.manifest_extra = self.manifest_extra
        part.set_chat(
            kind=_CHAT_PEER_KINDS.get(self.chat_type or ""), title=chat.name if chat else None,
            type=self.chat_type, source="telegram_desktop", media_root=self.media_root,
        )  # fmt: skip

    def write(self, chat_id: int, batch: ColumnBatch) -> int:
        """Write one batch (one chat); returns the rows written."""
        if chat_id != self.chat_id:
            self._open(chat_id)
        part, cp = self.part, self.cp
        assert part is not None and cp is not None
        part.observe_peers(self.batches.take_peers(chat_id, self.seen))
        table = batch.to_arrow()
        if self.floor:
            table = table.filter(pc.greater(table["id"], self.floor))
            self.result.already_present += batch.n - table.num_rows
        if not table.num_rows:
            return 0
        last_id = pc.max(table["id"]).as_py()
        with _write_errors(part):
            self.cp, nbytes = part.write_part(cp, table, last_id=last_id)
        self.result.parts_written += 1
        self.result.bytes_written += nbytes
        self.result.messages += table.num_rows
        return table.num_rows

    def close(self) -> None:
        """Commit the current chat's peers and chats rows (also when no new rows were written)."""
        part, cp = self.part, self.cp
        if part is None or cp is None:
            return
        part.observe_peers(self.batches.take_peers(part.chat_id, self.seen))
        with _write_errors(part):
            self.cp = part.commit_tables(cp)
        self.part = self.cp = None
        self.chat_id = None


@contextlib.contextmanager
def _write_errors(part: ChatPartition) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise ExportError(
            f"writing {part.dir} failed: {exc.strerror or exc} (committed parts are kept; "
            "rerun the import to continue)",
            checkpoint=part.checkpoint_path,
        ) from exc


@overload
def import_desktop(
    path_or_dir: str | Path,
    *,
    out: None = None,
    progress: ProgressMode = True,
    batch_size: int = ...,
) -> DesktopRecords: ...


@overload
def import_desktop(
    path_or_dir: str | Path,
    *,
    out: str | os.PathLike[str],
    progress: ProgressMode = True,
    batch_size: int = ...,
    pseudonymise: str | os.PathLike[str] | Pseudonymiser | None = ...,
) -> DesktopImportResult: ...


def import_desktop(
    path_or_dir: str | Path,
    *,
    out: str | os.PathLike[str] | None = None,
    progress: ProgressMode = True,
    batch_size: int = 10_000,
    pseudonymise: str | os.PathLike[str] | Pseudonymiser | None = None,
) -> DesktopRecords | DesktopImportResult:
    """Import a Telegram Desktop export (``result.json`` or its folder) with the schema of an API export.

    Without ``out``: returns :class:`DesktopRecords` in memory (``.to_polars()``, ``.report``).
    With ``out=DIR``: streams ``batch_size`` rows at a time into the Parquet dataset at ``DIR`` (the
    layout of :func:`tgkit.export_chat`: a partition per chat, parts committed by its checkpoint, a
    manifest) and returns a :class:`DesktopImportResult` (``.open()`` for a LazyFrame).  Messages whose
    id is at or below the chat's checkpoint are skipped, so importing the same file again adds nothing
    and a newer export of the chat adds only its new messages.
    A cut file imports everything before the cut and warns (:class:`DesktopTruncatedWarning`).
    ``progress``: as for the exporters (True/"auto", "text", "widget", False, or a callable).
    Errors are :class:`~tgkit.errors.TgkitError` subclasses: :class:`DesktopFormatError` (unreadable
    input), ``CacheError`` (a corrupt checkpoint, or one of another chat), ``ExportError`` (``out``
    unusable, a write failed), ``ConfigError`` (a bad argument).
    ``pseudonymise=KEYFILE`` (with ``out``) writes the rows pseudonymised as ``export_chat`` does
    (docs/PRIVACY.md); ``media_path`` is then null (the files stay in the Desktop folder, unrenamed).
    """
    from .jupyter import make_progress

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if out is not None:
        return _import_to_dataset(
            path_or_dir, out, progress=progress, batch_size=batch_size, pseudonymise=pseudonymise
        )
    if pseudonymise is not None:
        raise ConfigError("pseudonymise= needs out=DIR (records in memory are not pseudonymised)")
    batches = DesktopBatches(path_or_dir)
    report = batches.report
    records = DesktopRecords(report=report)
    items = records._items
    total = max(1, report.bytes_total)
    with make_progress(progress, desc=f"importing {batches.path.name}") as bar, gc_paused():
        pending = 0
        for row in batches.rows():
            ents = row[_ENTITIES_AT]
            if ents is not None:
                row[_ENTITIES_AT] = [Entity(*e) for e in ents]
            rx = row[_REACTIONS_AT]
            if rx is not None:
                row[_REACTIONS_AT] = [Reaction(*r) for r in rx]
            items.append(ExportedMessage(*row))
            pending += 1
            if pending >= 5000:
                bar.set_stage(f"read {100 * report.bytes_read // total}% of {batches.path.name}")
                bar.update(messages=pending)
                pending = 0
        bar.update(messages=pending)
    return records


def _import_to_dataset(
    path_or_dir: str | Path,
    out: str | os.PathLike[str],
    *,
    progress: ProgressMode,
    batch_size: int,
    pseudonymise: str | os.PathLike[str] | Pseudonymiser | None = None,
) -> DesktopImportResult:
    from .jupyter import make_progress

    started = time.perf_counter()
    batches = DesktopBatches(path_or_dir, batch_size=batch_size)  # bad input fails before `out` is made
    root, pz = prepare_output(out, pseudonymise)  # upgrades a layout-1 dataset; [privacy] checks the key
    report = batches.report
    result = DesktopImportResult(path=root, source=batches.path, report=report)
    writer = _DatasetWriter(root, result, batches, pz)
    total = max(1, report.bytes_total)
    try:
        with make_progress(progress, desc=f"importing {batches.path.name}") as bar:
            for chat_id, batch in batches:
                written = writer.write(chat_id, batch)
                bar.set_stage(f"read {100 * report.bytes_read // total}% of {batches.path.name}")
                bar.update(messages=written)
            writer.close()
    finally:
        batches.close()
        result.seconds = time.perf_counter() - started
    return result
