"""MetricsCollector, ResourceMonitor and the plots (tgkit.metrics, tgkit.plots)."""

from __future__ import annotations

import asyncio
import io
import json
import statistics
import tempfile
import threading
from pathlib import Path

import matplotlib
import polars as pl
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tgkit import metrics as metrics_mod
from tgkit.errors import CacheError
from tgkit.metrics import (
    METRICS_FORMAT,
    METRICS_VERSION,
    RESOURCE_COLUMNS,
    MetricsCollector,
    ResourceMonitor,
    ResourceSamples,
)

matplotlib.use("Agg")


@pytest.fixture
def monitor():
    """A monitor that is always stopped, even when the test fails."""
    mon = ResourceMonitor(interval=0.01)
    yield mon
    mon.stop()
    assert not mon.running


# ------------------------------------------------------------------------------------------ collector


def test_stage_table_matches_independent_quantiles() -> None:
    m = MetricsCollector()
    durations_ms = [3.0, 1.0, 7.0, 2.0, 100.0, 5.0, 4.0, 6.0, 9.0, 8.0, 0.5]
    for d in durations_ms:
        m.add_time("write", d / 1000)
    m.add_time("fetch", 0.25)
    table = m.stage_table()
    assert table.columns == ["stage", "count", "total_s", "mean_ms", "p50_ms", "p95_ms", "max_ms"]
    assert table["stage"].to_list() == ["fetch", "write"]  # pipeline order, not insertion order
    row = table.row(1, named=True)
    # statistics' "inclusive" method is the same linear interpolation as numpy's default
    q = statistics.quantiles(durations_ms, n=20, method="inclusive")
    assert row["count"] == len(durations_ms)
    assert row["total_s"] == pytest.approx(sum(durations_ms) / 1000)
    assert row["mean_ms"] == pytest.approx(statistics.fmean(durations_ms))
    assert row["p50_ms"] == pytest.approx(statistics.median(durations_ms))
    assert row["p95_ms"] == pytest.approx(q[18])
    assert row["max_ms"] == pytest.approx(100.0)


def test_timers_record_one_sample_each_even_when_the_block_raises() -> None:
    m = MetricsCollector()
    t0 = m.start()
    m.stop("fetch", t0)
    with pytest.raises(RuntimeError), m.timer("convert"):
        raise RuntimeError("boom")
    with m.timer("convert"):
        pass
    m.add_time("custom_stage", 0.0)
    assert m.stage_table()["stage"].to_list() == ["fetch", "convert", "custom_stage"]
    assert len(m.durations_ns("convert")) == 2
    assert all(d >= 0 for d in m.durations_ns("fetch") + m.durations_ns("convert"))


def test_disabled_collector_records_nothing() -> None:
    m = MetricsCollector(enabled=False)
    assert m.start() == 0
    m.stop("fetch", 0)
    with m.timer("fetch"):
        pass
    m.add_time("flood_wait", 3.0)
    m.count("pages")
    m.gauge("queue", 1)
    m.add_api_call("GetHistoryRequest")
    m.set_api_calls({"GetHistoryRequest": 3})
    m.set_cache_stats("peer_cache", {"hits": 1})
    m.add_bytes_written(10)
    d = m.to_dict()
    assert (d["stages"], d["counters"], d["gauges"], d["api_calls"], d["caches"]) == ({}, {}, {}, {}, {})
    assert d["bytes_written"] == 0
    assert m.stage_table().height == 0
    assert m.summary_text().startswith("no stage timings recorded")


def test_packing_keeps_every_sample_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_mod, "_PACK_AT", 8)
    m = MetricsCollector()
    expected = [i * 1000 for i in range(1, 30)]
    for ns in expected:
        m.add_time("fetch", ns / 1e9)
    assert m._packed["fetch"]  # the packing path really ran
    assert m.durations_ns("fetch") == expected
    assert m.stage_table().row(0, named=True)["count"] == len(expected)
    assert m.to_polars().filter(pl.col("stage") == "fetch").height == len(expected)


