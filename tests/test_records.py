"""Records and frames: slotted records everywhere, one exact schema, lossless record -> frame -> record."""

from __future__ import annotations

import dataclasses
import gc
import importlib
from datetime import UTC, datetime

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from telethon.extensions import BinaryReader

from tgkit import convert
from tgkit.offline.world import CHANNEL_ID, GROUP_ID, World
from tgkit.records import (
    DATE_COLUMNS,
    ENTITY_FIELDS,
    MESSAGE_COLUMNS,
    REACTION_FIELDS,
    ColumnBatch,
    Entity,
    ExportedMessage,
    Reaction,
    Records,
    arrow_schema,
    gc_paused,
    polars_schema,
)

RECORD_MODULES = (
    "tgkit.records",
    "tgkit.export",
    "tgkit.hardware",
    "tgkit.video",
    "tgkit.metrics",
    "tgkit.peers",
    "tgkit.dataset",
    "tgkit.pacing",
    "tgkit.desktop",
)

# --------------------------------------------------------------------------------------------------
# Every record class is slotted


def _tgkit_dataclasses() -> list[type]:
    found: dict[str, type] = {}
    for module_name in RECORD_MODULES:
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and dataclasses.is_dataclass(value)
                and value.__module__.startswith("tgkit")
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[name] for name in sorted(found)]


def test_every_tgkit_dataclass_is_slotted() -> None:
    classes = _tgkit_dataclasses()
    assert len(classes) >= 7, classes  # the seven record classes of DESIGN.md at least
    unslotted = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in classes
        if "__slots__" not in vars(cls) or any("__dict__" in vars(base) for base in cls.__mro__[:-1])
    ]
    assert not unslotted, f"dataclasses with a __dict__ (make them @dataclass(slots=True)): {unslotted}"


def test_record_instances_have_no_dict() -> None:
    rec = convert.row_to_record(_rows(World(seed=3, channel_messages=40, group_messages=10), 40)[5])
    for obj in (rec, Entity("bold", 0, 1), Reaction("👍", None, 1)):
        assert not hasattr(obj, "__dict__"), type(obj)


# --------------------------------------------------------------------------------------------------
# Schema


def test_empty_frames_have_the_full_typed_schema() -> None:
    schema = polars_schema()
    assert tuple(schema.names()) == MESSAGE_COLUMNS
    assert schema["date"] == pl.Datetime("us", "UTC")
    assert schema["entities"] == pl.List(
        pl.Struct(
            {
                "type": pl.String,
                "offset": pl.Int32,
                "length": pl.Int32,
                "url": pl.String,
                "user_id": pl.Int64,
                "document_id": pl.Int64,
                "language": pl.String,
            }
        )
    )
    assert schema["reactions"] == pl.List(
        pl.Struct({"emoji": pl.String, "document_id": pl.Int64, "count": pl.Int32})
    )
    for frame in (Records().to_polars(), ColumnBatch().to_polars()):
        assert frame.schema == schema
        assert frame.height == 0
    for table in (Records().to_arrow(), ColumnBatch().to_arrow()):
        assert table.schema.equals(arrow_schema())
        assert table.num_rows == 0


# --------------------------------------------------------------------------------------------------
# Real messages from the offline world: bulk path == record path == an independent pyarrow reference


def _rows(world: World, limit: int) -> list[tuple]:
    rows = []
    for chat in (CHANNEL_ID, GROUP_ID):
        for msg_id in range(1, world.chats[chat].max_id + 1):
            msg = BinaryReader(world.message_bytes(chat, msg_id)).tgread_object()  # as Telethon reads it
            row = convert.message_row(msg, chat)
            if row is not None:
                rows.append(row)
    return rows[:limit]


@pytest.fixture(scope="module")
def world_rows(small_world: World) -> list[tuple]:
    return _rows(small_world, 10_000)


def _reference_table(rows: list[tuple]) -> pa.Table:
    """The frame as plain pyarrow builds it from dicts: the oracle for the fast paths."""
    dicts = []
    for row in rows:
        d = dict(zip(MESSAGE_COLUMNS, row))
        for name in DATE_COLUMNS:
            if d[name] is not None:
                d[name] = datetime.fromtimestamp(d[name], UTC)
        if d["entities"] is not None:
            d["entities"] = [dict(zip(ENTITY_FIELDS, e)) for e in d["entities"]]
        if d["reactions"] is not None:
            d["reactions"] = [dict(zip(REACTION_FIELDS, r)) for r in d["reactions"]]
        dicts.append(d)
    return pa.Table.from_pylist(dicts, schema=arrow_schema())


