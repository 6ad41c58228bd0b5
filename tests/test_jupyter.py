"""run_sync (script and nested loop), in_notebook, and the progress reporters (text, callable, widget)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import io
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
    assert "in 0:02" in final and "ETA" not in final
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
    assert lines[-1].startswith("export: 50/50 msgs (100%)")


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
    assert stream.getvalue().splitlines()[-1].startswith("export failed: 2 msgs")


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


def test_update_ends_a_countdown() -> None:
    clock, stream = FakeClock(), io.StringIO()
    progress = TextProgress(stream=stream, tty=False, min_interval=0, clock=clock)
    progress.countdown(42, "FLOOD_WAIT on GetHistory")
    assert stream.getvalue().splitlines()[-1].endswith("waiting 42s (FLOOD_WAIT on GetHistory)")
    clock.now = 10
    progress.update(messages=100)
    assert "waiting" not in stream.getvalue().splitlines()[-1]
    assert progress.snapshot()["waiting"] == 0


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
    assert events[4]["media"] == 3 and events[4]["waiting"] == 0
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
    assert "40/100 msgs (40%)" in label and "3 media" in label
    assert "40 msg/s" in label and "ETA 0:02" in label

    clock.now = 1.05
    progress.update(messages=10)  # throttled: within 0.2 s of the last redraw
    assert progress.bar.value == 40
    progress.countdown(42, "FLOOD_WAIT on <GetHistory>")
    assert progress.bar.bar_style == "warning"
    assert "waiting 42s (FLOOD_WAIT on &lt;GetHistory&gt;)" in progress.label.value

    progress.close()
    assert progress.bar.bar_style == "success"
    assert progress.bar.value == progress.bar.max == 100
    assert "50/100" in progress.label.value


def test_widget_progress_grows_max_when_the_total_was_an_estimate() -> None:
    progress = WidgetProgress(total=10, display=False)
    progress.update(messages=15)
    assert progress.bar.max == 15 and progress.bar.value == 15
    progress.failed = True
    progress.close()
    assert progress.bar.bar_style == "danger"
