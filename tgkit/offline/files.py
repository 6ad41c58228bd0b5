"""Real media bytes for the offline world: JPEG photo sizes, stripped thumbnails, MP4 clips, stickers.

Everything is deterministic per seed.  PyAV (heavy) is imported only when a pool is first needed; the
stripped thumbnails Telegram inlines in users, chats and photos are encoded here in pure Python (a
baseline JPEG whose blocks carry only their DC coefficient: exactly the blur a stripped size shows),
so building a world never imports PyAV.
"""

from __future__ import annotations

import gzip
import io
import json

__all__ = [
    "AVATAR_SIZES",
    "PHOTO_SIZES",
    "VIDEO_SHAPES",
    "encode_jpeg",
    "encode_mp4",
    "encode_webm",
    "lottie_tgs",
    "stripped_thumb",
]

# (type, width, height) of the sizes Telegram makes for a 480x360 upload (boxes s=100, m=320, x=800).
PHOTO_SIZES = (("s", 100, 75), ("m", 320, 240), ("x", 480, 360))
# Profile photos: "a" 160x160 (small), "c" 640x640 (big).
AVATAR_SIZES = (("a", 160), ("c", 640))
VIDEO_SHAPES = ((160, 120, 1.0), (128, 96, 0.5), (96, 160, 1.0), (160, 120, 0.4))


# ------------------------------------------------------------------------------------------------
# stripped thumbnails (Telegram's "i" size): a JPEG scan without header, decoded with the fixed
# header in telethon.utils.stripped_photo_to_jpg (quantisation 40/43 at DC, standard Huffman
# tables, 4:2:0 sampling).  Byte 0 is 1, byte 1 the height, byte 2 the width.

_DC_LUMA = ("00", "010", "011", "100", "101", "110", "1110", "11110", "111110", "1111110")
_DC_CHROMA = ("00", "01", "10", "110", "1110", "11110", "111110", "1111110", "11111110", "111111110")
_EOB_LUMA = "1010"
_EOB_CHROMA = "00"


def _dc_bits(diff: int, table: tuple[str, ...]) -> str:
    cat = abs(diff).bit_length()
    if cat == 0:
        return table[0]
    extra = diff if diff > 0 else diff + (1 << cat) - 1
    return table[cat] + format(extra, f"0{cat}b")


