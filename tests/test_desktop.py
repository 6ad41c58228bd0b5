"""Telegram Desktop import (tgkit.desktop): the committed result.json fixtures (2019, 2023, 2024, full
account, cut, cp1251), streaming/batching, the bad-input contract, UTF-16 entity offsets, the ``\\xHH``
repair, and a render -> import round trip (its renderer serves the offline-double cross-check)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from tgkit.dataset import ChatPartition, open_dataset, read_manifest
from tgkit.desktop import (
    ENTITY_TYPES,
    MEDIA_TYPES,
    SERVICE_ACTIONS,
    DesktopExportNotFound,
    DesktopFormatError,
    DesktopImportReport,
    DesktopImportResult,
    DesktopRecords,
    DesktopTruncatedWarning,
    _Converter,
    _Source,
    import_desktop,
    iter_desktop_batches,
)
from tgkit.errors import CacheError, ConfigError, ExportError, TgkitError
from tgkit.records import (
    DATE_COLUMNS,
    MESSAGE_COLUMNS,
    Entity,
    ExportedMessage,
    Reaction,
    Records,
    polars_schema,
)

FIXTURES = Path(__file__).parent / "fixtures" / "desktop"
PLACEHOLDER = "File not included. Change data exporting settings to download."


def load(name: str) -> DesktopRecords:
    return import_desktop(FIXTURES / name, progress=False)


def by_id(records: Records) -> dict[int, ExportedMessage]:
    return {m.id: m for m in records}


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def utf16_slice(text: str, offset: int, length: int) -> str:
    raw = text.encode("utf-16-le")
    return raw[2 * offset : 2 * (offset + length)].decode("utf-16-le")


# --------------------------------------------------------------------------------------------------
# Fixtures, format by format


def test_old_2019_format_naive_dates_numeric_ids_text_list() -> None:
    recs = load("old_2019")
    assert isinstance(recs, Records) and len(recs) == 6
    msgs = by_id(recs)
    assert {m.chat_id for m in recs} == {1122334455}
    assert all(m.date_naive is True for m in recs)
    assert recs.report.naive_dates == 6
    assert msgs[2].date == utc("2019-03-01T10:05:00")
    assert msgs[2].edit_date is None  # "1970-01-01T03:00:00" means "never edited" in old files
    assert msgs[3].edit_date == utc("2019-03-01T10:10:00")
    assert (msgs[3].sender_id, msgs[3].sender_kind) == (222, "user")
    assert msgs[3].reply_to_id == 2

    m = msgs[3]
    assert m.text == "Hi @alice, see https://example.org/paper and read it 🙂"
    assert m.entities == [
        Entity("mention", 3, 6),
        Entity("url", 15, 25),
        Entity("bold", 45, 7),
    ]
    for e in m.entities:
        assert utf16_slice(m.text, e.offset, e.length) in {"@alice", "https://example.org/paper", "read it"}

    assert msgs[1].service_action == "channel_migrate_from" and msgs[1].text is None
    assert (msgs[6].service_action, msgs[6].reply_to_id) == ("pin_message", 3)
    assert (msgs[4].media_type, msgs[4].media_path) == ("photo", "photos/photo_1@02-03-2019_08-00-00.jpg")
    assert (msgs[4].media_width, msgs[4].media_height) == (640, 480)
    assert (msgs[5].media_type, msgs[5].media_path, msgs[5].media_error) == ("sticker", None, PLACEHOLDER)
    # not in a Desktop export: null, never zero
    for col in (
        "views",
        "forwards",
        "replies",
        "grouped_id",
        "thread_id",
        "via_bot_id",
        "pinned",
        "fwd_date",
    ):
        assert all(getattr(m, col) is None for m in recs), col


def test_2023_format_entities_media_service_and_unknowns_kept() -> None:
    recs = load("new_2023")
    msgs = by_id(recs)
    rep = recs.report
    assert rep.kind == "chat" and rep.chats[0].name == "Open Data Channel"
    assert all(m.date_naive is False for m in recs) and rep.naive_dates == 0
    assert msgs[11].date == 1673786096 and msgs[11].edit_date == 1673787600
    assert (msgs[11].sender_id, msgs[11].sender_kind, msgs[11].post_author) == (
        1500000001,
        "channel",
        "Dr. Carol",
    )

    m = msgs[11]
    kinds = [e.type for e in m.entities or []]
    assert kinds == [
        "bold",
        "text_url",
        "mention_name",
        "custom_emoji",
        "pre",
        "strike",
        "hashtag",
        "sparkle_text",  # an unknown entity type is kept as its raw name
    ]
    expect = ["Release 2.0", "notes", "Dave", "🔥", "pip install x", "old", "#data", "new!"]
    assert [utf16_slice(m.text or "", e.offset, e.length) for e in m.entities or []] == expect
    ent = {e.type: e for e in m.entities or []}
    assert ent["text_url"].url == "https://example.org/notes"
    assert ent["mention_name"].user_id == 333
    assert ent["custom_emoji"].document_id == 5368324170671202286
    assert ent["custom_emoji"].length == 2  # one astral emoji = two UTF-16 code units
    assert ent["pre"].language == "bash"
    assert ent["text_url"].offset == len("Release 2.0 is out 🎉🎉 — ") + 2  # two emoji, one extra unit each
    assert rep.unknown_entity_types == {"sparkle_text": 1}

    assert msgs[12].text == "tab\x0bhere"  # Desktop's invalid "\x0B" escape, repaired
    assert rep.repaired_escapes == 2
    assert (msgs[12].fwd_name, msgs[12].fwd_peer_id, msgs[12].fwd_peer_kind) == ("Erin", 444, "user")
    assert (msgs[12].media_type, msgs[12].media_duration, msgs[12].media_mime) == ("voice", 7.0, "audio/ogg")
    assert msgs[12].media_path == "voice_messages/audio_1@16-01-2023_09-00-00.ogg"
    assert msgs[13].via_bot_id is None  # Desktop gives the bot's username only
    assert msgs[13].media_type == "video" and msgs[13].media_path is None
    assert msgs[13].media_error == "File exceeds maximum size. Change data exporting settings to download."
    assert (msgs[13].media_size, msgs[13].media_file_name) == (4_000_000_000, "lecture.mp4")
    media = {i: msgs[i].media_type for i in (14, 15, 16, 17, 18, 22, 23)}
    assert media == {
        14: "video_note",
        15: "document",
        16: "poll",
        17: "geo",
        18: "contact",
        22: "animation",
        23: "audio",
    }
    assert msgs[15].media_path == "files/data.csv" and msgs[15].media_error is None
    assert (msgs[19].service_action, msgs[19].reply_to_id) == ("pin_message", 11)
    assert msgs[10].service_action == "channel_create"
    assert msgs[20].service_action == "launch_rocket" and rep.unknown_actions == {"launch_rocket": 1}
    assert rep.unknown_fields == {"rocket": 1}
    assert 21 not in msgs and rep.skipped == 1 and "unsupported" in rep.skipped_examples[0]
    assert all(m.reactions is None and m.reactions_total is None for m in recs)  # not exported before 2024


def test_2024_reactions_and_media_paths_that_escape_or_are_missing() -> None:
    recs = load("reactions_2024")
    msgs = by_id(recs)
    assert msgs[103].reactions == [
        Reaction("👍", None, 5),
        Reaction(None, 5445284980978621387, 2),
        Reaction("paid", None, 50),  # paid (stars), stored as the API path stores ReactionPaid
    ]
    assert msgs[103].reactions_total == 57
    assert msgs[104].reactions == [Reaction("stardust", None, 1)]  # unknown type: its raw name
    assert recs.report.unknown_reaction_types == {"stardust": 1}
    assert msgs[100].service_action == "topic_create"
    assert msgs[101].service_action == "chat_add_user"
    assert (msgs[102].service_action, msgs[102].sender_id) == ("chat_joined_by_link", 777)
    assert msgs[103].media_path == "photos/photo_2@01-05-2024_08-03-00.jpg"
    assert msgs[103].media_size == 12
    assert msgs[104].media_path is None and "escapes the export folder" in (msgs[104].media_error or "")
    assert msgs[106].media_path is None and "escapes the export folder" in (msgs[106].media_error or "")
    assert msgs[105].media_path is None and "missing" in (msgs[105].media_error or "")
    assert recs.report.unknown_fields == {"story_ref": 1}
    assert recs.report.media_unavailable == 3


def test_symlink_out_of_the_export_is_refused(tmp_path: Path) -> None:
    export = tmp_path / "export"
    shutil.copytree(FIXTURES / "reactions_2024", export)
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    (export / "files").mkdir()
    os.symlink(secret, export / "files" / "deleted_later.pdf")
    msgs = by_id(import_desktop(export, progress=False))
    assert msgs[105].media_path is None and "escapes" in (msgs[105].media_error or "")


def test_full_account_export_reads_chats_and_left_chats() -> None:
    recs = load("account")
    rep = recs.report
    assert rep.kind == "account"
    assert [(c.id, c.type, c.messages, c.left) for c in rep.chats] == [
        (111, "personal_chat", 2, False),
        (999, "saved_messages", 1, False),
        (4242, "private_group", 0, False),
        (4343, "private_group", 2, False),
        (1600000003, "public_channel", 1, True),
    ]
    assert rep.chats[1].name is None  # saved messages have no name
    assert [(m.chat_id, m.id) for m in recs] == [
        (111, 1),
        (111, 2),
        (999, 5),
        (4343, 1),
        (4343, 2),
        (1600000003, 7),
    ]
    assert [m.service_action for m in recs if m.chat_id == 4343] == ["chat_create", "chat_edit_title"]
    assert recs[-1].text == "bye 👋" and recs[-1].sender_kind == "channel"


def test_account_path_gives_the_same_rows_as_the_single_chat_path(tmp_path: Path) -> None:
    # The two parsers (C items for one chat, parse events for chats.list) must agree row for row.
    single = json.loads(
        (FIXTURES / "new_2023" / "result.json").read_text(encoding="utf-8").replace("\\x0B", "\\u000b")
    )
    shutil.copytree(FIXTURES / "new_2023", tmp_path / "acc")
    wrapped = {
        "about": "x",
        "chats": {"about": "y", "list": [{"name": "A", "type": "x", "id": 1, "messages": []}, single]},
    }
    (tmp_path / "acc" / "result.json").write_text(json.dumps(wrapped, ensure_ascii=False), encoding="utf-8")
    a = load("new_2023").to_arrow()
    b = import_desktop(tmp_path / "acc", progress=False).to_arrow()
    assert b.equals(a)


# --------------------------------------------------------------------------------------------------
# Streaming and batches


def test_batches_split_by_size_and_never_mix_chats() -> None:
    calls: list[int] = []
    it = iter_desktop_batches(
        FIXTURES / "account", batch_size=1, on_progress=lambda r: calls.append(r.messages)
    )
    got = [(chat, len(b)) for chat, b in it]
    assert got == [(111, 1), (111, 1), (999, 1), (4343, 1), (4343, 1), (1600000003, 1)]
    assert calls[-1] == 6 and len(calls) == 6  # after each batch but the last, then once at the end
    assert it.report.bytes_read == it.report.bytes_total

    it = iter_desktop_batches(FIXTURES / "new_2023", batch_size=5)
    sizes = [len(b) for _, b in it]
    assert sizes == [5, 5, 3]


def test_batches_and_records_build_the_same_typed_table() -> None:
    tables = [b.to_arrow() for _, b in iter_desktop_batches(FIXTURES / "new_2023", batch_size=4)]
    recs = load("new_2023")
    assert pa.concat_tables(tables).equals(recs.to_arrow())
    frame = recs.to_polars()
    assert frame.schema == polars_schema()
    assert frame.columns == list(MESSAGE_COLUMNS)


def test_closing_the_iterator_early_is_clean() -> None:
    it = iter_desktop_batches(FIXTURES / "account", batch_size=1)
    next(it)
    it.close()
    with pytest.raises(StopIteration):
        next(it)


# --------------------------------------------------------------------------------------------------
# import_desktop(out=DIR): the dataset writer


def _sorted_frame(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort("chat_id", "id")


@pytest.mark.parametrize("name", ["account", "new_2023"])
def test_dataset_holds_the_same_rows_as_the_records(tmp_path: Path, name: str) -> None:
    result = import_desktop(FIXTURES / name, out=tmp_path / "ds", progress=False, batch_size=2)
    assert isinstance(result, DesktopImportResult)
    expected = load(name).to_polars()
    assert result.messages == len(expected) and result.already_present == 0
    assert_frame_equal(_sorted_frame(result.open().collect()), _sorted_frame(expected))
    assert_frame_equal(_sorted_frame(open_dataset(tmp_path / "ds").collect()), _sorted_frame(expected))
    manifest = read_manifest(tmp_path / "ds")
    for chat in result.chats:
        if not chat.messages:
            assert str(chat.id) not in manifest["chats"]  # an empty chat leaves no partition
            continue
        cp = ChatPartition(tmp_path / "ds", chat.id).load()
        assert cp is not None and cp.last_id == chat.last_message_id and cp.rows == chat.messages
        assert len(cp.parts) == -(-chat.messages // 2) and cp.title == chat.name
        entry = manifest["chats"][str(chat.id)]
        assert (entry["rows"], entry["source"], entry["type"]) == (
            chat.messages,
            "telegram_desktop",
            chat.type,
        )
        assert entry["media_root"] == str((FIXTURES / name).resolve())
    assert not result.truncated and "new messages" in result.summary()


def test_reimport_is_idempotent_and_a_later_export_only_adds_new_messages(tmp_path: Path) -> None:
    data = (FIXTURES / "new_2023" / "result.json").read_bytes()
    early = tmp_path / "early"
    shutil.copytree(FIXTURES / "new_2023", early)
    (early / "result.json").write_bytes(data[: data.index(b'"id": 16')])  # an earlier, shorter file
    out = tmp_path / "ds"
    with pytest.warns(DesktopTruncatedWarning):
        first = import_desktop(early, out=out, progress=False, batch_size=3)
    assert first.truncated and first.stopped_at is not None and first.stopped_at.last_message_id == 15
    assert "STOPPED" in first.summary()
    second = import_desktop(FIXTURES / "new_2023", out=out, progress=False, batch_size=3)
    assert (second.messages, second.already_present) == (13 - first.messages, first.messages)
    again = import_desktop(FIXTURES / "new_2023", out=out, progress=False)
    assert (again.messages, again.already_present, again.parts_written) == (0, 13, 0)
    assert_frame_equal(_sorted_frame(again.open().collect()), _sorted_frame(load("new_2023").to_polars()))


def test_a_write_failure_keeps_committed_parts_and_a_rerun_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ChatPartition.write_part
    calls = 0

    def flaky(self: ChatPartition, cp: Any, table: pa.Table, *, last_id: int) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(28, "No space left on device")
        return real(self, cp, table, last_id=last_id)

    monkeypatch.setattr(ChatPartition, "write_part", flaky)
    out = tmp_path / "ds"
    with pytest.raises(ExportError, match="No space left on device") as info:
        import_desktop(FIXTURES / "account", out=out, progress=False, batch_size=1)
    assert "\n" not in str(info.value) and info.value.checkpoint is not None
    assert len(open_dataset(out).collect()) == 2
    monkeypatch.setattr(ChatPartition, "write_part", real)
    rerun = import_desktop(FIXTURES / "account", out=out, progress=False, batch_size=1)
    assert (rerun.messages, rerun.already_present) == (4, 2)
    assert_frame_equal(_sorted_frame(rerun.open().collect()), _sorted_frame(load("account").to_polars()))


def test_another_chats_checkpoint_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    import_desktop(FIXTURES / "old_2019", out=out, progress=False)
    other = ChatPartition(out, 1500000001).state_dir
    other.mkdir(parents=True)
    shutil.copy(ChatPartition(out, 1122334455).checkpoint_path, other)
    with pytest.raises(CacheError, match="belongs to chat 1122334455") as info:
        import_desktop(FIXTURES / "new_2023", out=out, progress=False)
    assert "\n" not in str(info.value)


def test_errors_are_one_line_tgkit_errors_and_bad_input_creates_no_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    cases: list[tuple[Any, dict[str, Any], type[TgkitError]]] = [
        (tmp_path / "nope", {"out": out}, DesktopExportNotFound),
        (FIXTURES / "cp1251", {"out": out}, DesktopFormatError),
        (FIXTURES / "old_2019", {"out": out, "batch_size": 0}, ConfigError),
    ]
    for path, kwargs, kind in cases:
        with pytest.raises(kind) as info:
            import_desktop(path, progress=False, **kwargs)
        assert isinstance(info.value, TgkitError) and "\n" not in str(info.value)
    assert not out.exists()
    out.write_text("a file")
    with pytest.raises(ExportError, match="not a directory"):
        import_desktop(FIXTURES / "old_2019", out=out, progress=False)


# --------------------------------------------------------------------------------------------------
# Cut and bad input


def test_truncated_fixture_keeps_everything_before_the_cut() -> None:
    with pytest.warns(DesktopTruncatedWarning) as caught:
        recs = load("truncated")
    assert [m.id for m in recs] == [10, 11, 12, 13, 14]
    stop = recs.report.stopped_at
    assert stop is not None and recs.report.truncated
    assert stop.byte_offset == (FIXTURES / "truncated" / "result.json").stat().st_size
    assert (stop.chat_id, stop.chat_index, stop.messages_in_chat, stop.last_message_id) == (
        1500000001,
        0,
        5,
        14,
    )
    assert "premature EOF" in stop.reason
    assert caught[0].message.report is recs.report  # type: ignore[union-attr]
    assert "STOPPED" in recs.report.summary()


@pytest.mark.parametrize("name", ["account", "new_2023"])
def test_every_cut_imports_a_prefix_and_warns(tmp_path: Path, name: str) -> None:
    full = load(name)
    rows = [(m.chat_id, m.id) for m in full]
    data = (FIXTURES / name / "result.json").read_bytes()
    path = tmp_path / "result.json"
    seen = 0
    # every 13th byte, plus every cut inside or next to a multi-byte character or a backslash escape
    tricky = {i + d for i, byte in enumerate(data) if byte >= 0x80 or byte == 0x5C for d in (0, 1, 2, 3)}
    for cut in sorted(set(range(1, len(data), 13)) | tricky):
        if cut >= len(data.rstrip()):
            continue
        path.write_bytes(data[:cut])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = import_desktop(path, progress=False)
        assert [type(w.message) for w in caught] == [DesktopTruncatedWarning], cut
        ids = [(m.chat_id, m.id) for m in got]
        assert ids == rows[: len(ids)], cut
        assert len(ids) >= seen
        seen = len(ids)
    assert seen >= len(rows) - 1


def test_garbage_after_valid_messages_stops_with_a_warning(tmp_path: Path) -> None:
    data = (FIXTURES / "account" / "result.json").read_bytes()
    cut = data.index(b'"name": "Old Club"')
    (tmp_path / "result.json").write_bytes(data[:cut] + b"\x00" * 64)
    with pytest.warns(DesktopTruncatedWarning):
        recs = import_desktop(tmp_path, progress=False)
    assert [m.chat_id for m in recs] == [111, 111, 999]
    assert recs.report.stopped_at is not None and "invalid char" in recs.report.stopped_at.reason


def test_cp1251_file_is_a_clear_error() -> None:
    with pytest.raises(DesktopFormatError, match="not UTF-8"):
        load("cp1251")


@pytest.mark.parametrize("name", ["new_2023", "account"])
def test_non_utf8_in_the_middle_is_a_clear_error(tmp_path: Path, name: str) -> None:
    data = (FIXTURES / name / "result.json").read_bytes()
    target = b"Dave" if name == "new_2023" else b"note to self"
    data = data.replace(target, "Дэйв".encode("cp1251"), 1)
    data = data.replace(b"[", b"[" + b" " * 5000, 1)  # past the up-front check of the first 4 KiB
    (tmp_path / "result.json").write_bytes(data)
    with pytest.raises(DesktopFormatError, match="not valid UTF-8") as info:
        import_desktop(tmp_path, progress=False)
    assert isinstance(info.value, TgkitError)
    assert info.value.report is not None and info.value.report.bytes_read > 0


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (b"<!DOCTYPE html><html><body>", "HTML"),
        ('{"messages": []}'.encode("utf-16"), "UTF-16"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'{"name": "x", "list": [1]}', "not a Telegram Desktop export"),
        (b'{"name": "x" "id": 1}', "not valid JSON"),
        (b"name,id\nfoo,1\n", "not a JSON object"),
    ],
)
def test_not_a_desktop_json_export(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "result.json"
    path.write_bytes(content)
    with pytest.raises(DesktopFormatError, match=match):
        import_desktop(path, progress=False)


def test_input_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        import_desktop(tmp_path / "nope.json", progress=False)
    with pytest.raises(FileNotFoundError, match=r"no result\.json") as info:
        import_desktop(tmp_path, progress=False)
    assert isinstance(info.value, DesktopExportNotFound) and isinstance(info.value, TgkitError)
    (tmp_path / "messages.html").write_text("<html></html>")
    with pytest.raises(DesktopFormatError, match="Machine-readable JSON"):
        import_desktop(tmp_path, progress=False)
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + (FIXTURES / "old_2019" / "result.json").read_bytes())
    assert len(import_desktop(bom, progress=False)) == 6


def test_missing_chat_id_and_malformed_messages(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"name": "x", "messages": []}))
    with pytest.raises(DesktopFormatError, match="no numeric 'id'"):
        import_desktop(path, progress=False)
    bad = {"name": "x", "type": "private_group", "id": 5, "messages": [
        {"id": 1, "type": "message", "date_unixtime": "not a number", "text": "a"},
        {"id": 2, "type": "message", "text": "no date"},
        {"id": 3, "type": "message", "date_unixtime": "1700000000", "text": 12, "from_id": "bot77",
         "reactions": [{"type": "emoji", "emoji": "x", "count": "3"}, "junk"], "text_entities": [42]},
        {"id": 4, "type": "message", "date_unixtime": "1700000001", "text": ["a", {"type": "bold"}, 7]},
    ]}  # fmt: skip
    path.write_text(json.dumps(bad))
    recs = import_desktop(path, progress=False)
    assert [m.id for m in recs] == [3, 4]
    assert recs.report.skipped == 2 and len(recs.report.skipped_examples) == 2
    m3 = recs[0]
    assert (m3.sender_id, m3.sender_kind, m3.reactions_total) == (77, "bot", 3)
    assert recs[1].text == "a" and recs[1].entities == [Entity("bold", 1, 0)]


# --------------------------------------------------------------------------------------------------
# Units: peers, UTF-16 offsets, the escape repair, naming contracts


def test_peer_ids() -> None:
    conv = _Converter(FIXTURES, DesktopImportReport(path=FIXTURES, bytes_total=0))
    from tgkit.desktop import DesktopChat

    conv.set_chat(DesktopChat(id=77, name="c", type="public_channel"))
    assert conv.peer("user1") == (1, "user")
    assert conv.peer("channel2") == (2, "channel")
    assert conv.peer("chat3") == (3, "chat")
    assert conv.peer(77) == (77, "channel")  # pre-2021 channel post: the channel's own id
    assert conv.peer(12) == (12, "user")
    assert conv.peer("12") == (12, "user")
    assert conv.peer("???") == (None, None)
    assert conv.peer(None) == (None, None)


_PIECE = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from("😀👍🏽🇩🇪𝔘é\n"),
    max_size=8,
)


@given(st.lists(st.tuples(_PIECE, st.sampled_from([None, "plain", "bold", "link", "text_link", "spoiler"]))))
@settings(max_examples=100, deadline=None)
def test_entity_offsets_are_utf16_code_units(parts: list[tuple[str, str | None]]) -> None:
    conv = _Converter(FIXTURES, DesktopImportReport(path=FIXTURES, bytes_total=0))
    raw = [p if kind is None else {"type": kind, "text": p} for p, kind in parts]
    text, entities = conv.text(raw, None)
    assert text == "".join(p for p, _ in parts)
    expected = [p for p, kind in parts if kind not in (None, "plain")]
    assert [utf16_slice(text or "", e[1], e[2]) for e in entities or []] == expected
    assert all(e[0] in {"bold", "url", "text_url", "spoiler"} for e in entities or [])


class _Chunky(io.RawIOBase):
    """A file whose reads return the given chunk sizes, so escapes land on every kind of boundary."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data, self.sizes, self.at = data, sizes, 0

    def read(self, n: int = -1) -> bytes:
        size = self.sizes.pop(0) if self.sizes else len(self.data)
        out = self.data[self.at : self.at + size]
        self.at += len(out)
        return out

    def seek(self, pos: int, whence: int = 0) -> int:
        self.at = pos
        return pos


