"""Slots versus dicts, measured on tgkit's own message records (issue #9).

Builds N rows of real ``ExportedMessage`` values once (real Telethon messages from the offline world,
converted by ``tgkit.convert.message_row`` and cycled with new ids), then measures, side by side in one
run, for five layouts of the same values:

* ``dict``        one dict per message, nested dicts for entities/reactions
* ``dataclass``   a plain ``@dataclass`` with the same fields (has a ``__dict__``)
* ``slots``       tgkit's ``ExportedMessage`` (``@dataclass(slots=True)``)
* ``namedtuple``  a ``collections.namedtuple`` with the same fields
* ``columns``     tgkit's bulk path: ``ColumnBatch`` column lists (no per-message object)

what is measured:

* ``container_bytes``  ``sys.getsizeof`` of the per-message container alone (for ``dataclass`` the
  instance plus its ``__dict__``; for ``columns`` the column lists' pointer slots per row).
* ``total_bytes``      container plus everything it owns, walked recursively with a per-record seen-set
  (nested lists and their entity/reaction containers, ints, floats, strings), on an evenly spaced sample.
  Objects every record shares in a real export are not counted: None, True/False, small ints
  (-5..256) and the literal category strings tgkit writes (``"channel"``, ``"photo"``, ...).
  The values are the same objects in every layout, so the difference is the containers' alone.
* ``build_s`` / ``build_gc_paused_s``  building the N objects from the rows (positional where the
  layout allows), with the cyclic collector on (``full_collections`` counts gen-2 runs) and paused.
* ``access_ns``        reading one field of every object (``r.views`` / ``d["views"]``).
* ``frame_rows_per_s`` to a Polars frame: ``pl.DataFrame(objects, infer_schema_length=None)`` for
  dict/dataclass/slots/namedtuple (the naive route; with the default inference length Polars fails on
  these rows: a column that is null in the first 100 rows gets the wrong type), tgkit's ``Records.to_polars()`` and ``ColumnBatch.to_polars()`` for tgkit
  (typed schema). tgkit: best of ``repeats`` after an untimed warm-up; the naive routes: one run on at
  most 100k objects (rows/s does not depend on N). A first conversion fills CPython's
  UTF-8 cache of the shared strings, equally for every layout. ``frame_cpu_rows_per_s`` is the same
  with this thread's CPU time, for a shared machine.

``python benchmarks/bench_records.py [--n 1000000]`` prints one JSON line per layout and a summary
line last, and stores the run in ``data/benchmarks/records.json`` (keyed by N).  ``run(n)`` returns the
same dict, for the slots-vs-dicts notebook.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import sys
import time
from collections import namedtuple
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
from telethon.extensions import BinaryReader

from tgkit import convert
from tgkit.offline.world import CHANNEL_ID, GROUP_ID, World
from tgkit.records import (
    ENTITY_FIELDS,
    MESSAGE_COLUMNS,
    REACTION_FIELDS,
    ColumnBatch,
    Entity,
    ExportedMessage,
    Reaction,
    Records,
    gc_paused,
)

RESULTS = Path(__file__).resolve().parent.parent / "data" / "benchmarks" / "records.json"
_ENT = MESSAGE_COLUMNS.index("entities")
_RX = MESSAGE_COLUMNS.index("reactions")
_ID = MESSAGE_COLUMNS.index("id")
_CATEGORY_COLUMNS = ("sender_kind", "fwd_peer_kind", "media_type", "service_action")

# The comparison layouts, with the same fields as tgkit's records.
PlainMessage = dataclasses.make_dataclass(
    "PlainMessage", [(f.name, Any, f.default) for f in dataclasses.fields(ExportedMessage)]
)
PlainEntity = dataclasses.make_dataclass(
    "PlainEntity", [(f.name, Any, f.default) for f in dataclasses.fields(Entity)]
)
PlainReaction = dataclasses.make_dataclass(
    "PlainReaction", [(f.name, Any, f.default) for f in dataclasses.fields(Reaction)]
)
MessageTuple = namedtuple("MessageTuple", MESSAGE_COLUMNS)  # type: ignore[misc]
EntityTuple = namedtuple("EntityTuple", ENTITY_FIELDS)  # type: ignore[misc]
ReactionTuple = namedtuple("ReactionTuple", REACTION_FIELDS)  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# rows


def base_rows(unique: int = 5_000, seed: int = 7) -> list[tuple]:
    """Rows of real messages: the offline world's messages as Telethon deserialises them, converted."""
    world = World(seed=seed, channel_messages=unique * 3 // 5, group_messages=unique * 2 // 5, videos=False)
    rows = []
    for chat in (CHANNEL_ID, GROUP_ID):
        for msg_id in range(1, world.chats[chat].max_id + 1):
            row = convert.message_row(BinaryReader(world.message_bytes(chat, msg_id)).tgread_object(), chat)
            if row is not None:
                rows.append(row)
    return rows


def make_rows(n: int, base: list[tuple]) -> list[tuple]:
    """``n`` rows cycling ``base``, each with a new id (a new int object, as in a real export)."""
    with gc_paused():
        return [(*row[:_ID], 10_000_000 + i, *row[_ID + 1 :]) for i, row in zip(range(n), _cycle(base, n))]


def _cycle(base: list[tuple], n: int):
    while n > 0:
        yield from base[:n]
        n -= len(base)


# --------------------------------------------------------------------------------------------------
# layouts: how each one is built from a row


def _as_dict(row: tuple) -> dict:
    d = dict(zip(MESSAGE_COLUMNS, row))
    if row[_ENT] is not None:
        d["entities"] = [dict(zip(ENTITY_FIELDS, e)) for e in row[_ENT]]
    if row[_RX] is not None:
        d["reactions"] = [dict(zip(REACTION_FIELDS, r)) for r in row[_RX]]
    return d


def _nested(row: tuple, message: Callable, entity: Callable, reaction: Callable) -> Any:
    ents, rxs = row[_ENT], row[_RX]
    if ents is None and rxs is None:
        return message(*row)
    values = list(row)
    if ents is not None:
        values[_ENT] = [entity(*e) for e in ents]
    if rxs is not None:
        values[_RX] = [reaction(*r) for r in rxs]
    return message(*values)


def _build_dicts(rows: list[tuple]) -> list:
    return [_as_dict(r) for r in rows]


def _build_dataclasses(rows: list[tuple]) -> list:
    return [_nested(r, PlainMessage, PlainEntity, PlainReaction) for r in rows]


def _build_slots(rows: list[tuple]) -> list:
    return [_nested(r, ExportedMessage, Entity, Reaction) for r in rows]


def _build_namedtuples(rows: list[tuple]) -> list:
    return [_nested(r, MessageTuple, EntityTuple, ReactionTuple) for r in rows]


def _build_columns(rows: list[tuple]) -> ColumnBatch:
    batch = ColumnBatch()
    batch.extend_rows(rows)  # what convert.append_messages does with each page of rows
    return batch


BUILDERS: dict[str, Callable[[list[tuple]], Any]] = {
    "dict": _build_dicts,
    "dataclass": _build_dataclasses,
    "slots": _build_slots,
    "namedtuple": _build_namedtuples,
    "columns": _build_columns,
}


# --------------------------------------------------------------------------------------------------
# memory


def _container_bytes(obj: Any) -> int:
    size = sys.getsizeof(obj)
    d = getattr(obj, "__dict__", None)
    if d is not None:
        size += sys.getsizeof(d)
    return size


def _children(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [*obj.values()]  # keys are the interned field names every dict shares
    if isinstance(obj, list | tuple):
        return list(obj)
    d = getattr(obj, "__dict__", None)
    if d is not None:
        return [*d.values()]
    slots = getattr(type(obj), "__slots__", ())
    return [getattr(obj, s) for s in slots if hasattr(obj, s)]


def _deep_bytes(obj: Any, shared: set[int], *, leaves_only: bool = False) -> int:
    """Everything ``obj`` owns, each object once (seen-set), shared singletons and literals excluded
    (``leaves_only``: the values alone, without any container)."""
    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen or id(o) in shared or o is None or o is True or o is False:
            continue
        if type(o) is int and -5 <= o <= 256:
            continue
        seen.add(id(o))
        leaf = isinstance(o, int | float | str | bytes)
        if leaf or not leaves_only:
            total += _container_bytes(o)
        if not leaf:
            stack.extend(_children(o))
    return total


def _shared_literals(rows: list[tuple]) -> set[int]:
    literals: set[int] = set()
    for name in _CATEGORY_COLUMNS:
        j = MESSAGE_COLUMNS.index(name)
        literals.update(id(r[j]) for r in rows if r[j] is not None)
    literals.update(id(e[0]) for r in rows if r[_ENT] for e in r[_ENT])  # entity type names
    return literals


def _memory(layout: str, built: Any, rows: list[tuple], shared: set[int], sample: int) -> dict[str, float]:
    n = len(rows)
    step = max(1, n // sample)
    if layout == "columns":  # the list slots per row, plus the same values the records hold
        lists = [*built.cols.values(), *built.ent, *built.rx, built.ent_offsets, built.rx_offsets]
        container = sum(sys.getsizeof(x) for x in lists) / n
        picked_rows = rows[::step]
        values = sum(_deep_bytes(r, shared, leaves_only=True) for r in picked_rows) / len(picked_rows)
        return {"container_bytes": round(container, 1), "total_bytes": round(container + values, 1)}
    picked = built[::step]
    container = sum(_container_bytes(o) for o in picked) / len(picked)
    total = sum(_deep_bytes(o, shared) for o in picked) / len(picked)
    return {"container_bytes": round(container, 1), "total_bytes": round(total, 1)}


# --------------------------------------------------------------------------------------------------
# timing


NAIVE_MAX = 100_000


def _timed_once(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    t0, c0 = time.perf_counter(), time.thread_time()
    result = fn()
    return time.perf_counter() - t0, time.thread_time() - c0, result


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(best wall seconds, best thread-CPU seconds, last result) after one untimed warm-up."""
    result = fn()
    wall = cpu = float("inf")
    for _ in range(repeats):
        result = None
        t0, c0 = time.perf_counter(), time.thread_time()
        result = fn()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.thread_time() - c0)
    return wall, cpu, result


def _build_timed(
    build: Callable[[list[tuple]], Any], rows: list[tuple], paused: bool
) -> tuple[float, int, Any]:
    gc.collect()
    full_before = gc.get_stats()[2]["collections"]
    t0 = time.perf_counter()
    if paused:
        with gc_paused():
            built = build(rows)
    else:
        built = build(rows)
    seconds = time.perf_counter() - t0
    return seconds, gc.get_stats()[2]["collections"] - full_before, built


def _naive_frame(objects: list) -> pl.DataFrame:
    """``pl.DataFrame(objects)``, inferring from every row.  Polars' own dataclass route fails on these
    values (nested entity dataclasses with mixed None/str/int fields), so dataclasses take the
    common workaround, ``dataclasses.asdict`` per object."""
    if objects and dataclasses.is_dataclass(objects[0]):
        return pl.DataFrame([dataclasses.asdict(o) for o in objects], infer_schema_length=None)
    return pl.DataFrame(objects, infer_schema_length=None)


def run(n: int = 200_000, *, repeats: int = 3, sample: int = 20_000, unique: int = 5_000) -> dict[str, Any]:
    """Measure every layout on ``n`` rows; returns ``{"layouts": {...}, "summary": {...}, ...}``."""
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        base = base_rows(unique)
        rows = make_rows(n, base)
        shared = _shared_literals(base)
        layouts: dict[str, dict[str, Any]] = {}
        # the naive routes run once on at most NAIVE_MAX objects (rows/s does not depend on N; the
        # asdict route manages ~5k rows/s); one tgkit conversion first fills the UTF-8 cache for all
        naive_n = min(n, NAIVE_MAX)
        _build_columns(rows).to_polars()
        for layout, build in BUILDERS.items():
            res: dict[str, Any] = {"bench": "records", "layout": layout, "n": n}
            res["build_s"], res["full_collections"], built = _build_timed(build, rows, paused=False)
            del built
            res["build_gc_paused_s"], _, built = _build_timed(build, rows, paused=True)
            res.update(_memory(layout, built, rows, shared, sample))
            gc.collect()
            with gc_paused():  # timing conversions, not the collector walking the built objects
                if layout == "columns":
                    col = built.cols["views"]
                    t0 = time.perf_counter()
                    for _v in col:
                        pass
                    res["access_ns"] = round((time.perf_counter() - t0) / n * 1e9, 1)
                    wall, cpu, frame = _timed(built.to_polars, repeats)
                elif layout == "dict":
                    t0 = time.perf_counter()
                    for d in built:
                        _ = d["views"]
                    res["access_ns"] = round((time.perf_counter() - t0) / n * 1e9, 1)
                    wall, cpu, frame = _timed_once(partial(_naive_frame, built[:naive_n]))
                else:
                    t0 = time.perf_counter()
                    for r in built:
                        _ = r.views
                    res["access_ns"] = round((time.perf_counter() - t0) / n * 1e9, 1)
                    wall, cpu, frame = _timed_once(partial(_naive_frame, built[:naive_n]))
                frame_n = frame.height
                res["frame_n"] = frame_n
                res["frame_rows_per_s"] = round(frame_n / wall)
                res["frame_cpu_rows_per_s"] = round(frame_n / cpu)
                if layout == "slots":  # tgkit's record path: typed schema, no inference
                    recs = Records(built)
                    wall, cpu, frame = _timed(recs.to_polars, repeats)
                    res["records_to_polars_rows_per_s"] = round(n / wall)
                    res["records_to_polars_cpu_rows_per_s"] = round(n / cpu)
                    del recs
                del frame
            del built
            gc.collect()
            layouts[layout] = res
    finally:
        if not was_enabled:
            gc.disable()

    d, s, c = layouts["dict"], layouts["slots"], layouts["columns"]
    summary = {
        "bench": "records",
        "n": n,
        "dict_bytes_per_record": d["total_bytes"],
        "slots_bytes_per_record": s["total_bytes"],
        "memory_saving_pct": round(100 * (1 - s["total_bytes"] / d["total_bytes"]), 1),
        "container_saving_pct": round(100 * (1 - s["container_bytes"] / d["container_bytes"]), 1),
        "build_speedup_vs_dict": round(d["build_s"] / s["build_gc_paused_s"], 2),
        "to_polars_rows_per_s": c["frame_rows_per_s"],  # the bulk path (ColumnBatch.to_polars)
        "to_polars_cpu_rows_per_s": c["frame_cpu_rows_per_s"],
        "records_to_polars_rows_per_s": s["records_to_polars_rows_per_s"],
        "frame_ratio_vs_naive": round(s["records_to_polars_rows_per_s"] / d["frame_rows_per_s"], 2),
        "bulk_frame_ratio_vs_naive": round(c["frame_rows_per_s"] / d["frame_rows_per_s"], 2),
    }
    machine = {
        "python": platform.python_version(),
        "polars": pl.__version__,
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    return {"layouts": layouts, "summary": summary, "machine": machine}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="records per layout (default 200000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each conversion")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (runs keyed by N)")
    args = parser.parse_args(argv)
    result = run(args.n, repeats=args.repeats)
    for res in result["layouts"].values():
        print(json.dumps(res))
    print(json.dumps(result["summary"]))
    stored: dict[str, Any] = {}
    if args.out.exists():
        stored = json.loads(args.out.read_text())
    stored[str(args.n)] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
