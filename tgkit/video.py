"""Normalise videos to H.264/MP4 (short side 720 by default) and make JPEG thumbnails.

The encoder comes from :func:`tgkit.hardware.probe` (``encoder="auto"``): a working hardware encoder
when its trial passed, libx264 otherwise.  ``h264_vaapi`` runs through the system ``ffmpeg`` binary
(the PyPI PyAV wheel has no VA-API); everything else runs in-process through PyAV.  If a hardware
encoder fails mid-job, the job is retried once on libx264 and the probe report is marked degraded.

Bad input (empty, truncated, not a video, audio only, absurd sizes) raises :class:`HardwareError` with a
message the export records per file.  :func:`transcode_async` runs each job in a child process (a
crashing or hanging decoder cannot take the export down; a timeout kills it) on a bounded thread pool,
so an export keeps fetching while videos encode.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from . import hardware
from ._child import run_child
from .config import setting
from .errors import ConfigError, EncoderUnavailable, HardwareError

__all__ = [
    "ThumbnailResult",
    "TranscodeResult",
    "thumbnail",
    "thumbnail_async",
    "transcode",
    "transcode_async",
]

# Audio codecs the MP4 muxer stores as they are; anything else is re-encoded to AAC.
_MP4_AUDIO_COPY = frozenset({"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"})
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
_MAX_SIDE = 16384  # larger than any real camera; beyond this a "video" is an attack or garbage
_MAX_DECODE_ERRORS = 50
# Encoder options per hardware encoder; ``{q}`` is the quality (crf-like) value.
_HW_OPTIONS: dict[str, dict[str, str]] = {
    "h264_nvenc": {"preset": "p4", "rc": "vbr", "cq": "{q}"},
    "h264_qsv": {"global_quality": "{q}", "preset": "medium"},
    "h264_amf": {"rc": "cqp", "qp_i": "{q}", "qp_p": "{q}", "qp_b": "{q}"},
    "h264_vaapi": {"qp": "{q}"},
}


@dataclass(slots=True)
class TranscodeResult:
    """What :func:`transcode` did: the encoder actually used, whether it fell back, and the output."""

    src: str
    dst: str
    encoder: str
    backend: str
    fallback: bool
    seconds: float
    frames: int
    bytes: int
    width: int
    height: int
    audio: str  # "copy" | "aac" | "none"
    decode_errors: int = 0
    fallback_detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class ThumbnailResult:
    """A JPEG thumbnail written by :func:`thumbnail`; ``at_seconds`` is the frame's timestamp."""

    src: str
    dst: str
    width: int
    height: int
    at_seconds: float
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Plan:
    encoder: str
    backend: str  # "pyav" | "ffmpeg"
    device: str | None
    hardware: bool
    required: bool


_CPU_PLAN = _Plan(hardware.CPU_ENCODER, "pyav", None, False, False)


class _EncoderFailed(Exception):
    """The encoder (not the input) failed; hardware jobs fall back to libx264 on this."""


# --------------------------------------------------------------------------------------------------
# Encoder choice


def _plan_for(
    encoder: str, report: hardware.HardwareReport | None
) -> tuple[_Plan, hardware.HardwareReport | None]:
    name = (encoder or "auto").strip().lower()
    if name in ("cpu", hardware.CPU_ENCODER):
        return _CPU_PLAN, None
    if report is None:
        report = hardware.probe()
    if name == "auto":
        if report.hardware and report.hardware_failures < hardware._HW_FAILURES_BEFORE_CPU:
            return _Plan(report.encoder, report.backend, report.device, True, False), report
        return _CPU_PLAN, report
    wanted = {"vaapi": "h264_vaapi", "qsv": "h264_qsv", "nvenc": "h264_nvenc", "amf": "h264_amf"}.get(
        name, name
    )
    if wanted in ("gpu", "hardware"):
        if report.hardware:
            return _Plan(report.encoder, report.backend, report.device, True, True), report
        raise EncoderUnavailable(f"no hardware encoder works here: {hardware.describe(report)}")
    known = {c.encoder for c in report.candidates}
    if wanted not in known:
        raise ConfigError(
            f"unknown encoder {encoder!r}: use auto, cpu, vaapi, qsv, nvenc, amf or one of {sorted(known)}"
        )
    cand = report.candidate(wanted)
    if cand is None:
        why = "; ".join(
            f"{c.label}: {c.reason}" + (f" ({c.detail})" if c.detail else "")
            for c in report.candidates
            if c.encoder == wanted
        )
        raise EncoderUnavailable(f"{wanted} was required but does not work here: {why}")
    return _Plan(cand.encoder, cand.backend, cand.device, True, True), report


