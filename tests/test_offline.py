"""The offline Telegram double, proved with Telethon's own high-level calls (issue #2, part 3).

Every test drives the real, unmodified Telethon client through ``tgkit.offline`` on virtual time
(``run_virtual``): flood waits and retries take no real time. Expected page counts are computed from
the world's ids with a model of Telethon 1.45's ``_MessagesIter`` over a reference
``messages.getHistory`` (so deleted-id gaps and Telethon's stop rules are accounted for exactly).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import av
import pytest
from telethon import errors, functions, types, utils
from telethon.sessions import SQLiteSession, StringSession

from tgkit.offline import (
    CHANNEL_ID,
    GROUP_ID,
    SELF_ID,
    FaultPlan,
    OfflineClient,
    OfflineServer,
    World,
    connect_demo,
    request_name,
)
from tgkit.offline import server as server_module
from tgkit.offline.vtime import run_virtual
from tgkit.offline.world import HOME_DC, OTHER_DC, USER_BASE

T = TypeVar("T")
HISTORY = "messages.GetHistory"
CHANNEL = "tgkit_demo"
CHAT_NAMES = {CHANNEL_ID: "tgkit_demo", GROUP_ID: "tgkit_group"}
CHANNEL_PEER_ID = utils.get_peer_id(types.PeerChannel(CHANNEL_ID))  # -100... as Telethon marks it


def run(coro: Coroutine[Any, Any, T]) -> tuple[T, float]:
    """Run on virtual time (``time.time()`` follows it: Telethon stamps flood waits with it)."""
    return run_virtual(coro, patch_time=True)


@contextlib.asynccontextmanager
async def connected(
    server: OfflineServer, session: Any = None, **kwargs: Any
) -> AsyncIterator[OfflineClient]:
    """A connected Telethon client on ``server``, disconnected on exit even if the test fails."""
    client = OfflineClient(server, session, **kwargs)
    try:
        await client.connect()
        yield client
    finally:
        await client.disconnect()


def fresh_world(**kwargs: Any) -> World:
    """A world a test may change. Without media it costs nothing: no PyAV pools are made."""
    kwargs.setdefault("media", False)
    return World(seed=7, channel_messages=350, group_messages=120, **kwargs)


def world_ids(world: World, chat_id: int) -> list[int]:
    return list(world.ids(chat_id))


def world_dates(world: World, chat_id: int) -> dict[int, datetime]:
    return {i: world.message(chat_id, i).date for i in world.ids(chat_id)}


# ------------------------------------------------------------------------------------------------
# A model of what iter_messages does, to compute expected results and page counts exactly


def reference_get_history(
    ids: list[int], dates: dict[int, datetime], offset_id: int, offset_date: Any, add_offset: int, limit: int
) -> list[int]:
    """messages.getHistory as documented: newest first, from the first message older than the offset."""
    newest_first = sorted(ids, reverse=True)
    if offset_id:
        pos = sum(1 for i in ids if i >= offset_id)
    elif offset_date:
        pos = sum(1 for i in ids if dates[i] >= offset_date)
    else:
        pos = 0
    start = pos + add_offset
    return newest_first[max(start, 0) : max(start + limit, 0)]


def telethon_iter_model(
    ids: list[int],
    dates: dict[int, datetime],
    *,
    limit: int | None = None,
    reverse: bool = False,
    offset_id: int = 0,
    offset_date: datetime | None = None,
    min_id: int = 0,
    max_id: int = 0,
) -> tuple[list[int], int]:
    """(ids yielded, GetHistory requests sent) by Telethon 1.45's iter_messages (messages.py)."""
    left: float = math.inf if limit is None else limit
    upper: float = max_id
    if reverse:
        offset_id = max(offset_id, min_id)
        if offset_id and max_id and max_id - offset_id <= 1:
            return [], 0
        upper = max_id or math.inf
        if offset_id:
            offset_id += 1
        elif not offset_date:
            offset_id = 1
    else:
        offset_id = max(offset_id, max_id)
        if offset_id and min_id and offset_id - min_id <= 1:
            return [], 0
    last_id: float = 0 if reverse else math.inf
    out: list[int] = []
    requests = 0
    while True:
        req_limit = int(min(left, 100))
        page = reference_get_history(
            ids, dates, offset_id, offset_date, -req_limit if reverse else 0, req_limit
        )
        requests += 1
        buffer: list[int] = []
        stop = False
        for mid in reversed(page) if reverse else page:
            in_range = last_id < mid < upper if reverse else min_id < mid < last_id
            if not in_range:
                stop = True
                break
            last_id = mid
            buffer.append(mid)
        # Telethon stops after a page whose newest id <= the page limit (forward), or an empty page.
        if not stop and (not page or (not reverse and page[0] <= req_limit) or not buffer):
            stop = True
        if not stop:
            offset_id = buffer[-1] + (1 if reverse else 0)
            offset_date = dates[buffer[-1]]
        out.extend(buffer)
        left -= len(buffer)
        if stop or left <= 0:
            return out, requests


