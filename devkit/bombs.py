"""Inputs that attack the service: images that cost far more to decode than their bytes or pixels suggest (issue
25). Built on demand by the tests and the overload benchmark; small ones are kept as fuzz regressions."""

from __future__ import annotations

import io
import struct

from PIL import Image


def _segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each JPEG segment; a scan's segment includes its entropy-coded data."""
    out, i = [], 2
    while i < len(data):
        marker = data[i + 1]
        if marker == 0xD9:  # end of image
            out.append((marker, i, i + 2))
            break
        end = i + 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker == 0xDA:  # start of scan: the data runs to the next marker that is not a stuffed 0 or a restart
            end = data.index(b"\xff", end)
            while data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                end = data.index(b"\xff", end + 2)
        out.append((marker, i, end))
        i = end
    return out


def progressive_scan_bomb(side: int = 4000, extra_scans: int = 20_000) -> bytes:
    """A one-colour progressive JPEG followed by `extra_scans` copies of its smallest scan: a few hundred KB whose
    decode repeats a pass over the whole image per scan (the attack of issue 25)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (120, 40, 200)).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    segments = _segments(data)
    scans = [(start, end) for marker, start, end in segments if marker == 0xDA]
    start, end = min(scans, key=lambda s: s[1] - s[0])
    eoi = segments[-1][1]
    return data[:eoi] + data[start:end] * extra_scans + data[eoi:]


def many_frame_gif(frames: int = 2_000, side: int = 64) -> bytes:
    """A GIF of many frames: only the first is decoded, so its cost is one frame's."""
    images = [Image.new("P", (side, side), i % 256) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], duration=10)
    return buffer.getvalue()


def many_frame_webp(frames: int = 500, side: int = 64) -> bytes:
    images = [Image.new("RGB", (side, side), (i % 256, 0, 0)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, "WEBP", save_all=True, append_images=images[1:], duration=10, lossless=True)
    return buffer.getvalue()