@given(
    st.lists(
        st.sampled_from([b"a", b"\\", b"\\\\", b"\\x0B", b"x", b"0", b"B", b"\\x1f", b'"']), max_size=40
    ),
    st.lists(st.integers(1, 7), max_size=40),
)
@settings(max_examples=150, deadline=None)
def test_escape_repair_is_chunk_boundary_proof(tokens: list[bytes], sizes: list[int]) -> None:
    data = b"".join(tokens)
    src = _Source(_Chunky(data, list(sizes)))  # type: ignore[arg-type]
    out = b""
    while chunk := src.read(65536):
        out += chunk
    expected = re.sub(rb"(?<!\\)((?:\\\\)*)\\x([0-9A-Fa-f]{2})", rb"\1\\u00\2", data)
    assert out == expected
    assert src.pos == len(data)


def test_escape_repair_in_json() -> None:
    raw = b'{"a": "x\\x0By", "b": "\\\\x41", "c": "\\\\\\x1F"}'
    src = _Source(io.BytesIO(raw))
    fixed = src.read(1 << 16) + src.read(1 << 16)
    assert json.loads(fixed) == {"a": "x\x0by", "b": "\\x41", "c": "\\\x1f"}
    assert src.repaired == 2


def test_names_match_the_telethon_derived_names_of_the_api_path() -> None:
    types = pytest.importorskip("telethon.tl.types")

    def snake(name: str) -> str:
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()

    actions = {snake(n.removeprefix("MessageAction")) for n in dir(types) if n.startswith("MessageAction")}
    entities = {snake(n.removeprefix("MessageEntity")) for n in dir(types) if n.startswith("MessageEntity")}
    assert set(SERVICE_ACTIONS.values()) <= actions
    assert set(ENTITY_TYPES.values()) <= entities
    assert set(MEDIA_TYPES.values()) <= {"video", "audio", "voice", "sticker", "animation", "video_note"}


