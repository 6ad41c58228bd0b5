"""Many accounts, many machines: a corpus export on Dask distributed.

    frame = await tgkit.export_corpus("accounts.toml", ["@a", "@b", ...], "data/corpus")

Telegram's limits are per account, so a corpus is collected with several accounts at once.  This module
does not schedule anything itself: Dask does (a LocalCluster on a laptop; ``dask scheduler`` plus
``dask worker`` processes, dask-jobqueue or Kubernetes on a cluster).  The design, in four rules:

* **One chat is one Dask task**, ``tgkit.export_chat`` on one account.  Every task asks for the worker
  resource ``{"account": 1}``.
* **One worker process hosts one account** and advertises it with two resources:
  ``account=1`` (one export at a time) and ``account:NAME=1`` (which account it is).  So an account is
  never used by two tasks at once, and the scheduler places chats on whichever account is free.  A worker
  process keeps its account's runtime (a connected Telethon client on its own event-loop thread, its own
  :class:`~tgkit.pacing.Pacer`, its own peer cache) across tasks: one account's backoff never touches
  another's.  The session file is held with an exclusive ``flock`` for the life of that process (the
  kernel drops it when the process dies, so a killed worker's replacement can take it over).
* **Each chat is held with a per-chat ``flock``** in ``OUT/_locks/`` while it is exported.  Dask may
  re-run the task of a worker it declared dead while that "dead" process (a zombie: paused, partitioned)
  still writes: the second writer waits for the lock instead of racing it.  Per-chat checkpoints are the
  commit point, so a re-run resumes exactly after the last committed message: no gap, no duplicate.
* **Secrets never leave the worker that uses them.**  Task arguments are the accounts file PATH and the
  chat; each worker reads its account's api id/hash and session from its own environment or file.
  Nothing secret is in a task key, an argument, a result, a log line or a repr.

What happens when a chat cannot finish on its account:

* ``FloodWaitTooLong``: the account is parked until the wait is over (tasks that land on it return at
  once, untouched) and the chat is resubmitted to the other accounts' workers; it resumes from its
  checkpoint.  When every account is parked for longer than ``max_park_wait`` the remaining chats are
  recorded ``failed`` (a rerun resumes them).
* A dead worker: Dask re-runs the task on another worker (``distributed.scheduler.allowed-failures``).
* A retryable error (connection, server errors after the export's own retries): resubmitted, on another
  account when there is one, up to ``retries`` times.
* A chat-specific error (``PeerNotFound``: unknown, private, banned; a corrupt checkpoint): recorded
  ``failed`` once, never retried elsewhere.

The dataset is ONE folder every worker sees: local disk for a LocalCluster, a shared file system (NFS,
Lustre, CephFS ...) on a cluster.  See docs/DISTRIBUTED.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import fnmatch
import hashlib
import inspect
import json
import logging
import os
import re
import sys
import threading
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from .config import setting
from .errors import (
    AuthError,
    CacheError,
    ConfigError,
    FloodWaitTooLong,
    PeerNotFound,
    TgkitError,
)
from .jupyter import make_progress, run_sync

logger = logging.getLogger(__name__)

__all__ = [
    "ACCOUNT_RESOURCE",
    "Account",
    "account_resources",
    "export_corpus",
    "export_corpus_sync",
    "load_accounts",
    "read_chats_file",
]

ACCOUNT_RESOURCE = "account"  # every chat task asks for {"account": 1}
LOCK_DIR = "_locks"
RESULT_SCHEMA = {
    "chat": pl.String,
    "status": pl.String,  # done / failed / skipped
    "rows": pl.Int64,  # rows committed for the chat (all runs); null when nothing is known
    "seconds": pl.Float64,  # export time over all attempts
    "error": pl.String,
    "account": pl.String,  # the account that finished (or last tried) the chat
    "chat_id": pl.Int64,
    "attempts": pl.Int64,
    "flood_waits": pl.Int64,  # FLOOD_WAITs slept off while exporting the chat (all attempts)
}
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _need_dask() -> Any:
    try:
        import distributed
    except ImportError as exc:  # STYLE #6: an actionable message
        raise ConfigError(
            "tgkit.distributed needs Dask distributed: pip install 'tgkit[distributed]'"
        ) from exc
    return distributed


def account_resources(name: str) -> dict[str, float]:
    """The worker resources that make a Dask worker host account ``name``
    (``dask worker ... --resources "account=1,account:NAME=1"``)."""
    return {ACCOUNT_RESOURCE: 1, f"{ACCOUNT_RESOURCE}:{name}": 1}


# --------------------------------------------------------------------------------------------------
# The accounts file


@dataclass(slots=True)
class Account:
    """One account of an accounts file.  Holds no secret: the api hash and a session string are read
    from the file or the environment only when the worker connects (:meth:`credentials`)."""

    name: str
    source: Path  # the accounts file
    api_id: int | None = None
    api_id_env: str | None = None
    api_hash_env: str | None = None
    inline_api_hash: bool = False  # the file itself holds api_hash (read again at connect time)
    session: Path | None = None  # a Telethon SQLite session file
    session_env: str | None = None  # an environment variable holding a StringSession string
    peer_cache: Path | None = None
    offline: dict[str, Any] | None = field(default=None, repr=False)

    def credentials(self) -> tuple[int, str, Any]:
        """(api_id, api_hash, session) for a real account, read now, on the worker that connects."""
        raw = _read_toml(self.source)
        entry = next((a for a in _entries(raw) if a.get("name") == self.name), {})
        api_id = self.api_id
        if api_id is None and self.api_id_env:
            api_id = int(_env(self.api_id_env, self.name))
        api_hash = entry.get("api_hash") if self.inline_api_hash else None
        if api_hash is None and self.api_hash_env:
            api_hash = _env(self.api_hash_env, self.name)
        if api_id is None or not api_hash:
            raise ConfigError(f"account {self.name!r}: api_id and api_hash (or *_env names) are required")
        session: Any = str(self.session) if self.session is not None else None
        if self.session_env:
            from telethon.sessions import StringSession

            session = StringSession(_env(self.session_env, self.name))
        if session is None:
            raise ConfigError(f"account {self.name!r}: set session (a file path) or session_env")
        return api_id, str(api_hash), session


def _env(var: str, account: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"account {account!r}: environment variable {var} is not set on this worker")
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"accounts file {path} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"accounts file {path} is not valid TOML: {exc}") from exc


def _entries(raw: dict[str, Any]) -> list[dict[str, Any]]:
    found = raw.get("accounts", raw.get("account", []))
    return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []


def load_accounts(path: str | os.PathLike[str]) -> dict[str, Account]:
    """Parse an accounts file (TOML), read at call time.  Relative paths are relative to the file.

    ``[[accounts]]`` tables: ``name``; ``api_id`` or ``api_id_env``; ``api_hash_env`` (or ``api_hash``);
    ``session`` (a session file) or ``session_env``; optional ``peer_cache``.  An ``offline`` table
    (top level for every account; an account's own table refines it) points the account at the
    offline double instead:
    ``offline = {seed = 7, limits = "profile.json" | {...}, world = {World kwargs},
    add_messages = {"public_*" = 1400}}``.
    """
    source = Path(path).expanduser().resolve()
    raw = _read_toml(source)
    base = source.parent
    default_offline = raw.get("offline")
    entries = _entries(raw)
    if not entries:
        raise ConfigError(f"accounts file {source} has no [[accounts]] entries")
    accounts: dict[str, Account] = {}
    for i, entry in enumerate(entries):
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"accounts file {source}: entry {i + 1} needs a name of letters, digits, _.-")
        if name in accounts:
            raise ConfigError(f"accounts file {source}: account {name!r} is listed twice")
        unknown = set(entry) - {
            "name", "api_id", "api_id_env", "api_hash", "api_hash_env", "session", "session_env",
            "peer_cache", "offline",
        }  # fmt: skip
        if unknown:
            raise ConfigError(f"accounts file {source}: account {name!r} has unknown keys {sorted(unknown)}")
        offline = entry.get("offline")
        for table in (default_offline, offline):
            if table is not None and not isinstance(table, dict):
                raise ConfigError(f"account {name!r}: offline must be a table like {{seed = 7}}")
        if default_offline is not None or offline is not None:
            # an account's own offline table refines the top-level one (e.g. adds faults)
            offline = {**(default_offline or {}), **(offline or {})}
        acct = Account(
            name=name,
            source=source,
            api_id=int(entry["api_id"]) if "api_id" in entry else None,
            api_id_env=entry.get("api_id_env"),
            api_hash_env=entry.get("api_hash_env"),
            inline_api_hash="api_hash" in entry,
            session=(base / entry["session"]) if "session" in entry else None,
            session_env=entry.get("session_env"),
            peer_cache=(base / entry["peer_cache"]) if "peer_cache" in entry else None,
            offline=dict(offline) if offline is not None else None,
        )
        if offline is None:
            if acct.api_id is None and not acct.api_id_env:
                raise ConfigError(f"account {name!r}: set api_id or api_id_env")
            if not acct.inline_api_hash and not acct.api_hash_env:
                raise ConfigError(f"account {name!r}: set api_hash_env (or api_hash)")
            if acct.session is None and not acct.session_env:
                raise ConfigError(f"account {name!r}: set session (a file path) or session_env")
        accounts[name] = acct
    return accounts


def read_chats_file(path: str | os.PathLike[str]) -> list[str]:
    """One chat per line (``@name``, a t.me link or an id); blank lines and ``#`` comments ignored."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"chats file {path}: {exc.strerror or exc}") from exc
    chats = []
    for line in text.splitlines():
        item = line.split("#", 1)[0].strip()
        if item:
            chats.append(item)
    return chats


def _chat_key(chat: Any) -> str:
    """One spelling per chat for de-duplication and the per-chat lock: ``@Name``, ``t.me/name`` and
    ``name`` are the same chat."""
    text = str(chat).strip()
    for prefix in ("https://", "http://"):
        if text.lower().startswith(prefix):
            text = text[len(prefix) :]
    for prefix in ("t.me/", "telegram.me/", "@"):
        if text.lower().startswith(prefix):
            text = text[len(prefix) :]
    return text.rstrip("/").lower()


# --------------------------------------------------------------------------------------------------
# Locks (fcntl.flock: released by the kernel when the holding process dies)


class _FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, timeout: float, *, what: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise TimeoutError(f"{what} is held by another process (lock {self.path})") from exc
                time.sleep(0.2)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _chat_lock_path(out: Path, chat: Any) -> Path:
    digest = hashlib.blake2b(_chat_key(chat).encode(), digest_size=10).hexdigest()
    return out / LOCK_DIR / f"chat-{digest}.lock"


# --------------------------------------------------------------------------------------------------
# The worker side: one runtime per account per process


def _load_profile(account: Account) -> dict[str, Any] | None:
    limits = (account.offline or {}).get("limits")
    if limits is None or isinstance(limits, dict):
        return limits
    path = Path(limits)
    if not path.is_absolute():
        path = account.source.parent / path
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"account {account.name!r}: limits profile {path}: {exc}") from exc


