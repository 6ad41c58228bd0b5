"""One exception tree for tgkit, and the boundaries that translate other libraries' errors into it.

Everything tgkit raises on purpose is a :class:`TgkitError`.  Telethon errors are translated at one
boundary, ``with telegram_errors(peer=...)`` (built on :func:`translate_telethon_error`), used by the
gateway (:mod:`tgkit.telegram`); an ``OSError`` from a writer becomes an :class:`ExportError` naming the
path and the reason (``with write_errors(path)``).  Always chained (``raise ... from exc``) so the
original stays inspectable as ``__cause__``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "AuthError",
    "CacheError",
    "ConfigError",
    "DesktopFormatError",
    "EncoderUnavailable",
    "ExportError",
    "FloodWaitTooLong",
    "HardwareError",
    "PeerNotFound",
    "TelegramError",
    "TgkitError",
    "telegram_errors",
    "translate_telethon_error",
    "write_errors",
]


class TgkitError(Exception):
    """Base class of every error tgkit raises on purpose."""


class ConfigError(TgkitError):
    """A missing or invalid setting (api id/hash, session, an option)."""


class TelegramError(TgkitError):
    """Telegram refused a request; ``.peer`` names the chat involved (if any)."""

    def __init__(self, message: str, *, peer: Any = None) -> None:
        super().__init__(message)
        self.peer = peer


class AuthError(TelegramError):
    """The session is not authorised, or the key was revoked."""


class PeerNotFound(TelegramError):
    """A username, link or id that does not resolve to a chat."""


class FloodWaitTooLong(TelegramError):
    """Telegram asked for a wait longer than the configured ceiling."""

    def __init__(self, message: str, *, seconds: int, peer: Any = None, checkpoint: Path | None = None):
        super().__init__(message, peer=peer)
        self.seconds = seconds
        self.checkpoint = checkpoint


class ExportError(TgkitError):
    """An export stopped; ``.checkpoint`` is where a rerun resumes from."""

    def __init__(self, message: str, *, checkpoint: Path | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


class CacheError(TgkitError):
    """An unreadable, corrupt or wrong-version cache, checkpoint or state file."""


class DesktopFormatError(TgkitError):
    """The input is not a readable Telegram Desktop JSON export (not JSON, not UTF-8, HTML export ...).

    ``.path`` is the file; ``.report`` (a ``DesktopImportReport``, when parsing had started) says how far
    it got.
    """

    def __init__(self, message: str, *, path: Path | None = None, report: Any = None) -> None:
        super().__init__(message)
        self.path = path
        self.report = report


class HardwareError(TgkitError):
    """Hardware probing or transcoding failed."""


class EncoderUnavailable(HardwareError):
    """A hardware encoder was required but none works (``encoder="auto"`` falls back instead)."""


# RPC error names that mean "this peer / access hash is wrong or gone".
_PEER_ERRORS = frozenset(
    {
        "USERNAME_NOT_OCCUPIED",
        "USERNAME_INVALID",
        "PEER_ID_INVALID",
        "CHANNEL_INVALID",
        "CHANNEL_PRIVATE",
        "CHAT_ID_INVALID",
        "INVITE_HASH_INVALID",
        "INVITE_HASH_EXPIRED",
    }
)
_AUTH_ERRORS = frozenset(
    {
        "AUTH_KEY_UNREGISTERED",
        "AUTH_KEY_INVALID",
        "SESSION_REVOKED",
        "SESSION_EXPIRED",
        "USER_DEACTIVATED",
        "USER_DEACTIVATED_BAN",
        "AUTH_KEY_DUPLICATED",
    }
)


def rpc_name(exc: BaseException) -> str | None:
    """The RPC error name (``FLOOD_WAIT``, ``CHANNEL_INVALID`` ...) of a Telethon error, if any.

    Telethon's specific error classes carry their base class's text in ``.message`` ("BAD_REQUEST"),
    so the name is looked up by class in Telethon's own tables, with numeric suffixes stripped.
    """
    from telethon import errors as tl_errors

    if not isinstance(exc, tl_errors.RPCError):
        return None
    names = _class_names()
    name = names.get(type(exc))
    if name is not None:
        return name
    return (getattr(exc, "message", "") or type(exc).__name__).split("(")[0].strip()


_CLASS_NAMES: dict[type, str] | None = None


def _class_names() -> dict[type, str]:
    global _CLASS_NAMES
    if _CLASS_NAMES is None:
        from telethon.errors import rpcerrorlist

        names = {cls: name for name, cls in rpcerrorlist.rpc_errors_dict.items()}
        for pattern, cls in rpcerrorlist.rpc_errors_re:
            names.setdefault(cls, pattern.replace("_(\\d+)", "").replace("(\\d+)", ""))
        _CLASS_NAMES = names
    return _CLASS_NAMES


def is_peer_error(exc: BaseException) -> bool:
    """True when Telegram says the peer or its access hash is invalid (stale cache entries)."""
    name = rpc_name(exc)
    return name in _PEER_ERRORS if name else False


def translate_telethon_error(exc: BaseException, *, peer: Any = None) -> TgkitError:
    """Map a Telethon/RPC error to tgkit's tree.  Callers do ``raise translate_telethon_error(e) from e``."""
    from telethon import errors as tl_errors

    if isinstance(exc, TgkitError):
        return exc
    shown = f" ({peer!s})" if peer is not None else ""
    if isinstance(exc, tl_errors.FloodWaitError):
        return FloodWaitTooLong(
            f"Telegram asked to wait {exc.seconds}s{shown}", seconds=int(exc.seconds), peer=peer
        )
    name = rpc_name(exc)
    if name in _PEER_ERRORS:
        return PeerNotFound(f"Chat not found or not accessible{shown}: {name}", peer=peer)
    if name in _AUTH_ERRORS or isinstance(exc, tl_errors.UnauthorizedError):
        return AuthError(f"Not authorised: {name or type(exc).__name__}", peer=peer)
    if isinstance(exc, ValueError) and "entity" in str(exc).lower():
        # Telethon raises ValueError("Cannot find any entity corresponding to ...") for unknown peers
        return PeerNotFound(f"Chat not found{shown}", peer=peer)
    if name:
        return TelegramError(f"Telegram error {name}{shown}", peer=peer)
    return TelegramError(f"{type(exc).__name__}: {exc}{shown}", peer=peer)