def stripped_thumb(colours: list[tuple[int, int, int]], w: int = 40, h: int = 30) -> bytes:
    """A stripped thumbnail of a ``w``x``h`` image: a vertical blend of ``colours`` (RGB), block by block."""
    if not (0 < w < 256 and 0 < h < 256):
        raise ValueError("stripped thumbnails are smaller than 256x256")
    mcus_x, mcus_y = -(-w // 16), -(-h // 16)

    def rgb_at(y: int) -> tuple[float, float, float]:
        pos = min(max(y / max(h - 1, 1), 0.0), 1.0) * (len(colours) - 1)
        i = min(int(pos), len(colours) - 2) if len(colours) > 1 else 0
        if len(colours) == 1:
            return colours[0]
        a, b, t = colours[i], colours[i + 1], pos - i
        return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t)

    def ycc(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
        r, g, b = rgb
        y = 0.299 * r + 0.587 * g + 0.114 * b
        return y, 128 - 0.168736 * r - 0.331264 * g + 0.5 * b, 128 + 0.5 * r - 0.418688 * g - 0.081312 * b

    bits: list[str] = []
    pred = [0, 0, 0]
    for my in range(mcus_y):
        for _mx in range(mcus_x):
            for by in (0, 0, 1, 1):  # the four luma blocks of the MCU, row by row
                y = ycc(rgb_at(my * 16 + by * 8 + 4))[0]
                dc = max(-127, min(127, round(8 * (y - 128) / 40)))
                bits.append(_dc_bits(dc - pred[0], _DC_LUMA) + _EOB_LUMA)
                pred[0] = dc
            _, cb, cr = ycc(rgb_at(my * 16 + 8))
            for comp, value in ((1, cb), (2, cr)):
                dc = max(-127, min(127, round(8 * (value - 128) / 43)))
                bits.append(_dc_bits(dc - pred[comp], _DC_CHROMA) + _EOB_CHROMA)
                pred[comp] = dc
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    out = bytearray((1, h, w))
    for i in range(0, len(stream), 8):
        byte = int(stream[i : i + 8], 2)
        out.append(byte)
        if byte == 0xFF:
            out.append(0)  # byte stuffing
    return bytes(out)


# ------------------------------------------------------------------------------------------------
# PyAV-made files (lazy imports)


def _frame_array(seed: int, i: int, w: int, h: int, t: int, scale: float = 1.0):
    import numpy as np

    y, x = np.mgrid[0:h, 0:w]
    x = (x * scale).astype(np.int64)
    y = (y * scale).astype(np.int64)
    r = ((x + t * 4 + seed * 13 + i * 40) % 256).astype(np.uint8)
    g = ((y * 2 + t * 3 + i * 70) % 256).astype(np.uint8)
    b = (((x + y) // 2 + seed * 7) % 256).astype(np.uint8)
    return np.dstack([r, g, b])


def encode_jpeg(seed: int, i: int, w: int = 160, h: int = 120, *, scale: float = 1.0) -> bytes:
    """A real JPEG (the same picture at every size when ``scale`` = 160 / ``w``)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="image2pipe") as out:
        stream = out.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuvj420p"
        frame = av.VideoFrame.from_ndarray(_frame_array(seed, i, w, h, 0, scale), format="rgb24")
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def encode_mp4(seed: int, i: int, w: int, h: int, seconds: float, *, audio: bool) -> bytes:
    import av
    import numpy as np

    fps = 25
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        # one thread: x264's output then does not depend on the machine's core count (same seed, same bytes)
        stream = out.add_stream(
            "libx264", rate=fps, options={"preset": "ultrafast", "crf": "30", "threads": "1"}
        )
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        astream = out.add_stream("aac", rate=16_000) if audio else None
        n = max(int(seconds * fps), 1)
        for t in range(n):
            frame = av.VideoFrame.from_ndarray(_frame_array(seed, i, w, h, t), format="rgb24")
            frame.pts = t
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if astream is not None:
            samples = int(16_000 * seconds)
            tone = (np.sin(np.arange(samples) * 2 * np.pi * 440 / 16_000) * 0.2).astype(np.float32)
            pos = 0
            while pos < samples:
                chunk = tone[pos : pos + 1024]
                af = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="fltp", layout="mono")
                af.sample_rate = 16_000
                af.pts = pos
                for packet in astream.encode(af):
                    out.mux(packet)
                pos += 1024
            for packet in astream.encode():
                out.mux(packet)
    return buf.getvalue()


def encode_webm(seed: int, i: int, *, side: int = 512, frames: int = 8) -> bytes:
    """A video sticker: VP9 in WebM, 512 px, half a second (bit-exact muxing: same seed, same bytes)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="webm", options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream(
            "libvpx-vp9",
            rate=16,
            options={"deadline": "realtime", "cpu-used": "8", "threads": "1", "lag-in-frames": "0"},
        )
        stream.width, stream.height, stream.pix_fmt = side, side, "yuv420p"
        for t in range(frames):
            frame = av.VideoFrame.from_ndarray(_frame_array(seed, i, side, side, t * 2), format="rgb24")
            frame.pts = t
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def lottie_tgs(seed: int, i: int) -> bytes:
    """An animated sticker: a small Lottie animation (a moving circle), gzipped as Telegram's .tgs."""
    colour = [((seed * 37 + i * 71) % 255) / 255, ((seed * 11 + i * 29) % 255) / 255, 0.6, 1]
    anim = {
        "tgs": 1,
        "v": "5.5.2",
        "fr": 60,
        "ip": 0,
        "op": 60,
        "w": 512,
        "h": 512,
        "nm": f"offline sticker {i}",
        "ddd": 0,
        "assets": [],
        "layers": [
            {
                "ddd": 0,
                "ind": 1,
                "ty": 4,
                "nm": "circle",
                "sr": 1,
                "ks": {
                    "o": {"a": 0, "k": 100},
                    "r": {"a": 0, "k": 0},
                    "p": {
                        "a": 1,
                        "k": [
                            {"t": 0, "s": [128 + i * 16, 256, 0], "e": [384, 256, 0]},
                            {"t": 60, "s": [384, 256, 0]},
                        ],
                    },
                    "a": {"a": 0, "k": [0, 0, 0]},
                    "s": {"a": 0, "k": [100, 100, 100]},
                },
                "shapes": [
                    {"ty": "el", "p": {"a": 0, "k": [0, 0]}, "s": {"a": 0, "k": [160, 160]}},
                    {"ty": "fl", "c": {"a": 0, "k": colour}, "o": {"a": 0, "k": 100}},
                ],
                "ip": 0,
                "op": 60,
                "st": 0,
                "bm": 0,
            }
        ],
    }
    raw = json.dumps(anim, separators=(",", ":"), sort_keys=True).encode()
    return gzip.compress(raw, mtime=0)