# --------------------------------------------------------------------------------------------------
# Render -> import round trip.  ``render_desktop_chat`` turns records into Desktop's JSON shape; the
# cross-check with the offline double renders an API export with it and compares the imported rows.

_ACTION_BACK = {v: k for k, v in reversed(list(SERVICE_ACTIONS.items()))}
_ENTITY_BACK = {v: k for k, v in ENTITY_TYPES.items()}
_MEDIA_BACK = {v: k for k, v in MEDIA_TYPES.items()}


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None).isoformat()


def _peer_ref(peer_id: int | None, kind: str | None, old: bool) -> Any:
    if peer_id is None:
        return None
    return peer_id if old else f"{kind}{peer_id}"


def _render_text(text: str, entities: list[Entity] | None) -> list[Any]:
    units = text.encode("utf-16-le")
    parts: list[Any] = []
    pos = 0
    for e in sorted(entities or [], key=lambda e: e.offset):
        if e.offset > pos:
            parts.append({"type": "plain", "text": units[2 * pos : 2 * e.offset].decode("utf-16-le")})
        part: dict[str, Any] = {
            "type": _ENTITY_BACK.get(e.type, e.type),
            "text": utf16_slice(text, e.offset, e.length),
        }
        if e.url is not None:
            part["href"] = e.url
        if e.user_id is not None:
            part["user_id"] = e.user_id
        if e.document_id is not None:
            part["document_id"] = str(e.document_id)
        if e.language is not None:
            part["language"] = e.language
        parts.append(part)
        pos = e.offset + e.length
    if 2 * pos < len(units):
        parts.append({"type": "plain", "text": units[2 * pos :].decode("utf-16-le")})
    return parts


