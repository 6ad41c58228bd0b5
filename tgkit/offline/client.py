"""A real Telethon ``TelegramClient`` wired to the offline server through the sender seam."""

from __future__ import annotations

from typing import Any

from telethon import TelegramClient
from telethon.sessions import MemorySession, StringSession
from telethon.tl import functions
from telethon.tl.alltlobjects import LAYER

from .faults import FaultPlan
from .limits import as_limiter
from .sender import OfflineSender
from .server import OfflineServer
from .world import HOME_DC, World

__all__ = ["OFFLINE_API_HASH", "OFFLINE_API_ID", "OfflineClient", "connect_demo"]

OFFLINE_API_ID = 1
OFFLINE_API_HASH = "0123456789abcdef0123456789abcdef"  # not a secret: the double accepts anything


class OfflineClient(TelegramClient):
    """Telethon's client, unmodified but for where its bytes go: ``client.offline`` is the server."""

    def __init__(
        self,
        server: OfflineServer,
        session: Any = None,
        *,
        api_id: int = OFFLINE_API_ID,
        api_hash: str = OFFLINE_API_HASH,
        latency: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(session if session is not None else MemorySession(), api_id, api_hash, **kwargs)
        self.offline = server
        self._offline_latency = latency
        self._sender = OfflineSender(
            server,
            HOME_DC,
            auth_key=self.session.auth_key,
            auth_key_callback=self._auth_key_callback,
            latency=latency,
        )

    async def _create_exported_sender(self, dc_id: int) -> OfflineSender:
        # Mirrors TelegramBaseClient._create_exported_sender: export the authorisation from the home DC
        # and import it on the new connection, wrapped in InvokeWithLayer(InitConnection(...)).
        dc = await self._get_dc(dc_id)
        sender = OfflineSender(self.offline, dc.id, latency=self._offline_latency)
        await sender.connect(None)
        auth = await self(functions.auth.ExportAuthorizationRequest(dc_id))
        self._init_request.query = functions.auth.ImportAuthorizationRequest(id=auth.id, bytes=auth.bytes)
        await sender.send(functions.InvokeWithLayerRequest(LAYER, self._init_request))
        return sender


async def connect_demo(
    *,
    seed: int = 7,
    world: World | None = None,
    server: OfflineServer | None = None,
    faults: FaultPlan | None = None,
    session: Any = None,
    account: str | None = None,
    limits: Any = None,
    **client_kwargs: Any,
) -> OfflineClient:
    """A connected Telethon client on the demo world (or on ``server``/``world`` if given).

    ``session`` may be a Telethon session or a StringSession string; the default is in memory.
    ``account`` names the user the client is logged in as (``World.account``): several accounts on one
    ``world`` each get their own server (call log, takeouts, Saved Messages, dialogs), sharing the
    public chats.  In another process, build the same world from its parameters and connect there:

        world = World.from_params(params)        # params = world.params, shipped to the worker
        client = await connect_demo(world=world, account="alice")

    ``limits``: a limit profile (see :mod:`tgkit.offline.limits`); the default is limit-free.
    """
    if server is None:
        server = OfflineServer(world or World(seed=seed), faults=faults, account=account, limits=limits)
    else:
        if account is not None and server.world.account(account) != server.self_id:
            raise ValueError(f"server serves account {server.account!r}, not {account!r}")
        if faults is not None:
            server.faults = faults
        if limits is not None:
            server.limits = as_limiter(limits, seed=server.world.seed)
    if isinstance(session, str):
        session = StringSession(session)
    client = OfflineClient(server, session, **client_kwargs)
    await client.connect()
    return client
