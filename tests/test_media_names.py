"""Hostile file names from Telegram become safe names inside the media folder."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tgkit.errors import TgkitError
from tgkit.media import DEFAULT_MAX_NAME_BYTES, safe_filename, safe_path


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("video.mp4", "video.mp4"),
        ("../../x", "x"),
        ("..\\..\\evil.exe", "evil.exe"),
        ("/etc/passwd", "passwd"),
        ("C:\\Windows\\system32\\cmd.exe", "cmd.exe"),
        ("a\x00b.mp4", "ab.mp4"),
        ("clip\u202egnp.exe", "clipgnp.exe"),  # RTL override used to disguise the extension
        ("CON", "_CON"),
        ("con.txt", "_con.txt"),
        ("LPT1.mp4", "_LPT1.mp4"),
        ("COM¹", "_COM¹"),
        ('what?<>:"|*.mp4', "what_______.mp4"),
        (" .hidden ", "hidden"),
        ("trailing. . ", "trailing"),
        ("tab\tand\nnewline.mp4", "tabandnewline.mp4"),
        ("e\u0301.mp4", "é.mp4"),  # NFC
    ],
)
def test_hostile_names(name: str, expected: str) -> None:
    assert safe_filename(name, fallback="file") == expected


@pytest.mark.parametrize("name", [None, "", ".", "..", "/", "../..", "\x00\x00", " . ", "\u202e"])
def test_empty_or_dot_names_use_fallback(name: str | None) -> None:
    assert safe_filename(name, fallback="video_42.mp4") == "video_42.mp4"


def test_bad_fallback_is_cleaned_too() -> None:
    assert safe_filename(None, fallback="../x/../") == "file"
    assert safe_filename("..", fallback="../../y.mp4") == "y.mp4"


def test_long_names_are_truncated_keeping_the_extension() -> None:
    name = "я" * 300 + ".mp4"  # 2 bytes per char in UTF-8
    out = safe_filename(name, fallback="file")
    assert out.endswith(".mp4")
    assert len(out.encode()) <= DEFAULT_MAX_NAME_BYTES
    out.encode().decode()  # cut on a character boundary
    short = safe_filename("a" * 300, fallback="f", max_bytes=50)
    assert short == "a" * 50
    # an "extension" longer than 16 bytes is not kept separately
    odd = safe_filename("x." + "b" * 300, fallback="f", max_bytes=40)
    assert len(odd.encode()) <= 40


def test_safe_path_stays_inside_root(tmp_path: Path) -> None:
    for name in ("../../x", "/abs/path.mp4", "..", "a/../../b", "\x00"):
        p = safe_path(tmp_path, name)
        assert p.parent == tmp_path.resolve()
        assert p.name not in ("", ".", "..")


def test_safe_path_refuses_symlink_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"x")
    media = tmp_path / "media"
    media.mkdir()
    (media / "clip.mp4").symlink_to(outside)
    with pytest.raises(TgkitError, match="outside"):
        safe_path(media, "clip.mp4")


def test_max_bytes_validated() -> None:
    with pytest.raises(ValueError):
        safe_filename("x", fallback="f", max_bytes=3)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400), st.integers(min_value=8, max_value=255))
def test_any_text_gives_one_safe_component(name: str, max_bytes: int) -> None:
    out = safe_filename(name, fallback="file", max_bytes=max_bytes)
    assert out and out not in (".", "..")
    assert "/" not in out and "\\" not in out and "\x00" not in out
    assert len(out.encode("utf-8")) <= max_bytes
    assert not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in out)
    assert out == out.strip(" ") and not out.startswith(".") and not out.endswith(".")
    assert os.path.basename(out) == out


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([".", "/", "\\", "a", "\x00", " ", ":", "CON", "..", "NUL"]), max_size=20))
def test_safe_path_property(tmp_path_factory: pytest.TempPathFactory, parts: list[str]) -> None:
    name = "".join(parts)
    root = tmp_path_factory.getbasetemp() / "media-prop"
    root.mkdir(exist_ok=True)
    assert safe_path(root, name).parent == root.resolve()