def render_desktop_message(m: ExportedMessage, *, style: str = "2024") -> dict[str, Any]:
    """One record in Telegram Desktop's JSON shape; ``style`` "2019" (naive dates, numeric ids, text
    list), "2023" (unixtime, text_entities) or "2024" (+ reactions)."""
    old = style == "2019"
    out: dict[str, Any] = {
        "id": m.id,
        "type": "service" if m.service_action else "message",
        "date": _iso(m.date),
    }
    if not old:
        out["date_unixtime"] = str(m.date)
    if m.edit_date is not None:
        out["edited"] = _iso(m.edit_date)
        if not old:
            out["edited_unixtime"] = str(m.edit_date)
    sender = _peer_ref(m.sender_id, m.sender_kind, old)
    if m.service_action:
        out["actor"] = "Someone"
        if sender is not None:
            out["actor_id"] = sender
        out["action"] = _ACTION_BACK.get(m.service_action, m.service_action)
        if m.reply_to_id is not None:
            out["message_id"] = m.reply_to_id
    else:
        if sender is not None:
            out["from"] = "Someone"
            out["from_id"] = sender
        if m.post_author is not None:
            out["author"] = m.post_author
        if m.fwd_name is not None or m.fwd_peer_id is not None:
            # Desktop writes the display name of every forward's sender (the API only a hidden one's)
            out["forwarded_from"] = m.fwd_name if m.fwd_name is not None else "Someone"
        if m.fwd_peer_id is not None:
            out["forwarded_from_id"] = f"{m.fwd_peer_kind}{m.fwd_peer_id}"
        if m.reply_to_id is not None:
            out["reply_to_message_id"] = m.reply_to_id
        if m.via_bot_id is not None:
            out["via_bot"] = "@some_bot"  # Desktop gives the bot's username, not its id
    if m.media_type == "photo":
        out["photo"] = m.media_path or f"({m.media_error or PLACEHOLDER})"
        if m.media_size is not None:
            out["photo_file_size"] = m.media_size
    elif m.media_type == "geo":
        out["location_information"] = {"latitude": 0.0, "longitude": 0.0}
    elif m.media_type == "poll":
        out["poll"] = {"question": "?", "closed": False, "total_voters": 0, "answers": []}
    elif m.media_type == "contact":
        out["contact_information"] = {"first_name": "", "last_name": "", "phone_number": ""}
    elif m.media_type == "webpage":
        pass  # Desktop does not export link previews
    elif m.media_type is not None:
        out["file"] = m.media_path or f"({m.media_error or PLACEHOLDER})"
        for key, value in (("file_name", m.media_file_name), ("file_size", m.media_size)):
            if value is not None:
                out[key] = value
        if m.media_type in _MEDIA_BACK:
            out["media_type"] = _MEDIA_BACK[m.media_type]
        if m.media_mime is not None:
            out["mime_type"] = m.media_mime
        if m.media_duration is not None:
            out["duration_seconds"] = int(m.media_duration)
    if m.media_width is not None and m.media_height is not None:
        out["width"], out["height"] = m.media_width, m.media_height
    parts = _render_text(m.text or "", m.entities)
    if old:
        plain = [p["text"] if p["type"] == "plain" else p for p in parts]
        out["text"] = plain[0] if len(plain) == 1 and isinstance(plain[0], str) else plain
        if not parts:
            out["text"] = ""
    else:
        out["text"] = (
            m.text or "" if not m.entities else [p["text"] if p["type"] == "plain" else p for p in parts]
        )
        out["text_entities"] = parts
    if style == "2024" and m.reactions is not None:
        out["reactions"] = [
            {"type": "emoji", "count": r.count, "emoji": r.emoji}
            if r.emoji is not None and r.emoji != "paid"
            else {"type": "paid", "count": r.count}
            if r.emoji == "paid"
            else {"type": "custom_emoji", "count": r.count, "document_id": str(r.document_id)}
            for r in m.reactions
        ]
    return out