def test_bulk_path_and_record_path_give_the_same_frame(world_rows: list[tuple]) -> None:
    batch = ColumnBatch()
    for row in world_rows:
        batch.append_row(row)
    recs = Records(convert.row_to_record(r) for r in world_rows)
    bulk = batch.to_polars()
    assert bulk.schema == polars_schema()
    assert bulk.height == len(world_rows)
    assert bulk["entities"].drop_nulls().list.len().sum() > 0
    assert bulk["reactions"].drop_nulls().list.len().sum() > 0
    assert bulk.equals(recs.to_polars())
    reference = _reference_table(world_rows)
    assert batch.to_arrow().equals(reference)
    assert recs.to_arrow().equals(reference)
    assert bulk.equals(pl.from_arrow(reference))  # type: ignore[arg-type]


def test_records_convert_in_chunks_like_one_batch(world_rows: list[tuple], monkeypatch) -> None:
    import tgkit.records as records

    recs = Records(convert.row_to_record(r) for r in world_rows[:500])
    whole = recs.to_polars()
    monkeypatch.setattr(records, "_CHUNK", 64)
    assert recs.to_polars().equals(whole)


def test_append_row_rejects_a_short_row() -> None:
    with pytest.raises(ValueError, match="36 values"):
        ColumnBatch().append_row((1, 2, 3))


# --------------------------------------------------------------------------------------------------
# record -> frame -> record


_i64 = st.integers(-(2**63), 2**63 - 1)
_i32 = st.integers(-(2**31), 2**31 - 1)
_date = st.integers(0, 4_102_444_800)  # 1970 .. 2100, epoch seconds
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)  # any scalar value, no lone halves
_opt = st.none


def _opt_of(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(_opt(), strategy)


entities = st.builds(
    Entity,
    _text,
    _i32,
    _i32,
    _opt_of(_text),
    _opt_of(_i64),
    _opt_of(_i64),
    _opt_of(_text),
)
reactions = st.builds(Reaction, _opt_of(_text), _opt_of(_i64), _i32)

_SCALAR = {
    int: _i64,
    str: _text,
    bool: st.booleans(),
    float: st.floats(allow_nan=False),
}
_FIELD_TYPES = {
    "media_width": _i32,
    "media_height": _i32,
}


def _field_strategy(field: dataclasses.Field) -> st.SearchStrategy:
    if field.name in DATE_COLUMNS:
        return _date if field.name == "date" else _opt_of(_date)
    if field.name == "entities":
        return _opt_of(st.lists(entities, max_size=3))
    if field.name == "reactions":
        return _opt_of(st.lists(reactions, max_size=3))
    if field.name in _FIELD_TYPES:
        return _opt_of(_FIELD_TYPES[field.name])
    annotation = str(field.type)
    base = next(_SCALAR[t] for t in (bool, int, float, str) if annotation.startswith(t.__name__))
    return base if field.name in ("chat_id", "id") else _opt_of(base)


messages = st.builds(ExportedMessage, *(_field_strategy(f) for f in dataclasses.fields(ExportedMessage)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, max_size=12))
def test_record_frame_record_round_trip(recs: list[ExportedMessage]) -> None:
    frame = Records(recs).to_polars()
    assert frame.schema == polars_schema()
    back = Records.from_polars(frame)
    assert list(back) == recs  # None stays None, [] stays [], unicode and nested values intact
    # the bulk path agrees with the record path on the same values
    batch = ColumnBatch()
    for rec in recs:
        batch.add_record(rec)
    assert batch.to_polars().equals(frame)


def test_lone_surrogates_are_replaced_on_every_path() -> None:
    rec = ExportedMessage(1, 2, 3, text="a\ud800b", entities=[Entity("url", 0, 1, url="\udfff")])
    batch = ColumnBatch()
    batch.add_record(rec)
    for frame in (Records([rec]).to_polars(), batch.to_polars()):
        assert frame["text"].to_list() == ["a\ufffdb"]
        assert frame["entities"][0][0]["url"] == "\ufffd"


# --------------------------------------------------------------------------------------------------
# gc_paused


@pytest.mark.parametrize("enabled", [True, False])
def test_gc_paused_restores_the_collector_even_on_error(enabled: bool) -> None:
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        with pytest.raises(RuntimeError), gc_paused():
            assert not gc.isenabled()
            raise RuntimeError("boom")
        assert gc.isenabled() is enabled
        with gc_paused():
            with gc_paused():
                pass
            assert not gc.isenabled()  # nested use keeps it paused until the outer block ends
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
