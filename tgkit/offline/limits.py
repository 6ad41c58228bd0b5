"""A limiter for the offline double: FLOOD_WAITs that come from behaviour, as on Telegram.

Telegram publishes no limits; what is known (Telethon's messages.py comments and PR #565,
telethon-floodgate, tdl, gotd's floodwait middleware, tdesktop issue #8533) is that they are per account
and per method, that accounts differ a lot, that calling again while flooded makes the wait grow, that
contacts.resolveUsername escalates to hours and has a daily budget, that upload.getFile limits are per
data centre, that get-by-ids costs per message and that takeout sessions get higher limits.

This module models that with token buckets.  A profile is plain JSON::

    {"name": "strict",
     "methods": {"messages.GetHistory": {"capacity": 30, "refill_per_s": 1.0, "escalation": 4.0},
                 "contacts.ResolveUsername": {"capacity": 5, "refill_per_s": 0.05, "escalation": 10.0,
                                              "daily": 200},
                 "upload.GetFile": {"capacity": 40, "refill_per_s": 20.0}},
     "takeout": {"messages.GetHistory": {"capacity": 100, "refill_per_s": 4.0}}}

Methods absent from a profile are unlimited.  One :class:`Limiter` belongs to one server (one account).
A request that finds its bucket short of its cost is answered ``FLOOD_WAIT_X`` where X is the time until
the bucket is full again (rounded up, plus a little seeded jitter); a request sent while the method is
still flooded is answered with the last wait times ``escalation`` (and the flood starts over); the
escalation level falls back to zero after ``quiet_s`` seconds without a flood.  ``daily`` caps the
requests per (virtual) day; past it the wait lasts until the day turns.  Time is the running event
loop's clock, so a :class:`~tgkit.offline.vtime.VirtualTimeLoop` makes hours of limits cost nothing.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PER_DC_METHODS",
    "PER_ID_METHODS",
    "LimitProfile",
    "Limiter",
    "MethodLimit",
    "as_limiter",
    "load_profile",
    "no_limits",
    "random_profile",
]

# Requests whose cost is the number of message ids they ask for (~300-400 ids per 30 s reported).
PER_ID_METHODS = frozenset({"channels.GetMessages", "messages.GetMessages"})
# Requests limited per data centre (one bucket per DC the request was sent to).
PER_DC_METHODS = frozenset({"upload.GetFile"})
_DAY = 86_400.0


@dataclass(slots=True)
class MethodLimit:
    """One token bucket: ``capacity`` tokens, refilled at ``refill_per_s``; see the module docs."""

    capacity: float
    refill_per_s: float
    escalation: float = 2.0
    daily: int | None = None
    quiet_s: float = 600.0  # no flood for this long: the escalation level returns to zero
    jitter: float = 0.1  # a wait is stretched by up to this fraction (seeded), then rounded up

    def __post_init__(self) -> None:
        if not (self.capacity >= 1 and math.isfinite(self.capacity)):
            raise ValueError(f"capacity must be >= 1, not {self.capacity!r}")
        if not (self.refill_per_s > 0 and math.isfinite(self.refill_per_s)):
            raise ValueError(f"refill_per_s must be > 0, not {self.refill_per_s!r}")
        if self.escalation < 1:
            raise ValueError(f"escalation must be >= 1, not {self.escalation!r}")
        if self.daily is not None and self.daily < 1:
            raise ValueError(f"daily must be >= 1, not {self.daily!r}")
        if self.jitter < 0 or self.quiet_s < 0:
            raise ValueError("jitter and quiet_s must be >= 0")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MethodLimit:
        unknown = set(d) - {"capacity", "refill_per_s", "escalation", "daily", "quiet_s", "jitter"}
        if unknown:
            raise ValueError(f"unknown limit keys: {sorted(unknown)}")
        return cls(
            capacity=float(d["capacity"]),
            refill_per_s=float(d["refill_per_s"]),
            escalation=float(d.get("escalation", 2.0)),
            daily=None if d.get("daily") is None else int(d["daily"]),
            quiet_s=float(d.get("quiet_s", 600.0)),
            jitter=float(d.get("jitter", 0.1)),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "capacity": self.capacity,
            "refill_per_s": self.refill_per_s,
            "escalation": self.escalation,
        }
        if self.daily is not None:
            out["daily"] = self.daily
        if self.quiet_s != 600.0:
            out["quiet_s"] = self.quiet_s
        if self.jitter != 0.1:
            out["jitter"] = self.jitter
        return out


@dataclass(slots=True)
class LimitProfile:
    """An account's limits: per method, and per method inside a takeout session."""

    name: str = "unlimited"
    methods: dict[str, MethodLimit] = field(default_factory=dict)
    takeout: dict[str, MethodLimit] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LimitProfile:
        if not isinstance(d, Mapping):
            raise ValueError("a limit profile is a JSON object")
        unknown = set(d) - {"name", "methods", "takeout"}
        if unknown:
            raise ValueError(f"unknown profile keys: {sorted(unknown)}")
        return cls(
            name=str(d.get("name", "profile")),
            methods={k: MethodLimit.from_dict(v) for k, v in dict(d.get("methods") or {}).items()},
            takeout={k: MethodLimit.from_dict(v) for k, v in dict(d.get("takeout") or {}).items()},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "methods": {k: v.to_dict() for k, v in sorted(self.methods.items())},
        }
        if self.takeout:
            out["takeout"] = {k: v.to_dict() for k, v in sorted(self.takeout.items())}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    def limit_for(self, name: str, *, takeout: bool = False) -> MethodLimit | None:
        """The bucket spec that applies (a takeout section overrides the method's own)."""
        if takeout and name in self.takeout:
            return self.takeout[name]
        return self.methods.get(name)