def render_desktop_chat(
    records: Records,
    *,
    chat_id: int,
    name: str = "Chat",
    type: str = "public_supergroup",
    style: str = "2024",
) -> dict[str, Any]:
    """A whole single-chat ``result.json`` (as a dict) from records of one chat."""
    return {
        "name": name,
        "type": type,
        "id": chat_id,
        "messages": [render_desktop_message(m, style=style) for m in records],
    }


_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from("😀🇩🇪"),
    max_size=6,
)


@st.composite
def _messages(draw: Any, style: str) -> ExportedMessage:
    old = style == "2019"
    pieces = draw(
        st.lists(st.tuples(_TEXT, st.sampled_from([None, "bold", "url", "text_url", "custom_emoji", "pre"])))
    )
    text = "".join(p for p, _ in pieces)
    entities: list[Entity] = []
    off = 0
    for piece, kind in pieces:
        n = len(piece.encode("utf-16-le")) // 2
        if kind is not None:
            entities.append(
                Entity(
                    kind,
                    off,
                    n,
                    url="https://x.org" if kind == "text_url" else None,
                    document_id=draw(st.integers(1, 2**62)) if kind == "custom_emoji" else None,
                    language="py" if kind == "pre" else None,
                )
            )
        off += n
    service = draw(st.sampled_from([None, None, "pin_message", "chat_add_user", "topic_create", "weird_new"]))
    kind = "user" if old else draw(st.sampled_from(["user", "channel", "chat"]))
    media = (
        None if service else draw(st.sampled_from([None, "photo", "document", "voice", "video", "sticker"]))
    )
    reactions = None
    if style == "2024" and not service and draw(st.booleans()):
        reactions = draw(
            st.lists(
                st.builds(Reaction, st.sampled_from(["👍", "❤", None]), st.none(), st.integers(1, 99)).map(
                    lambda r: r if r.emoji else Reaction(None, 42, r.count)
                ),
                min_size=1,
                max_size=3,
            )
        )
    return ExportedMessage(
        chat_id=7,
        id=draw(st.integers(1, 2**31 - 1)),
        date=draw(st.integers(1_300_000_000, 1_900_000_000)),
        sender_id=draw(st.integers(1, 2**40)),
        sender_kind=kind,
        text=None if service else text,
        entities=None if service or not entities else entities,
        reply_to_id=draw(st.none() | st.integers(1, 10**6)) if service in (None, "pin_message") else None,
        fwd_name=None if service or old else draw(st.none() | _TEXT),
        edit_date=draw(st.none() | st.integers(1_300_000_000, 1_900_000_000)),
        post_author=None if service else draw(st.none() | _TEXT),
        media_type=media,
        media_mime=None if media in (None, "photo") else "application/octet-stream",
        media_size=None if media is None else draw(st.integers(0, 2**40)),
        media_error=None if media is None else PLACEHOLDER,
        media_width=None if media not in ("photo", "video") else 640,
        media_height=None if media not in ("photo", "video") else 480,
        media_duration=None if media not in ("voice", "video") else 12.0,
        reactions=reactions,
        reactions_total=None if reactions is None else sum(r.count for r in reactions),
        service_action=service,
        date_naive=old,
    )