def _build_world(offline: dict[str, Any]) -> Any:
    """The offline world of an accounts file: ``World(seed, **world)``, then ``add_messages`` grows the
    chats whose username matches each glob.  Every worker builds it itself: same seed, same world."""
    from .offline import World

    world = World(int(offline.get("seed", 7)), **dict(offline.get("world") or {}))
    for pattern, n in sorted((offline.get("add_messages") or {}).items()):
        for chat_id, spec in sorted(world.chats.items()):
            if spec.username and fnmatch.fnmatchcase(spec.username.lower(), pattern.lower()):
                world.add_messages(chat_id, int(n))
    return world


def _fault_plan(items: list[dict[str, Any]]) -> Any:
    """``faults = [{kind = "flood_wait", seconds = 3600, request = "messages.GetHistory", nth = 2}]``:
    each item calls the FaultPlan method named by ``kind`` (flood_wait, rpc_error, disconnect, drop)."""
    from .offline import FaultPlan

    plan = FaultPlan()
    for item in items:
        spec = dict(item)
        kind = spec.pop("kind", None)
        if kind not in ("flood_wait", "rpc_error", "disconnect", "drop"):
            raise ConfigError(f"offline fault kind {kind!r}: use flood_wait, rpc_error, disconnect or drop")
        if kind == "flood_wait":
            getattr(plan, kind)(int(spec.pop("seconds")), **spec)
        elif kind == "rpc_error":
            getattr(plan, kind)(str(spec.pop("message")), **spec)
        else:
            getattr(plan, kind)(**spec)
    return plan


