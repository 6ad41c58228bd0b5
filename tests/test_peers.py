"""PeerCache: key normalisation, LRU/TTL, the msgpack file (round trip, merge, hostile input), learn()
from real Telethon TL objects, and resolve()/with_peer() against a small counting client."""

from __future__ import annotations

import asyncio
import os
import random
import stat
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from telethon.errors.rpcerrorlist import ChannelInvalidError, UsernameNotOccupiedError
from telethon.extensions import BinaryReader
from telethon.tl import types

from tgkit.errors import ConfigError, PeerNotFound
from tgkit.peers import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_FILE_BYTES,
    PeerCache,
    PeerCacheWarning,
    _parse,
    marked_id,
    normalise_key,
)
from tgkit.records import CacheEntry

CH = -1_000_000_000_000  # Telethon's channel mark: marked = CH - id


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def channel(id: int = 123, ahash: int = 555, username: str | None = "durov", at: float = 1.0) -> CacheEntry:
    return CacheEntry("channel", id, ahash, username, at)


def user(id: int = 42, ahash: int = -7, username: str | None = "bob_one", at: float = 1.0) -> CacheEntry:
    return CacheEntry("user", id, ahash, username, at)


def tl_channel(id: int = 123, ahash: int | None = 555, username: str | None = "DurovChannel", **kw: Any):
    return types.Channel(
        id=id, title="T", photo=types.ChatPhotoEmpty(), date=None, access_hash=ahash, username=username, **kw
    )


def roundtrip_tl(obj: Any) -> Any:
    """Serialise and parse with Telethon's own TL code, as a response from Telegram would be."""
    return BinaryReader(bytes(obj)).tgread_object()


# ------------------------------------------------------------------------------------------ keys


@pytest.mark.parametrize(
    "raw",
    [
        "durov",
        "@durov",
        "@Durov",
        "DUROV",
        "  @durov ",
        "t.me/durov",
        "T.ME/Durov/",
        "https://t.me/durov",
        "http://t.me/durov/123",
        "https://www.t.me/durov",
        "https://t.me/durov/12/34?single",
        "https://t.me/s/durov",
        "https://telegram.me/durov",
        "telegram.dog/durov#x",
        "https://durov.t.me/",
        "tg://resolve?domain=durov&post=5",
    ],
)
def test_username_forms_normalise_to_one_key(raw):
    assert normalise_key(raw) == "durov"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (42, 42),
        ("42", 42),
        (-123, -123),  # a marked chat id
        ("-1000000000123", CH - 123),
        (CH - 123, CH - 123),
        ("https://t.me/c/123/45", CH - 123),
        ("t.me/c/123", CH - 123),
        ("me", "me"),
        ("self", "me"),
    ],
)
def test_id_forms(raw, expected):
    assert normalise_key(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "https://t.me/+AbCdEf123",
        "t.me/joinchat/AbCdEf123",
        "+15551234567",
        "",
        "@",
        "a",
        "bad__name",
        "name_",
        "1abc",
        "https://example.com/durov",
        "t.me/addstickers/pack",
        "t.me/durov/notapost",
        "t.me/c/abc",
        "tg://join?invite=abc",
        "@durov/1",
        0,
        CH,
        True,
        1.5,
        None,
    ],
)
def test_bad_keys_raise_config_error(raw):
    with pytest.raises(ConfigError):
        normalise_key(raw)


def test_bool_is_not_an_id_even_after_int_one_was_seen():
    assert normalise_key(1) == 1
    with pytest.raises(ConfigError):
        normalise_key(True)
    cache = PeerCache(False)
    cache.put(user(1, username=None))
    with pytest.raises(ConfigError):
        cache.get(True)


usernames = st.from_regex(r"\A[a-z](?:[a-z0-9]|_(?=[a-z0-9])){1,30}[a-z0-9]\Z")


