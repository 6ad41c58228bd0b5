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
import math
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
    "format_rate",
    "format_seconds",
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
      the same loop. The loop is also made the thread's current loop (``asyncio.get_event_loop()``,
      which Telethon's sync calls use) on every call, even after an :func:`asyncio.run` unset it. Each
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
        runner = _thread_runner()
        # Make the runner's loop this thread's current loop on EVERY call: an asyncio.run() in this
        # thread since the last call left the thread without one, and Telethon's sync paths (the
        # ``telethon.sync`` wrappers, ``client.disconnect()``, ``client.loop``) use the current loop,
        # else create a loop of their own that nobody closes (and that is not the client's).
        asyncio.set_event_loop(runner.get_loop())
        return runner.run(_as_coroutine(aw), context=contextvars.copy_context())
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
PacerSource: TypeAlias = Any
"""What :meth:`Progress.set_pacer` accepts: an object with ``snapshot()`` (a :class:`tgkit.Pacer`), a
callable returning the snapshot, or the snapshot dict itself: ``{method: {"rate", "limit", "blocked_for"}}``."""

_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def format_seconds(seconds: float) -> str:
    """A run's duration for people: ``"0.43s"``, ``"12.3s"``, ``"2:05"``, ``"1:02:03"``.

    The one formatter for final durations (the progress's last line and ``ExportResult``'s repr), so
    sub-second runs read as such rather than ``"0:00"``.
    """
    s = max(0.0, float(seconds))
    if s < 1:
        return f"{s:.2f}s"
    if s < 60:
        return f"{s:.1f}s"
    return _fmt_clock(s)


def format_rate(per_second: float) -> str:
    """A rate for people: one decimal below 10 (``"2.5"``), else whole with thousands (``"4,846"``)."""
    return f"{per_second:.1f}" if per_second < 10 else f"{per_second:,.0f}"


