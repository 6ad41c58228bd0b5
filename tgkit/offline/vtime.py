"""Virtual time for tests: an event loop whose clock jumps to the next timer instead of sleeping.

``await asyncio.sleep(3600)`` on a :class:`VirtualTimeLoop` returns at once and ``loop.time()`` has
moved by 3600: flood waits, pacing and timeouts are tested in virtual time, not real sleeps (like
trio's ``MockClock(autojump_threshold=0)``). Virtual time only moves when the loop is idle: nothing
ready to run, no ready I/O, and (within a grace period) no executor work outstanding.

How: the loop's selector is wrapped. Where asyncio would block in ``select(timeout)`` until the next
timer, the wrapper polls for real (``select(0)``); if nothing is ready it advances the clock by
``timeout`` and returns no events, so the timer is due on the same loop iteration.

Limits (by design; the offline double has no real sockets):

* Real I/O is not waited for: a socket whose data arrives "later" in real time loses the race
  against any pending timer. Use in-process fakes.
* Threads: ``run_in_executor``/``asyncio.to_thread`` work is tracked. While some is outstanding, the
  loop waits for real up to ``thread_grace`` seconds (default 0.05) for it to finish before jumping;
  finished work wakes the loop at once, so quick work costs no extra time. Work slower than the grace
  is overtaken by virtual time (a ``wait_for`` around it may time out spuriously); raise the grace
  then. A larger grace costs real time on every jump while a thread is blocked on the loop itself.
  Threads started by other means (``threading.Thread``, ``executor.submit`` + ``wrap_future``) are not
  seen; their ``call_soon_threadsafe`` wakes the loop only if it arrives before a jump.
* ``time.time()`` (wall clock) stays real unless :func:`patch_wall_clock` is used; Telethon stamps flood
  waits with it, so tests of Telethon's own flood handling need the patch (:func:`run_virtual` applies
  it by default). ``time.monotonic()`` and ``datetime.now()`` are never patched.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar, TypeVarTuple

__all__ = ["VirtualTimeLoop", "patch_wall_clock", "run_virtual"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class _AutojumpSelector(selectors.BaseSelector):
    """Delegates to a real selector; turns a would-block ``select(timeout)`` into a clock jump."""

    def __init__(self, inner: selectors.BaseSelector, loop: VirtualTimeLoop) -> None:
        self._inner = inner
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = self._inner.select(0)
        if events or (timeout is not None and timeout <= 0):
            return events
        loop = self._loop
        if timeout is None or loop._shutdown_pending:
            # Nothing scheduled (only I/O or a thread can wake us), or the default executor is being
            # joined: block for real, as asyncio would.
            return self._inner.select(None)
        if loop._executor_pending and loop.thread_grace > 0:
            events = self._inner.select(loop.thread_grace)
            if events:
                return events
        loop.advance(timeout)
        return []

    # -- plain delegation
    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.get_key(fileobj)

    def get_map(self) -> Any:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time that auto-jumps to the next timer when idle.

    ``start`` is the initial ``loop.time()``; ``elapsed`` is how much virtual time has passed since;
    ``advance(seconds)`` moves the clock by hand. ``thread_grace``: see the module docs. Use it as a
    loop factory: ``asyncio.Runner(loop_factory=VirtualTimeLoop)``.
    """

    def __init__(self, *, start: float = 0.0, thread_grace: float = 0.05) -> None:
        self._virtual_now = float(start)
        self._virtual_start = float(start)
        self.thread_grace = thread_grace
        self._executor_pending = 0
        self._shutdown_pending = 0
        super().__init__(_AutojumpSelector(selectors.DefaultSelector(), self))

    def time(self) -> float:
        return self._virtual_now

    @property
    def elapsed(self) -> float:
        """Virtual seconds since the loop was created."""
        return self._virtual_now - self._virtual_start

    def advance(self, seconds: float) -> None:
        """Move the virtual clock forward (timers now due run on the next loop iteration)."""
        if seconds < 0:
            raise ValueError("virtual time cannot go backwards")
        self._virtual_now += seconds

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[*Ts], T], *args: *Ts
    ) -> asyncio.Future[T]:
        fut = super().run_in_executor(executor, func, *args)
        self._executor_pending += 1
        fut.add_done_callback(self._executor_done)
        return fut

    def _executor_done(self, _fut: asyncio.Future[Any]) -> None:
        self._executor_pending -= 1

    async def shutdown_default_executor(self, *args: Any, **kwargs: Any) -> None:
        # Joining executor threads happens in a helper thread, and on 3.12+ under a 300 s timeout that
        # a clock jump would fire at once: block for real while it runs.
        self._shutdown_pending += 1
        try:
            await super().shutdown_default_executor(*args, **kwargs)
        finally:
            self._shutdown_pending -= 1


@contextlib.contextmanager
def patch_wall_clock(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Make ``time.time()`` follow ``loop``'s clock: real time at entry plus virtual time elapsed since.

    Patches the ``time.time`` module attribute (so ``time.time()`` calls see it; a ``from time import
    time`` done earlier does not), process-wide and for all threads; restored on exit, even on error.
    """
    original = time.time
    wall_start = original()
    loop_start = loop.time()

    def virtual_time() -> float:
        return wall_start + (loop.time() - loop_start)

    time.time = virtual_time
    try:
        yield
    finally:
        time.time = original


def run_virtual(
    coro: Coroutine[Any, Any, T], *, patch_time: bool = True, thread_grace: float = 0.05
) -> tuple[T, float]:
    """Run ``coro`` on a fresh :class:`VirtualTimeLoop`; return ``(result, virtual seconds elapsed)``.

    Like :func:`asyncio.run` (leftover tasks cancelled, loop closed). With ``patch_time`` (default),
    ``time.time()`` follows the virtual clock meanwhile (:func:`patch_wall_clock`).
    """
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(thread_grace=thread_grace)) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, VirtualTimeLoop)
        with patch_wall_clock(loop) if patch_time else contextlib.nullcontext():
            result = runner.run(coro)
            elapsed = loop.elapsed
    return result, elapsed