# --------------------------------------------------------------------------------------------------
# Public API


def transcode(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    height: int | None = 720,
    encoder: str = "auto",
    crf: int | None = None,
    preset: str | None = None,
    timeout: float | None = None,
    isolate: bool = False,
    report: hardware.HardwareReport | None = None,
) -> TranscodeResult:
    """Transcode ``src`` to H.264/MP4 at ``dst`` (short side at most ``height``; None keeps the size).

    ``encoder``: ``"auto"`` (hardware if its trial passed, else libx264), ``"cpu"``, ``"vaapi"``/
    ``"qsv"``/``"nvenc"``/``"amf"`` or an FFmpeg encoder name (required: :class:`EncoderUnavailable`
    if it does not work).  ``crf`` defaults to ``TGKIT_VIDEO_CRF`` or 23, ``preset`` to
    ``TGKIT_VIDEO_PRESET`` or ``veryfast``.  ``timeout`` (``TGKIT_VIDEO_TIMEOUT``, default 60 s + 3x
    the duration) bounds the job; ``isolate=True`` runs it in a child process that is killed on
    timeout.  Audio is copied when MP4 can hold it, else re-encoded to AAC.  The output is written to a
    temp file and renamed, so ``dst`` is complete or absent.  ``report`` (default: :func:`probe`)
    is the hardware report to choose from; it is marked degraded when a hardware job falls back.
    """
    src_p, dst_p = Path(src), Path(dst)
    if height is not None and height < 2:
        raise ConfigError(f"height must be >= 2 or None, not {height}")
    crf_v = int(setting("video_crf", crf, default=23, cast=int))
    preset_v = str(setting("video_preset", preset, default="veryfast"))
    plan, report = _plan_for(encoder, report)
    if isolate:
        result = _run_isolated(
            "transcode",
            {
                "src": str(src_p),
                "dst": str(dst_p),
                "height": height,
                "plan": asdict(plan),
                "crf": crf_v,
                "preset": preset_v,
                "timeout": timeout,
            },
            src_p,
            dst_p,
            timeout,
        )
        out = TranscodeResult(**result)
    else:
        out = _transcode_local(src_p, dst_p, height, plan, crf_v, preset_v, timeout)
    if out.fallback and report is not None:
        hardware.mark_degraded(report, f"{src_p.name}: {out.fallback_detail}")
    return out


async def transcode_async(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], **kwargs: Any
) -> TranscodeResult:
    """:func:`transcode` off the event loop, on a bounded pool (``TGKIT_VIDEO_WORKERS``, default
    half the cores), isolated in a child process unless ``isolate=False`` is passed."""
    kwargs.setdefault("isolate", True)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor(), functools.partial(transcode, src, dst, **kwargs))


def thumbnail(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    at: float = 0.5,
    *,
    size: int = 320,
    timeout: float | None = None,
    isolate: bool = False,
) -> ThumbnailResult:
    """Write a JPEG of the frame at fraction ``at`` (0..1) of the duration, longest side <= ``size``."""
    if not 0.0 <= at <= 1.0:
        raise ConfigError(f"at is a fraction of the duration (0..1), not {at}")
    src_p, dst_p = Path(src), Path(dst)
    if isolate:
        job = {"src": str(src_p), "dst": str(dst_p), "at": at, "size": size, "timeout": timeout}
        return ThumbnailResult(**_run_isolated("thumbnail", job, src_p, dst_p, timeout))
    return _thumbnail_local(src_p, dst_p, at, size, timeout)


async def thumbnail_async(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], at: float = 0.5, **kwargs: Any
) -> ThumbnailResult:
    """:func:`thumbnail` on the same bounded pool as :func:`transcode_async` (isolated by default)."""
    kwargs.setdefault("isolate", True)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor(), functools.partial(thumbnail, src, dst, at, **kwargs))


