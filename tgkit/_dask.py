"""The Dask worker plugin of :mod:`tgkit.distributed` (a module of its own: it imports distributed,
which ``import tgkit`` must not)."""

from __future__ import annotations

import asyncio
from typing import Any

from distributed import WorkerPlugin


class AccountTeardown(WorkerPlugin):
    """When a worker closes, disconnect its account's client, save its pacer, stop the account's loop
    thread and release the session lock, so the worker process exits at once (the nanny no longer has
    to kill it).  ``idempotent``: registering it again (every ``export_corpus`` call does) is a no-op."""

    idempotent = True
    name = "tgkit-account-teardown"

    async def teardown(self, worker: Any) -> None:
        from .distributed import _close_account_runtimes

        # blocking (disconnect on the account's own loop thread): off the worker's event loop
        await asyncio.to_thread(_close_account_runtimes)