def no_limits() -> LimitProfile:
    """The limit-free profile (the demo world's: ``make demo`` stays fast)."""
    return LimitProfile("unlimited")


def load_profile(source: str | os.PathLike[str] | Mapping[str, Any] | LimitProfile) -> LimitProfile:
    """A profile from a JSON file path, a JSON string, a dict, or a profile (returned as is)."""
    if isinstance(source, LimitProfile):
        return source
    if isinstance(source, Mapping):
        return LimitProfile.from_dict(source)
    text = os.fspath(source)
    if not text.lstrip().startswith("{"):
        text = Path(text).read_text(encoding="utf-8")
    return LimitProfile.from_dict(json.loads(text))


def random_profile(rng: random.Random | int | None = None, *, name: str | None = None) -> LimitProfile:
    """A seeded random profile drawn from ranges matching the public evidence (see the module docs).

    getHistory: capacity 10-60, refill 0.3-2/s (about "30 per 30 s then FLOOD_WAIT_20..30", and
    accounts differ); takeout getHistory: capacity 50-200, refill 2-8/s (Desktop's export: 10,000
    messages in 18-34 s); get-by-ids: 200-400 ids, 300-400 ids per 30 s; resolveUsername: a handful,
    one per 20-60 s, escalation 5-20x, 50-300 a day; getFile per DC: 50-200, 10-40/s (generous).
    """
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    u = rng.uniform

    def by_ids() -> MethodLimit:
        return MethodLimit(round(u(200, 400)), round(u(300, 400) / 30, 3), round(u(2, 4), 2))

    methods = {
        "messages.GetHistory": MethodLimit(rng.randint(10, 60), round(u(0.3, 2.0), 3), round(u(2, 4), 2)),
        "channels.GetMessages": by_ids(),
        "messages.GetMessages": by_ids(),
        "contacts.ResolveUsername": MethodLimit(
            rng.randint(3, 10), round(1 / u(20, 60), 4), round(u(5, 20), 1), daily=rng.randint(50, 300)
        ),
        "upload.GetFile": MethodLimit(rng.randint(50, 200), round(u(10, 40), 2), round(u(1.5, 3), 2)),
    }
    takeout = {
        "messages.GetHistory": MethodLimit(rng.randint(50, 200), round(u(2.0, 8.0), 3), round(u(2, 4), 2))
    }
    return LimitProfile(name or f"random-{rng.randrange(10**6):06d}", methods, takeout)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    flooded_until: float = float("-inf")
    last_wait: float = 0.0
    level: int = 0  # escalation level: calls made while flooded since the last quiet period
    day: int = -1
    day_count: int = 0


