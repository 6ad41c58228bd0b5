"""The double answers what a third-party Telethon client asks (issue #20 part 3, and #14/#16/#17's needs).

Every test drives the real, unmodified Telethon client (high-level calls where Telethon has them) on
virtual time; expectations come from the world's own lists, never from the answers under test.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

import av
import pytest
from telethon import errors, functions, types, utils

from tgkit.offline import (
    BASIC_GROUP_ID,
    BOT_ID,
    CHANNEL_ID,
    DISCUSSION_ID,
    GROUP_ID,
    NOT_MODELLED,
    SELF_ID,
    OfflineServer,
    World,
    connect_demo,
)
from tgkit.offline.vtime import run_virtual

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return run_virtual(coro, patch_time=True)[0]


def world(**kw: Any) -> World:
    kw.setdefault("media", False)
    return World(
        seed=kw.pop("seed", 7), channel_messages=kw.pop("channel_messages", 300), group_messages=60, **kw
    )


def peer_id_of(row: Any) -> int:
    return utils.get_peer_id(row.peer)


# ------------------------------------------------------------------------------------------------
# dialogs


@pytest.mark.parametrize("public_channels", [0, 230])
def test_iter_dialogs_returns_every_dialog_once_newest_first(public_channels: int) -> None:
    w = world(public_channels=public_channels)
    expected = w.dialogs(SELF_ID)

    async def main() -> tuple[list[Any], int, int]:
        client = await connect_demo(world=w)
        try:
            dialogs = [d async for d in client.iter_dialogs()]
            total = (await client.get_dialogs(limit=0)).total
            return dialogs, total, client.offline.call_log.count("messages.GetDialogs")
        finally:
            await client.disconnect()

    dialogs, total, requests = run(main())
    ids = [d.id for d in dialogs]
    assert len(ids) == len(set(ids)), "a dialog came twice"
    assert sorted(ids) == sorted(peer_id_of(r) for r in expected)
    assert total == len(expected)
    # pinned first, then newest top message first
    pinned = [d for d in dialogs if d.pinned]
    assert dialogs[: len(pinned)] == pinned and {d.id for d in pinned} == {
        peer_id_of(r) for r in expected if r.pinned
    }
    dates = [d.date for d in dialogs[len(pinned) :]]
    assert dates == sorted(dates, reverse=True)
    # Telethon asks for 100 dialogs a page (+1 request for get_dialogs(limit=0))
    assert requests == -(-len(expected) // 100) + (len(expected) % 100 == 0) + 1
    by_id = {d.id: d for d in dialogs}
    channel = by_id[utils.get_peer_id(types.PeerChannel(CHANNEL_ID))]
    assert channel.message.id == w.ids(CHANNEL_ID)[-1] and channel.is_channel and not channel.is_group
    assert by_id[SELF_ID].name == "Ada Researcher"  # Saved Messages is the dialog with oneself
    assert by_id[-BASIC_GROUP_ID].is_group and not by_id[-BASIC_GROUP_ID].is_channel
    assert any(d.unread_count for d in dialogs)
    assert (
        {d.id for d in dialogs if d.archived}
        == {peer_id_of(r) for r in expected if r.folder_id == 1}
        != set()
    )


def test_dialog_folders_and_offsets() -> None:
    w = world(public_channels=30)
    rows = w.dialogs(SELF_ID)

    async def main() -> tuple[set[int], set[int], list[int]]:
        client = await connect_demo(world=w)
        try:
            archived = {d.id async for d in client.iter_dialogs(folder=1)}
            main_list = {d.id async for d in client.iter_dialogs(folder=0)}
            small_pages = [d.id async for d in client.iter_dialogs(limit=None, ignore_pinned=True)]
            return archived, main_list, small_pages
        finally:
            await client.disconnect()

    archived, main_list, unpinned = run(main())
    assert archived == {peer_id_of(r) for r in rows if r.folder_id == 1}
    assert main_list == {peer_id_of(r) for r in rows if r.folder_id is None}
    assert sorted(unpinned) == sorted(peer_id_of(r) for r in rows if not r.pinned)


def test_dialogs_answer_is_a_slice_with_count_while_more_remain() -> None:
    w = world(public_channels=150)

    async def main() -> list[Any]:
        client = await connect_demo(world=w)
        try:
            first = await client(
                functions.messages.GetDialogsRequest(
                    offset_date=None, offset_id=0, offset_peer=types.InputPeerEmpty(), limit=20, hash=0
                )
            )
            everything = await client(
                functions.messages.GetDialogsRequest(
                    offset_date=None,
                    offset_id=0,
                    offset_peer=types.InputPeerEmpty(),
                    limit=100,
                    hash=0,
                    folder_id=1,
                )
            )
            return [first, everything]
        finally:
            await client.disconnect()

    first, archived = run(main())
    assert isinstance(first, types.messages.DialogsSlice) and first.count == len(w.dialogs(SELF_ID))
    assert len(first.dialogs) == 20 and {m.id for m in first.messages} >= {
        d.top_message for d in first.dialogs
    }
    assert isinstance(archived, types.messages.Dialogs)  # the archive fits in one page


# ------------------------------------------------------------------------------------------------
# unknown requests, Saved Messages


def test_unknown_request_says_it_is_not_modelled() -> None:
    async def main() -> None:
        client = await connect_demo(world=world())
        try:
            with pytest.raises(errors.BadRequestError) as info:
                await client(functions.contacts.GetContactsRequest(hash=0))
            assert NOT_MODELLED + "contacts.GetContacts" in str(info.value)
            assert info.value.code == 400
        finally:
            await client.disconnect()

    run(main())


def test_saved_messages_through_me_and_input_peer_user_of_self() -> None:
    w = world()
    expected = list(reversed(w.mailbox(SELF_ID).by_peer[("user", SELF_ID)]))

    async def main() -> None:
        client = await connect_demo(world=w)
        try:
            saved = [m async for m in client.iter_messages("me", wait_time=0)]
            assert [m.id for m in saved] == expected
            assert all(m.out and m.chat_id == SELF_ID for m in saved)
            assert any(m.fwd_from and m.fwd_from.saved_from_peer for m in saved)
            me = await client.get_me(input_peer=False)
            as_user = types.InputPeerUser(me.id, me.access_hash)
            again = [m.id async for m in client.iter_messages(as_user, limit=10, wait_time=0)]
            assert again == expected[:10]
            page = [
                m.id async for m in client.iter_messages("me", limit=5, offset_id=expected[3], wait_time=0)
            ]
            assert page == expected[4:9]
            by_id = await client.get_messages("me", ids=[expected[0], 999_999])
            assert by_id[0].id == expected[0] and by_id[1] is None
            # a private chat: ids are the account's own, shared with the other private chats
            member = w.mailbox(SELF_ID).peers[1][1]
            chat = [m async for m in client.iter_messages(member, wait_time=0)]
            assert [m.id for m in chat] == list(reversed(w.mailbox(SELF_ID).by_peer[("user", member)]))
            assert {m.sender_id for m in chat if not m.out} <= {member}
        finally:
            await client.disconnect()

    run(main())


# ------------------------------------------------------------------------------------------------
# media: photo sizes, stripped thumbs, document thumbs, profile photos, stickers, web pages, polls


def media_messages(w: World, chat_id: int, kind: type) -> list[Any]:
    return [m for i in w.ids(chat_id) if isinstance(getattr(m := w.message(chat_id, i), "media", None), kind)]


@pytest.fixture(scope="module")
def media_world() -> World:
    return World(seed=7, channel_messages=2500, group_messages=40)


def decode(data: bytes) -> tuple[int, int]:
    with av.open(io.BytesIO(data)) as container:
        frame = next(container.decode(video=0))
    return frame.width, frame.height


def test_photo_thumb_sizes_are_distinct_real_jpegs(media_world: World) -> None:
    photo_msg = media_messages(media_world, CHANNEL_ID, types.MessageMediaPhoto)[0]
    sizes = photo_msg.media.photo.sizes
    real = [s for s in sizes if isinstance(s, types.PhotoSize)]

    async def main() -> dict[Any, bytes]:
        client = await connect_demo(world=media_world)
        try:
            msg = (await client.get_messages("tgkit_demo", ids=[photo_msg.id]))[0]
            out = {s.type: await client.download_media(msg, file=bytes, thumb=s) for s in real}
            out["i"] = await client.download_media(msg, file=bytes, thumb=0)  # the stripped size, inline
            out["full"] = await client.download_media(msg, file=bytes)
            return out
        finally:
            await client.disconnect()

    got = run(main())
    assert {s.type for s in real} >= {"s", "m", "x"}
    assert len({got[s.type] for s in real}) == len(real), "every size has its own bytes"
    for s in real:
        assert decode(got[s.type]) == (s.w, s.h) and len(got[s.type]) == s.size
    assert got["full"] == got[max(real, key=lambda s: s.size).type]
    stripped = next(s for s in sizes if isinstance(s, types.PhotoStrippedSize))
    assert got["i"] == utils.stripped_photo_to_jpg(stripped.bytes)
    assert decode(got["i"]) == (stripped.bytes[2], stripped.bytes[1])


def test_video_document_thumb(media_world: World) -> None:
    video = next(
        m for m in media_messages(media_world, CHANNEL_ID, types.MessageMediaDocument) if m.media.video
    )
    thumb = next(t for t in video.media.document.thumbs if isinstance(t, types.PhotoSize))

    async def main() -> tuple[bytes, bytes]:
        client = await connect_demo(world=media_world)
        try:
            msg = (await client.get_messages("tgkit_demo", ids=[video.id]))[0]
            return await client.download_media(msg, file=bytes, thumb=-1), await client.download_media(
                msg, file=bytes
            )
        finally:
            await client.disconnect()

    small, full = run(main())
    assert decode(small) == (thumb.w, thumb.h) and len(small) == thumb.size
    assert full == media_world.file(video.media.document.id).data != small


def test_profile_photos_download_big_and_small() -> None:
    w = world()
    with_photo = [u for u in w.users.values() if u.photo]
    without = [u for u in w.users.values() if not u.photo]
    assert with_photo and without, "some users have a profile photo, some do not"

    async def main() -> dict[str, Any]:
        client = await connect_demo(world=w)
        try:
            channel = await client.get_entity("tgkit_demo")
            user = await client.get_entity(with_photo[0].username)
            plain = await client.get_entity(without[0].username)
            return {
                "channel_big": await client.download_profile_photo(channel, file=bytes),
                "channel_small": await client.download_profile_photo(channel, file=bytes, download_big=False),
                "user": await client.download_profile_photo(user, file=bytes),
                "none": await client.download_profile_photo(plain, file=bytes),
                "full": await client(functions.channels.GetFullChannelRequest(channel)),
                "full_user": await client(functions.users.GetFullUserRequest(user)),
            }
        finally:
            await client.disconnect()

    got = run(main())
    assert decode(got["channel_big"]) == (640, 640) and decode(got["channel_small"]) == (160, 160)
    assert decode(got["user"]) == (640, 640)
    assert got["none"] is None
    photo = got["full"].full_chat.chat_photo
    assert photo.id == w.channel_objs[CHANNEL_ID].photo.photo_id
    assert {s.type for s in photo.sizes} == {"i", "a", "c"}
    assert got["full_user"].full_user.profile_photo.id == with_photo[0].photo.photo_id
    stripped = w.channel_objs[CHANNEL_ID].photo.stripped_thumb
    assert decode(utils.stripped_photo_to_jpg(stripped)) == (stripped[2], stripped[1])


def test_stickers_web_pages_and_polls(media_world: World) -> None:
    docs = [
        m.media.document
        for chat in (CHANNEL_ID, GROUP_ID)
        for m in media_messages(media_world, chat, types.MessageMediaDocument)
        if any(isinstance(a, types.DocumentAttributeSticker) for a in m.media.document.attributes)
    ]
    mimes = {d.mime_type for d in docs}
    assert mimes == {"image/webp", "application/x-tgsticker", "video/webm"}
    tgs = next(d for d in docs if d.mime_type == "application/x-tgsticker")
    video = next(d for d in docs if d.mime_type == "video/webm")

    async def main() -> tuple[bytes, bytes]:
        client = await connect_demo(world=media_world)
        try:
            out = []
            for doc in (tgs, video):
                loc = types.InputDocumentFileLocation(doc.id, doc.access_hash, doc.file_reference, "")
                out.append(await client.download_file(loc, bytes))
            return out[0], out[1]
        finally:
            await client.disconnect()

    tgs_bytes, webm_bytes = run(main())
    lottie = json.loads(gzip.decompress(tgs_bytes))
    assert lottie["w"] == 512 and lottie["layers"]
    assert decode(webm_bytes) == (512, 512)

    pages = [
        m.media.webpage
        for chat in (CHANNEL_ID, GROUP_ID)
        for m in media_messages(media_world, chat, types.MessageMediaWebPage)
    ]
    full = [p for p in pages if isinstance(p, types.WebPage)]
    assert full and any(isinstance(p, types.WebPageEmpty | types.WebPagePending) for p in pages)
    assert all(p.url and p.display_url and p.site_name and p.title and p.description for p in full)
    assert any(p.photo for p in full)

    polls = [
        m.media
        for chat in (CHANNEL_ID, GROUP_ID)
        for m in media_messages(media_world, chat, types.MessageMediaPoll)
    ]
    with_results = [p for p in polls if p.results.results]
    assert with_results and any(p.results.results is None for p in polls)
    for p in with_results:
        assert sum(a.voters for a in p.results.results) == p.results.total_voters
        if p.poll.quiz:
            assert sum(bool(a.correct) for a in p.results.results) == 1 and p.results.solution


# ------------------------------------------------------------------------------------------------
# the demo channel's discussion group, full chats


def test_comments_sum_to_the_posts_replies_and_thread_correctly() -> None:
    w = world(channel_messages=250)

    async def main() -> tuple[list[Any], dict[int, list[Any]], Any, Any]:
        client = await connect_demo(world=w)
        try:
            posts = [m async for m in client.iter_messages("tgkit_demo", wait_time=0)]
            commented = [p for p in posts if p.replies and p.replies.comments]
            comments = {
                p.id: [c async for c in client.iter_messages("tgkit_demo", reply_to=p.id, wait_time=0)]
                for p in commented
                if p.replies.replies
            }
            full = await client(functions.channels.GetFullChannelRequest("tgkit_demo"))
            discussion = await client(
                functions.messages.GetDiscussionMessageRequest("tgkit_demo", commented[0].id)
            )
            return commented, comments, full, discussion
        finally:
            await client.disconnect()

    commented, comments, full, discussion = run(main())
    assert commented
    total = sum(p.replies.replies for p in commented)
    rows = [c for cs in comments.values() for c in cs]
    assert total == len(rows) == len({c.id for c in rows}) > 0
    group_ids = set(w.ids(DISCUSSION_ID))
    for post in commented:
        assert post.replies.channel_id == DISCUSSION_ID
        got = comments.get(post.id, [])
        assert len(got) == post.replies.replies
        if got:
            assert post.replies.max_id == max(c.id for c in got)
        thread = w.thread(post.id)
        assert thread is not None
        copy = w.message(DISCUSSION_ID, thread.copy_id)
        assert (copy.fwd_from.saved_from_msg_id, copy.fwd_from.channel_post) == (post.id, post.id)
        assert utils.get_peer_id(copy.fwd_from.saved_from_peer) == utils.get_peer_id(
            types.PeerChannel(CHANNEL_ID)
        )
        for c in got:
            assert c.id in group_ids and c.chat_id == utils.get_peer_id(types.PeerChannel(DISCUSSION_ID))
            assert (c.reply_to.reply_to_top_id or c.reply_to.reply_to_msg_id) == thread.copy_id
            assert c.date >= copy.date
    # the group holds the copies and the comments, and nothing else but its creation
    assert len(group_ids) == 1 + len(commented) + total
    assert full.full_chat.linked_chat_id == DISCUSSION_ID and full.full_chat.about
    assert full.full_chat.participants_count == w.channel_objs[CHANNEL_ID].participants_count
    assert discussion.messages[0].id == w.thread(commented[0].id).copy_id


def test_discussion_group_full_chat_links_back_and_history_reads() -> None:
    w = world(channel_messages=120)

    async def main() -> tuple[Any, list[int], Any, Any]:
        client = await connect_demo(world=w)
        try:
            full = await client(functions.channels.GetFullChannelRequest("tgkit_demo_chat"))
            history = [m.id async for m in client.iter_messages("tgkit_demo_chat", wait_time=0)]
            basic = await client(functions.messages.GetFullChatRequest(BASIC_GROUP_ID))
            bot = await client(functions.users.GetFullUserRequest("demo_bot"))
            return full, history, basic, bot
        finally:
            await client.disconnect()

    full, history, basic, bot = run(main())
    assert full.full_chat.linked_chat_id == CHANNEL_ID
    assert history == list(reversed(w.ids(DISCUSSION_ID)))
    assert {p.user_id for p in basic.full_chat.participants.participants} >= {SELF_ID}
    assert len(basic.full_chat.participants.participants) == w.basic_group.participants_count
    assert bot.full_user.bot_info.user_id == BOT_ID


def test_new_channel_posts_grow_the_discussion_group() -> None:
    w = world(channel_messages=100)
    before = len(w.ids(DISCUSSION_ID))
    old = {i: w.message_bytes(DISCUSSION_ID, i) for i in w.ids(DISCUSSION_ID)}
    new = w.add_messages(CHANNEL_ID, 40)
    added = sum(t.comments + 1 for p in new if (t := w.thread(p)))
    assert len(w.ids(DISCUSSION_ID)) == before + added
    assert all(bytes(w.message(DISCUSSION_ID, i)) == b for i, b in old.items())


# ------------------------------------------------------------------------------------------------
# several accounts, determinism


def test_accounts_share_public_chats_but_not_their_own() -> None:
    w = world()

    async def main() -> dict[str, Any]:
        ada = await connect_demo(world=w)
        alice = await connect_demo(world=w, account="alice")
        try:
            me_ada, me_alice = await ada.get_me(), await alice.get_me()
            posts_ada = [m.id async for m in ada.iter_messages("tgkit_demo", limit=50, wait_time=0)]
            posts_alice = [m.id async for m in alice.iter_messages("tgkit_demo", limit=50, wait_time=0)]
            saved_alice = [m async for m in alice.iter_messages("me", wait_time=0)]
            dialogs_alice = [d async for d in alice.iter_dialogs()]
            return {
                "me": (me_ada, me_alice),
                "posts": (posts_ada, posts_alice),
                "saved": saved_alice,
                "dialogs": dialogs_alice,
                "logs": (ada.offline.call_log.total, alice.offline.call_log.total),
                "servers": ada.offline is not alice.offline,
            }
        finally:
            await ada.disconnect()
            await alice.disconnect()

    got = run(main())
    me_ada, me_alice = got["me"]
    assert me_ada.id == SELF_ID and me_alice.id == w.account("alice") != SELF_ID
    assert me_alice.is_self and me_alice.username == "alice_research"
    assert got["posts"][0] == got["posts"][1]
    assert got["saved"] and {m.chat_id for m in got["saved"]} == {me_alice.id}
    assert [m.id for m in got["saved"]] == list(
        reversed(w.mailbox(me_alice.id).by_peer[("user", me_alice.id)])
    )
    assert me_alice.id in {d.id for d in got["dialogs"]} and SELF_ID not in {d.id for d in got["dialogs"]}
    assert got["servers"] and all(got["logs"])
    # a worker process builds the same world from its parameters: same account id, same answers
    twin = World.from_params(w.params)
    assert twin.account("alice") == me_alice.id
    assert twin.message_bytes(CHANNEL_ID, 77) == w.message_bytes(CHANNEL_ID, 77)
    with pytest.raises(ValueError):
        w.account("no spaces please")


def test_same_seed_gives_byte_identical_answers() -> None:
    def answers(seed: int) -> list[bytes]:
        w = World(seed=seed, channel_messages=150, group_messages=30, public_channels=5)
        server = OfflineServer(w, account="bob")
        reqs = [
            functions.messages.GetDialogsRequest(
                offset_date=None, offset_id=0, offset_peer=types.InputPeerEmpty(), limit=100, hash=0
            ),
            functions.messages.GetHistoryRequest(types.InputPeerSelf(), 0, None, 0, 100, 0, 0, 0),
            functions.messages.GetHistoryRequest(
                types.InputPeerChannel(DISCUSSION_ID, w.access_hash(DISCUSSION_ID)), 0, None, 0, 100, 0, 0, 0
            ),
            functions.channels.GetFullChannelRequest(
                types.InputChannel(CHANNEL_ID, w.access_hash(CHANNEL_ID))
            ),
        ]
        out = []
        for req in reqs:
            answer = server.handle(bytes(req), 2)
            assert isinstance(answer, bytes)
            out.append(answer)
        return out

    a, b, c = answers(7), answers(7), answers(8)
    assert a == b
    assert all(x != y for x, y in zip(a, c))
