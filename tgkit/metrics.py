"""Where the time went, what every cache saved, and what the machine was doing.

:class:`MetricsCollector` observes the export pipeline (it never drives it): per-stage timers, counters,
gauges, API calls by request type, cache statistics and bytes written.  Recording is cheap -- a timer is
two ``perf_counter_ns`` calls and one list append -- and all aggregation happens when you read.

:class:`ResourceMonitor` samples CPU, memory, disk and network with psutil in a daemon thread.  A counter
the platform does not offer is recorded as missing (null), never as a crash.

Outputs: ``to_json`` (the versioned layout in docs/METRICS.md), ``to_polars`` (long format: stage,
metric, value, t) and ``monitor.samples.to_polars()`` / ``.to_parquet()``.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from time import perf_counter_ns
from types import TracebackType
from typing import Any, Final

import polars as pl

from ._files import atomic_write
from .errors import CacheError

__all__ = [
    "METRICS_FORMAT",
    "METRICS_VERSION",
    "RESOURCE_COLUMNS",
    "STAGES",
    "MetricsCollector",
    "ResourceMonitor",
    "ResourceSamples",
]

METRICS_FORMAT: Final = "tgkit.metrics"
METRICS_VERSION: Final = 1
#: The pipeline's stages, in the order tables and plots show them (others follow in first-seen order).
STAGES: Final = ("resolve", "fetch", "convert", "write", "download", "transcode", "flood_wait")

# Timer samples are (start_ns, end_ns) tuples in a plain list (a tuple append is atomic, so threads
# cannot tear a pair).  Such a sample costs ~128 bytes; past this many samples a stage's list is packed
# into an int64 array (16 bytes a sample).  Packing costs ~200 ns a sample (measured: converting Python
# ints dominates, numpy/polars are no faster), so it starts late: per-page or per-batch timers of any
# ordinary export never pay it, and a pathological per-message timer stays bounded at 16 B a sample.
_PACK_AT: Final = 65536

_STAGE_TABLE_SCHEMA: Final[dict[str, pl.DataType | type[pl.DataType]]] = {
    "stage": pl.String,
    "count": pl.Int64,
    "total_s": pl.Float64,
    "mean_ms": pl.Float64,
    "p50_ms": pl.Float64,
    "p95_ms": pl.Float64,
    "max_ms": pl.Float64,
}
_LONG_SCHEMA: Final[dict[str, pl.DataType | type[pl.DataType]]] = {
    "stage": pl.String,
    "metric": pl.String,
    "value": pl.Float64,
    "t": pl.Float64,
}


def _split_name(name: str, default_stage: str) -> tuple[str, str]:
    """``"download.files"`` -> ``("download", "files")``; a name without a dot goes to ``default_stage``."""
    stage, dot, metric = name.partition(".")
    return (stage, metric) if dot and stage and metric else (default_stage, name)


class _Timer:
    """``with collector.timer("fetch"):`` -- records one sample on exit, even when the block raises."""

    __slots__ = ("_collector", "_stage", "_t0")

    def __init__(self, collector: MetricsCollector, stage: str) -> None:
        self._collector = collector
        self._stage = stage
        self._t0 = 0

    def __enter__(self) -> _Timer:
        self._t0 = perf_counter_ns()
        return self

    def __exit__(self, *exc: object) -> None:
        t1 = perf_counter_ns()
        m = self._collector
        buf = m._samples.get(self._stage)
        if buf is None:
            buf = m._samples.setdefault(self._stage, [])
        buf.append((self._t0, t1))
        if len(buf) >= _PACK_AT:
            m._pack(self._stage, buf)


class _NullTimer:
    __slots__ = ()

    def __enter__(self) -> _NullTimer:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NULL_TIMER: Final = _NullTimer()


class MetricsCollector:
    """Stage timers, counters, gauges, API calls, cache stats and bytes written for one run.

    Hot paths use ``t0 = m.start(); ...; m.stop("fetch", t0)``; elsewhere ``with m.timer("fetch"):``.
    A disabled collector records nothing and its timers are no-ops.  Counter and gauge names may carry
    a stage prefix (``"download.files"``); names without one belong to the ``"run"`` stage.
    """

    __slots__ = (
        "_api_calls",
        "_bytes_written",
        "_caches",
        "_counters",
        "_end_ns",
        "_gauges",
        "_lock",
        "_origin_ns",
        "_packed",
        "_samples",
        "enabled",
        "meta",
        "started_at",
    )

    def __init__(self, enabled: bool = True, *, meta: Mapping[str, Any] | None = None) -> None:
        self.enabled = enabled
        #: Free-form, JSON-serialisable facts about the run (chat, tgkit version...).  Never put secrets here.
        self.meta: dict[str, Any] = dict(meta or {})
        self.started_at = datetime.now(UTC)
        self._origin_ns = perf_counter_ns()
        self._end_ns: int | None = None
        self._samples: dict[str, list[tuple[int, int]]] = {}
        self._packed: dict[str, array[int]] = {}  # flattened start, end, start, end ... (int64)
        self._counters: dict[str, int | float] = {}
        self._gauges: dict[str, list[tuple[int, float]]] = {}
        self._api_calls: dict[str, int] = {}
        self._caches: dict[str, dict[str, int | float]] = {}
        self._bytes_written = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "" if self.enabled else ", enabled=False"
        return f"<MetricsCollector stages={list(self._ordered_stages())}{state}>"

    # ---------------------------------------------------------------------------------------- record

    def start(self) -> int:
        """A timer start (ns); pass it to :meth:`stop`.  Returns 0 when disabled."""
        return perf_counter_ns() if self.enabled else 0

    def stop(self, stage: str, t0: int) -> None:
        """Record one ``stage`` sample that started at ``t0`` (from :meth:`start`) and ends now."""
        if not self.enabled:
            return
        t1 = perf_counter_ns()
        buf = self._samples.get(stage)
        if buf is None:
            buf = self._samples.setdefault(stage, [])
        buf.append((t0, t1))
        if len(buf) >= _PACK_AT:
            self._pack(stage, buf)

    def timer(self, stage: str) -> _Timer | _NullTimer:
        """Context manager timing its block as one ``stage`` sample (recorded even if the block raises)."""
        return _Timer(self, stage) if self.enabled else _NULL_TIMER

    def add_time(self, stage: str, seconds: float) -> None:
        """Record a duration measured elsewhere (e.g. a flood-wait sleep) as one sample ending now."""
        if not self.enabled:
            return
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"add_time({stage!r}, {seconds!r}): seconds must be finite and >= 0")
        t1 = perf_counter_ns()
        buf = self._samples.get(stage)
        if buf is None:
            buf = self._samples.setdefault(stage, [])
        buf.append((t1 - round(seconds * 1e9), t1))
        if len(buf) >= _PACK_AT:
            self._pack(stage, buf)

    def count(self, name: str, n: int | float = 1) -> None:
        """Add ``n`` to counter ``name``."""
        if self.enabled:
            self._counters[name] = self._counters.get(name, 0) + n

    def gauge(self, name: str, value: float) -> None:
        """Observe gauge ``name`` (every observation is kept, with its time; tables show the last)."""
        if self.enabled:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"gauge({name!r}, {value!r}): the value must be finite")
            self._gauges.setdefault(name, []).append((perf_counter_ns(), value))

    def set_api_calls(self, calls: Mapping[str, int]) -> None:
        """Replace the API call counts by request type (an export passes its gateway's counts,
        :attr:`tgkit.telegram.Gateway.api_calls`)."""
        if self.enabled:
            self._api_calls = {str(k): int(v) for k, v in calls.items()}

    def add_api_call(self, request_type: str, n: int = 1) -> None:
        """Count ``n`` calls of ``request_type`` (for a real client, counted where the request is sent)."""
        if self.enabled:
            self._api_calls[request_type] = self._api_calls.get(request_type, 0) + n

    def set_cache_stats(self, name: str, stats: Mapping[str, int | float]) -> None:
        """Replace cache ``name``'s statistics (e.g. hits, misses, evictions, api_calls_saved)."""
        if self.enabled:
            self._caches[name] = {str(k): _number(v) for k, v in stats.items()}

    def add_bytes_written(self, n: int) -> None:
        """Add ``n`` bytes to the run's output size."""
        if self.enabled:
            self._bytes_written += n

    def finish(self) -> None:
        """Freeze the run's elapsed time (later records are still accepted)."""
        self._end_ns = perf_counter_ns()

    def _pack(self, stage: str, buf: list[tuple[int, int]]) -> None:
        # Swap the list out first so concurrent appends go to a fresh one; the lock serialises packers.
        with self._lock:
            if self._samples.get(stage) is not buf:
                return
            self._samples[stage] = []
            self._packed.setdefault(stage, array("q")).extend(chain.from_iterable(buf))

    # ------------------------------------------------------------------------------------------ read

    @property
    def bytes_written(self) -> int:
        return self._bytes_written

    @property
    def api_calls(self) -> dict[str, int]:
        """API calls by request type (a copy)."""
        return dict(self._api_calls)

    @property
    def counters(self) -> dict[str, int | float]:
        return dict(self._counters)

    @property
    def caches(self) -> dict[str, dict[str, int | float]]:
        return {k: dict(v) for k, v in self._caches.items()}

    @property
    def elapsed_s(self) -> float:
        """Seconds from creation to :meth:`finish` (or to now, while running)."""
        end = self._end_ns if self._end_ns is not None else perf_counter_ns()
        return (end - self._origin_ns) / 1e9

    def _ordered_stages(self) -> list[str]:
        seen = [s for s, buf in self._samples.items() if buf or s in self._packed]
        return [s for s in STAGES if s in seen] + [s for s in seen if s not in STAGES]

    def _stage_pairs(self, stage: str) -> Iterator[tuple[int, int]]:
        packed = self._packed.get(stage)
        if packed is not None:
            it = iter(packed)
            yield from zip(it, it)
        yield from list(self._samples.get(stage, ()))

    def durations_ns(self, stage: str) -> list[int]:
        """Every sample's duration for ``stage``, in recording order."""
        return [t1 - t0 for t0, t1 in self._stage_pairs(stage)]

    def stage_table(self) -> pl.DataFrame:
        """One row per stage: count, total_s, mean_ms, p50_ms, p95_ms, max_ms (linear-interpolated)."""
        rows = []
        for stage in self._ordered_stages():
            d = pl.Series(self.durations_ns(stage), dtype=pl.Int64)
            if d.len() == 0:
                continue
            ms = d.cast(pl.Float64) / 1e6
            rows.append(
                {
                    "stage": stage,
                    "count": d.len(),
                    "total_s": int(d.sum()) / 1e9,
                    "mean_ms": float(ms.mean()),  # type: ignore[arg-type]
                    "p50_ms": float(ms.quantile(0.5, "linear")),  # type: ignore[arg-type]
                    "p95_ms": float(ms.quantile(0.95, "linear")),  # type: ignore[arg-type]
                    "max_ms": float(ms.max()),  # type: ignore[arg-type]
                }
            )
        return pl.DataFrame(rows, schema=_STAGE_TABLE_SCHEMA)

    def summary_text(self) -> str:
        """A short aligned table for the CLI: stages, then API calls, caches and bytes written."""
        header = ("stage", "count", "total_s", "mean_ms", "p50_ms", "p95_ms", "max_ms")
        body = [
            (r["stage"], str(r["count"]), f"{r['total_s']:.3f}", *(f"{r[k]:.2f}" for k in header[3:]))
            for r in self.stage_table().iter_rows(named=True)
        ]
        lines: list[str] = []
        if body:
            widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
            for row in [header, *body]:
                cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
                lines.append("  ".join(cells))
        else:
            lines.append("no stage timings recorded")
        if self._api_calls:
            top = sorted(self._api_calls.items(), key=lambda kv: (-kv[1], kv[0]))
            shown = ", ".join(f"{k} {v}" for k, v in top[:4]) + (", ..." if len(top) > 4 else "")
            lines.append(f"api calls: {sum(self._api_calls.values())} ({shown})")
        for name, stats in self._caches.items():
            lines.append(f"{name}: " + ", ".join(f"{k} {_fmt_num(v)}" for k, v in stats.items()))
        lines.append(f"bytes written: {_fmt_bytes(self._bytes_written)}")
        return "\n".join(lines)

    def to_polars(self) -> pl.DataFrame:
        """Long format ``stage, metric, value, t`` (t: seconds since the run started).

        Timer samples are ``metric="duration_s"`` rows at their end time; gauges are one row per
        observation; counters, API calls (stage ``"api"``), caches (stage = cache name) and
        ``write/bytes_written`` are totals stamped with the run's elapsed time.
        """
        stages: list[str] = []
        metrics: list[str] = []
        values: list[float] = []
        ts: list[float] = []
        origin = self._origin_ns
        for stage in self._ordered_stages():
            for t0, t1 in self._stage_pairs(stage):
                stages.append(stage)
                metrics.append("duration_s")
                values.append((t1 - t0) / 1e9)
                ts.append((t1 - origin) / 1e9)
        for name, obs in self._gauges.items():
            stage, metric = _split_name(name, "run")
            for t_ns, value in obs:
                stages.append(stage)
                metrics.append(metric)
                values.append(value)
                ts.append((t_ns - origin) / 1e9)
        end = self.elapsed_s
        totals: list[tuple[str, str, float]] = [
            (*_split_name(k, "run"), v) for k, v in self._counters.items()
        ]
        totals += [("api", k, v) for k, v in self._api_calls.items()]
        totals += [(cache, k, v) for cache, stats in self._caches.items() for k, v in stats.items()]
        totals.append(("write", "bytes_written", self._bytes_written))
        for stage, metric, value in totals:
            stages.append(stage)
            metrics.append(metric)
            values.append(float(value))
            ts.append(end)
        return pl.DataFrame(
            {"stage": stages, "metric": metrics, "value": values, "t": ts}, schema=_LONG_SCHEMA
        )

    # ------------------------------------------------------------------------------------- serialise

    def to_dict(self) -> dict[str, Any]:
        """The versioned JSON layout (docs/METRICS.md): summaries for people, raw samples for tools."""
        origin = self._origin_ns
        elapsed_ns = (self._end_ns if self._end_ns is not None else perf_counter_ns()) - origin
        table = {r["stage"]: r for r in self.stage_table().iter_rows(named=True)}
        stages: dict[str, Any] = {}
        for stage, row in table.items():
            pairs = list(self._stage_pairs(stage))
            stages[stage] = {
                **{k: v for k, v in row.items() if k != "stage"},
                "end_ns": [t1 - origin for _, t1 in pairs],
                "duration_ns": [t1 - t0 for t0, t1 in pairs],
            }
        gauges = {
            name: {
                "last": obs[-1][1],
                "t_ns": [t - origin for t, _ in obs],
                "values": [v for _, v in obs],
            }
            for name, obs in self._gauges.items()
            if obs
        }
        return {
            "format": METRICS_FORMAT,
            "version": METRICS_VERSION,
            "started_at": self.started_at.isoformat(),
            "elapsed_s": elapsed_ns / 1e9,
            "elapsed_ns": elapsed_ns,
            "enabled": self.enabled,
            "meta": dict(self.meta),
            "stages": stages,
            "counters": dict(self._counters),
            "gauges": gauges,
            "api_calls": dict(self._api_calls),
            "caches": self.caches,
            "bytes_written": self._bytes_written,
        }

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON, atomically; returns the path."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        atomic_write(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "metrics data") -> MetricsCollector:
        """Rebuild a collector from :meth:`to_dict`'s layout; :class:`CacheError` on another version."""
        if not isinstance(data, Mapping) or data.get("format") != METRICS_FORMAT:
            raise CacheError(f'{source} is not a tgkit metrics file (no "format": {METRICS_FORMAT!r})')
        version = data.get("version")
        if version != METRICS_VERSION:
            raise CacheError(
                f"{source} has metrics layout version {version!r}; this tgkit reads version "
                f"{METRICS_VERSION} (re-export, or load it with the tgkit that wrote it)"
            )
        try:
            m = cls(enabled=bool(data["enabled"]), meta=data["meta"])
            m.started_at = datetime.fromisoformat(data["started_at"])
            m._origin_ns = 0
            m._end_ns = int(data["elapsed_ns"])
            for stage, s in data["stages"].items():
                ends, durations = s["end_ns"], s["duration_ns"]
                if len(ends) != len(durations):
                    raise ValueError(f"stage {stage!r}: end_ns and duration_ns differ in length")
                m._samples[str(stage)] = [(int(e) - int(d), int(e)) for e, d in zip(ends, durations)]
            m._counters = {str(k): _number(v) for k, v in data["counters"].items()}
            for name, g in data["gauges"].items():
                if len(g["t_ns"]) != len(g["values"]):
                    raise ValueError(f"gauge {name!r}: t_ns and values differ in length")
                m._gauges[str(name)] = [(int(t), float(v)) for t, v in zip(g["t_ns"], g["values"])]
            m._api_calls = {str(k): int(v) for k, v in data["api_calls"].items()}
            m._caches = {
                str(c): {str(k): _number(v) for k, v in stats.items()} for c, stats in data["caches"].items()
            }
            m._bytes_written = int(data["bytes_written"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CacheError(f"{source} is corrupt: {type(exc).__name__}: {exc}") from exc
        return m

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> MetricsCollector:
        """Load a ``metrics.json``; ``CacheError`` if it is unreadable, corrupt or another version."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CacheError(f"cannot read metrics file {path}: {exc}") from exc
        return cls.from_dict(data, source=str(path))


def _number(v: Any) -> int | float:
    """A JSON-safe number: int or finite float (bools and NaN are refused, so files round-trip)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, got {v!r}")
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"expected a finite number, got {v!r}")
    return v


def _fmt_num(v: int | float) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _fmt_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------------------
# Resources

#: Columns of ``ResourceSamples.to_polars()``; byte counters are cumulative since the monitor started.
RESOURCE_COLUMNS: Final[dict[str, pl.DataType | type[pl.DataType]]] = {
    "t": pl.Float64,  # seconds since the monitor started
    "time": pl.Datetime("us", "UTC"),
    "process_cpu_pct": pl.Float64,  # this process, % of ONE core (can exceed 100 on several cores)
    "system_cpu_pct": pl.Float64,  # whole machine, % of all cores
    "rss_bytes": pl.Int64,
    "disk_read_bytes": pl.Int64,  # system-wide
    "disk_write_bytes": pl.Int64,
    "proc_read_bytes": pl.Int64,  # this process (null where the platform has no per-process I/O)
    "proc_write_bytes": pl.Int64,
    "net_sent_bytes": pl.Int64,  # system-wide
    "net_recv_bytes": pl.Int64,
}


class ResourceSamples:
    """The monitor's samples, column-wise; safe to read while the monitor is still sampling."""

    __slots__ = ("_columns", "_lock")

    def __init__(self) -> None:
        self._columns: dict[str, list[Any]] = {name: [] for name in RESOURCE_COLUMNS}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._columns["t"])

    def __repr__(self) -> str:
        return f"<ResourceSamples n={len(self)}>"

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one sample; columns absent from ``row`` are recorded as missing (null)."""
        with self._lock:
            for name, column in self._columns.items():
                column.append(row.get(name))

    def to_polars(self) -> pl.DataFrame:
        """One row per sample, columns :data:`RESOURCE_COLUMNS` (nulls where a counter is unavailable)."""
        with self._lock:
            data = {name: list(column) for name, column in self._columns.items()}
        return pl.DataFrame(data, schema=RESOURCE_COLUMNS)

    def to_parquet(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_polars` as Parquet, atomically; returns the path."""
        path = Path(path)
        frame = self.to_polars()
        atomic_write(path, lambda tmp: frame.write_parquet(tmp))
        return path


