"""Pacing: find each account's limit per method and keep just under it; the flood-wait policy.

Telegram publishes no limits and accounts differ a lot, so a fixed guess is either too slow or too fast.
The adaptive :class:`Pacer` models the server as a token bucket per (account, method) -- ``capacity``
requests at once, then ``refill`` requests per second -- and learns both from the FLOOD_WAITs it gets
(docs/PACING.md has the algorithm, the prior and a plot):

* **explore** (nothing learned): start from the documented prior (:data:`PRIORS`), double the rate
  every third of the prior's refill time until the first FLOOD_WAIT;
* **probe** (a lower bound learned): a window that starts with a full server bucket and ends with a
  FLOOD_WAIT of X seconds after T seconds and n requests proves ``refill > (n - 1) / (T + X)`` (the
  server gave at most ``capacity + refill * T`` tokens and needed X seconds to refill ``capacity``).
  Send 10% above the best bound, without a burst, so the next window is long and the bound tight;
* **steady** (the bound came from a long window): send at the bound, with a burst of 90% of the
  learned capacity after each pause.  A FLOOD_WAIT here means the account's limit dropped: forget,
  go back to probing.

A flooded method is never sent again before its wait ends; a wait blocks only its own method (downloads
go on while history waits; a resolveUsername wait never blocks anything else).  One pacer per client is
shared by everything the client does: waiters of a method queue in FIFO order and only the head of the
queue sleeps on a timer.  ``Pacer.for_account(name)`` persists what was learned next to the peer cache
(``cache_dir()/pacing-<account>.msgpack``, 0600, no secrets), so the next run starts at the learned rate.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import math
import os
import re
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from ._files import atomic_write_bytes
from .config import cache_dir, setting
from .errors import ConfigError, FloodWaitTooLong

__all__ = [
    "DEFAULT_LIMITS",
    "PRIORS",
    "Pacer",
    "PacingStateWarning",
    "Prior",
    "RateLimit",
]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``requests`` per ``per`` seconds (the fixed sliding-window gate)."""

    requests: int
    per: float


@dataclass(frozen=True, slots=True)
class Prior:
    """Where the adaptive pacer starts for a method: a bucket of ``capacity`` refilled at ``rate``/s.
    ``explore=False``: never probe upward (a wait there is too expensive to learn from)."""

    capacity: float
    rate: float
    explore: bool = True


# Today's fixed gate (the baseline of benchmarks/bench_pacing.py): about 30 history requests per 30 s.
DEFAULT_LIMITS: dict[str, RateLimit] = {
    "messages.GetHistory": RateLimit(30, 30.0),
    "channels.GetMessages": RateLimit(30, 30.0),
    "contacts.ResolveUsername": RateLimit(20, 60.0),
    "upload.GetFile": RateLimit(120, 30.0),
}

# The prior: what is publicly known (Telethon's messages.py and PR #565, tdl, gotd, tdesktop #8533).
PRIORS: dict[str, Prior] = {
    # "about 30 requests per ~30 s, then FLOOD_WAIT_20..30"
    "messages.GetHistory": Prior(30, 1.0),
    # get-by-ids costs per message id: ~300-400 ids per 30 s
    "channels.GetMessages": Prior(100, 10.0),
    "messages.GetMessages": Prior(100, 10.0),
    # waits of 12,000-56,000 s reported and a daily budget: a handful, one a minute, never probed
    "contacts.ResolveUsername": Prior(3, 1 / 60, explore=False),
    # per data centre, generous; chunks of 512 KiB
    "upload.GetFile": Prior(40, 10.0),
}
DEFAULT_FLOOD_CEILING = 900.0  # 15 minutes

EXPLORE_DOUBLING = 1 / 30  # explore: the rate doubles every 1/30 of the prior's refill time (1 s, history)
PROBE = 0.25  # no wait came when expected: raise the probe by this fraction
PROBE_TOKENS = 100  # a probe window should see about this many refilled tokens
TIGHT = 0.04  # the refill is known when its upper bound is within 4% of its lower bound
MAX_WINDOWS = 8
STALE_AFTER_S = 7 * 86_400.0  # learned state older than this is probed again (limits change)

STATE_FORMAT = "tgkit.pacing"
STATE_VERSION = 1
MAX_STATE_BYTES = 1024 * 1024
_MODES = ("adaptive", "fixed", "off")