@given(name=usernames, data=st.data())
def test_normalisation_is_case_and_decoration_insensitive(name, data):
    cased = "".join(c.upper() if data.draw(st.booleans()) else c for c in name)
    prefix = data.draw(
        st.sampled_from(["", "@", "t.me/", "https://t.me/", "http://telegram.me/", "tg://resolve?domain="])
    )
    suffix = data.draw(st.sampled_from(["", "/"])) if "://" in prefix or "t.me" in prefix else ""
    if prefix.startswith("tg://"):
        suffix = ""
    assert normalise_key(prefix + cased + suffix) == name
    assert normalise_key(normalise_key(prefix + cased)) == name  # idempotent


@given(n=st.integers(min_value=1, max_value=2**62))
def test_int_and_str_ids_agree(n):
    assert normalise_key(str(n)) == normalise_key(n) == n
    if n < 10**12:
        assert normalise_key(str(CH - n)) == CH - n


def test_marked_id_matches_telethon():
    from telethon import utils

    assert marked_id("channel", 123) == utils.get_peer_id(types.PeerChannel(123))
    assert marked_id("chat", 123) == utils.get_peer_id(types.PeerChat(123))
    assert marked_id("user", 123) == utils.get_peer_id(types.PeerUser(123))


# ------------------------------------------------------------------------------------------ memory


def test_bare_and_marked_channel_ids_share_one_entry():
    cache = PeerCache(False)
    cache.put(channel(123))
    for key in (123, "123", CH - 123, "-1000000000123", "t.me/c/123/9", "@durov", "https://t.me/DUROV"):
        assert cache.get(key) == channel(123), key
    assert cache.get(-123) is None  # the marked *chat* id 123 is another peer


def test_bare_id_prefers_user_then_channel_then_chat():
    cache = PeerCache(False)
    cache.put(CacheEntry("chat", 7, None, None, 1.0))
    assert cache.get(7).kind == "chat"
    cache.put(channel(7, username=None))
    assert cache.get(7).kind == "channel"
    cache.put(user(7, username=None))
    assert cache.get(7).kind == "user"
    assert cache.get(CH - 7).kind == "channel" and cache.get(-7).kind == "chat"


def test_put_aliases_and_rejects_bad_entries():
    cache = PeerCache(False)
    cache.put(channel(), "@OtherName", CH - 123, 123)
    assert cache.get("othername") == cache.get("durov") == channel()
    with pytest.raises(ValueError):
        cache.put(channel(), 999)
    for bad in (
        CacheEntry("bot", 1, 1, None, 1.0),
        CacheEntry("user", True, 1, None, 1.0),
        CacheEntry("user", 0, 1, None, 1.0),
        CacheEntry("channel", 10**12, 1, None, 1.0),
        CacheEntry("channel", 1, None, None, 1.0),
        CacheEntry("channel", 1, 2**63, None, 1.0),
        CacheEntry("chat", 1, 5, None, 1.0),
        CacheEntry("user", 1, 1, "no", 1.0),
        CacheEntry("user", 1, 1, None, float("nan")),
    ):
        with pytest.raises(ValueError):
            cache.put(bad)
    assert len(cache) == 1


def test_lru_eviction_and_stats():
    cache = PeerCache(False, max_entries=3)
    for i in range(1, 4):
        cache.put(user(i, username=f"user{i}x"))
    assert cache.get("user1x") is not None  # touch 1: now 2 is least recently used
    cache.put(user(4, username="user4x"))
    assert cache.get("user2x") is None and cache.get(2) is None
    assert [e.id for e in cache.entries()] == [3, 1, 4]
    s = cache.stats()
    assert s["evictions"] == 1 and s["entries"] == 3
    assert s["hits"] == 1 and s["misses"] == 2 and s["api_calls_saved"] == 1
    assert s["hit_rate"] == pytest.approx(1 / 3)
    assert "user2x" not in cache and "user4x" in cache


