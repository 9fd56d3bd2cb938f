"""Gallery PNG of one query: the query (crop box drawn), then the top-k thumbnails with IDs and scores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

THUMB = 200
PAD = 12
CAPTION = 34
COLUMNS = 5
FONT_PATH = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if FONT_PATH.exists():
        return ImageFont.truetype(str(FONT_PATH), size)
    return ImageFont.load_default(size)


def _thumb(image: Image.Image) -> Image.Image:
    return ImageOps.pad(image.convert("RGB"), (THUMB, THUMB), color=(235, 235, 235))


def render(query: Image.Image, crop: tuple[float, float, float, float] | None, title: str,
           hits: list[tuple[str, float]], load: Callable[[str], Image.Image | None], output: Path) -> Path:
    """`load(image_id)` returns the indexed image (or None when it can't be shown)."""
    small, bold = _font(13), _font(16)
    rows = max(1, -(-len(hits) // COLUMNS))
    query_w = 2 * THUMB
    width = PAD + query_w + PAD + COLUMNS * (THUMB + PAD)
    height = max(PAD + 24 + query_w + PAD, PAD + 24 + rows * (THUMB + CAPTION + PAD))
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, PAD), title, fill="black", font=bold)

    q = query.convert("RGB")
    q.thumbnail((query_w, query_w))
    qx, qy = PAD + (query_w - q.width) // 2, PAD + 24 + (query_w - q.height) // 2
    canvas.paste(q, (qx, qy))
    if crop:
        x0, y0, x1, y1 = crop
        draw.rectangle([qx + x0 * q.width, qy + y0 * q.height, qx + x1 * q.width, qy + y1 * q.height],
                       outline=(255, 40, 40), width=4)

    left = PAD + query_w + PAD
    for n, (image_id, score) in enumerate(hits):
        x = left + (n % COLUMNS) * (THUMB + PAD)
        y = PAD + 24 + (n // COLUMNS) * (THUMB + CAPTION + PAD)
        image = load(image_id)
        if image is not None:
            canvas.paste(_thumb(image), (x, y))
        label = image_id if len(image_id) <= 28 else "…" + image_id[-27:]
        draw.text((x, y + THUMB + 2), f"#{n + 1}  score {score:.3f}", fill="black", font=small)
        draw.text((x, y + THUMB + 17), label, fill=(60, 60, 60), font=small)
    output.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(output)
    return output