def test_timers_from_several_threads_are_all_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_mod, "_PACK_AT", 64)
    m = MetricsCollector()

    def hot_path() -> None:
        for _ in range(2000):
            t0 = m.start()
            m.stop("transcode", t0)

    def with_timer() -> None:
        for _ in range(2000):
            with m.timer("transcode"):
                pass

    threads = [threading.Thread(target=f) for f in (hot_path, with_timer, hot_path, with_timer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    durations = m.durations_ns("transcode")
    assert len(durations) == 8000
    assert min(durations) >= 0


def test_to_polars_long_format() -> None:
    m = MetricsCollector()
    m.add_time("fetch", 0.5)
    m.add_time("fetch", 0.25)
    m.count("pages", 2)
    m.count("download.files", 3)
    m.gauge("queue_depth", 4)
    m.gauge("queue_depth", 1)
    m.set_api_calls({"GetHistoryRequest": 7})
    m.set_cache_stats("peer_cache", {"hits": 5, "misses": 1})
    m.add_bytes_written(1234)
    m.finish()
    df = m.to_polars()
    assert df.schema == pl.Schema(
        {"stage": pl.String, "metric": pl.String, "value": pl.Float64, "t": pl.Float64}
    )
    rows = {(r["stage"], r["metric"]): r["value"] for r in df.iter_rows(named=True)}
    assert df.filter(pl.col("metric") == "duration_s")["value"].to_list() == [0.5, 0.25]
    assert rows[("run", "pages")] == 2
    assert rows[("download", "files")] == 3
    assert df.filter(pl.col("metric") == "queue_depth")["value"].to_list() == [4.0, 1.0]
    assert rows[("api", "GetHistoryRequest")] == 7
    assert rows[("peer_cache", "misses")] == 1
    assert rows[("write", "bytes_written")] == 1234
    assert df["t"].min() >= 0  # type: ignore[operator]
    assert df["t"].max() == pytest.approx(m.elapsed_s)


def test_summary_text_is_an_aligned_table() -> None:
    m = MetricsCollector()
    m.add_time("fetch", 1.5)
    m.add_time("flood_wait", 12.0)
    m.set_api_calls({"GetHistoryRequest": 100, "GetFullChannelRequest": 1})
    m.set_cache_stats("peer_cache", {"hits": 9, "misses": 1})
    m.add_bytes_written(3 * 1024 * 1024)
    lines = m.summary_text().splitlines()
    table = lines[:3]
    assert table[0].split() == ["stage", "count", "total_s", "mean_ms", "p50_ms", "p95_ms", "max_ms"]
    assert len({len(line) for line in table}) == 1  # right-aligned columns
    assert table[2].split()[:3] == ["flood_wait", "1", "12.000"]
    assert "api calls: 101 (GetHistoryRequest 100, GetFullChannelRequest 1)" in lines
    assert "peer_cache: hits 9, misses 1" in lines
    assert lines[-1] == "bytes written: 3.0 MiB"


def test_bad_values_are_refused() -> None:
    m = MetricsCollector()
    with pytest.raises(ValueError):
        m.add_time("fetch", -1.0)
    with pytest.raises(ValueError):
        m.gauge("queue", float("nan"))
    with pytest.raises(TypeError):
        m.set_cache_stats("peer_cache", {"hits": "many"})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        ResourceMonitor(interval=0)


# ------------------------------------------------------------------------------------------ JSON

_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
_numbers = st.one_of(st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=25, deadline=None)
@given(
    stages=st.dictionaries(_names, st.lists(st.integers(0, 10**12), min_size=1, max_size=20), max_size=5),
    counters=st.dictionaries(_names, _numbers, max_size=5),
    gauges=st.dictionaries(
        _names, st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=5)
    ),
    api=st.dictionaries(_names, st.integers(0, 10**9), max_size=5),
    caches=st.dictionaries(_names, st.dictionaries(_names, _numbers, max_size=4), max_size=3),
    written=st.integers(0, 2**62),
    meta=st.dictionaries(_names, st.one_of(_names, st.integers(), st.none()), max_size=3),
)
def test_json_round_trip(stages, counters, gauges, api, caches, written, meta) -> None:
    m = MetricsCollector(meta=meta)
    for stage, durations in stages.items():
        for ns in durations:
            m.add_time(stage, ns / 1e9)
    for name, value in counters.items():
        m.count(name, value)
    for name, values in gauges.items():
        for v in values:
            m.gauge(name, v)
    m.set_api_calls(api)
    for name, stats in caches.items():
        m.set_cache_stats(name, stats)
    m.add_bytes_written(written)
    m.finish()
    with tempfile.TemporaryDirectory() as tmp:
        path = m.to_json(Path(tmp) / "metrics.json")
        loaded = MetricsCollector.from_json(path)
        assert [p.name for p in Path(tmp).iterdir()] == ["metrics.json"]  # no temp file left behind
    assert loaded.to_dict() == m.to_dict()
    assert loaded.stage_table().equals(m.stage_table())
    assert loaded.to_polars().equals(m.to_polars())


def test_json_layout_is_versioned(tmp_path: Path) -> None:
    m = MetricsCollector()
    m.add_time("fetch", 0.002)
    data = json.loads(m.to_json(tmp_path / "metrics.json").read_text())
    assert (data["format"], data["version"]) == (METRICS_FORMAT, METRICS_VERSION)
    assert data["stages"]["fetch"]["duration_ns"] == [2_000_000]
    assert data["stages"]["fetch"]["p95_ms"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=METRICS_VERSION + 1), "version 2"),
        (lambda d: d.pop("version"), "version None"),
        (lambda d: d.update(format="something.else"), "not a tgkit metrics file"),
        (lambda d: d.pop("stages"), "corrupt"),
        (lambda d: d["stages"]["fetch"].update(end_ns=[1, 2]), "corrupt"),
        (lambda d: d["counters"].update(x="1"), "corrupt"),
    ],
)
def test_from_json_rejects_other_versions_and_corrupt_files(tmp_path: Path, mutate, message: str) -> None:
    m = MetricsCollector()
    m.add_time("fetch", 0.001)
    m.count("x")
    data = m.to_dict()
    mutate(data)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CacheError, match=message):
        MetricsCollector.from_json(path)


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]", b"\xff\xfe"])
def test_from_json_unreadable(tmp_path: Path, content: str | bytes | None) -> None:
    path = tmp_path / "metrics.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(CacheError):
        MetricsCollector.from_json(path)


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    MetricsCollector().to_json(path)
    before = path.read_bytes()
    bad = MetricsCollector(meta={"not_json": object()})
    with pytest.raises(TypeError):
        bad.to_json(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_no_environment_values_leak_into_metrics(monkeypatch: pytest.MonkeyPatch, monitor) -> None:
    secret = "s3cr3t-api-hash-0123456789"
    monkeypatch.setenv("TGKIT_API_HASH", secret)
    m = MetricsCollector()
    m.add_time("fetch", 0.01)
    monitor.start()
    monitor.stop()
    text = json.dumps(m.to_dict()) + m.summary_text() + str(monitor.samples.to_polars().to_dicts())
    assert secret not in text


# ------------------------------------------------------------------------------------------ monitor


def test_monitor_records_samples_and_joins(monitor: ResourceMonitor, tmp_path: Path) -> None:
    with monitor as mon:
        assert mon.running
    assert not monitor.running
    df = monitor.samples.to_polars()
    assert df.height >= 2  # one on start, one on stop
    assert df.schema == pl.Schema(RESOURCE_COLUMNS)
    assert df["rss_bytes"].null_count() == 0 and df["rss_bytes"].min() > 0  # type: ignore[operator]
    assert df["t"].is_sorted()
    path = monitor.samples.to_parquet(tmp_path / "resources.parquet")
    assert pl.read_parquet(path).equals(df)


def test_missing_psutil_counters_are_null_not_fatal(monkeypatch: pytest.MonkeyPatch, monitor) -> None:
    def broken(*args, **kwargs):
        raise PermissionError("no /proc/diskstats here")

    monkeypatch.setattr(psutil, "disk_io_counters", broken)
    monkeypatch.setattr(psutil, "net_io_counters", lambda *a, **k: None)  # psutil's "no NICs" answer
    monkeypatch.setattr(psutil.Process, "memory_info", broken)
    with monitor:
        pass
    df = monitor.samples.to_polars()
    for column in ("disk_read_bytes", "disk_write_bytes", "net_sent_bytes", "net_recv_bytes", "rss_bytes"):
        assert df[column].null_count() == df.height, column
    assert df["system_cpu_pct"].null_count() < df.height  # the rest still sampled
    assert any(e.startswith("disk_io_counters: PermissionError") for e in monitor.errors)
    assert any(e.startswith("memory_info: PermissionError") for e in monitor.errors)


def test_monitor_thread_survives_a_failing_sample(monkeypatch: pytest.MonkeyPatch, monitor) -> None:
    thread_calls: list[int] = []
    sampled_after_failure = threading.Event()
    real_sample = monitor.sample

    def sample() -> None:
        if threading.current_thread().name != "tgkit-resource-monitor":
            raise RuntimeError("sampling bug on the host thread")  # start() and stop() must absorb it
        thread_calls.append(1)
        if len(thread_calls) == 1:
            raise RuntimeError("sampling bug")
        real_sample()
        sampled_after_failure.set()

    monkeypatch.setattr(monitor, "sample", sample)
    monitor.start()
    assert sampled_after_failure.wait(5)  # the thread went on sampling after the exception
    monitor.stop()
    assert not monitor.running
    assert "sample: RuntimeError: sampling bug" in monitor.errors
    assert "sample: RuntimeError: sampling bug on the host thread" in monitor.errors
    assert len(monitor.samples) >= 1


def test_monitor_async_with_stops_on_cancellation(monitor: ResourceMonitor) -> None:
    entered = asyncio.Event()

    async def run() -> None:
        async with monitor:
            entered.set()
            await asyncio.sleep(3600)

    async def main() -> None:
        task = asyncio.create_task(run())
        await entered.wait()
        assert monitor.running
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert not monitor.running
    assert len(monitor.samples) >= 2


def test_resource_samples_fill_missing_columns_with_null() -> None:
    s = ResourceSamples()
    s.append({"t": 0.0, "rss_bytes": 10})
    df = s.to_polars()
    assert df["rss_bytes"].to_list() == [10]
    assert df["net_sent_bytes"].to_list() == [None]


# ------------------------------------------------------------------------------------------ plots


def _rendered(fig) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    assert buf.getvalue().startswith(b"\x89PNG")


def test_plot_stages(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    from tgkit.plots import plot_stages

    m = MetricsCollector()
    for s in (0.01, 0.02, 0.03):
        m.add_time("fetch", s)
    m.add_time("write", 0.5)
    fig = plot_stages(m)
    assert isinstance(fig, Figure)
    total_ax, latency_ax = fig.axes
    assert [t.get_text() for t in total_ax.get_yticklabels()] == ["write", "fetch"]
    widths = sorted(p.get_width() for p in total_ax.patches)
    assert widths == pytest.approx([0.06, 0.5])
    assert len(latency_ax.patches) == 6  # p50, p95, max for two stages
    _rendered(fig)
    # from a file too
    assert len(plot_stages(m.to_json(tmp_path / "metrics.json")).axes[0].patches) == 2


def test_plot_resources_marks_unavailable_counters(tmp_path: Path) -> None:
    from tgkit.plots import plot_resources

    s = ResourceSamples()
    for i in range(5):
        s.append(
            {"t": i * 0.5, "process_cpu_pct": 10.0 * i, "system_cpu_pct": 50.0, "rss_bytes": 2**20 * (i + 1),
             "disk_read_bytes": 2**20 * i, "disk_write_bytes": 0}
        )  # fmt: skip
    fig = plot_resources(s)
    cpu, rss, disk, net = fig.axes
    assert len(cpu.get_lines()) == 2
    assert list(rss.get_lines()[0].get_ydata()) == [1, 2, 3, 4, 5]
    assert list(disk.get_lines()[0].get_ydata())[1:] == pytest.approx([2.0] * 4)  # 1 MiB per 0.5 s
    assert not net.get_lines()
    assert "unavailable: sent, received" in [t.get_text() for t in net.texts]
    _rendered(fig)
    assert len(plot_resources(s.to_parquet(tmp_path / "r.parquet")).axes) == 4
