"""Transcoding and thumbnails: the CPU path for real with PyAV, hardware paths through seams."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import pytest

from tgkit import hardware, video
from tgkit.errors import ConfigError, EncoderUnavailable, HardwareError
from tgkit.hardware import LibvaInfo, ProbeSeams, PyAVCaps, libva_info_from

CP, CAT = shutil.which("cp"), shutil.which("cat")  # resolved before the tests empty PATH


def _write_clip(
    path: Path,
    w: int,
    h: int,
    n: int,
    *,
    codec: str = "libx264",
    pix: str = "yuv420p",
    audio: str | None = "aac",
    video_on: bool = True,
    rotation: int = 0,
    fmt: str | None = None,
) -> Path:
    with av.open(str(path), "w", format=fmt) as c:
        vs = None
        if video_on:
            vs = c.add_stream(codec, rate=10)
            vs.width, vs.height, vs.pix_fmt = w, h, pix
            if codec == "libx264":
                vs.codec_context.options = {"preset": "ultrafast"}
            if rotation:
                vs.set_display_rotation(rotation)
        aus = c.add_stream(audio, rate=16000, layout="mono") if audio else None
        for i in range(n if vs else 0):
            frame = av.VideoFrame(w, h, pix)
            for plane in frame.planes:
                plane.update(bytes([(i * 25 + plane.line_size) % 256]) * plane.buffer_size)
            frame.pts = i
            c.mux(vs.encode(frame))
        if vs:
            c.mux(vs.encode(None))
        if aus is not None:
            samples = int(16000 * max(n, 10) / 10)
            size = aus.codec_context.frame_size or 1024
            import array

            for start in range(0, samples, size):
                buf = array.array("h", (int(8000 * math.sin(i / 8)) for i in range(start, start + size)))
                frame = av.AudioFrame(format="s16", layout="mono", samples=size)
                frame.planes[0].update(buf.tobytes())
                frame.sample_rate, frame.pts, frame.time_base = 16000, start, Fraction(1, 16000)
                c.mux(aus.encode(frame))
            c.mux(aus.encode(None))
    return path


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    out = {
        "normal": _write_clip(d / "normal.mp4", 96, 64, 20),
        "portrait": _write_clip(d / "portrait.mp4", 64, 96, 10, audio=None),
        "pcm": _write_clip(d / "pcm.mkv", 96, 64, 10, audio="pcm_s16le"),
        "audio_only": _write_clip(d / "audio.m4a", 0, 0, 10, video_on=False),
        "tiny": _write_clip(d / "tiny.mov", 1, 1, 3, codec="png", pix="rgb24", audio=None),
        "huge": _write_clip(d / "huge.mkv", 7680, 4320, 1, codec="mjpeg", pix="yuvj420p", audio=None),
        "rotated": _write_clip(d / "rotated.mp4", 96, 64, 5, audio=None, rotation=90),
        "ts": _write_clip(d / "stream.ts", 96, 64, 20, fmt="mpegts"),
    }
    data = out["normal"].read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    out["truncated"] = d / "truncated.mp4"
    ts = out["ts"].read_bytes()
    (d / "truncated.ts").write_bytes(ts[: len(ts) // 2])
    out["truncated_ts"] = d / "truncated.ts"
    corrupt = bytearray(ts)
    for i in range(2000, len(corrupt) - 500, 97):
        corrupt[i] ^= 0x5A
    (d / "corrupt.ts").write_bytes(bytes(corrupt))
    out["corrupt_ts"] = d / "corrupt.ts"
    (d / "empty.mp4").write_bytes(b"")
    out["empty"] = d / "empty.mp4"
    (d / "notes.mp4").write_text("this is not a video\n" * 50)
    out["text"] = d / "notes.mp4"
    return out


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("TGKIT_") or name in ("FORCE_CPU_TRANSCODE", "LIBVA_DRIVER_NAME"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TGKIT_CACHE_DIR", str(tmp_path / "cache"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", str(bindir))
    hardware.clear_memory_cache()
    yield bindir
    hardware.clear_memory_cache()


def streams_of(path: Path) -> dict[str, tuple]:
    with av.open(str(path)) as c:
        got = {}
        for s in c.streams:
            if s.type == "video":
                frames = sum(1 for _ in c.decode(s))
                got["video"] = (s.codec_context.name, s.codec_context.width, s.codec_context.height, frames)
        for s in c.streams.audio:
            got["audio"] = (s.codec_context.name,)
        return got


def leftovers(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.endswith(".part")]


# --------------------------------------------------------------------------------------------------
# The CPU path, for real


def test_transcode_cpu_copies_aac_and_is_faststart(clips: dict[str, Path], tmp_path: Path) -> None:
    dst = tmp_path / "out" / "normal.mp4"
    res = video.transcode(clips["normal"], dst, encoder="cpu")
    assert (res.encoder, res.backend, res.fallback, res.audio) == ("libx264", "pyav", False, "copy")
    assert res.frames == 20 and res.bytes == dst.stat().st_size and (res.width, res.height) == (96, 64)
    assert streams_of(dst) == {"video": ("h264", 96, 64, 20), "audio": ("aac",)}
    head = dst.read_bytes()
    assert head.index(b"moov") < head.index(b"mdat")  # faststart
    assert not hasattr(res, "__dict__") and leftovers(dst.parent) == []


def test_scaling_short_side_no_upscale(clips: dict[str, Path], tmp_path: Path) -> None:
    assert video.transcode(clips["normal"], tmp_path / "a.mp4", encoder="cpu").height == 64  # no upscale
    small = video.transcode(clips["normal"], tmp_path / "b.mp4", encoder="cpu", height=32)
    assert (small.width, small.height) == (48, 32)
    portrait = video.transcode(clips["portrait"], tmp_path / "c.mp4", encoder="cpu", height=32)
    assert (portrait.width, portrait.height, portrait.audio) == (32, 48, "none")


def test_incompatible_audio_becomes_aac(clips: dict[str, Path], tmp_path: Path) -> None:
    res = video.transcode(clips["pcm"], tmp_path / "pcm.mp4", encoder="cpu")
    assert res.audio == "aac" and streams_of(tmp_path / "pcm.mp4")["audio"] == ("aac",)


def test_rotation_is_kept(clips: dict[str, Path], tmp_path: Path) -> None:
    video.transcode(clips["rotated"], tmp_path / "r.mp4", encoder="cpu")
    with av.open(str(tmp_path / "r.mp4")) as c:
        assert next(c.decode(video=0)).rotation == 90


@pytest.mark.parametrize("name", ["tiny", "huge"])
def test_extreme_sizes(clips: dict[str, Path], tmp_path: Path, name: str) -> None:
    res = video.transcode(clips[name], tmp_path / f"{name}.mp4", encoder="cpu")
    assert streams_of(tmp_path / f"{name}.mp4")["video"][3] == res.frames > 0
    assert (res.width, res.height) == {"tiny": (2, 2), "huge": (1280, 720)}[name]
    thumb = video.thumbnail(clips[name], tmp_path / f"{name}.jpg")
    assert max(thumb.width, thumb.height) <= 320 and thumb.bytes > 0


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("empty", "empty file"),
        ("text", "not a readable video"),
        ("audio_only", "no video stream"),
        ("missing", "cannot read"),
    ],
)
def test_bad_input_is_a_clear_error(clips: dict[str, Path], tmp_path: Path, name: str, message: str) -> None:
    src = clips.get(name, tmp_path / "missing.mp4")
    with pytest.raises(HardwareError, match=message):
        video.transcode(src, tmp_path / "x.mp4", encoder="cpu")
    with pytest.raises(HardwareError, match=message):
        video.thumbnail(src, tmp_path / "x.jpg")
    assert not (tmp_path / "x.mp4").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["truncated", "truncated_ts", "corrupt_ts"])
def test_damaged_input_gives_an_error_or_a_valid_file(
    clips: dict[str, Path], tmp_path: Path, name: str
) -> None:
    dst = tmp_path / "d.mp4"
    try:
        res = video.transcode(clips[name], dst, encoder="cpu")
    except HardwareError as exc:
        assert clips[name].name in str(exc)
        assert not dst.exists()
    else:
        assert res.frames > 0 and streams_of(dst)["video"][3] == res.frames
    assert leftovers(tmp_path) == []


def test_thumbnail_positions(clips: dict[str, Path], tmp_path: Path) -> None:
    first = video.thumbnail(clips["normal"], tmp_path / "t0.jpg", at=0.0)
    mid = video.thumbnail(clips["normal"], tmp_path / "t.jpg")
    last = video.thumbnail(clips["normal"], tmp_path / "t1.jpg", at=1.0)
    assert first.at_seconds <= mid.at_seconds <= last.at_seconds and mid.at_seconds > 0
    assert (tmp_path / "t.jpg").read_bytes()[:2] == b"\xff\xd8"  # JPEG
    assert (mid.width, mid.height) == (96, 64)
    with pytest.raises(ConfigError):
        video.thumbnail(clips["normal"], tmp_path / "bad.jpg", at=2.0)


def test_timeout_is_an_error_not_a_hang(clips: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(HardwareError, match="timed out"):
        video.transcode(clips["normal"], tmp_path / "t.mp4", encoder="cpu", timeout=0)
    assert leftovers(tmp_path) == []


def test_isolated_job_success_and_error(clips: dict[str, Path], tmp_path: Path) -> None:
    res = video.transcode(clips["normal"], tmp_path / "iso.mp4", encoder="cpu", isolate=True)
    assert res.frames == 20 and (tmp_path / "iso.mp4").stat().st_size == res.bytes
    with pytest.raises(HardwareError, match="not a readable video"):
        video.transcode(clips["text"], tmp_path / "bad.mp4", encoder="cpu", isolate=True)
    with pytest.raises(HardwareError, match="timed out"):
        video.transcode(clips["normal"], tmp_path / "slow.mp4", encoder="cpu", isolate=True, timeout=0)
    assert leftovers(tmp_path) == []


def test_async_runs_off_the_loop_with_bounded_workers(
    clips: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TGKIT_VIDEO_WORKERS", "1")
    monkeypatch.setenv("FORCE_CPU_TRANSCODE", "1")

    async def main() -> tuple[list, int]:
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        jobs = [
            video.transcode_async(clips["normal"], tmp_path / "a.mp4"),
            video.transcode_async(clips["text"], tmp_path / "b.mp4"),
            video.thumbnail_async(clips["normal"], tmp_path / "c.jpg"),
        ]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        done = True
        await t
        return results, ticks

    results, ticks = asyncio.run(main())
    assert isinstance(results[0], video.TranscodeResult) and results[0].encoder == "libx264"
    assert isinstance(results[1], HardwareError)  # a per-file error, the other jobs are unaffected
    assert isinstance(results[2], video.ThumbnailResult)
    assert ticks > 10  # the loop kept running while videos encoded
    assert video._executor()._max_workers == 1


# --------------------------------------------------------------------------------------------------
# Encoder selection and runtime fallback (no GPU here: hardware is faked via the probe's seams)


def _hw_report(tmp_path: Path, *, nvenc: bool = False, vaapi_ok: bool = False) -> hardware.HardwareReport:
    dri = tmp_path / "dri"
    dri.mkdir(exist_ok=True)
    (dri / "renderD128").write_bytes(b"")

    def libva(node: str, timeout: float) -> LibvaInfo:
        return libva_info_from({"status": "ok", "vendor": "Intel iHD driver", "profiles": {"7": [1, 6]}})

    def trial(cand: hardware.Candidate, timeout: float) -> tuple[bool, str | None]:
        if cand.backend == "ffmpeg":
            return hardware._default_trial(cand, timeout)
        return cand.encoder in ("libx264", "h264_nvenc"), None

    seams = ProbeSeams(
        dri_dir=dri,
        libva=libva,
        trial=trial,
        access=lambda p: (True, True),
        pyav=lambda: PyAVCaps("18.1.0", "62", ["h264_nvenc", "libx264"], []),
        nvidia_runtime=lambda: nvenc,
        amf_runtime=lambda: False,
    )
    return hardware.probe(seams=seams)


def _fake_ffmpeg(bindir: Path, copy_from: Path | None, log: Path) -> None:
    """'ffmpeg' that passes its trial; transcodes by copying a real MP4 (or fails when copy_from is None)."""
    job = (
        f'{CP} "{copy_from}" "$last"; exit 0' if copy_from else 'echo "h264_vaapi: encode failed" >&2; exit 1'
    )
    script = bindir / "ffmpeg"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        'case "$*" in\n'
        '  *-version*) echo "ffmpeg version fake"; exit 0;;\n'
        '  *-encoders*) echo " V....D h264_vaapi           H.264/AVC (VAAPI)"; exit 0;;\n'
        f"  *pipe:0*) {CAT} > /dev/null; exit 0;;\n"
        "esac\n"
        'for last in "$@"; do :; done\n'
        f"{job}\n"
    )
    script.chmod(0o755)


def test_auto_uses_vaapi_via_ffmpeg(clips: dict[str, Path], tmp_path: Path, clean_env: Path) -> None:
    good = tmp_path / "good.mp4"
    video.transcode(clips["normal"], good, encoder="cpu")
    log = tmp_path / "ffmpeg.log"
    _fake_ffmpeg(clean_env, good, log)
    report = _hw_report(tmp_path)
    assert (report.encoder, report.backend) == ("h264_vaapi", "ffmpeg")
    res = video.transcode(clips["normal"], tmp_path / "out.mp4", height=32, report=report)
    assert (res.encoder, res.backend, res.fallback, res.frames) == ("h264_vaapi", "ffmpeg", False, 20)
    cmd = log.read_text().splitlines()[-1]
    assert f"vaapi=va:{tmp_path}/dri/renderD128" in cmd and "scale_vaapi=w=48:h=32" in cmd
    assert "-c:v h264_vaapi" in cmd and "-c:a copy" in cmd and "+faststart" in cmd


def test_hardware_failure_mid_job_falls_back_once(
    clips: dict[str, Path], tmp_path: Path, clean_env: Path
) -> None:
    _fake_ffmpeg(clean_env, None, tmp_path / "ffmpeg.log")
    report = _hw_report(tmp_path)
    res = video.transcode(clips["normal"], tmp_path / "out.mp4", report=report)
    assert (res.encoder, res.fallback) == ("libx264", True) and "encode failed" in (res.fallback_detail or "")
    assert report.degraded and report.hardware_failures == 1
    assert "degraded" in hardware.describe(report)
    with pytest.raises(EncoderUnavailable, match="h264_vaapi"):  # required: no silent CPU fallback
        video.transcode(clips["normal"], tmp_path / "req.mp4", encoder="vaapi", report=report)


def test_pyav_hardware_encoder_failure_falls_back(clips: dict[str, Path], tmp_path: Path) -> None:
    # h264_nvenc exists in the wheel but cannot open without an NVIDIA GPU: a real encoder failure.
    report = _hw_report(tmp_path, nvenc=True)
    assert (report.encoder, report.backend) == ("h264_nvenc", "pyav")
    res = video.transcode(clips["normal"], tmp_path / "n.mp4", isolate=True, report=report)
    assert (res.encoder, res.fallback) == ("libx264", True) and report.degraded
    with pytest.raises(EncoderUnavailable, match="h264_nvenc"):
        video.transcode(clips["normal"], tmp_path / "n2.mp4", encoder="nvenc", report=report)
    assert leftovers(tmp_path) == []


def test_encoder_choices_without_hardware(clips: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    seams = ProbeSeams(dri_dir=tmp_path / "x", trial=lambda cand, timeout: (True, None))
    monkeypatch.setattr(hardware, "probe", lambda **kw: hardware.run_probe(seams))
    assert video.transcode(clips["normal"], tmp_path / "a.mp4").encoder == "libx264"
    with pytest.raises(EncoderUnavailable, match="no_dri"):
        video.transcode(clips["normal"], tmp_path / "b.mp4", encoder="vaapi")
    with pytest.raises(EncoderUnavailable):
        video.transcode(clips["normal"], tmp_path / "c.mp4", encoder="gpu")
    with pytest.raises(ConfigError, match="unknown encoder"):
        video.transcode(clips["normal"], tmp_path / "d.mp4", encoder="h265_magic")
    monkeypatch.setenv("FORCE_CPU_TRANSCODE", "1")
    assert video.transcode(clips["normal"], tmp_path / "e.mp4").encoder == "libx264"