class _AccountRuntime:
    """One account in one worker process: its client (on a private event-loop thread, because a
    Telethon client is bound to the loop it connected on), its adaptive pacer (learned limits persisted
    per account), its peer cache, its session lock.  Closed by :func:`_close_account_runtimes` (the
    worker plugin calls it when the worker closes)."""

    def __init__(
        self,
        account: Account,
        *,
        lock_timeout: float,
        pacing_dir: str | None = None,
        pacing: str | None = None,
        flood_ceiling: float | None = None,
    ) -> None:
        from .pacing import Pacer

        self.account = account
        self.lock_timeout = lock_timeout
        # One pacer per account for the life of this process, shared by every chat it exports; its
        # learned limits are read from and saved to pacing_dir (default: the cache dir).  Other accounts
        # live in other processes, so one account's flood waits never touch another's pacer.
        self.pacer = Pacer.for_account(
            _pacer_account(account), state_dir=pacing_dir, mode=pacing, flood_ceiling=flood_ceiling
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name=f"tgkit-account-{account.name}", daemon=True
        )
        self.thread.start()
        self.client: Any = None
        self.peer_cache: Any = None
        self.parked_until = 0.0  # time.time() until which a FloodWaitTooLong parks this account
        self.park_reason = ""
        self.session_lock: _FileLock | None = None

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def _connect(self) -> None:
        acct = self.account
        if acct.offline is not None:
            from .offline import connect_demo

            kwargs: dict[str, Any] = {}
            if acct.offline.get("faults"):
                kwargs["faults"] = _fault_plan(acct.offline["faults"])
            if acct.api_hash_env and os.environ.get(acct.api_hash_env):
                # the double accepts any credentials; tests use this to prove secrets stay put
                kwargs["api_hash"] = os.environ[acct.api_hash_env]
            if acct.session_env:
                kwargs["session"] = _env(acct.session_env, acct.name)
            if acct.session is not None:
                from telethon.sessions import SQLiteSession

                self._lock_session(acct.session)
                kwargs["session"] = SQLiteSession(str(acct.session))
            world = _build_world(acct.offline)
            try:
                world.account(acct.name)  # the double's user names are stricter than the file's
            except ValueError as exc:
                raise ConfigError(f"offline account {acct.name!r}: {exc}") from exc
            # the double's limiter (one per account, on this account's server) is what Telegram's
            # per-account limits are on a real account: the pacer has to find it
            self.client = await connect_demo(
                world=world, account=acct.name, limits=_load_profile(acct), **kwargs
            )
            return
        from telethon import TelegramClient

        api_id, api_hash, session = acct.credentials()
        if isinstance(session, str):
            self._lock_session(Path(session))
        client = TelegramClient(session, api_id, api_hash)
        del api_hash
        await client.connect()
        if not await client.is_user_authorized():
            await client.disconnect()
            raise AuthError(
                f"account {acct.name!r}: the session is not logged in; log it in once with "
                "`tgkit export` in a terminal (workers never prompt for a code)"
            )
        self.client = client

    def _lock_session(self, session: Path) -> None:
        if self.session_lock is not None:
            return
        name = str(session)
        base = Path(name if name.endswith(".session") else f"{name}.session")
        lock = _FileLock(base.with_name(base.name + ".lock"))
        try:
            lock.acquire(self.lock_timeout, what=f"the session of account {self.account.name!r}")
        except TimeoutError as exc:
            raise ConfigError(
                f"{exc}: a Telethon session cannot be shared; run one worker per account"
            ) from exc
        self.session_lock = lock

    async def export(self, chat: Any, out: Path, options: dict[str, Any]) -> tuple[Any, int]:
        """Export one chat; returns (ExportResult, flood waits during this chat)."""
        from .export import export_chat

        if self.client is None:
            await self._connect()
        elif not self.client.is_connected():
            await self.client.connect()
        opts = dict(options)
        opts.setdefault("progress", False)
        opts["pacer"] = self.pacer
        if "peer_cache" not in opts:
            # access hashes are per account: one cache file per account
            if self.peer_cache is None:
                from .config import cache_dir
                from .peers import PeerCache

                self.peer_cache = PeerCache(
                    self.account.peer_cache or cache_dir() / f"peers-{_pacer_account(self.account)}.msgpack"
                )
            opts["peer_cache"] = self.peer_cache
        before = self.pacer.flood_waits  # the pacer counts for the account (all chats)
        try:
            result = await export_chat(self.client, chat, out, **opts)
        finally:
            self._save_pacer()
        return result, self.pacer.flood_waits - before

    def _save_pacer(self) -> None:
        try:
            self.pacer.save()
        except OSError as exc:  # the export itself is committed; only the learned limits are lost
            logger.warning("account %s: could not save the pacer's state: %s", self.account.name, exc)

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect the client, save the pacer, stop the loop thread, release the session lock."""
        try:
            if self.client is not None and self.loop.is_running():
                fut = asyncio.run_coroutine_threadsafe(_disconnect(self.client), self.loop)
                try:
                    fut.result(timeout)
                except Exception as exc:  # closing anyway: the process is going away
                    logger.warning("account %s: disconnect failed: %s", self.account.name, exc)
            self._save_pacer()
        finally:
            if self.loop.is_running():
                self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)
            if not self.loop.is_running() and not self.loop.is_closed():
                self.loop.close()
            if self.session_lock is not None:
                self.session_lock.release()
                self.session_lock = None
            self.client = None


async def _disconnect(client: Any) -> None:
    # on the client's own loop (Telethon's disconnect() is only a coroutine-like there)
    await client.disconnect()


def _pacer_account(account: Account) -> str:
    """The key of an account's learned limits (and default peer cache): its name; ``offline.NAME`` for
    an account on the offline double, so a simulated profile's limits never reach a real account."""
    return f"offline.{account.name}" if account.offline is not None else account.name


