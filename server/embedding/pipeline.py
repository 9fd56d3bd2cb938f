"""The one embedding pipeline: images in, embeddings (or the reason an image was rejected) out, in chunks.

By default the bytes go to Triton's image model, which decodes, crops and resizes in parallel instances outside
the gateway (`EncoderClient.embed_image`); with `local_decode` they are prepared here in threads and the pixels
are sent (`prepare_many` + `embed_pixels`). AddImages (server/ingest/add.py), the model switch
(server/ingest/reindex.py), the offline evaluation and the benchmarks all embed through here; the Ray batch job
runs the same `imaging.prepare` per image in its stage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from server.core.errors import InvalidInput
from server.core.regions import REGION_BOXES
from server.embedding.contract import EMBED_CHUNK
from server.embedding.imaging import CropBox, Limits, check_size, prepare, prepare_views

REGION_CROPS: tuple[CropBox, ...] = tuple(CropBox(*box) for box in REGION_BOXES)  # as query crop boxes


class Embedder(Protocol):
    """Pixels or image bytes in, unit embeddings out: the Triton client (`EncoderClient`)."""

    @property
    def model_version(self) -> str: ...

    async def embed(self, pixels: np.ndarray, timeout_s: float | None = None) -> np.ndarray: ...

    async def embed_image(self, data: bytes, crop: CropBox | None = None, timeout_s: float | None = None
                          ) -> np.ndarray: ...


@dataclass(frozen=True)
class ImageInput:
    data: bytes
    crop: CropBox | None = None
    field: str = "image_bytes"  # named in the error if the image is rejected


async def prepare_many(items: Sequence[ImageInput], limits: Limits) -> list[np.ndarray | InvalidInput]:
    """uint8 [224, 224, 3] per item, or the reason it was rejected. Decoding runs in threads (PIL releases the
    GIL): decoding one image after another left a core idle while indexing."""
    outcomes = await asyncio.gather(*(asyncio.to_thread(prepare, i.data, i.crop, limits, i.field) for i in items),
                                    return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, InvalidInput):
            raise outcome
    return list(outcomes)  # type: ignore[arg-type]


async def embed_pixels(encoder: Embedder, pixels: Sequence[np.ndarray], timeout_s: float | None = None,
                       chunk: int = EMBED_CHUNK) -> np.ndarray:
    """float32 [len(pixels), dim], one encoder call per chunk."""
    parts = [await encoder.embed(np.stack(pixels[start:start + chunk]), timeout_s)
             for start in range(0, len(pixels), chunk)]
    return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)


async def embed_images(encoder: Embedder, items: Sequence[ImageInput], limits: Limits,
                       timeout_s: float | None = None, chunk: int = EMBED_CHUNK,
                       progress: Callable[[int], None] | None = None, local_decode: bool = False
                       ) -> list[np.ndarray | InvalidInput]:
    """Per item its embedding or why the image was rejected; encoder failures raise (they concern every item)."""
    out: list[np.ndarray | InvalidInput] = []
    for start in range(0, len(items), chunk):
        part = items[start:start + chunk]
        out += await (_embed_locally(encoder, part, limits, timeout_s) if local_decode
                      else _embed_remotely(encoder, part, limits, timeout_s))
        if progress is not None:
            progress(len(part))
    return out


async def _embed_locally(encoder: Embedder, items: Sequence[ImageInput], limits: Limits, timeout_s: float | None
                         ) -> list[np.ndarray | InvalidInput]:
    prepared = await prepare_many(items, limits)
    good = [p for p in prepared if isinstance(p, np.ndarray)]
    vectors = iter(await encoder.embed(np.stack(good), timeout_s) if good else [])
    return [next(vectors) if isinstance(p, np.ndarray) else p for p in prepared]


async def _embed_remotely(encoder: Embedder, items: Sequence[ImageInput], limits: Limits, timeout_s: float | None
                          ) -> list[np.ndarray | InvalidInput]:
    """Concurrent single-image calls: Triton's dynamic batcher merges them; decoding runs in its instances."""
    async def one(item: ImageInput) -> np.ndarray:
        check_size(item.data, limits, item.field)
        return await encoder.embed_image(item.data, item.crop, timeout_s)

    outcomes = await asyncio.gather(*(one(i) for i in items), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, InvalidInput):
            raise outcome
    return list(outcomes)  # type: ignore[arg-type]


def whole_and_regions(embedded: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """An indexing embedding split for `NewImage`: [dim] -> (it, None); [1 + R, dim] -> (row 0, its regions)."""
    return (embedded, None) if embedded.ndim == 1 else (embedded[0], embedded[1:])


def within(crop: CropBox | None, box: tuple[float, float, float, float]) -> CropBox:
    """`box` (normalized to the crop) as a box of the whole image."""
    x0, y0, x1, y1 = crop.as_tuple() if crop is not None else (0.0, 0.0, 1.0, 1.0)
    w, h = x1 - x0, y1 - y0
    return CropBox(x0 + box[0] * w, y0 + box[1] * h, x0 + box[2] * w, y0 + box[3] * h)


async def embed_with_regions(encoder: Embedder, items: Sequence[ImageInput], limits: Limits,
                             timeout_s: float | None = None, chunk: int = EMBED_CHUNK,
                             progress: Callable[[int], None] | None = None,
                             boxes: Sequence[tuple[float, float, float, float]] = REGION_BOXES
                             ) -> list[np.ndarray | InvalidInput]:
    """Per item float32 [1 + len(boxes), dim] (row 0: the whole image, then one row per region box), or why the
    image was rejected. Decoded once per image here, in threads (sending each region to Triton's image model
    decoded the image 7 times: indexing the demo corpus took 98 s instead of ~20 s), then 1 + len(boxes) encoder
    inputs per image. Indexing only: a query is embedded once."""
    per_item = 1 + len(boxes)
    out: list[np.ndarray | InvalidInput] = []
    for start in range(0, len(items), chunk):
        part = items[start:start + chunk]
        views = await asyncio.gather(*(asyncio.to_thread(
            prepare_views, i.data, [i.crop, *(within(i.crop, b) for b in boxes)], limits, i.field) for i in part),
            return_exceptions=True)
        for outcome in views:
            if isinstance(outcome, BaseException) and not isinstance(outcome, InvalidInput):
                raise outcome
        good = [v for v in views if isinstance(v, np.ndarray)]
        vectors = await encoder.embed(np.concatenate(good), timeout_s) if good else None
        n = 0
        for v in views:
            if isinstance(v, np.ndarray):
                assert vectors is not None
                out.append(vectors[n * per_item:(n + 1) * per_item])
                n += 1
            else:
                out.append(v)  # type: ignore[arg-type]
        if progress is not None:
            progress(len(part))
    return out
