"""run_sync (script and nested loop), in_notebook, and the progress reporters (text, callable, widget)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import io
import itertools
import os
import subprocess
import sys
import textwrap
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tgkit.jupyter as jupyter
from tgkit.errors import ConfigError
from tgkit.jupyter import (
    CallbackProgress,
    NullProgress,
    Progress,
    TextProgress,
    WidgetProgress,
    close_sync_loop,
    in_notebook,
    make_progress,
    run_sync,
)
from tgkit.offline.vtime import run_virtual

REPO = Path(jupyter.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _close_sync_loop() -> Iterator[None]:
    yield
    close_sync_loop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


# ------------------------------------------------------------------------------------------- run_sync


def test_run_sync_returns_result_and_raises_errors() -> None:
    assert run_sync(_double(21)) == 42

    async def fail() -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError, match="nope"):
        run_sync(fail())


def test_run_sync_accepts_any_awaitable_and_rejects_others() -> None:
    class Later:
        def __await__(self) -> Any:
            yield from asyncio.sleep(0).__await__()
            return "awaited"

    assert run_sync(Later()) == "awaited"
    with pytest.raises(TypeError, match="awaitable"):
        run_sync(42)  # type: ignore[arg-type]


def test_run_sync_reuses_one_loop_per_thread_in_a_script() -> None:
    first = run_sync(_running_loop())
    # Something bound to the loop in one call (as a connected Telethon client is) works in the next.
    queue: asyncio.Queue[str] = run_sync(_make_queue())
    run_sync(queue.put("hello"))
    assert run_sync(queue.get()) == "hello"
    second = run_sync(_running_loop())
    assert first is second
    assert not first.is_closed()
    assert not first.is_running()


async def _make_queue() -> asyncio.Queue[str]:
    return asyncio.Queue()


def test_close_sync_loop_closes_and_next_call_makes_a_new_loop() -> None:
    first = run_sync(_running_loop())
    close_sync_loop()
    assert first.is_closed()
    close_sync_loop()  # harmless twice
    second = run_sync(_running_loop())
    assert second is not first
    assert not second.is_closed()


def test_run_sync_restores_its_loop_as_current_after_an_asyncio_run() -> None:
    """asyncio.run() in a thread unsets the thread's current loop; the next run_sync call must set its
    own loop again, or Telethon's sync calls (client.disconnect() outside a loop) make a loop of their
    own that nobody closes (a ResourceWarning) and that is not the client's."""
    from tgkit.offline import connect_demo

    seen: dict[str, Any] = {}

    def script() -> None:
        try:
            client = run_sync(connect_demo())
            loop = run_sync(_running_loop())
            asyncio.run(asyncio.sleep(0))  # e.g. tgkit's CLI main() called from the same script
            assert run_sync(client.is_user_authorized())
            seen["current"] = asyncio.get_event_loop_policy().get_event_loop()
            client.disconnect()  # Telethon's sync path: runs on the current loop
            seen["after"] = asyncio.get_event_loop_policy().get_event_loop()
            seen["loop"] = loop
            seen["connected"] = client.is_connected()
        except BaseException as exc:  # reported to the test thread
            seen["error"] = exc
        finally:
            close_sync_loop()

    thread = threading.Thread(target=script)
    thread.start()
    thread.join()
    if "error" in seen:
        raise seen["error"]
    assert seen["current"] is seen["loop"]
    assert seen["after"] is seen["loop"]  # no second loop was made
    assert seen["connected"] is False
    assert seen["loop"].is_closed()


def test_run_sync_sees_callers_contextvars_without_leaking_back() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def read_and_set() -> str:
        seen = var.get()
        var.set("inside")
        return seen

    token = var.set("caller")
    try:
        assert run_sync(read_and_set()) == "caller"
        assert var.get() == "caller"
    finally:
        var.reset(token)


