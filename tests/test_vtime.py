"""Virtual time: timers jump, ordering holds, executor work still lands, time.time() follows on request."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from tgkit.offline.vtime import VirtualTimeLoop, patch_wall_clock, run_virtual


def test_long_sleep_is_instant_and_advances_virtual_time() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(3600)
        return loop.time() - start

    real = time.perf_counter()
    slept, elapsed = run_virtual(main())
    assert time.perf_counter() - real < 1.0
    assert slept == 3600
    assert elapsed == 3600


def test_sleep_longer_than_asyncio_max_select_timeout() -> None:
    # asyncio caps one select() at 24 h; the clock must keep jumping until the timer is due.
    _, elapsed = run_virtual(asyncio.sleep(3 * 86400))
    assert elapsed == 3 * 86400


def test_wait_for_timeout_fires_in_virtual_time() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), timeout=30)
        return loop.time() - start

    waited, _ = run_virtual(main())
    assert waited == 30


def test_sleepers_wake_in_deadline_order_at_their_virtual_times() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        woke: list[tuple[str, float]] = []

        async def sleeper(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            woke.append((name, loop.time()))

        await asyncio.gather(
            sleeper("c", 300), sleeper("a1", 5), sleeper("b", 60), sleeper("a2", 5), sleeper("z", 0.25)
        )
        return woke

    woke, elapsed = run_virtual(main())
    assert woke == [("z", 0.25), ("a1", 5), ("a2", 5), ("b", 60), ("c", 300)]
    assert elapsed == 300


def test_executor_result_arrives() -> None:
    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        direct = await loop.run_in_executor(None, sum, [1, 2, 3])
        threaded, _ = await asyncio.gather(asyncio.to_thread(pow, 2, 10), asyncio.sleep(1000))
        return direct, threaded

    (direct, threaded), elapsed = run_virtual(main())
    assert (direct, threaded) == (6, 1024)
    assert elapsed == 1000


def test_clock_waits_for_executor_work_within_the_grace() -> None:
    # The worker takes real time; a virtual 60 s timeout must not overtake it while the grace allows.
    def slow() -> str:
        time.sleep(0.02)
        return "done"

    async def main() -> str:
        return await asyncio.wait_for(asyncio.to_thread(slow), timeout=60)

    result, elapsed = run_virtual(main(), thread_grace=5.0)
    assert result == "done"
    assert elapsed == 0


def test_without_grace_virtual_time_overtakes_blocked_thread() -> None:
    release = threading.Event()

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(release.wait, 10), timeout=60)
        release.set()  # let the worker finish so the executor shuts down cleanly

    _, elapsed = run_virtual(main(), thread_grace=0)
    assert elapsed == 60


def test_ready_io_is_handled_before_the_clock_jumps() -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        with a, b:
            a.sendall(b"ping")  # readable before the loop next polls
            got: asyncio.Future[bytes] = loop.create_future()
            loop.add_reader(b, lambda: got.set_result(b.recv(16)))
            try:
                return await asyncio.wait_for(got, timeout=5)
            finally:
                loop.remove_reader(b)

    data, elapsed = run_virtual(main())
    assert data == b"ping"
    assert elapsed == 0


def test_advance_by_hand_and_no_going_back() -> None:
    loop = VirtualTimeLoop(start=100.0)
    try:
        assert loop.time() == 100.0
        loop.advance(2.5)
        assert loop.time() == 102.5
        assert loop.elapsed == 2.5
        with pytest.raises(ValueError):
            loop.advance(-1)
    finally:
        loop.close()


def test_runner_loop_factory_and_call_later() -> None:
    fired: list[float] = []
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        loop = runner.get_loop()

        async def main() -> None:
            done: asyncio.Future[None] = loop.create_future()

            def fire() -> None:
                fired.append(loop.time())
                done.set_result(None)

            loop.call_later(7, fire)
            await done

        runner.run(main())
    assert fired == [7.0]
    assert loop.is_closed()


def test_wall_clock_follows_virtual_time_with_patch() -> None:
    original = time.time

    async def main() -> float:
        before = time.time()
        await asyncio.sleep(420)
        return time.time() - before

    wall_delta, _ = run_virtual(main())
    assert wall_delta == pytest.approx(420, abs=1e-6)
    assert time.time is original


def test_wall_clock_untouched_without_patch() -> None:
    async def main() -> float:
        before = time.time()
        await asyncio.sleep(420)
        return time.time() - before

    wall_delta, elapsed = run_virtual(main(), patch_time=False)
    assert elapsed == 420
    assert wall_delta < 5


def test_patch_wall_clock_restored_on_error() -> None:
    original = time.time
    loop = VirtualTimeLoop()
    try:
        with pytest.raises(RuntimeError), patch_wall_clock(loop):
            start = time.time()
            loop.advance(90)
            assert time.time() - start == pytest.approx(90, abs=1e-6)
            raise RuntimeError("boom")
    finally:
        loop.close()
    assert time.time is original


def test_flood_wait_due_time_pattern() -> None:
    # Telethon's pattern: due = time.time() + seconds, then sleep on the loop, then compare with time.time().
    async def main() -> float:
        due = time.time() + 42
        await asyncio.sleep(42)
        return due - time.time()

    remaining, elapsed = run_virtual(main())
    assert remaining == pytest.approx(0, abs=1e-6)
    assert elapsed == 42