def test_ttl_expiry_counts_as_miss():
    clock = Clock()
    cache = PeerCache(False, ttl=60, clock=clock)
    cache.learn(tl_channel())
    clock.t += 59
    assert cache.get("durovchannel") is not None
    clock.t += 2
    assert cache.get("durovchannel") is None
    assert cache.stats()["expired"] == 1 and cache.stats()["misses"] == 1 and len(cache) == 0


def test_invalidate():
    cache = PeerCache(False)
    cache.put(channel(), "alias_name")
    assert cache.invalidate("t.me/durov") is True
    assert cache.get("durov") is None and cache.get("alias_name") is None and cache.get(123) is None
    assert cache.invalidate(123) is False
    assert cache.stats()["invalidations"] == 1


# ------------------------------------------------------------------------------------------ learn()


def test_learn_from_resolved_peer_real_tl():
    bob = types.User(id=42, access_hash=-7, username="Bob_One", first_name="B")
    result = roundtrip_tl(
        types.contacts.ResolvedPeer(peer=types.PeerChannel(123), chats=[tl_channel()], users=[bob])
    )
    cache = PeerCache(False)
    assert cache.learn(result) == 2
    assert cache.get("@durovchannel") == CacheEntry(
        "channel", 123, 555, "DurovChannel", cache.get(123).resolved_at
    )
    assert cache.get("bob_one").access_hash == -7 and cache.get(42).kind == "user"
    assert cache.input_peer(cache.get(CH - 123)) == types.InputPeerChannel(123, 555)
    assert cache.input_peer(cache.get(42)) == types.InputPeerUser(42, -7)


def test_learn_skips_min_hashless_and_empty():
    result = roundtrip_tl(
        types.messages.Chats(
            chats=[
                tl_channel(1, 11, "minchan", min=True),
                tl_channel(2, None, "nohash"),
                types.ChatEmpty(id=3),
                types.ChatForbidden(id=4, title="x"),
                types.Chat(
                    id=5, title="g", photo=types.ChatPhotoEmpty(), participants_count=2, date=None, version=1
                ),
                types.ChannelForbidden(id=6, access_hash=66, title="gone"),
            ]
        )
    )
    cache = PeerCache(False)
    cache.learn(result)
    cache.learn([types.User(id=9, access_hash=99, min=True, username="minuser"), types.UserEmpty(id=8)])
    assert sorted((e.kind, e.id) for e in cache.entries()) == [("channel", 6), ("chat", 5)]
    assert cache.input_peer(cache.get(-5)) == types.InputPeerChat(5)
    assert "minchan" not in cache and "minuser" not in cache


def test_learn_collectible_usernames_and_renames():
    cache = PeerCache(False)
    ch = tl_channel(
        username=None,
        usernames=[
            types.Username(username="MainName", editable=True, active=True),
            types.Username(username="OldInactive", editable=False, active=False),
            types.Username(username="Collectible", editable=False, active=True),
        ],
    )
    cache.learn(roundtrip_tl(ch))
    assert cache.get("mainname").username == "MainName"
    assert cache.get("collectible") is not None and "oldinactive" not in cache
    # The channel drops "collectible"; another channel takes it: the name must follow.
    cache.learn(tl_channel(username="MainName"))
    assert "collectible" not in cache
    cache.learn(tl_channel(777, 1, "Collectible"))
    assert cache.get("collectible").id == 777


# ------------------------------------------------------------------------------------------ resolve()


class CountingClient:
    """Stands in for TelegramClient.get_input_entity: a name/id table, a call counter, scripted errors."""

    def __init__(self, peers: dict[Any, Any], errors: dict[Any, BaseException] | None = None) -> None:
        self.peers = peers
        self.errors = errors or {}
        self.calls: list[Any] = []

    async def get_input_entity(self, peer: Any) -> Any:
        self.calls.append(peer)
        if peer in self.errors:
            raise self.errors.pop(peer)
        if peer not in self.peers:
            raise ValueError(f'Cannot find any entity corresponding to "{peer}"')
        return self.peers[peer]


