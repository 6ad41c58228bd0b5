"""The history fast path (tgkit.fastpath) against Telethon's own decoding, message kind by message kind.

Every check compares with ``convert.message_row`` of what Telethon decodes from the same bytes: the
fast path may only ever be faster, never different.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers_export import QUIET, dataset_frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from telethon import functions, types
from telethon.extensions import BinaryReader

import tgkit
from tgkit import convert, fastpath
from tgkit.errors import ConfigError
from tgkit.offline import CHANNEL_ID, GROUP_ID, OfflineServer, World, connect_demo
from tgkit.offline.server import serialise_result

I32 = st.integers(-(2**31), 2**31 - 1)
U31 = st.integers(0, 2**31 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
_CHARS = st.characters(exclude_categories=("Cs",))
# mostly short; sometimes long enough for the 254-prefixed length form
TEXT = st.one_of(st.text(_CHARS, max_size=10), st.text(_CHARS, max_size=10).map(lambda t: t + "é" * 140))
DATE = st.builds(lambda s: datetime.fromtimestamp(s, UTC), U31)


def opt(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


PEER = st.one_of(
    st.builds(types.PeerUser, I64), st.builds(types.PeerChannel, I64), st.builds(types.PeerChat, I64)
)


def _entity_classes() -> list[type]:
    from telethon.tl.alltlobjects import tlobjects

    names = {c.__name__: c for c in tlobjects.values() if c.__name__.startswith("MessageEntity")}
    return [names[k] for k in sorted(names)] + [types.InputMessageEntityMentionName]


_LONG_NAMES = {"user_id", "document_id"}


@st.composite
def entity(draw: Any) -> Any:
    cls = draw(st.sampled_from(_entity_classes()))
    import inspect

    kwargs: dict[str, Any] = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self":
            continue
        ann = str(param.annotation)
        if cls is types.InputMessageEntityMentionName and name == "user_id":
            kwargs[name] = types.InputUser(draw(I64), draw(I64))
        elif name in _LONG_NAMES:
            kwargs[name] = draw(I64)
        elif "datetime" in ann:
            kwargs[name] = draw(DATE)
        elif "bool" in ann:
            kwargs[name] = draw(opt(st.booleans()))
        elif "str" in ann:
            kwargs[name] = draw(TEXT)
        else:
            kwargs[name] = draw(I32)
    return cls(**kwargs)


REACTION = st.one_of(
    st.builds(types.ReactionEmoji, TEXT),
    st.builds(types.ReactionCustomEmoji, I64),
    st.just(types.ReactionPaid()),
    st.just(types.ReactionEmpty()),
)
REACTIONS = st.builds(
    types.MessageReactions,
    results=st.lists(st.builds(types.ReactionCount, REACTION, I32, chosen_order=opt(I32)), max_size=4),
    min=opt(st.booleans()),
    can_see_list=opt(st.booleans()),
    recent_reactions=opt(
        st.lists(
            st.builds(types.MessagePeerReaction, PEER, DATE, REACTION, big=opt(st.booleans())), max_size=2
        )
    ),
)


def _paired(strategy: st.SearchStrategy, **pairs: tuple[str, st.SearchStrategy]) -> st.SearchStrategy:
    """Fields that share one flag bit (Telethon asserts both or neither): drawn together."""

    @st.composite
    def build(draw: Any) -> Any:
        obj = draw(strategy)
        for a, (b, strat) in pairs.items():
            if draw(st.booleans()):
                va, vb = draw(strat)
                setattr(obj, a, va)
                setattr(obj, b, vb)
        return obj

    return build()


FWD_BASE = st.builds(
    types.MessageFwdHeader,
    date=DATE,
    imported=opt(st.booleans()),
    from_id=opt(PEER),
    from_name=opt(TEXT),
    channel_post=opt(I32),
    post_author=opt(TEXT),
    saved_from_name=opt(TEXT),
    saved_date=opt(DATE),
    psa_type=opt(TEXT),
)
FWD = _paired(FWD_BASE, saved_from_peer=("saved_from_msg_id", st.tuples(PEER, I32)))
REPLY = st.one_of(
    st.builds(
        types.MessageReplyHeader,
        reply_to_msg_id=opt(I32),
        reply_to_top_id=opt(I32),
        forum_topic=opt(st.booleans()),
        reply_to_peer_id=opt(PEER),
        quote_text=opt(TEXT),
        quote_entities=opt(st.lists(entity(), max_size=2)),
        quote_offset=opt(I32),
    ),
    st.builds(types.MessageReplyStoryHeader, PEER, I32),
)
REPLIES_BASE = st.builds(
    types.MessageReplies,
    replies=I32,
    replies_pts=I32,
    recent_repliers=opt(st.lists(PEER, max_size=2)),
    max_id=opt(I32),
    read_max_id=opt(I32),
)
REPLIES = _paired(REPLIES_BASE, comments=("channel_id", st.tuples(st.just(True), I64)))
BYTES = st.binary(max_size=8)
PHOTO_SIZE = st.one_of(
    st.builds(types.PhotoSize, TEXT, I32, I32, I32),
    st.builds(types.PhotoSizeProgressive, TEXT, I32, I32, st.lists(I32, min_size=1, max_size=3)),
    st.builds(types.PhotoStrippedSize, TEXT, BYTES),
    st.builds(types.PhotoCachedSize, TEXT, I32, I32, BYTES),
    st.builds(types.PhotoPathSize, TEXT, BYTES),
    st.builds(types.PhotoSizeEmpty, TEXT),
)
PHOTO = st.one_of(
    st.builds(
        types.Photo,
        id=I64,
        access_hash=I64,
        file_reference=BYTES,
        date=DATE,
        sizes=st.lists(PHOTO_SIZE, max_size=4),
        dc_id=I32,
        has_stickers=opt(st.booleans()),
    ),
    st.builds(types.PhotoEmpty, I64),
)
STICKERSET = st.one_of(
    st.builds(types.InputStickerSetID, I64, I64),
    st.builds(types.InputStickerSetShortName, TEXT),
    st.just(types.InputStickerSetEmpty()),
)
DOC_ATTR = st.one_of(
    st.builds(types.DocumentAttributeFilename, TEXT),
    st.builds(
        types.DocumentAttributeVideo,
        duration=st.floats(0, 1e6),
        w=I32,
        h=I32,
        round_message=opt(st.booleans()),
        supports_streaming=opt(st.booleans()),
        preload_prefix_size=opt(I32),
        video_codec=opt(TEXT),
    ),
    st.builds(
        types.DocumentAttributeAudio,
        duration=I32,
        voice=opt(st.booleans()),
        title=opt(TEXT),
        performer=opt(TEXT),
        waveform=opt(BYTES),
    ),
    st.builds(types.DocumentAttributeImageSize, I32, I32),
    st.builds(types.DocumentAttributeSticker, TEXT, STICKERSET, mask=opt(st.booleans())),
    st.just(types.DocumentAttributeAnimated()),
    st.just(types.DocumentAttributeHasStickers()),
    st.builds(types.DocumentAttributeCustomEmoji, TEXT, STICKERSET, free=opt(st.booleans())),
)
DOCUMENT = st.one_of(
    st.builds(
        types.Document,
        id=I64,
        access_hash=I64,
        file_reference=BYTES,
        date=DATE,
        mime_type=TEXT,
        size=I64,
        dc_id=I32,
        attributes=st.lists(DOC_ATTR, max_size=4),
        thumbs=opt(st.lists(PHOTO_SIZE, max_size=2)),
    ),
    st.builds(types.DocumentEmpty, I64),
)
POLL = st.builds(
    types.MessageMediaPoll,
    poll=st.builds(
        types.Poll,
        id=I64,
        question=st.builds(types.TextWithEntities, TEXT, st.just([])),
        answers=st.lists(
            st.builds(types.PollAnswer, st.builds(types.TextWithEntities, TEXT, st.just([])), BYTES),
            max_size=3,
        ),
        hash=I64,
        quiz=opt(st.booleans()),
    ),
    results=st.builds(types.PollResults, total_voters=opt(I32)),
)
GEO = st.builds(types.GeoPoint, st.floats(-180, 180), st.floats(-90, 90), I64)
MEDIA = st.one_of(
    st.none(),
    st.just(types.MessageMediaEmpty()),
    st.builds(types.MessageMediaPhoto, photo=opt(PHOTO), spoiler=opt(st.booleans()), ttl_seconds=opt(I32)),
    st.builds(
        types.MessageMediaDocument,
        document=opt(DOCUMENT),
        video=opt(st.booleans()),
        voice=opt(st.booleans()),
        ttl_seconds=opt(I32),
    ),
    POLL,
    st.builds(
        types.MessageMediaWebPage,
        st.one_of(
            st.builds(types.WebPageEmpty, I64, url=opt(TEXT)), st.builds(types.WebPagePending, I64, DATE)
        ),
    ),
    st.builds(types.MessageMediaGeo, GEO),
    st.builds(types.MessageMediaGeoLive, GEO, I32, heading=opt(I32)),
    st.builds(types.MessageMediaVenue, GEO, TEXT, TEXT, TEXT, TEXT, TEXT),
    st.builds(types.MessageMediaContact, TEXT, TEXT, TEXT, TEXT, I64),
    st.builds(types.MessageMediaDice, I32, TEXT),
    st.just(types.MessageMediaUnsupported()),
)
ACTION = st.one_of(
    st.just(types.MessageActionPinMessage()),
    st.just(types.MessageActionHistoryClear()),
    st.just(types.MessageActionEmpty()),
    st.builds(types.MessageActionChatCreate, TEXT, st.lists(I64, max_size=3)),
    st.builds(types.MessageActionChannelCreate, TEXT),
    st.builds(types.MessageActionChatAddUser, st.lists(I64, max_size=3)),
    st.builds(types.MessageActionChatJoinedByLink, I64),
    st.builds(types.MessageActionChatEditTitle, TEXT),
    st.builds(types.MessageActionChatDeleteUser, I64),
)
MARKUP = st.one_of(
    st.builds(types.ReplyKeyboardHide, selective=opt(st.booleans())),
    st.builds(types.ReplyKeyboardForceReply, single_use=opt(st.booleans()), placeholder=opt(TEXT)),
)
MESSAGE_BASE = st.builds(
    types.Message,
    id=I32,
    peer_id=PEER,
    date=DATE,
    message=TEXT,
    out=opt(st.booleans()),
    mentioned=opt(st.booleans()),
    silent=opt(st.booleans()),
    post=opt(st.booleans()),
    pinned=opt(st.booleans()),
    noforwards=opt(st.booleans()),
    offline=opt(st.booleans()),
    from_id=opt(PEER),
    from_boosts_applied=opt(I32),
    saved_peer_id=opt(PEER),
    fwd_from=opt(FWD),
    via_bot_id=opt(I64),
    via_business_bot_id=opt(I64),
    reply_to=opt(REPLY),
    media=MEDIA,
    reply_markup=opt(MARKUP),
    entities=opt(st.lists(entity(), max_size=5)),
    replies=opt(REPLIES),
    edit_date=opt(DATE),
    post_author=opt(TEXT),
    grouped_id=opt(I64),
    reactions=opt(REACTIONS),
    restriction_reason=opt(st.lists(st.builds(types.RestrictionReason, TEXT, TEXT, TEXT), max_size=2)),
    ttl_period=opt(I32),
    effect=opt(I64),
    paid_message_stars=opt(I64),
)
MESSAGE = _paired(MESSAGE_BASE, views=("forwards", st.tuples(I32, I32)))
SERVICE = st.builds(
    types.MessageService,
    id=I32,
    peer_id=PEER,
    date=DATE,
    action=ACTION,
    out=opt(st.booleans()),
    post=opt(st.booleans()),
    silent=opt(st.booleans()),
    from_id=opt(PEER),
    reply_to=opt(REPLY),
    reactions=opt(REACTIONS),
    ttl_period=opt(I32),
)
EMPTY = st.builds(types.MessageEmpty, id=I32, peer_id=opt(PEER))
USER = st.builds(
    types.User,
    id=st.integers(1, 50),
    access_hash=opt(I64),
    first_name=opt(TEXT),
    username=opt(TEXT),
    min=opt(st.booleans()),
)
CHAT = st.one_of(
    st.builds(
        types.Channel,
        id=st.integers(1, 50),
        title=TEXT,
        photo=st.just(types.ChatPhotoEmpty()),
        date=DATE,
        access_hash=opt(I64),
        megagroup=opt(st.booleans()),
    ),
    st.builds(types.ChatForbidden, st.integers(1, 50), TEXT),
)


@st.composite
def page(draw: Any) -> tuple[Any, int]:
    messages = draw(st.lists(st.one_of(MESSAGE, SERVICE, EMPTY), max_size=6))
    chats = draw(st.lists(CHAT, max_size=3))
    users = draw(st.lists(USER, max_size=3))
    kind = draw(st.sampled_from(("channel", "slice", "all")))
    if kind == "channel":
        obj = types.messages.ChannelMessages(
            pts=draw(I32), count=draw(I32), messages=messages, topics=[], chats=chats, users=users,
            inexact=draw(opt(st.booleans())), offset_id_offset=draw(opt(I32)),
        )  # fmt: skip
    elif kind == "slice":
        obj = types.messages.MessagesSlice(
            count=draw(I32), messages=messages, topics=[], chats=chats, users=users,
            inexact=draw(opt(st.booleans())), next_rate=draw(opt(I32)), offset_id_offset=draw(opt(I32)),
        )  # fmt: skip
    else:
        obj = types.messages.Messages(messages=messages, topics=[], chats=chats, users=users)
    return obj, draw(I64)


def telethon_rows(body: bytes, chat_id: int) -> tuple[Any, list[int], list[tuple | None]]:
    tl = BinaryReader(body).tgread_object()
    return tl, [m.id for m in tl.messages], [convert.message_row(m, chat_id) for m in tl.messages]


def read_fast(body: bytes, chat_id: int) -> Any:
    """Through the hook exactly as a sender calls it."""
    req = fastpath.history_request(types.InputPeerEmpty(), chat_id=chat_id, offset_id=0, add_offset=0)
    assert type(req) is fastpath.FastHistoryRequest
    return req.read_result(BinaryReader(body))


# --------------------------------------------------------------------------------------------------
# Differential properties


@settings(max_examples=120, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
@given(page(), st.binary(max_size=12))
def test_fast_rows_equal_message_row_of_telethon(data: tuple[Any, int], trailing: bytes) -> None:
    obj, chat_id = data
    body = bytes(obj) + trailing  # an RpcResult body may carry the container's following bytes
    tl, ids, rows = telethon_rows(body, chat_id)
    got = read_fast(body, chat_id)
    assert type(got) is fastpath.FastPage, "a well-formed page must be read fast"
    view = fastpath.page_rows(got, chat_id)
    assert view.fast
    assert view.ids == ids
    assert view.rows == rows
    assert got.count == getattr(tl, "count", None)
    assert got.CONSTRUCTOR_ID == tl.CONSTRUCTOR_ID
    assert [u.to_dict() for u in got.users] == [u.to_dict() for u in tl.users]
    assert [c.to_dict() for c in got.chats] == [c.to_dict() for c in tl.chats]
    for i, m in enumerate(tl.messages):
        assert view.message_for(i).to_dict() == m.to_dict()


@settings(max_examples=60, deadline=None, print_blob=True)
@given(page(), st.data())
def test_corrupt_pages_never_give_other_rows_than_telethon(data: tuple[Any, int], draw: Any) -> None:
    obj, chat_id = data
    body = bytearray(bytes(obj))
    if draw.draw(st.booleans()):
        del body[draw.draw(st.integers(0, len(body) - 1)) :]  # truncated
    else:
        for _ in range(draw.draw(st.integers(1, 4))):  # bytes flipped
            body[draw.draw(st.integers(0, len(body) - 1))] ^= draw.draw(st.integers(1, 255))
    corrupt = bytes(body)
    try:
        _tl, ids, rows = telethon_rows(corrupt, chat_id)
    except Exception:
        with pytest.raises(Exception):  # noqa: B017 - Telethon's own error, whatever it is
            read_fast(corrupt, chat_id)
        return
    view = fastpath.page_rows(read_fast(corrupt, chat_id), chat_id)
    assert (view.ids, view.rows) == (ids, rows)


@pytest.mark.parametrize("world_seed", [1, 7, 2024])
def test_whole_worlds_read_fast_and_identically(world_seed: int) -> None:
    world = World(seed=world_seed, channel_messages=700, group_messages=400, videos=False)
    server = OfflineServer(world)
    pages = 0
    for chat_id in world.chats:
        ids = world.ids(chat_id)
        for start in range(0, max(len(ids), 1), 100):
            body = serialise_result(server._messages_answer(chat_id, ids[start : start + 100], len(ids)))
            _tl, want_ids, want = telethon_rows(body, chat_id)
            view = fastpath.page_rows(read_fast(body, chat_id), chat_id)
            assert view.fast, f"seed {world_seed}: chat {chat_id} page at {start} was not read fast"
            assert view.ids == want_ids, f"seed {world_seed}"
            for got, exp in zip(view.rows, want, strict=True):
                assert got == exp, f"seed {world_seed}, chat {chat_id}: {got} != {exp}"
            pages += 1
    assert pages >= 12


# --------------------------------------------------------------------------------------------------
# Fallback


def _demo_body() -> bytes:
    world = World(seed=3, channel_messages=120, group_messages=10, videos=False)
    server = OfflineServer(world)
    ids = world.ids(CHANNEL_ID)
    return serialise_result(server._messages_answer(CHANNEL_ID, ids[:100], len(ids)))


def test_a_failing_fast_read_falls_back_to_telethon(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    body = _demo_body()
    _tl, ids, rows = telethon_rows(body, CHANNEL_ID)
    fastpath._prepare()

    def broken(buf: bytes, p: int) -> Any:
        raise RuntimeError("simulated decoder bug")

    monkeypatch.setitem(fastpath._DECODERS, types.PeerUser.CONSTRUCTOR_ID, broken)
    monkeypatch.setitem(fastpath._DECODERS, types.PeerChannel.CONSTRUCTOR_ID, broken)
    with caplog.at_level(logging.WARNING, logger="tgkit.fastpath"):
        got = read_fast(body, CHANNEL_ID)
    assert type(got) is types.messages.ChannelMessages  # Telethon's decoding of the same page
    view = fastpath.page_rows(got, CHANNEL_ID)
    assert not view.fast
    assert (view.ids, view.rows) == (ids, rows)
    assert "simulated decoder bug" in caplog.text


@pytest.mark.parametrize("cut", [1, 7, 100, 1000, -5, -1])
def test_truncated_page_raises_like_telethon_and_gives_no_rows(cut: int) -> None:
    body = _demo_body()
    truncated = body[:cut]
    with pytest.raises((BufferError, struct.error)):
        BinaryReader(truncated).tgread_object()
    with pytest.raises((BufferError, struct.error)):
        read_fast(truncated, CHANNEL_ID)
    with pytest.raises((BufferError, struct.error, IndexError)):
        fastpath.decode_page(truncated, CHANNEL_ID)


def test_not_modified_and_other_answers_are_telethons() -> None:
    body = bytes(types.messages.MessagesNotModified(count=5))
    got = read_fast(body, CHANNEL_ID)
    assert type(got) is types.messages.MessagesNotModified
    view = fastpath.page_rows(got, CHANNEL_ID)
    assert (view.ids, view.rows, view.fast) == ([], [], False)


def test_page_rows_of_another_chat_id_are_recomputed() -> None:
    body = _demo_body()
    page_obj = read_fast(body, CHANNEL_ID)
    _tl, _ids, rows = telethon_rows(body, 99)
    view = fastpath.page_rows(page_obj, 99)
    assert view.rows == rows and not view.fast


# --------------------------------------------------------------------------------------------------
# Switch


def test_switch_env_and_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    def kind(**kw: Any) -> type:
        return type(
            fastpath.history_request(types.InputPeerEmpty(), chat_id=1, offset_id=0, add_offset=0, **kw)
        )

    assert kind() is fastpath.FastHistoryRequest
    monkeypatch.setenv("TGKIT_FAST_DECODE", "0")
    assert kind() is functions.messages.GetHistoryRequest
    assert kind(fast=True) is fastpath.FastHistoryRequest  # the argument wins
    monkeypatch.setenv("TGKIT_FAST_DECODE", "1")
    assert kind(fast=False) is functions.messages.GetHistoryRequest
    monkeypatch.setenv("TGKIT_FAST_DECODE", "maybe")
    with pytest.raises(ConfigError, match="TGKIT_FAST_DECODE"):
        kind()


def test_wrapped_requests_pass_read_result_through() -> None:
    fastpath.install_wrapper_passthrough()
    body = _demo_body()
    inner = fastpath.history_request(types.InputPeerEmpty(), chat_id=CHANNEL_ID, offset_id=0, add_offset=0)
    for wrapper in (
        functions.InvokeWithTakeoutRequest(5, inner),
        functions.InvokeWithoutUpdatesRequest(inner),
        functions.InvokeWithLayerRequest(1, functions.InvokeWithoutUpdatesRequest(inner)),
    ):
        assert type(wrapper.read_result(BinaryReader(body))) is fastpath.FastPage
    plain = functions.messages.GetHistoryRequest(types.InputPeerEmpty(), 0, None, 0, 100, 0, 0, 0)
    got = functions.InvokeWithTakeoutRequest(5, plain).read_result(BinaryReader(body))
    assert type(got) is types.messages.ChannelMessages  # unchanged for requests without their own reader


# --------------------------------------------------------------------------------------------------
# Through the real Telethon client on the double


def test_session_keeps_learning_peers_from_fast_pages() -> None:
    async def go() -> None:
        world = World(seed=5, channel_messages=50, group_messages=50, videos=False)
        client = await connect_demo(world=world)
        try:
            peer = await client.get_input_entity("@tgkit_group")
            uid = next(u for u in world.users if not world.users[u].is_self)
            with pytest.raises(ValueError):
                client.session.get_input_entity(types.PeerUser(uid))
            req = fastpath.history_request(peer, chat_id=GROUP_ID, offset_id=0, add_offset=0)
            page_obj = await client(req)
            assert type(page_obj) is fastpath.FastPage
            got = client.session.get_input_entity(types.PeerUser(uid))
            assert got.user_id == uid and got.access_hash == world.users[uid].access_hash
        finally:
            await client.disconnect()

    asyncio.run(go())


def _export(tmp: Path, name: str, **kw: Any) -> tuple[tgkit.ExportResult, Any]:
    async def go() -> tgkit.ExportResult:
        world = World(seed=11, channel_messages=450, group_messages=250, videos=False)
        client = await connect_demo(world=world, **kw.pop("client_kw", {}))
        try:
            return await tgkit.export_chat(
                client, kw.pop("chat", "@tgkit_demo"), tmp / name, **{**QUIET, **kw}
            )
        finally:
            await client.disconnect()

    result = asyncio.run(go())
    return result, dataset_frame(tmp / name)


@pytest.mark.parametrize("chat", ["@tgkit_demo", "@tgkit_group"])
def test_export_datasets_identical_with_switch_on_and_off(tmp_path: Path, chat: str) -> None:
    fast, df_fast = _export(tmp_path, "fast", chat=chat, fast_decode=True, batch_size=120)
    slow, df_slow = _export(tmp_path, "slow", chat=chat, fast_decode=False, batch_size=120)
    assert df_fast.height == fast.messages > 200
    assert_frame_equal(df_fast, df_slow)
    assert fast.metrics is not None and slow.metrics is not None
    assert fast.metrics.counters.get("pages_fast") == fast.pages
    assert "pages_telethon" not in fast.metrics.counters
    assert slow.metrics.counters.get("pages_telethon") == slow.pages


def test_export_env_switch_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TGKIT_FAST_DECODE", "0")
    result, _ = _export(tmp_path, "env", limit=150)
    assert result.metrics is not None
    assert result.metrics.counters.get("pages_telethon") == result.pages
    assert "pages_fast" not in result.metrics.counters


def test_export_with_media_and_refresh_identical(tmp_path: Path) -> None:
    kw = {"chat": "@tgkit_demo", "media": ["photo"], "limit": 160}
    fast, df_fast = _export(tmp_path, "fast", fast_decode=True, **kw)
    slow, df_slow = _export(tmp_path, "slow", fast_decode=False, **kw)
    assert fast.media_downloaded == slow.media_downloaded > 0
    assert_frame_equal(df_fast, df_slow)
    # a refresh run re-reads pages through the same path
    again, df_again = _export(tmp_path, "fast", fast_decode=True, refresh_days=30)
    assert again.metrics is not None and again.metrics.counters.get("pages_fast") == again.pages
    assert_frame_equal(df_again.filter(df_again["id"] <= df_fast["id"].max()), df_fast)


@pytest.mark.parametrize("mode", ["takeout", "no_updates"])
def test_fast_path_stays_on_under_wrapped_requests(tmp_path: Path, mode: str) -> None:
    kw: dict[str, Any] = {"takeout": True} if mode == "takeout" else {"client_kw": {"receive_updates": False}}
    result, df = _export(tmp_path, mode, limit=300, **kw)
    _, df_plain = _export(tmp_path, mode + "_plain", limit=300, fast_decode=False, **kw)
    assert result.metrics is not None
    assert result.metrics.counters.get("pages_fast") == result.pages >= 3
    assert_frame_equal(df, df_plain)
