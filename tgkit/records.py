"""Slotted records and the ONE message schema that drives both the record class and the Polars frame.

Dates are kept as integer epoch seconds (UTC) in records and column batches, and cast once to
``Datetime('us', 'UTC')`` inside Polars: that is ~5x cheaper than converting Python datetimes (see
docs/ARCHITECTURE.md).  Unknown values are ``None`` (null), never 0.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "DATE_COLUMNS",
    "ENTITY_FIELDS",
    "MESSAGE_COLUMNS",
    "REACTION_FIELDS",
    "CacheEntry",
    "ColumnBatch",
    "Entity",
    "ExportedMessage",
    "MediaRef",
    "MetricSample",
    "Peer",
    "PipelineStats",
    "Reaction",
    "Records",
    "arrow_schema",
    "gc_paused",
    "polars_schema",
]


@dataclass(slots=True)
class Entity:
    """A text entity; ``offset``/``length`` are UTF-16 code units, as Telegram reports them."""

    type: str
    offset: int
    length: int
    url: str | None = None
    user_id: int | None = None
    document_id: int | None = None
    language: str | None = None


@dataclass(slots=True)
class Reaction:
    """One reaction bucket: a unicode emoji, or a custom emoji's document id (``emoji`` None), or paid."""

    emoji: str | None
    document_id: int | None
    count: int


@dataclass(slots=True)
class MediaRef:
    """What a message carries as media, and where tgkit put the file (if it downloaded it)."""

    type: str
    mime: str | None = None
    size: int | None = None
    duration: float | None = None
    width: int | None = None
    height: int | None = None
    file_name: str | None = None
    file_id: int | None = None
    path: str | None = None
    error: str | None = None


@dataclass(slots=True)
class ExportedMessage:
    """One message, flat.  Field order is the dataset's column order; construct positionally in hot paths."""

    chat_id: int
    id: int
    date: int  # epoch seconds, UTC
    sender_id: int | None = None
    sender_kind: str | None = None  # "user" | "channel" | "chat"
    text: str | None = None
    entities: list[Entity] | None = None
    reply_to_id: int | None = None
    thread_id: int | None = None
    fwd_peer_id: int | None = None
    fwd_peer_kind: str | None = None
    fwd_name: str | None = None
    fwd_date: int | None = None
    fwd_post_id: int | None = None
    views: int | None = None
    forwards: int | None = None
    replies: int | None = None
    edit_date: int | None = None
    grouped_id: int | None = None
    pinned: bool | None = None
    post_author: str | None = None
    via_bot_id: int | None = None
    media_type: str | None = None
    media_mime: str | None = None
    media_size: int | None = None
    media_duration: float | None = None
    media_width: int | None = None
    media_height: int | None = None
    media_file_name: str | None = None
    media_file_id: int | None = None
    media_path: str | None = None
    media_error: str | None = None
    reactions: list[Reaction] | None = None
    reactions_total: int | None = None
    service_action: str | None = None
    date_naive: bool | None = (
        None  # True when the date was local time without an offset (old Desktop exports)
    )


@dataclass(slots=True)
class Peer:
    """A resolved chat or user: enough to build an InputPeer (never the raw TL bytes)."""

    kind: str  # "user" | "channel" | "chat"
    id: int
    access_hash: int | None
    username: str | None = None
    title: str | None = None


@dataclass(slots=True)
class CacheEntry:
    """A peer-cache entry as persisted: ``(kind, id, access_hash)`` plus username and resolved-at time."""

    kind: str
    id: int
    access_hash: int | None
    username: str | None
    resolved_at: float


@dataclass(slots=True)
class PipelineStats:
    """Counts and timings of one export run."""

    chat_id: int
    messages: int = 0
    pages: int = 0
    parts: int = 0
    media_downloaded: int = 0
    media_failed: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    resumed_from: int | None = None


@dataclass(slots=True)
class MetricSample:
    """One observation: a stage/metric pair, its value and when (seconds since the run started)."""

    stage: str
    metric: str
    value: float
    t: float


# --------------------------------------------------------------------------------------------------
# The schema: derived from ExportedMessage's fields plus a dtype table, so the two cannot drift.

ENTITY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Entity))
REACTION_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Reaction))
MESSAGE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ExportedMessage))
DATE_COLUMNS: tuple[str, ...] = ("date", "fwd_date", "edit_date")
LIST_COLUMNS: tuple[str, ...] = ("entities", "reactions")
_ENT_INDEX = MESSAGE_COLUMNS.index("entities")
_RX_INDEX = MESSAGE_COLUMNS.index("reactions")