def test_resolve_pays_once_then_hits():
    client = CountingClient({"durov": types.InputPeerChannel(123, 555), 42: types.InputPeerUser(42, -7)})
    cache = PeerCache(False)

    async def main():
        a = await cache.resolve(client, "@Durov")
        b = await cache.resolve(client, "https://t.me/durov/5")
        c = await cache.resolve(client, CH - 123)
        d = await cache.resolve(client, 123)
        u = await cache.resolve(client, "42")
        me = await cache.resolve(client, "me")
        return a, b, c, d, u, me

    a, b, c, d, u, me = asyncio.run(main())
    assert a == b == c == d == types.InputPeerChannel(123, 555)
    assert u == types.InputPeerUser(42, -7) and isinstance(me, types.InputPeerSelf)
    assert client.calls == ["durov", 42]  # username as the bare name, ids as marked ints
    s = cache.stats()
    assert s["api_calls"] == 2 and s["api_calls_saved"] == 3 and s["hits"] == 3 and s["misses"] == 2
    assert cache.get(123).username == "durov"


def test_resolve_failures_are_peer_not_found():
    missing = UsernameNotOccupiedError(request=None)
    client = CountingClient({}, {"gone_name": missing})
    cache = PeerCache(False)
    with pytest.raises(PeerNotFound) as info:
        asyncio.run(cache.resolve(client, "@gone_name"))
    assert info.value.__cause__ is missing and info.value.peer == "@gone_name"
    with pytest.raises(PeerNotFound):
        asyncio.run(cache.resolve(client, "never_seen"))  # Telethon's ValueError("Cannot find any entity")
    with pytest.raises(ConfigError):
        asyncio.run(cache.resolve(client, "https://t.me/+invitehash"))
    assert client.calls == ["gone_name", "never_seen"] and len(cache) == 0


def test_with_peer_drops_a_stale_entry_and_resolves_once_more():
    fresh = types.InputPeerChannel(123, 222)
    client = CountingClient({"durov": fresh})
    cache = PeerCache(False)
    cache.put(channel(123, ahash=111))  # stale: Telegram now wants hash 222
    used: list[Any] = []

    async def fetch(peer):
        used.append(peer)
        if peer.access_hash == 111:
            raise ChannelInvalidError(request=None)
        return "messages"

    assert asyncio.run(cache.with_peer(client, "@durov", fetch)) == "messages"
    assert used == [types.InputPeerChannel(123, 111), fresh]
    assert client.calls == ["durov"]  # exactly one re-resolve
    assert cache.get("durov").access_hash == 222 and cache.stats()["invalidations"] == 1


def test_with_peer_gives_up_after_one_retry():
    client = CountingClient({"durov": types.InputPeerChannel(123, 111)})
    cache = PeerCache(False)
    cache.put(channel(123, ahash=111))
    calls = 0

    async def fetch(peer):
        nonlocal calls
        calls += 1
        raise ChannelInvalidError(request=None)

    with pytest.raises(PeerNotFound) as info:
        asyncio.run(cache.with_peer(client, "durov", fetch))
    assert isinstance(info.value.__cause__, ChannelInvalidError)
    assert calls == 2 and client.calls == ["durov"]

    async def other(peer):
        raise RuntimeError("not a peer problem")

    with pytest.raises(RuntimeError):  # other errors pass through untouched, no invalidation
        asyncio.run(cache.with_peer(client, "durov", other))
    assert "durov" in cache


# ------------------------------------------------------------------------------------------ the file


def test_save_load_roundtrip_mode_and_lazy_load(tmp_path):
    path = tmp_path / "sub" / "peers.msgpack"
    with PeerCache(path) as cache:
        cache.put(channel(), "alias_one")
        cache.put(user())
        cache.put(CacheEntry("chat", 5, None, None, 2.5))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(path.parent.glob("*.tmp"))
    again = PeerCache(path)
    assert again._loaded is False  # nothing read until first use
    assert again.get("alias_one") == channel() and again.get(42) == user()
    assert again.get(-5) == CacheEntry("chat", 5, None, None, 2.5)
    assert again.to_polars().height == 3


