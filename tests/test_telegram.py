"""The gateway (tgkit/telegram.py): counts, pacing, error mapping, the Telethon hooks' lifetime.

The gateway's counts are compared with what the offline double's server received (its call log): the
test reads the call log, production code never does.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import pytest
from helpers_export import QUIET
from telethon import errors as tl_errors
from telethon.errors import rpcerrorlist

import tgkit
from tgkit import errors
from tgkit.offline import CHANNEL_ID, FaultPlan, OfflineServer, World, connect_demo
from tgkit.offline.vtime import run_virtual
from tgkit.pacing import DEFAULT_LIMITS, Pacer
from tgkit.telegram import HANDLED_ERRORS, Gateway, default_pacer, request_name

HISTORY = "messages.GetHistory"


def _world(**kw: Any) -> World:
    return World(seed=5, channel_messages=kw.pop("channel_messages", 400), group_messages=30, **kw)


class RecordingPacer(Pacer):
    """A real (unlimited) pacer that also remembers the order of the methods it let through."""

    def __init__(self) -> None:
        super().__init__({})
        self.acquired: list[str] = []

    async def acquire(self, name: str, cost: int = 1) -> float:  # type: ignore[override]
        self.acquired.append(name)
        return await super().acquire(name)


def _export_counting(world: World, out: Path, **kw: Any) -> tuple[tgkit.ExportResult, dict[str, int]]:
    """Export @tgkit_demo; returns the result and the server's call-log delta for the export."""

    async def main() -> tuple[tgkit.ExportResult, dict[str, int]]:
        server = OfflineServer(world)
        client = await connect_demo(server=server)
        try:
            before = server.call_log.snapshot()
            r = await tgkit.export_chat(client, "@tgkit_demo", out, **{**QUIET, **kw})
            after = server.call_log.snapshot()
        finally:
            await client.disconnect()
        return r, {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}

    return asyncio.run(main())


def test_gateway_counts_equal_what_the_server_received(tmp_path: Path) -> None:
    # media on two data centres: Telethon's own GetFile chunks, ExportAuthorization and the
    # ImportAuthorization it writes straight onto the new connection are all counted
    world = _world()
    pacer = RecordingPacer()
    r, received = _export_counting(
        world, tmp_path / "ds", media=["photo", "video"], batch_size=150, pacer=pacer
    )
    assert r.media_downloaded > 10 and r.media_failed == 0
    assert r.api_calls == dict(sorted(received.items()))
    assert (
        received.get("auth.ImportAuthorization", 0) >= 1 and received["upload.GetFile"] >= r.media_downloaded
    )
    # pacing: acquire() before every request that went out, downloads included
    acquired: dict[str, int] = {}
    for name in pacer.acquired:
        acquired[name] = acquired.get(name, 0) + 1
    assert acquired == {k: v for k, v in r.api_calls.items() if k != "auth.ImportAuthorization"}
    assert r.metrics is not None and r.metrics.api_calls == r.api_calls


def test_gateway_counts_takeout_and_reconnects_like_the_server(tmp_path: Path) -> None:
    world = _world()
    faults = FaultPlan().disconnect(request=HISTORY, nth=2)

    async def main() -> tuple[tgkit.ExportResult, dict[str, int]]:
        server = OfflineServer(world, faults=faults)
        client = await connect_demo(server=server)
        try:
            before = server.call_log.snapshot()
            r = await tgkit.export_chat(client, "@tgkit_demo", tmp_path / "ds", takeout=True, **QUIET)
            after = server.call_log.snapshot()
        finally:
            await client.disconnect()
        return r, {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}

    r, received = run_virtual(main())[0]
    assert r.reconnects == 1 and received["account.FinishTakeoutSession"] == 1
    assert r.api_calls == dict(sorted(received.items()))