_ENTITY_ARROW = pa.struct(
    [
        ("type", pa.string()),
        ("offset", pa.int32()),
        ("length", pa.int32()),
        ("url", pa.string()),
        ("user_id", pa.int64()),
        ("document_id", pa.int64()),
        ("language", pa.string()),
    ]
)
_REACTION_ARROW = pa.struct([("emoji", pa.string()), ("document_id", pa.int64()), ("count", pa.int32())])

# Arrow types of the columns as they are built (dates as int64 epoch seconds).
_RAW_ARROW: dict[str, pa.DataType] = {
    "chat_id": pa.int64(),
    "id": pa.int64(),
    "date": pa.int64(),
    "sender_id": pa.int64(),
    "sender_kind": pa.string(),
    "text": pa.string(),
    "entities": pa.list_(_ENTITY_ARROW),
    "reply_to_id": pa.int64(),
    "thread_id": pa.int64(),
    "fwd_peer_id": pa.int64(),
    "fwd_peer_kind": pa.string(),
    "fwd_name": pa.string(),
    "fwd_date": pa.int64(),
    "fwd_post_id": pa.int64(),
    "views": pa.int64(),
    "forwards": pa.int64(),
    "replies": pa.int64(),
    "edit_date": pa.int64(),
    "grouped_id": pa.int64(),
    "pinned": pa.bool_(),
    "post_author": pa.string(),
    "via_bot_id": pa.int64(),
    "media_type": pa.string(),
    "media_mime": pa.string(),
    "media_size": pa.int64(),
    "media_duration": pa.float64(),
    "media_width": pa.int32(),
    "media_height": pa.int32(),
    "media_file_name": pa.string(),
    "media_file_id": pa.int64(),
    "media_path": pa.string(),
    "media_error": pa.string(),
    "reactions": pa.list_(_REACTION_ARROW),
    "reactions_total": pa.int64(),
    "service_action": pa.string(),
    "date_naive": pa.bool_(),
}
assert tuple(_RAW_ARROW) == MESSAGE_COLUMNS, "schema table and ExportedMessage fields drifted"

_UTC_US = pa.timestamp("us", tz="UTC")


def arrow_schema(*, raw: bool = False) -> pa.Schema:
    """The Arrow schema of the dataset (dates as ``timestamp[us, UTC]``), or as built (``raw``: int64)."""
    return pa.schema(
        [
            (name, (dtype if raw or name not in DATE_COLUMNS else _UTC_US))
            for name, dtype in _RAW_ARROW.items()
        ]
    )


def polars_schema() -> pl.Schema:
    """The typed Polars schema of a message frame; an empty export still has every column."""
    return pl.Schema(pl.from_arrow(arrow_schema().empty_table()).schema)  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------------
# Column batches: the bulk path appends straight into per-field lists; nested lists are kept flat
# (offsets + child columns) so building Arrow arrays never walks Python dicts.