def test_default_location_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TGKIT_CACHE_DIR", str(tmp_path / "c"))
    cache = PeerCache()
    assert cache.path == tmp_path / "c" / "peers.msgpack"
    cache.put(user())
    cache.close()
    assert cache.path.exists()
    assert PeerCache(False).path is None
    PeerCache(False).save()  # memory only: a no-op


def test_close_only_writes_when_dirty(tmp_path):
    path = tmp_path / "p.msgpack"
    PeerCache(path).close()
    assert not path.exists()


entries_strategy = st.lists(
    st.one_of(
        st.builds(
            CacheEntry,
            st.just("user"),
            st.integers(1, 2**62),
            st.integers(-(2**63), 2**63 - 1),
            st.none() | usernames,
            st.floats(0, 2e9),
        ),
        st.builds(
            CacheEntry,
            st.just("channel"),
            st.integers(1, 10**12 - 1),
            st.integers(-(2**63), 2**63 - 1),
            st.none() | usernames,
            st.floats(0, 2e9),
        ),
        st.builds(
            CacheEntry, st.just("chat"), st.integers(1, 10**12 - 1), st.none(), st.none(), st.floats(0, 2e9)
        ),
    ),
    max_size=30,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=entries_strategy)
def test_cache_msgpack_cache_roundtrip(entries):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "peers.msgpack"
        cache = PeerCache(path)
        for e in entries:
            cache.put(CacheEntry(e.kind, e.id, e.access_hash, e.username, e.resolved_at))
        cache.save()
        loaded = PeerCache(path)
        assert loaded.entries() == cache.entries()
        assert loaded._by_name == cache._by_name


def test_two_writers_merge(tmp_path):
    path = tmp_path / "peers.msgpack"
    a, b = PeerCache(path), PeerCache(path)
    assert len(a) == 0 and len(b) == 0  # both loaded the (missing) file before either wrote
    a.put(user(1, username="from_a"))
    b.put(user(2, username="from_b"))
    a.save()
    b.save()  # last writer: must keep a's entry
    c = PeerCache(path)
    assert c.get("from_a").id == 1 and c.get("from_b").id == 2
    assert b.get("from_a").id == 1  # the merge also taught b


def test_merge_newer_wins_and_invalidation_sticks(tmp_path):
    path = tmp_path / "peers.msgpack"
    clock = Clock(100.0)
    seed = PeerCache(path, clock=clock)
    seed.put(channel(123, ahash=1, at=10.0))
    seed.put(user(42, at=10.0))
    seed.save()
    a, b = PeerCache(path, clock=clock), PeerCache(path, clock=clock)
    assert len(a) == len(b) == 2
    a.put(channel(123, ahash=2, at=50.0))  # a re-resolved the channel later
    a.invalidate(42)  # and learned user 42 is stale
    a.save()
    b.put(user(7, username="other_user"))
    b.save()  # b still holds the old channel and user 42 in memory
    final = PeerCache(path)
    assert final.get(123).access_hash == 2
    assert final.get(42) is None
    assert final.get("other_user").id == 7


# ------------------------------------------------------------------------------------------ hostile files


def _valid_file_bytes(tmp_path: Path) -> bytes:
    p = tmp_path / "valid.msgpack"
    cache = PeerCache(p)
    for i in range(1, 6):
        cache.put(channel(i, ahash=i, username=f"chan{i}x"), f"alias{i}x")
    cache.save()
    return p.read_bytes()


def _pack(*objs: Any) -> bytes:
    return b"".join(msgpack.packb(o) for o in objs)


def _file(rest: bytes, *, version: Any = FORMAT_VERSION, crc: int | None = None) -> bytes:
    """A header with a correct CRC (unless given) over ``rest``, so the parser reaches the body."""
    return msgpack.packb([FORMAT_NAME, version, zlib.crc32(rest) if crc is None else crc]) + rest


