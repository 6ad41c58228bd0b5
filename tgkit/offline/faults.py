"""A fault plan: what the offline Telegram does wrong, and when.

Rules match a request type (``"messages.GetHistory"``; ``None`` matches any) and its n-th occurrence
(1-based, counted per type over the whole server's life), and fire ``times`` times from there.

    plan = FaultPlan()
    plan.flood_wait(30, request="messages.GetHistory", nth=3)
    plan.rpc_error("INTERNAL", code=500, request="messages.GetHistory", nth=5)
    plan.disconnect(request="messages.GetHistory", nth=7)
    plan.expire_file_reference(nth=2)          # the 2nd upload.GetFile answers FILE_REFERENCE_EXPIRED
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Fault", "FaultPlan"]


@dataclass(slots=True)
class Fault:
    """One rule.  ``kind``: ``"rpc"`` (answer an RPC error), ``"disconnect"`` (the connection drops
    and Telethon's reconnects fail: the request raises ``ConnectionError``), ``"drop"`` (the connection
    drops and Telethon reconnects by itself: the request is sent again), ``"expire_ref"`` (the file's
    reference is rotated and the request answered FILE_REFERENCE_EXPIRED)."""

    kind: str
    request: str | None
    nth: int
    times: int = 1
    code: int = 400
    message: str = ""
    fired: int = 0

    def matches(self, name: str, occurrence: int) -> bool:
        if self.request is not None and self.request != name:
            return False
        return self.fired < self.times and occurrence >= self.nth


class FaultPlan:
    """An ordered list of :class:`Fault` rules; the first matching rule fires."""

    def __init__(self) -> None:
        self.rules: list[Fault] = []

    def __repr__(self) -> str:
        return f"FaultPlan({len(self.rules)} rules, {sum(r.fired for r in self.rules)} fired)"

    def add(self, fault: Fault) -> FaultPlan:
        self.rules.append(fault)
        return self

    def flood_wait(
        self, seconds: int, *, request: str | None = None, nth: int = 1, times: int = 1
    ) -> FaultPlan:
        return self.add(Fault("rpc", request, nth, times, 420, f"FLOOD_WAIT_{int(seconds)}"))

    def rpc_error(
        self, message: str, *, code: int = 400, request: str | None = None, nth: int = 1, times: int = 1
    ) -> FaultPlan:
        return self.add(Fault("rpc", request, nth, times, code, message))

    def disconnect(self, *, request: str | None = None, nth: int = 1, times: int = 1) -> FaultPlan:
        return self.add(Fault("disconnect", request, nth, times))

    def drop(self, *, request: str | None = None, nth: int = 1, times: int = 1) -> FaultPlan:
        return self.add(Fault("drop", request, nth, times))

    def expire_file_reference(self, *, nth: int = 1, times: int = 1) -> FaultPlan:
        return self.add(Fault("expire_ref", "upload.GetFile", nth, times, 400, "FILE_REFERENCE_EXPIRED"))

    @classmethod
    def storm(
        cls,
        seed: int,
        *,
        history_calls: int,
        flood_waits: int = 6,
        long_flood_waits: int = 0,
        long_seconds: int = 3600,
        disconnects: int = 20,
        server_errors: int = 5,
        expired_refs: int = 0,
        downloads: int = 0,
    ) -> FaultPlan:
        """A seeded mix of faults spread over the first ``history_calls`` history requests."""
        rng = random.Random(seed)
        plan = cls()
        slots = rng.sample(
            range(2, max(history_calls, 3)),
            min(flood_waits + long_flood_waits + disconnects + server_errors, max(history_calls - 2, 1)),
        )
        it = iter(slots)
        for _ in range(flood_waits):
            plan.flood_wait(rng.choice((2, 5, 15, 45)), request="messages.GetHistory", nth=next(it, 2))
        for _ in range(long_flood_waits):
            plan.flood_wait(long_seconds, request="messages.GetHistory", nth=next(it, 2))
        for _ in range(disconnects):
            plan.disconnect(request="messages.GetHistory", nth=next(it, 2))
        for _ in range(server_errors):
            plan.rpc_error("INTERNAL", code=500, request="messages.GetHistory", nth=next(it, 2))
        if downloads:
            for n in rng.sample(range(1, downloads + 1), min(expired_refs, downloads)):
                plan.expire_file_reference(nth=n)
        return plan

    def check(self, name: str, occurrence: int) -> Fault | None:
        """The rule that fires for this request (and mark it fired), or None."""
        for rule in self.rules:
            if rule.matches(name, occurrence):
                rule.fired += 1
                return rule
        return None