_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool, _pool_size
    default = max(1, (os.cpu_count() or 2) // 2)  # libx264 already uses every core per job
    workers = int(setting("video_workers", default=default, cast=int))
    if workers < 1:
        raise ConfigError("TGKIT_VIDEO_WORKERS must be >= 1")
    with _pool_lock:
        if _pool is None or workers != _pool_size:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tgkit-video")
            _pool_size = workers
        return _pool


# --------------------------------------------------------------------------------------------------
# Input checks shared by everything


def _open_input(av: Any, src: Path) -> Any:
    try:
        size = src.stat().st_size
    except OSError as exc:
        raise HardwareError(f"{src.name}: cannot read ({exc.strerror or exc})") from exc
    if size == 0:
        raise HardwareError(f"{src.name}: empty file (0 bytes)")
    try:
        container = av.open(str(src), metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise HardwareError(f"{src.name}: not a readable video ({_short(exc)})") from exc
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["nothing"]
            raise HardwareError(f"{src.name}: no video stream (contains {', '.join(kinds)})")
        vs = container.streams.video[0]
        w, h = vs.codec_context.width, vs.codec_context.height
        if w <= 0 or h <= 0:
            raise HardwareError(f"{src.name}: video stream has no size (corrupt header?)")
        if max(w, h) > _MAX_SIDE:
            raise HardwareError(f"{src.name}: {w}x{h} is larger than {_MAX_SIDE} pixels per side")
    except BaseException:
        container.close()
        raise
    return container


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]


def _deadline(container: Any, timeout: float | None) -> float:
    if timeout is None:
        timeout = setting("video_timeout", default=None, cast=float)
    if timeout is None:
        duration = container.duration / 1_000_000 if container.duration else 600.0
        timeout = 60.0 + 3.0 * min(max(duration, 0.0), 6 * 3600.0)
    return time.monotonic() + float(timeout)


def _check_deadline(deadline: float, src: Path) -> None:
    if time.monotonic() > deadline:
        raise HardwareError(f"{src.name}: timed out (raise TGKIT_VIDEO_TIMEOUT or pass timeout=)")


def _even(x: float) -> int:
    return max(2, round(x / 2) * 2)


def _output_size(vs: Any, height: int | None) -> tuple[int, int]:
    """Scale so the short side is at most ``height``, honouring the sample aspect ratio; even sizes."""
    w, h = vs.codec_context.width, vs.codec_context.height
    sar = vs.sample_aspect_ratio
    disp_w = w * float(sar) if sar and sar > 0 else float(w)
    short = min(disp_w, h)
    scale = min(1.0, height / short) if height else 1.0
    return _even(disp_w * scale), _even(h * scale)


def _frame_rate(vs: Any) -> Fraction:
    for rate in (vs.average_rate, vs.guessed_rate, vs.base_rate):
        if rate and 0 < rate <= 1000:
            return Fraction(rate).limit_denominator(1001)
    return Fraction(30, 1)


# --------------------------------------------------------------------------------------------------
# Local (in-process) transcoding


def _tmp_for(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.{os.getpid()}.{threading.get_ident()}.part")


def _transcode_local(
    src: Path,
    dst: Path,
    height: int | None,
    plan: _Plan,
    crf: int,
    preset: str,
    timeout: float | None,
    tmp: Path | None = None,
) -> TranscodeResult:
    av = hardware.require_pyav()
    t0 = time.perf_counter()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp or _tmp_for(dst)
    fallback_detail = None
    try:
        try:
            stats = _encode(av, src, tmp, height, plan, crf, preset, timeout)
        except _EncoderFailed as exc:
            if not plan.hardware:
                raise HardwareError(f"{src.name}: {plan.encoder} failed: {exc}") from exc
            if plan.required:
                raise EncoderUnavailable(f"{src.name}: {plan.encoder} failed mid-job: {exc}") from exc
            fallback_detail = f"{plan.encoder} failed: {exc}"
            plan = _CPU_PLAN
            try:
                stats = _encode(av, src, tmp, height, plan, crf, preset, timeout)
            except _EncoderFailed as exc2:
                raise HardwareError(f"{src.name}: libx264 failed too: {exc2}") from exc2
        os.replace(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    frames, width, height_out, audio, errors = stats
    return TranscodeResult(
        src=str(src),
        dst=str(dst),
        encoder=plan.encoder,
        backend=plan.backend,
        fallback=fallback_detail is not None,
        seconds=round(time.perf_counter() - t0, 4),
        frames=frames,
        bytes=dst.stat().st_size,
        width=width,
        height=height_out,
        audio=audio,
        decode_errors=errors,
        fallback_detail=fallback_detail,
    )


def _audio_mode(ain: Any) -> str:
    if ain is None:
        return "none"
    return "copy" if ain.codec_context.name in _MP4_AUDIO_COPY else "aac"


def _encode(
    av: Any,
    src: Path,
    tmp: Path,
    height: int | None,
    plan: _Plan,
    crf: int,
    preset: str,
    timeout: float | None,
) -> tuple[int, int, int, str, int]:
    if plan.backend == "ffmpeg":
        return _encode_ffmpeg(av, src, tmp, height, plan, crf, timeout)
    with _open_input(av, src) as inp:
        deadline = _deadline(inp, timeout)
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        ain = inp.streams.audio[0] if inp.streams.audio else None
        audio = _audio_mode(ain)
        out_w, out_h = _output_size(vin, height)
        try:
            out = av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"})
        except (av.FFmpegError, OSError) as exc:
            raise HardwareError(f"{src.name}: cannot create output ({_short(exc)})") from exc
        with out:
            return _pump(av, src, inp, out, vin, ain, audio, out_w, out_h, plan, crf, preset, deadline)


def _pump(
    av: Any,
    src: Path,
    inp: Any,
    out: Any,
    vin: Any,
    ain: Any,
    audio: str,
    out_w: int,
    out_h: int,
    plan: _Plan,
    crf: int,
    preset: str,
    deadline: float,
) -> tuple[int, int, int, str, int]:
    hw = plan.hardware
    pix_fmt = "nv12" if hw else "yuv420p"
    # swscale threads: scaling 1080p->720p on one thread is ~20% of the CPU pipeline's time
    sws_threads = min(4, os.cpu_count() or 1)
    try:
        vout = out.add_stream(plan.encoder, rate=_frame_rate(vin))
        vout.width, vout.height, vout.pix_fmt = out_w, out_h, pix_fmt
        vout.time_base = vin.time_base
        cc = vout.codec_context
        cc.time_base = vin.time_base
        if hw:
            cc.options = {k: v.format(q=crf) for k, v in _HW_OPTIONS.get(plan.encoder, {}).items()}
        else:
            cc.options = {"crf": str(crf), "preset": preset}
            # frame threads: 8-19% smaller files than slice threads at the same CRF and speed
            cc.thread_type = "FRAME"
    except (av.FFmpegError, ValueError) as exc:
        raise _EncoderFailed(_short(exc)) from exc

    aout = None
    resampler = None
    if audio == "copy":
        aout = out.add_stream_from_template(ain)
    elif audio == "aac":
        rate = ain.codec_context.sample_rate or 48000
        rate = rate if rate in _AAC_RATES else 48000
        channels = ain.codec_context.channels or 2
        layout = "mono" if channels == 1 else "stereo"
        aout = out.add_stream("aac", rate=rate, layout=layout)
        aout.bit_rate = 128_000
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)

    frames = errors = 0
    last_pts = -1
    rotation_set = False
    pending_audio: list[Any] = []  # audio waits until the video encoder is configured (rotation)
    streams = [vin] if ain is None else [vin, ain]
    demux = inp.demux(streams)
    while True:
        _check_deadline(deadline, src)
        try:
            packet = next(demux)
        except StopIteration:
            break
        except (av.FFmpegError, OSError) as exc:  # truncated / corrupt container: keep what we have
            errors += 1
            if frames == 0:
                raise HardwareError(f"{src.name}: corrupt video ({_short(exc)})") from exc
            break
        if packet.stream is vin:
            try:
                decoded = packet.decode()
            except (av.FFmpegError, ValueError):
                errors += 1
                if errors > _MAX_DECODE_ERRORS and frames == 0:
                    raise HardwareError(f"{src.name}: no decodable video frames") from None
                continue
            for frame in decoded:
                if not rotation_set:
                    rotation_set = True
                    if frame.rotation:
                        vout.set_display_rotation(frame.rotation)
                    for held in pending_audio:
                        _mux_audio(av, out, aout, held, audio, resampler)
                    pending_audio.clear()
                pts = frame.pts
                if pts is None or pts <= last_pts:
                    pts = last_pts + 1
                last_pts = pts
                try:
                    scaled = frame.reformat(out_w, out_h, pix_fmt, threads=sws_threads)
                except (av.FFmpegError, ValueError) as exc:
                    raise HardwareError(f"{src.name}: cannot convert frame ({_short(exc)})") from exc
                scaled.pts = pts
                scaled.time_base = vin.time_base
                _encode_video(av, out, vout, scaled)
                frames += 1
        elif aout is not None:
            if rotation_set:
                errors += _mux_audio(av, out, aout, packet, audio, resampler)
            elif len(pending_audio) < 5000:
                pending_audio.append(packet)
    if frames == 0:
        raise HardwareError(f"{src.name}: no decodable video frames")
    _encode_video(av, out, vout, None)
    if audio == "aac" and aout is not None:
        try:
            out.mux(aout.encode(None))
        except av.FFmpegError:
            errors += 1
    return frames, out_w, out_h, audio, errors


def _encode_video(av: Any, out: Any, vout: Any, frame: Any) -> None:
    try:
        out.mux(vout.encode(frame))
    except (av.FFmpegError, ValueError) as exc:
        raise _EncoderFailed(_short(exc)) from exc


def _mux_audio(av: Any, out: Any, aout: Any, packet: Any, mode: str, resampler: Any) -> int:
    """Copy or re-encode one audio packet; returns 1 on a (skipped) bad packet."""
    try:
        if mode == "copy":
            if packet.dts is None or packet.size == 0:
                return 0
            packet.stream = aout
            out.mux(packet)
        else:
            for frame in packet.decode():
                frame.pts = None
                for part in resampler.resample(frame):
                    out.mux(aout.encode(part))
    except (av.FFmpegError, ValueError):
        return 1
    return 0


# --------------------------------------------------------------------------------------------------
# VA-API through the system ffmpeg binary


def _encode_ffmpeg(
    av: Any, src: Path, tmp: Path, height: int | None, plan: _Plan, crf: int, timeout: float | None
) -> tuple[int, int, int, str, int]:
    ffmpeg = hardware._ffmpeg_binary()
    if ffmpeg is None or plan.device is None:
        raise _EncoderFailed("system ffmpeg not found")
    with _open_input(av, src) as inp:
        deadline = _deadline(inp, timeout)
        vin = inp.streams.video[0]
        audio = _audio_mode(inp.streams.audio[0] if inp.streams.audio else None)
        out_w, out_h = _output_size(vin, height)
        rotation = 0
        with contextlib.suppress(av.FFmpegError, StopIteration):
            rotation = next(inp.decode(vin)).rotation
    if rotation in (90, -90, 270, -270):  # ffmpeg autorotates before our filters
        out_w, out_h = out_h, out_w
    opts = _HW_OPTIONS["h264_vaapi"]
    cmd = [ffmpeg, "-hide_banner", "-nostdin", "-y", "-loglevel", "error"]
    cmd += ["-init_hw_device", f"vaapi=va:{plan.device}", "-filter_hw_device", "va", "-i", str(src)]
    cmd += ["-map", "0:v:0", "-map", "0:a:0?", "-vf", f"format=nv12,hwupload,scale_vaapi=w={out_w}:h={out_h}"]
    cmd += ["-c:v", "h264_vaapi"] + [x for k, v in opts.items() for x in (f"-{k}", v.format(q=crf))]
    cmd += ["-c:a", "copy"] if audio == "copy" else ["-c:a", "aac", "-b:a", "128k"]
    cmd += ["-movflags", "+faststart", "-f", "mp4", str(tmp)]
    remaining = max(1.0, deadline - time.monotonic())
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=remaining)
    except subprocess.TimeoutExpired as exc:
        raise HardwareError(f"{src.name}: timed out in ffmpeg after {remaining:.0f}s") from exc
    except OSError as exc:
        raise _EncoderFailed(f"cannot run {ffmpeg}: {exc}") from exc
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines() or [f"exit {proc.returncode}"]
        raise _EncoderFailed(f"ffmpeg: {tail[-1][:300]}")
    try:
        with av.open(str(tmp)) as check:
            frames = check.streams.video[0].frames if check.streams.video else 0
    except (av.FFmpegError, OSError) as exc:
        raise _EncoderFailed(f"ffmpeg wrote an unreadable file ({_short(exc)})") from exc
    if frames == 0:
        raise _EncoderFailed("ffmpeg wrote no video frames")
    return frames, out_w, out_h, audio, 0


# --------------------------------------------------------------------------------------------------
# Thumbnails


def _thumbnail_local(src: Path, dst: Path, at: float, size: int, timeout: float | None) -> ThumbnailResult:
    av = hardware.require_pyav()
    if size < 2:
        raise ConfigError(f"size must be >= 2, not {size}")
    with _open_input(av, src) as inp:
        deadline = _deadline(inp, timeout)
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        duration = inp.duration / 1_000_000 if inp.duration else 0.0
        target = duration * at
        if target > 0 and vin.time_base:
            with contextlib.suppress(av.FFmpegError, OSError):
                inp.seek(int(target / vin.time_base), stream=vin, backward=True, any_frame=False)
        chosen = None
        errors = 0
        packets = inp.demux(vin)
        while chosen is None or (chosen.time is not None and chosen.time < target):
            _check_deadline(deadline, src)
            try:
                packet = next(packets)
            except StopIteration:
                break
            except (av.FFmpegError, OSError):
                break
            try:
                for frame in packet.decode():
                    chosen = frame
            except (av.FFmpegError, ValueError):
                errors += 1
                if errors > _MAX_DECODE_ERRORS:
                    break
        if chosen is None:
            raise HardwareError(f"{src.name}: no decodable video frames")
        w, h = _output_size_box(chosen.width, chosen.height, size)
        img = chosen.reformat(w, h, "yuvj420p")
        enc = av.CodecContext.create("mjpeg", "w")
        enc.width, enc.height, enc.pix_fmt = w, h, "yuvj420p"
        enc.time_base = Fraction(1, 25)
        enc.options = {"qscale": "3"}
        data = b"".join(bytes(p) for p in enc.encode(img)) + b"".join(bytes(p) for p in enc.encode(None))
        at_seconds = float(chosen.time or 0.0)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(dst)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return ThumbnailResult(str(src), str(dst), w, h, round(at_seconds, 3), len(data))


def _output_size_box(w: int, h: int, size: int) -> tuple[int, int]:
    scale = min(1.0, size / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


# --------------------------------------------------------------------------------------------------
# Isolation: one child process per job, killed on timeout; a crash is a per-file error.


def _run_isolated(
    kind: str, job: dict[str, Any], src: Path, dst: Path, timeout: float | None
) -> dict[str, Any]:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(dst)
    job = {**job, "kind": kind, "tmp": str(tmp)}
    if timeout is None:
        timeout = setting("video_timeout", default=None, cast=float)
    # The child enforces its own deadline between frames (60 s + 3x the duration); this outer limit
    # catches a hang inside one FFmpeg call.  Never open the file here: that is what might hang.
    if timeout is not None:
        outer = float(timeout) + 30.0
    else:
        try:
            size_mb = src.stat().st_size / 1e6
        except OSError:
            size_mb = 0.0
        outer = 120.0 + 2.0 * size_mb  # ~2 s per MB: 10x slower than libx264 at 1080p on 2 cores
    res = run_child("tgkit.video", job, outer)
    if res.reply is None:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if res.timed_out:
            raise HardwareError(f"{src.name}: timed out after {outer:.0f}s (killed)")
        if res.returncode < 0:
            raise HardwareError(f"{src.name}: decoder crashed (signal {-res.returncode})")
        raise HardwareError(f"{src.name}: worker failed: {res.stderr_tail or f'exit {res.returncode}'}")
    reply = res.reply
    if "error" in reply:
        cls = {"EncoderUnavailable": EncoderUnavailable, "ConfigError": ConfigError}.get(
            reply["type"], HardwareError
        )
        raise cls(reply["error"])
    return dict(reply["result"])


def _child_main() -> int:
    job = json.loads(sys.stdin.read())
    try:
        if job["kind"] == "transcode":
            result: Any = _transcode_local(
                Path(job["src"]),
                Path(job["dst"]),
                job["height"],
                _Plan(**job["plan"]),
                job["crf"],
                job["preset"],
                job["timeout"],
                tmp=Path(job["tmp"]),
            )
        else:
            result = _thumbnail_local(
                Path(job["src"]), Path(job["dst"]), job["at"], job["size"], job["timeout"]
            )
        reply: dict[str, Any] = {"result": result.to_dict()}
    except (HardwareError, ConfigError) as exc:
        reply = {"error": str(exc), "type": type(exc).__name__}
    except Exception as exc:  # report, never a traceback the parent cannot parse
        reply = {
            "error": f"{Path(job['src']).name}: {type(exc).__name__}: {_short(exc)}",
            "type": "HardwareError",
        }
    print(json.dumps(reply), flush=True)
    return 0