GOOD_ROW = ["channel", 123, 555, "durov", 1.0]


def _body(entries=(), names=(), tombstones=()):
    return {"entries": list(entries), "names": list(names), "tombstones": list(tombstones)}


def _rows(*rows: Any) -> bytes:
    return _file(_pack(_body(rows)))


# name -> (file bytes, what the warning must say: proves the intended check fired)
HOSTILE = {
    "empty": (b"", "OutOfData"),
    "random": (bytes(random.Random(4).getrandbits(8) for _ in range(4096)), "corrupt"),
    "deeply_nested": (b"\x91" * 200_000, "StackError|exceeds"),
    "nested_in_body": (_file(b"\x83\xa7entries\x91" + b"\x91" * 100_000), "StackError|exceeds|bad entry"),
    "huge_array_header": (_file(b"\x83\xa7entries\xdd\xff\xff\xff\xff"), "items in entries"),
    "huge_row_header": (_file(b"\x83\xa7entries\x91\xdd\xff\xff\xff\xff"), "exceeds max_array_len"),
    "huge_str": (_file(b"\x83\xdb\xff\xff\xff\xff" + b"x" * 10), "OutOfData|exceeds max_str_len"),
    "huge_map": (_file(b"\xdf\xff\xff\xff\xff"), "body layout"),
    "wrong_version": (_file(_pack(_body([GOOD_ROW])), version=FORMAT_VERSION + 1), "format version 2"),
    "wrong_magic": (_pack(["something.else", 1, 0], _body([GOOD_ROW])), "not a tgkit peer cache"),
    "bad_crc": (_file(_pack(_body([GOOD_ROW])), crc=12345), "checksum"),
    "no_body": (_file(b""), "OutOfData"),
    "body_not_map": (_file(_pack([GOOD_ROW])), "Unexpected type header"),
    "extra_section": (_file(_pack({**_body([GOOD_ROW]), "x": []})), "body layout"),
    "unknown_section": (_file(_pack({"entries": [], "names": [], "x": []})), "unexpected section"),
    "trailing": (_file(_pack(_body([GOOD_ROW]), 1)), "trailing"),
    "id_is_str": (_rows(["channel", "123", 555, "durov", 1.0]), "bad entry \\(id"),
    "id_is_bool": (_rows(["user", True, 555, None, 1.0]), "bad entry \\(id"),
    "hash_is_float": (_rows(["channel", 123, 5.5, None, 1.0]), "access_hash"),
    "hash_missing": (_rows(["user", 123, None, None, 1.0]), "access_hash"),
    "hash_too_big": (_rows(["user", 123, 2**64 - 1, None, 1.0]), "access_hash"),
    "unknown_kind": (_rows(["bot", 123, 5, None, 1.0]), "kind"),
    "chat_with_hash": (_rows(["chat", 123, 5, None, 1.0]), "chat with an access hash"),
    "channel_id_too_big": (_rows(["channel", 10**12, 5, None, 1.0]), "bad entry \\(id"),
    "bad_username": (_rows(["channel", 123, 5, "a b", 1.0]), "username"),
    "short_row": (_rows(["channel", 123, 5]), "bad entry"),
    "bin_value": (_rows(["channel", 123, 5, b"durov", 1.0]), "max_bin_len|username"),
    "nan_time": (_rows(["channel", 123, 5, None, float("nan")]), "resolved_at"),
    "duplicate": (_rows(GOOD_ROW, GOOD_ROW), "duplicate"),
    "dangling_name": (_file(_pack(_body([GOOD_ROW], [["other", 999]]))), "points at no entry"),
    "name_to_wrong_type": (_file(_pack(_body([GOOD_ROW], [["other", "x"]]))), "bad name"),
    "bad_tombstone": (_file(_pack(_body([GOOD_ROW], [], [[1, "x"]]))), "bad tombstone"),
    "bad_utf8": (_file(b"\x83\xa7entries\x91\x95\xa7\xff\xfe\xfd\xfc\xfb\xfa\xf9"), "UnicodeDecodeError"),
}