def test_hooks_are_removed_and_the_flood_threshold_restored() -> None:
    async def main() -> None:
        client = await connect_demo(world=_world(channel_messages=50))
        try:
            client.flood_sleep_threshold = 42
            outer = Gateway(client, pacer=Pacer.unlimited())
            inner = Gateway(client, pacer=Pacer.unlimited())
            async with outer:
                assert client.flood_sleep_threshold == 0 and "_call" in vars(client)
                async with inner:
                    peer = await inner.resolve("@tgkit_demo")
                    await inner.history(peer, offset_id=0, limit=5)
                assert client.flood_sleep_threshold == 0 and "_call" in vars(client)  # outer still open
                await outer.history(peer, offset_id=0, limit=5)
            assert client.flood_sleep_threshold == 42
            assert "_call" not in vars(client) and "_create_exported_sender" not in vars(client)
            # each counted its own requests
            assert inner.api_calls == {"contacts.ResolveUsername": 1, HISTORY: 1}
            assert outer.api_calls == {HISTORY: 1}
            with pytest.raises(RuntimeError, match="async with"):
                await outer.history(peer, offset_id=0, limit=5)
        finally:
            await client.disconnect()

    asyncio.run(main())


def test_request_names_come_from_the_request_type() -> None:
    from telethon.tl import functions, types

    msgs = [types.InputMessageID(1)]
    assert request_name(functions.messages.GetMessagesRequest(msgs)) == "messages.GetMessages"
    assert request_name(functions.channels.GetMessagesRequest(types.InputChannel(1, 2), msgs)) == (
        "channels.GetMessages"
    )
    wrapped = functions.InvokeWithTakeoutRequest(7, functions.upload.GetFileRequest(None, 0, 1024))  # type: ignore[arg-type]
    assert request_name(wrapped) == "upload.GetFile"
    assert request_name(functions.help.GetConfigRequest()) == "help.GetConfig"


def test_default_pacer_reads_tgkit_pacing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_pacer().limits == {}  # the test conftest sets TGKIT_PACING=off
    monkeypatch.delenv("TGKIT_PACING")
    assert default_pacer().limits == {} and default_pacer().adaptive  # the default learns the limit
    monkeypatch.setenv("TGKIT_PACING", "fixed")
    assert default_pacer().limits == DEFAULT_LIMITS
    assert default_pacer(pacing="OFF", flood_ceiling=5).limits == {}
    assert default_pacer(flood_ceiling=5).flood_ceiling == 5


# --------------------------------------------------------------------------------------------------
# Error mapping: every Telethon error the gateway catches leaves as a documented tgkit error.

_DOCUMENTED = {
    getattr(errors, n)
    for n in errors.__all__
    if inspect.isclass(getattr(errors, n)) and getattr(errors, n).__doc__
}


def _instance(cls: type[BaseException]) -> BaseException:
    """An instance as Telethon builds it (specific classes take the request and maybe a captured number;
    the base classes also take the RPC message)."""
    params = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {"request": None}
    if "capture" in params:
        kwargs["capture"] = 30
    if "message" in params:
        kwargs["message"] = "SOMETHING_ODD"
    return cls(**kwargs)


def _translated(exc: BaseException, *, peer: Any = "@x") -> BaseException:
    try:
        with errors.telegram_errors(peer=peer):
            raise exc
    except BaseException as out:
        return out
    raise AssertionError("nothing raised")


@pytest.mark.parametrize("cls", HANDLED_ERRORS, ids=lambda c: c.__name__)
def test_every_handled_telethon_error_maps_to_a_documented_tgkit_error(cls: type[BaseException]) -> None:
    exc = _instance(cls)
    out = _translated(exc)
    assert isinstance(out, errors.TgkitError) and type(out) in _DOCUMENTED, type(out)
    assert out.__cause__ is exc
    assert isinstance(out, errors.TelegramError) and out.peer == "@x"


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (tl_errors.FloodWaitError, errors.FloodWaitTooLong),
        (tl_errors.ChannelInvalidError, errors.PeerNotFound),
        (tl_errors.ChannelPrivateError, errors.PeerNotFound),
        (tl_errors.UsernameNotOccupiedError, errors.PeerNotFound),
        (tl_errors.AuthKeyUnregisteredError, errors.AuthError),
        (tl_errors.SessionRevokedError, errors.AuthError),
        (tl_errors.ServerError, errors.TelegramError),
        (tl_errors.FileReferenceExpiredError, errors.TelegramError),
    ],
)
def test_telethon_errors_map_to_the_right_branch(cls: type[BaseException], expected: type) -> None:
    assert type(_translated(_instance(cls))) is expected


