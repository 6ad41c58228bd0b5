"""Pseudonymisation (issue 19): nothing identifying survives, the structure does, keys behave."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tgkit
from tgkit.cli import main
from tgkit.errors import ConfigError, TgkitError
from tgkit.offline import CHANNEL_ID, GROUP_ID, SELF_ID, FaultPlan, OfflineServer, World, connect_demo
from tgkit.privacy import MESSAGE_RULES, PSEUDONYM_ID_BASE, Pseudonymiser, pseudonymise
from tgkit.records import MESSAGE_COLUMNS

FIXTURES = Path(__file__).parent / "fixtures" / "desktop"

# Integer columns that hold counts, sizes, offsets, dates or message ids, never a peer id: a demo user id
# (2001..) can legitimately equal a message id there.  Every other integer column is searched.
NOT_PEER_INTS = {
    "id", "reply_to_id", "thread_id", "fwd_post_id", "views", "forwards", "replies", "grouped_id",
    "media_size", "media_width", "media_height", "media_file_id", "reactions_total", "entities.offset",
    "entities.length", "entities.document_id", "reactions.document_id", "reactions.count",
    "participants_count", "first_id", "last_id", "rows", "last_export", "created", "updated_at",
    "refreshed_until", "since", "until", "first_seen", "last_seen", "bytes", "rss", "t", "elapsed_ns",
}  # fmt: skip


LAYOUT1 = Path(__file__).parent / "data" / "layout1"  # exported from World(seed=7)
CHATS = ("@tgkit_demo", "@tgkit_group", "@ada_research")  # a channel, a group, a private chat (self)


def _peers_frame(world: World) -> pl.DataFrame:
    """What a caller knows about the world's peers (a layout-1 dataset has no peers table)."""
    rows: list[dict[str, Any]] = [
        {"id": u.id, "kind": "user", "username": u.username} for u in world.users.values()
    ]
    rows += [{"id": c.id, "kind": "channel", "username": c.username} for c in world.channel_objs.values()]
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=7, channel_messages=300, group_messages=200)


async def _export(world: World, out: Path, chats: tuple[str, ...] = CHATS, **kw: Any) -> list[Any]:
    server = kw.pop("server", None)
    client = await connect_demo(world=world, server=server) if server else await connect_demo(world=world)
    try:
        return [
            await tgkit.export_chat(
                client, chat, out, progress=False, peer_cache=False, monitor=False, media=["document"], **kw
            )
            for chat in chats
        ]
    finally:
        await client.disconnect()