_RUNTIMES: dict[tuple[str, str], _AccountRuntime] = {}
_RUNTIMES_LOCK = threading.Lock()


def _worker_account() -> str:
    """The account this worker process hosts, from its ``account:NAME`` resource."""
    from distributed import get_worker

    resources = get_worker().state.total_resources
    names = [r.split(":", 1)[1] for r in resources if r.startswith(f"{ACCOUNT_RESOURCE}:")]
    if len(names) != 1:
        raise ConfigError(
            f"this worker hosts {len(names)} accounts; start each worker with "
            '--resources "account=1,account:NAME=1" (one account per worker process)'
        )
    return names[0]


def _runtime(accounts_file: str, name: str, settings: dict[str, Any]) -> _AccountRuntime:
    with _RUNTIMES_LOCK:
        key = (accounts_file, name)
        rt = _RUNTIMES.get(key)
        if rt is None:
            accounts = load_accounts(accounts_file)
            if name not in accounts:
                raise ConfigError(f"this worker hosts account {name!r}, which {accounts_file} does not list")
            rt = _RUNTIMES[key] = _AccountRuntime(
                accounts[name],
                lock_timeout=settings["lock_timeout"],
                pacing_dir=settings.get("pacing_dir"),
                pacing=settings.get("pacing"),
                flood_ceiling=settings.get("flood_ceiling"),
            )
        return rt


