"""The one embedding pipeline: images in, embeddings out (the whole image, and for indexing its regions too).

An `Embedder` is one (encoder version, preprocessing) pair, chosen where the pair is created (the gateway's
`Serving`, a model switch's target, an offline tool), never per call. Both kinds decode each image once and embed
its region views (server/core/regions.py) from that one decode:
- `RemoteDecodeEmbedder` (the gateway's default): the bytes go to Triton's image model, which decodes, crops and
  resizes in its own instances (processes: in parallel, outside the gateway's GIL) and embeds by BLS; for
  indexing it returns the region embeddings beside the whole image's.
- `LocalDecodeEmbedder`: decoded here, in threads (PIL releases the GIL), and the pixels go to a `PixelEncoder`:
  Triton's encoder model (`decode_in_gateway`) or the in-process ONNX Runtime encoder (evaluation, benchmarks,
  the batch job: server/embedding/onnx_encoder.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from server.core.config import Settings
from server.core.errors import InvalidInput
from server.embedding.contract import EMBED_CHUNK
from server.embedding.encoder import EncoderClient
from server.embedding.imaging import CropBox, Limits, check_size, prepare_views, region_views
from server.embedding.signature import pixel_signatures


@dataclass(frozen=True)
class ImageInput:
    data: bytes
    crop: CropBox | None = None
    field: str = "image_bytes"  # named in the error if the image is rejected


@dataclass(frozen=True)
class Embedded:
    vector: np.ndarray  # float32 [dim], unit norm: the image (or its crop)
    regions: np.ndarray | None = None  # float32 [R, dim]: its region views, when asked for
    signature: np.ndarray | None = None  # int8 [SIGNATURE_BYTES]: the image's (or crop's) pixel signature


Outcome = Embedded | InvalidInput  # per image: its embeddings, or why it was rejected


class PixelEncoder(Protocol):
    """uint8 [N, 224, 224, 3] in, float32 [N, dim] unit vectors out: Triton's encoder model or ONNX Runtime.
    A version whose graph `pools_regions` also gives each image's region embeddings from the same pass."""

    @property
    def model_version(self) -> str: ...

    async def embed(self, pixels: np.ndarray, timeout_s: float | None = None) -> np.ndarray: ...

    async def pools_regions(self) -> bool: ...

    async def embed_with_regions(self, pixels: np.ndarray, timeout_s: float | None = None
                                 ) -> tuple[np.ndarray, np.ndarray]: ...


class Embedder:
    """Chunking, progress and the query shortcut; subclasses embed one chunk with their `backend` (the Triton
    client or a pixel encoder), which answers readiness, served versions and close where it can."""

    def __init__(self, backend: object, limits: Limits) -> None:
        self.backend, self.limits = backend, limits

    async def embed(self, items: Sequence[ImageInput], regions: bool = False, timeout_s: float | None = None,
                    progress: Callable[[int], None] | None = None) -> list[Outcome]:
        """Per item its embeddings (with its region views if `regions`) or why it was rejected; encoder failures
        raise (they concern every item). One encoder call per chunk of EMBED_CHUNK images."""
        out: list[Outcome] = []
        for start in range(0, len(items), EMBED_CHUNK):
            part = items[start:start + EMBED_CHUNK]
            out += await self._embed_chunk(part, regions, timeout_s)
            if progress is not None:
                progress(len(part))
        return out

    async def embed_query(self, data: bytes, crop: CropBox | None = None, timeout_s: float | None = None
                          ) -> Embedded:
        """One query image (a query is embedded once: no regions) with its pixel signature."""
        outcome = (await self._embed_chunk([ImageInput(data, crop)], False, timeout_s))[0]
        if isinstance(outcome, InvalidInput):
            raise outcome
        return outcome

    async def _embed_chunk(self, items: Sequence[ImageInput], regions: bool, timeout_s: float | None
                           ) -> list[Outcome]:
        raise NotImplementedError

    @property
    def model_version(self) -> str:
        """`encoder/N`: the tag stored with every embedding this embedder produces."""
        return self.backend.model_version  # type: ignore[attr-defined]

    @property
    def version(self) -> str:
        """The encoder version number (`2` of `encoder/2`)."""
        return self.model_version.rsplit("/", 1)[-1]

    async def served_versions(self) -> list[str]:
        """Versions the encoder behind this embedder can serve (Triton: every loaded one; in-process: its own)."""
        served = getattr(self.backend, "served_versions", None)
        return [self.version] if served is None else await served()

    async def is_ready(self) -> bool:
        ready = getattr(self.backend, "is_ready", None)
        return True if ready is None else await ready()

    async def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            await close()


