"""Notebook plots of a run's metrics and resource samples.

matplotlib is imported inside each function (importing tgkit stays light).  The functions build a
figure directly rather than through pyplot: no global figure state, works headless with any backend.

They return a :class:`NotebookFigure`, a ``matplotlib.figure.Figure`` that also draws itself as PNG for
IPython (``_repr_png_``): a fresh notebook shows the picture without ``%matplotlib inline``.  Under the
inline backend its own Figure formatter wins (one image, never two: the figure is not in pyplot's list,
so it is not drawn again at the end of the cell); scripts never call the hook (no output, no warning).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from .metrics import MetricsCollector, ResourceSamples

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_resources", "plot_stages"]  # and NotebookFigure, built lazily (__getattr__)

_MIB = 1024 * 1024
_figure_class: type[Figure] | None = None


def _notebook_figure_class() -> type[Figure]:
    """Build :class:`NotebookFigure` on first use (a subclass needs matplotlib imported)."""
    global _figure_class
    if _figure_class is None:
        try:
            from matplotlib.figure import Figure
        except ImportError as exc:  # pragma: no cover - matplotlib is a dependency, but may be stripped
            raise ImportError("tgkit's plots need matplotlib: pip install matplotlib") from exc

        class NotebookFigure(Figure):
            """A matplotlib Figure that displays itself as PNG in IPython (no ``%matplotlib inline`` needed)."""

            def _repr_png_(self) -> bytes:
                buf = io.BytesIO()
                self.savefig(buf, format="png", bbox_inches="tight")
                return buf.getvalue()

        NotebookFigure.__module__ = __name__  # pickles as tgkit.plots.NotebookFigure (module __getattr__)
        NotebookFigure.__qualname__ = "NotebookFigure"
        _figure_class = NotebookFigure
    return _figure_class


def __getattr__(name: str) -> Any:
    if name == "NotebookFigure":
        return _notebook_figure_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _figure(**kwargs: Any) -> Figure:
    return _notebook_figure_class()(**kwargs)


def plot_stages(metrics: MetricsCollector | str | os.PathLike[str]) -> Figure:
    """Where the time went: total seconds per stage, and p50 / p95 / max milliseconds per stage.

    ``metrics`` is a :class:`MetricsCollector` or the path of a ``metrics.json``.
    """
    if not isinstance(metrics, MetricsCollector):
        metrics = MetricsCollector.from_json(Path(metrics))
    table = metrics.stage_table()
    fig = _figure(figsize=(10, 0.6 * max(table.height, 2) + 1.5), layout="constrained")
    ax_total, ax_lat = fig.subplots(1, 2, sharey=True)
    stages = table["stage"].to_list()[::-1]  # pipeline order top to bottom
    if not stages:
        for ax in (ax_total, ax_lat):
            ax.text(0.5, 0.5, "no stage timings recorded", ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
        return fig
    pos = list(range(len(stages)))
    rows = {r["stage"]: r for r in table.iter_rows(named=True)}
    totals = [rows[s]["total_s"] for s in stages]
    bars = ax_total.barh(pos, totals, color="tab:blue")
    ax_total.bar_label(
        bars, labels=[f"{t:.2f}s ×{rows[s]['count']}" for t, s in zip(totals, stages)], padding=2
    )
    ax_total.set_yticks(pos, stages)
    ax_total.set_xlabel("total seconds")
    ax_total.set_title("time per stage")
    ax_total.margins(x=0.25)

    height = 0.27
    for i, (key, color) in enumerate(
        (("p50_ms", "tab:green"), ("p95_ms", "tab:orange"), ("max_ms", "tab:red"))
    ):
        ax_lat.barh(
            [p + (1 - i) * height for p in pos],
            [rows[s][key] for s in stages],
            height,
            label=key[:-3],
            color=color,
        )
    ax_lat.set_xscale("log")
    ax_lat.set_xlabel("milliseconds per sample (log)")
    ax_lat.set_title("latency per stage")
    ax_lat.legend(loc="lower right")
    return fig


def plot_resources(samples: ResourceSamples | pl.DataFrame | str | os.PathLike[str]) -> Figure:
    """What the machine was doing: CPU %, RSS, disk and network rates over the run.

    ``samples`` is ``monitor.samples``, its ``to_polars()`` frame, or the path of a ``resources.parquet``.
    Byte counters are cumulative, so rates are their differences over time.  A counter the platform does
    not offer (all null) is marked "unavailable" rather than drawn.
    """
    if isinstance(samples, ResourceSamples):
        df = samples.to_polars()
    elif isinstance(samples, pl.DataFrame):
        df = samples
    else:
        df = pl.read_parquet(Path(samples))
    dt = df["t"].diff()
    df = df.with_columns(
        ((pl.col(c).cast(pl.Float64).diff() / dt) / _MIB).alias(f"{c}_rate")
        for c in ("disk_read_bytes", "disk_write_bytes", "net_sent_bytes", "net_recv_bytes")
    )
    panels = [
        ("CPU %", [("process_cpu_pct", "process (1 core = 100)", 1.0), ("system_cpu_pct", "system", 1.0)]),
        ("RSS MiB", [("rss_bytes", "rss", 1 / _MIB)]),
        ("disk MiB/s", [("disk_read_bytes_rate", "read", 1.0), ("disk_write_bytes_rate", "write", 1.0)]),
        ("network MiB/s", [("net_sent_bytes_rate", "sent", 1.0), ("net_recv_bytes_rate", "received", 1.0)]),
    ]
    fig = _figure(figsize=(10, 8), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True)
    t = df["t"].to_list()
    for ax, (title, series) in zip(axes, panels):
        missing = []
        for column, label, scale in series:
            values = df[column]
            if values.null_count() == values.len():
                missing.append(label)
                continue
            ax.plot(t, [float("nan") if v is None else v * scale for v in values.to_list()], label=label)
        ax.set_ylabel(title)
        if missing:
            ax.text(
                0.99, 0.95, "unavailable: " + ", ".join(missing), ha="right", va="top",
                transform=ax.transAxes, fontsize="small", color="gray",
            )  # fmt: skip
        if len(series) > 1 and len(missing) < len(series):
            ax.legend(loc="upper left", fontsize="small")
    axes[-1].set_xlabel("seconds since the monitor started")
    return fig
