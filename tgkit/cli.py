"""``tgkit demo | export | probe | import-desktop``: a thin client over the library.

Library errors (every :class:`~tgkit.errors.TgkitError`, and a failed write) become one ``tgkit: ...`` line
on stderr and a non-zero exit, never a traceback; ``tgkit --debug COMMAND`` shows the traceback too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from .errors import ConfigError, TgkitError, write_error

__all__ = ["main"]

DEMO_OUT = Path("data/exports/demo")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tgkit",
        description="Export and analyse Telegram data. Runs offline on a built-in demo world; "
        "real accounts use TGKIT_API_ID, TGKIT_API_HASH and TGKIT_SESSION.",
    )
    p.add_argument(
        "--debug", action="store_true", help="on an error, also print the traceback (for bug reports)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser(
        "demo",
        help="export the offline demo world and print a summary",
        description="Export the embedded demo channel and group through the offline "
        "Telegram double (real Telethon, no account needed) and show what came out.",
    )
    d.add_argument("--out", type=Path, default=DEMO_OUT, help=f"dataset folder (default: {DEMO_OUT})")
    d.add_argument("--seed", type=int, default=7, help="demo world seed (default: 7)")
    d.add_argument("--no-media", action="store_true", help="skip media downloads")
    d.add_argument("--no-plots", action="store_true", help="do not write PNG plots")

    e = sub.add_parser(
        "export",
        help="export chats from a real account into one Parquet dataset",
        description="Export one or more chats (@username, t.me link or id) with a real account into "
        "one dataset, several at a time through the account's one pacer. Needs TGKIT_API_ID, "
        "TGKIT_API_HASH (from my.telegram.org) and TGKIT_SESSION (a session file path). Reruns resume "
        "and pick up new messages. Exit 0 when every chat is done, 3 when some failed (one line each).",
    )
    e.add_argument("chat", nargs="*", help="@username, https://t.me/name or a numeric id (several allowed)")
    e.add_argument("--out", type=Path, required=True, help="dataset folder")
    e.add_argument(
        "--chats-file", type=Path, help="chats to export, one per line (# comments, blank lines ignored)"
    )
    e.add_argument(
        "--all-dialogs", action="store_true", help="export every chat of the account's dialog list"
    )
    e.add_argument(
        "--kinds",
        default="channel,group,user",
        help="with --all-dialogs: which dialogs, any of channel,group,user (default: all three)",
    )
    e.add_argument("--comments", action="store_true", help="also export the comments under channel posts")
    e.add_argument("--since", type=_when, help="only messages from this date or ISO datetime on (UTC)")
    e.add_argument("--until", type=_when, help="only messages before this date or ISO datetime (UTC)")
    e.add_argument(
        "--concurrency", type=int, default=4, help="chats exported at a time (default 4; one shared pacer)"
    )
    e.add_argument(
        "--media", default="", help="comma-separated kinds to download: photo,video,document,... or all"
    )
    e.add_argument(
        "--transcode", action="store_true", help="normalise videos to H.264 720p (GPU when present)"
    )
    e.add_argument("--takeout", action="store_true", help="use a takeout session (lower flood limits)")
    e.add_argument(
        "--refresh-days", type=float, default=0, help="re-read the last N days for edits/deletions"
    )
    e.add_argument("--limit", type=int, default=None, help="stop after N new messages (per chat)")
    e.add_argument(
        "--no-resume", action="store_true", help="start the chats over (drops their exported parts)"
    )
    e.add_argument(
        "--pseudonymise",
        type=Path,
        metavar="KEYFILE",
        help="write the dataset pseudonymised with this key file (created when missing; docs/PRIVACY.md)",
    )
    e.add_argument(
        "--accounts", type=Path, help="accounts file (TOML): several accounts on Dask (tgkit[distributed])"
    )
    e.add_argument(
        "--scheduler", help="Dask scheduler address (default: a LocalCluster, one worker per account)"
    )

    ch = sub.add_parser(
        "chats",
        help="list the account's dialogs (chats, channels, groups, users)",
        description="Print the account's dialog list (pinned first, then newest first), or write it "
        "as Parquet with --out. The 'chat' column is what `tgkit export` takes. Needs TGKIT_API_ID, "
        "TGKIT_API_HASH and TGKIT_SESSION.",
    )
    ch.add_argument(
        "--kinds", default="channel,group,user", help="any of channel,group,user (default: all three)"
    )
    ch.add_argument(
        "--archived", choices=("all", "only", "none"), default="all",
        help="archived dialogs: all (default), only the archive, or none of it",
    )  # fmt: skip
    ch.add_argument("--limit", type=int, default=None, help="fetch at most N dialogs")
    ch.add_argument("--out", type=Path, help="write the list to this Parquet file instead of printing it")

    pr = sub.add_parser(
        "probe",
        help="report hardware video encoding (VA-API, other encoders, CPU fallback)",
        description="Probe render nodes, libva, FFmpeg encoders and trial encodes; print "
        "one line, or the whole report with --json.",
    )
    pr.add_argument("--json", action="store_true", help="print the whole report as JSON")
    pr.add_argument("--refresh", action="store_true", help="ignore cached probe results")

    im = sub.add_parser(
        "import-desktop",
        help="import a Telegram Desktop export (result.json)",
        description="Import Telegram Desktop's JSON export (a result.json file or its folder) "
        "into the same schema as an API export.",
    )
    im.add_argument("path", type=Path, help="result.json or the export folder")
    im.add_argument("--out", type=Path, required=True, help="dataset folder")
    im.add_argument(
        "--pseudonymise",
        type=Path,
        metavar="KEYFILE",
        help="write the rows pseudonymised with this key file (created when missing; docs/PRIVACY.md)",
    )

    ps = sub.add_parser(
        "pseudonymise",
        help="write a pseudonymised copy of a dataset (keyed, consistent; see docs/PRIVACY.md)",
        description="Copy dataset SRC to --out with users' ids, names, usernames, mentions and file "
        "names replaced by keyed pseudonyms (HMAC-SHA256). The key file is created when missing; "
        "keep it outside the dataset and never share it.",
    )
    ps.add_argument("src", type=Path, help="the dataset to pseudonymise")
    ps.add_argument("--out", type=Path, required=True, help="folder for the pseudonymised dataset")
    ps.add_argument(
        "--key-file", type=Path, required=True, help="secret key (32 bytes, 0600; created if missing)"
    )
    ps.add_argument("--all-peers", action="store_true", help="pseudonymise channels and groups too")
    ps.add_argument(
        "--copy-media", action="store_true", help="copy media files (their content may identify people)"
    )
    return p


def _when(text: str) -> Any:
    """``--since/--until``: a date (``2026-01-31``) or an ISO datetime; naive means UTC."""
    from datetime import UTC, date, datetime

    value = text.strip()
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date (YYYY-MM-DD) or an ISO datetime (YYYY-MM-DDTHH:MM[:SS][+HH:MM])"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _kinds(text: str) -> tuple[str, ...]:
    from .corpus import KINDS

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ConfigError(f"--kinds {text!r}: use any of {','.join(KINDS)}")
    return kinds


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ConfigError as exc:
        _report(args, exc, f"configuration error: {exc}")
        return 2
    except TgkitError as exc:
        where = getattr(exc, "checkpoint", None)
        hint = f" (checkpoint: {where}; rerun to resume)" if where else ""
        _report(args, exc, f"error: {exc}{hint}")
        return 1
    except OSError as exc:
        if isinstance(exc, ConnectionError):
            _report(args, exc, f"error: lost the connection: {exc}")
        else:  # a write of the CLI's own (plots, summaries): one line naming the path
            _report(args, exc, f"error: {write_error(exc, Path.cwd())}")
        return 1
    except KeyboardInterrupt:
        print("tgkit: interrupted; what was exported so far is committed, rerun to resume", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        return asyncio.run(_demo(args))
    if args.command == "export":
        return asyncio.run(_export(args))
    if args.command == "chats":
        return asyncio.run(_chats(args))
    if args.command == "probe":
        return _probe(args)
    if args.command == "import-desktop":
        return _import_desktop(args)
    if args.command == "pseudonymise":
        return _pseudonymise(args)
    raise AssertionError(args.command)


def _report(args: argparse.Namespace, exc: BaseException, line: str) -> None:
    if args.debug:
        traceback.print_exception(exc)
    print(f"tgkit: {line}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------


async def _demo(args: argparse.Namespace) -> int:
    import polars as pl

    from . import Pacer, export_chat, offline, open_dataset, with_names

    out = args.out
    print(f"tgkit demo: building the offline demo world (seed {args.seed}) ...")
    client = await offline.connect_demo(world=offline.World(seed=args.seed))
    results = []
    try:
        for chat, media in (
            ("@tgkit_demo", None if args.no_media else ["photo", "video"]),
            ("@tgkit_group", None),
        ):
            # The demo world has no rate limits: pacing it like a real account would only make it slow.
            r = await export_chat(
                client,
                chat,
                out,
                resume=False,
                media=media,
                peer_cache=False,
                progress="auto",
                pacer=Pacer.unlimited(),
            )
            results.append(r)
    finally:
        await client.disconnect()

    print()
    for r in results:
        files = ""
        if r.media_downloaded or r.media_failed:
            files = f", media: {r.media_downloaded} downloaded, {r.media_failed} failed"
            if r.media_retried:
                files += f", {r.media_retried} retried"
        print(f"{r.peer:<14} {r.messages:>6,} rows in {r.seconds:5.2f}s ({r.msgs_per_s:>7,.0f} msg/s){files}")
        calls = ", ".join(f"{k} {v}" for k, v in r.api_calls.items())
        print(f"{'':14} API calls: {calls}")
    print()
    print("Stages of the channel export:")
    assert results[0].metrics is not None
    print(results[0].metrics.summary_text())

    lf = open_dataset(out)
    per_day = (
        lf.filter(pl.col("chat_id") == results[0].chat_id)
        .group_by(pl.col("date").dt.date().alias("day"))
        .len()
        .sort("day")
        .collect()
    )
    top = (
        with_names(lf, open_dataset(out, "peers"))  # names come free with the history pages
        .filter((pl.col("chat_id") == results[1].chat_id) & pl.col("sender_id").is_not_null())
        .group_by("sender_id", "sender_name", "sender_username")
        .len()
        .sort(["len", "sender_id"], descending=[True, False])
        .head(5)
        .collect()
    )
    print()
    print(
        f"Channel messages per day: {per_day.height} days, median {per_day['len'].median()!s}, "
        f"max {per_day['len'].max()!s}"
    )
    print("Top senders in the group:")
    for row in top.iter_rows(named=True):
        print(
            f"  {row['sender_name']} (@{row['sender_username']}, id {row['sender_id']}): {row['len']} messages"
        )

    plots: list[Path] = []
    if not args.no_plots:
        plots = _demo_plots(results, out)

    print()
    print(f"Dataset:   {out}/  (open with tgkit.open_dataset({str(out)!r}) or any Parquet reader)")
    print(f"Tables:    {out / 'messages'}/  {out / 'peers'}/  {out / 'chats'}/")
    for r in results:
        print(
            f"Metrics:   {r.metrics_path}  ({r.resources_path.name if r.resources_path else 'no resources'})"
        )
    if not args.no_media:
        print(f"Media:     {out / '_media'}/")
    for p in plots:
        print(f"Plot:      {p}")
    failed = sum(r.media_failed for r in results)
    if failed:
        print(f"tgkit: the demo export failed {failed} media download(s); see media_error in the dataset")
        return 1
    return 0


def _demo_plots(results: list[Any], out: Path) -> list[Path]:
    from .plots import plot_resources, plot_stages

    plot_dir = out / "_plots"  # dataset v2 (#14): everything that is not a table starts with "_"
    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    r = results[0]
    fig = plot_stages(r.metrics)
    path = plot_dir / "stages.png"
    fig.savefig(path, dpi=100)
    paths.append(path)
    if r.resources_path is not None:
        fig = plot_resources(r.resources_path)
        path = plot_dir / "resources.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


async def _export(args: argparse.Namespace) -> int:
    from .config import Settings

    if args.accounts is not None:
        from .distributed import cli_export

        if args.pseudonymise is not None:  # never write plain rows when pseudonyms were asked for
            raise ConfigError("--pseudonymise does not work with --accounts yet; export the chats one by one")

        return await cli_export(args)
    chats: list[Any] = list(args.chat)
    if args.chats_file is not None:
        from .corpus import read_chats_file

        chats += read_chats_file(args.chats_file)
    kinds = _kinds(args.kinds) if args.all_dialogs else ()
    if not chats and not args.all_dialogs:
        raise ConfigError("give a CHAT, --chats-file FILE or --all-dialogs (or --accounts with --chats-file)")
    if args.concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1, not {args.concurrency}")
    settings = Settings.resolve()  # ConfigError naming every missing variable, before anything else
    media: Any = [m.strip() for m in args.media.split(",") if m.strip()] or None
    if media == ["all"]:
        media = "all"
    options: dict[str, Any] = {
        "resume": not args.no_resume, "media": media, "transcode": args.transcode, "takeout": args.takeout,
        "refresh_days": args.refresh_days, "limit": args.limit, "pseudonymise": args.pseudonymise,
    }  # fmt: skip
    client = await _real_client(settings)
    try:
        if len(chats) == 1 and not args.all_dialogs and args.chats_file is None:
            return await _export_one(client, chats[0], args, options)
        return await _export_many(client, chats, kinds, args, options)
    finally:
        await client.disconnect()


async def _export_one(client: Any, chat: Any, args: argparse.Namespace, options: dict[str, Any]) -> int:
    from .corpus import export_options
    from .export import export_chat

    options = export_options(options, comments=args.comments, since=args.since, until=args.until)
    r = await export_chat(client, chat, args.out, **options)
    print(r)
    print(f"dataset: {r.path}  metrics: {r.metrics_path}")
    return 0


async def _export_many(
    client: Any, chats: list[Any], kinds: tuple[str, ...], args: argparse.Namespace, options: dict[str, Any]
) -> int:
    import polars as pl

    from .corpus import export_chats, list_dialogs

    if args.all_dialogs:
        dialogs = await list_dialogs(client, kinds=kinds)
        chats = chats + dialogs["chat"].to_list()
    frame = await export_chats(
        client, chats, args.out, concurrency=args.concurrency, comments=args.comments, since=args.since,
        until=args.until, progress="auto", **options,
    )  # fmt: skip
    for row in frame.iter_rows(named=True):
        if row["status"] == "done":
            print(f"{row['chat']}: done, {row['rows']:,} new rows ({row['total_rows']:,} in the dataset)")
        elif row["status"] == "skipped":
            print(f"{row['chat']}: skipped, {row['error']}")
    counts = dict(frame.group_by("status").len().iter_rows())
    summary = " ".join(f"{s}={counts.get(s, 0)}" for s in ("done", "failed", "skipped"))
    new_rows = int(frame["rows"].fill_null(0).sum())
    print(f"{summary}  new rows={new_rows:,}  dataset: {Path(args.out).resolve()}")
    failed = frame.filter(pl.col("status") == "failed")
    for row in failed.iter_rows(named=True):
        print(f"failed: {row['chat']}: {row['error']}", file=sys.stderr)
    return 3 if failed.height else 0


async def _chats(args: argparse.Namespace) -> int:
    from .config import Settings
    from .corpus import list_dialogs

    kinds = _kinds(args.kinds)
    archived = {"all": None, "only": True, "none": False}[args.archived]
    settings = Settings.resolve()
    client = await _real_client(settings)
    try:
        frame = await list_dialogs(client, kinds=kinds, archived=archived, limit=args.limit)
    finally:
        await client.disconnect()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(args.out)
        print(f"{frame.height} dialogs -> {args.out.resolve()}")
        return 0
    for row in frame.iter_rows(named=True):
        when = row["last_message_date"]
        flags = ("P" if row["pinned"] else "-") + ("A" if row["archived"] else "-")
        last = f"{when:%Y-%m-%d %H:%M}" if when is not None else ""
        print(
            f"{flags} {row['kind']:<7} {row['chat']:<28} {row['unread']:>5} unread  {last:<16}  {row['title'] or ''}"
        )
    print(f"{frame.height} dialogs (P pinned, A archived)")
    return 0


async def _real_client(settings: Any) -> Any:
    from telethon import TelegramClient

    from .errors import AuthError

    session = settings.session
    client = TelegramClient(session, settings.api_id, settings.api_hash)
    await client.connect()
    session_file = Path(session if str(session).endswith(".session") else f"{session}.session")
    if session_file.exists():
        os.chmod(session_file, 0o600)  # Telethon creates it with the umask's mode; it holds the auth key
    if not await client.is_user_authorized():
        if sys.stdin.isatty():
            await client.start()  # asks for the phone number and the login code, once
        else:
            await client.disconnect()
            raise AuthError(f"session {session_file} is not logged in; run `tgkit export` once in a terminal")
    return client


def _probe(args: argparse.Namespace) -> int:
    from . import hardware

    report = hardware.probe(refresh=args.refresh)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(hardware.describe(report))
    return 0


def _import_desktop(args: argparse.Namespace) -> int:
    import warnings

    from .desktop import DesktopTruncatedWarning, import_desktop

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DesktopTruncatedWarning)
        result = import_desktop(args.path, out=args.out, progress="auto", pseudonymise=args.pseudonymise)
    print(result.summary())
    truncated = [w for w in caught if issubclass(w.category, DesktopTruncatedWarning)]
    for w in truncated:
        print(f"tgkit: warning: {w.message}", file=sys.stderr)
    # a cut file imported what came before the cut: that is partial, so say so in the exit code too
    return 3 if truncated else 0


def _pseudonymise(args: argparse.Namespace) -> int:
    from .privacy import Pseudonymiser, pseudonymise

    keep = () if args.all_peers else ("channels",)
    out = pseudonymise(args.src, args.out, key_file=args.key_file, keep=keep, copy_media=args.copy_media)
    print(
        f"pseudonymised {args.src} -> {out} (key fingerprint {Pseudonymiser(args.key_file, keep=keep).fingerprint})"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