@pytest.mark.parametrize("style", ["2019", "2023", "2024"])
def test_render_then_import_round_trips(style: str) -> None:
    @given(st.lists(_messages(style), max_size=6))
    @settings(max_examples=40, deadline=None)
    def check(messages: list[ExportedMessage]) -> None:
        doc = render_desktop_chat(Records(messages), chat_id=7, style=style)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "result.json"
            path.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
            got = import_desktop(path, progress=False)
        assert list(got) == messages
        assert got.report.unknown_fields == {}

    check()


# --------------------------------------------------------------------------------------------------
# Cross-check with the API path: a chat exported from the offline double through export_chat, rendered
# into Desktop's JSON shape and imported, gives the API's rows in every column both sources carry.

# Columns a Desktop export does not carry (null in the import, see docs/DESKTOP_IMPORT.md), plus
# media_error (Desktop says why a file is absent; the API export without downloads leaves it null) and
# date_naive (Desktop-only: False for files with date_unixtime, null from the API).
NOT_IN_DESKTOP = (
    "thread_id", "fwd_date", "fwd_post_id", "views", "forwards", "replies", "grouped_id", "pinned",
    "via_bot_id", "media_file_id", "media_error", "date_naive",
)  # fmt: skip


def records_from_frame(frame: pl.DataFrame) -> Records:
    """Dataset rows back to records (dates to epoch seconds, nested structs to Entity/Reaction)."""
    out = []
    for row in frame.to_dicts():
        for col in DATE_COLUMNS:
            if row[col] is not None:
                row[col] = int(row[col].timestamp())
        if row["entities"] is not None:
            row["entities"] = [Entity(**e) for e in row["entities"]]
        if row["reactions"] is not None:
            row["reactions"] = [Reaction(**r) for r in row["reactions"]]
        out.append(ExportedMessage(**row))
    return Records(out)