class ColumnBatch:
    """Per-field column lists for messages; ``entities``/``reactions`` as offsets + flat child lists.

    Append a row with :meth:`append_row` (positional values in ``MESSAGE_COLUMNS`` order, with the two
    list columns passed as iterables of tuples in ``ENTITY_FIELDS``/``REACTION_FIELDS`` order, or None).
    """

    __slots__ = ("_scalar", "cols", "ent", "ent_offsets", "n", "rx", "rx_offsets")

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {name: [] for name in MESSAGE_COLUMNS if name not in LIST_COLUMNS}
        self.ent: tuple[list[Any], ...] = tuple([] for _ in ENTITY_FIELDS)
        self.ent_offsets: list[int] = [0]
        self.rx: tuple[list[Any], ...] = tuple([] for _ in REACTION_FIELDS)
        self.rx_offsets: list[int] = [0]
        self.n = 0
        # (row index, column list) for the scalar columns, in row order: the hot loop of append_row
        self._scalar = [self.cols[name].append for name in MESSAGE_COLUMNS if name not in LIST_COLUMNS]

    def __len__(self) -> int:
        return self.n

    def add_entities(self, items: Iterable[Sequence[Any]] | None) -> None:
        _add_nested(items, self.ent, self.ent_offsets)

    def add_reactions(self, items: Iterable[Sequence[Any]] | None) -> None:
        _add_nested(items, self.rx, self.rx_offsets)

    def append_row(self, row: Sequence[Any]) -> None:
        """Append one row tuple in ``MESSAGE_COLUMNS`` order (list columns as lists of tuples or None)."""
        appends = self._scalar
        i = 0
        for j, value in enumerate(row):
            if j == _ENT_INDEX:
                _add_nested(value, self.ent, self.ent_offsets)
            elif j == _RX_INDEX:
                _add_nested(value, self.rx, self.rx_offsets)
            else:
                appends[i](value)
                i += 1
        self.n += 1

    def extend_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        """Append many row tuples at once: one transpose (C-level ``zip``) and one ``extend`` per column."""
        if not rows:
            return
        names = MESSAGE_COLUMNS
        cols = self.cols
        for j, values in enumerate(zip(*rows)):
            if j == _ENT_INDEX:
                ent, ent_offsets = self.ent, self.ent_offsets
                for v in values:
                    _add_nested(v, ent, ent_offsets)
            elif j == _RX_INDEX:
                rx, rx_offsets = self.rx, self.rx_offsets
                for v in values:
                    _add_nested(v, rx, rx_offsets)
            else:
                cols[names[j]].extend(values)
        self.n += len(rows)

    def add_record(self, rec: ExportedMessage) -> None:
        cols = self.cols
        for name in cols:
            cols[name].append(getattr(rec, name))
        self.add_entities(
            None
            if rec.entities is None
            else [
                (e.type, e.offset, e.length, e.url, e.user_id, e.document_id, e.language)
                for e in rec.entities
            ]
        )
        self.add_reactions(
            None if rec.reactions is None else [(r.emoji, r.document_id, r.count) for r in rec.reactions]
        )
        self.n += 1

    def to_arrow(self) -> pa.Table:
        """An Arrow table with the dataset schema (dates cast to ``timestamp[us, UTC]``)."""
        arrays = []
        for name in MESSAGE_COLUMNS:
            if name == "entities":
                arrays.append(_list_array(self.ent_offsets, self.ent, _ENTITY_ARROW))
            elif name == "reactions":
                arrays.append(_list_array(self.rx_offsets, self.rx, _REACTION_ARROW))
            elif name in DATE_COLUMNS:
                secs = pa.array(self.cols[name], pa.int64())
                arrays.append(pc.multiply(secs, 1_000_000).cast(_UTC_US))
            else:
                arrays.append(_array(self.cols[name], _RAW_ARROW[name]))
        return pa.Table.from_arrays(arrays, schema=arrow_schema())

    def to_polars(self) -> pl.DataFrame:
        return pl.from_arrow(self.to_arrow())  # type: ignore[return-value]


def _add_nested(
    items: Iterable[Sequence[Any]] | None, children: tuple[list[Any], ...], offsets: list[int]
) -> None:
    # offsets[0] holds the running total; a null entry is recorded as a negative end offset.
    if items is None:
        offsets.append(-1 - abs(_last(offsets)))
        return
    end = _last(offsets)
    for item in items:
        for col, value in zip(children, item):
            col.append(value)
        end += 1
    offsets.append(end)


def _last(offsets: list[int]) -> int:
    v = offsets[-1]
    return v if v >= 0 else -1 - v


def _array(values: list[Any], dtype: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, dtype)
    except UnicodeEncodeError:
        # Lone surrogates (from JSON imports or other sources; Telethon itself decodes with
        # errors="replace") cannot be UTF-8: store U+FFFD in their place, as Telethon would.
        return pa.array([_scrub(v) for v in values], dtype)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):  # UTF-16 round trip: a valid pair becomes its character, a lone half U+FFFD
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return value


def _list_array(offsets: list[int], children: tuple[list[Any], ...], struct: pa.StructType) -> pa.Array:
    child_arrays = [_array(col, struct.field(i).type) for i, col in enumerate(children)]
    values = pa.StructArray.from_arrays(child_arrays, fields=list(struct))
    raw = pa.array(offsets, pa.int32())
    is_null = pc.less(raw, 0)
    clean = pc.if_else(is_null, pc.subtract(-1, raw), raw)
    return pa.ListArray.from_arrays(clean, values, type=pa.list_(struct), mask=is_null.slice(1))


# --------------------------------------------------------------------------------------------------


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic collector while building many records (8 full collections per 1M objects),
    and restore its previous state even on error."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Records(Sequence[ExportedMessage]):
    """A list of :class:`ExportedMessage` with a fast, typed ``to_polars()``."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[ExportedMessage] = ()) -> None:
        self._items: list[ExportedMessage] = list(items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return Records(self._items[index])
        return self._items[index]

    def __iter__(self) -> Iterator[ExportedMessage]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"Records({len(self._items)} messages)"

    def append(self, rec: ExportedMessage) -> None:
        self._items.append(rec)

    def extend(self, recs: Iterable[ExportedMessage]) -> None:
        self._items.extend(recs)

    def to_batch(self) -> ColumnBatch:
        batch = ColumnBatch()
        for rec in self._items:
            batch.add_record(rec)
        return batch

    def to_arrow(self) -> pa.Table:
        return self.to_batch().to_arrow()

    def to_polars(self) -> pl.DataFrame:
        """A typed frame (schema: :func:`polars_schema`), also when empty."""
        return self.to_batch().to_polars()
