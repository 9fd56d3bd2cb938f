"""Copy edits: what people do to a picture they re-post, as image operations. The one set of them, used by the
held-out evaluation (fixed edits, `EDITS`), the built-in copy-detection set (evaluation/dataset.py) and the
training augmentations (training/augment.py, random parameters). Every random choice comes from the
`numpy.random.Generator` passed in, so a seed fixes the exact pixels.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

CAPTION_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")  # fonts-dejavu-core
OVERLAY_WORDS = ("lol", "so cute", "#repost", "SALE", "look", "wow", "2024", "my pic", "@user", "FREE", "omg")


def encode(image: Image.Image, fmt: str = "PNG", quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def crop_area(image: Image.Image, share: float, rng: np.random.Generator) -> Image.Image:
    """A crop keeping `share` of the area (same aspect ratio), at a random position."""
    w, h = image.size
    side = share ** 0.5
    cw, ch = max(1, round(w * side)), max(1, round(h * side))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((x, y, x + cw, y + ch))


def rotate(image: Image.Image, degrees: float, fill: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    return image.rotate(degrees, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=fill)


def caption_band(image: Image.Image, rng: np.random.Generator, text: str = "so cute!! #repost") -> Image.Image:
    """A black band with white text below the picture (the picture keeps its pixels; the canvas grows 20%)."""
    w, h = image.size
    band = max(12, h // 5)
    out = Image.new("RGB", (w, h + band), (0, 0, 0))
    below = bool(rng.random() < 0.5)
    out.paste(image, (0, 0) if below else (0, band))
    top = h if below else 0
    font = ImageFont.truetype(str(CAPTION_FONT), max(8, band // 2))
    ImageDraw.Draw(out).text((w // 20, top + band // 4), text, font=font, fill=(255, 255, 255))
    return out


def overlay_text(image: Image.Image, rng: np.random.Generator, text: str = "SAMPLE") -> Image.Image:
    """Large semi-transparent text across the middle, as watermarks and memes add."""
    w, h = image.size
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    font = ImageFont.truetype(str(CAPTION_FONT), max(10, w // 6))
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    ImageDraw.Draw(layer).text((w // 2, int(h * rng.uniform(0.3, 0.7))), text, font=font,
                               fill=(*colour, 190), anchor="mm")
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


def downscale(image: Image.Image, share: float) -> Image.Image:
    w, h = image.size
    return image.resize((max(8, round(w * share)), max(8, round(h * share))), Image.Resampling.BILINEAR)


def crop_sides(image: Image.Image, fraction: float, rng: np.random.Generator) -> Image.Image:
    """A crop keeping `fraction` of each side, at a random position."""
    w, h = image.size
    cw, ch = int(w * fraction), int(h * fraction)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((x, y, x + cw, y + ch))


def banner_and_box(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A caption bar and a coloured box, as reposts add."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    w, h = image.size
    draw.rectangle((0, int(h * 0.85), w, h), fill=(0, 0, 0))
    draw.text((int(w * 0.05), int(h * 0.88)), "visual search eval " * 3, fill=(255, 255, 255))
    x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    draw.rectangle((x, y, x + w // 8, y + h // 8), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def jpeg_reencode(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def random_overlay(image: Image.Image, rng: np.random.Generator, size: tuple[float, float] = (0.06, 0.16)
                   ) -> Image.Image:
    """A caption band (black or white, top or bottom) with text, or large semi-transparent text across it;
    the text is `size` (a range) of the image height tall."""
    image = image.copy()
    w, h = image.size
    font = ImageFont.truetype(str(CAPTION_FONT), max(8, int(h * rng.uniform(*size))))
    words = " ".join(rng.choice(OVERLAY_WORDS, size=int(rng.integers(1, 4))))
    if rng.random() < 0.5:
        band = int(h * rng.uniform(0.1, 0.22))
        top = 0 if rng.random() < 0.5 else h - band
        dark = rng.random() < 0.6
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, top, w, top + band), fill=(0, 0, 0) if dark else (255, 255, 255))
        draw.text((int(w * 0.04), top + band // 2), words, font=font, anchor="lm",
                  fill=(255, 255, 255) if dark else (0, 0, 0))
        return image
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    ImageDraw.Draw(layer).text((int(w * rng.uniform(0.2, 0.8)), int(h * rng.uniform(0.2, 0.8))), words.upper(),
                               font=font, anchor="mm", fill=(*colour, int(rng.integers(120, 256))))
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


Edit = Callable[[Image.Image, np.random.Generator], bytes]
# name -> edit (image in, encoded copy out). "centre-crop-box" is applied as a query crop box instead (below).
EDITS: dict[str, Edit] = {
    "crop-50": lambda im, rng: encode(crop_area(im, 0.5, rng)),
    "crop-80": lambda im, rng: encode(crop_area(im, 0.8, rng)),
    "rotate+8": lambda im, rng: encode(rotate(im, 8)),
    "rotate-8": lambda im, rng: encode(rotate(im, -8)),
    "grayscale": lambda im, rng: encode(ImageOps.grayscale(im)),
    "jpeg-q20": lambda im, rng: encode(im, "JPEG", quality=20),
    "downscale-40": lambda im, rng: encode(downscale(im, 0.4)),
    "caption-band": lambda im, rng: encode(caption_band(im, rng)),
    "overlay-text": lambda im, rng: encode(overlay_text(im, rng)),
    "flip": lambda im, rng: encode(ImageOps.mirror(im)),
}
CENTRE_CROP_BOX = (0.25, 0.25, 0.75, 0.75)  # the query path's crop box: centre 50% x 50% of an indexed image
