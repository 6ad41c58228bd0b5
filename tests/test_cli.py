"""The CLI is thin: every command has help, library errors are one line and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest

import tgkit
from tgkit.cli import _parser, main

COMMANDS = ["demo", "export", "chats", "probe", "import-desktop"]


def test_every_command_has_help(capsys):
    for cmd in [None, *COMMANDS]:
        with pytest.raises(SystemExit) as exc:
            main(["--help"] if cmd is None else [cmd, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "usage: tgkit" in out
        if cmd is not None:
            sub = _parser()._subparsers._group_actions[0].choices[cmd]  # type: ignore[union-attr]
            assert sub.description, f"{cmd} has no description"
            for action in sub._actions:
                assert action.help, f"{cmd} {action.dest} has no help text"


def test_export_without_credentials_is_one_clear_line(monkeypatch, capsys, tmp_path):
    for var in ("TGKIT_API_ID", "TGKIT_API_HASH", "TGKIT_SESSION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TGKIT_API_ID", "12345")
    code = main(["export", "@somechannel", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "TGKIT_API_HASH" in err and "TGKIT_SESSION" in err and "TGKIT_API_ID" not in err


def test_bad_api_id_is_a_config_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TGKIT_API_ID", "not-a-number")
    monkeypatch.setenv("TGKIT_API_HASH", "x" * 32)
    monkeypatch.setenv("TGKIT_SESSION", str(tmp_path / "s"))
    assert main(["export", "@c", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "TGKIT_API_ID" in err and "x" * 32 not in err  # the hash is never echoed


def test_probe_prints_one_line_and_json(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TGKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FORCE_CPU_TRANSCODE", "1")
    assert main(["probe"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("Hardware encoding: off (forced_cpu)") and "libx264" in line
    assert main(["probe", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["encoder"] == "libx264"


def test_demo_writes_a_dataset_and_says_where(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "tgkit.cli", "demo", "--out", str(out), "--no-media", "--no-plots"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert f"Dataset:   {out}" in proc.stdout
    assert "messages.GetHistory" in proc.stdout
    counts = dict(tgkit.open_dataset(out).group_by("chat_id").len().collect().iter_rows())
    assert counts[1001] > 4000 and counts[1002] > 1500
    assert (out / "_metrics" / "chat_id=1001" / "metrics.json").exists()
    df = tgkit.open_dataset(out).collect()
    assert df.schema == tgkit.polars_schema() and df.filter(pl.col("chat_id") == 1001)["id"].is_sorted()


def test_import_desktop_writes_a_dataset_and_flags_a_cut_file(tmp_path, capsys):
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures" / "desktop"
    assert main(["import-desktop", str(fixtures / "new_2023"), "--out", str(tmp_path / "ok")]) == 0
    assert "new messages" in capsys.readouterr().out
    assert tgkit.open_dataset(tmp_path / "ok").collect().height > 0
    assert main(["import-desktop", str(fixtures / "truncated"), "--out", str(tmp_path / "cut")]) == 3
    err = capsys.readouterr().err
    assert "tgkit: warning: " in err and "stopped at byte" in err and "Traceback" not in err
    assert main(["import-desktop", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tgkit: error:") and err.count("\n") == 1