def _close_account_runtimes() -> None:
    """Close every account runtime of this process (client, loop thread, session lock).  The worker
    plugin calls it when a Dask worker closes; harmless when there is none."""
    with _RUNTIMES_LOCK:
        runtimes = list(_RUNTIMES.values())
        _RUNTIMES.clear()
    for rt in runtimes:
        rt.close()


def _is_chat_specific(exc: BaseException) -> bool:
    # A chat that does not resolve, is private or banned fails the same way on every account; a corrupt
    # checkpoint is never overwritten.
    return isinstance(exc, PeerNotFound | CacheError)


def _export_task(accounts_file: str, chat: str, out: str, options: dict[str, Any], settings: dict) -> dict:
    """One chat on whichever account this worker hosts.  Returns a plain dict (never a secret)."""
    started = time.perf_counter()
    row: dict[str, Any] = {"chat": chat, "account": None, "status": "retry", "error": None}
    try:
        name = _worker_account()
        row["account"] = name
        rt = _runtime(accounts_file, name, settings)
    except TgkitError as exc:
        row.update(status="account_error", error=f"{type(exc).__name__}: {exc}")
        return row
    now = time.time()
    if rt.parked_until > now:
        # do not touch a parked account: hand the chat back at once
        row.update(status="parked", parked_until=rt.parked_until, error=rt.park_reason, seconds=0.0)
        return row
    lock = _FileLock(_chat_lock_path(Path(out), chat))
    try:
        lock.acquire(settings["lock_timeout"], what=f"chat {chat!r}")
    except TimeoutError as exc:
        row.update(status="retry", error=str(exc), seconds=time.perf_counter() - started)
        return row
    try:
        result, flood_waits = rt.run(rt.export(chat, Path(out), options))
        row.update(
            status="done", rows=result.total_rows, new_rows=result.messages, chat_id=result.chat_id,
            pages=result.pages, flood_waits=flood_waits,
        )  # fmt: skip
    except FloodWaitTooLong as exc:
        rt.parked_until = time.time() + float(exc.seconds)
        rt.park_reason = f"FloodWaitTooLong: {exc}"
        row.update(status="parked", parked_until=rt.parked_until, error=rt.park_reason)
    except (AuthError, ConfigError) as exc:
        # the account cannot work at all: park it for the run, the chat goes elsewhere
        rt.parked_until = float("inf")
        rt.park_reason = f"{type(exc).__name__}: {exc}"
        row.update(status="account_error", error=rt.park_reason)
    except Exception as exc:
        kind = "failed" if _is_chat_specific(exc) else "retry"
        row.update(status=kind, error=f"{type(exc).__name__}: {exc}"[:500])
    finally:
        lock.release()
        row["seconds"] = time.perf_counter() - started
    return row


# --------------------------------------------------------------------------------------------------
# The driver side


def _local_cluster(accounts: Iterable[Account], *, dashboard: bool) -> Any:
    """A LocalCluster of worker processes (one Nanny-managed process per account, one thread each)."""
    distributed = _need_dask()
    workers = {
        f"tgkit-{a.name}": {
            "cls": distributed.Nanny,
            "options": {
                "nthreads": 1,
                "resources": account_resources(a.name),
                "host": "127.0.0.1",
                "dashboard": False,
                "silence_logs": logging.WARNING,
            },
        }
        for a in accounts
    }
    scheduler = {
        "cls": distributed.Scheduler,
        "options": {
            "host": "127.0.0.1",
            "port": 0,
            "dashboard": dashboard,
            "dashboard_address": ":0",
        },
    }
    return distributed.SpecCluster(
        workers=workers, scheduler=scheduler, silence_logs=logging.WARNING, name="tgkit-corpus"
    )


def _account_workers(client: Any) -> dict[str, list[str]]:
    """Account name -> addresses of the workers that host it (right now)."""
    found: dict[str, list[str]] = {}
    for addr, info in client.scheduler_info(n_workers=-1)["workers"].items():
        for r in info.get("resources") or {}:
            if r.startswith(f"{ACCOUNT_RESOURCE}:"):
                found.setdefault(r.split(":", 1)[1], []).append(addr)
    return found


@dataclass(slots=True)
class _ChatState:
    chat: str
    index: int
    attempts: int = 0
    retries: int = 0
    seconds: float = 0.0
    flood_waits: int = 0
    account: str | None = None
    last_error: str | None = None


