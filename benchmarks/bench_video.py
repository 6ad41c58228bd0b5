"""Transcode a generated 1080p H.264 clip to 720p with every encoder whose trial passed, side by side.

Prints one JSON line per measurement and, last, the summary line::

    {"bench": "video", "encoders": [{name, fps, cpu_seconds_per_frame, bytes}, ...], "baseline_fps",
     "best_fps", "ratio_best_vs_cpu", "chosen_encoder", "reasons", ...}

The baseline is libx264 ``veryfast`` through ``tgkit.video.transcode``; ``pyav_direct`` is the same
pipeline written straight against PyAV, so the difference is tgkit's own overhead.  Each CPU variant
runs ``--repeats`` times interleaved and the best run counts (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av
import numpy as np

from tgkit import hardware, video


def make_clip(path: Path, frames: int, fps: int = 30) -> None:
    """A textured 1080p scene panning 6 px per frame with a moving box: realistic motion, not noise."""
    rng = np.random.default_rng(7)
    h, w = 1080, 1920
    yy, xx = np.mgrid[0:h, 0 : w * 2]
    base = (96 + 60 * np.sin(xx / 97.0) * np.cos(yy / 131.0) + rng.normal(0, 3, (h, w * 2))).clip(16, 235)
    base = base.astype(np.uint8)
    chroma_u = np.full((h // 2, w // 2), 110, np.uint8)
    chroma_v = (128 + 20 * np.sin(np.mgrid[0 : h // 2, 0 : w // 2][1] / 60.0)).astype(np.uint8)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.options = {"preset": "ultrafast", "crf": "18"}
        for i in range(frames):
            y = np.ascontiguousarray(base[:, (6 * i) % w : (6 * i) % w + w])
            bx = (40 + 9 * i) % (w - 200)
            y[400:600, bx : bx + 200] = 220
            frame = av.VideoFrame.from_ndarray(
                np.concatenate([y.ravel(), chroma_u.ravel(), chroma_v.ravel()]).reshape(h * 3 // 2, w),
                format="yuv420p",
            )
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_tgkit(src: Path, dst: Path, encoder: str, report: hardware.HardwareReport) -> dict:
    c0, t0 = _cpu(), time.perf_counter()
    res = video.transcode(src, dst, height=720, encoder=encoder, preset="veryfast", report=report)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    return {
        "name": res.encoder if not res.fallback else f"{encoder}->libx264",
        "backend": res.backend,
        "fps": round(res.frames / wall, 2),
        "cpu_seconds_per_frame": round(cpu / res.frames, 5),
        "bytes": res.bytes,
        "frames": res.frames,
        "fallback": res.fallback,
    }


def run_pyav_direct(src: Path, dst: Path) -> dict:
    """The same decode -> scale -> libx264 veryfast (frame threads) -> MP4 pipeline, no tgkit."""
    c0, t0 = _cpu(), time.perf_counter()
    n = 0
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        vout = out.add_stream("libx264", rate=vin.average_rate or 30)
        vout.width, vout.height, vout.pix_fmt = 1280, 720, "yuv420p"
        vout.codec_context.time_base = vin.time_base
        vout.codec_context.options = {"crf": "23", "preset": "veryfast"}
        vout.codec_context.thread_type = "FRAME"
        for frame in inp.decode(vin):
            small = frame.reformat(1280, 720, "yuv420p", threads=min(4, os.cpu_count() or 1))
            small.pts, small.time_base = frame.pts, vin.time_base
            out.mux(vout.encode(small))
            n += 1
        out.mux(vout.encode(None))
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    return {
        "name": "pyav_direct",
        "backend": "pyav",
        "fps": round(n / wall, 2),
        "cpu_seconds_per_frame": round(cpu / n, 5),
        "bytes": dst.stat().st_size,
        "frames": n,
        "fallback": False,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tgkit-bench-video-") as tmp:
        work = Path(tmp)
        src = work / "src1080.mp4"
        t0 = time.perf_counter()
        make_clip(src, args.frames)
        print(
            json.dumps(
                {
                    "bench": "video",
                    "step": "generate",
                    "frames": args.frames,
                    "seconds": round(time.perf_counter() - t0, 2),
                    "bytes": src.stat().st_size,
                }
            )
        )
        report = hardware.probe(refresh=True, cache_dir=work / "cache")
        print(
            json.dumps(
                {
                    "bench": "video",
                    "step": "probe",
                    "line": hardware.describe(report),
                    "seconds": report.probe_seconds,
                }
            )
        )

        best: dict[str, dict] = {}

        def keep(row: dict) -> None:
            print(json.dumps({"bench": "video", "step": "run", **row}))
            if row["name"] not in best or row["fps"] > best[row["name"]]["fps"]:
                best[row["name"]] = row

        for _ in range(args.repeats):
            keep(run_tgkit(src, work / "cpu.mp4", "cpu", report))
            keep(run_pyav_direct(src, work / "direct.mp4"))
        for cand in report.candidates:
            if cand.ok and cand.hardware:
                keep(run_tgkit(src, work / f"{cand.encoder}.mp4", cand.encoder, report))

        baseline = best["libx264"]["fps"]
        encoders = [
            {k: r[k] for k in ("name", "fps", "cpu_seconds_per_frame", "bytes")}
            for r in best.values()
            if r["name"] != "pyav_direct"
        ]
        best_fps = max(e["fps"] for e in encoders)
        direct = best["pyav_direct"]["fps"]
        print(
            json.dumps(
                {
                    "bench": "video",
                    "source": f"1920x1080 h264 {args.frames} frames",
                    "target": "1280x720 h264 mp4",
                    "encoders": encoders,
                    "baseline_fps": baseline,
                    "best_fps": best_fps,
                    "ratio_best_vs_cpu": round(best_fps / baseline, 3),
                    "chosen_encoder": report.encoder,
                    "reasons": report.reasons,
                    "pyav_direct_fps": direct,
                    "tgkit_overhead_pct": round(100 * (direct - baseline) / direct, 1),
                    "cores": os.cpu_count(),
                    "target_baseline_fps": 100,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