@contextlib.contextmanager
def telegram_errors(*, peer: Any = None, resolving: bool = False) -> Iterator[None]:
    """The Telethon boundary: any Telethon RPC error raised inside becomes tgkit's error, chained.

    With ``resolving=True``, ``ValueError``/``TypeError`` (Telethon's way of saying "no such entity")
    become :class:`PeerNotFound` too.  tgkit's own errors pass through.
    """
    from telethon import errors as tl_errors

    try:
        yield
    except TgkitError:
        raise
    except tl_errors.RPCError as exc:
        raise translate_telethon_error(exc, peer=peer) from exc
    except (ValueError, TypeError) as exc:
        if not resolving:
            raise
        # Telethon turns USERNAME_NOT_OCCUPIED into ValueError('No user has "x" as username') raised from
        # the RPC error: translate the RPC error so an unknown name is PeerNotFound.
        cause = exc.__cause__
        named = cause if cause is not None and is_peer_error(cause) else exc
        err = translate_telethon_error(named, peer=peer)
        if type(err) is TelegramError:
            err = PeerNotFound(f"Chat not found: {peer!r} ({exc})", peer=peer)
        raise err from exc


_WRITE_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file size limit, e.g. ulimit -f, was reached)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}


def write_error(exc: OSError, path: str | os.PathLike[str]) -> ExportError:
    """An :class:`ExportError` naming ``path`` (or the file the OS named) and why writing it failed."""
    where = exc.filename if isinstance(exc.filename, str) and exc.filename else os.fspath(path)
    reason = _WRITE_REASONS.get(exc.errno or 0) or exc.strerror or str(exc) or type(exc).__name__
    if exc.errno is None:
        # pyarrow raises OSError("... error: File too large") with no errno: recognise the usual texts
        text = str(exc).lower()
        for code, words in (
            (errno.ENOSPC, "no space"),
            (errno.EFBIG, "too large"),
            (errno.EACCES, "permission"),
        ):
            if words in text:
                reason = _WRITE_REASONS[code]
                break
    return ExportError(f"cannot write {where}: {reason}")


@contextlib.contextmanager
def write_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Writers' boundary: an ``OSError`` (disk full, permission, size limit) becomes an ExportError
    naming ``path`` and the reason.  Network errors (``ConnectionError``) are not writers' errors."""
    try:
        yield
    except ConnectionError:
        raise
    except OSError as exc:
        raise write_error(exc, path) from exc
