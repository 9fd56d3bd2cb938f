"""Real photos for tests (from packages, see devkit/corpus.py) and helpers to make query variants."""

from __future__ import annotations

import io

from PIL import Image

from devkit.corpus import CorpusImage, real_photos


def photo(image_id: str) -> CorpusImage:
    return next(p for p in real_photos() if p.image_id == image_id)


def jpeg(image: Image.Image, quality: int = 90, max_side: int | None = None) -> bytes:
    image = image.convert("RGB")
    if max_side:
        image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def open_photo(image_id: str) -> Image.Image:
    return Image.open(photo(image_id).path).convert("RGB")


def small_jpeg(image_id: str, max_side: int = 320, quality: int = 90) -> bytes:
    """A downscaled copy: keeps tests fast (the gateway decodes fewer pixels)."""
    return jpeg(open_photo(image_id), quality, max_side)