class PacingStateWarning(UserWarning):
    """The pacer's state file was unreadable; the pacer started from the prior."""


# --------------------------------------------------------------------------------------------------
# Lanes: one per method


class _Lane:
    """Per-method gate.  ``reserve`` answers how long to wait (0: go, the cost is taken)."""

    def __init__(self) -> None:
        self.blocked_until = -math.inf
        self.sent = 0
        self.lock: asyncio.Lock | None = None
        self._lock_loop: Any = None

    def get_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self.lock is None or self._lock_loop is not loop:
            self.lock, self._lock_loop = asyncio.Lock(), loop
        return self.lock

    def reserve(self, now: float, cost: float) -> float:
        return 0.0

    def on_flood(self, now: float, seconds: float) -> None:
        self.blocked_until = max(self.blocked_until, now + seconds)

    def rate(self, now: float) -> float | None:
        return None

    def limit(self) -> float | None:
        return None


class _WindowLane(_Lane):
    """The fixed sliding-window gate: at most ``requests`` per ``per`` seconds."""

    def __init__(self, limit: RateLimit) -> None:
        super().__init__()
        self.spec = limit
        self.stamps: collections.deque[float] = collections.deque()

    def reserve(self, now: float, cost: float) -> float:
        while self.stamps and self.stamps[0] <= now - self.spec.per:
            self.stamps.popleft()
        if len(self.stamps) >= self.spec.requests:
            return self.stamps[0] + self.spec.per - now
        self.stamps.append(now)
        return 0.0

    def rate(self, now: float) -> float | None:
        return self.spec.requests / self.spec.per

    def limit(self) -> float | None:
        return self.spec.requests / self.spec.per


@dataclass(slots=True)
class _Window:
    """From a full server bucket to a FLOOD_WAIT: ``used`` tokens granted in ``span`` seconds, then a
    ``wait``; ``pace`` is the slowest average pace kept since the start (see ``_AdaptiveLane._fit``)."""

    used: float
    span: float
    wait: float
    pace: float = math.inf
    probe: bool = False

    def bound(self) -> float:
        """A lower bound of the refill rate: the server granted at most ``capacity + refill * span``
        and needed ``wait`` seconds to refill ``capacity`` (less one request's cost)."""
        return max(0.0, self.used - 1.0) / (self.span + self.wait)