class _CorpusRun:
    """The driver: submits one task per chat, collects results, resubmits what must move."""

    def __init__(
        self,
        dask: Any,
        accounts_file: str,
        chats: list[str],
        out: Path,
        options: dict[str, Any],
        *,
        retries: int,
        max_park_wait: float,
        settings: dict[str, Any],
        progress: Any,
    ) -> None:
        self.dask = dask
        self.accounts_file = accounts_file
        self.out = out
        self.options = options
        self.retries = retries
        self.max_park_wait = max_park_wait
        self.settings = settings  # for the worker: lock_timeout, pacing_dir, flood_ceiling (no secret)
        self.rows: dict[int, dict[str, Any]] = {}
        self.parked: dict[str, float] = {}
        self.dead_accounts: set[str] = set()
        self.done_by: dict[str, int] = {}
        self.states = [_ChatState(c, i) for i, c in enumerate(chats)]
        self.token = hashlib.blake2b(f"{time.time_ns()}:{os.getpid()}".encode(), digest_size=4).hexdigest()
        self.bar = make_progress(progress, desc="corpus")
        self.total = len(chats)
        self.dashboard = _dashboard_link(dask)

    def _submit(self, st: _ChatState, *, avoid: str | None = None) -> Any:
        st.attempts += 1
        restrict = None
        hosts = _account_workers(self.dask)
        now = time.time()
        usable = {
            a: addrs
            for a, addrs in hosts.items()
            if self.parked.get(a, 0) <= now and a not in self.dead_accounts and a != avoid
        }
        if usable and len(usable) < len(hosts):
            restrict = sorted(addr for addrs in usable.values() for addr in addrs)
        # the key names the chat's position and the attempt: no chat text, nothing secret
        key = f"tgkit-export-{self.token}-{st.index}-{st.attempts}"
        return self.dask.submit(
            _export_task, self.accounts_file, st.chat, str(self.out), self.options, self.settings,
            key=key, resources={ACCOUNT_RESOURCE: 1}, workers=restrict, allow_other_workers=False,
            pure=False,
        )  # fmt: skip

    def _record(self, st: _ChatState, status: str, **extra: Any) -> None:
        row = {
            "chat": st.chat, "status": status, "rows": extra.get("rows"), "seconds": st.seconds,
            "error": extra.get("error", st.last_error if status == "failed" else None),
            "account": st.account, "chat_id": extra.get("chat_id"), "attempts": st.attempts,
            "flood_waits": st.flood_waits,
        }  # fmt: skip
        self.rows[st.index] = row
        if status == "done" and st.account:
            self.done_by[st.account] = self.done_by.get(st.account, 0) + 1
        if status == "done":
            self.bar.update(messages=int(extra.get("new_rows") or 0))
        self._show()

    def _show(self) -> None:
        finished = len(self.rows)
        per = ", ".join(f"{a} {n}" for a, n in sorted(self.done_by.items()))
        now = time.time()
        parked = [a for a, t in sorted(self.parked.items()) if t > now]
        extra = f" | parked: {', '.join(parked)}" if parked else ""
        dash = f" | dashboard {self.dashboard}" if self.dashboard else ""
        self.bar.set_stage(f"{finished}/{self.total} chats | done per account: {per or '-'}{extra}{dash}")

    def _all_parked_until(self) -> float | None:
        hosts = _account_workers(self.dask)
        now = time.time()
        alive = [a for a in hosts if a not in self.dead_accounts]
        if not alive:
            return float("inf")
        if all(self.parked.get(a, 0) > now for a in alive):
            return min(self.parked[a] for a in alive)
        return None

    def run(self) -> None:
        from distributed import as_completed

        self._show()
        pending: dict[Any, _ChatState] = {}
        futures = []
        for st in self.states:
            fut = self._submit(st)
            pending[fut.key] = st
            futures.append(fut)
        ac = as_completed(futures)
        for fut in ac:
            st = pending.pop(fut.key)
            try:
                res = fut.result()
            except Exception as exc:  # KilledWorker after allowed-failures, or a task that raised
                st.last_error = f"{type(exc).__name__}: {exc}"[:500]
                self._record(st, "failed")
                continue
            finally:
                fut.release()
            st.seconds += float(res.get("seconds") or 0.0)
            st.flood_waits += int(res.get("flood_waits") or 0)
            st.account = res.get("account") or st.account
            status = res["status"]
            if status == "done":
                self._record(st, "done", rows=res.get("rows"), chat_id=res.get("chat_id"),
                             new_rows=res.get("new_rows"))  # fmt: skip
                continue
            st.last_error = res.get("error")
            if status == "failed":
                self._record(st, "failed", error=st.last_error)
                continue
            avoid = None
            if status == "parked":
                self.parked[st.account or ""] = float(res.get("parked_until") or 0)
                until = self._all_parked_until()
                if until is not None:
                    if until - time.time() > self.max_park_wait:
                        self._fail_everything(pending, ac, st, until)
                        return
                    # every account is parked, briefly: wait for the first to come back (no busy loop)
                    time.sleep(max(0.0, until - time.time()))
            elif status == "account_error":
                self.dead_accounts.add(st.account or "")
                if self._all_parked_until() == float("inf"):
                    self._fail_everything(pending, ac, st, float("inf"))
                    return
            else:  # retry
                st.retries += 1
                avoid = st.account
                if st.retries > self.retries:
                    self._record(st, "failed", error=st.last_error)
                    continue
            new = self._submit(st, avoid=avoid)
            pending[new.key] = st
            ac.add(new)
            self._show()

    def _fail_everything(self, pending: dict, ac: Any, st: _ChatState, until: float) -> None:
        when = "for this run" if until == float("inf") else f"for another {until - time.time():.0f}s"
        reason = f"every account is parked or unusable {when} (last: {st.last_error}); rerun later to resume"
        self._record(st, "failed", error=reason)
        for key, other in list(pending.items()):
            with contextlib.suppress(Exception):
                self.dask.cancel([key], force=True)
            other.last_error = reason
            self._record(other, "failed", error=reason)
        pending.clear()

    def frame(self) -> pl.DataFrame:
        rows = [self.rows[i] for i in sorted(self.rows)]
        return (
            pl.DataFrame(rows, schema=RESULT_SCHEMA, orient="row")
            if rows
            else pl.DataFrame(schema=RESULT_SCHEMA)
        )


