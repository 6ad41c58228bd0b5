"""Keyed pseudonymisation of tgkit tables (messages, peers, chats): consistent, complete, repeatable.

A :class:`Pseudonymiser` holds a secret key (read from a key file, created when missing: 32 random bytes,
mode 0600) and turns identifying values into stable pseudonyms with HMAC-SHA256:

* user ids -> ``2**62 | HMAC(key, "user-id", id)[:8] & (2**62 - 1)``: 63-bit positive ids at or above 2**62.
  Telegram's ids have at most 52 significant bits, so a pseudonym can never equal a real id, and a
  column that mixes kept channel ids with pseudonymised user ids stays unambiguous.  The same id gives the
  same pseudonym in every column and table (sender_id, fwd_peer_id, via_bot_id, entities.user_id,
  chat_id of a private chat, peers.id, chats.id), so grouping and joins keep working.
* usernames (also ``@mentions`` and ``t.me/...`` links inside text) -> ``u_<token>``, derived from the
  lower-cased username; names (first/last names, ``post_author``, ``fwd_name``) -> ``User <token>`` or
  ``Name <token>``; phone numbers are removed; user-chosen file names -> ``file_<token>.<ext>``.
* Public speakers (channels and groups) are kept by default (``keep=("channels",)``); ``keep=()``
  pseudonymises their ids, titles and usernames too.

Whether an ``@handle`` in a text is a user or a channel is looked up in the peers the pseudonymiser has
learned (:meth:`Pseudonymiser.learn_peers`, from the peers/chats tables); an unknown handle is treated as a
user's and replaced (the safe default).  See docs/PRIVACY.md for what this does and does not protect.

Frame-level transforms (:meth:`~Pseudonymiser.messages`, :meth:`~Pseudonymiser.peers`,
:meth:`~Pseudonymiser.chats`) accept Polars DataFrames, LazyFrames and Arrow tables/record batches and
return the same type; :func:`pseudonymise` applies them to a whole dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from base64 import b32encode
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._files import atomic_write_bytes
from .dataset import (
    _FILE_COLUMNS,
    CHATS_DIR,
    CHECKPOINT_NAME,
    DICTIONARY_COLUMNS,
    MESSAGES_DIR,
    PEERS_DIR,
    STATE_DIR,
    Checkpoint,
    _checkpoints,
    _legacy_chat_row,
    open_dataset,
    prepare_output_dir,
    read_manifest,
)
from .dataset import _write_manifest as _write_dataset_manifest
from .errors import CacheError, ConfigError
from .records import (
    CHAT_DATE_COLUMNS,
    MESSAGE_COLUMNS,
    PEER_COLUMNS,
    PEER_DATE_COLUMNS,
    arrow_schema,
    rows_to_arrow,
    table_schema,
)

__all__ = [
    "KEY_BYTES",
    "MESSAGE_RULES",
    "METHOD",
    "PSEUDONYM_ID_BASE",
    "Pseudonymiser",
    "pseudonymise",
]

METHOD = "hmac-sha256/v1"
KEY_BYTES = 32
PSEUDONYM_ID_BASE = 1 << 62  # real Telegram ids have at most 52 significant bits
_ID_MASK = PSEUDONYM_ID_BASE - 1
_KEEP_OPTIONS = frozenset({"channels"})
_PEER_KINDS = ("user", "channel", "chat")
_CACHE_LIMIT = 1_000_000  # memoised pseudonyms per kind before the memo starts over

# What happens to each message column.  A test checks every schema column has a rule, so adding a column
# forces a decision here; a column a frame has that is not listed is nulled unless it is boolean/temporal.
MESSAGE_RULES: dict[str, str] = {
    "chat_id": "peer id: pseudonymised when the chat is a user's (private chat) or not kept",
    "id": "kept (message id)",
    "date": "kept",
    "sender_id": "peer id of kind sender_kind (unknown kind: treated as a user)",
    "sender_kind": "kept",
    "text": "@mentions, t.me/tg:// links of users, mention-name/phone/email entity spans replaced",
    "entities": "offsets/lengths recomputed (UTF-16); user_id pseudonymised; urls rewritten",
    "reply_to_id": "kept (message id)",
    "thread_id": "kept (message id)",
    "fwd_peer_id": "peer id of kind fwd_peer_kind (unknown kind: treated as a user)",
    "fwd_peer_kind": "kept",
    "fwd_name": "name pseudonym unless it names a kept channel (fwd_peer_kind kept and fwd_peer_id set)",
    "fwd_date": "kept",
    "fwd_post_id": "kept (message id)",
    "views": "kept",
    "forwards": "kept",
    "replies": "kept",
    "edit_date": "kept",
    "grouped_id": "kept (random album id)",
    "pinned": "kept",
    "post_author": "name pseudonym (signatures are people)",
    "via_bot_id": "user id pseudonym (bots are users)",
    "media_type": "kept",
    "media_mime": "kept",
    "media_size": "kept",
    "media_duration": "kept",
    "media_width": "kept",
    "media_height": "kept",
    "media_file_name": "file name pseudonym (extension kept)",
    "media_file_id": "kept (Telegram's file id)",
    "media_path": "path pseudonym _media/<token><ext> (Pseudonymiser.media_path)",
    "media_error": "cut at the first ':' (details may quote file names)",
    "reactions": "kept",
    "reactions_total": "kept",
    "service_action": "kept",
    "date_naive": "kept",
}
assert tuple(MESSAGE_RULES) == MESSAGE_COLUMNS, "privacy rules and the message schema drifted"
_KEPT_MESSAGE_COLUMNS = frozenset(c for c, rule in MESSAGE_RULES.items() if rule.startswith("kept"))

# peers/chats columns kept as they are for every row (dates may come as epoch ints from a writer)
_PEER_KEPT = frozenset(
    {"kind", "bot", "verified", "scam", "fake", "premium", "deleted", "first_seen", "last_seen", "source"}
)
_CHAT_KEPT = frozenset(
    {"kind", "participants_count", "created", "first_id", "last_id", "rows", "last_export", "source",
     "type", "refreshed_until", "status", "since", "until"}
)  # fmt: skip
# where a Desktop export's files are on the researcher's disk: never in a pseudonymised dataset
_CHAT_DROPPED = frozenset({"media_root"})

# -- text patterns --------------------------------------------------------------------------------
# A username is 3-32 of [A-Za-z0-9_] here (Telegram: 4/5-32, starting with a letter): matching a little
# more than Telegram links errs on the side of replacing.  A handle glued to a word character (e-mail
# addresses, "a@b") is not a mention, as in Telegram's own parser.
_NAME = r"[A-Za-z0-9_]{3,32}(?![A-Za-z0-9_])"
_LINK_RE = re.compile(
    rf"""
      (?<![\w.@/-])(?:https?://)?(?:www\.)?(?:t\.me|telegram\.me|telegram\.dog)/(?:s/)?@?(?P<link>{_NAME})
    | (?<![\w.@/-])(?:https?://)?(?P<sub>{_NAME})\.t\.me(?![\w.-])
    | tg://resolve\?domain=(?P<tgname>{_NAME})
    | tg://user\?id=(?P<tguser>\d{{1,20}})(?!\d)
    """,
    re.IGNORECASE | re.VERBOSE,
)
# "@" first, so the regex engine scans for the literal; the character before it is checked in Python
# (a handle glued to a word, a dot, a slash or another "@" is not a mention).
_MENTION_RE = re.compile(rf"@(?P<mention>{_NAME})")
_NOT_BEFORE_MENTION = frozenset("_.@/-")
_LINK_HINTS = ("t.me", "telegram.", "tg://")
_ASTRAL_RE = re.compile("[\U00010000-\U0010ffff]")  # two UTF-16 code units each
# First path segments of t.me links that are not usernames.
_RESERVED_PATHS = frozenset(
    """joinchat addstickers addemoji addtheme addlist share proxy socks iv login boost setlanguage
    confirmphone bg invoice giftcode contact www web""".split()  # noqa: SIM905 - a word list
)
# Cheap vectorised pre-filter: rows whose text cannot hold a handle or link skip the Python rewrite.
_TEXT_HINT = r"(?i)@|t\.me|telegram\.(?:me|dog)|tg://"
_SPAN_TYPES = frozenset({"mention", "mention_name", "input_mention_name", "phone", "email"})

_F = TypeVar("_F")
_FILE_SCHEMA = pa.schema([arrow_schema().field(c) for c in _FILE_COLUMNS])  # a message part, chat_id aside


def _load_key(key_file: str | os.PathLike[str]) -> bytes:
    """The key in ``key_file``; a missing file is created with 32 random bytes, mode 0600."""
    path = Path(key_file).expanduser()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create the key file {path}: {exc.strerror or exc}") from exc
    else:
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        mode = path.stat().st_mode
        key = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc.strerror or exc}") from exc
    if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
        raise ConfigError(
            f"key file {path} is readable by other users (mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}"
        )
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"key file {path} holds {len(key)} bytes, not {KEY_BYTES}: not a tgkit pseudonymisation key"
        )
    return key


def _token(digest: bytes, n: int) -> str:
    return b32encode(digest).decode("ascii")[:n]


class Pseudonymiser:
    """Keyed, consistent pseudonyms for one dataset (one key file); see the module docstring.

    ``keep=("channels",)`` (default) keeps channels and groups (kinds ``channel`` and ``chat``) as they
    are; ``keep=()`` pseudonymises them too.  The key is never shown: the repr, the manifest and errors
    carry only :attr:`fingerprint`, from which the key cannot be recovered.
    """

    __slots__ = ("_cache", "_id_owner", "_key", "_peer_kinds", "_username_kinds", "fingerprint", "keep")

    def __init__(self, key_file: str | os.PathLike[str], *, keep: Iterable[str] = ("channels",)) -> None:
        self._init(_load_key(key_file), keep)

    @classmethod
    def _from_key(cls, key: bytes, *, keep: Iterable[str] = ("channels",)) -> Pseudonymiser:
        self = cls.__new__(cls)
        self._init(key, keep)
        return self

    def _init(self, key: bytes, keep: Iterable[str]) -> None:
        if isinstance(keep, str):
            keep = (keep,)
        keep = tuple(sorted(set(keep)))
        unknown = set(keep) - _KEEP_OPTIONS
        if unknown:
            raise ConfigError(
                f"unknown keep option(s) {sorted(unknown)}; choose from {sorted(_KEEP_OPTIONS)}"
            )
        self._key = key
        self.keep: tuple[str, ...] = keep
        self.fingerprint: str = hmac.new(key, b"tgkit-fingerprint", hashlib.sha256).hexdigest()[:16]
        self._cache: dict[tuple[str, Any], Any] = {}
        self._id_owner: dict[int, tuple[str, int]] = {}
        self._peer_kinds: dict[int, str] = {}  # id -> kind ("user" wins when kinds share an id)
        self._username_kinds: dict[str, str] = {}  # lower-case username -> kind

    def __repr__(self) -> str:
        return f"Pseudonymiser(fingerprint={self.fingerprint!r}, keep={self.keep!r})"

    def __reduce__(self) -> Any:
        raise TypeError("a Pseudonymiser holds a secret key and is not pickled; build one from the key file")

    # -- single values -------------------------------------------------------------------------------

    def _digest(self, domain: str, value: Any) -> bytes:
        return hmac.digest(self._key, f"tgkit/{domain}\x00{value}".encode("utf-8", "surrogatepass"), "sha256")

    def _memo(self, domain: str, value: Any, make: Callable[[bytes], _F]) -> _F:
        key = (domain, value)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            hit = self._cache[key] = make(self._digest(domain, value))
        return hit  # type: ignore[no-any-return]

    def kept(self, kind: str | None) -> bool:
        """Whether peers of ``kind`` stay as they are (``None``/unknown kinds are users: never kept)."""
        return kind in ("channel", "chat") and "channels" in self.keep

    def peer_id(self, peer_id: int, kind: str | None = "user") -> int:
        """The pseudonym of a peer id (``kind`` None or unknown: a user's); kept kinds return ``peer_id``."""
        if self.kept(kind):
            return peer_id
        domain = kind if kind in ("channel", "chat") else "user"
        new = self._memo(
            f"{domain}-id", peer_id, lambda d: PSEUDONYM_ID_BASE | (int.from_bytes(d[:8], "big") & _ID_MASK)
        )
        owner = self._id_owner.setdefault(new, (domain, peer_id))
        if owner != (domain, peer_id):  # 2**-62 per pair; never silently merge two people
            raise CacheError(f"pseudonym collision between two peers ({self.fingerprint}); use another key")
        return new

    def user_id(self, user_id: int) -> int:
        """The pseudonym of a user id."""
        return self.peer_id(user_id, "user")

    def username(self, username: str) -> str:
        """``u_<token>`` for a username (case-insensitive, a leading ``@`` ignored): a valid username itself."""
        return self._memo("username", username.lstrip("@").lower(), lambda d: "u_" + _token(d, 12).lower())

    def display_name(self, peer_id: int, kind: str | None = "user") -> str:
        """The name shown for a pseudonymised peer: ``User <token>`` (or ``Channel``/``Group``)."""
        label = {"channel": "Channel", "chat": "Group"}.get(kind or "user", "User")
        return self._memo("name-id", self.peer_id(peer_id, kind), lambda d: f"{label} {_token(d, 8)}")

    def name(self, text: str) -> str:
        """``Name <token>`` for a free-text name (``post_author``, ``fwd_name``): same text, same pseudonym."""
        return self._memo("name", text, lambda d: f"Name {_token(d, 8)}")

    def phone(self, text: str) -> str:
        digits = re.sub(r"\D", "", text)
        return self._memo("phone", digits, lambda d: f"phone_{_token(d, 8).lower()}")

    def email(self, text: str) -> str:
        return self._memo("email", text.lower(), lambda d: f"{_token(d, 10).lower()}@pseudonym.invalid")

    def file_name(self, name: str) -> str:
        """``file_<token><ext>``: a user-chosen file name without the name (a short extension is kept)."""
        return self._memo("file", name, lambda d: f"file_{_token(d, 12).lower()}{_extension(name)}")

    def media_path(self, path: str) -> str:
        """``_media/<token><ext>``: where a pseudonymised dataset keeps the file of ``path`` (any layout)."""
        return self._memo("media-path", path, lambda d: f"_media/{_token(d, 16).lower()}{_extension(path)}")

    # -- what is known about peers ---------------------------------------------------------------------

    def add_peer(self, peer_id: int | None, kind: str | None, username: str | None = None) -> None:
        """Record a peer's kind (for chat ids) and username (to tell a channel's @handle from a user's)."""
        kind = kind if kind in _PEER_KINDS else "user"
        if peer_id is not None:
            # ids of different kinds can coincide: then the safe reading (a user's) wins
            self._peer_kinds[peer_id] = "user" if self._peer_kinds.get(peer_id, kind) == "user" else kind
        if username:
            name = username.lstrip("@").lower()
            if self._username_kinds.get(name, kind) == "user":
                self._username_kinds[name] = "user"
            else:
                self._username_kinds[name] = kind

    def learn_peers(self, frame: Any) -> None:
        """Learn ids, kinds and usernames from a peers or chats frame (columns ``id``, ``kind``, ``username``)."""
        df = _to_polars(frame)
        if isinstance(df, pl.LazyFrame):
            df = df.collect()
        cols = [c for c in ("id", "kind", "username") if c in df.columns]
        if "kind" not in cols:
            raise ConfigError("a peers frame needs a 'kind' column (user/channel/chat)")
        for row in df.select(cols).unique().iter_rows(named=True):
            self.add_peer(row.get("id"), row["kind"], row.get("username"))

    def chat_kind(self, chat_id: int) -> str:
        """The kind learned for ``chat_id``; ``"user"`` when unknown (the safe default)."""
        return self._peer_kinds.get(chat_id, "user")

    # -- text ----------------------------------------------------------------------------------------------

    def _handle(self, name: str, at: str = "") -> str | None:
        """Replacement of a username found in text, or None to keep it (a kept channel's)."""
        if self.kept(self._username_kinds.get(name.lower(), "user")):
            return None
        return at + self.username(name)

    def _replace_links(self, s: str) -> list[tuple[int, int, str]]:
        """Python-index spans of ``s`` to replace: user handles in @mentions, t.me and tg:// links."""
        spans: list[tuple[int, int, str]] = []
        if "@" in s:
            for m in _MENTION_RE.finditer(s):
                at = m.start()
                if at and (s[at - 1].isalnum() or s[at - 1] in _NOT_BEFORE_MENTION):
                    continue
                new = self._handle(m.group("mention"))
                if new is not None:
                    spans.append((at + 1, m.end(), new))
        low = s.lower()
        if any(h in low for h in _LINK_HINTS):
            found = len(spans)
            for m in _LINK_RE.finditer(s):
                group = m.lastgroup
                if group is None:
                    continue
                value = m.group(group)
                if group == "tguser":
                    new = str(self.user_id(int(value)))
                elif group in ("link", "sub") and value.lower() in _RESERVED_PATHS:
                    continue
                else:
                    new = self._handle(value)
                if new is not None:
                    spans.append((m.start(group), m.end(group), new))
            if found and len(spans) > found:  # "t.me/@name": the link and the mention are one span
                spans = sorted(set(spans))
                spans = [sp for i, sp in enumerate(spans) if not i or sp[0] >= spans[i - 1][1]]
        return spans

    def rewrite_url(self, url: str) -> str:
        """``url`` with user handles and ids in t.me / tg:// links replaced (channels kept per ``keep``)."""
        spans = self._replace_links(url)
        if not spans:
            return url
        parts: list[str] = []
        last = 0
        for s, e, new in spans:
            parts += (url[last:s], new)
            last = e
        parts.append(url[last:])
        return "".join(parts)

    def text(
        self, text: str | None, entities: list[dict[str, Any]] | None
    ) -> tuple[str | None, list[dict[str, Any]] | None]:
        """One message's text and entities (dicts with ``ENTITY_FIELDS`` keys, offsets in UTF-16 units) with
        user handles, links, mention-name/phone/email spans replaced; entity offsets recomputed."""
        return self._text(text, [dict(e) for e in entities] if entities else entities)

    def _text(
        self, text: str | None, ents: list[dict[str, Any]] | None
    ) -> tuple[str | None, list[dict[str, Any]] | None]:
        # as text(), changing the entity dicts in place
        if not text:
            if ents:
                for e in ents:
                    self._entity_fields(e)
            return text, ents
        # UTF-16 offset = Python index + astral characters before it; most texts have none
        astral = [] if text.isascii() else [m.start() for m in _ASTRAL_RE.finditer(text)]

        def to_py(u: int) -> int:
            for j, a in enumerate(astral):
                if u <= a + j:
                    return u - j
                if u == a + j + 1:  # between the two halves of a pair: after the character
                    return a + 1
            return u - len(astral)

        def to_16(i: int) -> int:
            return i + bisect_left(astral, i) if astral else i

        n16 = to_16(len(text))
        chosen: list[tuple[int, int, str]] = []  # (start16, end16, replacement), entity-driven first
        for e in ents or ():
            kind = e.get("type")
            if kind not in _SPAN_TYPES:
                continue
            off, length = e.get("offset"), e.get("length")
            if off is None or length is None or length <= 0 or off < 0 or off >= n16:
                continue
            s, t = to_py(off), to_py(min(off + length, n16))
            piece = text[s:t]
            if not piece:
                continue
            if kind in ("mention_name", "input_mention_name"):
                uid = e.get("user_id")
                new: str | None = self.display_name(uid) if uid is not None else self.name(piece)
            elif kind == "phone":
                new = self.phone(piece)
            elif kind == "email":
                new = self.email(piece)
            else:  # mention: "@name"
                new = self._handle(piece[1:], "@") if piece.startswith("@") and len(piece) > 1 else None
            if new is None:
                continue
            s16, e16 = to_16(s), to_16(t)
            if all(e16 <= a or s16 >= b for a, b, _ in chosen):
                chosen.append((s16, e16, new))
        for s, t, new in self._replace_links(text):
            s16, e16 = to_16(s), to_16(t)
            if all(e16 <= a or s16 >= b for a, b, _ in chosen):
                chosen.append((s16, e16, new))
        if ents:
            for e in ents:
                if e.get("user_id") is not None or e.get("url"):
                    self._entity_fields(e)
        if not chosen:
            return text, ents
        chosen.sort()
        return _splice(text, ents, chosen, to_py)

    def _entity_fields(self, e: dict[str, Any]) -> None:
        if e.get("user_id") is not None:
            e["user_id"] = self.user_id(e["user_id"])
        if e.get("url"):
            e["url"] = self.rewrite_url(e["url"])

    # -- frames ------------------------------------------------------------------------------------------

    def table(self, name: str, frame: _F) -> _F:
        """Pseudonymise a frame of table ``name`` (``messages``/``peers``/``chats``); the export writer's hook."""
        fn = {"messages": self.messages, "peers": self.peers, "chats": self.chats}.get(name)
        if fn is None:
            raise ConfigError(f"unknown table {name!r}; tgkit tables are messages, peers, chats")
        return fn(frame)

    def messages(self, frame: _F) -> _F:
        """A messages frame (any subset of the message columns) with every identifying value replaced."""
        return _apply(frame, self._messages_df)

    def peers(self, frame: _F) -> _F:
        """A peers frame with users (and unkept channels/groups) pseudonymised; phones removed."""
        return _apply(frame, self._peers_df)

    def chats(self, frame: _F) -> _F:
        """A chats frame: private chats (and unkept channels/groups) get pseudonymous ids, titles, usernames."""
        return _apply(frame, self._chats_df)

    def _ids(self, ids: pl.Series, kinds: pl.Series | None) -> pl.Series:
        """``ids`` pseudonymised per their kinds (None: all users) — one HMAC per distinct (kind, id)."""
        if kinds is None:
            kinds = pl.repeat("user", len(ids), dtype=pl.String, eager=True)
        df = pl.DataFrame({"i": ids, "k": kinds})
        pairs = df.drop_nulls("i").unique().rows()
        if not pairs:
            return ids
        keyed = pl.DataFrame(
            {
                "i": [p[0] for p in pairs],
                "k": [p[1] for p in pairs],
                "new": [self.peer_id(i, k) for i, k in pairs],
            },
            schema={"i": pl.Int64, "k": pl.String, "new": pl.Int64},
        )
        out = df.join(keyed, on=["i", "k"], how="left", nulls_equal=True, maintain_order="left")
        return out.get_column("new").alias(ids.name).cast(ids.dtype)

    def _strings(self, values: pl.Series, fn: Callable[[str], str | None]) -> pl.Series:
        uniq = values.drop_nulls().unique().to_list()
        if not uniq:
            return values
        return values.replace_strict(uniq, [fn(v) for v in uniq], default=None, return_dtype=pl.String)

    def _messages_df(self, df: pl.DataFrame) -> pl.DataFrame:
        cols = df.columns
        new: list[pl.Series] = []

        def col(name: str) -> pl.Series | None:
            return df.get_column(name) if name in cols else None

        if "chat_id" in cols:
            chat = df.get_column("chat_id")
            uniq = chat.drop_nulls().unique().to_list()
            kinds = chat.replace_strict(
                uniq, [self.chat_kind(c) for c in uniq], default=None, return_dtype=pl.String
            )
            new.append(self._ids(chat, kinds))
        for id_col, kind_col in (("sender_id", "sender_kind"), ("fwd_peer_id", "fwd_peer_kind")):
            if id_col in cols:
                new.append(self._ids(df.get_column(id_col), col(kind_col)))
        if "via_bot_id" in cols:
            new.append(self._ids(df.get_column("via_bot_id"), None))
        if "fwd_name" in cols:
            names = self._strings(df.get_column("fwd_name"), self.name)
            if "channels" in self.keep and "fwd_peer_kind" in cols and "fwd_peer_id" in cols:
                kept = (
                    df.get_column("fwd_peer_kind").is_in(["channel", "chat"])
                    & df.get_column("fwd_peer_id").is_not_null()
                )
                names = (
                    pl.select(pl.when(kept).then(df.get_column("fwd_name")).otherwise(names))
                    .to_series()
                    .alias("fwd_name")
                )
            new.append(names)
        if "post_author" in cols:
            new.append(self._strings(df.get_column("post_author"), self.name))
        if "media_file_name" in cols:
            new.append(self._strings(df.get_column("media_file_name"), self.file_name))
        if "media_path" in cols:
            new.append(self._strings(df.get_column("media_path"), self.media_path))
        if "media_error" in cols:
            new.append(df.get_column("media_error").str.replace(r"(?s):.*", ""))
        for name in cols:
            if name in MESSAGE_RULES:
                continue
            dtype = df.schema[name]
            if not (dtype == pl.Boolean or dtype.is_temporal()):
                new.append(pl.Series(name, dtype=dtype).extend_constant(None, df.height))
        out = df.with_columns(new) if new else df
        if "text" in cols or "entities" in cols:
            out = self._text_df(out)
        return out

    def _text_df(self, df: pl.DataFrame) -> pl.DataFrame:
        """Rewrite text/entities of the rows that can need it (a vectorised pre-filter), in Python."""
        has_text, has_ent = "text" in df.columns, "entities" in df.columns
        need = pl.lit(False)
        if has_text:
            need = need | pl.col("text").str.contains(_TEXT_HINT).fill_null(False)
        if has_ent:
            ent = pl.element().struct
            need = need | pl.col("entities").list.eval(
                ent.field("type").is_in(list(_SPAN_TYPES))
                | ent.field("user_id").is_not_null()
                | ent.field("url").is_not_null()
            ).list.any().fill_null(False)
        idx = (
            df.with_row_index("__row")
            .filter(need)
            .select("__row", *(["text"] if has_text else []), *(["entities"] if has_ent else []))
        )
        if not idx.height:
            return df
        texts = idx.get_column("text").to_list() if has_text else [None] * idx.height
        ents = idx.get_column("entities").to_list() if has_ent else [None] * idx.height
        results = [self._text(t, e) for t, e in zip(texts, ents)]  # fresh lists from to_list()
        cols = {"__row": idx.get_column("__row")}
        if has_text:
            cols["text"] = pl.Series("text", [r[0] for r in results], dtype=df.schema["text"])
        if has_ent:
            cols["entities"] = _entity_series([r[1] for r in results], df.schema["entities"])
        changed = pl.DataFrame(cols).with_columns(pl.lit(True).alias("__changed"))
        joined = df.with_row_index("__row").join(
            changed, on="__row", how="left", suffix="__new", maintain_order="left"
        )
        flag = pl.col("__changed").fill_null(False)
        return joined.with_columns(
            pl.when(flag).then(pl.col(f"{c}__new")).otherwise(pl.col(c)).alias(c)
            for c in cols
            if c != "__row"
        ).select(df.columns)

    def _peer_like(self, df: pl.DataFrame, *, kept_cols: frozenset[str], table: str) -> pl.DataFrame:
        if "kind" not in df.columns:
            raise ConfigError(f"a {table} frame needs a 'kind' column to be pseudonymised")
        kind = df.get_column("kind")
        is_user = ~kind.is_in(["channel", "chat"]).fill_null(False)
        pseud = is_user if "channels" in self.keep else pl.Series([True] * df.height, dtype=pl.Boolean)
        new: list[pl.Series] = []

        def where(mask: pl.Series, then: pl.Series, other: pl.Series) -> pl.Series:
            return pl.select(pl.when(mask).then(then).otherwise(other)).to_series().alias(other.name)

        ids = df.get_column("id") if "id" in df.columns else None
        for name in df.columns:
            s = df.get_column(name)
            null = pl.Series(name, dtype=s.dtype).extend_constant(None, df.height)
            if name == "id":
                new.append(self._ids(s, kind))
            elif name == "linked_chat_id":
                new.append(self._ids(s, pl.Series(["channel"] * df.height, dtype=pl.String)))
            elif name == "username":
                new.append(where(pseud, self._strings(s, self.username), s))
            elif name in ("first_name", "title", "name") and ids is not None:
                names = pl.Series(
                    name,
                    [
                        None if i is None else self.display_name(i, k)
                        for i, k in zip(ids.to_list(), kind.to_list())
                    ],
                    dtype=pl.String,
                )
                if name == "first_name":
                    mask = pseud & is_user
                elif name == "title" and table == "peers":  # a user's title is null
                    mask = pseud & ~is_user
                else:  # chats.title of any pseudonymised chat, peers.name (the shown name)
                    mask = pseud
                new.append(where(mask, names, where(pseud, null, s)))
            elif table == "chats" and name in _CHAT_DROPPED:
                new.append(null)
            elif name in kept_cols or s.dtype == pl.Boolean or s.dtype.is_temporal():
                continue
            else:  # last_name, phone, about, and any column not known to be harmless
                new.append(where(pseud, null, s))
        return df.with_columns(new) if new else df

    def _peers_df(self, df: pl.DataFrame) -> pl.DataFrame:
        return self._peer_like(df, kept_cols=_PEER_KEPT, table="peers")

    def _chats_df(self, df: pl.DataFrame) -> pl.DataFrame:
        return self._peer_like(df, kept_cols=_CHAT_KEPT, table="chats")

    def check_output(self, out: str | os.PathLike[str]) -> None:
        """Raise :class:`~tgkit.ConfigError` unless :func:`pseudonymise` may replace ``out``: it is missing,
        empty, or a dataset pseudonymised with this key (and ``keep``).  Never mixes plain and pseudonymised
        rows, nor two keys.  (Writers continuing a dataset check with ``prepare_output_dir(privacy=...)``.)"""
        path = Path(out).expanduser()
        if not path.exists():
            return
        if not path.is_dir():
            raise ConfigError(f"{path} exists and is not a directory")
        if not any(path.iterdir()):
            return
        try:
            manifest = read_manifest(path)
        except CacheError as exc:
            raise ConfigError(f"{path} holds an unreadable manifest; choose an empty folder") from exc
        if not manifest:
            raise ConfigError(f"{path} is not empty and not a tgkit dataset; choose an empty folder")
        if not self.check_manifest(manifest, what=str(path)):
            raise ConfigError(
                f"{path} holds a dataset that is not pseudonymised; refusing to mix it with pseudonyms"
            )

    def for_chat(self, chat_id: int, kind: str | None, *, media_paths: bool = True) -> _ChatPrivacy:
        """The hook a :class:`~tgkit.dataset.ChatPartition` writes one chat through (export-time
        pseudonymisation): the chat of ``kind`` is stored under its pseudonym unless kept.
        ``media_paths=False`` nulls ``media_path`` (files that are not in the dataset, e.g. Desktop's)."""
        return _ChatPrivacy(self, chat_id, kind if kind in _PEER_KINDS else "user", media_paths)

    # -- manifest ------------------------------------------------------------------------------------------

    def manifest_entry(self) -> dict[str, Any]:
        """What a pseudonymised dataset's manifest records under ``"privacy"`` (no key, only its fingerprint)."""
        return {
            "pseudonymised": True,
            "method": METHOD,
            "keep": list(self.keep),
            "key_fingerprint": self.fingerprint,
        }

    def check_manifest(self, manifest: dict[str, Any], *, what: str = "the dataset") -> bool:
        """True when ``manifest`` is of a dataset pseudonymised with this key (continue it), False when it is
        not pseudonymised; raises :class:`~tgkit.ConfigError` when another key or another ``keep`` made it."""
        privacy = manifest.get("privacy")
        if not isinstance(privacy, dict) or not privacy.get("pseudonymised"):
            return False
        found = privacy.get("key_fingerprint")
        if found != self.fingerprint:
            raise ConfigError(
                f"{what} was pseudonymised with another key (fingerprint {found}, this key's is "
                f"{self.fingerprint}); use the key file it was made with"
            )
        if list(privacy.get("keep") or []) != list(self.keep):
            raise ConfigError(
                f"{what} was pseudonymised with keep={tuple(privacy.get('keep') or [])}, not {self.keep}"
            )
        return True


def _entity_series(rows: list[list[dict[str, Any]] | None], dtype: Any) -> pl.Series:
    """``list[struct]`` from Python entity lists: flat child columns and offsets (Polars' own conversion of
    nested dicts is ~10x slower per row)."""
    struct = dtype.inner
    names = [f.name for f in struct.fields]
    children: list[list[Any]] = [[] for _ in names]
    offsets, mask, end = [0], [], 0
    for row in rows:
        mask.append(row is None)
        if row:
            for e in row:
                for col, name in zip(children, names):
                    col.append(e.get(name))
            end += len(row)
        offsets.append(end)
    child = pl.DataFrame([pl.Series(f.name, col, f.dtype) for f, col in zip(struct.fields, children)])
    values = child.to_struct("entities").to_arrow()
    arr = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values, mask=pa.array(mask, pa.bool_()))
    return pl.Series("entities", arr).cast(dtype)


def _extension(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if "." not in base.strip("."):
        return ""
    ext = base.rsplit(".", 1)[-1]
    return f".{ext.lower()}" if 0 < len(ext) <= 8 and ext.isascii() and ext.isalnum() else ""


def _splice(
    text: str,
    ents: list[dict[str, Any]] | None,
    spans: Sequence[tuple[int, int, str]],
    to_py: Callable[[int], int],
) -> tuple[str, list[dict[str, Any]] | None]:
    """Replace sorted, non-overlapping UTF-16 ``spans`` of ``text`` and move entity boundaries with them.

    A boundary before a span stays, one after it shifts by the span's change in length; a start inside a
    span moves to the replacement's start, an end inside it to the replacement's end (so an entity that
    covered the span covers the replacement, one that contained it grows or shrinks with it)."""
    parts: list[str] = []
    last = 0
    moved = []  # (start16, end16, new start16, new end16)
    shift = 0
    for s16, e16, new in spans:
        s, e = to_py(s16), to_py(e16)
        parts += (text[last:s], new)
        last = e
        n16 = len(new.encode("utf-16-le", "surrogatepass")) // 2
        moved.append((s16, e16, s16 + shift, s16 + shift + n16))
        shift += n16 - (e16 - s16)
    parts.append(text[last:])

    def move(p: int, end: bool) -> int:
        d = 0
        for s16, e16, ns, ne in moved:
            if p >= e16:  # after the span: shifted by its change in length
                d = ne - e16
                continue
            if s16 < p:  # inside the span
                return ne if end else ns
            break
        return p + d

    if ents:
        for ent in ents:
            off, length = ent.get("offset"), ent.get("length")
            if off is None or length is None:
                continue
            start, stop = move(off, False), move(off + length, True)
            ent["offset"], ent["length"] = start, max(stop - start, 0)
    return "".join(parts), ents


def _to_polars(frame: Any) -> Any:
    if isinstance(frame, pa.Table | pa.RecordBatch):
        return pl.from_arrow(frame)
    if isinstance(frame, pl.DataFrame | pl.LazyFrame):
        return frame
    raise TypeError(f"expected a Polars DataFrame/LazyFrame or an Arrow table, got {type(frame).__name__}")


def _apply(frame: _F, fn: Callable[[pl.DataFrame], pl.DataFrame]) -> _F:
    if isinstance(frame, pl.DataFrame):
        return fn(frame)  # type: ignore[return-value]
    if isinstance(frame, pl.LazyFrame):
        return frame.map_batches(fn, schema=frame.collect_schema(), streamable=True)  # type: ignore[return-value]
    if isinstance(frame, pa.Table):
        out = fn(pl.DataFrame(pl.from_arrow(frame))).to_arrow()
        return out.cast(frame.schema)  # type: ignore[return-value]
    if isinstance(frame, pa.RecordBatch):
        table = fn(pl.DataFrame(pl.from_arrow(frame))).to_arrow().cast(frame.schema)
        return (
            table.combine_chunks().to_batches()[0]
            if table.num_rows
            else pa.RecordBatch.from_pylist([], schema=frame.schema)
        )  # type: ignore[return-value]
    raise TypeError(f"expected a Polars DataFrame/LazyFrame or an Arrow table, got {type(frame).__name__}")


# ==================================================================================================
# Export-time pseudonymisation: the hook a ChatPartition writes through


@dataclass(slots=True)
class _ChatPrivacy:
    """One chat's pseudonymisation at write time (:meth:`Pseudonymiser.for_chat`), the
    :class:`tgkit.dataset.ChatPrivacy` a :class:`~tgkit.dataset.ChatPartition` calls before it writes."""

    pz: Pseudonymiser
    source_id: int
    kind: str
    media_paths: bool = True
    chat_id: int = 0  # the id the chat is stored under

    def __post_init__(self) -> None:
        self.pz.add_peer(self.source_id, self.kind)
        self.chat_id = self.pz.peer_id(self.source_id, self.kind)

    def __repr__(self) -> str:
        return f"_ChatPrivacy(chat_id={self.chat_id}, kind={self.kind!r}, {self.pz!r})"

    def messages(self, frame: _F) -> _F:
        pz = self.pz
        if isinstance(frame, pa.Table):
            names = frame.column_names
            out = pz.messages(frame.drop_columns(["chat_id"]) if "chat_id" in names else frame)
            if not self.media_paths and "media_path" in names:
                i = out.schema.get_field_index("media_path")
                out = out.set_column(i, out.schema.field(i), pa.nulls(out.num_rows, pa.string()))
            if "chat_id" in names:
                i = names.index("chat_id")
                out = out.add_column(
                    i, frame.schema.field(i), pa.array([self.chat_id] * out.num_rows, pa.int64())
                )
            return out  # type: ignore[return-value]
        if isinstance(frame, pl.DataFrame):
            cols = frame.columns
            df = pz.messages(frame.drop("chat_id") if "chat_id" in cols else frame)
            if not self.media_paths and "media_path" in cols:
                df = df.with_columns(pl.lit(None, pl.String).alias("media_path"))
            if "chat_id" in cols:
                df = df.with_columns(pl.lit(self.chat_id, pl.Int64).alias("chat_id")).select(cols)
            return df  # type: ignore[return-value]
        raise TypeError(f"expected an Arrow table or a Polars DataFrame, got {type(frame).__name__}")

    def peers(self, rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
        if not rows:
            return []
        table = rows_to_arrow("peers", rows)
        self.pz.learn_peers(table.select(["id", "kind", "username"]))  # before the messages they explain
        out = self.pz.peers(table).to_pylist()
        return [[_epoch_s(r[c]) if c in PEER_DATE_COLUMNS else r[c] for c in PEER_COLUMNS] for r in out]

    def chat(self, fields: dict[str, Any]) -> dict[str, Any]:
        if not fields:
            return {}
        schema = table_schema("chats")
        row = {"id": self.source_id, "kind": self.kind}
        row.update((k, v) for k, v in fields.items() if k not in ("id", "kind"))
        arrays = {
            k: pa.array([v], pa.int64() if k in CHAT_DATE_COLUMNS else schema.field(k).type)
            for k, v in row.items()
        }
        out = self.pz.chats(pl.DataFrame(pl.from_arrow(pa.table(arrays)))).row(0, named=True)
        return {k: (v if k == "kind" else out[k]) for k, v in fields.items() if k != "id"}

    def label(self, peer: str | None, title: str | None) -> tuple[str | None, str | None]:
        if self.pz.kept(self.kind):
            return peer, title
        return str(self.chat_id), self.pz.display_name(self.source_id, self.kind)

    def manifest(self) -> dict[str, Any]:
        return self.pz.manifest_entry()

    def manifest_extra(self, extra: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in extra.items() if k not in _CHAT_DROPPED}

    def media_file(self, path: str) -> str:
        """Where the file a plain row would point at (``path``, relative to the dataset) is saved."""
        return self.pz.media_path(path)


def _epoch_s(v: Any) -> Any:
    return int(v.timestamp()) if isinstance(v, datetime) else v


def prepare_output(
    out: str | os.PathLike[str], pseudonymise: str | os.PathLike[str] | Pseudonymiser | None
) -> tuple[Path, Pseudonymiser | None]:
    """The writers' start (export, Desktop import): :func:`~tgkit.dataset.prepare_output_dir`, checked
    against the key (``pseudonymise``: a key file or a :class:`Pseudonymiser`; None for plain rows) before
    any request, and the pseudonymiser that writes the rows, knowing the dataset's kept channels."""
    if pseudonymise is None:
        return prepare_output_dir(out), None
    if isinstance(pseudonymise, Pseudonymiser):
        pz = pseudonymise
    else:
        key_path = Path(pseudonymise).expanduser().resolve()
        root = Path(out).expanduser().resolve()
        if root == key_path.parent or root in key_path.parents:
            raise ConfigError(f"the key file must not be stored in the dataset ({root}); keep it elsewhere")
        pz = Pseudonymiser(key_path)
    root = prepare_output_dir(out, privacy=pz.manifest_entry())
    if pz.keep:  # a channel's @handle is kept in every chat once the dataset knows it
        kept = open_dataset(root, table="peers").filter(pl.col("kind").is_in(["channel", "chat"]))
        pz.learn_peers(kept.select("id", "kind", "username").collect())
    return root, pz


# ==================================================================================================
# Datasets


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dictionary = [c for c in DICTIONARY_COLUMNS if c in table.column_names]
    pq.write_table(table, path, compression="zstd", compression_level=1, use_dictionary=dictionary or False,
                   write_statistics=True)  # fmt: skip


@dataclass(slots=True)
class _Run:
    pz: Pseudonymiser
    src: Path
    tmp: Path
    copy_media: bool
    rows: dict[str, int] = field(default_factory=dict)
    media_copied: int = 0


def pseudonymise(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    key_file: str | os.PathLike[str],
    keep: Iterable[str] = ("channels",),
    peers: Any = None,
    copy_media: bool = False,
) -> Path:
    """Write a pseudonymised copy of the dataset ``src`` to ``out`` and return ``out``.

    Every table is rewritten with a :class:`Pseudonymiser` built from ``key_file`` (created when missing;
    it must live outside both datasets).  ``out`` is a layout-2 dataset (``src`` may be of layout 1 or 2)
    that :func:`~tgkit.open_dataset` reads and that an export with the same key (``pseudonymise=``) can
    continue.  Kinds and usernames come from ``src``'s peers and chats tables; ``peers`` (a frame with
    ``id``, ``kind``, ``username``) adds to them: a layout-1 dataset has none, so its chats and @handles
    are treated as users' unless ``peers`` says otherwise (a chat whose own id posts is a channel).
    Media files are not copied unless ``copy_media`` (their content can identify people); without them
    ``media_path`` is null.  ``_metrics``/``_plots`` are not copied.  ``out`` is replaced only when it is
    empty or a pseudonymised dataset made with the same key; ``src`` already pseudonymised is refused.
    """
    src_path = Path(src).expanduser().resolve()
    out_path = Path(out).expanduser().resolve()
    key_path = Path(key_file).expanduser().resolve()
    if not src_path.is_dir():
        raise ConfigError(f"no dataset at {src_path}")
    if out_path == src_path or src_path in out_path.parents or out_path in src_path.parents:
        raise ConfigError("the pseudonymised dataset must be written outside the source dataset")
    for root in (src_path, out_path):
        if root == key_path.parent or root in key_path.parents:
            raise ConfigError(f"the key file must not be stored in a dataset ({root}); keep it elsewhere")
    pz = Pseudonymiser(key_path, keep=keep)
    manifest = read_manifest(src_path)
    chats = _checkpoints(src_path)
    if not manifest and not chats:
        raise ConfigError(f"{src_path} is not a tgkit dataset (no manifest, no committed chats)")
    if pz.check_manifest(manifest, what=f"source {src_path}"):
        raise ConfigError(f"source {src_path} is already pseudonymised (with this key); copy it instead")
    pz.check_output(out_path)

    # learn kinds and usernames first: ids of chats and the rewriting of @handles depend on them
    pz.learn_peers(open_dataset(src_path, table="peers").select("id", "kind", "username").collect())
    known = open_dataset(src_path, table="chats").select("id", "kind", "username").collect()
    pz.learn_peers(known.filter(pl.col("kind").is_not_null()))
    if peers is not None:
        pz.learn_peers(peers)
    _learn_channel_chats(pz, chats)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.tmp-", dir=out_path.parent))
    try:
        run = _Run(pz, src_path, tmp, copy_media)
        entries: dict[str, Any] = {}
        old = manifest.get("chats") if isinstance(manifest.get("chats"), dict) else {}
        for cp, parts_dir, _legacy in chats:
            new = _write_chat(run, cp, parts_dir)
            entry = old.get(str(cp.chat_id)) if isinstance(old, dict) else None
            entries[str(new.chat_id)] = _manifest_entry(entry if isinstance(entry, dict) else {}, new)
        privacy = {
            **pz.manifest_entry(),
            "rows": dict(sorted(run.rows.items())),
            "media_copied": run.media_copied,
        }
        _write_dataset_manifest(tmp, entries, privacy)
        _swap_into_place(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_path


def _learn_channel_chats(pz: Pseudonymiser, chats: list[tuple[Checkpoint, Path, bool]]) -> None:
    """A chat whose own id posts (sender_kind channel, sender_id = chat_id) is a channel, whatever is known."""
    for cp, parts_dir, _ in chats:
        if cp.chat_id in pz._peer_kinds or not cp.parts:
            continue
        posts = (
            pl.scan_parquet([str(parts_dir / p) for p in cp.parts], hive_partitioning=False)
            .filter((pl.col("sender_kind") == "channel") & (pl.col("sender_id") == cp.chat_id))
            .select(pl.len())
            .collect()
            .item()
        )
        if posts:
            pz.add_peer(cp.chat_id, "channel")


def _write_chat(run: _Run, src_cp: Checkpoint, parts_dir: Path) -> Checkpoint:
    """One chat of the source, pseudonymised into the layout-2 tree at ``run.tmp``; returns its checkpoint."""
    pz = run.pz
    chat_id = src_cp.chat_id
    kind = pz.chat_kind(chat_id)
    new_id = pz.peer_id(chat_id, kind)
    first_id = 0
    for name in src_cp.parts:
        source = pq.read_table(parts_dir / name)
        if "chat_id" in source.column_names:  # layout 1 stored it in the files
            source = source.drop_columns(["chat_id"])
        source = source.cast(_FILE_SCHEMA)
        table = pz.messages(source)
        table = _media_paths(run, source, table)
        _write_parquet(table, run.tmp / MESSAGES_DIR / f"chat_id={new_id}" / name)
        run.rows["messages"] = run.rows.get("messages", 0) + table.num_rows
        if table.num_rows:
            low = pc.min(table["id"]).as_py()
            first_id = min(first_id, low) if first_id else low
    peers_name = chat_name = None
    if src_cp.peers_file:
        peers_name = f"c{new_id}-{src_cp.peers_file[-14:]}"
        table = pz.peers(pq.read_table(run.src / PEERS_DIR / src_cp.peers_file))
        _write_parquet(table, run.tmp / PEERS_DIR / peers_name)
        run.rows["peers"] = run.rows.get("peers", 0) + table.num_rows
    if src_cp.chat_file:
        chat = pq.read_table(run.src / CHATS_DIR / src_cp.chat_file)
    else:  # layout 1: the row open_dataset shows for it
        chat = rows_to_arrow("chats", [_legacy_chat_row(src_cp, run.src)])
    # the chat's own kind decides its id everywhere (a chats row of an unknown kind is the safe one's)
    kinds = pa.array([kind] * chat.num_rows, pa.string())
    chat = chat.set_column(chat.schema.get_field_index("kind"), "kind", kinds)
    chat = pz.chats(chat)
    chat_name = f"c{new_id}-{src_cp.chat_file[-14:] if src_cp.chat_file else '000001.parquet'}"
    _write_parquet(chat, run.tmp / CHATS_DIR / chat_name)
    run.rows["chats"] = run.rows.get("chats", 0) + chat.num_rows
    label = (src_cp.peer, src_cp.title)
    if not pz.kept(kind):
        label = (str(new_id), pz.display_name(chat_id, kind))
    cp = Checkpoint(
        new_id, src_cp.last_id, list(src_cp.parts), src_cp.rows, label[0], label[1], src_cp.updated_at,
        src_cp.refreshed_until, src_cp.first_id or first_id, peers_name, chat_name,
    )  # fmt: skip
    # what the source had complete stays complete (windows, comment threads), so a continued export
    # fetches only what the source was missing
    cp.ranges = [list(r) for r in src_cp.ranges] or ([[1, src_cp.last_id]] if src_cp.last_id else [])
    cp.threads = {post: list(v) for post, v in src_cp.threads.items()}
    cp.ordered = src_cp.ordered
    state = run.tmp / STATE_DIR / f"chat_id={new_id}"
    state.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(state / CHECKPOINT_NAME, json.dumps(cp.to_dict(), indent=1).encode(), mode=0o644)
    return cp


_ENTRY_KEYS = ("rows", "last_id", "parts", "updated_at", "source", "type")  # no names, links or folders


def _manifest_entry(old: dict[str, Any], cp: Checkpoint) -> dict[str, Any]:
    entry = {k: old[k] for k in _ENTRY_KEYS if k in old}
    entry.update(
        {"dir": f"{MESSAGES_DIR}/chat_id={cp.chat_id}", "rows": cp.rows, "last_id": cp.last_id,
         "parts": len(cp.parts), "peer": cp.peer, "title": cp.title, "updated_at": cp.updated_at}
    )  # fmt: skip
    return entry


def _media_paths(run: _Run, source: pa.Table, table: pa.Table) -> pa.Table:
    """Null ``media_path`` unless the file is copied (``copy_media``) to its pseudonymous path."""
    paths: list[str | None] = [None] * table.num_rows
    if run.copy_media:
        root = os.path.join(str(run.src), "")
        for i, old in enumerate(source.column("media_path").to_pylist()):
            if not old:
                continue
            full = os.path.realpath(os.path.join(run.src, old))
            if not full.startswith(root) or not os.path.isfile(full):
                continue  # a Desktop path (relative to the Desktop folder), or a file that is gone
            new = run.pz.media_path(old)
            dest = run.tmp / new
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(full, dest)
            paths[i] = new
            run.media_copied += 1
    index = table.schema.get_field_index("media_path")
    return table.set_column(index, table.schema.field(index), pa.array(paths, pa.string()))


def _swap_into_place(tmp: Path, out: Path) -> None:
    os.chmod(tmp, 0o755)
    if out.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        aside.rmdir()
        os.replace(out, aside)
        os.replace(tmp, out)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, out)
    with contextlib.suppress(OSError):
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
