"""Notebook helpers: :func:`run_sync` for the ``*_sync`` twins, and progress reporting.

Awaitables are tgkit's API (top-level ``await`` works in Jupyter); :func:`run_sync` drives them from
sync code. Progress: an ipywidgets bar in a notebook, a text line on stderr in a terminal, a user
callable, or nothing (:func:`make_progress`). ipywidgets and IPython are imported lazily, only when a
widget is actually built or a kernel is asked about.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal, TextIO, TypeAlias, TypeVar

from .errors import ConfigError, TgkitError

__all__ = [
    "CallbackProgress",
    "NullProgress",
    "Progress",
    "ProgressMode",
    "TextProgress",
    "WidgetProgress",
    "close_sync_loop",
    "in_notebook",
    "make_progress",
    "run_sync",
]

T = TypeVar("T")

# --------------------------------------------------------------------------------------------- run_sync

_local = threading.local()
_nested_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_nest_lock = threading.Lock()
_atexit_registered = False


class _RunnerHolder:
    """Owns one thread's :class:`asyncio.Runner`; closes its loop when the thread's locals go away."""

    __slots__ = ("loop", "runner")

    def __init__(self) -> None:
        self.runner = asyncio.Runner()
        self.loop = self.runner.get_loop()  # creates the loop and makes it this thread's current loop

    def __del__(self) -> None:
        # The thread ended without close_sync_loop(): close the loop so it does not leak (ResourceWarning).
        # Only close() here (no task cancellation): this may run in any thread.
        loop = getattr(self, "loop", None)
        if loop is not None and not loop.is_closed() and not loop.is_running():
            loop.close()


def _close_main_loop() -> None:
    close_sync_loop()


def _thread_runner() -> asyncio.Runner:
    global _atexit_registered
    holder: _RunnerHolder | None = getattr(_local, "holder", None)
    if holder is None:
        holder = _local.holder = _RunnerHolder()
        if threading.current_thread() is threading.main_thread() and not _atexit_registered:
            atexit.register(_close_main_loop)
            _atexit_registered = True
    return holder.runner


def _as_coroutine(aw: Awaitable[T]) -> Coroutine[Any, Any, T]:
    if asyncio.iscoroutine(aw):
        return aw

    async def _await() -> T:
        return await aw

    return _await()


def run_sync(aw: Awaitable[T]) -> T:
    """Run an awaitable to completion from sync code and return its result (or raise its error).

    * No running loop (a script): the awaitable runs on ONE persistent event loop per thread, created
      on first use and kept open (an :class:`asyncio.Runner`), because a Telethon client is bound to the
      loop it connected on: ``connect_sync()`` then ``export_chat_sync()`` on the same client must see
      the same loop. The loop is also the thread's current loop (``asyncio.get_event_loop()``). Each
      call gets a fresh copy of the caller's contextvars, as with :func:`asyncio.run`. The loop is
      closed by :func:`close_sync_loop`, at interpreter exit (main thread) or when its thread ends.
      Do not mix: a client connected via ``run_sync`` cannot later be used under ``asyncio.run``.
    * Inside a running loop (Jupyter, or sync code called from a coroutine): nest-asyncio is imported
      and applied to that loop, once, and the awaitable runs on it re-entrantly. Prefer ``await`` in
      notebooks; this path exists so the ``*_sync`` twins also work there. nest-asyncio patches asyncio
      process-wide (pure-Python Task/Future, ``asyncio.run``); that is why it is applied only here.
    """
    if not isinstance(aw, Awaitable):
        raise TypeError(f"run_sync() needs an awaitable, got {type(aw).__name__}")
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is None:
        return _thread_runner().run(_as_coroutine(aw), context=contextvars.copy_context())
    _ensure_nested(loop)
    return loop.run_until_complete(aw)


def _ensure_nested(loop: asyncio.AbstractEventLoop) -> None:
    with _nest_lock:
        if loop in _nested_loops:
            return
        import nest_asyncio

        try:
            nest_asyncio.apply(loop)
        except ValueError as exc:  # e.g. uvloop: nest-asyncio can only patch asyncio's own loops
            raise TgkitError(
                f"cannot run a *_sync helper inside a running {type(loop).__name__}: "
                "use the awaitable version with `await` instead"
            ) from exc
        _nested_loops.add(loop)


def close_sync_loop() -> None:
    """Close this thread's :func:`run_sync` loop (cancelling leftover tasks); the next call makes a new one.

    Harmless when there is none. Clients connected on the old loop cannot be used afterwards.
    """
    holder: _RunnerHolder | None = getattr(_local, "holder", None)
    if holder is None:
        return
    del _local.holder
    holder.runner.close()


def in_notebook() -> bool:
    """True inside a real IPython kernel (Jupyter, VS Code, Colab: a ``ZMQInteractiveShell``).

    False in plain Python and in the terminal IPython shell. Never imports IPython: if nothing imported
    it, this is not a kernel.
    """
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    return any(cls.__name__ == "ZMQInteractiveShell" for cls in type(shell).__mro__)


# --------------------------------------------------------------------------------------------- progress

ProgressMode: TypeAlias = bool | Literal["auto", "text", "widget"] | Callable[[dict[str, Any]], Any] | None


def _fmt_duration(seconds: float) -> str:
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _fmt_rate(rate: float) -> str:
    return f"{rate:.1f}" if rate < 10 else f"{rate:,.0f}"


class Progress:
    """What the export pipeline reports to; this base class keeps the counts and shows nothing.

    Counters are cumulative; ``update`` takes increments. ``countdown`` announces a wait (a flood wait):
    displays count it down until it ends or the next ``update``. Use as a context manager or call
    :meth:`close`. Subclasses override :meth:`_render` (and :meth:`_emit` for events).
    """

    min_interval: float = 0.0

    def __init__(
        self, *, total: int | None = None, desc: str = "", clock: Callable[[], float] | None = None
    ) -> None:
        self.clock = clock or time.monotonic
        self.messages = 0
        self.media = 0
        self.total = total
        self.stage = desc
        self.wait_reason = ""
        self.closed = False
        self.failed = False
        self._started = self.clock()
        self._wait_until: float | None = None
        self._last_render: float | None = None
        self._tick: asyncio.TimerHandle | None = None

    # -- the API the pipeline calls
    def update(self, messages: int = 0, media: int = 0) -> None:
        """Add ``messages`` exported messages and ``media`` downloaded files; ends any countdown."""
        self.messages += messages
        self.media += media
        self._end_wait()
        self._emit("update")
        self._refresh()

    def set_total(self, total: int | None) -> None:
        """The expected number of messages (enables the bar and the ETA); ``None`` when unknown."""
        self.total = total
        self._emit("total")
        self._refresh()

    def set_stage(self, stage: str) -> None:
        """Name what is happening now ("fetching", "media", "writing" ...)."""
        self.stage = stage
        self._emit("stage")
        self._refresh(force=True)

    def countdown(self, seconds: float, reason: str = "") -> None:
        """Announce a wait of ``seconds`` (e.g. ``"FLOOD_WAIT on GetHistory"``); shown counting down.

        The display ticks once a second while an event loop runs in this thread; the wait ends after
        ``seconds``, at the next :meth:`update`, or with ``countdown(0)``.
        """
        self._cancel_tick()
        if seconds <= 0:
            self._end_wait()
            self._refresh(force=True)
            return
        self._wait_until = self.clock() + seconds
        self.wait_reason = reason
        self._emit("countdown", seconds=seconds, reason=reason)
        self._refresh(force=True)
        self._schedule_tick()

    def close(self) -> None:
        """Show the final state; idempotent."""
        if self.closed:
            return
        self._cancel_tick()
        self._end_wait()
        self.closed = True
        self._emit("close")
        self._render(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.failed = True
        self.close()

    # -- derived values
    @property
    def elapsed(self) -> float:
        return max(0.0, self.clock() - self._started)

    @property
    def rate(self) -> float:
        """Messages per second since the start (flood waits included, so the ETA stays honest)."""
        elapsed = self.elapsed
        return self.messages / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left, when the total is known and there is a rate to extrapolate from."""
        rate = self.rate
        if self.total is None or rate <= 0:
            return None
        return max(0, self.total - self.messages) / rate

    @property
    def wait_remaining(self) -> float:
        if self._wait_until is None:
            return 0.0
        return max(0.0, self._wait_until - self.clock())

    def snapshot(self) -> dict[str, Any]:
        """The current state as a plain dict (what callables receive, plus ``"event"``)."""
        return {
            "messages": self.messages,
            "media": self.media,
            "total": self.total,
            "stage": self.stage,
            "elapsed": self.elapsed,
            "rate": self.rate,
            "eta": self.eta,
            "waiting": self.wait_remaining,
            "wait_reason": self.wait_reason if self._wait_until is not None else "",
            "closed": self.closed,
            "failed": self.failed,
        }

    def describe(self) -> str:
        """One human line: stage, counts, rate, ETA, and the wait if any."""
        parts = []
        if self.total is not None:
            pct = 100 * self.messages / self.total if self.total else 100.0
            parts.append(f"{self.messages:,}/{self.total:,} msgs ({min(pct, 100.0):.0f}%)")
        else:
            parts.append(f"{self.messages:,} msgs")
        parts.append(f"{self.media:,} media")
        parts.append(f"{_fmt_rate(self.rate)} msg/s")
        eta = self.eta
        if eta is not None and not self.closed:
            parts.append(f"ETA {_fmt_duration(eta)}")
        elif self.closed:
            parts.append(f"in {_fmt_duration(self.elapsed)}")
        if self._wait_until is not None:
            reason = f" ({self.wait_reason})" if self.wait_reason else ""
            parts.append(f"waiting {self.wait_remaining:.0f}s{reason}")
        line = " | ".join(parts)
        stage = self.stage + (" failed" if self.failed else "")
        return f"{stage}: {line}" if stage else line

    # -- internals
    def _end_wait(self) -> None:
        if self._wait_until is not None:
            self._wait_until = None
            self.wait_reason = ""
            self._cancel_tick()

    def _refresh(self, force: bool = False) -> None:
        if self.closed:
            return
        now = self.clock()
        if not force and self._last_render is not None and now - self._last_render < self.min_interval:
            return
        self._last_render = now
        self._render(final=False)

    def _schedule_tick(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to tick on: the countdown shows its start and ends at the next update
        self._tick = loop.call_later(min(1.0, self.wait_remaining), self._on_tick)

    def _on_tick(self) -> None:
        self._tick = None
        if self.closed or self._wait_until is None:
            return
        if self.wait_remaining <= 0:
            self._end_wait()
            self._refresh(force=True)
            return
        self._refresh(force=True)
        self._schedule_tick()

    def _cancel_tick(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None

    def _render(self, final: bool) -> None:
        """Show the state; ``final`` on close. The base class shows nothing."""

    def _emit(self, event: str, **extra: Any) -> None:
        """Send an event; only :class:`CallbackProgress` does."""


class NullProgress(Progress):
    """Silent: counts, shows nothing (``progress=False``)."""


class CallbackProgress(Progress):
    """Calls ``fn(event)`` for every event: ``{"event": "update"|"total"|"stage"|"countdown"|"close", ...}``.

    The dict is :meth:`Progress.snapshot` plus ``"event"``; a ``countdown`` event also carries
    ``"seconds"`` and ``"reason"``. Not throttled; errors from ``fn`` propagate.
    """

    def __init__(self, fn: Callable[[dict[str, Any]], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fn = fn

    def _emit(self, event: str, **extra: Any) -> None:
        self.fn({"event": event, **self.snapshot(), **extra})


class TextProgress(Progress):
    """A text bar on ``stream`` (stderr by default), at most one redraw per ``min_interval`` seconds.

    On a terminal (``tty``): one line redrawn with ``\\r``, 5 redraws/s at most. Otherwise (logs, CI):
    a full line at most every 10 s. Stage changes, countdowns and the final state always show.
    """

    def __init__(
        self,
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        min_interval: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty()) if isatty is not None else False
        self.tty = tty
        self.min_interval = min_interval if min_interval is not None else (0.2 if tty else 10.0)
        self._width = 0
        super().__init__(**kwargs)

    def _render(self, final: bool) -> None:
        line = self.describe()
        if self.tty:
            pad = " " * max(0, self._width - len(line))
            self._width = len(line)
            self.stream.write("\r" + line + pad + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


class WidgetProgress(Progress):
    """An ipywidgets bar (hidden while the total is unknown) and an HTML label, redrawn 5 times/s at most.

    Widgets are built on construction (ipywidgets imported then) and displayed when ``display`` is true
    (default: only inside a kernel). ``.widget`` is the box, ``.bar`` and ``.label`` its parts.
    """

    min_interval = 0.2

    def __init__(self, *, display: bool | None = None, **kwargs: Any) -> None:
        try:
            import ipywidgets
        except ImportError as exc:  # pragma: no cover - ipywidgets is a dependency
            raise ConfigError(
                "progress widgets need ipywidgets: `pip install ipywidgets` (or pass progress='text')"
            ) from exc
        super().__init__(**kwargs)
        self.bar = ipywidgets.IntProgress(value=0, min=0, max=1, description="")
        self.label = ipywidgets.HTML(value="")
        self.widget = ipywidgets.HBox([self.bar, self.label])
        self._render(final=False)
        if display is None:
            display = in_notebook()
        if display:
            from IPython.display import display as show

            show(self.widget)

    def _render(self, final: bool) -> None:
        import html

        bar = self.bar
        if self.total is None:
            bar.layout.display = "none"
        else:
            bar.layout.display = None
            bar.max = max(1, self.total, self.messages)
            bar.value = min(self.messages, bar.max)
        if self.failed:
            bar.bar_style = "danger"
        elif final:
            bar.bar_style = "success"
            if self.total is not None:
                bar.value = bar.max
        elif self._wait_until is not None:
            bar.bar_style = "warning"
        else:
            bar.bar_style = "info"
        self.label.value = html.escape(self.describe())


def make_progress(
    mode: ProgressMode | Progress = "auto",
    *,
    total: int | None = None,
    desc: str = "",
    stream: TextIO | None = None,
    clock: Callable[[], float] | None = None,
) -> Progress:
    """Build the progress reporter for a ``progress=`` argument.

    ``True``/``"auto"``: a widget in a notebook, else a text bar on stderr; ``"text"``/``"widget"``: that
    one; ``False``/``None``: silent; a callable: called with an event dict (see
    :class:`CallbackProgress`); a :class:`Progress`: used as is. ``stream`` and ``clock`` are for the
    text bar and for tests.
    """
    if isinstance(mode, Progress):
        return mode
    common: dict[str, Any] = {"total": total, "desc": desc, "clock": clock}
    if mode is None or mode is False:
        return NullProgress(**common)
    if mode is True or mode == "auto":
        mode = "widget" if in_notebook() else "text"
    if mode == "widget":
        return WidgetProgress(**common)
    if mode == "text":
        return TextProgress(stream=stream, **common)
    if callable(mode):
        return CallbackProgress(mode, **common)
    raise ConfigError(f"progress={mode!r}: use True, False, 'auto', 'text', 'widget' or a callable")