def _normalise_chats(chats: Any) -> list[str]:
    if isinstance(chats, str | os.PathLike) and Path(chats).is_file():
        return read_chats_file(chats)
    if isinstance(chats, str):
        return [chats]
    items = [str(c).strip() for c in chats]
    return [c for c in items if c]


def _run_corpus(
    accounts: str | os.PathLike[str],
    chats: Any,
    out: str | os.PathLike[str],
    *,
    client: Any,
    scheduler: str | None,
    comments: bool,
    progress: Any,
    retries: int,
    max_park_wait: float | None,
    lock_timeout: float,
    pacing_dir: str | os.PathLike[str] | None,
    pacing: str | None,
    export_options: dict[str, Any],
) -> pl.DataFrame:
    from .dataset import ChatPartition, check_output_dir, update_manifest

    distributed = _need_dask()
    accounts_file = str(Path(accounts).expanduser().resolve())
    known = load_accounts(accounts_file)  # a bad file fails here, before a cluster starts
    chat_list = _normalise_chats(chats)
    root = check_output_dir(out)
    options = dict(export_options)
    if comments:
        options["comments"] = True
    from .export import export_chat

    accepted = inspect.signature(export_chat).parameters
    for name in options:
        if name == "pacer":
            raise ConfigError(
                "pacer= cannot be given to export_corpus: every account keeps its own adaptive pacer on "
                "its worker (pacing_dir= says where their learned limits are kept)"
            )
        if name in ("client", "chat", "out") or name not in accepted:
            # user input checked here, before a cluster starts, not once per chat on every worker
            raise ConfigError(f"{name}= is not an option of export_chat in this tgkit")
    ceiling = options.pop("flood_ceiling", None)  # goes to each account's pacer
    settings: dict[str, Any] = {
        "lock_timeout": lock_timeout,
        # None: each worker's cache dir (TGKIT_CACHE_DIR there), read when its account first works
        "pacing_dir": str(Path(pacing_dir).expanduser().resolve()) if pacing_dir is not None else None,
        "flood_ceiling": float(ceiling) if ceiling is not None else None,
        # one mode for every account of the run: the driver's argument or TGKIT_PACING, read now
        "pacing": _pacing_mode(pacing),
    }
    wait = float(
        setting("flood_ceiling", max_park_wait if max_park_wait is not None else ceiling, 900.0, float)
    )

    seen: dict[str, int] = {}
    unique: list[str] = []
    skipped: list[str] = []
    for chat in chat_list:
        key = _chat_key(chat)
        if key in seen:
            skipped.append(chat)
            continue
        seen[key] = len(unique)
        unique.append(chat)

    cluster = None
    dask = client
    owns_client = False
    try:
        if dask is None:
            if scheduler:
                dask = distributed.Client(scheduler)
            else:
                cluster = _local_cluster(known.values(), dashboard=_has_bokeh())
                dask = distributed.Client(cluster)
            owns_client = True
        hosts = _account_workers(dask)
        if not hosts:
            deadline = time.monotonic() + 30
            while not hosts and time.monotonic() < deadline:
                time.sleep(0.5)
                hosts = _account_workers(dask)
        if not hosts:
            raise ConfigError(
                "no Dask worker hosts an account: start workers with "
                '`dask worker ADDRESS --nworkers 1 --nthreads 1 --resources "account=1,account:NAME=1"`'
            )
        # every worker closes its accounts (client, session lock) when it closes: a prompt shutdown
        from ._dask import AccountTeardown

        dask.register_plugin(AccountTeardown())
        unknown = sorted(set(hosts) - set(known))
        if unknown:
            raise ConfigError(f"workers host accounts that {accounts_file} does not list: {unknown}")
        run = _CorpusRun(
            dask, accounts_file, unique, root, options, retries=retries, max_park_wait=wait,
            settings=settings, progress=progress,
        )  # fmt: skip
        run.run()
        frame = run.frame()
        run.bar.close()
    finally:
        if owns_client and dask is not None:
            dask.close()
        if cluster is not None:
            cluster.close()
    # The manifest is rewritten by every process (read-modify-write): repair it from the checkpoints,
    # which are the commit point, so that no concurrent update is lost.
    for chat_id in frame.filter(pl.col("chat_id").is_not_null())["chat_id"].to_list():
        with contextlib.suppress(CacheError, OSError):
            cp = ChatPartition(root, chat_id).load()
            if cp is not None:
                update_manifest(root, cp)
    if skipped:
        extra = pl.DataFrame(
            [{"chat": c, "status": "skipped", "rows": None, "seconds": 0.0,
              "error": "listed twice", "account": None, "chat_id": None, "attempts": 0, "flood_waits": 0}
             for c in skipped],
            schema=RESULT_SCHEMA, orient="row",
        )  # fmt: skip
        frame = pl.concat([frame, extra])
    return frame


