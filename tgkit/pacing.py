"""Proactive pacing and the flood-wait policy.

``Pacer.acquire(name)`` keeps each request type under a sliding-window rate (defaults from what
Telegram tolerates: about 30 history requests per 30 s), so a normal export never meets FLOOD_WAIT.
When Telegram asks for a wait anyway, ``Pacer.flood_wait`` sleeps it off (with a countdown on the
progress bar) if it is under the ceiling, or raises :class:`FloodWaitTooLong`.  A wait blocks only its
own request type: downloads keep going while history requests wait.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import setting
from .errors import FloodWaitTooLong

__all__ = ["DEFAULT_LIMITS", "Pacer", "RateLimit"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``requests`` per ``per`` seconds."""

    requests: int
    per: float


DEFAULT_LIMITS: dict[str, RateLimit] = {
    "messages.GetHistory": RateLimit(30, 30.0),
    "channels.GetMessages": RateLimit(30, 30.0),
    "contacts.ResolveUsername": RateLimit(20, 60.0),
    "upload.GetFile": RateLimit(120, 30.0),
}
DEFAULT_FLOOD_CEILING = 900.0  # 15 minutes


class Pacer:
    """Per-request-type sliding-window gate plus flood-wait bookkeeping for one account."""

    def __init__(
        self,
        limits: dict[str, RateLimit] | None = None,
        *,
        flood_ceiling: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.limits = dict(DEFAULT_LIMITS if limits is None else limits)
        self.flood_ceiling = float(setting("flood_ceiling", flood_ceiling, DEFAULT_FLOOD_CEILING, float))
        self._clock = clock
        self._sent: dict[str, collections.deque[float]] = {}
        self._blocked_until: dict[str, float] = {}
        self.waited_s = 0.0  # proactive pacing sleeps
        self.flood_waits = 0
        self.flood_wait_s = 0.0

    @classmethod
    def unlimited(cls, *, flood_ceiling: float | None = None) -> Pacer:
        return cls({}, flood_ceiling=flood_ceiling)

    @classmethod
    def for_client(cls, client: Any, *, flood_ceiling: float | None = None) -> Pacer:
        """Telegram's defaults for a real account.  The offline double enforces no rate of its own
        (its fault plan decides when flood waits happen), so it gets no proactive pacing."""
        if getattr(client, "offline", None) is not None:
            return cls.unlimited(flood_ceiling=flood_ceiling)
        return cls(flood_ceiling=flood_ceiling)

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def acquire(self, name: str) -> float:
        """Wait until a request of type ``name`` may go out; returns the seconds waited."""
        waited = 0.0
        while True:
            now = self._now()
            blocked = self._blocked_until.get(name, 0.0)
            delay = blocked - now
            limit = self.limits.get(name)
            if limit is not None:
                sent = self._sent.setdefault(name, collections.deque())
                while sent and sent[0] <= now - limit.per:
                    sent.popleft()
                if len(sent) >= limit.requests:
                    delay = max(delay, sent[0] + limit.per - now)
            if delay <= 0:
                if limit is not None:
                    self._sent[name].append(now)
                self.waited_s += waited
                return waited
            await asyncio.sleep(delay)
            waited += delay

    async def flood_wait(
        self,
        seconds: float,
        name: str,
        *,
        on_wait: Callable[[float, str], Any] | None = None,
        peer: Any = None,
    ) -> None:
        """Sleep off a FLOOD_WAIT for ``name``, or raise FloodWaitTooLong above the ceiling."""
        if seconds > self.flood_ceiling:
            raise FloodWaitTooLong(
                f"Telegram asked to wait {int(seconds)}s on {name}, above the ceiling of "
                f"{int(self.flood_ceiling)}s (TGKIT_FLOOD_CEILING); rerun later to resume",
                seconds=int(seconds),
                peer=peer,
            )
        self.flood_waits += 1
        self.flood_wait_s += seconds
        until = self._now() + seconds
        self._blocked_until[name] = max(self._blocked_until.get(name, 0.0), until)
        if on_wait is not None:
            on_wait(seconds, name)
        await asyncio.sleep(seconds)