def _fmt_clock(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss`` (ETAs)."""
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _short_method(method: str) -> str:
    return method.rsplit(".", 1)[-1]


class Progress:
    """What the export pipeline reports to; this base class keeps the counts and shows nothing.

    Counters are cumulative. Messages: ``update(messages=n)``. Media have their own count:
    ``media_queued(n)`` when downloads are scheduled, ``media_done(ok)`` when each one ends (``update(media=n)``
    still counts n successful downloads). The run is complete (``fraction`` 1.0) only when every message
    and every queued file is done. ``countdown(seconds, reason)`` announces a wait (a flood wait): shown
    counting down, ticking once a second, until its deadline; several waits (one per reason) may overlap.
    Waits are left out of the rate the ETA extrapolates from. ``set_pacer`` attaches the pacer whose state
    (rate, learned limit, blocked time per method) the displays show. Use as a context manager or call
    :meth:`close`. Subclasses override :meth:`_render` (and :meth:`_emit` for events).
    """

    min_interval: float = 0.0

    def __init__(
        self,
        *,
        total: int | None = None,
        desc: str = "",
        clock: Callable[[], float] | None = None,
        pacer: PacerSource = None,
    ) -> None:
        self.clock = clock or time.monotonic
        self.desc = desc
        self.messages = 0
        self.media = 0  # downloaded
        self.media_failed = 0
        self.media_total = 0  # queued so far (done + failed + pending)
        self.total = total
        self.stage = desc
        self.closed = False
        self.failed = False
        self.error: BaseException | None = None
        self.flood_waits = 0
        self.pacer: PacerSource = pacer
        self._started = self.clock()
        self._stopped: float | None = None
        self._media_started: float | None = None
        self._waited_at_media = 0.0
        self._media_tracked = False  # media_queued() was called: media count towards % done and the ETA
        self._waits: dict[str, float] = {}  # reason -> deadline
        self._paused_s = 0.0  # closed spans during which some wait was running
        self._pause_from: float | None = None
        self._pause_to = 0.0
        self._last_render: float | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._trailing: asyncio.TimerHandle | None = None

    # -- the API the pipeline calls
    def update(self, messages: int = 0, media: int = 0) -> None:
        """Add ``messages`` exported messages (and ``media`` finished downloads, the older way to count them).

        Does not end a countdown: a wait ends at its deadline (a file finishing says nothing about a
        flood wait on another method).
        """
        self.messages += messages
        if media:
            self._note_media_start()
            self.media += media
            self.media_total = max(self.media_total, self.media + self.media_failed)
        self._emit("update")
        self._refresh()

    def media_queued(self, n: int = 1) -> None:
        """``n`` more media downloads were scheduled."""
        self._note_media_start()
        self._media_tracked = True
        self.media_total += n
        self._emit("media_queued")
        self._refresh()

    def media_done(self, ok: bool = True) -> None:
        """One queued download ended: downloaded (``ok``) or failed."""
        if ok:
            self.media += 1
        else:
            self.media_failed += 1
        self.media_total = max(self.media_total, self.media + self.media_failed)
        self._emit("media_done", ok=ok)
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

    def set_pacer(self, pacer: PacerSource) -> None:
        """Show this pacer's state: a :class:`tgkit.Pacer` (its ``snapshot()``), a callable returning that
        snapshot, a snapshot dict, or ``None`` to stop showing it. A pacer without ``snapshot`` shows nothing."""
        self.pacer = pacer
        self._refresh()

    def countdown(self, seconds: float, reason: str = "") -> None:
        """Announce a wait of ``seconds`` (e.g. ``"FLOOD_WAIT on messages.GetHistory"``), shown counting down.

        The display ticks once a second while an event loop runs in this thread (other updates in between,
        media completing, neither end nor delay the ticks). The wait ends at its deadline, or with
        ``countdown(0, reason)`` (``countdown(0)`` ends every wait). A new countdown for the same reason
        replaces the old one.
        """
        now = self._now()
        self._expire(now)
        if seconds <= 0:
            if reason:
                self._waits.pop(reason, None)
            else:
                self._waits.clear()
            if self._pause_from is not None and self._pause_to > now:
                self._pause_to = max([now, *self._waits.values()])
            self._refresh(force=True)
            return
        deadline = now + seconds
        self.flood_waits += 1
        self._waits[reason] = deadline
        if self._pause_from is not None and now <= self._pause_to:
            self._pause_to = max(self._pause_to, deadline)
        else:
            self._close_pause()
            self._pause_from, self._pause_to = now, deadline
        self._emit("countdown", seconds=seconds, reason=reason)
        self._refresh(force=True)
        self._schedule_tick()

    def stop(self) -> float:
        """Stop the clock (the run's work is over) and return the elapsed seconds; the final line and the
        caller's own figures then agree. Idempotent; :meth:`close` stops the clock too."""
        if self._stopped is None:
            self._stopped = self.clock()
        return self.elapsed

    def close(self, error: BaseException | None = None) -> None:
        """Show the final state (a failure when ``error`` is given); idempotent."""
        if self.closed:
            return
        if error is not None:
            self.failed = True
            self.error = error
        self.stop()
        self._cancel_timers()
        self._waits.clear()
        self.closed = True
        self._emit("close")
        self._render(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.failed = True
            if isinstance(exc, BaseException):
                self.error = exc
        self.close()

    # -- derived values
    def _now(self) -> float:
        return self._stopped if self._stopped is not None else self.clock()

    @property
    def elapsed(self) -> float:
        return max(0.0, self._now() - self._started)

    @property
    def waited(self) -> float:
        """Seconds so far during which at least one countdown was running."""
        now = self._now()
        current = 0.0
        if self._pause_from is not None:
            current = max(0.0, min(now, self._pause_to) - self._pause_from)
        return self._paused_s + current

    @property
    def rate(self) -> float:
        """Messages per second since the start, waits included (the run's honest average)."""
        elapsed = self.elapsed
        return self.messages / elapsed if elapsed > 0 else 0.0

    @property
    def media_pending(self) -> int:
        return max(0, self.media_total - self.media - self.media_failed)

    def _media_expected(self) -> int:
        """Queued files, extrapolated to the whole chat while messages are still being fetched."""
        if not self._media_tracked:
            return 0
        queued = self.media_total
        if queued and self.total and 0 < self.messages < self.total and not self.closed:
            return max(queued, round(queued * self.total / self.messages))
        return queued

    @property
    def fraction(self) -> float | None:
        """How much of the run is done, 0..1: the slower of messages and media. ``None`` when unknown.

        Below 1.0 while any queued download is pending, whatever the message count.
        """
        parts: list[float] = []
        if self.total is not None:
            parts.append(min(1.0, self.messages / self.total) if self.total else 1.0)
        expected = self._media_expected()
        if expected:
            parts.append((self.media + self.media_failed) / expected)
        if not parts:
            return None
        frac = min(parts)
        if self.media_pending or (self.total is not None and self.messages < self.total):
            frac = min(frac, 0.99)  # never "100%" while anything is left
        return frac

    @property
    def eta(self) -> float | None:
        """Seconds left, or None. Rates here leave the waits out, so a wait does not make the ETA grow:
        it adds its remaining seconds, which shrink as it runs."""
        if self.closed:
            return None
        active = self.elapsed - self.waited
        if active <= 0:
            return None
        left: list[float] = []
        if self.total is not None and self.messages < self.total:
            if self.messages <= 0:
                return None
            left.append((self.total - self.messages) / (self.messages / active))
        expected = self._media_expected()
        finished = self.media + self.media_failed
        if expected > finished:
            media_active = active
            if self._media_started is not None:
                media_active = self._now() - self._media_started - (self.waited - self._waited_at_media)
            if finished <= 0 or media_active <= 0:
                return None
            left.append((expected - finished) / (finished / media_active))
        if self.total is None and not left:
            return None
        return self.wait_remaining + max(left, default=0.0)

    @property
    def wait_remaining(self) -> float:
        """Seconds until the last running countdown ends (0 when none)."""
        now = self._now()
        return max([0.0, *(d - now for d in self._waits.values())])

    @property
    def wait_reason(self) -> str:
        waits = self.waits()
        return max(waits, key=lambda r: waits[r]) if waits else ""

    def waits(self) -> dict[str, float]:
        """Running countdowns: reason -> seconds left."""
        now = self._now()
        return {r: d - now for r, d in self._waits.items() if d > now}

    def pacer_state(self) -> dict[str, dict[str, Any]]:
        """The attached pacer's snapshot (``{}`` when none, or when it offers no ``snapshot``)."""
        source = self.pacer
        if source is None:
            return {}
        if isinstance(source, dict):
            return source
        snap = getattr(source, "snapshot", None)
        if callable(snap):
            return dict(snap())
        if callable(source):
            return dict(source())
        return {}

    def snapshot(self) -> dict[str, Any]:
        """The current state as a plain dict (what callables receive, plus ``"event"``)."""
        return {
            "messages": self.messages,
            "media": self.media,
            "media_failed": self.media_failed,
            "media_total": self.media_total,
            "media_pending": self.media_pending,
            "total": self.total,
            "fraction": self.fraction,
            "stage": self.stage,
            "elapsed": self.elapsed,
            "rate": self.rate,
            "eta": self.eta,
            "waiting": self.wait_remaining,
            "wait_reason": self.wait_reason,
            "waits": self.waits(),
            "flood_waits": self.flood_waits,
            "pacer": self.pacer_state(),
            "closed": self.closed,
            "failed": self.failed,
        }

    # -- text pieces (shared by the text line, the widget labels and the final line)
    def _stage_text(self) -> str:
        return self.stage + (" failed" if self.failed else "")

    def _counts_text(self) -> str:
        if self.total is not None:
            msgs = f"{self.messages:,}/{self.total:,} msgs"
        else:
            msgs = f"{self.messages:,} msgs"
        media = self._media_text()
        text = f"{msgs}, {media}" if media and self._media_tracked else msgs
        frac = self.fraction
        if frac is not None:
            text += f" ({100 * frac:.0f}%)"
        if media and not self._media_tracked:
            text += f" | {media}"
        return text

    def _media_text(self) -> str:
        if not (self.media_total or self.media_failed):
            return ""
        if not self._media_tracked:
            return f"{self.media:,} media"  # counted by update(media=n): nothing was announced as queued
        text = f"{self.media:,}/{self.media_total:,} media"
        if self.media_failed:
            text += f", {self.media_failed:,} failed"
        return text

    def _speed_text(self) -> str:
        text = f"{format_rate(self.rate)} msg/s"
        eta = self.eta
        if eta is not None:
            text += f" | ETA {_fmt_clock(eta)}"
        return text

    def _wait_text(self) -> str:
        waits = self.waits()
        if not waits:
            return ""
        ordered = sorted(waits.items(), key=lambda kv: -kv[1])
        reason, left = ordered[0]
        # a clock's countdown: "8s" until 7 s are left; the tolerance absorbs a tick firing a little early
        text = f"waiting {max(1, math.ceil(left - 0.01))}s" + (f" ({reason})" if reason else "")
        if len(ordered) > 1:
            text += f" +{len(ordered) - 1} more"
        return text

    def _pacer_text(self, limit: int = 2) -> str:
        """The busiest methods: ``GetHistory 0.9/s (limit 1.0/s)``; a blocked one ``GetFile blocked 8s``.

        Methods with a countdown of their own are shown by the countdown, not twice."""
        state = self.pacer_state()
        if not state:
            return ""
        counting = " ".join(self.waits())
        rows = []
        for method, info in state.items():
            rate, lim = info.get("rate"), info.get("limit")
            blocked = float(info.get("blocked_for") or 0.0)
            if rate is None and lim is None and blocked <= 0:
                continue
            rows.append((blocked, rate or 0.0, method, rate, lim))
        rows.sort(key=lambda r: (-r[0], -r[1], r[2]))
        parts = []
        for blocked, _, method, rate, lim in rows[:limit]:
            name = _short_method(method)
            text = name + (f" {format_rate(rate)}/s" if rate is not None else "")
            if lim is not None:
                text += f" (limit {format_rate(lim)}/s)"
            if blocked >= 0.5 and method not in counting:
                text += f" blocked {math.ceil(blocked - 0.01)}s"
            parts.append(text)
        return ", ".join(parts)

    def describe(self) -> str:
        """One human line: stage, counts (messages, media), rate, ETA, the pacer, the wait if any."""
        if self.closed:
            return self.final_line()
        parts = [self._counts_text(), self._speed_text()]
        for extra in (self._pacer_text(), self._wait_text()):
            if extra:
                parts.append(extra)
        line = " | ".join(parts)
        stage = self._stage_text()
        return f"{stage}: {line}" if stage else line

    def final_line(self) -> str:
        """The summary a finished run leaves: rows, media done/failed, seconds, rate, flood waits, errors."""
        label = self.desc or self.stage
        head = f"{label} failed" if self.failed else (f"{label} done" if label else "done")
        parts = [f"{self.messages:,} rows"]
        if self.media_total or self.media_failed:
            media = f"media {self.media:,} done, {self.media_failed:,} failed"
            if self.media_pending:
                media += f", {self.media_pending:,} not finished"
            parts.append(media)
        parts.append(format_seconds(self.elapsed))
        parts.append(f"{format_rate(self.rate)} msg/s")
        if self.flood_waits:
            parts.append(f"{self.flood_waits} flood wait{'s' if self.flood_waits > 1 else ''}")
        if self.error is not None:
            parts.append(f"error: {type(self.error).__name__}: {self.error}"[:200])
        elif self.failed:
            parts.append("error")
        else:
            parts.append("no errors")
        return f"{head}: " + " | ".join(parts)

    # -- internals
    def _note_media_start(self) -> None:
        if self._media_started is None:
            self._media_started = self._now()
            self._waited_at_media = self.waited

    def _close_pause(self) -> None:
        if self._pause_from is not None:
            self._paused_s += max(0.0, self._pause_to - self._pause_from)
            self._pause_from = None

    def _expire(self, now: float) -> None:
        for reason in [r for r, d in self._waits.items() if d <= now]:
            del self._waits[reason]

    def _refresh(self, force: bool = False) -> None:
        if self.closed:
            return
        now = self.clock()
        if not force and self._last_render is not None and now - self._last_render < self.min_interval:
            self._schedule_trailing(self.min_interval - (now - self._last_render))
            return
        self._last_render = now
        if self._trailing is not None:
            self._trailing.cancel()
            self._trailing = None
        self._render(final=False)
        if self._tick is None and self._pacer_blocked():
            self._schedule_tick()

    def _loop(self) -> asyncio.AbstractEventLoop | None:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return None

    def _schedule_trailing(self, delay: float) -> None:
        """A throttled redraw is not lost: it happens when the throttle allows (if a loop runs)."""
        if self._trailing is not None:
            return
        loop = self._loop()
        if loop is not None:
            self._trailing = loop.call_later(max(0.0, delay), self._on_trailing)

    def _on_trailing(self) -> None:
        self._trailing = None
        self._refresh(force=True)

    def _schedule_tick(self) -> None:
        if self._tick is not None:
            return
        loop = self._loop()
        if loop is None:
            return  # no loop to tick on: the countdown shows its start and disappears at its deadline
        left = self.wait_remaining
        if left <= 0:
            if self._pacer_blocked():  # the pacer holds requests back: keep its "blocked Ns" current
                self._tick = loop.call_later(1.0, self._on_tick)
            return
        # tick when the longest wait's remaining seconds cross a whole number: the label changes each tick
        step = left - math.ceil(left - 1.0 + 1e-9)
        self._tick = loop.call_later(step if step > 1e-6 else 1.0, self._on_tick)

    def _on_tick(self) -> None:
        self._tick = None
        if self.closed:
            return
        self._expire(self._now())
        if not self._waits:
            self._close_pause()
        self._refresh(force=True)
        self._schedule_tick()

    def _pacer_blocked(self) -> bool:
        return self.pacer is not None and any(
            float(info.get("blocked_for") or 0.0) > 0 for info in self.pacer_state().values()
        )

    def _cancel_timers(self) -> None:
        for handle in (self._tick, self._trailing):
            if handle is not None:
                handle.cancel()
        self._tick = self._trailing = None

    def _render(self, final: bool) -> None:
        """Show the state; ``final`` on close. The base class shows nothing."""

    def _emit(self, event: str, **extra: Any) -> None:
        """Send an event; only :class:`CallbackProgress` does."""


class NullProgress(Progress):
    """Silent: counts, shows nothing (``progress=False``)."""


class CallbackProgress(Progress):
    """Calls ``fn(event)`` for every event: ``{"event": "update"|"media_queued"|"media_done"|"total"|"stage"|
    "countdown"|"close", ...}``.

    The dict is :meth:`Progress.snapshot` plus ``"event"``; a ``countdown`` event also carries
    ``"seconds"`` and ``"reason"``, a ``media_done`` event ``"ok"``. Not throttled; errors from ``fn`` propagate.
    """

    def __init__(self, fn: Callable[[dict[str, Any]], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fn = fn

    def _emit(self, event: str, **extra: Any) -> None:
        self.fn({"event": event, **self.snapshot(), **extra})


class TextProgress(Progress):
    """A text bar on ``stream`` (stderr by default), at most one redraw per ``min_interval`` seconds.

    On a terminal (``tty``): one line redrawn with ``\\r``, 5 redraws/s at most, cut to the terminal's
    width so it never wraps. Otherwise (logs, CI): a full line at most every 10 s. Stage changes, countdown
    ticks and the final line always show.
    """

    def __init__(
        self,
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
        min_interval: float | None = None,
        width: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        real_tty = bool(isatty()) if isatty is not None else False
        if tty is None:
            tty = real_tty
        self.tty = tty
        if width is None and real_tty:
            import shutil

            width = shutil.get_terminal_size().columns - 1
        self.width = width
        self.min_interval = min_interval if min_interval is not None else (0.2 if tty else 10.0)
        self._drawn = 0
        super().__init__(**kwargs)

    def _render(self, final: bool) -> None:
        line = self.describe()
        if self.tty:
            if self.width and len(line) > self.width and not final:
                line = line[: max(1, self.width - 1)] + "…"
            pad = " " * max(0, self._drawn - len(line))
            self._drawn = len(line)
            self.stream.write("\r" + line + pad + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


class WidgetProgress(Progress):
    """A live mini-dashboard in a notebook, redrawn 5 times/s at most (countdown ticks always show).

    Row 1: the message bar (hidden while the total is unknown) and stage, counts, % done, msg/s, ETA.
    Row 2 (once a download is queued): the media bar, done / queued, failed. Row 3 (when there is one):
    the pacer's rate and learned limit per method, and the wait countdown on a label of its own. Labels
    never wrap. Widgets are built on construction (ipywidgets imported then) and displayed when ``display``
    is true (default: only inside a kernel). When the run ends, a plain text line (rows, media, seconds,
    rate, errors) is printed as an ordinary output, and the dashboard is removed from the output, so a
    saved notebook shows that line, not a widget whose model is gone.
    ``.widget`` is the box; ``.bar``, ``.label``, ``.media_bar``, ``.media_label``, ``.pacer_label`` and
    ``.wait_label`` its parts.
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
        w = ipywidgets
        nowrap = {"overflow": "hidden"}  # the labels' spans do not wrap; what does not fit is cut
        self.bar = w.IntProgress(value=0, min=0, max=1, description="", layout=w.Layout(width="260px"))
        self.label = w.HTML(value="", layout=w.Layout(**nowrap))
        self.media_bar = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="260px"))
        self.media_label = w.HTML(value="", layout=w.Layout(**nowrap))
        self.pacer_label = w.HTML(value="", layout=w.Layout(**nowrap))
        self.wait_label = w.HTML(value="", layout=w.Layout(**nowrap))
        self._media_row = w.HBox([self.media_bar, self.media_label])
        self._pace_row = w.HBox([self.pacer_label, self.wait_label])
        self.widget = w.VBox([w.HBox([self.bar, self.label]), self._media_row, self._pace_row])
        self._handle: Any = None
        self._render(final=False)
        if display is None:
            display = in_notebook()
        if display:
            from IPython.display import display as show

            # The widget view only, no text/plain: its fallback would be the stale starting state.
            bundle = {_WIDGET_MIME: self.widget._repr_mimebundle_()[_WIDGET_MIME]}
            self._handle = show(bundle, raw=True, display_id=True)

    @staticmethod
    def _html(text: str, style: str = "") -> str:
        import html

        return f'<span style="white-space:nowrap;{style}">{html.escape(text)}</span>' if text else ""

    def _render(self, final: bool) -> None:
        bar = self.bar
        if self.total is None:
            bar.layout.display = "none"
        else:
            bar.layout.display = None
            bar.max = max(1, self.total, self.messages)
            bar.value = min(self.messages, bar.max)
        waiting = bool(self._waits) and not final
        if self.failed:
            style = "danger"
        elif final:
            style = "success"
            if self.total is not None:
                bar.value = bar.max
        elif waiting:
            style = "warning"
        else:
            style = "info"
        bar.bar_style = style
        if self.media_total or self.media_failed:
            self._media_row.layout.display = None
            mb = self.media_bar
            mb.max = max(1, self.media_total)
            mb.value = min(self.media + self.media_failed, mb.max)
            mb.bar_style = "danger" if self.failed else ("warning" if self.media_failed else style)
            self.media_label.value = self._html(self._media_text())
        else:
            self._media_row.layout.display = "none"
        if final:
            self.label.value = self._html(self.final_line())
            self.pacer_label.value = self.wait_label.value = ""
        else:
            stage = self._stage_text()
            head = f"{stage}: " if stage else ""
            self.label.value = self._html(f"{head}{self._counts_text()} | {self._speed_text()}")
            pacer = self._pacer_text()
            self.pacer_label.value = self._html(f"pacer: {pacer}" if pacer else "", "color:#555;")
            self.wait_label.value = self._html(self._wait_text(), "margin-left:1em;color:#b35c00;")
        show_pace = bool(self.pacer_label.value or self.wait_label.value)
        self._pace_row.layout.display = None if show_pace else "none"
        if final and self._handle is not None:
            self._finish_output()

    def _finish_output(self) -> None:
        """Leave a plain line in the cell's output and take the live dashboard out of it."""
        print(self.final_line(), flush=True)
        self._handle.update({}, raw=True)  # the saved notebook keeps the line, not a dead widget
        self._handle = None


def make_progress(
    mode: ProgressMode | Progress = "auto",
    *,
    total: int | None = None,
    desc: str = "",
    stream: TextIO | None = None,
    clock: Callable[[], float] | None = None,
    pacer: PacerSource = None,
) -> Progress:
    """Build the progress reporter for a ``progress=`` argument.

    ``True``/``"auto"``: a widget dashboard in a notebook, else a text bar on stderr; ``"text"``/
    ``"widget"``: that one; ``False``/``None``: silent; a callable: called with an event dict (see
    :class:`CallbackProgress`); a :class:`Progress`: used as is. ``pacer``: whose state to show (see
    :meth:`Progress.set_pacer`). ``stream`` and ``clock`` are for the text bar and for tests.
    """
    if isinstance(mode, Progress):
        if pacer is not None:
            mode.set_pacer(pacer)
        return mode
    common: dict[str, Any] = {"total": total, "desc": desc, "clock": clock, "pacer": pacer}
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
