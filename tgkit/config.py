"""Settings, resolved in one place at call time: explicit argument > ``TGKIT_*`` env var > default.

Nothing here runs at import time; every reader calls :func:`setting` (or :class:`Settings`) when it needs
a value, so tests and notebooks can change the environment between calls.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = ["Settings", "cache_dir", "env_flag", "setting"]

T = TypeVar("T")
_MISSING: Any = object()
_TRUTHY = {"1", "true", "yes", "on", "y"}
_FALSY = {"0", "false", "no", "off", "n", ""}


def env_flag(name: str, default: bool = False) -> bool:
    """Read a boolean environment variable (``1/true/yes/on`` or ``0/false/no/off``)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUTHY:
        return True
    if value in _FALSY:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no)")


def setting(name: str, explicit: T | None = None, default: Any = _MISSING, cast: Callable[[str], T] = str):  # type: ignore[assignment]
    """Resolve ``TGKIT_<NAME>``: the explicit value wins, then the environment, then ``default``.

    Raises :class:`ConfigError` naming the variable when nothing is set and there is no default, or
    when the environment value cannot be cast.
    """
    if explicit is not None:
        return explicit
    var = f"TGKIT_{name.upper()}"
    raw = os.environ.get(var)
    if raw is not None and raw != "":
        try:
            return cast(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{var}={raw!r} is not valid: {exc}") from exc
    if default is _MISSING:
        raise ConfigError(f"{var} is not set (pass {name.lower()}=... or set {var})")
    return default


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where tgkit keeps caches: argument > ``TGKIT_CACHE_DIR`` > the platform user cache dir."""
    value = setting("cache_dir", explicit, default=None)
    if value is None:
        import platformdirs

        return Path(platformdirs.user_cache_dir("tgkit", appauthor=False))
    return Path(value).expanduser()


@dataclass(slots=True)
class Settings:
    """Credentials for a real account.  ``repr`` never shows the api hash."""

    api_id: int
    api_hash: str = field(repr=False)
    session: str

    @classmethod
    def resolve(
        cls, api_id: int | None = None, api_hash: str | None = None, session: str | None = None
    ) -> Settings:
        missing = []
        values: dict[str, Any] = {}
        for name, explicit, cast in (
            ("api_id", api_id, int),
            ("api_hash", api_hash, str),
            ("session", session, str),
        ):
            try:
                values[name] = setting(name, explicit, cast=cast)
            except ConfigError as exc:
                if "is not set" not in str(exc):
                    raise
                missing.append(f"TGKIT_{name.upper()}")
        if missing:
            raise ConfigError(
                "missing " + ", ".join(missing) + ": set them (see README, 'Using a real account')"
            )
        return cls(**values)