def plain_semantics(
    ids: list[int],
    dates: dict[int, datetime],
    *,
    limit: int | None = None,
    reverse: bool = False,
    offset_id: int = 0,
    offset_date: datetime | None = None,
    min_id: int = 0,
    max_id: int = 0,
) -> list[int]:
    """What iter_messages promises (one bound at a time), written plainly: checks the model itself."""
    if reverse:
        keep = [
            i
            for i in ids
            if i > max(offset_id, min_id)
            and (not max_id or i < max_id)
            and (offset_date is None or dates[i] >= offset_date)
        ]
    else:
        bound = max(offset_id, max_id) or math.inf
        keep = [
            i for i in reversed(ids) if min_id < i < bound and (offset_date is None or dates[i] < offset_date)
        ]
    return keep if limit is None else keep[:limit]


async def history_ids(client: OfflineClient, chat: Any, **kwargs: Any) -> list[int]:
    return [m.id async for m in client.iter_messages(chat, wait_time=0, **kwargs)]


# ------------------------------------------------------------------------------------------------
# connecting, the call log


def test_connect_get_me_and_call_log(small_world: World) -> None:
    server = OfflineServer(small_world)

    async def main() -> None:
        async with connected(server) as client:
            assert client.is_connected()
            assert await client.is_user_authorized()
            me = await client.get_me()
            assert (me.id, me.username, me.is_self) == (SELF_ID, "ada_research", True)
            # connect() = InitConnection(GetConfig) + GetUsers([self]) + GetState, as on Telegram
            assert server.call_log.count("help.GetConfig") == 1
            assert server.call_log.count("updates.GetState") == 1
            assert server.call_log.count(HISTORY) == 0
            before = server.call_log.snapshot()
            await client.get_messages(CHANNEL, limit=5)
            after = server.call_log.snapshot()
            assert after[HISTORY] == 1
            assert after.get("contacts.ResolveUsername", 0) == before.get("contacts.ResolveUsername", 0) + 1
            assert server.call_log.total == sum(after.values())
        assert not client.is_connected()

    run(main())
    assert request_name(functions.messages.GetHistoryRequest(None, 0, None, 0, 0, 0, 0, 0)) == HISTORY
    assert request_name(functions.PingRequest(1)) == "Ping"
    server.call_log.reset()
    assert server.call_log.snapshot() == {} and server.call_log.total == 0


def test_connect_demo_returns_a_connected_client(small_world: World) -> None:
    async def main() -> None:
        client = await connect_demo(world=small_world)
        try:
            assert client.is_connected()
            assert (await client.get_me()).id == SELF_ID
            assert client.offline.world is small_world
        finally:
            await client.disconnect()

    run(main())


# ------------------------------------------------------------------------------------------------
# iter_messages: results and page counts


@pytest.mark.parametrize("chat_id", [CHANNEL_ID, GROUP_ID])
def test_full_history_page_counts(small_world: World, chat_id: int) -> None:
    ids = world_ids(small_world, chat_id)
    assert len(ids) < small_world.chats[chat_id].max_id, "the world should have deleted-id gaps"
    server = OfflineServer(small_world)

    async def main() -> tuple[list[int], int, list[int], int]:
        async with connected(server) as client:
            forward = await history_ids(client, CHAT_NAMES[chat_id])
            pages_forward = server.call_log.count(HISTORY)
            backward = await history_ids(client, CHAT_NAMES[chat_id], reverse=True)
            return forward, pages_forward, backward, server.call_log.count(HISTORY) - pages_forward

    (forward, pages_forward, backward, pages_reverse), _ = run(main())
    assert forward == ids[::-1]
    assert backward == ids
    assert pages_forward == math.ceil(len(ids) / 100)
    assert pages_reverse == math.ceil(len(ids) / 100) + 1  # reverse stops only on an empty page
    dates = world_dates(small_world, chat_id)
    assert telethon_iter_model(ids, dates) == (forward, pages_forward)
    assert telethon_iter_model(ids, dates, reverse=True) == (backward, pages_reverse)


