"""Small JPEGs of indexed images for pages that show results, under Search's rule: only an indexed, public, not
deleted image has one; for anything else the answer is NOT_FOUND, whether the image exists or not.

Who may see an image is read from the store on every call; only the resized bytes are cached (by content hash
and size, bounded in bytes), so a hide or a delete holds from the moment it is acknowledged.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass

from cachetools import LRUCache
from PIL import Image

from server.core.errors import InvalidInput
from server.core.ids import check_image_id
from server.embedding import imaging
from server.query.search import visible
from server.runtime.admission import Admission
from server.runtime.callers import ANONYMOUS, Principal
from server.runtime.serving import Live
from server.store.blobs import BlobStore

DEFAULT_SIDE, MIN_SIDE, MAX_SIDE = 256, 16, 512
CACHE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Thumbnail:
    jpeg: bytes
    width: int
    height: int


def render(data: bytes, max_side: int, limits: imaging.Limits) -> Thumbnail:
    """Decode (JPEGs at a reduced DCT scale), orient, shrink to `max_side`, encode as JPEG."""
    image = imaging.decode_image(data, limits, field="image_id", needed=max_side)
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=82, optimize=True)
    return Thumbnail(out.getvalue(), image.width, image.height)


class Thumbnails:
    def __init__(self, live: Live, blobs: BlobStore, limits: imaging.Limits, admission: Admission,
                 cache_bytes: int = CACHE_BYTES) -> None:
        self.live, self.blobs, self.limits, self.admission = live, blobs, limits, admission
        # Read and filled on the event loop only (never from the worker threads): no lock.
        self.cache: LRUCache[tuple[str, int], Thumbnail] = LRUCache(cache_bytes, getsizeof=lambda t: len(t.jpeg))

    async def get(self, image_id: str, max_side: int = 0, timeout_s: float | None = None,
                  caller: Principal = ANONYMOUS) -> Thumbnail:
        check_image_id(image_id)
        side = max_side or DEFAULT_SIDE
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise InvalidInput(f"must be {MIN_SIDE}..{MAX_SIDE} pixels (0 means {DEFAULT_SIDE}), got {max_side}",
                               field="max_side")
        # A server store answers over the network.
        record = await asyncio.to_thread(visible, self.live.serving.store, image_id)
        key = (record.content_hash, side)
        if (cached := self.cache.get(key)) is not None:
            return cached
        data = await asyncio.to_thread(self.blobs.get, record.content_hash)
        # Decoding the original is admitted like a Search of that image (the same stage: they share the CPU).
        async with self.admission.admit(imaging.decode_cost(data) or 0, timeout_s, caller=caller):
            thumbnail = await asyncio.to_thread(render, data, side, self.limits)
        self.cache[key] = thumbnail
        return thumbnail
