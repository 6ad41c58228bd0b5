"""Media files: safe file names for whatever Telegram sends (download code joins this module later).

A file name in a Telegram document attribute is chosen by whoever sent the file.  It can hold ``../``,
an absolute path, NUL or control characters, a right-to-left override that disguises the extension,
a Windows device name (``CON``, ``LPT1``), or 300+ characters.  :func:`safe_filename` turns any of that
into one plain name component; :func:`safe_path` joins it to the media folder and proves the result
stays inside it.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from typing import Any

from .errors import TgkitError

__all__ = [
    "DEFAULT_MAX_NAME_BYTES",
    "MEDIA_KINDS",
    "media_file_name",
    "normalise_media_kinds",
    "safe_filename",
    "safe_path",
]

# ext4/xfs/btrfs allow 255 bytes per name component; leave room for suffixes tgkit adds
# (".part" temp files, "-<message id>" prefixes, " (1)" de-duplication).
DEFAULT_MAX_NAME_BYTES = 200

# Characters Windows forbids in names (also awkward in shells everywhere); '/' and '\\' never get here.
_FORBIDDEN = re.compile(r'[<>:"|?*]')
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{dev}{n}" for dev in ("COM", "LPT") for n in (*"123456789", "¹", "²", "³")}
)
_MAX_EXT_BYTES = 16


def safe_filename(name: str | None, *, fallback: str, max_bytes: int = DEFAULT_MAX_NAME_BYTES) -> str:
    """One safe name component derived from ``name``; ``fallback`` (also cleaned) when nothing is left.

    Only the last path component is kept (``../../x`` -> ``x``, ``/etc/passwd`` -> ``passwd``); control
    and format characters (NUL, RTL override) are dropped; Windows-forbidden characters become ``_``;
    leading dots/spaces and trailing dots/spaces go; Windows device names get a ``_`` prefix; the
    result is NFC-normalised and at most ``max_bytes`` UTF-8 bytes, keeping a short extension.
    """
    if max_bytes < 8:
        raise ValueError("max_bytes must be at least 8")
    cleaned = _clean(name, max_bytes)
    if cleaned:
        return cleaned
    cleaned = _clean(fallback, max_bytes)
    return cleaned or "file"


def safe_path(root: str | os.PathLike[str], name: str | None, *, fallback: str = "file") -> Path:
    """``root / safe_filename(name)``, guaranteed to resolve to a direct child of ``root``.

    Raises :class:`TgkitError` if the target exists as a symlink (or anything else) that resolves
    outside ``root``; nothing tgkit writes can escape the media folder.
    """
    base = Path(root).resolve()
    target = base / safe_filename(name, fallback=fallback)
    resolved = target.resolve()
    if resolved.parent != base or target.is_symlink():
        raise TgkitError(f"refusing to write {target}: it resolves outside {base}")
    return target


def _clean(name: str | None, max_bytes: int) -> str:
    if not name:
        return ""
    text = unicodedata.normalize("NFC", str(name))
    # Keep the last component whatever the separator (Telegram clients on Windows send '\\').
    text = re.split(r"[/\\]", text)[-1]
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn"))
    text = _FORBIDDEN.sub("_", text)
    text = " ".join(text.split())  # tabs/newlines were dropped above; collapse runs of unicode spaces
    text = text.lstrip(". ").rstrip(". ")
    if not text:
        return ""
    stem = text.split(".", 1)[0].rstrip(" ").upper()
    if stem in _WINDOWS_RESERVED:
        text = "_" + text
    return _truncate(text, max_bytes)


def _truncate(text: str, max_bytes: int) -> str:
    if len(text.encode("utf-8")) <= max_bytes:
        return text
    stem, dot, ext = text.rpartition(".")
    ext_bytes = len(ext.encode("utf-8")) + 1
    if not dot or not stem or ext_bytes > min(_MAX_EXT_BYTES, max_bytes // 2):
        stem, ext = text, ""
    suffix = f".{ext}" if ext else ""
    budget = max_bytes - len(suffix.encode("utf-8"))
    cut = stem.encode("utf-8")[:budget].decode("utf-8", errors="ignore").rstrip(". ")
    return (cut or "file"[:budget]) + suffix


# --------------------------------------------------------------------------------------------------
# Downloads (called by the export pipeline).

MEDIA_KINDS = ("photo", "video", "document", "audio", "voice", "sticker", "animation", "video_note")


def normalise_media_kinds(media: Any) -> frozenset[str]:
    """``True``/``"all"`` -> every downloadable kind; a string or list of kinds -> those; falsy -> none."""
    from .errors import ConfigError

    if not media:
        return frozenset()
    if media is True or media == "all":
        return frozenset(MEDIA_KINDS)
    kinds = {media} if isinstance(media, str) else set(media)
    unknown = kinds - set(MEDIA_KINDS)
    if unknown:
        raise ConfigError(f"unknown media kind(s) {sorted(unknown)}; choose from {', '.join(MEDIA_KINDS)}")
    return frozenset(kinds)


def media_file_name(msg_id: int, media_type: str, file_name: str | None, mime: str | None) -> str:
    """``<msg id>-<safe original name>``, or ``<msg id>.<ext>`` when Telegram gave no name."""
    if file_name:
        # clean the sender's name first, then prefix: the id keeps names unique per chat
        return f"{msg_id}-{safe_filename(file_name, fallback='file.bin')}"
    ext = _EXTENSIONS.get(mime or "", _KIND_EXT.get(media_type, "bin"))
    return f"{msg_id}.{ext}"


_EXTENSIONS = {
    "image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "video/mp4": "mp4", "audio/ogg": "ogg",
    "audio/mpeg": "mp3", "application/pdf": "pdf", "image/gif": "gif", "video/quicktime": "mov",
}  # fmt: skip
_KIND_EXT = {"photo": "jpg", "video": "mp4", "voice": "ogg", "sticker": "webp", "video_note": "mp4"}