class _CpuTimesDelta:
    """System CPU % from ``psutil.cpu_times()`` deltas, computed here rather than with
    ``psutil.cpu_percent(None)``, whose "since last call" state is global and shared with other callers."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None

    def __call__(self, psutil: Any) -> float | None:
        ct = psutil.cpu_times()
        total = sum(ct) - getattr(ct, "guest", 0.0) - getattr(ct, "guest_nice", 0.0)
        idle = ct.idle + getattr(ct, "iowait", 0.0)
        last, self._last = self._last, (total, idle)
        if last is None:
            return None
        d_total = total - last[0]
        if d_total <= 0:
            return 0.0
        busy = d_total - (idle - last[1])
        return min(100.0, max(0.0, 100.0 * busy / d_total))


class ResourceMonitor:
    """Samples CPU %, RSS, disk and network I/O every ``interval`` seconds in a daemon thread.

    Use ``with`` / ``async with`` or :meth:`start` / :meth:`stop`.  Stopping always joins the thread and
    takes one last sample.  A failing psutil call leaves that column null for the sample and is noted in
    :attr:`errors`; nothing raised while sampling reaches the host.
    """

    _MAX_ERRORS: Final = 20

    def __init__(self, interval: float = 0.5, *, pid: int | None = None) -> None:
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        self.interval = float(interval)
        self.pid = pid
        self.samples = ResourceSamples()
        #: Distinct "counter: error" notes from sampling (capped), so a missing column is explainable.
        self.errors: list[str] = []
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._sample_lock = threading.Lock()
        self._origin = 0.0
        self._last_sample_at = 0.0
        self._process: Any = None
        self._cpu = _CpuTimesDelta()
        self._base: dict[str, tuple[int, int] | None] = {}

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<ResourceMonitor interval={self.interval}s {state} samples={len(self.samples)}>"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------------------------- lifecycle

    def start(self) -> ResourceMonitor:
        """Take a first sample and start the sampling thread (a no-op if already running)."""
        if self.running:
            return self
        import psutil

        if self._process is None:  # first start: the origin and the cumulative counters' baselines
            self._origin = time.perf_counter()
            proc = self._process = self._guard("process", lambda: psutil.Process(self.pid))
            self._base = {"disk": self._read_disk(psutil), "net": self._read_net(psutil)}
            if proc is not None:
                self._base["proc"] = self._read_proc(proc)
                self._guard("cpu_percent", lambda: proc.cpu_percent(None))  # prime: the first call is 0.0
            self._guard("cpu_times", lambda: self._cpu(psutil))  # prime
        self._stop_event.clear()
        self._safe_sample()
        self._thread = threading.Thread(target=self._run, name="tgkit-resource-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and join the sampling thread, then take a final sample.  Safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop_event.set()
        thread.join(timeout=max(10.0, 4 * self.interval))
        if thread.is_alive():  # a psutil call hung (e.g. a dead network mount); it is a daemon, leave it
            self._note("monitor", "sampling thread did not stop within the timeout")
        # A final sample right after the thread's last one would show CPU % over a near-zero interval
        # (psutil then reports 0): wait a moment (at most 50 ms) so the last point means something.
        wait = min(0.05, self.interval / 2) - (time.perf_counter() - self._last_sample_at)
        if wait > 0:
            time.sleep(wait)
        self._safe_sample()

    def __enter__(self) -> ResourceMonitor:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> ResourceMonitor:
        return self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Synchronous on purpose: no await here, so a second cancellation cannot skip the join.  The join
        # is short -- the thread waits on an Event and only ever finishes one sample.
        self.stop()

    # -------------------------------------------------------------------------------------- sampling

    def _run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self._safe_sample()

    def _safe_sample(self) -> None:
        try:
            self.sample()
        except Exception as exc:  # never let the monitor kill the host; the gap shows in the samples
            self._note("sample", exc)

    def sample(self) -> None:
        """Take one sample now (called by the thread; callable directly, e.g. in tests)."""
        import psutil

        with self._sample_lock:
            self._last_sample_at = time.perf_counter()
            row: dict[str, Any] = {"t": self._last_sample_at - self._origin, "time": datetime.now(UTC)}
            proc = self._process
            if proc is not None:
                # (no proc.oneshot(): it saves ~0.1 ms a sample but fails as a whole if one counter does)
                row["process_cpu_pct"] = self._guard("cpu_percent", lambda: float(proc.cpu_percent(None)))
                row["rss_bytes"] = self._guard("memory_info", lambda: int(proc.memory_info().rss))
                pio = self._read_proc(proc)
                row["proc_read_bytes"], row["proc_write_bytes"] = _since(pio, self._base.get("proc"))
            row["system_cpu_pct"] = self._guard("cpu_times", lambda: self._cpu(psutil))
            disk = self._read_disk(psutil)
            row["disk_read_bytes"], row["disk_write_bytes"] = _since(disk, self._base.get("disk"))
            net = self._read_net(psutil)
            row["net_sent_bytes"], row["net_recv_bytes"] = _since(net, self._base.get("net"))
            self.samples.append(row)

    def _read_disk(self, psutil: Any) -> tuple[int, int] | None:
        return self._guard(
            "disk_io_counters", lambda: _io_pair(psutil.disk_io_counters(), "read_bytes", "write_bytes")
        )

    def _read_net(self, psutil: Any) -> tuple[int, int] | None:
        return self._guard(
            "net_io_counters", lambda: _io_pair(psutil.net_io_counters(), "bytes_sent", "bytes_recv")
        )

    def _read_proc(self, proc: Any) -> tuple[int, int] | None:
        # Process.io_counters does not exist on macOS, and /proc/<pid>/io can be unreadable in containers.
        return self._guard("io_counters", lambda: _io_pair(proc.io_counters(), "read_bytes", "write_bytes"))

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        """Call one psutil counter; on any error note it and return None (recorded as missing)."""
        try:
            return fn()
        except Exception as exc:
            self._note(what, exc)
            return None

    def _note(self, what: str, exc: object) -> None:
        detail = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
        note = f"{what}: {detail}"
        if note not in self.errors and len(self.errors) < self._MAX_ERRORS:
            self.errors.append(note)


def _io_pair(counters: Any, a: str, b: str) -> tuple[int, int] | None:
    """Two fields of a psutil counters tuple; ``None`` when psutil returned None (no disks / no NICs)."""
    if counters is None:
        return None
    return int(getattr(counters, a)), int(getattr(counters, b))


def _since(now: tuple[int, int] | None, base: tuple[int, int] | None) -> tuple[int | None, int | None]:
    if now is None or base is None:
        return None, None
    return now[0] - base[0], now[1] - base[1]