def test_every_telethon_rpc_error_class_becomes_a_telegram_error() -> None:
    classes = set(rpcerrorlist.rpc_errors_dict.values()) | {cls for _, cls in rpcerrorlist.rpc_errors_re}
    assert len(classes) > 300
    for cls in classes:
        out = _translated(_instance(cls))
        assert isinstance(out, errors.TelegramError) and type(out) in _DOCUMENTED, cls


def test_value_errors_are_translated_only_when_resolving() -> None:
    with pytest.raises(ValueError, match="plain"), errors.telegram_errors(peer="@x"):
        raise ValueError("plain")
    with pytest.raises(errors.PeerNotFound), errors.telegram_errors(peer="@x", resolving=True):
        raise ValueError('No user has "x" as username')


@pytest.mark.parametrize(
    ("errno_", "reason"),
    [(28, "no space left"), (27, "file too large"), (13, "permission denied"), (30, "read-only")],
)
def test_write_errors_name_the_path_and_the_reason(tmp_path: Path, errno_: int, reason: str) -> None:
    with pytest.raises(errors.ExportError, match=reason) as info, errors.write_errors(tmp_path / "ds"):
        raise OSError(errno_, "os text")
    assert str(tmp_path / "ds") in str(info.value) and isinstance(info.value.__cause__, OSError)
    with pytest.raises(ConnectionError), errors.write_errors(tmp_path):
        raise ConnectionError("not a writer's error")


def test_pyarrow_style_oserror_without_errno(tmp_path: Path) -> None:
    err = errors.write_error(
        OSError("IOError: error writing bytes to file. Detail: [errno 28] No space left"), tmp_path
    )
    assert "no space left" in str(err) and str(tmp_path) in str(err)


def test_export_of_a_missing_chat_through_the_gateway(tmp_path: Path) -> None:
    async def main() -> None:
        client = await connect_demo(world=_world(channel_messages=50))
        try:
            with pytest.raises(tgkit.PeerNotFound) as info:
                await tgkit.export_chat(client, "@nobody_here_at_all", tmp_path / "ds", **QUIET)
            assert info.value.__cause__ is not None
        finally:
            await client.disconnect()

    asyncio.run(main())


def test_chat_id_used_by_the_dataset() -> None:
    # the gateway's resolve gives the channel's own id: rows land in chat_id=<CHANNEL_ID>
    async def main() -> int:
        client = await connect_demo(world=_world(channel_messages=50))
        try:
            async with Gateway(client, pacer=Pacer.unlimited()) as gw:
                from tgkit.telegram import chat_id_of

                return chat_id_of(await gw.resolve("@tgkit_demo"))
        finally:
            await client.disconnect()

    assert asyncio.run(main()) == CHANNEL_ID


def test_default_pacer_is_one_per_client_and_persists_per_account(tmp_path, monkeypatch) -> None:
    from tgkit.offline import connect_demo

    monkeypatch.delenv("TGKIT_PACING")
    monkeypatch.setenv("TGKIT_CACHE_DIR", str(tmp_path))

    async def main() -> None:
        client = await connect_demo()
        other = await connect_demo(world=client.offline.world, account="alice")
        try:
            first = default_pacer(client)
            assert default_pacer(client) is first  # several chats on one client share its limit
            assert default_pacer(other) is not first  # another account learns its own
            assert first.state_path is not None and str(client._self_id) in first.state_path.name
            saved = first.save()
            assert saved is not None and saved.stat().st_mode & 0o777 == 0o600
        finally:
            await client.disconnect()
            await other.disconnect()

    asyncio.run(main())