def _raise_unexpected(outcomes: Sequence[object]) -> None:
    """A rejected image stays a per-item outcome; anything else concerns the whole chunk."""
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, InvalidInput):
            raise outcome


class RemoteDecodeEmbedder(Embedder):
    """Bytes to Triton's image model: concurrent single-image calls, which Triton's dynamic batcher merges."""

    backend: EncoderClient

    async def _embed_chunk(self, items: Sequence[ImageInput], regions: bool, timeout_s: float | None
                           ) -> list[Outcome]:
        async def one(item: ImageInput) -> Embedded:
            check_size(item.data, self.limits, item.field)
            vector, region_vectors, signature = await self.backend.embed_image(item.data, item.crop, timeout_s,
                                                                               regions)
            return Embedded(vector, region_vectors, signature)

        outcomes = await asyncio.gather(*(one(i) for i in items), return_exceptions=True)
        _raise_unexpected(outcomes)
        return list(outcomes)  # type: ignore[arg-type]


class LocalDecodeEmbedder(Embedder):
    """Decoded here, in threads; the pixels of a chunk (with their region views) in one encoder call."""

    backend: PixelEncoder

    async def _embed_chunk(self, items: Sequence[ImageInput], regions: bool, timeout_s: float | None
                           ) -> list[Outcome]:
        pooled = regions and await self.backend.pools_regions()  # else the region views are encoded too
        views = await asyncio.gather(*(asyncio.to_thread(
            prepare_views, i.data, region_views(i.crop) if regions and not pooled else [i.crop], self.limits, i.field)
            for i in items), return_exceptions=True)
        _raise_unexpected(views)
        good = [v for v in views if isinstance(v, np.ndarray)]
        pooled_rows: Iterator[np.ndarray] = iter(())
        if not good:
            vectors: Iterator[np.ndarray] = iter(())
        elif pooled:
            whole, region_rows = await self.backend.embed_with_regions(np.concatenate(good), timeout_s)
            vectors, pooled_rows = iter(whole), iter(region_rows)
        else:
            vectors = iter(await self.backend.embed(np.concatenate(good), timeout_s))
        out: list[Outcome] = []
        for v in views:
            if not isinstance(v, np.ndarray):
                out.append(v)  # type: ignore[arg-type]
            elif pooled:
                out.append(Embedded(next(vectors), next(pooled_rows), pixel_signatures(v[:1])[0]))
            else:
                rows = np.stack([next(vectors) for _ in range(len(v))])
                out.append(Embedded(rows[0], rows[1:] if regions else None, pixel_signatures(v[:1])[0]))
        return out


def triton_embedder(settings: Settings, version: str) -> Embedder:
    """The gateway's embedder for encoder `version`: Triton decodes (default) or, with `decode_in_gateway`, the
    gateway decodes and sends pixels to Triton's encoder model."""
    client = EncoderClient(settings.triton_url or f"127.0.0.1:{settings.triton_grpc_port}", settings.model_name,
                           version, settings.triton_admin_key)
    limits = Limits(settings.max_image_bytes, settings.max_image_pixels)
    return LocalDecodeEmbedder(client, limits) if settings.decode_in_gateway else RemoteDecodeEmbedder(client, limits)