class _AdaptiveLane(_Lane):
    """Token-bucket model of the server for one method; see the module docs for the phases."""

    def __init__(self, prior: Prior) -> None:
        super().__init__()
        self.prior = prior
        self.windows: list[_Window] = []
        self.cap: float | None = None  # learned capacity (a lower bound once exact)
        self.refill: float | None = None  # learned refill rate (a lower bound)
        self.refill_max: float | None = None  # an upper bound, once two windows pin it
        self.exact = False
        # the mirror of the server's bucket, and the pacing rate
        self.bucket = prior.capacity
        self.tokens = prior.capacity
        self.pace = prior.rate
        self.stamp: float | None = None
        # the current window (from a full server bucket)
        self.w_start: float | None = None
        self.w_used = 0.0
        self.w_pace = math.inf
        self.last_cost = 1.0
        self.next_ramp = math.inf
        self.ramp_every = math.inf
        self.ramp_factor = 1.0

    # -- sending

    def _start(self, now: float) -> None:
        self.stamp = now
        self.w_start = now
        self.w_used = 0.0
        self.w_pace = math.inf
        self._plan(now)

    def _plan(self, start: float) -> None:
        """Rate, burst and probe schedule for a window that starts (server bucket full) at ``start``."""
        if self.refill is None:  # explore: the prior's burst, then its rate doubling quickly
            self.bucket = self.prior.capacity
            self.pace = self.prior.rate
            if self.prior.explore:
                self.ramp_every = max(0.5, self.prior.capacity / self.prior.rate * EXPLORE_DOUBLING)
                self.ramp_factor = 2.0
            else:
                self.ramp_every = math.inf
        elif self.exact or not self.prior.explore:  # steady: the learned bucket, from below
            self.bucket = max(1.0, (self.cap or 1.0) - 1.0)
            self.pace = self.refill
            self.ramp_every = math.inf
        else:  # probe: half a burst, then above the bound; raised if no wait comes when expected
            half = max(1.0, (self.cap or 1.0) / 2)
            # the other half drains in about PROBE_TOKENS / refill seconds: long enough to pin the refill
            # within 2 / PROBE_TOKENS, short enough to end within the run
            # successive probes drain twice as slowly: windows of different lengths pin the refill
            probes = sum(1 for w in self.windows if w.probe)
            over = half / PROBE_TOKENS / 2 ** max(0, probes - 1)
            self.bucket = half
            self.pace = self.refill * (1 + over)
            self.ramp_every = 1.5 * half / (over * self.refill)
            self.ramp_factor = 1 + PROBE
        self.tokens = self.bucket
        self.next_ramp = start + self.ramp_every

    def reserve(self, now: float, cost: float) -> float:
        if self.stamp is None:
            self._start(now)
        assert self.stamp is not None and self.w_start is not None
        while now >= self.next_ramp:  # no wait came: probe upward
            self.pace *= self.ramp_factor
            self.next_ramp += self.ramp_every
        if now > self.stamp:
            self.tokens = min(self.bucket, self.tokens + (now - self.stamp) * self.pace)
            self.stamp = now
        need = min(cost, self.bucket)
        if self.tokens + 1e-9 >= need:
            self.tokens -= cost
            elapsed = now - self.w_start
            if elapsed > 0:
                self.w_pace = min(self.w_pace, self.w_used / elapsed)
            self.w_used += cost
            self.last_cost = cost
            return 0.0
        return (need - self.tokens) / self.pace

    # -- learning

    def on_flood(self, now: float, seconds: float) -> None:
        if now < self.blocked_until:  # another request of the same flood (several were in flight)
            self.blocked_until = max(self.blocked_until, now + seconds)
            return
        if self.w_start is not None:
            if self.exact:  # the limit dropped (or another client shares the account): start over
                self.windows.clear()
                self.exact = False
                self.refill_max = None
            used = max(0.0, self.w_used - self.last_cost)  # the flooded request got nothing
            elapsed = max(0.0, now - self.w_start)
            pace = min(self.w_pace, used / elapsed) if elapsed > 0 else self.w_pace
            probe = self.refill is not None and not self.exact
            self.windows.append(_Window(used, elapsed, float(seconds), pace, probe))
            del self.windows[:-MAX_WINDOWS]
            self._fit()
        self.blocked_until = now + seconds
        # the server's bucket is full again when the wait ends: the next window starts there
        self._start(self.blocked_until)

    def _fit(self) -> None:
        """Bounds of the server's refill rate and capacity from the windows.

        Each window proves ``refill > (used - 1) / (span + wait)``.  A window whose pace never fell
        below the refill rate kept the server's bucket from overflowing, so ``used = capacity + refill *
        span - e`` with ``0 <= e < 1``; two such windows pin ``refill`` within ``2 / (span_j - span_i)``.
        """
        ws = self.windows
        lo = max(w.bound() for w in ws)
        hi = math.inf
        for _ in range(2):  # the pair bounds hold for windows that were not overflowing at the result
            for i, a in enumerate(ws):
                for b in ws[i + 1 :]:
                    first, second = (a, b) if a.span < b.span else (b, a)
                    gap = second.span - first.span
                    if gap <= 0 or min(first.pace, second.pace) < lo:
                        continue
                    dn = second.used - first.used
                    lo = max(lo, (dn - 1) / gap)
                    hi = min(hi, (dn + 1) / gap)
        if lo <= 0:  # nothing got through: a tiny bucket or a rate far below the prior
            lo = min(self.refill or self.prior.rate, 1.0 / ws[-1].wait)
        self.refill = lo
        self.refill_max = hi if math.isfinite(hi) and hi >= lo else None
        if self.refill_max is not None:
            # used <= capacity + refill * span in every window: a lower bound of the capacity
            self.cap = max(1.0, max(w.used - self.refill_max * w.span for w in ws))
            self.exact = self.refill_max <= self.refill * (1 + TIGHT)
        else:
            self.cap = max(1.0, min(min(w.used, lo * w.wait) for w in ws))
            self.exact = False

    # -- display

    def rate(self, now: float) -> float | None:
        return self.pace

    def limit(self) -> float | None:
        return self.refill

    # -- persistence

    def state(self, now: float) -> dict[str, Any]:
        tokens = 0.0
        if self.stamp is not None and now >= self.stamp:
            tokens = min(self.bucket, self.tokens + (now - self.stamp) * self.pace)
        return {
            "refill": self.refill,
            "refill_max": self.refill_max,
            "cap": self.cap,
            "exact": self.exact,
            "windows": [[w.used, w.span, w.wait, min(w.pace, 1e9), float(w.probe)] for w in self.windows],
            "tokens": max(0.0, tokens),
            "blocked_for": max(0.0, self.blocked_until - now),
        }

    def restore(self, d: dict[str, Any], now: float, paused: float | None) -> None:
        """Load a saved state; ``paused``: seconds since it was saved (None: unknown)."""
        self.windows = [_Window(u, s, x, p, bool(b)) for u, s, x, p, b in d["windows"]][-MAX_WINDOWS:]
        self.refill = d["refill"]
        self.refill_max = d["refill_max"]
        self.cap = d["cap"]
        self.exact = bool(d["exact"]) and self.refill is not None
        if paused is None or paused > STALE_AFTER_S:
            self.exact = False  # limits change: probe again from the learned bound
        self._start(now)
        if paused is None:  # a clock that went backwards: assume nothing refilled
            self.tokens = 0.0
            return
        self.tokens = min(self.bucket, d["tokens"] + paused * self.pace)
        blocked = d["blocked_for"] - paused
        if blocked > 0:
            self.blocked_until = now + blocked
            self._start(self.blocked_until)


