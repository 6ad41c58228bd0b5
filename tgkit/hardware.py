"""Which H.264 encoder this machine can really use, and why every other one was rejected.

:func:`probe` gathers CPU/memory facts, the DRM render nodes and their permissions, what libva says
about each node (through ctypes, in a child process with a timeout: a broken driver can crash or hang),
what PyAV's FFmpeg and a system ``ffmpeg`` binary can do, and then runs a *trial encode* (16 frames,
256x256) through the exact backend of every candidate that survived the cheap checks.  Only a trial
proves an encoder works: decode-only VA drivers and GPUs without an encoder pass every other check.

Facts checked on the PyPI PyAV 18.1 wheel: its FFmpeg has NVENC, QSV (libvpl), AMF and libx264 but no
VA-API, so ``h264_vaapi`` runs through a system ``ffmpeg`` binary (subprocess) or a PyAV built against
a VA-API FFmpeg.  Both are detected, never assumed.

Every rejected candidate carries one reason code (:data:`REASONS`).  Results are cached per process and
on disk, keyed by the PyAV/FFmpeg versions, the ffmpeg binary, the render nodes and the relevant
environment, so a rerun costs a stat() and a JSON read.  See docs/HARDWARE.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import grp
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ._child import run_child
from ._files import atomic_write_bytes
from .config import cache_dir as _resolve_cache_dir
from .config import env_flag, setting
from .errors import HardwareError

__all__ = [
    "REASONS",
    "Candidate",
    "HardwareReport",
    "LibvaInfo",
    "ProbeSeams",
    "RenderNode",
    "describe",
    "mark_degraded",
    "probe",
    "run_probe",
]

log = logging.getLogger("tgkit.hardware")

#: Reason codes, in the order the checks run (a later code means the candidate got further).
REASONS: tuple[str, ...] = (
    "forced_cpu",
    "no_dri",
    "no_render_node",
    "permission",
    "libva_missing",
    "init_failed",
    "no_h264_encode",
    "backend_missing",
    "trial_failed",
)

CPU_ENCODER = "libx264"
_CACHE_FORMAT = 1
# VAProfile / VAEntrypoint values from va/va.h (stable ABI since libva 1.x).
_H264_PROFILES = frozenset({6, 7, 13})  # H264Main, H264High, H264ConstrainedBaseline
_ENCODE_ENTRYPOINTS = frozenset({6, 8})  # EncSlice, EncSliceLP
TRIAL_FRAMES = 16
TRIAL_SIZE = 256
_HW_FAILURES_BEFORE_CPU = 3


# --------------------------------------------------------------------------------------------------
# Records


@dataclass(slots=True)
class LibvaInfo:
    """What libva said about one render node: ``status`` is ``ok``, ``libva_missing`` or ``init_failed``."""

    status: str
    detail: str | None = None
    vendor: str | None = None
    version: str | None = None
    profiles: dict[int, list[int]] = field(default_factory=dict)  # VAProfile -> VAEntrypoints
    h264_encode: bool = False
    seconds: float = 0.0


@dataclass(slots=True)
class RenderNode:
    """A DRM render node and whether this process may open it (R/W is what VA-API needs)."""

    path: str
    readable: bool
    writable: bool
    group: str | None = None
    gid: int | None = None
    in_group: bool | None = None
    libva: LibvaInfo | None = None


@dataclass(slots=True)
class Candidate:
    """One encoder through one backend (``pyav`` in-process, or the system ``ffmpeg`` binary)."""

    encoder: str
    backend: str
    device: str | None = None
    hardware: bool = True
    ok: bool = False
    reason: str | None = None  # one of REASONS when rejected
    detail: str | None = None
    trial_seconds: float | None = None

    @property
    def label(self) -> str:
        return f"{self.encoder}/{self.backend}" + (f"@{self.device}" if self.device else "")


@dataclass(slots=True, repr=False)
class HardwareReport:
    """Everything :func:`probe` found, the chosen encoder, and a reason for every rejected one."""

    cpu_model: str
    cpu_logical: int
    cpu_physical: int | None
    memory_total: int
    memory_available: int
    pyav_version: str | None
    libav_version: str | None
    pyav_encoders: list[str]
    pyav_hwdevices: list[str]
    ffmpeg_path: str | None
    ffmpeg_version: str | None
    ffmpeg_encoders: list[str]
    dri_dir: str
    render_nodes: list[RenderNode]
    candidates: list[Candidate]
    encoder: str
    backend: str
    device: str | None
    driver: str | None
    hardware: bool
    reason: str | None  # why hardware is off (None when it is on)
    reasons: dict[str, str]  # rejected candidate label -> reason code
    env: dict[str, str | None]
    probed_at: float
    probe_seconds: float
    from_cache: bool = False
    degraded: bool = False
    degraded_detail: str | None = None
    hardware_failures: int = 0

    def __repr__(self) -> str:
        mem = self.memory_total / 2**30
        state = f"{self.encoder} via {self.backend}" + (f" on {self.device}" if self.device else "")
        extra = f", reason={self.reason!r}" if self.reason else ""
        extra += ", degraded=True" if self.degraded else ""
        return (
            f"HardwareReport({state}, hardware={self.hardware}{extra}, cpu={self.cpu_model!r} "
            f"x{self.cpu_logical}, memory={mem:.1f} GiB, render_nodes={len(self.render_nodes)}, "
            f"candidates={len(self.candidates)}, cached={self.from_cache})"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``json.dumps(report.to_dict())`` round-trips through :meth:`from_dict`)."""
        out = asdict(self)
        for node in out["render_nodes"]:
            if node["libva"] is not None:
                node["libva"]["profiles"] = {str(k): v for k, v in node["libva"]["profiles"].items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HardwareReport:
        values = dict(data)
        nodes = []
        for raw in values["render_nodes"]:
            node = dict(raw)
            if node.get("libva") is not None:
                lv = dict(node["libva"])
                lv["profiles"] = {int(k): list(v) for k, v in lv["profiles"].items()}
                node["libva"] = LibvaInfo(**lv)
            nodes.append(RenderNode(**node))
        values["render_nodes"] = nodes
        values["candidates"] = [Candidate(**c) for c in values["candidates"]]
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        return cls(**values)

    def to_polars(self) -> Any:
        """One row per candidate (encoder, backend, device, ok, reason, detail, trial time, chosen)."""
        import polars as pl

        rows = [
            {
                "encoder": c.encoder,
                "backend": c.backend,
                "device": c.device,
                "hardware": c.hardware,
                "ok": c.ok,
                "reason": c.reason,
                "detail": c.detail,
                "trial_seconds": c.trial_seconds,
                "chosen": c.ok
                and c.encoder == self.encoder
                and c.backend == self.backend
                and c.device == self.device,
            }
            for c in self.candidates
        ]
        schema = {
            "encoder": pl.String,
            "backend": pl.String,
            "device": pl.String,
            "hardware": pl.Boolean,
            "ok": pl.Boolean,
            "reason": pl.String,
            "detail": pl.String,
            "trial_seconds": pl.Float64,
            "chosen": pl.Boolean,
        }
        return pl.DataFrame(rows, schema=schema)

    def candidate(self, encoder: str, backend: str | None = None) -> Candidate | None:
        """The first working candidate for ``encoder`` (and ``backend``), else None."""
        for c in self.candidates:
            if c.ok and c.encoder == encoder and (backend is None or c.backend == backend):
                return c
        return None


def describe(report: HardwareReport) -> str:
    """The one line ``tgkit probe`` prints."""
    if report.hardware and not _cpu_only_after_failures(report):
        where = f" on {report.device}" if report.device else ""
        driver = f" ({report.driver})" if report.driver else ""
        line = f"Hardware encoding: {report.encoder} via {report.backend}{where}{driver}"
        if report.degraded:
            line += f" [degraded: {report.hardware_failures} runtime failure(s), fell back to {CPU_ENCODER}]"
        return line
    reason = report.reason or "trial_failed"
    if report.hardware:
        reason = "runtime_failures"
    return f"Hardware encoding: off ({reason}); using {CPU_ENCODER}"


def mark_degraded(report: HardwareReport, detail: str) -> None:
    """Record that the chosen hardware encoder failed at runtime (video.py retried on the CPU)."""
    report.degraded = True
    report.hardware_failures += 1
    report.degraded_detail = detail[:500]
    log.warning("hardware encoder %s failed, fell back to %s: %s", report.encoder, CPU_ENCODER, detail)


def _cpu_only_after_failures(report: HardwareReport) -> bool:
    return report.hardware_failures >= _HW_FAILURES_BEFORE_CPU


# --------------------------------------------------------------------------------------------------
# Seams: every probe that touches the machine is a replaceable callable (tests use fakes).


@dataclass(slots=True)
class PyAVCaps:
    version: str | None
    libav_version: str | None
    encoders: list[str]
    hwdevices: list[str]


@dataclass(slots=True)
class ProbeSeams:
    """The machine as the probe sees it.  Defaults are the real thing; tests swap in fakes."""

    dri_dir: Path = Path("/dev/dri")
    libva: Callable[[str, float], LibvaInfo] | None = None  # (node, timeout) -> LibvaInfo
    trial: Callable[[Candidate, float], tuple[bool, str | None]] | None = None
    access: Callable[[str], tuple[bool, bool]] | None = None  # node -> (readable, writable)
    pyav: Callable[[], PyAVCaps] | None = None
    nvidia_runtime: Callable[[], bool] | None = None
    amf_runtime: Callable[[], bool] | None = None


def _access(path: str) -> tuple[bool, bool]:
    return os.access(path, os.R_OK), os.access(path, os.W_OK)


def _pyav_caps() -> PyAVCaps:
    try:
        import av
    except ImportError:
        return PyAVCaps(None, None, [], [])
    from av.codec.hwaccel import hwdevices_available

    wanted = ("h264", "libx264")
    encoders = []
    for name in sorted(av.codecs_available):
        if not name.startswith(wanted):
            continue
        try:
            av.Codec(name, "w")
        except Exception:  # decoder-only name
            continue
        encoders.append(name)
    libav = av.library_versions.get("libavcodec")
    return PyAVCaps(
        av.__version__,
        ".".join(map(str, libav)) if libav else None,
        encoders,
        sorted(hwdevices_available()),
    )


def _nvidia_runtime() -> bool:
    return os.path.exists("/dev/nvidiactl") and bool(ctypes.util.find_library("cuda"))


def _amf_runtime() -> bool:
    return bool(ctypes.util.find_library("amfrt64"))


# --------------------------------------------------------------------------------------------------
# Child processes: libva via ctypes, and PyAV trial encodes.  A crash or hang stays in the child.


def _run_child(task: dict[str, Any], timeout: float) -> tuple[dict[str, Any] | None, str]:
    """Run ``_child_main`` with ``task``; returns (result, problem) where problem explains a failure."""
    res = run_child("tgkit.hardware", task, timeout)
    if res.timed_out:
        return None, f"timed out after {timeout:g}s"
    if res.problem:
        return None, res.problem
    return res.reply, ""


def _child_main() -> int:
    task = json.loads(sys.stdin.read())
    kind = task["kind"]
    result = _libva_query(task["node"]) if kind == "libva" else _pyav_trial(task["encoder"])
    print(json.dumps(result), flush=True)
    return 0


def _libva_query(node: str) -> dict[str, Any]:
    """vaGetDisplayDRM + vaInitialize + vendor + profiles x entrypoints (runs in the child)."""
    try:
        va = ctypes.CDLL("libva.so.2")
        va_drm = ctypes.CDLL("libva-drm.so.2")
    except OSError as exc:
        return {"status": "libva_missing", "detail": str(exc)}
    c_int, c_void_p, byref = ctypes.c_int, ctypes.c_void_p, ctypes.byref
    va_drm.vaGetDisplayDRM.restype = c_void_p
    va_drm.vaGetDisplayDRM.argtypes = [c_int]
    va.vaInitialize.argtypes = [c_void_p, ctypes.POINTER(c_int), ctypes.POINTER(c_int)]
    va.vaInitialize.restype = c_int
    va.vaErrorStr.argtypes = [c_int]
    va.vaErrorStr.restype = ctypes.c_char_p
    va.vaQueryVendorString.argtypes = [c_void_p]
    va.vaQueryVendorString.restype = ctypes.c_char_p
    va.vaMaxNumProfiles.argtypes = [c_void_p]
    va.vaMaxNumEntrypoints.argtypes = [c_void_p]
    va.vaQueryConfigProfiles.argtypes = [c_void_p, ctypes.POINTER(c_int), ctypes.POINTER(c_int)]
    va.vaQueryConfigEntrypoints.argtypes = [c_void_p, c_int, ctypes.POINTER(c_int), ctypes.POINTER(c_int)]
    va.vaTerminate.argtypes = [c_void_p]
    try:
        fd = os.open(node, os.O_RDWR)
    except OSError as exc:
        return {"status": "init_failed", "detail": f"open {node}: {exc}"}
    try:
        dpy = va_drm.vaGetDisplayDRM(fd)
        if not dpy:
            return {"status": "init_failed", "detail": "vaGetDisplayDRM returned NULL"}
        major, minor = c_int(), c_int()
        status = va.vaInitialize(dpy, byref(major), byref(minor))
        if status != 0:
            msg = (va.vaErrorStr(status) or b"").decode(errors="replace")
            return {"status": "init_failed", "detail": f"vaInitialize: {msg} ({status})"}
        try:
            vendor = (va.vaQueryVendorString(dpy) or b"").decode(errors="replace")
            n_prof = max(int(va.vaMaxNumProfiles(dpy)), 0)
            prof_buf = (c_int * max(n_prof, 1))()
            count = c_int()
            va.vaQueryConfigProfiles(dpy, prof_buf, byref(count))
            n_ep = max(int(va.vaMaxNumEntrypoints(dpy)), 1)
            profiles: dict[str, list[int]] = {}
            for prof in prof_buf[: count.value]:
                ep_buf = (c_int * n_ep)()
                n = c_int()
                if va.vaQueryConfigEntrypoints(dpy, prof, ep_buf, byref(n)) == 0:
                    profiles[str(prof)] = sorted(ep_buf[: n.value])
        finally:
            va.vaTerminate(dpy)
    finally:
        os.close(fd)
    return {
        "status": "ok",
        "vendor": vendor,
        "version": f"{major.value}.{minor.value}",
        "profiles": profiles,
    }


def libva_info_from(result: dict[str, Any], seconds: float = 0.0) -> LibvaInfo:
    """Build a :class:`LibvaInfo` from the child's JSON (also the seam tests inject results through)."""
    profiles = {int(k): [int(e) for e in v] for k, v in (result.get("profiles") or {}).items()}
    h264_encode = any(p in _H264_PROFILES and _ENCODE_ENTRYPOINTS & set(eps) for p, eps in profiles.items())
    return LibvaInfo(
        status=result["status"],
        detail=result.get("detail"),
        vendor=result.get("vendor"),
        version=result.get("version"),
        profiles=profiles,
        h264_encode=h264_encode,
        seconds=seconds,
    )


def _libva_in_child(node: str, timeout: float) -> LibvaInfo:
    t0 = time.perf_counter()
    result, problem = _run_child({"kind": "libva", "node": node}, timeout)
    if result is None:
        return LibvaInfo("init_failed", detail=f"libva probe {problem}", seconds=time.perf_counter() - t0)
    return libva_info_from(result, time.perf_counter() - t0)


def trial_frames_nv12() -> bytes:
    """16 NV12 frames of a moving gradient, 256x256 (what every trial encodes)."""
    size = TRIAL_SIZE
    frames = []
    for i in range(TRIAL_FRAMES):
        luma = bytes(((x + y + 8 * i) & 0xFF) for y in range(size) for x in range(0, size, 16)) * 16
        frames.append(luma[: size * size] + bytes([128]) * (size * size // 2))
    return b"".join(frames)


def _pyav_trial(encoder: str) -> dict[str, Any]:
    """Encode 16 frames through PyAV (runs in the child); ok only if packets with data come out."""
    from fractions import Fraction

    import av

    try:
        ctx: Any = av.CodecContext.create(encoder, "w")  # a VideoCodecContext
        ctx.width = ctx.height = TRIAL_SIZE
        ctx.time_base = Fraction(1, 30)
        ctx.framerate = Fraction(30, 1)
        ctx.pix_fmt = "yuv420p" if encoder.startswith("libx264") else "nv12"
        data = trial_frames_nv12()
        per = TRIAL_SIZE * TRIAL_SIZE * 3 // 2
        nbytes = 0
        luma = TRIAL_SIZE * TRIAL_SIZE  # 256 is a multiple of every line alignment: no padding
        for i in range(TRIAL_FRAMES):
            chunk = data[i * per : (i + 1) * per]
            frame = av.VideoFrame(TRIAL_SIZE, TRIAL_SIZE, "nv12")
            frame.planes[0].update(chunk[:luma])
            frame.planes[1].update(chunk[luma:])
            if ctx.pix_fmt != "nv12":
                frame = frame.reformat(format=ctx.pix_fmt)
            frame.pts = i
            nbytes += sum(p.size for p in ctx.encode(frame))
        nbytes += sum(p.size for p in ctx.encode(None))
    except Exception as exc:
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
    if nbytes == 0:
        return {"ok": False, "detail": "encoder produced no data"}
    return {"ok": True, "detail": f"{nbytes} bytes"}


def _ffmpeg_trial(ffmpeg: str, node: str, timeout: float) -> tuple[bool, str | None]:
    size = f"{TRIAL_SIZE}x{TRIAL_SIZE}"
    cmd = [
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-init_hw_device",
        f"vaapi=va:{node}",
        "-filter_hw_device",
        "va",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "nv12",
        "-s",
        size,
        "-r",
        "30",
        "-i",
        "pipe:0",
        "-vf",
        "format=nv12,hwupload",
        "-c:v",
        "h264_vaapi",
        "-f",
        "null",
        "-",
    ]
    try:
        proc = subprocess.run(cmd, input=trial_frames_nv12(), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"ffmpeg trial timed out after {timeout:g}s"
    except OSError as exc:
        return False, f"cannot run {ffmpeg}: {exc}"
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines() or [f"exit {proc.returncode}"]
        return False, tail[-1][:300]
    return True, None


def _default_trial(candidate: Candidate, timeout: float) -> tuple[bool, str | None]:
    if candidate.backend == "ffmpeg":
        ffmpeg = _ffmpeg_binary()
        if ffmpeg is None or candidate.device is None:
            return False, "ffmpeg binary vanished"
        return _ffmpeg_trial(ffmpeg, candidate.device, timeout)
    result, problem = _run_child({"kind": "trial", "encoder": candidate.encoder}, timeout)
    if result is None:
        return False, f"trial {problem}"
    return bool(result["ok"]), result.get("detail")


# --------------------------------------------------------------------------------------------------
# System ffmpeg


def _ffmpeg_binary() -> str | None:
    name = setting("ffmpeg", default="ffmpeg")
    return shutil.which(name)


def _ffmpeg_caps(ffmpeg: str | None, timeout: float) -> tuple[str | None, list[str]]:
    if ffmpeg is None:
        return None, []
    try:
        ver = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, timeout=timeout)
        enc = subprocess.run(
            [ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("cannot query %s: %s", ffmpeg, exc)
        return None, []
    version = (ver.stdout.splitlines() or [""])[0].strip() or None
    encoders = []
    for line in enc.stdout.splitlines():
        parts = line.split()
        # lines look like " V....D h264_vaapi           H.264/AVC (VAAPI) (codec h264)"
        if len(parts) >= 2 and parts[0].startswith("V") and len(parts[0]) == 6 and "264" in parts[1]:
            encoders.append(parts[1])
    return version, sorted(encoders)


# --------------------------------------------------------------------------------------------------
# The probe


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _driver_short(vendor: str | None) -> str | None:
    if not vendor:
        return None
    v = vendor.lower()
    if "ihd" in v:
        return "Intel iHD"
    if "i965" in v:
        return "Intel i965"
    if "mesa" in v or "gallium" in v:
        for gpu in ("AMD", "Radeon", "nouveau", "Intel"):
            if gpu.lower() in v:
                return f"{'AMD' if gpu == 'Radeon' else gpu} Mesa"
        return "Mesa"
    return vendor[:40]


def _nodes(dri_dir: Path, pinned: str | None) -> tuple[list[str], str | None]:
    """Render node paths to consider, or a (reason) when there are none."""
    if pinned:
        return ([pinned], None) if os.path.exists(pinned) else ([], "no_render_node")
    if not dri_dir.is_dir():
        return [], "no_dri"
    found = sorted(str(p) for p in dri_dir.glob("renderD*"))
    return (found, None) if found else ([], "no_render_node")


def _node_record(path: str, access: Callable[[str], tuple[bool, bool]]) -> RenderNode:
    readable, writable = access(path)
    group = gid = in_group = None
    with contextlib.suppress(OSError):
        gid = os.stat(path).st_gid
        in_group = gid in os.getgroups() or gid == os.getegid()
        with contextlib.suppress(KeyError):
            group = grp.getgrgid(gid).gr_name
    return RenderNode(path, readable, writable, group, gid, in_group)


def _permission_detail(node: RenderNode) -> str:
    who = f"group '{node.group}' (gid {node.gid})" if node.group else f"gid {node.gid}"
    hint = "" if node.in_group else f"; add your user to {who} and log in again"
    return f"{node.path} is not readable and writable by this user, owned by {who}{hint}"


def run_probe(seams: ProbeSeams | None = None, *, timeout: float | None = None) -> HardwareReport:
    """Probe the machine now (no caching).  ``seams`` replaces the parts that touch hardware."""
    t0 = time.perf_counter()
    s = seams or ProbeSeams()
    timeout = float(setting("probe_timeout", timeout, default=20.0, cast=float))
    libva_probe = s.libva or _libva_in_child
    trial = s.trial or _default_trial
    access = s.access or _access
    forced = env_flag("FORCE_CPU_TRANSCODE")
    pinned = setting("vaapi_device", default=None)
    env = {
        "FORCE_CPU_TRANSCODE": os.environ.get("FORCE_CPU_TRANSCODE"),
        "TGKIT_VAAPI_DEVICE": pinned,
        "LIBVA_DRIVER_NAME": os.environ.get("LIBVA_DRIVER_NAME"),
    }

    import psutil

    mem = psutil.virtual_memory()
    caps = (s.pyav or _pyav_caps)()
    ffmpeg = _ffmpeg_binary()
    ffmpeg_version, ffmpeg_encoders = _ffmpeg_caps(ffmpeg, min(timeout, 10.0))
    paths, node_problem = _nodes(s.dri_dir, pinned)
    nodes = [_node_record(p, access) for p in paths]

    candidates: list[Candidate] = []
    # VA-API first (the target), per backend and per node; then the PyAV-only encoders.
    backends = [("pyav", "h264_vaapi" in caps.encoders and "vaapi" in caps.hwdevices)]
    backends.append(("ffmpeg", "h264_vaapi" in ffmpeg_encoders))
    dri_families = [("h264_vaapi", b, present) for b, present in backends]
    dri_families.append(("h264_qsv", "pyav", "h264_qsv" in caps.encoders and "qsv" in caps.hwdevices))
    dri_families.append(
        ("h264_amf", "pyav", "h264_amf" in caps.encoders and (s.amf_runtime or _amf_runtime)())
    )

    for encoder, backend, present in dri_families:
        if forced:
            candidates.append(Candidate(encoder, backend, reason="forced_cpu", detail="FORCE_CPU_TRANSCODE"))
            continue
        if node_problem:
            where = pinned or str(s.dri_dir)
            candidates.append(Candidate(encoder, backend, reason=node_problem, detail=f"nothing at {where}"))
            continue
        for node in nodes:
            candidates.append(_check_dri_candidate(encoder, backend, present, node, libva_probe, timeout))

    nvenc_present = "h264_nvenc" in caps.encoders and (s.nvidia_runtime or _nvidia_runtime)()
    nvenc = Candidate("h264_nvenc", "pyav")
    if forced:
        nvenc.reason, nvenc.detail = "forced_cpu", "FORCE_CPU_TRANSCODE"
    elif not nvenc_present:
        nvenc.reason, nvenc.detail = "backend_missing", "no NVIDIA driver (/dev/nvidiactl, libcuda)"
    candidates.append(nvenc)
    candidates.append(Candidate(CPU_ENCODER, "pyav", hardware=False))

    # Trial encodes: only for candidates that passed every cheap check; stop at the first working
    # hardware encoder (later ones keep reason None/ok False and detail 'not tried').
    chosen: Candidate | None = None
    for cand in candidates:
        if cand.reason is not None:
            continue
        if cand.hardware and chosen is not None:
            cand.detail = f"not tried: {chosen.label} works"
            continue
        if not cand.hardware and CPU_ENCODER not in caps.encoders:
            cand.reason, cand.detail = "backend_missing", "PyAV is not installed or lacks libx264"
            continue
        t1 = time.perf_counter()
        ok, detail = trial(cand, timeout)
        cand.trial_seconds = round(time.perf_counter() - t1, 4)
        cand.ok, cand.detail = ok, detail
        if not ok:
            cand.reason = "trial_failed"
        elif cand.hardware and chosen is None:
            chosen = cand

    if chosen is None:
        cpu = candidates[-1]
        enc, backend, device, hw = CPU_ENCODER, "pyav", None, False
        if not cpu.ok:
            log.warning("libx264 trial failed: %s", cpu.detail)
    else:
        enc, backend, device, hw = chosen.encoder, chosen.backend, chosen.device, True
    driver = None
    if device:
        for node in nodes:
            if node.path == device and node.libva is not None:
                driver = _driver_short(node.libva.vendor)

    reasons = {c.label: c.reason for c in candidates if c.reason}
    return HardwareReport(
        cpu_model=_cpu_model(),
        cpu_logical=psutil.cpu_count(logical=True) or 1,
        cpu_physical=psutil.cpu_count(logical=False),
        memory_total=int(mem.total),
        memory_available=int(mem.available),
        pyav_version=caps.version,
        libav_version=caps.libav_version,
        pyav_encoders=caps.encoders,
        pyav_hwdevices=caps.hwdevices,
        ffmpeg_path=ffmpeg,
        ffmpeg_version=ffmpeg_version,
        ffmpeg_encoders=ffmpeg_encoders,
        dri_dir=str(s.dri_dir),
        render_nodes=nodes,
        candidates=candidates,
        encoder=enc,
        backend=backend,
        device=device,
        driver=driver,
        hardware=hw,
        reason=None if hw else _headline_reason(candidates),
        reasons=reasons,
        env=env,
        probed_at=time.time(),
        probe_seconds=round(time.perf_counter() - t0, 4),
    )


def _check_dri_candidate(
    encoder: str,
    backend: str,
    present: bool,
    node: RenderNode,
    libva_probe: Callable[[str, float], LibvaInfo],
    timeout: float,
) -> Candidate:
    cand = Candidate(encoder, backend, node.path)
    if not (node.readable and node.writable):
        cand.reason, cand.detail = "permission", _permission_detail(node)
        return cand
    if node.libva is None:  # one libva query per node, shared by all candidates on it
        node.libva = libva_probe(node.path, timeout)
    info = node.libva
    if info.status != "ok":
        reason = info.status if info.status in REASONS else "init_failed"
        cand.reason, cand.detail = reason, info.detail
        return cand
    if not info.h264_encode:
        cand.reason = "no_h264_encode"
        cand.detail = f"{info.vendor or 'driver'} has no H.264 encode entrypoint (decode-only?)"
        return cand
    if not present:
        cand.reason = "backend_missing"
        cand.detail = {
            ("h264_vaapi", "pyav"): "PyAV's FFmpeg has no VA-API (the PyPI wheel never does)",
            ("h264_vaapi", "ffmpeg"): "no system ffmpeg with h264_vaapi on PATH (install ffmpeg)",
            ("h264_qsv", "pyav"): "PyAV's FFmpeg has no QSV",
            ("h264_amf", "pyav"): "AMD AMF runtime (libamfrt64) not installed",
        }.get((encoder, backend), "backend missing")
    return cand


def _headline_reason(candidates: list[Candidate]) -> str | None:
    """The reason shown in one line: how far the furthest VA-API candidate got (else any hardware one)."""
    for family in (["h264_vaapi"], None):
        pool = [c for c in candidates if c.hardware and c.reason and (family is None or c.encoder in family)]
        if pool:
            return max(pool, key=lambda c: REASONS.index(c.reason or "forced_cpu")).reason
    return None


# --------------------------------------------------------------------------------------------------
# Caching: per process, and on disk keyed by everything that can change the answer.

_memory: dict[str, HardwareReport] = {}
_lock = threading.Lock()


def _cache_key(dri_dir: Path) -> dict[str, Any]:
    caps = _pyav_caps()
    ffmpeg = _ffmpeg_binary()
    ff_stat = None
    if ffmpeg:
        with contextlib.suppress(OSError):
            st = os.stat(ffmpeg)
            ff_stat = [st.st_size, st.st_mtime_ns]
    pinned = setting("vaapi_device", default=None)
    paths, _ = _nodes(dri_dir, pinned)
    nodes = []
    for p in paths:
        with contextlib.suppress(OSError):
            st = os.stat(p)
            nodes.append([p, st.st_rdev, st.st_mode, st.st_uid, st.st_gid])
    return {
        "format": _CACHE_FORMAT,
        "python": sys.executable,
        "pyav": caps.version,
        "libav": caps.libav_version,
        "ffmpeg": [ffmpeg, ff_stat],
        "dri_dir": str(dri_dir),
        "nodes": nodes,
        "uid": os.geteuid(),
        "groups": sorted(set(os.getgroups())),
        "env": {
            name: os.environ.get(name)
            for name in (
                "FORCE_CPU_TRANSCODE",
                "TGKIT_VAAPI_DEVICE",
                "TGKIT_FFMPEG",
                "LIBVA_DRIVER_NAME",
                "LIBVA_DRIVERS_PATH",
            )
        },
    }


def probe(
    *,
    refresh: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    seams: ProbeSeams | None = None,
) -> HardwareReport:
    """The machine's hardware report, cached per process and on disk (``refresh=True`` re-probes).

    Env: ``FORCE_CPU_TRANSCODE`` (truthy -> CPU, reason ``forced_cpu``), ``TGKIT_VAAPI_DEVICE`` (pin a
    render node), ``TGKIT_FFMPEG`` (the ffmpeg binary), ``LIBVA_DRIVER_NAME`` (passed to libva/ffmpeg).
    ``seams`` replaces the machine-facing probes (tests: a fake dri dir, injected libva results).
    """
    return _probe_cached(seams or ProbeSeams(), refresh=refresh, cache_dir=cache_dir)


def _probe_cached(
    seams: ProbeSeams, *, refresh: bool, cache_dir: str | os.PathLike[str] | None
) -> HardwareReport:
    key = _cache_key(seams.dri_dir)
    blob = json.dumps(key, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:20]
    with _lock:
        if not refresh and digest in _memory:
            return _memory[digest]
        path = _resolve_cache_dir(cache_dir) / f"hardware-{digest}.json"
        report = None if refresh else _read_cache(path, key)
        if report is None:
            report = run_probe(seams)
            _write_cache(path, key, report)
        _memory[digest] = report
        return report


def _read_cache(path: Path, key: dict[str, Any]) -> HardwareReport | None:
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("ignoring unreadable hardware cache %s: %s", path, exc)
        return None
    try:
        data = json.loads(raw)
        if data.get("key") != json.loads(json.dumps(key)):
            return None
        report = HardwareReport.from_dict(data["report"])
    except Exception as exc:
        log.warning("ignoring corrupt hardware cache %s: %s", path, exc)
        return None
    report.from_cache = True
    return report


def _write_cache(path: Path, key: dict[str, Any], report: HardwareReport) -> None:
    data = {"key": key, "report": report.to_dict()}
    try:
        atomic_write_bytes(path, json.dumps(data).encode())
    except OSError as exc:  # a read-only cache dir must not stop an export
        log.warning("cannot write hardware cache %s: %s", path, exc)


def clear_memory_cache() -> None:
    """Forget the per-process reports (tests; or after installing a driver in a running notebook)."""
    with _lock:
        _memory.clear()


def require_pyav() -> Any:
    """Import PyAV or raise an actionable :class:`HardwareError`."""
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a hard dependency
        raise HardwareError("PyAV is required for video work: pip install 'av>=12'") from exc
    return av


def _main(argv: list[str] | None = None) -> int:
    """``python -m tgkit.hardware [--json] [--refresh]`` (the CLI's ``tgkit probe`` does the same)."""
    args = sys.argv[1:] if argv is None else argv
    report = probe(refresh="--refresh" in args)
    print(json.dumps(report.to_dict(), indent=2) if "--json" in args else describe(report))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
