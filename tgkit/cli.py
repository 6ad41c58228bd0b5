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
        help="export a chat from a real account into a Parquet dataset",
        description="Export CHAT (@username, t.me link or id) with a real account. Needs "
        "TGKIT_API_ID, TGKIT_API_HASH (from my.telegram.org) and TGKIT_SESSION (a session "
        "file path). Reruns resume and pick up new messages.",
    )
    e.add_argument("chat", nargs="?", help="@username, https://t.me/name or a numeric id")
    e.add_argument("--out", type=Path, required=True, help="dataset folder")
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
    e.add_argument("--limit", type=int, default=None, help="stop after N new messages")
    e.add_argument("--no-resume", action="store_true", help="start this chat over (drops its exported parts)")
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
        "--chats-file", type=Path, help="chats to export, one per line (# comments); with --accounts"
    )
    e.add_argument(
        "--scheduler", help="Dask scheduler address (default: a LocalCluster, one worker per account)"
    )

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

    from . import Pacer, export_chat, offline, open_dataset

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
        lf.filter((pl.col("chat_id") == results[1].chat_id) & pl.col("sender_id").is_not_null())
        .group_by("sender_id")
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
        print(f"  user {row['sender_id']}: {row['len']} messages")

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
    from .export import export_chat

    if args.accounts is not None or args.chats_file is not None:
        from .distributed import cli_export

        if args.pseudonymise is not None:  # never write plain rows when pseudonyms were asked for
            raise ConfigError("--pseudonymise does not work with --accounts yet; export the chats one by one")

        return await cli_export(args)
    if args.chat is None:
        raise ConfigError("give a CHAT (or --accounts with --chats-file)")
    settings = Settings.resolve()  # ConfigError naming every missing variable, before anything else
    media: Any = [m.strip() for m in args.media.split(",") if m.strip()] or None
    if media == ["all"]:
        media = "all"
    client = await _real_client(settings)
    try:
        r = await export_chat(
            client,
            args.chat,
            args.out,
            resume=not args.no_resume,
            media=media,
            transcode=args.transcode,
            takeout=args.takeout,
            refresh_days=args.refresh_days,
            limit=args.limit,
            pseudonymise=args.pseudonymise,
        )
    finally:
        await client.disconnect()
    print(r)
    print(f"dataset: {r.path}  metrics: {r.metrics_path}")
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
