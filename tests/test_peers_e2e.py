"""PeerCache end to end: the real Telethon client on the offline double (tgkit.offline).

Every client uses a fresh ``StringSession``, so Telethon's own entity cache starts empty and only
tgkit's :class:`PeerCache` file can save a ``contacts.ResolveUsername`` call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from telethon.errors.rpcerrorlist import ChannelInvalidError
from telethon.sessions import StringSession
from telethon.tl import functions, types

from tgkit.errors import PeerNotFound
from tgkit.export import export_chat
from tgkit.offline import CHANNEL_ID, OfflineServer, World, connect_demo
from tgkit.peers import PeerCache
from tgkit.records import CacheEntry

T = TypeVar("T")
RESOLVE = "contacts.ResolveUsername"
HISTORY = "messages.GetHistory"


@pytest.fixture(scope="module")
def world() -> World:
    """Small and read-only: three public channels (public_000..002) beside the demo chats."""
    return World(seed=7, channel_messages=120, group_messages=30, public_channels=3, media=False)


@pytest.fixture
def server(world: World) -> OfflineServer:
    return OfflineServer(world)


def run_with_client(server: OfflineServer, fn: Callable[[Any], Awaitable[T]]) -> T:
    """``fn(client)`` with a connected client in a NEW StringSession, disconnected even on failure."""

    async def main() -> T:
        client = await connect_demo(server=server, session=StringSession())
        try:
            return await fn(client)
        finally:
            await client.disconnect()

    return asyncio.run(main())


def history(client: Any) -> Callable[[Any], Awaitable[Any]]:
    """A use of a peer: the newest 5 messages of a channel (fails with CHANNEL_INVALID on a bad hash)."""

    def fetch(peer: Any) -> Awaitable[Any]:
        return client(
            functions.messages.GetHistoryRequest(
                peer=peer, offset_id=0, offset_date=None, add_offset=0, limit=5, max_id=0, min_id=0, hash=0
            )
        )

    return fetch


def test_every_key_form_resolves_to_the_same_peer(server, world, tmp_path):
    cache = PeerCache(tmp_path / "peers.msgpack")

    async def main(client):
        return [
            await cache.resolve(client, key)
            for key in ("@public_000", "t.me/public_000", "https://t.me/public_000", "PUBLIC_000")
        ] + [await cache.resolve(client, -1_000_000_005_000)]  # marked id of public_000 (id 5000)

    peers = run_with_client(server, main)
    want = types.InputPeerChannel(5000, world.access_hash(5000))
    assert peers == [want] * 5
    assert server.call_log.count(RESOLVE) == 1  # one name, one call; the rest were hits
    assert cache.stats()["hits"] == 4 and cache.stats()["api_calls"] == 1


def test_a_new_session_with_the_cache_file_resolves_without_calls(server, tmp_path):
    path = tmp_path / "peers.msgpack"
    names = ["@public_000", "t.me/public_001", "https://t.me/public_002", "@tgkit_demo"]

    async def resolve_all(client, cache):
        return [await cache.resolve(client, n) for n in names]

    with PeerCache(path) as first:
        cold = run_with_client(server, lambda c: resolve_all(c, first))
    assert server.call_log.count(RESOLVE) == 4 and path.exists()

    server.call_log.reset()
    second = PeerCache(path)  # a new process would do exactly this: a new object over the same file

    async def warm(client):
        peers = await resolve_all(client, second)
        return peers, await history(client)(peers[0])  # the cached access hash works on the server

    peers, page = run_with_client(server, warm)
    assert peers == cold
    assert server.call_log.count(RESOLVE) == 0
    assert page.messages and second.stats()["hits"] == 4 and second.stats()["api_calls"] == 0


def test_stale_access_hash_is_dropped_and_resolved_once(server, world, tmp_path):
    path = tmp_path / "peers.msgpack"
    with PeerCache(path) as seed:
        seed.put(CacheEntry("channel", 5001, 12345, "public_001", 1.0))  # Telegram wants another hash
    cache = PeerCache(path)
    used: list[Any] = []

    async def main(client):
        fetch = history(client)

        async def recording(peer):
            used.append(peer.access_hash)
            return await fetch(peer)

        return await cache.with_peer(client, "@public_001", recording)

    page = run_with_client(server, main)
    assert page.messages
    assert used == [12345, world.access_hash(5001)]
    assert server.call_log.count(RESOLVE) == 1
    assert cache.get("public_001").access_hash == world.access_hash(5001)
    assert cache.stats()["invalidations"] == 1


def test_stale_entry_fails_cleanly_when_the_peer_is_really_gone(server, tmp_path):
    cache = PeerCache(tmp_path / "peers.msgpack")
    cache.put(CacheEntry("channel", 5001, 12345, "public_001", 1.0))

    async def main(client):
        # the server keeps refusing: a re-resolve happens once, then PeerNotFound from the RPC error
        async def always_invalid(peer):
            await history(client)(types.InputPeerChannel(peer.channel_id, 999))

        await cache.with_peer(client, "@public_001", always_invalid)

    with pytest.raises(PeerNotFound) as info:
        run_with_client(server, main)
    assert isinstance(info.value.__cause__, ChannelInvalidError)
    assert server.call_log.count(RESOLVE) == 1


def test_unknown_username_is_peer_not_found_naming_it(server, tmp_path):
    cache = PeerCache(tmp_path / "peers.msgpack")
    with pytest.raises(PeerNotFound, match="no_such_channel") as info:
        run_with_client(server, lambda c: cache.resolve(c, "@no_such_channel"))
    assert info.value.peer == "@no_such_channel"
    assert len(cache) == 0


def test_export_twice_in_two_sessions_resolves_once(server, tmp_path):
    path = tmp_path / "peers.msgpack"

    def export(out: Path) -> Any:
        return run_with_client(
            server,
            lambda c: export_chat(
                c, "@tgkit_demo", out, peer_cache=PeerCache(path), progress=False, monitor=False
            ),
        )

    first = export(tmp_path / "a")
    assert server.call_log.count(RESOLVE) == 1 and first.messages > 0
    assert first.metrics.caches["peer_cache"]["api_calls"] == 1
    server.call_log.reset()
    second = export(tmp_path / "b")
    assert server.call_log.count(RESOLVE) == 0 and second.messages == first.messages
    stats = second.metrics.caches["peer_cache"]
    assert stats["hits"] == 1 and stats["api_calls"] == 0 and stats["api_calls_saved"] == 1
    # the first history page taught the cache the chats and users it mentions, for free
    assert stats["entries"] > 1 and "source_0" in PeerCache(path) and "member_00" in PeerCache(path)


def test_export_recovers_from_a_stale_cached_peer(server, world, tmp_path):
    path = tmp_path / "peers.msgpack"
    with PeerCache(path) as seed:
        seed.put(CacheEntry("channel", CHANNEL_ID, 12345, "tgkit_demo", 1.0))  # wrong access hash
    result = run_with_client(
        server,
        lambda c: export_chat(
            c, "@tgkit_demo", tmp_path / "out", peer_cache=PeerCache(path), progress=False, monitor=False
        ),
    )
    assert result.messages > 0 and result.chat_id == CHANNEL_ID
    assert server.call_log.count(RESOLVE) == 1  # the stale entry was dropped and resolved once
    assert result.metrics.caches["peer_cache"]["invalidations"] == 1
    assert PeerCache(path).get("tgkit_demo").access_hash == world.access_hash(CHANNEL_ID)


def test_export_with_a_fresh_peer_error_is_not_retried(server, tmp_path):
    # A peer resolved just now is not "stale": a CHANNEL_INVALID for it is final (no second resolve).
    server.faults.rpc_error("CHANNEL_INVALID", request=HISTORY)
    with pytest.raises(PeerNotFound):
        run_with_client(
            server,
            lambda c: export_chat(
                c,
                "@tgkit_demo",
                tmp_path / "out",
                peer_cache=PeerCache(tmp_path / "p"),
                progress=False,
                monitor=False,
            ),
        )
    assert server.call_log.count(RESOLVE) == 1