def test_each_thread_gets_its_own_loop_closed_when_the_thread_ends() -> None:
    loops: list[asyncio.AbstractEventLoop] = []
    thread = threading.Thread(target=lambda: loops.append(run_sync(_running_loop())))
    thread.start()
    thread.join()
    main_loop = run_sync(_running_loop())
    assert loops[0] is not main_loop
    del thread
    gc.collect()
    assert loops[0].is_closed()  # no ResourceWarning from an abandoned loop


_NESTED_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import tgkit.jupyter as j

    heavy = [m for m in ("ipywidgets", "IPython", "nest_asyncio") if m in sys.modules]
    assert not heavy, f"imported at import time: {heavy}"

    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    async def fail():
        raise KeyError("inner")

    assert j.run_sync(double(1)) == 2
    assert "nest_asyncio" not in sys.modules, "plain run_sync must not load nest_asyncio"
    j.close_sync_loop()

    async def outer():  # a notebook cell: sync code called while the kernel's loop runs
        loop = asyncio.get_running_loop()
        results = [j.run_sync(double(21)), j.run_sync(double(2))]
        async def which():
            return asyncio.get_running_loop()
        same = j.run_sync(which()) is loop
        try:
            j.run_sync(fail())
        except KeyError:
            raised = True
        else:
            raised = False
        return results, same, raised, "nest_asyncio" in sys.modules

    print(asyncio.run(outer()))
    """
)


def test_run_sync_inside_a_running_loop_uses_nest_asyncio() -> None:
    # In a subprocess: nest-asyncio patches asyncio process-wide, which must not leak into other tests.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", _NESTED_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "([42, 4], True, True, True)"
    assert proc.stderr == ""


# ------------------------------------------------------------------------------------------ in_notebook


def _fake_ipython(monkeypatch: pytest.MonkeyPatch, shell: object | None) -> None:
    module = types.ModuleType("IPython")
    module.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", module)


def test_in_notebook_false_in_plain_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert in_notebook() is False
    _fake_ipython(monkeypatch, None)
    assert in_notebook() is False


def test_in_notebook_detects_kernel_shells_only(monkeypatch: pytest.MonkeyPatch) -> None:
    class ZMQInteractiveShell:
        pass

    class ColabShell(ZMQInteractiveShell):
        pass

    class TerminalInteractiveShell:
        pass

    _fake_ipython(monkeypatch, ZMQInteractiveShell())
    assert in_notebook() is True
    _fake_ipython(monkeypatch, ColabShell())
    assert in_notebook() is True
    _fake_ipython(monkeypatch, TerminalInteractiveShell())
    assert in_notebook() is False


# ---------------------------------------------------------------------------------------- make_progress


def test_make_progress_modes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(jupyter, "in_notebook", lambda: False)
    assert type(make_progress(False)) is NullProgress
    assert type(make_progress(None)) is NullProgress
    auto = make_progress(True)
    assert isinstance(auto, TextProgress) and auto.stream is sys.stderr
    assert isinstance(make_progress("auto"), TextProgress)
    assert isinstance(make_progress(print), CallbackProgress)
    mine = Progress()
    assert make_progress(mine) is mine
    with pytest.raises(ConfigError, match="progress="):
        make_progress("fancy")  # type: ignore[arg-type]

    monkeypatch.setattr(jupyter, "in_notebook", lambda: True)
    widget = make_progress("auto", total=10)
    assert isinstance(widget, WidgetProgress)
    widget.close()
    capsys.readouterr()  # display() outside a kernel prints the widget's repr


def test_null_progress_counts_and_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with make_progress(False, total=5) as progress:
        progress.update(messages=3, media=1)
        progress.countdown(10, "FLOOD_WAIT")
        progress.set_stage("x")
    assert (progress.messages, progress.media, progress.closed) == (3, 1, True)
    assert capsys.readouterr() == ("", "")


# ----------------------------------------------------------------------------------------- text progress


def test_text_progress_shows_counts_rate_and_eta_on_one_tty_line() -> None:
    clock, stream = FakeClock(), io.StringIO()
    progress = TextProgress(total=1000, desc="fetching", stream=stream, tty=True, clock=clock)
    clock.now = 1.0
    progress.update(messages=100, media=5)
    out = stream.getvalue()
    assert out.startswith("\r")
    assert "fetching" in out
    assert "100/1,000 msgs (10%)" in out
    assert "5 media" in out
    assert "100 msg/s" in out
    assert "ETA 0:09" in out
    assert "\n" not in out
    clock.now = 2.0
    progress.close()
    final = stream.getvalue()[len(out) :]
    assert final.startswith("\r") and final.endswith("\n")
    # the final line: rows, media done/failed, seconds (one formatter, not "0:02"), rate, errors
    assert "fetching done: 100 rows | media 5 done, 0 failed | 2.0s | 50 msg/s | no errors" in final
    assert "ETA" not in final
    progress.close()  # idempotent
    assert stream.getvalue().endswith(final)


def test_text_progress_throttles_to_five_redraws_per_second() -> None:
    clock, stream = FakeClock(), io.StringIO()
    progress = TextProgress(stream=stream, tty=True, clock=clock)
    progress.update(messages=1)  # first update always shows
    clock.now = 0.1
    progress.update(messages=1)
    assert stream.getvalue().count("\r") == 1
    clock.now = 0.3
    progress.update(messages=1)
    assert stream.getvalue().count("\r") == 2
    assert "3 msgs" in stream.getvalue().rsplit("\r", 1)[-1]

    # 1000 updates over 2 s of (fake) time: at most 5 redraws per second
    for i in range(1000):
        clock.now = 0.3 + (i + 1) * 0.002
        progress.update(messages=1)
    redraws = stream.getvalue().count("\r") - 2
    assert 5 <= redraws <= 10


def test_text_progress_outside_a_tty_writes_occasional_lines() -> None:
    clock, stream = FakeClock(), io.StringIO()
    progress = make_progress("text", total=50, desc="export", stream=stream, clock=clock)
    assert isinstance(progress, TextProgress) and not progress.tty
    for i in range(50):
        clock.now = i * 0.5  # 25 s in total
        progress.update(messages=1)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert 3 <= len(lines) <= 5  # first, one per 10 s, final
    assert lines[-1] == "export done: 50 rows | 24.5s | 2.0 msg/s | no errors"


def test_text_progress_stage_change_always_shows() -> None:
    clock, stream = FakeClock(), io.StringIO()
    progress = TextProgress(stream=stream, tty=False, clock=clock)
    progress.update(messages=1)
    progress.set_stage("media")
    assert stream.getvalue().splitlines()[-1].startswith("media: 1 msgs")


def test_text_progress_marks_failure_in_context_manager() -> None:
    stream = io.StringIO()
    with pytest.raises(RuntimeError), TextProgress(desc="export", stream=stream, tty=False) as progress:
        progress.update(messages=2)
        raise RuntimeError("boom")
    assert stream.getvalue().splitlines()[-1].startswith("export failed: 2 rows | ")
    assert stream.getvalue().splitlines()[-1].endswith(" | error: RuntimeError: boom")


def test_countdown_is_shown_and_ticks_down_in_virtual_time() -> None:
    stream = io.StringIO()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        progress = TextProgress(desc="fetching", stream=stream, tty=False, min_interval=0, clock=loop.time)
        progress.update(messages=10)
        progress.countdown(3, "FLOOD_WAIT on GetHistory")
        await asyncio.sleep(3)  # what the pacing code does while the countdown is shown
        await asyncio.sleep(5)  # no more ticks once the wait is over
        progress.close()

    run_virtual(main())
    lines = stream.getvalue().splitlines()
    waits = [line.split(" | ")[-1] for line in lines if "waiting" in line]
    assert waits == [
        "waiting 3s (FLOOD_WAIT on GetHistory)",
        "waiting 2s (FLOOD_WAIT on GetHistory)",
        "waiting 1s (FLOOD_WAIT on GetHistory)",
    ]
    assert "waiting" not in lines[-2] and "waiting" not in lines[-1]
    assert len(lines) == 6  # update, 3 countdown lines, end of wait, close


def test_a_countdown_ends_at_its_deadline_not_at_the_next_update() -> None:
    # No loop ticks here (sync code): each redraw still shows the time left, and nothing after the deadline.
    clock, stream = FakeClock(), io.StringIO()
    progress = TextProgress(stream=stream, tty=False, min_interval=0, clock=clock)
    progress.countdown(42, "FLOOD_WAIT on GetHistory")
    assert stream.getvalue().splitlines()[-1].endswith("waiting 42s (FLOOD_WAIT on GetHistory)")
    clock.now = 10
    progress.update(messages=100)
    progress.media_done(ok=True)  # a download finishing says nothing about the history wait
    assert stream.getvalue().splitlines()[-1].endswith("waiting 32s (FLOOD_WAIT on GetHistory)")
    assert progress.snapshot()["waiting"] == 32
    clock.now = 42
    progress.update(messages=1)
    assert "waiting" not in stream.getvalue().splitlines()[-1]
    assert progress.snapshot()["waiting"] == 0
    progress.countdown(5, "FLOOD_WAIT on GetFile")
    progress.countdown(0, "FLOOD_WAIT on GetFile")  # ended early, explicitly
    assert progress.snapshot()["waits"] == {}


# ------------------------------------------------------------------------------------- callable progress


def test_callable_receives_every_event_with_a_snapshot() -> None:
    events: list[dict[str, Any]] = []
    clock = FakeClock()
    progress = make_progress(events.append, total=10, desc="fetching", clock=clock)
    clock.now = 2.0
    progress.update(messages=4, media=1)
    progress.set_stage("media")
    progress.countdown(5, "FLOOD_WAIT on GetFile")
    progress.set_total(20)
    progress.update(media=2)
    progress.close()

    assert [e["event"] for e in events] == ["update", "stage", "countdown", "total", "update", "close"]
    first = events[0]
    assert (first["messages"], first["media"], first["total"], first["stage"]) == (4, 1, 10, "fetching")
    assert first["rate"] == 2.0 and first["eta"] == 3.0
    countdown = events[2]
    assert (countdown["seconds"], countdown["reason"]) == (5, "FLOOD_WAIT on GetFile")
    assert countdown["waiting"] == 5 and countdown["wait_reason"] == "FLOOD_WAIT on GetFile"
    assert events[3]["total"] == 20
    assert events[4]["media"] == 3 and events[4]["waiting"] == 5  # the update did not end the wait
    assert events[5]["closed"] is True


# --------------------------------------------------------------------------------------- widget progress


def test_widget_progress_builds_bar_and_label_and_follows_updates() -> None:
    clock = FakeClock()
    progress = WidgetProgress(desc="fetching", display=False, clock=clock)
    assert progress.bar.layout.display == "none"  # total unknown: no bar yet
    assert "0 msgs" in progress.label.value

    progress.set_total(100)
    assert progress.bar.layout.display is None and progress.bar.max == 100
    clock.now = 1.0
    progress.update(messages=40, media=3)
    assert progress.bar.value == 40
    label = progress.label.value
    assert "40/100 msgs (40%)" in label and "3 media" in label  # update(media=n): the older way to count
    assert "40 msg/s" in label and "ETA 0:02" in label

    clock.now = 1.05
    progress.update(messages=10)  # throttled: within 0.2 s of the last redraw
    assert progress.bar.value == 40
    progress.countdown(42, "FLOOD_WAIT on <GetHistory>")
    assert progress.bar.bar_style == "warning"
    # the wait has a label of its own (the main one never grows long enough to wrap)
    assert "waiting 42s (FLOOD_WAIT on &lt;GetHistory&gt;)" in progress.wait_label.value
    assert "waiting" not in progress.label.value

    progress.close()
    assert progress.bar.bar_style == "success"
    assert progress.bar.value == progress.bar.max == 100
    assert (
        "fetching done: 50 rows | media 3 done, 0 failed | 1.1s | 48 msg/s | 1 flood wait"
        in progress.label.value
    )


def test_widget_progress_grows_max_when_the_total_was_an_estimate() -> None:
    progress = WidgetProgress(total=10, display=False)
    progress.update(messages=15)
    assert progress.bar.max == 15 and progress.bar.value == 15
    progress.failed = True
    progress.close()
    assert progress.bar.bar_style == "danger"


# ------------------------------------------------------------------ media counts, waits, the dashboard


def test_media_have_their_own_count_and_the_run_is_not_done_until_they_are() -> None:
    clock, stream = FakeClock(), io.StringIO()
    progress = TextProgress(total=100, desc="export", stream=stream, tty=False, min_interval=0, clock=clock)
    clock.now = 1.0
    progress.update(messages=50)
    progress.media_queued(10)
    clock.now = 2.0
    progress.update(messages=50)
    progress.media_queued(10)
    for ok in (True, True, True, False):
        progress.media_done(ok)
    snap = progress.snapshot()
    assert (snap["media"], snap["media_failed"], snap["media_total"], snap["media_pending"]) == (3, 1, 20, 16)
    # every message is in, 4 of 20 files are done: 20%, not 100%
    assert snap["fraction"] == pytest.approx(0.2)
    line = stream.getvalue().splitlines()[-1]
    assert line.startswith("export: 100/100 msgs, 3/20 media, 1 failed (20%) | 50 msg/s | ETA ")
    assert snap["eta"] is not None and snap["eta"] > 0  # files left, at the media rate
    for _ in range(16):
        progress.media_done(True)
    assert progress.fraction == 1.0 and progress.eta == 0
    clock.now = 4.0
    progress.close()
    assert stream.getvalue().splitlines()[-1] == (
        "export done: 100 rows | media 19 done, 1 failed | 4.0s | 25 msg/s | no errors"
    )


def test_fraction_stays_below_one_while_a_file_is_pending() -> None:
    progress = Progress(total=10)
    progress.update(messages=10)
    progress.media_queued(1000)
    for _ in range(999):
        progress.media_done(True)
    assert progress.fraction == 0.99  # 999/1000 rounds to 100% otherwise
    progress.media_done(False)
    assert progress.fraction == 1.0


def test_fraction_extrapolates_media_while_messages_are_still_coming() -> None:
    progress = Progress(total=1000)
    progress.update(messages=100)
    progress.media_queued(10)  # 10 files in the first 100 messages: about 100 in the chat
    for _ in range(10):
        progress.media_done(True)
    assert progress.fraction == pytest.approx(0.1)


def test_final_figures_use_one_clock_and_one_formatter() -> None:
    clock, stream = FakeClock(), io.StringIO()
    progress = TextProgress(desc="export", stream=stream, tty=False, clock=clock)
    progress.update(messages=2000)
    clock.now = 0.43
    assert progress.stop() == pytest.approx(0.43)
    clock.now = 5.0  # what happens after the work (metrics files, cleanup) is not the run's time
    progress.close()
    assert stream.getvalue().splitlines()[-1] == "export done: 2,000 rows | 0.43s | 4,651 msg/s | no errors"
    assert jupyter.format_seconds(0.43) == "0.43s"
    assert jupyter.format_seconds(12.34) == "12.3s"
    assert jupyter.format_seconds(125) == "2:05"
    assert jupyter.format_seconds(3723) == "1:02:03"
    assert (jupyter.format_rate(2.46), jupyter.format_rate(4846.4)) == ("2.5", "4,846")


def test_close_with_an_error_says_so_in_the_final_line() -> None:
    stream = io.StringIO()
    progress = TextProgress(desc="export @x", stream=stream, tty=False)
    progress.update(messages=3)
    progress.close(error=ConfigError("bad thing"))
    assert progress.failed
    line = stream.getvalue().splitlines()[-1]
    assert line.startswith("export @x failed: 3 rows | ") and line.endswith("error: ConfigError: bad thing")


def test_countdown_ticks_every_second_while_media_complete_in_virtual_time() -> None:
    """A download finishing right after the countdown starts, and more every 0.27 s: the wait label still
    changes every second, on the second, and the ETA never grows during the wait."""
    seen: list[tuple[float, str, float | None]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        progress = WidgetProgress(total=1000, desc="export", display=False, clock=loop.time)
        progress.wait_label.observe(
            lambda change: seen.append((loop.time(), change["new"], progress.eta)), names="value"
        )
        progress.media_queued(40)
        await asyncio.sleep(1)
        progress.update(messages=100)
        for _ in range(5):
            progress.media_done(True)

        async def downloads() -> None:
            for i in range(30):
                await asyncio.sleep(0.27)
                progress.media_done(ok=i % 10 != 0)

        task = asyncio.create_task(downloads())
        await asyncio.sleep(0.5)
        progress.countdown(8, "FLOOD_WAIT on messages.GetHistory")
        progress.media_done(True)  # a completion right after the countdown starts
        start = loop.time()
        await asyncio.sleep(8.5)
        await task
        progress.close()
        seen.append((start, "START", None))

    run_virtual(main())
    start = next(t for t, label, _ in seen if label == "START")
    ticks = [(round(t - start, 3), label, eta) for t, label, eta in seen if "waiting" in label]
    assert [(t, label.split("waiting ")[1].split("s")[0]) for t, label, _ in ticks] == [
        (float(k), str(8 - k)) for k in range(8)
    ]
    assert all("FLOOD_WAIT on messages.GetHistory" in label for _, label, _ in ticks)
    assert any(label == "" for t, label, _ in seen if t - start >= 8)  # gone after the wait
    etas = [eta for _, _, eta in ticks]
    assert all(eta is not None for eta in etas)
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(etas)), etas  # never grows during the wait


def test_overlapping_waits_count_down_separately() -> None:
    clock, stream = FakeClock(), io.StringIO()
    progress = TextProgress(stream=stream, tty=False, min_interval=0, clock=clock)
    progress.countdown(3, "FLOOD_WAIT on upload.GetFile")
    progress.countdown(10, "FLOOD_WAIT on messages.GetHistory")
    assert progress.waits() == {"FLOOD_WAIT on upload.GetFile": 3, "FLOOD_WAIT on messages.GetHistory": 10}
    assert (
        stream.getvalue().splitlines()[-1].endswith("waiting 10s (FLOOD_WAIT on messages.GetHistory) +1 more")
    )
    clock.now = 5
    progress.update(messages=1)
    assert stream.getvalue().splitlines()[-1].endswith("waiting 5s (FLOOD_WAIT on messages.GetHistory)")
    clock.now = 20
    assert progress.waited == 10  # the union of the waits, left out of the ETA's rate
    assert progress.flood_waits == 2


def test_text_line_shows_the_pacer_rate_limit_and_blocked_time() -> None:
    state = {
        "messages.GetHistory": {"rate": 0.93, "limit": 1.0, "blocked_for": 0.0},
        "upload.GetFile": {"rate": 12.0, "limit": None, "blocked_for": 4.2},
        "contacts.ResolveUsername": {"rate": None, "limit": None, "blocked_for": 0.0},
    }

    class FakePacer:
        def snapshot(self) -> dict[str, dict[str, Any]]:
            return state

    stream = io.StringIO()
    progress = make_progress("text", desc="fetching", stream=stream, pacer=FakePacer())
    progress.update(messages=5)
    line = stream.getvalue().splitlines()[-1]
    assert "| GetFile 12/s blocked 5s, GetHistory 0.9/s (limit 1.0/s) |" in line + " |"
    assert "ResolveUsername" not in line
    # a countdown for a method shows once, as the countdown
    progress.countdown(8, "FLOOD_WAIT on upload.GetFile")
    assert progress._pacer_text() == "GetFile 12/s, GetHistory 0.9/s (limit 1.0/s)"
    # a callable, a plain dict, a pacer without snapshot() (shows nothing), or none
    progress.set_pacer(lambda: {"messages.GetHistory": {"rate": 2.0, "limit": 2.5, "blocked_for": 0}})
    assert progress._pacer_text() == "GetHistory 2.0/s (limit 2.5/s)"
    progress.set_pacer(state)
    assert progress.snapshot()["pacer"] == state
    progress.set_pacer(object())
    assert progress._pacer_text() == "" and progress.snapshot()["pacer"] == {}
    progress.set_pacer(None)
    assert progress._pacer_text() == ""


def test_tty_line_is_cut_to_the_terminal_width() -> None:
    stream = io.StringIO()
    state = {f"messages.Method{i}": {"rate": 1.0, "limit": 2.0, "blocked_for": 0} for i in range(5)}
    progress = TextProgress(
        desc="fetching a very long chat name", stream=stream, tty=True, width=60, pacer=state
    )
    progress.countdown(30, "FLOOD_WAIT on messages.GetHistory")
    drawn = stream.getvalue().split("\r")[-1]
    assert len(drawn.rstrip()) <= 60 and drawn.rstrip().endswith("…")


def test_widget_dashboard_shows_media_pacer_and_wait_rows() -> None:
    clock = FakeClock()
    state = {"messages.GetHistory": {"rate": 0.9, "limit": 1.0, "blocked_for": 0.0}}
    progress = WidgetProgress(total=100, desc="export", display=False, clock=clock, pacer=state)
    assert progress._media_row.layout.display == "none"
    clock.now = 1
    progress.update(messages=100)
    progress.media_queued(4)
    progress.media_done(True)
    clock.now = 2
    progress.media_done(False)
    assert progress._media_row.layout.display is None
    assert (progress.media_bar.max, progress.media_bar.value) == (4, 2)
    assert "1/4 media, 1 failed" in progress.media_label.value
    assert "(50%)" in progress.label.value  # 2 of 4 files: the run is half done
    assert "pacer: GetHistory 0.9/s (limit 1.0/s)" in progress.pacer_label.value
    assert progress.wait_label.value == ""
    clock.now = 3
    progress.countdown(8, "FLOOD_WAIT on messages.GetHistory")
    assert "waiting 8s" in progress.wait_label.value and progress.bar.bar_style == "warning"
    assert "white-space:nowrap" in progress.wait_label.value and "white-space:nowrap" in progress.label.value
    progress.close()
    assert progress.bar.bar_style == "success"
    assert progress.label.value.count("export done: 100 rows | media 1 done, 1 failed, 2 not finished")
    assert progress.wait_label.value == progress.pacer_label.value == ""


def test_throttled_update_is_drawn_later_in_virtual_time() -> None:
    stream = io.StringIO()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        progress = TextProgress(stream=stream, tty=True, clock=loop.time)
        progress.update(messages=1)
        progress.update(messages=1)  # throttled (0.2 s)
        await asyncio.sleep(1)
        assert "2 msgs" in stream.getvalue().rsplit("\r", 1)[-1]
        progress.close()

    run_virtual(main())


def test_pacer_blocked_time_is_kept_current_without_other_events_in_virtual_time() -> None:
    stream = io.StringIO()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + 3

        def snapshot() -> dict[str, dict[str, Any]]:
            return {
                "messages.GetHistory": {
                    "rate": 1.0,
                    "limit": 1.0,
                    "blocked_for": max(0.0, until - loop.time()),
                }
            }

        progress = TextProgress(stream=stream, tty=False, min_interval=0, clock=loop.time, pacer=snapshot)
        progress.update(messages=1)
        await asyncio.sleep(10)
        progress.close()

    run_virtual(main())
    blocked = [line.rsplit("blocked ", 1)[-1] for line in stream.getvalue().splitlines() if "blocked" in line]
    assert blocked == ["3s", "2s", "1s"]
    assert len(stream.getvalue().splitlines()) == 5  # no more ticks once the pacer lets requests go