def as_desktop_sees_it(api: pl.DataFrame) -> pl.DataFrame:
    """The API rows with what Desktop cannot know removed or reduced to what it writes."""
    return api.drop(NOT_IN_DESKTOP).with_columns(
        # link previews are not exported
        media_type=pl.when(pl.col("media_type") == "webpage").then(None).otherwise(pl.col("media_type")),
        # no mime type for photos; durations in whole seconds
        media_mime=pl.when(pl.col("media_type") == "photo").then(None).otherwise(pl.col("media_mime")),
        media_duration=pl.col("media_duration").floor(),
        # Desktop names every forward's sender; the API only a hidden one (fwd_peer_id null)
        fwd_name=pl.when(pl.col("fwd_peer_id").is_null())
        .then(pl.col("fwd_name"))
        .otherwise(pl.lit("Someone")),
    )


async def _export_demo_chats(world: Any, out: Path) -> list[Any]:
    from tgkit import export_chat
    from tgkit.offline import connect_demo

    client = await connect_demo(world=world)
    try:
        opts: dict[str, Any] = {"progress": False, "peer_cache": False, "metrics": False, "monitor": False}
        return [await export_chat(client, chat, out, **opts) for chat in ("@tgkit_demo", "@tgkit_group")]
    finally:
        await client.disconnect()


