"""The encoder decision, tested through seams: a fake /dev/dri, injected libva results, a fake ffmpeg.

This machine has no GPU: nothing here proves VA-API works on real hardware (see docs/HARDWARE.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from tgkit import hardware
from tgkit._child import child_env
from tgkit.hardware import Candidate, LibvaInfo, ProbeSeams, PyAVCaps, describe, libva_info_from, probe

CAT = shutil.which("cat")  # resolved before the tests empty PATH
INTEL = "Intel iHD driver for Intel(R) Gen Graphics - 24.1.0 ()"
ENCODE_OK = {"status": "ok", "vendor": INTEL, "version": "1.20", "profiles": {"7": [1, 6], "13": [1, 8]}}
DECODE_ONLY = {"status": "ok", "vendor": "Mesa Gallium driver for AMD Radeon", "profiles": {"7": [1]}}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("TGKIT_") or name in ("FORCE_CPU_TRANSCODE", "LIBVA_DRIVER_NAME"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TGKIT_CACHE_DIR", str(tmp_path / "cache"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", str(bindir))  # no real ffmpeg can leak in
    hardware.clear_memory_cache()
    yield bindir
    hardware.clear_memory_cache()


@pytest.fixture
def dri(tmp_path: Path) -> Path:
    d = tmp_path / "dri"
    d.mkdir()
    (d / "card0").write_bytes(b"")
    (d / "renderD128").write_bytes(b"")
    return d


class FakeTrial:
    """Records trials; PyAV candidates pass when listed in ``ok``; ffmpeg ones run the real trial."""

    def __init__(self, ok: set[str] = frozenset({"libx264"})) -> None:  # type: ignore[assignment]
        self.ok = ok
        self.calls: list[str] = []

    def __call__(self, cand: Candidate, timeout: float) -> tuple[bool, str | None]:
        self.calls.append(cand.label)
        if cand.backend == "ffmpeg":
            return hardware._default_trial(cand, timeout)
        return (cand.encoder in self.ok), None if cand.encoder in self.ok else "fake failure"


def caps(*extra: str, hwdevices: tuple[str, ...] = ("qsv", "drm")) -> PyAVCaps:
    return PyAVCaps("18.1.0", "62.28.102", sorted({"h264", "libx264", *extra}), list(hwdevices))


def seams(dri: Path, libva: dict | None = ENCODE_OK, trial: FakeTrial | None = None, **kw) -> ProbeSeams:
    def fake_libva(node: str, timeout: float) -> LibvaInfo:
        assert libva is not None
        return libva_info_from(libva)

    return ProbeSeams(
        dri_dir=dri,
        libva=fake_libva,
        trial=trial or FakeTrial(),
        access=kw.pop("access", lambda p: (True, True)),
        pyav=kw.pop("pyav", lambda: caps()),
        nvidia_runtime=kw.pop("nvidia_runtime", lambda: False),
        amf_runtime=kw.pop("amf_runtime", lambda: False),
    )


def fake_ffmpeg(bindir: Path, *, trial_rc: int, log: Path | None = None) -> Path:
    """A shell 'ffmpeg' that lists h264_vaapi and passes/fails its trial; logs args and LIBVA env."""
    script = bindir / "ffmpeg"
    log_line = f'echo "$LIBVA_DRIVER_NAME|$*" >> "{log}"' if log else ":"
    script.write_text(
        "#!/bin/sh\n"
        f"{log_line}\n"
        'case "$*" in\n'
        '  *-version*) echo "ffmpeg version 7.1-fake"; exit 0;;\n'
        '  *-encoders*) echo " V....D libx264              libx264 H.264"; '
        'echo " V....D h264_vaapi           H.264/AVC (VAAPI) (codec h264)"; exit 0;;\n'
        "esac\n"
        f"{CAT} > /dev/null\n"
        f'[ {trial_rc} -eq 0 ] || echo "Failed to initialise VAAPI connection: -1." >&2\n'
        f"exit {trial_rc}\n"
    )
    script.chmod(0o755)
    return script


# --------------------------------------------------------------------------------------------------
# The decision ladder, one reason code each


def test_no_dri(tmp_path: Path) -> None:
    report = hardware.run_probe(seams(tmp_path / "nope"))
    assert not report.hardware and report.encoder == "libx264"
    assert report.reason == "no_dri"
    assert report.reasons["h264_vaapi/ffmpeg"] == "no_dri"
    assert report.reasons["h264_nvenc/pyav"] == "backend_missing"
    assert "libx264/pyav" not in report.reasons
    assert describe(report) == "Hardware encoding: off (no_dri); using libx264"


def test_no_render_node(tmp_path: Path) -> None:
    d = tmp_path / "dri"
    d.mkdir()
    (d / "card0").write_bytes(b"")
    report = hardware.run_probe(seams(d))
    assert report.reason == "no_render_node" and report.render_nodes == []


def test_permission_names_the_group(dri: Path) -> None:
    report = hardware.run_probe(seams(dri, access=lambda p: (True, False)))
    assert report.reason == "permission"
    cand = next(c for c in report.candidates if c.encoder == "h264_vaapi")
    assert "not readable and writable" in (cand.detail or "")
    node = report.render_nodes[0]
    assert (node.readable, node.writable) == (True, False)
    assert node.gid == dri.joinpath("renderD128").stat().st_gid
    assert node.libva is None  # no libva query on a node we cannot open


@pytest.mark.parametrize(
    ("libva", "reason"),
    [
        (
            {"status": "libva_missing", "detail": "libva.so.2: cannot open shared object file"},
            "libva_missing",
        ),
        ({"status": "init_failed", "detail": "vaInitialize: unknown libva error (-1)"}, "init_failed"),
        (DECODE_ONLY, "no_h264_encode"),
    ],
)
def test_libva_outcomes(dri: Path, libva: dict, reason: str) -> None:
    trial = FakeTrial()
    report = hardware.run_probe(seams(dri, libva=libva, trial=trial))
    assert report.reason == reason
    assert report.reasons[f"h264_vaapi/ffmpeg@{dri}/renderD128"] == reason
    assert trial.calls == ["libx264/pyav"]  # no hardware trial when a cheap check failed


def test_backend_missing_without_ffmpeg(dri: Path) -> None:
    report = hardware.run_probe(seams(dri, pyav=lambda: caps()))
    assert report.reasons[f"h264_vaapi/ffmpeg@{dri}/renderD128"] == "backend_missing"
    assert report.reasons[f"h264_vaapi/pyav@{dri}/renderD128"] == "backend_missing"
    assert report.reason == "backend_missing"


def test_fake_ffmpeg_trial_passes(dri: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = clean_env / "calls.log"
    fake_ffmpeg(clean_env, trial_rc=0, log=log)
    monkeypatch.setenv("LIBVA_DRIVER_NAME", "iHD")
    report = hardware.run_probe(seams(dri, pyav=lambda: caps("h264_qsv")))
    node = f"{dri}/renderD128"
    assert report.hardware and (report.encoder, report.backend, report.device) == (
        "h264_vaapi",
        "ffmpeg",
        node,
    )
    assert report.driver == "Intel iHD"
    assert describe(report) == f"Hardware encoding: h264_vaapi via ffmpeg on {node} (Intel iHD)"
    assert report.ffmpeg_encoders == ["h264_vaapi", "libx264"]
    assert report.env["LIBVA_DRIVER_NAME"] == "iHD"
    trial_line = next(ln for ln in log.read_text().splitlines() if "h264_vaapi" in ln)
    assert trial_line.startswith("iHD|")  # LIBVA_DRIVER_NAME passed through to ffmpeg
    assert f"vaapi=va:{node}" in trial_line and "hwupload" in trial_line
    # later hardware candidates are not tried once one works
    qsv = next(c for c in report.candidates if c.encoder == "h264_qsv")
    assert not qsv.ok and qsv.reason is None and "not tried" in (qsv.detail or "")


def test_fake_ffmpeg_trial_fails(dri: Path, clean_env: Path) -> None:
    fake_ffmpeg(clean_env, trial_rc=1)
    report = hardware.run_probe(seams(dri))
    cand = next(c for c in report.candidates if c.label == f"h264_vaapi/ffmpeg@{dri}/renderD128")
    assert cand.reason == "trial_failed" and "VAAPI" in (cand.detail or "")
    assert report.encoder == "libx264" and report.reason == "trial_failed"
    assert describe(report) == "Hardware encoding: off (trial_failed); using libx264"


def test_qsv_chosen_when_its_trial_passes(dri: Path) -> None:
    report = hardware.run_probe(
        seams(dri, pyav=lambda: caps("h264_qsv"), trial=FakeTrial({"h264_qsv", "libx264"}))
    )
    assert (report.encoder, report.backend) == ("h264_qsv", "pyav")


def test_forced_cpu_skips_hardware(dri: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ffmpeg(clean_env, trial_rc=0)
    monkeypatch.setenv("FORCE_CPU_TRANSCODE", "yes")
    trial = FakeTrial()
    report = hardware.run_probe(seams(dri, trial=trial))
    assert report.reason == "forced_cpu" and report.encoder == "libx264"
    assert {c.reason for c in report.candidates if c.hardware} == {"forced_cpu"}
    assert trial.calls == ["libx264/pyav"]
    assert describe(report) == "Hardware encoding: off (forced_cpu); using libx264"


def test_pinned_device(dri: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (dri / "renderD129").write_bytes(b"")
    fake_ffmpeg(clean_env, trial_rc=0)

    def per_node(node: str, timeout: float) -> LibvaInfo:
        return libva_info_from(ENCODE_OK if node.endswith("129") else {"status": "init_failed"})

    s = seams(dri)
    s.libva = per_node
    report = hardware.run_probe(s)
    assert report.device == f"{dri}/renderD129"  # first node rejected, second chosen
    assert report.reasons[f"h264_vaapi/ffmpeg@{dri}/renderD128"] == "init_failed"

    monkeypatch.setenv("TGKIT_VAAPI_DEVICE", str(dri / "renderD128"))
    pinned = hardware.run_probe(s)
    assert [n.path for n in pinned.render_nodes] == [f"{dri}/renderD128"]
    assert not pinned.hardware and pinned.reason == "init_failed"

    monkeypatch.setenv("TGKIT_VAAPI_DEVICE", str(dri / "renderD200"))
    assert hardware.run_probe(s).reason == "no_render_node"


def test_libva_h264_encode_rule() -> None:
    assert libva_info_from({"status": "ok", "profiles": {"6": [6]}}).h264_encode
    assert libva_info_from({"status": "ok", "profiles": {"13": [8]}}).h264_encode
    assert not libva_info_from({"status": "ok", "profiles": {"7": [1, 2]}}).h264_encode  # decode only
    assert not libva_info_from({"status": "ok", "profiles": {"12": [6]}}).h264_encode  # VC1, not H.264


# --------------------------------------------------------------------------------------------------
# The real child processes (no GPU here: libva is missing or fails; libx264 trial runs for real)


def test_real_libva_child_on_a_fake_node(dri: Path) -> None:
    info = hardware._libva_in_child(str(dri / "renderD128"), 30.0)
    assert info.status in ("libva_missing", "init_failed") and info.detail


def test_child_timeout_is_init_failed(dri: Path) -> None:
    info = hardware._libva_in_child(str(dri / "renderD128"), 0.001)
    assert info.status == "init_failed" and "timed out" in (info.detail or "")


def test_real_probe_on_this_machine(clean_env: Path) -> None:
    report = probe(seams=ProbeSeams(dri_dir=clean_env / "no-dri"))
    cpu = report.candidates[-1]
    assert cpu.encoder == "libx264" and cpu.ok, cpu.detail  # a real PyAV trial encode in a child
    assert report.pyav_version and "libx264" in report.pyav_encoders
    assert "h264_vaapi" not in report.pyav_encoders  # the PyPI wheel has no VA-API
    assert report.cpu_logical >= 1 and report.memory_total > 0


# --------------------------------------------------------------------------------------------------
# Records and caching


def test_report_round_trips_and_renders(dri: Path, clean_env: Path) -> None:
    fake_ffmpeg(clean_env, trial_rc=0)
    report = hardware.run_probe(seams(dri))
    data = json.loads(json.dumps(report.to_dict()))
    assert hardware.HardwareReport.from_dict(data) == report
    assert data["render_nodes"][0]["libva"]["profiles"] == {"7": [1, 6], "13": [1, 8]}
    frame = report.to_polars()
    assert frame.columns[:2] == ["encoder", "backend"] and frame.height == len(report.candidates)
    assert frame.filter(frame["chosen"])["encoder"].to_list() == ["h264_vaapi"]
    assert "h264_vaapi via ffmpeg" in repr(report) and not hasattr(report, "__dict__")


def test_cache_memory_then_disk(dri: Path, tmp_path: Path) -> None:
    trial = FakeTrial()
    s = seams(dri, trial=trial)
    first = probe(seams=s)
    assert probe(seams=s) is first and len(trial.calls) == 1
    files = list((tmp_path / "cache").glob("hardware-*.json"))
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    hardware.clear_memory_cache()
    again = probe(seams=s)
    assert again.from_cache and again.encoder == first.encoder and len(trial.calls) == 1
    probe(seams=s, refresh=True)
    assert len(trial.calls) == 2
    assert not list((tmp_path / "cache").glob(".hardware-*"))  # no temp files left


def test_cache_key_follows_env_and_nodes(dri: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = seams(dri)
    probe(seams=s)
    monkeypatch.setenv("LIBVA_DRIVER_NAME", "radeonsi")
    probe(seams=s)
    (dri / "renderD129").write_bytes(b"")
    probe(seams=s)
    assert len(list((tmp_path / "cache").glob("hardware-*.json"))) == 3


def test_corrupt_cache_is_ignored_with_a_warning(
    dri: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = seams(dri)
    probe(seams=s)
    (path,) = (tmp_path / "cache").glob("hardware-*.json")
    for garbage in ("{not json", json.dumps({"key": hardware._cache_key(dri), "report": {"cpu_model": 1}})):
        path.write_text(garbage)
        hardware.clear_memory_cache()
        with caplog.at_level(logging.WARNING, logger="tgkit.hardware"):
            report = probe(seams=s)
        assert not report.from_cache and "corrupt hardware cache" in caplog.text
        caplog.clear()
    assert json.loads(path.read_text())["report"]["encoder"] == "libx264"  # rewritten


def test_unwritable_cache_dir_does_not_fail(
    dri: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    monkeypatch.setenv("TGKIT_CACHE_DIR", str(blocker / "sub"))
    assert probe(seams=seams(dri)).encoder == "libx264"


def test_degraded_and_cli_line(dri: Path, clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_ffmpeg(clean_env, trial_rc=0)
    report = hardware.run_probe(seams(dri))
    hardware.mark_degraded(report, "clip.mp4: ffmpeg: boom")
    assert report.degraded and "degraded" in describe(report)
    for _ in range(2):
        hardware.mark_degraded(report, "again")
    assert describe(report) == "Hardware encoding: off (runtime_failures); using libx264"
    assert hardware._main(["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["encoder"] == "libx264" and "candidates" in out


def test_bad_force_flag_is_a_config_error(monkeypatch: pytest.MonkeyPatch, dri: Path) -> None:
    from tgkit.errors import ConfigError

    monkeypatch.setenv("FORCE_CPU_TRANSCODE", "maybe")
    with pytest.raises(ConfigError, match="FORCE_CPU_TRANSCODE"):
        hardware.run_probe(seams(dri))


def test_child_runs_with_this_interpreter() -> None:
    assert child_env()["PYTHONPATH"].split(os.pathsep)[0] == str(Path(hardware.__file__).parents[1])
    assert sys.executable
