"""Shared fixtures: a clean environment for every test, and a small offline world shared per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tgkit.offline import World


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No TGKIT_* or FORCE_CPU_TRANSCODE from the developer's shell leaks into a test (STYLE #4).

    ``TGKIT_PACING=off``: tests run on the offline double, whose demo world has no rate limits, so no
    export paces itself in real time; tests that exercise pacing pass a ``pacer=`` explicitly."""
    for name in list(os.environ):
        if name.startswith("TGKIT_") or name == "FORCE_CPU_TRANSCODE":
            monkeypatch.delenv(name)
    # The double's limiter is off unless a test gives a profile: no proactive pacing either, unless a
    # test passes its own pacer (tgkit.Pacer(...)) or sets TGKIT_PACING itself.
    monkeypatch.setenv("TGKIT_PACING", "off")
    yield


@pytest.fixture(scope="session")
def small_world() -> World:
    """A small seeded world (350 channel + 120 group messages) for tests that only read it.

    Tests that change the world (new messages, edits, deletions, expired file references, the
    ``expire_file_reference`` fault) must build their own.
    """
    return World(seed=7, channel_messages=350, group_messages=120)