# --------------------------------------------------------------------------------------------------


class Pacer:
    """Per-method gates and flood-wait bookkeeping for one account (shared by everything its client does).

    ``Pacer()`` is the adaptive pacer starting from :data:`PRIORS`; ``Pacer(limits)`` or
    ``Pacer.fixed(limits)`` the fixed sliding-window gate of :class:`RateLimit` per method;
    ``Pacer.unlimited()`` no proactive pacing (flood waits are still honoured);
    ``Pacer.for_account(name)`` the adaptive pacer with state persisted per account.
    """

    def __init__(
        self,
        limits: dict[str, RateLimit] | None = None,
        *,
        flood_ceiling: float | None = None,
        clock: Callable[[], float] | None = None,
        priors: dict[str, Prior] | None = None,
        state_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.flood_ceiling = float(setting("flood_ceiling", flood_ceiling, DEFAULT_FLOOD_CEILING, float))
        self.adaptive = limits is None
        self.limits = dict(limits) if limits is not None else {}
        self.priors = dict(PRIORS if priors is None else priors)
        self.state_path = Path(state_path) if state_path is not None else None
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lanes: dict[str, _Lane] = {}
        self._saved: dict[str, Any] = {}  # loaded state, applied when a method's lane is first used
        self._saved_at: float | None = None
        self.waited_s = 0.0  # proactive pacing sleeps
        self.flood_waits = 0
        self.flood_wait_s = 0.0
        # with record_history: (t, method, "send"/"flood", rate, limit) per event, for plots
        self.history: list[tuple[float, str, str, float | None, float | None]] = []
        self.record_history = False
        if self.state_path is not None:
            self._load()

    def __repr__(self) -> str:
        kind = "adaptive" if self.adaptive else ("fixed" if self.limits else "unlimited")
        return f"<Pacer {kind}: {self.flood_waits} flood waits, {self.flood_wait_s:.0f}s>"

    # -- factories

    @classmethod
    def unlimited(cls, *, flood_ceiling: float | None = None) -> Pacer:
        """No proactive pacing; flood waits are slept off (or raise above the ceiling)."""
        return cls({}, flood_ceiling=flood_ceiling)

    @classmethod
    def fixed(
        cls, limits: dict[str, RateLimit] | None = None, *, flood_ceiling: float | None = None
    ) -> Pacer:
        """The fixed sliding-window gate (default: :data:`DEFAULT_LIMITS`, about 30 history per 30 s)."""
        return cls(dict(DEFAULT_LIMITS if limits is None else limits), flood_ceiling=flood_ceiling)

    @classmethod
    def default(cls, *, mode: str | None = None, flood_ceiling: float | None = None) -> Pacer:
        """The pacer ``TGKIT_PACING`` asks for: ``adaptive`` (default, nothing persisted), ``fixed``, ``off``."""
        mode = _mode(mode)
        if mode == "off":
            return cls.unlimited(flood_ceiling=flood_ceiling)
        if mode == "fixed":
            return cls.fixed(flood_ceiling=flood_ceiling)
        return cls(flood_ceiling=flood_ceiling)

    @classmethod
    def for_client(cls, client: Any = None, *, flood_ceiling: float | None = None) -> Pacer:
        """Deprecated alias of :meth:`default` (the client is not looked at)."""
        return cls.default(flood_ceiling=flood_ceiling)

    @classmethod
    def for_account(
        cls,
        account: str,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        mode: str | None = None,
        flood_ceiling: float | None = None,
    ) -> Pacer:
        """The adaptive pacer of ``account`` with its learned state, kept in
        ``cache_dir(state_dir)/pacing-<account>.msgpack`` (``save()`` writes it)."""
        mode = _mode(mode)
        if mode != "adaptive":
            return cls.default(mode=mode, flood_ceiling=flood_ceiling)
        return cls(flood_ceiling=flood_ceiling, state_path=state_file(account, state_dir))

    # -- the gate

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            if self._loop is not None and not self._loop.is_closed():
                return self._loop.time()
            return time.monotonic()
        return self._loop.time()

    def _lane(self, name: str) -> _Lane:
        lane = self._lanes.get(name)
        if lane is None:
            if not self.adaptive:
                spec = self.limits.get(name)
                lane = _WindowLane(spec) if spec is not None else _Lane()
            elif name in self.priors:
                adaptive = _AdaptiveLane(self.priors[name])
                saved = self._saved.pop(name, None)
                if saved is not None:
                    now = self._now()
                    paused = None if self._saved_at is None else time.time() - self._saved_at
                    adaptive.restore(saved, now, paused if paused is None or paused >= 0 else None)
                lane = adaptive
            else:
                lane = _Lane()  # a method with no prior: unpaced until it floods (then blocked)
            self._lanes[name] = lane
        return lane

    async def acquire(self, name: str, cost: int = 1) -> float:
        """Wait until a request of type ``name`` (costing ``cost`` tokens) may go out; returns the
        seconds waited.  Waiters of one method are served in order; only the first sleeps."""
        lane = self._lane(name)
        waited = 0.0
        start = self._now()
        async with lane.get_lock():
            while True:
                now = self._now()
                delay = lane.blocked_until - now
                if delay <= 0:
                    delay = lane.reserve(now, float(cost))
                if delay <= 0:
                    break
                await asyncio.sleep(delay)
            waited = self._now() - start
            lane.sent += 1
            if self.record_history:
                self.history.append((self._now(), name, "send", lane.rate(now), lane.limit()))
        self.waited_s += waited
        return waited

    async def flood_wait(
        self,
        seconds: float,
        name: str,
        *,
        on_wait: Callable[[float, str], Any] | None = None,
        peer: Any = None,
    ) -> None:
        """Sleep off a FLOOD_WAIT for ``name`` (and learn from it), or raise FloodWaitTooLong above the
        ceiling.  Only ``name`` is blocked meanwhile."""
        now = self._now()
        lane = self._lane(name)
        lane.on_flood(now, float(seconds))
        if self.record_history:
            self.history.append((now, name, "flood", lane.rate(now), lane.limit()))
        if seconds > self.flood_ceiling:
            raise FloodWaitTooLong(
                f"Telegram asked to wait {int(seconds)}s on {name}, above the ceiling of "
                f"{int(self.flood_ceiling)}s (TGKIT_FLOOD_CEILING); rerun in {_human(seconds)} to resume",
                seconds=int(seconds),
                peer=peer,
            )
        self.flood_waits += 1
        self.flood_wait_s += seconds
        if on_wait is not None:
            on_wait(seconds, name)
        await asyncio.sleep(max(0.0, lane.blocked_until - self._now()))

    # -- display

    def snapshot(self) -> dict[str, dict[str, float | None]]:
        """Per method: ``rate`` (req/s paced now, None: unpaced), ``limit`` (learned req/s, None: not
        yet), ``blocked_for`` (seconds left of a flood wait)."""
        now = self._now()
        out: dict[str, dict[str, float | None]] = {}
        for name, lane in sorted(self._lanes.items()):
            out[name] = {
                "rate": lane.rate(now),
                "limit": lane.limit(),
                "blocked_for": max(0.0, lane.blocked_until - now),
            }
        return out

    # -- persistence

    def state(self) -> dict[str, Any]:
        """What this pacer learned (msgpack-able, secret-free): per method, the learned bucket."""
        now = self._now()
        methods = dict(self._saved)  # loaded but not used this run: kept as they were
        for name, lane in self._lanes.items():
            if isinstance(lane, _AdaptiveLane) and lane.refill is not None:
                methods[name] = lane.state(now)
        return {"saved_at": time.time(), "methods": methods}

    def save(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Write the learned state (atomically, 0600).  Returns the path, or None without one."""
        target = Path(path) if path is not None else self.state_path
        if target is None:
            return None
        body = msgpack.packb(self.state(), use_bin_type=True)
        header = msgpack.packb([STATE_FORMAT, STATE_VERSION, zlib.crc32(body)], use_bin_type=True)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return atomic_write_bytes(target, header + body)

    def _load(self) -> None:
        assert self.state_path is not None
        try:
            with open(self.state_path, "rb") as fh:
                data = fh.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            _warn(self.state_path, str(exc))
            return
        try:
            self._saved_at, self._saved = _parse_state(data)
        except Exception as exc:  # hostile or damaged input: any parser failure means "start from prior"
            _warn(self.state_path, f"{type(exc).__name__}: {exc}"[:200])
            self._saved_at, self._saved = None, {}


def state_file(account: str, state_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir(state_dir)/pacing-<account>.msgpack`` (odd characters replaced, plus a short hash)."""
    if not account:
        raise ConfigError("the pacer's account name must not be empty")
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", account)[:64]
    if slug != account:
        slug += "-" + hashlib.sha256(account.encode()).hexdigest()[:10]
    return cache_dir(state_dir) / f"pacing-{slug}.msgpack"


def _mode(mode: str | None) -> str:
    value = str(setting("pacing", mode, "adaptive")).strip().lower()
    if value not in _MODES:
        raise ConfigError(f"TGKIT_PACING={value!r}: use one of {', '.join(_MODES)}")
    return value


def _human(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def _warn(path: Path, why: str) -> None:
    warnings.warn(
        f"pacing state {path} is unreadable ({why}); starting from the prior",
        PacingStateWarning,
        stacklevel=4,
    )


def _num(x: Any, *, allow_none: bool = False) -> float | None:
    if x is None and allow_none:
        return None
    if type(x) not in (int, float) or not math.isfinite(x) or x < 0:
        raise ValueError(f"not a non-negative number: {x!r}")
    return float(x)


def _parse_state(data: bytes) -> tuple[float, dict[str, Any]]:
    if len(data) > MAX_STATE_BYTES:
        raise ValueError("file too large")
    u = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=max(len(data), 1))
    u.feed(data)
    header = u.unpack()
    if not (isinstance(header, list) and len(header) == 3 and header[0] == STATE_FORMAT):
        raise ValueError("not a tgkit pacing state")
    if header[1] != STATE_VERSION:
        raise ValueError(f"format version {header[1]!r}, this tgkit reads {STATE_VERSION}")
    body_bytes = data[u.tell() :]
    if header[2] != zlib.crc32(body_bytes):
        raise ValueError("checksum mismatch (a torn or damaged file)")
    body = msgpack.unpackb(body_bytes, raw=False, strict_map_key=True)
    saved_at = _num(body["saved_at"])
    methods: dict[str, Any] = {}
    for name, d in body["methods"].items():
        if not isinstance(name, str) or len(name) > 128:
            raise ValueError("bad method name")
        windows = d["windows"]
        if not isinstance(windows, list) or len(windows) > 64:
            raise ValueError("bad windows")
        methods[name] = {
            "refill": _num(d["refill"], allow_none=True),
            "refill_max": _num(d["refill_max"], allow_none=True),
            "cap": _num(d["cap"], allow_none=True),
            "exact": d["exact"] is True,
            "windows": [[_num(v) for v in w] for w in windows if isinstance(w, list) and len(w) == 5],
            "tokens": _num(d["tokens"]),
            "blocked_for": _num(d["blocked_for"]),
        }
    assert saved_at is not None
    return saved_at, methods