@pytest.fixture(scope="module")
def demo(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small world's channel, group and a private chat exported plainly (layout 2), documents downloaded."""
    out = tmp_path_factory.mktemp("demo") / "ds"
    asyncio.run(_export(world, out))
    return out


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def private(world: World, keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same chats exported with pseudonymise=KEYFILE (nothing plain ever written)."""
    out = tmp_path_factory.mktemp("private") / "ds"
    asyncio.run(_export(world, out, pseudonymise=keys / "k1"))
    return out


def _tables(root: Path) -> dict[str, pl.DataFrame]:
    """Every table of a dataset as tgkit opens it, plus the raw rows of every Parquet file under it."""
    out = {t: tgkit.open_dataset(root, table=t).collect() for t in ("messages", "peers", "chats")}
    for path in sorted(root.rglob("*.parquet")):  # what a raw reader sees (incl. _metrics' resources)
        out[str(path.relative_to(root))] = pl.read_parquet(path, hive_partitioning=False)
    return out


def _leaves(df: pl.DataFrame) -> dict[str, pl.Series]:
    """Every leaf column, struct fields and list elements flattened (``entities.user_id`` ...)."""
    out: dict[str, pl.Series] = {}
    todo = [(name, df.get_column(name)) for name in df.columns]
    while todo:
        name, s = todo.pop()
        if isinstance(s.dtype, pl.List):
            todo.append((name, s.explode()))
        elif isinstance(s.dtype, pl.Struct):
            todo.extend((f"{name}.{f.name}", s.struct.field(f.name)) for f in s.dtype.fields)
        else:
            out[name] = s
    return out


def _identifiers(world: World) -> tuple[set[int], list[str], list[str]]:
    ids = set(world.users)
    usernames = [u.username for u in world.users.values() if u.username]
    names = sorted({n for u in world.users.values() for n in (u.first_name, u.last_name) if n})
    return ids, usernames, names


def _assert_nothing_identifying(root: Path, world: World, *, extra_strings: list[str] = ()) -> None:
    ids, usernames, names = _identifiers(world)
    id_tokens = re.compile(r"(?<!\d)(?:" + "|".join(map(str, ids)) + r")(?!\d)")
    name_words = re.compile(r"\b(?:" + "|".join(map(re.escape, names)) + r")\b")
    handle = re.compile("|".join(map(re.escape, usernames + list(extra_strings))), re.IGNORECASE)
    searched = 0
    for table, df in _tables(root).items():
        for col, s in _leaves(df).items():
            if s.dtype.is_integer() and col.rsplit(".", 1)[-1] not in NOT_PEER_INTS:
                leaked = ids & set(s.drop_nulls().to_list())
                assert not leaked, f"{table}.{col} holds user ids {sorted(leaked)[:5]}"
                searched += 1
            elif s.dtype in (pl.String, pl.Categorical):
                for v in s.cast(pl.String).drop_nulls().unique().to_list():
                    assert not handle.search(v), f"{table}.{col} holds a username: {v!r}"
                    assert not name_words.search(v), f"{table}.{col} holds a name: {v!r}"
                    assert not id_tokens.search(v), f"{table}.{col} holds a user id: {v!r}"
                searched += 1
    assert searched > 10
    for path in root.rglob("*"):  # file and folder names (_media, _state, _metrics ...), every JSON file
        rel = str(path.relative_to(root))
        assert not id_tokens.search(rel) and not handle.search(rel), rel
        if path.suffix == ".json":
            text = path.read_text()
            for pattern in (handle, name_words, id_tokens):
                assert not pattern.search(text), (path, pattern.search(text))
            searched += 1
    assert searched > 20


def test_every_message_column_has_a_rule():
    assert tuple(MESSAGE_RULES) == MESSAGE_COLUMNS


def test_the_source_holds_what_the_check_looks_for(demo: Path, world: World):
    """The leak check must be able to fail: run on the source, it finds ids, usernames and names."""
    with pytest.raises(AssertionError):
        _assert_nothing_identifying(demo, world)
    df = tgkit.open_dataset(demo).collect()
    assert df["text"].str.contains("@member_").any()
    assert df["entities"].explode().struct.field("user_id").is_in(list(world.users)).any()
    assert df["fwd_peer_kind"].eq("user").any() and df["media_file_name"].is_not_null().any()
    assert df["chat_id"].is_in(list(world.users)).any()  # the private chat
    assert tgkit.open_dataset(demo, table="peers").collect()["first_name"].is_in(_identifiers(world)[2]).any()


def test_nothing_identifying_survives_layout_1(world: World, keys: Path, tmp_path: Path):
    src = tmp_path / "old"
    shutil.copytree(LAYOUT1, src)
    old = World(seed=7)
    with pytest.raises(AssertionError):  # the fixture holds what the check looks for
        _assert_nothing_identifying(src, old)
    out = pseudonymise(src, tmp_path / "p", key_file=keys / "k1", peers=_peers_frame(old))
    _assert_nothing_identifying(out, old)
    assert (src / "manifest.json").exists() and not (src / "messages").exists()  # the source untouched
    a, b = tgkit.open_dataset(src).collect(), tgkit.open_dataset(out).collect()
    assert a.height == b.height == 35 and sorted(a["chat_id"].unique()) == sorted(b["chat_id"].unique())
    chats = tgkit.open_dataset(out, table="chats").collect()
    assert chats["id"].to_list() == sorted(a["chat_id"].unique()) and chats["rows"].to_list() == [20, 15]
    assert (out / "_manifest.json").is_file() and not (out / "manifest.json").exists()  # written as layout 2
    # media files are not copied by default, and the rows say so
    assert not (out / "_media").exists() and b["media_path"].null_count() == b.height


def test_nothing_identifying_survives_layout_2_with_media(
    demo: Path, world: World, keys: Path, tmp_path: Path
):
    out = pseudonymise(demo, tmp_path / "p", key_file=keys / "k1", copy_media=True)
    _assert_nothing_identifying(out, world)
    peers = tgkit.open_dataset(out, table="peers").collect()
    users = peers.filter(pl.col("kind") == "user")
    assert users.height > 10 and (users["id"] >= PSEUDONYM_ID_BASE).all()
    assert users["phone"].null_count() == users.height and users["last_name"].null_count() == users.height
    channels = peers.filter(pl.col("kind") == "channel")
    titles = {c.title for c in world.channel_objs.values()}
    assert set(channels["title"].to_list()) <= titles and channels.height >= 2  # kept by default
    chats = tgkit.open_dataset(out, table="chats").collect()
    assert chats.height == 3 and chats.filter(pl.col("kind") == "user")["id"].item() >= PSEUDONYM_ID_BASE
    paths = tgkit.open_dataset(out).collect()["media_path"].drop_nulls()
    assert paths.len() > 0 and all((out / p).is_file() for p in paths)
    assert paths.len() == tgkit.open_dataset(demo).collect()["media_path"].drop_nulls().len()


def _aligned(src: Path, out: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    a = tgkit.open_dataset(src).collect().sort("date", "id", "sender_kind", "text", nulls_last=True)
    b = tgkit.open_dataset(out).collect().sort("date", "id", "sender_kind", nulls_last=True)
    assert a.height == b.height and a["id"].equals(b["id"]) and a["date"].equals(b["date"])
    return a, b


def _assert_structure_survives(src: Path, out: Path, world: World) -> None:
    a, b = _aligned(src, out)
    # one relabelling for every id column together: a function, injective, users moved, channels kept
    pairs: set[tuple[int, int]] = set()
    for col in ("chat_id", "sender_id", "fwd_peer_id", "via_bot_id"):
        pairs |= {p for p in zip(a[col].to_list(), b[col].to_list()) if p[0] is not None}
    ea = a["entities"].explode().struct.field("user_id")
    eb = b["entities"].explode().struct.field("user_id")
    pairs |= {p for p in zip(ea.to_list(), eb.to_list()) if p[0] is not None}
    relabel = dict(pairs)
    assert len(relabel) == len(pairs), "one id got two pseudonyms"
    assert len(set(relabel.values())) == len(relabel), "two ids share a pseudonym"
    for old, new in relabel.items():
        if old in world.users:
            assert new >= PSEUDONYM_ID_BASE
        else:
            assert new == old  # channels are kept by default
    assert any(old in world.users for old in relabel)

    def counts(df: pl.DataFrame, *cols: str) -> list[int]:
        return sorted(df.group_by(*cols).len()["len"].to_list())

    assert counts(a, "chat_id", "sender_id") == counts(b, "chat_id", "sender_id")  # messages per sender
    assert counts(a.drop_nulls("reply_to_id"), "chat_id", "reply_to_id") == counts(
        b.drop_nulls("reply_to_id"), "chat_id", "reply_to_id"
    )
    fwd_a = Counter(zip(a["fwd_peer_id"].to_list(), a["chat_id"].to_list()))
    fwd_b = Counter(zip(b["fwd_peer_id"].to_list(), b["chat_id"].to_list()))
    assert sorted(fwd_a.values()) == sorted(fwd_b.values())
    assert {(relabel.get(s, s), relabel.get(c, c)): n for (s, c), n in fwd_a.items()} == dict(fwd_b)


def test_structure_survives(demo: Path, world: World, keys: Path, tmp_path: Path):
    _assert_structure_survives(demo, pseudonymise(demo, tmp_path / "p", key_file=keys / "k1"), world)


def _u16(text: str, off: int, length: int) -> str:
    return text.encode("utf-16-le")[2 * off : 2 * (off + length)].decode("utf-16-le")


def _assert_entities_slice_the_same_spans(src: Path, out: Path, pz: Pseudonymiser) -> None:
    a, b = _aligned(src, out)
    checked = Counter[str]()
    for ta, ea, tb, eb in zip(a["text"], a["entities"], b["text"], b["entities"]):
        if ea is None:
            assert eb is None
            continue
        assert [e["type"] for e in ea] == [e["type"] for e in eb]
        for x, y in zip(ea, eb):
            old, new = _u16(ta, x["offset"], x["length"]), _u16(tb, y["offset"], y["length"])
            if x["type"] == "mention":
                assert new == "@" + pz.username(old[1:])
            elif x["type"] == "mention_name":
                assert new == pz.display_name(x["user_id"]) and y["user_id"] == pz.user_id(x["user_id"])
            else:
                assert new == old
            checked[x["type"]] += 1
    assert checked["mention"] > 5 and checked["mention_name"] > 0 and checked["hashtag"] > 5


def test_entities_slice_the_same_kind_of_span(demo: Path, keys: Path, tmp_path: Path):
    out = pseudonymise(demo, tmp_path / "p", key_file=keys / "k1")
    _assert_entities_slice_the_same_spans(demo, out, Pseudonymiser(keys / "k1"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def _pseudonyms(root: Path) -> set[Any]:
    found: set[Any] = set()
    for df in _tables(root).values():
        for s in _leaves(df).values():
            values = s.drop_nulls().unique().to_list()
            if s.dtype.is_integer():
                found |= {v for v in values if v >= PSEUDONYM_ID_BASE}
            elif s.dtype == pl.String:
                pattern = r"\b(?:u_|file_)\w+|\b(?:User|Name|Channel|Group) [A-Z2-7]{8}\b"
                found |= {w for v in values for w in re.findall(pattern, v)}
    return found


def test_same_key_same_bytes_other_key_unrelated(demo: Path, keys: Path, tmp_path: Path):
    one = _files(pseudonymise(demo, tmp_path / "a", key_file=keys / "k1"))
    two = _files(pseudonymise(demo, tmp_path / "b", key_file=keys / "k1"))
    assert one == two and len(one) >= 9  # three chats: messages, peers and chats files
    other = pseudonymise(demo, tmp_path / "c", key_file=keys / "k2")
    p1, p2 = _pseudonyms(tmp_path / "a"), _pseudonyms(other)
    assert len(p1) > 20 and len(p2) > 20
    assert not p1 & p2


def test_key_file_is_private_and_never_copied(demo: Path, tmp_path: Path):
    key_file = tmp_path / "keys" / "fresh.key"
    key_file.parent.mkdir()
    out = pseudonymise(demo, tmp_path / "p", key_file=key_file, copy_media=True)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    assert len(key) == 32
    pz = Pseudonymiser(key_file)
    assert key.hex() not in repr(pz) and pz.fingerprint in repr(pz)
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key not in data and key.hex().encode() not in data, path
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["privacy"] == {**pz.manifest_entry(), "rows": manifest["privacy"]["rows"],
                                   "media_copied": manifest["privacy"]["media_copied"]}  # fmt: skip
    assert manifest["privacy"]["key_fingerprint"] == pz.fingerprint and pz.fingerprint not in key.hex()
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(pz)


def test_key_file_rules(demo: Path, tmp_path: Path):
    loose = tmp_path / "loose.key"
    loose.write_bytes(os.urandom(32))
    os.chmod(loose, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Pseudonymiser(loose)
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 5)
    os.chmod(short, 0o600)
    with pytest.raises(ConfigError, match="not a tgkit"):
        Pseudonymiser(short)
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match="must not be stored in a dataset"):
        pseudonymise(demo, tmp_path / "out", key_file=tmp_path / "out" / "k")
    with pytest.raises(ConfigError, match="unknown keep"):
        Pseudonymiser(tmp_path / "ok.key", keep=("users",))


def test_another_key_is_refused(demo: Path, keys: Path, tmp_path: Path):
    out = pseudonymise(demo, tmp_path / "p", key_file=keys / "k1")
    pseudonymise(demo, out, key_file=keys / "k1")  # the same key: refreshed in place
    with pytest.raises(ConfigError, match="another key"):
        pseudonymise(demo, out, key_file=keys / "k2")
    with pytest.raises(ConfigError, match="another key"):
        Pseudonymiser(keys / "k2").check_manifest(json.loads((out / "_manifest.json").read_text()))
    with pytest.raises(ConfigError, match="already pseudonymised"):
        pseudonymise(out, tmp_path / "again", key_file=keys / "k1")
    with pytest.raises(ConfigError, match="not pseudonymised; refusing"):  # never overwrites a plain dataset
        pseudonymise(demo, _copy(demo, tmp_path / "plain"), key_file=keys / "k1")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_frame_types_agree_and_keep_nothing(demo: Path, world: World, keys: Path):
    pz = Pseudonymiser(keys / "k1", keep=())
    pz.learn_peers(_peers_frame(world))
    table = tgkit.open_dataset(demo).filter(pl.col("chat_id") == CHANNEL_ID).collect().to_arrow()
    df = pl.DataFrame(pl.from_arrow(table))
    eager = pz.messages(df)
    assert pz.messages(df.lazy()).collect().equals(eager)
    arrow = pz.messages(table)
    assert isinstance(arrow, pa.Table) and arrow.schema == table.schema
    assert pl.DataFrame(pl.from_arrow(arrow)).equals(eager)
    # keep=(): channels are pseudonymised too, ids and handles
    assert (eager["chat_id"] >= PSEUDONYM_ID_BASE).all()
    assert not eager["fwd_peer_id"].drop_nulls().is_in(list(world.channel_objs)).any()
    peers = pz.peers(tgkit.open_dataset(demo, table="peers").collect())
    assert not peers["title"].drop_nulls().is_in([c.title for c in world.channel_objs.values()]).any()


def test_text_handles_links_and_channels(keys: Path):
    pz = Pseudonymiser(keys / "k1")
    pz.add_peer(1001, "channel", "tgkit_demo")
    pz.add_peer(2001, "user", "alice_w")
    text = (
        "hi @alice_w and @TGKIT_DEMO, see https://t.me/alice_w t.me/tgkit_demo/12 telegram.me/@bob_b "
        "http://telegram.dog/carol_c dave_d.t.me t.me/joinchat/AbCdEf tg://user?id=2001 "
        "mail me@example.com 👍@eve_e"
    )
    new, _ = pz.text(text, None)
    for gone in ("alice_w", "bob_b", "carol_c", "dave_d", "eve_e", "id=2001"):
        assert gone not in new
    for kept in ("@TGKIT_DEMO", "t.me/tgkit_demo/12", "t.me/joinchat/AbCdEf", "me@example.com"):
        assert kept in new
    assert new.count(pz.username("alice_w")) == 2 and f"id={pz.user_id(2001)}" in new
    url = pz.rewrite_url("https://t.me/alice_w?start=1")
    assert url == f"https://t.me/{pz.username('alice_w')}?start=1"
    ents = [{"type": "text_url", "offset": 0, "length": 2, "url": "tg://resolve?domain=alice_w",
             "user_id": None, "document_id": None, "language": None}]  # fmt: skip
    _, out = pz.text("hi", ents)
    assert out is not None and out[0]["url"] == f"tg://resolve?domain={pz.username('alice_w')}"


DESKTOP_LEAKS = ("Carol", "Dave", "Erin", "data.csv", "song.mp3", "lecture", '"user_id": 333')


def _dataset_text(root: Path) -> str:
    parts = [json.dumps(df.to_dicts(), default=str) for df in _tables(root).values()]
    parts += [p.read_text() for p in root.rglob("*.json")] + [str(p) for p in root.rglob("*")]
    return "\n".join(parts)


def test_desktop_import_is_pseudonymised(keys: Path, tmp_path: Path):
    src = tmp_path / "desk"
    tgkit.import_desktop(FIXTURES / "new_2023", out=src, progress=False)
    assert any(leak in _dataset_text(src) for leak in DESKTOP_LEAKS)  # the check can fail
    out = pseudonymise(src, tmp_path / "p", key_file=keys / "k1")
    text = _dataset_text(out)
    for leak in DESKTOP_LEAKS:
        assert leak not in text, leak
    assert "Open Data Channel" in text  # a public channel is kept
    assert tgkit.open_dataset(out).collect()["chat_id"].unique().to_list() == [1500000001]


def test_cli_pseudonymise(demo: Path, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exc:
        main(["pseudonymise", "--help"])
    assert exc.value.code == 0 and "--key-file" in capsys.readouterr().out
    assert (
        main(["pseudonymise", str(demo), "--out", str(tmp_path / "p"), "--key-file", str(keys / "k1")]) == 0
    )
    assert Pseudonymiser(keys / "k1").fingerprint in capsys.readouterr().out
    assert (
        main(["pseudonymise", str(demo), "--out", str(tmp_path / "p"), "--key-file", str(keys / "k2")]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another key" in err


def test_cli_export_and_import_take_a_key(keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    for command in ("export", "import-desktop"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--pseudonymise KEYFILE" in capsys.readouterr().out
    out, key = tmp_path / "d", str(keys / "k1")
    assert main(["import-desktop", str(FIXTURES / "new_2023"), "--out", str(out), "--pseudonymise", key]) == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["privacy"]["key_fingerprint"] == Pseudonymiser(key).fingerprint
    capsys.readouterr()
    assert main(["import-desktop", str(FIXTURES / "new_2023"), "--out", str(out)]) == 2  # no plain rows in it
    assert "pseudonymised" in capsys.readouterr().err
    accounts = tmp_path / "accounts.toml"
    accounts.write_text("")
    argv = ["export", "--accounts", str(accounts), "--out", str(tmp_path / "x"), "--pseudonymise", key]
    assert main(argv) == 2 and "--pseudonymise" in capsys.readouterr().err  # never silently plain


# --------------------------------------------------------------------------------------------------
# Export-time pseudonymisation: nothing plain is ever written


def test_a_pseudonymised_export_writes_nothing_identifying(
    private: Path, demo: Path, world: World, keys: Path
):
    _assert_nothing_identifying(private, world)
    _assert_structure_survives(demo, private, world)
    _assert_entities_slice_the_same_spans(demo, private, Pseudonymiser(keys / "k1"))
    manifest = json.loads((private / "_manifest.json").read_text())
    assert manifest["privacy"] == Pseudonymiser(keys / "k1").manifest_entry()
    # media files saved under pseudonymous names only, and the rows point at them
    paths = tgkit.open_dataset(private).collect()["media_path"].drop_nulls()
    assert paths.len() == tgkit.open_dataset(demo).collect()["media_path"].drop_nulls().len() > 0
    assert all((private / p).is_file() for p in paths)
    assert sorted(
        p.relative_to(private).as_posix() for p in (private / "_media").rglob("*") if p.is_file()
    ) == sorted(paths)
    # the peers table: the same rows as pseudonymising the plain export afterwards (but the dates seen)
    pz = Pseudonymiser(keys / "k1")
    seen = ["first_seen", "last_seen"]
    a = tgkit.open_dataset(private, table="peers").collect().drop(seen)
    b = pz.table("peers", tgkit.open_dataset(demo, table="peers").collect()).drop(seen).sort("kind", "id")
    assert a.equals(b) and a.height > 10


def test_a_pseudonymised_export_resumes_and_continues_consistently(world: World, keys: Path, tmp_path: Path):
    out = tmp_path / "p"
    key = keys / "k1"
    plan = FaultPlan().rpc_error("CHANNEL_PRIVATE", request="messages.GetHistory", nth=3)
    with pytest.raises(TgkitError):  # mid-export: the first pages are committed
        asyncio.run(_export(world, out, ("@tgkit_demo",), pseudonymise=key, batch_size=50,
                            server=OfflineServer(world, faults=plan)))  # fmt: skip
    first = tgkit.open_dataset(out).collect()
    assert 0 < first.height < 250
    (resumed,) = asyncio.run(_export(world, out, ("@tgkit_demo",), pseudonymise=key, batch_size=50))
    assert resumed.resumed_from == first["id"].max()
    plain = tmp_path / "plain"
    asyncio.run(_export(world, plain))
    asyncio.run(_export(world, out, ("@tgkit_group", "@ada_research"), pseudonymise=key))
    _assert_structure_survives(plain, out, world)
    # an incremental run after new messages: same pseudonyms, no duplicates
    grown = World(seed=7, channel_messages=300, group_messages=200)
    grown.add_messages(CHANNEL_ID, 40)
    grown.add_messages(GROUP_ID, 7)
    every = ("@tgkit_demo", "@tgkit_group", "@ada_research")
    results = asyncio.run(_export(grown, out, every, pseudonymise=key))
    assert [r.messages for r in results[:2]] == [40, 7] and results[2].messages == 0
    assert results[2].chat_id >= PSEUDONYM_ID_BASE and str(SELF_ID) not in repr(results[2])
    asyncio.run(_export(grown, plain, every))
    _assert_structure_survives(plain, out, grown)
    # a refresh re-reads plain rows and merges them with the committed pseudonymised ones
    (refreshed,) = asyncio.run(_export(grown, out, ("@tgkit_demo",), pseudonymise=key, refresh_days=1))
    assert refreshed.refreshed > 0 and refreshed.messages == 0
    _assert_structure_survives(plain, out, grown)
    df = tgkit.open_dataset(out).collect()
    assert df.select("chat_id", "id").is_duplicated().sum() == 0
    for path in (out / "peers").glob("*.parquet"):  # one row per peer and chat, as in a plain dataset
        assert not pl.read_parquet(path).select("kind", "id").is_duplicated().any(), path
    chats = tgkit.open_dataset(out, table="chats").collect()
    assert chats.height == 3 and not chats["id"].is_duplicated().any()
    _assert_nothing_identifying(out, grown)


def test_keys_and_plain_rows_never_mix_at_export(
    private: Path, demo: Path, world: World, keys: Path, tmp_path: Path
):
    async def calls(out: Path, **kw: Any) -> int:
        client = await connect_demo(world=world)
        try:
            before = sum(client.offline.call_log.snapshot().values())
            with pytest.raises(ConfigError) as exc:
                await tgkit.export_chat(client, "@tgkit_demo", out, progress=False, peer_cache=False, **kw)
            calls.message = str(exc.value)  # type: ignore[attr-defined]
            return sum(client.offline.call_log.snapshot().values()) - before
        finally:
            await client.disconnect()

    copy = _copy(private, tmp_path / "copy")
    assert asyncio.run(calls(copy, pseudonymise=keys / "k2")) == 0
    assert "another key" in calls.message  # type: ignore[attr-defined]
    assert asyncio.run(calls(copy)) == 0  # a plain export refuses a pseudonymised dataset
    assert "pseudonymised" in calls.message  # type: ignore[attr-defined]
    plain = _copy(demo, tmp_path / "plain")
    assert asyncio.run(calls(plain, pseudonymise=keys / "k1")) == 0  # and vice versa
    assert "not pseudonymised" in calls.message  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="must not be stored"):
        asyncio.run(_export(world, tmp_path / "x", ("@tgkit_demo",), pseudonymise=tmp_path / "x" / "k"))
    with pytest.raises(ConfigError, match="pseudonymised"):
        tgkit.import_desktop(FIXTURES / "new_2023", out=copy, progress=False)


def test_a_pseudonymised_dataset_continues_a_pseudonymise_copy(
    demo: Path, world: World, keys: Path, tmp_path: Path
):
    """pseudonymise() writes a dataset an export with the same key continues (same ids, same folders)."""
    out = pseudonymise(demo, tmp_path / "p", key_file=keys / "k1")
    grown = World(seed=7, channel_messages=300, group_messages=200)
    grown.add_messages(GROUP_ID, 3)
    results = asyncio.run(_export(grown, out, pseudonymise=keys / "k1"))
    assert [r.messages for r in results] == [0, 3, 0] and all(r.resumed_from for r in results)
    assert len(list((out / "messages").glob("chat_id=*"))) == 3
    _assert_nothing_identifying(out, grown)


def test_desktop_import_with_pseudonymise(keys: Path, tmp_path: Path):
    out = tmp_path / "p"
    first = tgkit.import_desktop(FIXTURES / "new_2023", out=out, progress=False, pseudonymise=keys / "k1")
    again = tgkit.import_desktop(FIXTURES / "new_2023", out=out, progress=False, pseudonymise=keys / "k1")
    assert first.messages > 0 and again.messages == 0 and again.already_present == first.messages
    text = _dataset_text(out)
    for leak in DESKTOP_LEAKS:
        assert leak not in text, leak
    assert "Open Data Channel" in text
    df = first.open().collect()
    assert df.height == first.messages and df["media_path"].null_count() == df.height
    # the same pseudonyms as pseudonymising a plain import afterwards
    plain = tmp_path / "plain"
    tgkit.import_desktop(FIXTURES / "new_2023", out=plain, progress=False)
    copy = pseudonymise(plain, tmp_path / "copy", key_file=keys / "k1")
    cols = ["chat_id", "id", "sender_id", "fwd_peer_id", "text", "fwd_name", "post_author", "media_file_name"]
    assert (
        tgkit.open_dataset(out)
        .select(cols)
        .collect()
        .sort("chat_id", "id")
        .equals(tgkit.open_dataset(copy).select(cols).collect().sort("chat_id", "id"))
    )


# --------------------------------------------------------------------------------------------------
# The UTF-16 offset rewriting, on random texts


_chars = st.one_of(
    st.characters(codec="utf-8", exclude_categories=("Cs",)),
    st.sampled_from(["😀", "👍🏽", "𝔘", "é", "中", " ", "\n", "@", "."]),  # astral chars: 2 UTF-16 units
)
_plain = st.lists(_chars, max_size=6).map(lambda cs: "".join(cs).replace("@", "").replace(".", ""))
_handle = st.from_regex(r"[a-z][a-z0-9_]{4,12}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), _plain, _handle), min_size=1, max_size=8), st.data())
def test_utf16_offsets_follow_the_replacements(segments: list[tuple[bool, str, str]], data: st.DataObject):
    pz = Pseudonymiser._from_key(b"k" * 32)
    pieces: list[tuple[str, str]] = []  # (old, new) per segment
    for is_mention, plain, handle in segments:
        pieces.append((" " + plain + " ", " " + plain + " "))  # spaces: a handle never glues to a word
        if is_mention:
            pieces.append(("@" + handle, "@" + pz.username(handle)))
    bounds16 = [0]
    for old, _ in pieces:
        bounds16.append(bounds16[-1] + len(old.encode("utf-16-le")) // 2)
    old_text = "".join(o for o, _ in pieces)
    new_text = "".join(n for _, n in pieces)
    ents = []
    for i, (old, _) in enumerate(pieces):
        if old.startswith("@"):
            ents.append({"type": "mention", "offset": bounds16[i], "length": bounds16[i + 1] - bounds16[i],
                         "pieces": (i, i + 1)})  # fmt: skip
    # other entities over whole runs of pieces (bold, italic): they must cover the same pieces afterwards
    spans = data.draw(
        st.lists(st.tuples(st.integers(0, len(pieces)), st.integers(0, len(pieces))), max_size=4)
    )
    for a, b in spans:
        a, b = min(a, b), max(a, b)
        ents.append(
            {"type": "bold", "offset": bounds16[a], "length": bounds16[b] - bounds16[a], "pieces": (a, b)}
        )
    # entities with one boundary inside a mention: they stretch to the whole replacement
    mentions = [i for i, (old, _) in enumerate(pieces) if old.startswith("@")]
    for i in data.draw(st.lists(st.sampled_from(mentions), max_size=3)) if mentions else ():
        k = data.draw(st.integers(1, bounds16[i + 1] - bounds16[i] - 1))
        if data.draw(st.booleans()):  # ends inside
            a = data.draw(st.integers(0, i))
            ents.append({"type": "italic", "offset": bounds16[a], "length": bounds16[i] + k - bounds16[a],
                         "pieces": (a, i + 1)})  # fmt: skip
        else:  # starts inside
            b = data.draw(st.integers(i + 1, len(pieces)))
            ents.append({"type": "italic", "offset": bounds16[i] + k, "length": bounds16[b] - bounds16[i] - k,
                         "pieces": (i, b)})  # fmt: skip
    text, out = pz.text(old_text, ents)
    assert text == new_text
    assert out is not None
    total = len(text.encode("utf-16-le")) // 2
    for e in out:
        assert e["offset"] >= 0 and e["offset"] + e["length"] <= total
        a, b = e["pieces"]
        assert _u16(text, e["offset"], e["length"]) == "".join(n for _, n in pieces[a:b])