def test_api_export_rendered_as_desktop_imports_to_the_same_rows(tmp_path: Path, small_world: Any) -> None:
    import asyncio

    results = asyncio.run(_export_demo_chats(small_world, tmp_path / "api"))
    for result, desktop_type in zip(results, ("public_channel", "public_supergroup")):
        api = result.frame().sort("id")
        doc = render_desktop_chat(
            records_from_frame(api), chat_id=result.chat_id, name=result.title, type=desktop_type
        )
        export = tmp_path / f"desktop_{result.chat_id}"
        export.mkdir()
        (export / "result.json").write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
        imported = import_desktop(export, out=tmp_path / "desktop", progress=False, batch_size=100)
        assert imported.report.unknown_fields == {} and imported.report.skipped == 0
        got = imported.open().filter(pl.col("chat_id") == result.chat_id).collect().sort("id")
        assert_frame_equal(got.drop(NOT_IN_DESKTOP), as_desktop_sees_it(api))
        for col in NOT_IN_DESKTOP[:-2]:
            assert got[col].null_count() == len(got), col
        assert not got["date_naive"].any()
        files = got.filter(pl.col("media_type").is_in(["photo", "video", "voice", "document", "sticker"]))
        assert files["media_error"].to_list() == [PLACEHOLDER] * len(files) and len(files) > 5
        assert got["media_error"].null_count() == len(got) - len(files)

    # the comparison is not vacuous: both chats carry what the columns are about
    api = open_dataset(tmp_path / "api").collect()
    assert api["entities"].is_not_null().sum() > 20 and api["reactions"].is_not_null().sum() > 20
    assert set(api["service_action"].drop_nulls()) >= {"channel_create", "chat_create", "pin_message"}
    assert api.filter(pl.col("chat_id") == results[1].chat_id)["reply_to_id"].is_not_null().sum() > 10
    assert {"photo", "video", "voice", "document", "webpage"} <= set(api["media_type"].drop_nulls())
    assert api["fwd_peer_id"].is_not_null().sum() > 5 and api["edit_date"].is_not_null().sum() > 5