def _assert_rejected(path: Path, reason: str = "corrupt") -> None:
    cache = PeerCache(path)
    with pytest.warns(PeerCacheWarning, match=reason):
        assert len(cache) == 0
    assert not path.exists()
    assert len(list(path.parent.glob(path.name + ".corrupt-*"))) == 1
    assert cache.get("durov") is None and cache.get(123) is None
    cache.put(user())  # and the cache still works, and writes a fresh file
    cache.save()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert PeerCache(path).get(42) == user()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_is_moved_aside(tmp_path, name):
    path = tmp_path / "peers.msgpack"
    data, reason = HOSTILE[name]
    path.write_bytes(data)
    _assert_rejected(path, reason)


def test_good_row_fixture_is_accepted(tmp_path):
    """The hostile cases differ from this one file in one defect each."""
    path = tmp_path / "peers.msgpack"
    path.write_bytes(_file(_pack(_body([GOOD_ROW], [["durov", CH - 123]]))))
    assert PeerCache(path).get("@durov") == CacheEntry(*GOOD_ROW)


def test_every_truncation_of_a_valid_file_is_rejected(tmp_path):
    data = _valid_file_bytes(tmp_path)
    for n in range(len(data)):  # the parser alone: every prefix must raise (-> moved aside, empty cache)
        with pytest.raises(Exception):  # noqa: B017 -- any failure of the parser counts as corrupt
            _parse(data[:n])
    path = tmp_path / "peers.msgpack"
    for n in (0, 1, len(data) // 2, len(data) - 1):  # and through the file, a few of them
        path.write_bytes(data[:n])
        with pytest.warns(PeerCacheWarning):
            assert len(PeerCache(path)) == 0
        assert not path.exists()
    path.write_bytes(data)
    assert len(PeerCache(path)) == 5


def test_oversized_file_is_rejected_without_reading(tmp_path):
    path = tmp_path / "peers.msgpack"
    with open(path, "wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    _assert_rejected(path, "larger than")


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=512))
def test_random_bytes_never_crash(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "peers.msgpack"
        path.write_bytes(data)
        with pytest.warns(PeerCacheWarning):
            assert len(PeerCache(path)) == 0


def test_every_bit_flip_is_rejected_never_a_wrong_peer(tmp_path):
    """The header CRC turns any single flipped bit into a rejected file, not a wrong id or hash."""
    path = tmp_path / "peers.msgpack"
    cache = PeerCache(path)
    cache.put(channel(123, 555, "durov"))
    cache.put(user(42, -7, "bob_one"))
    cache.save()
    good = path.read_bytes()
    for i in range(len(good)):  # the parser alone (file I/O per flip made this the slowest test)
        for bit in range(8):
            raw = bytearray(good)
            raw[i] ^= 1 << bit
            with pytest.raises(Exception):  # noqa: B017 -- any parser failure means "corrupt"
                _parse(bytes(raw))
    raw = bytearray(good)
    raw[len(good) // 2] ^= 1  # one flip through the file: moved aside, empty cache
    path.write_bytes(bytes(raw))
    with pytest.warns(PeerCacheWarning):
        assert PeerCache(path).entries() == []


def test_unreadable_path_warns_not_crashes(tmp_path):
    path = tmp_path / "peers.msgpack"
    path.mkdir()  # a directory where the file should be
    with pytest.warns(PeerCacheWarning):
        assert PeerCache(path).get("durov") is None


def test_no_symlinked_temp_or_group_readable_file(tmp_path):
    path = tmp_path / "peers.msgpack"
    old = os.umask(0)
    try:
        cache = PeerCache(path)
        cache.put(user())
        cache.save()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "peers.msgpack.lock").stat().st_mode) == 0o600