class Limiter:
    """Token buckets for one account (one :class:`~tgkit.offline.OfflineServer`).

    ``check(name, request, dc_id, takeout=...)`` returns ``None`` (let it through, tokens taken) or the
    flood wait in whole seconds.  ``flood_waits`` counts the waits issued, by method.
    """

    def __init__(
        self,
        profile: LimitProfile | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        seed: int = 0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.profile = no_limits() if profile is None else load_profile(profile)
        self._rng = random.Random(seed)
        self._clock = clock
        self._buckets: dict[tuple[str, str, int], _Bucket] = {}
        self.flood_waits: Counter[str] = Counter()
        self.passed: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"Limiter({self.profile.name!r}, {sum(self.flood_waits.values())} flood waits issued)"

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:  # called outside a loop (a synchronous test): the monotonic clock
            return time.monotonic()

    def refill(self) -> None:
        """Fill every bucket again and forget floods (as after a long pause)."""
        self._buckets.clear()

    @staticmethod
    def cost(name: str, request: Any) -> int:
        if name in PER_ID_METHODS:
            return max(1, len(getattr(request, "id", None) or ()))
        return 1

    def check(self, name: str, request: Any = None, dc_id: int = 0, *, takeout: bool = False) -> int | None:
        spec = self.profile.limit_for(name, takeout=takeout)
        if spec is None:
            return None
        scope = "takeout" if takeout and name in self.profile.takeout else "account"
        key = (scope, name, dc_id if name in PER_DC_METHODS else 0)
        now = self.now()
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(tokens=spec.capacity, stamp=now)
        b.tokens = min(spec.capacity, b.tokens + (now - b.stamp) * spec.refill_per_s)
        b.stamp = now
        if now < b.flooded_until:
            # called again while flooded: the wait grows and starts over
            b.level += 1
            return self._flood(name, b, now, b.last_wait * spec.escalation, spec)
        if b.level and now - b.flooded_until >= spec.quiet_s:
            b.level = 0
        cost = self.cost(name, request)
        if spec.daily is not None:
            day = int(now // _DAY)
            if day != b.day:
                b.day, b.day_count = day, 0
            if b.day_count + cost > spec.daily:
                return self._flood(name, b, now, (day + 1) * _DAY - now, spec, jitter=False)
        if b.tokens >= cost:
            b.tokens -= cost
            if spec.daily is not None:
                b.day_count += cost
            self.passed[name] += 1
            return None
        full_in = (spec.capacity - b.tokens) / spec.refill_per_s
        return self._flood(name, b, now, full_in * spec.escalation**b.level, spec)

    def _flood(
        self, name: str, b: _Bucket, now: float, seconds: float, spec: MethodLimit, *, jitter: bool = True
    ) -> int:
        if jitter and spec.jitter:
            seconds *= 1.0 + self._rng.uniform(0.0, spec.jitter)
        wait = max(1, math.ceil(seconds - 1e-9))
        b.last_wait = wait
        b.flooded_until = now + wait
        self.flood_waits[name] += 1
        return wait


def as_limiter(limits: Any, *, seed: int = 0) -> Limiter:
    """``limits`` as a :class:`Limiter`: a limiter is used as is; a profile (object, dict, JSON, path) gets
    a new limiter seeded with ``seed``."""
    return limits if isinstance(limits, Limiter) else Limiter(limits, seed=seed)