ITER_CASES = [
    {"limit": 150},
    {"limit": 100},
    {"limit": 1},
    {"limit": 7, "reverse": True},
    {"limit": 250, "reverse": True},
    {"min_id": 120},
    {"max_id": 200},
    {"min_id": 100, "max_id": 130},
    {"offset_id": 300},
    {"offset_id": 300, "limit": 120},
    {"offset_id": 300, "reverse": True},
    {"min_id": 250, "reverse": True},
    {"max_id": 60, "reverse": True},
    {"min_id": 100, "max_id": 101, "reverse": True},
    {"offset_date": 200},
    {"offset_date": 200, "reverse": True},
    {"offset_date": 200, "limit": 30},
]


@pytest.mark.parametrize("case", ITER_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_iter_messages_arguments(small_world: World, case: dict[str, Any]) -> None:
    ids = world_ids(small_world, CHANNEL_ID)
    dates = world_dates(small_world, CHANNEL_ID)
    kwargs = dict(case)
    if "offset_date" in kwargs:  # the date of the message at this position
        kwargs["offset_date"] = dates[ids[kwargs["offset_date"]]]
    expected, expected_pages = telethon_iter_model(ids, dates, **kwargs)
    if not ("min_id" in kwargs and "max_id" in kwargs):
        assert expected == plain_semantics(ids, dates, **kwargs)  # the model says what Telethon promises
    server = OfflineServer(small_world)

    async def main() -> list[int]:
        async with connected(server) as client:
            await client.get_input_entity(CHANNEL)  # resolve first: only GetHistory counts below
            return await history_ids(client, CHANNEL, **kwargs)

    got, _ = run(main())
    assert got == expected
    assert server.call_log.count(HISTORY) == expected_pages


def test_deleted_gap_costs_telethon_an_extra_request() -> None:
    # Forward iteration stops when a page's newest id <= the page limit; with ids 2..60 deleted the
    # last full page starts above that, so Telethon asks once more and gets an empty page.
    world = fresh_world()
    world.delete_messages(CHANNEL_ID, list(range(2, 61)))
    ids = world_ids(world, CHANNEL_ID)
    assert ids[0] == 1 and ids[1] == 61
    server = OfflineServer(world)

    async def main() -> list[int]:
        async with connected(server) as client:
            return await history_ids(client, CHANNEL)

    got, _ = run(main())
    assert got == ids[::-1]
    pages = server.call_log.count(HISTORY)
    assert pages == math.ceil(len(ids) / 100) + 1
    assert telethon_iter_model(ids, world_dates(world, CHANNEL_ID)) == (got, pages)


def test_iter_messages_default_wait_time_sleeps_per_page_in_virtual_time(small_world: World) -> None:
    # Telethon's default: 1 s between pages when limit is None (the DESIGN pitfall); virtual here.
    server = OfflineServer(small_world)

    async def main() -> int:
        async with connected(server) as client:
            return len([m async for m in client.iter_messages(CHANNEL)])

    real = time.perf_counter()
    count, elapsed = run(main())
    assert count == len(small_world.ids(CHANNEL_ID))
    pages = server.call_log.count(HISTORY)
    assert elapsed >= pages - 1 - 0.01
    assert time.perf_counter() - real < 5


def test_world_changes_show_through_telethon() -> None:
    world = fresh_world()
    old_max = world_ids(world, CHANNEL_ID)[-1]
    server = OfflineServer(world)

    async def main() -> None:
        async with connected(server) as client:
            new = world.add_messages(CHANNEL_ID, 5)
            assert await history_ids(client, CHANNEL, min_id=old_max) == new[::-1]
            world.edit_message(CHANNEL_ID, new[0], text="corrected")
            world.delete_messages(CHANNEL_ID, [new[1]])
            edited, deleted = await client.get_messages(CHANNEL, ids=[new[0], new[1]])
            assert edited.message == "corrected" and edited.edit_date is not None
            assert deleted is None
            assert await history_ids(client, CHANNEL, min_id=old_max) == [new[4], new[3], new[2], new[0]]

    run(main())


def test_get_messages_by_ids(small_world: World) -> None:
    ids = world_ids(small_world, CHANNEL_ID)
    present = set(ids)
    gaps = [i for i in range(1, ids[-1]) if i not in present][:2]
    assert len(gaps) == 2
    wanted = [gaps[0], 5, gaps[1], ids[-1], 1]
    server = OfflineServer(small_world)

    async def main() -> list[Any]:
        async with connected(server) as client:
            single = await client.get_messages(CHANNEL, ids=5)
            assert single.id == 5
            return await client.get_messages(CHANNEL, ids=wanted)

    got, _ = run(main())
    assert [m.id if m else None for m in got] == [None, 5, None, ids[-1], 1]
    assert got[1].message == small_world.message(CHANNEL_ID, 5).message
    assert got[1].date == small_world.message(CHANNEL_ID, 5).date
    assert isinstance(got[4], types.MessageService)  # the channel-created service message
    assert server.call_log.count("channels.GetMessages") == 2


# ------------------------------------------------------------------------------------------------
# entities


def test_entities_by_username_link_and_id(small_world: World) -> None:
    server = OfflineServer(small_world)
    access_hash = small_world.access_hash(CHANNEL_ID)

    async def main() -> None:
        async with connected(server) as client:
            # an unseen id fails as Telethon fails (it has no access hash for it)
            with pytest.raises(ValueError, match="Could not find the input entity"):
                await client.get_input_entity(CHANNEL_PEER_ID)
            for ref in ("tgkit_demo", "@tgkit_demo", "https://t.me/tgkit_demo", "t.me/TGKIT_DEMO"):
                peer = await client.get_input_entity(ref)
                assert peer == types.InputPeerChannel(CHANNEL_ID, access_hash), ref
            entity = await client.get_entity("https://t.me/tgkit_demo")
            assert (entity.id, entity.title, entity.broadcast) == (CHANNEL_ID, "tgkit demo channel", True)
            # seen now: by id comes from Telethon's entity cache, no request
            calls = server.call_log.total
            assert await client.get_input_entity(CHANNEL_PEER_ID) == types.InputPeerChannel(
                CHANNEL_ID, access_hash
            )
            assert server.call_log.total == calls
            assert (await client.get_entity(CHANNEL_PEER_ID)).id == CHANNEL_ID

            user = await client.get_entity("@member_03")
            assert (user.id, user.first_name) == (USER_BASE + 3, "Li")
            assert (await client.get_entity(USER_BASE + 3)).username == "member_03"
            group = await client.get_entity("tgkit_group")
            assert group.megagroup and group.id == GROUP_ID
            with pytest.raises(ValueError, match="nobody_here"):
                await client.get_entity("nobody_here")

    run(main())


def test_unseen_user_id_fails_as_telethon_fails(small_world: World) -> None:
    server = OfflineServer(small_world)

    async def main() -> None:
        async with connected(server) as client:
            calls = server.call_log.count("users.GetUsers")
            # Telethon tries users.getUsers with access_hash=0: a user account gets an empty user back
            with pytest.raises(ValueError, match="Could not find the input entity"):
                await client.get_entity(USER_BASE + 5)
            assert server.call_log.count("users.GetUsers") == calls + 1

    run(main())


# ------------------------------------------------------------------------------------------------
# downloads


def _media_file_id(message: Any) -> int:
    media = message.media
    return media.photo.id if isinstance(media, types.MessageMediaPhoto) else media.document.id


def _first(world: World, chat_id: int, pred: Callable[[Any], bool]) -> Any:
    for i in world.ids(chat_id):
        msg = world.message(chat_id, i)
        if pred(msg):
            return msg
    raise AssertionError("the world has no such message")


def _is_photo(msg: Any) -> bool:
    return isinstance(getattr(msg, "media", None), types.MessageMediaPhoto)


def _is_video(msg: Any) -> bool:
    media = getattr(msg, "media", None)
    return isinstance(media, types.MessageMediaDocument) and media.document.mime_type == "video/mp4"


def test_download_media_to_bytes_and_to_path(small_world: World, tmp_path: Path) -> None:
    photo = _first(small_world, CHANNEL_ID, _is_photo)
    video = _first(
        small_world,
        CHANNEL_ID,
        lambda m: _is_video(m) and small_world.file(_media_file_id(m)).dc_id == HOME_DC,
    )
    server = OfflineServer(small_world)
    target = tmp_path / "clip.mp4"

    async def main() -> tuple[bytes, Any]:
        async with connected(server) as client:
            photo_msg, video_msg = await client.get_messages(CHANNEL, ids=[photo.id, video.id])
            data = await client.download_media(photo_msg, file=bytes)
            path = await client.download_media(video_msg, file=str(target))
            return data, path

    (data, path), _ = run(main())
    assert data == small_world.file(photo.media.photo.id).data
    assert Path(path) == target
    assert target.read_bytes() == small_world.file(video.media.document.id).data
    with av.open(str(target)) as container:
        assert sum(1 for _ in container.decode(video=0)) > 0
    assert server.call_log.count("auth.ExportAuthorization") == 0  # all on the home data centre


@pytest.fixture(scope="module")
def dc_world() -> World:
    """Big enough to hold a video on DC 4 that says so, and one that claims DC 2 (FILE_MIGRATE)."""
    return World(seed=7, channel_messages=2_000, group_messages=10)


@pytest.mark.parametrize(
    ("declared_dc", "call", "migrates"),
    [
        # given the Document, Telethon reads its dc_id and borrows an exported sender straight away
        (OTHER_DC, "download_file", False),
        # download_media passes only an InputDocumentFileLocation: Telethon asks the home DC first
        (OTHER_DC, "download_media", True),
        # the document claims the home DC: FILE_MIGRATE_4 either way
        (HOME_DC, "download_media", True),
        (HOME_DC, "download_file", True),
    ],
    ids=[
        "declared-dc4-download_file",
        "declared-dc4-download_media",
        "migrate-download_media",
        "migrate-download_file",
    ],
)
def test_download_from_another_data_centre(
    dc_world: World, declared_dc: int, call: str, migrates: bool
) -> None:
    video = _first(
        dc_world,
        CHANNEL_ID,
        lambda m: (
            _is_video(m)
            and m.media.document.dc_id == declared_dc
            and dc_world.file(m.media.document.id).dc_id == OTHER_DC
        ),
    )
    server = OfflineServer(dc_world)

    async def main() -> bytes:
        async with connected(server) as client:
            msg = await client.get_messages(CHANNEL, ids=video.id)
            if call == "download_file":
                first = await client.download_file(msg.media.document, bytes)
                again = await client.download_file(msg.media.document, bytes)
            else:
                first = await client.download_media(msg, file=bytes)
                again = await client.download_media(msg, file=bytes)
            assert first == again
            return first

    data, _ = run(main())
    assert data == dc_world.file(video.media.document.id).data
    log = server.call_log
    # the authorisation is exported and imported once: the second download reuses the sender
    assert log.count("auth.ExportAuthorization") == 1
    assert log.count("auth.ImportAuthorization") == 1
    assert log.errors["FILE_MIGRATE_4"] == (2 if migrates else 0)
    assert log.count("upload.GetFile") == (4 if migrates else 2)
    assert server.key_exchanges == 2  # the home DC and DC 4 each got an auth key


def test_file_reference_expired() -> None:
    # Photos: Telethon raises FileReferenceExpiredError; documents: Telethon refetches the message
    # (channels.GetMessages) and downloads with the fresh reference.
    world = fresh_world(media=True, videos=False)
    photo = _first(world, CHANNEL_ID, _is_photo)
    document = _first(
        world, CHANNEL_ID, lambda m: isinstance(getattr(m, "media", None), types.MessageMediaDocument)
    )
    plan = FaultPlan().expire_file_reference(nth=1).expire_file_reference(nth=3)  # 2nd: the refetched photo
    server = OfflineServer(world, faults=plan)

    async def main() -> bytes:
        async with connected(server) as client:
            photo_msg, doc_msg = await client.get_messages(CHANNEL, ids=[photo.id, document.id])
            with pytest.raises(errors.FileReferenceExpiredError):
                await client.download_media(photo_msg, file=bytes)
            refetched = await client.get_messages(CHANNEL, ids=photo.id)
            assert refetched.media.photo.file_reference != photo_msg.media.photo.file_reference
            assert await client.download_media(refetched, file=bytes) == world.file(photo.media.photo.id).data
            calls = server.call_log.count("channels.GetMessages")
            data = await client.download_media(doc_msg, file=bytes)
            assert server.call_log.count("channels.GetMessages") == calls + 1
            # expiring by hand (world.expire_file_reference) behaves the same
            world.expire_file_reference(photo.media.photo.id)
            with pytest.raises(errors.FileReferenceExpiredError):
                await client.download_media(refetched, file=bytes)
            return data

    data, _ = run(main())
    assert data == world.file(document.media.document.id).data
    assert server.call_log.faults["expire_ref:FILE_REFERENCE_EXPIRED"] == 2


# ------------------------------------------------------------------------------------------------
# takeout


def test_takeout_wraps_requests(small_world: World) -> None:
    server = OfflineServer(small_world)

    async def main() -> None:
        async with connected(server) as client:
            await client.get_input_entity(CHANNEL)
            async with client.takeout(channels=True) as takeout:
                assert len(server.takeout_sessions) == 1
                got = await history_ids(takeout, CHANNEL, limit=150)
                assert len(got) == 150
            assert server.takeout_sessions == frozenset()
            log = server.call_log
            assert log.count("account.InitTakeoutSession") == 1
            assert log.takeout[HISTORY] == log.count(HISTORY) == 2
            assert log.takeout["account.FinishTakeoutSession"] == 1
            await client.get_messages(CHANNEL, limit=1)  # outside the takeout: not wrapped
            assert (log.count(HISTORY), log.takeout[HISTORY]) == (3, 2)
            # a request wrapped in a takeout that is finished is refused
            with pytest.raises(errors.TakeoutInvalidError):
                await client(functions.InvokeWithTakeoutRequest(1, functions.updates.GetStateRequest()))

            server.takeout_delay = 3600
            with pytest.raises(errors.TakeoutInitDelayError) as info:
                async with client.takeout():
                    pass
            assert info.value.seconds == 3600

    run(main())


# ------------------------------------------------------------------------------------------------
# faults


def test_flood_wait_below_threshold_is_slept_through(small_world: World) -> None:
    plan = FaultPlan().flood_wait(30, request=HISTORY, nth=2)
    server = OfflineServer(small_world, faults=plan)

    async def main() -> list[int]:
        async with connected(server) as client:
            assert client.flood_sleep_threshold == 60
            return await history_ids(client, CHANNEL)

    real = time.perf_counter()
    got, elapsed = run(main())
    assert time.perf_counter() - real < 5
    assert got == world_ids(small_world, CHANNEL_ID)[::-1]
    assert elapsed >= 30
    assert server.call_log.count(HISTORY) == math.ceil(len(got) / 100) + 1  # the flooded one, again
    assert server.call_log.faults["rpc:FLOOD_WAIT_30"] == 1


@pytest.mark.parametrize(("seconds", "threshold"), [(3600, 60), (5, 0)])
def test_flood_wait_above_threshold_raises(small_world: World, seconds: int, threshold: int) -> None:
    plan = FaultPlan().flood_wait(seconds, request=HISTORY, nth=2)
    server = OfflineServer(small_world, faults=plan)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        async with connected(server, flood_sleep_threshold=threshold) as client:
            got: list[int] = []
            with pytest.raises(errors.FloodWaitError) as info:
                async for message in client.iter_messages(CHANNEL, wait_time=0):
                    got.append(message.id)
            assert info.value.seconds == seconds
            assert len(got) == 100
            raised_at = loop.time()
            if seconds > 3:
                # Telethon remembers the due time: the next request fails without reaching the server
                with pytest.raises(errors.FloodWaitError):
                    await client.get_messages(CHANNEL, limit=1)
                assert server.call_log.count(HISTORY) == 2
            await asyncio.sleep(seconds)  # once it has passed, the request goes through
            assert len(await client.get_messages(CHANNEL, limit=1)) == 1
            return raised_at

    raised_at, elapsed = run(main())
    assert raised_at < 1  # raised, not slept
    assert elapsed >= seconds


def test_server_error_is_retried_by_telethon(small_world: World) -> None:
    plan = FaultPlan().rpc_error("INTERNAL", code=500, request=HISTORY, times=2)
    server = OfflineServer(small_world, faults=plan)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        async with connected(server) as client:
            start = loop.time()
            assert len(await client.get_messages(CHANNEL, limit=5)) == 5
            assert loop.time() - start == pytest.approx(4.0)  # Telethon sleeps 2 s per retry
            assert server.call_log.count(HISTORY) == 3

            plan.rpc_error("INTERNAL", code=500, request=HISTORY, times=100)
            start = loop.time()
            with pytest.raises(ValueError, match="Request was unsuccessful 6 time"):
                await client.get_messages(CHANNEL, limit=5)
            assert server.call_log.count(HISTORY) == 3 + 6  # request_retries=5: six tries
            return loop.time() - start

    gave_up_after, _ = run(main())
    assert gave_up_after == pytest.approx(12.0)


def test_other_rpc_errors_surface_as_telethon_errors(small_world: World) -> None:
    plan = FaultPlan().rpc_error("CHANNEL_PRIVATE", request=HISTORY)
    plan.rpc_error("AUTH_KEY_UNREGISTERED", code=401, request="channels.GetMessages")
    server = OfflineServer(small_world, faults=plan)

    async def main() -> None:
        async with connected(server) as client:
            with pytest.raises(errors.ChannelPrivateError):
                await client.get_messages(CHANNEL, limit=5)
            with pytest.raises(errors.AuthKeyUnregisteredError):
                await client.get_messages(CHANNEL, ids=[5])
            assert len(await client.get_messages(CHANNEL, limit=5)) == 5  # each rule fired once

    run(main())


def test_disconnect_raises_connection_error_and_reconnect_continues(small_world: World) -> None:
    plan = FaultPlan().disconnect(request=HISTORY, nth=2)
    server = OfflineServer(small_world, faults=plan)
    ids = world_ids(small_world, CHANNEL_ID)

    async def main() -> None:
        async with connected(server) as client:
            got: list[int] = []
            with pytest.raises(ConnectionError):
                async for message in client.iter_messages(CHANNEL, wait_time=0):
                    got.append(message.id)
            assert not client.is_connected()
            assert got == ids[::-1][:100]
            with pytest.raises(ConnectionError):
                await client.get_me()
            await client.connect()
            assert client.is_connected()
            rest = await history_ids(client, CHANNEL, offset_id=got[-1])
            assert got + rest == ids[::-1]

    run(main())
    assert server.call_log.faults["disconnect:disconnect"] == 1
    assert server.call_log.count("help.GetConfig") == 2  # the reconnect sends InitConnection again


def test_drop_is_invisible_except_in_the_call_log(small_world: World) -> None:
    plan = FaultPlan().drop(request=HISTORY, nth=2, times=2)
    server = OfflineServer(small_world, faults=plan)

    async def main() -> list[int]:
        async with connected(server) as client:
            got = await history_ids(client, CHANNEL)
            assert client.is_connected()
            return got

    got, _ = run(main())
    assert got == world_ids(small_world, CHANNEL_ID)[::-1]
    assert server.call_log.count(HISTORY) == math.ceil(len(got) / 100) + 2
    assert server.call_log.faults["drop:drop"] == 2


def test_a_bug_in_the_double_surfaces_instead_of_hanging(
    small_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(server: OfflineServer, request: Any, dc_id: int) -> Any:
        raise RuntimeError("handler bug")

    monkeypatch.setitem(server_module._HANDLERS, functions.messages.GetHistoryRequest, broken)
    server = OfflineServer(small_world)

    async def main() -> None:
        async with connected(server) as client:
            with pytest.raises(RuntimeError, match="handler bug"):
                await asyncio.wait_for(client.get_messages(CHANNEL, limit=1), timeout=60)

    run(main())


# ------------------------------------------------------------------------------------------------
# sessions


def test_string_session_reuses_the_auth_key(small_world: World) -> None:
    server = OfflineServer(small_world)
    access_hash = small_world.access_hash(CHANNEL_ID)

    async def main() -> None:
        async with connected(server, StringSession()) as first:
            await first.get_input_entity(CHANNEL)
            saved = first.session.save()
            key = first.session.auth_key.key
        assert server.key_exchanges == 1

        client = await connect_demo(server=server, session=saved)
        try:
            assert client.session.auth_key.key == key  # no new key: the session carried it
            assert server.key_exchanges == 1
            assert (await client.get_me()).id == SELF_ID
            # A StringSession holds the key and DC only, not entities (Telethon's design): the id is
            # unseen until the channel is met again, then Telethon's cache answers without a request.
            with pytest.raises(ValueError, match="Could not find the input entity"):
                await client.get_input_entity(CHANNEL_PEER_ID)
            await client.get_input_entity("https://t.me/tgkit_demo")
            calls = server.call_log.total
            peer = await client.get_input_entity(CHANNEL_PEER_ID)
            assert peer == types.InputPeerChannel(CHANNEL_ID, access_hash)
            assert server.call_log.total == calls
        finally:
            await client.disconnect()

    run(main())


def test_sqlite_session_carries_the_entity_cache(small_world: World, tmp_path: Path) -> None:
    server = OfflineServer(small_world)
    path = str(tmp_path / "research")

    async def main() -> None:
        async with connected(server, SQLiteSession(path)) as first:
            await first.get_input_entity(CHANNEL)
        async with connected(server, SQLiteSession(path)) as second:
            calls = server.call_log.total
            assert await second.get_input_entity(CHANNEL_PEER_ID) == types.InputPeerChannel(
                CHANNEL_ID, small_world.access_hash(CHANNEL_ID)
            )
            assert server.call_log.total == calls
            assert len(await second.get_messages(CHANNEL_PEER_ID, limit=3)) == 3
        assert server.key_exchanges == 1

    run(main())


# ------------------------------------------------------------------------------------------------
# deterministic worlds and media


def _media_blobs(world: World) -> dict[int, bytes]:
    blobs = {}
    for chat_id in (CHANNEL_ID, GROUP_ID):
        for i in world.ids(chat_id):
            msg = world.message(chat_id, i)
            if isinstance(getattr(msg, "media", None), types.MessageMediaPhoto | types.MessageMediaDocument):
                fid = _media_file_id(msg)
                blobs[fid] = world.file(fid).data
    return blobs


def _message_bytes(world: World) -> list[bytes]:
    return [world.message_bytes(c, i) for c in (CHANNEL_ID, GROUP_ID) for i in world.ids(c)]


def test_same_seed_same_world_other_seed_other_world() -> None:
    a = World(seed=7, channel_messages=350, group_messages=120)
    b = World(seed=7, channel_messages=350, group_messages=120)
    c = World(seed=8, channel_messages=350, group_messages=120)
    assert list(a.ids(CHANNEL_ID)) == list(b.ids(CHANNEL_ID))
    assert _message_bytes(a) == _message_bytes(b)
    blobs_a, blobs_b = _media_blobs(a), _media_blobs(b)
    assert blobs_a == blobs_b and len(blobs_a) > 50
    assert _message_bytes(a) != _message_bytes(c)
    videos_a = {blobs_a[_media_file_id(m)] for m in _videos(a)}
    videos_c = {c.file(_media_file_id(m)).data for m in _videos(c)}
    assert videos_a and videos_c and not videos_a & videos_c


def _videos(world: World) -> list[Any]:
    return [
        world.message(c, i)
        for c in (CHANNEL_ID, GROUP_ID)
        for i in world.ids(c)
        if _is_video(world.message(c, i))
    ]


def test_media_pool_decodes_but_one_clip_is_a_broken_upload(small_world: World) -> None:
    clips: dict[bytes, tuple[int, int]] = {}
    for msg in _videos(small_world):
        attr = next(a for a in msg.media.document.attributes if isinstance(a, types.DocumentAttributeVideo))
        data = small_world.file(msg.media.document.id).data
        assert msg.media.document.size == len(data)
        clips[data] = (attr.w, attr.h)
    assert len(clips) == 4  # the whole pool is in use
    broken = 0
    for data, (w, h) in clips.items():
        try:
            with av.open(io.BytesIO(data)) as container:
                frames = list(container.decode(video=0))
        except av.error.InvalidDataError:
            broken += 1
            continue
        assert frames and (frames[0].width, frames[0].height) == (w, h)
    assert broken == 1
    photo = _first(small_world, CHANNEL_ID, _is_photo)
    largest = max(
        (s for s in photo.media.photo.sizes if isinstance(s, types.PhotoSize)), key=lambda s: s.w * s.h
    )
    with av.open(io.BytesIO(small_world.file(photo.media.photo.id).data)) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (largest.w, largest.h)  # the full photo is its largest size


def test_preserialise_holds_every_message(small_world: World) -> None:
    server = OfflineServer(small_world)
    held = server.preserialise(CHANNEL_ID)
    assert held == sum(len(small_world.message_bytes(CHANNEL_ID, i)) for i in small_world.ids(CHANNEL_ID))

    async def main() -> list[int]:
        async with connected(server) as client:
            return await history_ids(client, CHANNEL, limit=10)

    got, _ = run(main())
    assert got == world_ids(small_world, CHANNEL_ID)[::-1][:10]