def _pacing_mode(pacing: str | None) -> str:
    from .pacing import _mode

    return _mode(pacing)


def _dashboard_link(dask: Any) -> str | None:
    """The scheduler's dashboard address, when it serves one (the pages need bokeh installed)."""
    with contextlib.suppress(Exception):
        if "dashboard" in (dask.scheduler_info(n_workers=0).get("services") or {}):
            return str(dask.dashboard_link)
    return None


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


async def export_corpus(
    accounts: str | os.PathLike[str],
    chats: Iterable[Any] | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    client: Any = None,
    comments: bool = False,
    scheduler: str | None = None,
    progress: Any = "auto",
    retries: int = 2,
    max_park_wait: float | None = None,
    lock_timeout: float = 600.0,
    pacing_dir: str | os.PathLike[str] | None = None,
    pacing: str | None = None,
    **export_options: Any,
) -> pl.DataFrame:
    """Export ``chats`` into the dataset ``out`` with every account of the ``accounts`` file, on Dask.

    ``client``: a ``distributed.Client`` to use; else ``scheduler`` (an address such as
    ``tcp://host:8786``); else a LocalCluster with one worker process per account.  ``chats``: a list,
    or a chats file (one per line, ``#`` comments).  ``export_options`` go to every
    :func:`tgkit.export_chat` (except ``pacer``: every account paces itself, see below).  Returns one
    row per chat: chat, status (``done``/``failed``/``skipped``), rows (committed for the chat), seconds,
    error, account, chat_id, attempts, flood_waits.

    Each account's worker keeps ONE adaptive pacer (``Pacer.for_account``) for its whole life, shared by
    every chat it exports and saved after each chat: its learned limits are kept in ``pacing_dir``
    (default: the worker's cache dir, ``TGKIT_CACHE_DIR``; a shared folder lets a replacement worker on
    another machine start from them).  ``pacing`` (``adaptive``/``fixed``/``off``; default
    ``TGKIT_PACING`` as the caller sees it) and ``flood_ceiling`` (an export option) go to every pacer.
    """
    return await asyncio.to_thread(
        _run_corpus,
        accounts,
        chats,
        out,
        client=client,
        scheduler=scheduler,
        comments=comments,
        progress=progress,
        retries=retries,
        max_park_wait=max_park_wait,
        lock_timeout=lock_timeout,
        pacing_dir=pacing_dir,
        pacing=pacing,
        export_options=export_options,
    )


async def cli_export(args: Any) -> int:
    """``tgkit export --accounts FILE --chats-file FILE --out DIR [--scheduler ADDRESS]``: exit 0 when
    every chat is done (or skipped as a duplicate), 3 when some failed (listed one per line)."""
    if args.accounts is None:
        raise ConfigError("--chats-file needs --accounts (an accounts file; see docs/DISTRIBUTED.md)")
    chats: list[str] = read_chats_file(args.chats_file) if args.chats_file is not None else []
    if args.chat:  # one CHAT, or several (`tgkit export A B --accounts FILE`)
        chats[:0] = [args.chat] if isinstance(args.chat, str) else list(args.chat)
    if not chats:
        raise ConfigError("no chats: give --chats-file (one chat per line) or a CHAT")
    media: Any = [m.strip() for m in args.media.split(",") if m.strip()] or None
    frame = await export_corpus(
        args.accounts, chats, args.out, scheduler=args.scheduler, progress="text", resume=not args.no_resume,
        media=media if media != ["all"] else "all", transcode=args.transcode, takeout=args.takeout,
        refresh_days=args.refresh_days, limit=args.limit,
    )  # fmt: skip
    counts = frame.group_by("status").len().sort("status")
    print(" ".join(f"{s}={n}" for s, n in counts.iter_rows()) + f"  dataset: {Path(args.out).resolve()}")
    failed = frame.filter(pl.col("status") == "failed")
    for row in failed.iter_rows(named=True):
        print(f"failed: {row['chat']}: {row['error']}", file=sys.stderr)
    return 3 if failed.height else 0


def export_corpus_sync(*args: Any, **kwargs: Any) -> pl.DataFrame:
    """Blocking twin of :func:`export_corpus` (works in scripts and inside a running notebook loop)."""
    return run_sync(export_corpus(*args, **kwargs))
