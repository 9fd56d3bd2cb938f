"""Stages 2 and 3: prepare (the gateway's own decode/EXIF/resize, a CPU task) and embed (an actor pool).

Rows that failed earlier keep their `error` and pass through untouched: every manifest row reaches the writer,
either with an embedding or with the reason it has none.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np

from jobs.embed.adapters import (
    EMBEDDING_DIM,
    INPUT_SIZE,
    EncoderClient,
    InvalidInput,
    Limits,
    OnnxEncoder,
    content_hash,
    pixel_signatures,
    prepare_views,
    region_views,
)

CHUNK = 32  # images per encoder call (the gateway's chunk size)
DEFAULT_LIMITS = Limits()


def prepare_batch(batch: dict[str, np.ndarray], limits: Limits = DEFAULT_LIMITS, regions: bool = False
                  ) -> dict[str, np.ndarray]:
    """Ray Data stage: bytes -> `pixels` uint8 [n, 224, 224, 3] (with `regions`: [n, 1 + R, 224, 224, 3], the whole
    image then each of REGION_BOXES, from one decode, as the gateway indexes) and `content_hash`; drops the bytes."""
    started, cpu_started = time.perf_counter(), time.process_time()
    n = len(batch["image_id"])
    views = region_views(None) if regions else [None]
    pixels = np.zeros((n, len(views), INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    hashes, errors = [], list(batch["error"])
    for i, data in enumerate(batch["data"]):
        hashes.append(content_hash(data) if not errors[i] else "")
        if errors[i]:
            continue
        try:
            pixels[i] = prepare_views(data, views, limits)
        except InvalidInput as exc:  # undecodable, over the byte or pixel limits
            errors[i] = f"prepare: {exc}"
    del batch["data"]
    # The whole image's pixel signature (copy verification); rows that failed keep zeros and are never stored.
    batch.update(pixels=pixels if regions else pixels[:, 0], signature=pixel_signatures(pixels[:, 0]),
                 prepare_node=np.array([_node_ip()] * n, dtype=object),
                 content_hash=np.array(hashes, dtype=object), error=np.array(errors, dtype=object),
                 prepare_s=np.full(n, (time.perf_counter() - started) / max(1, n)),
                 prepare_cpu_s=np.full(n, (time.process_time() - cpu_started) / max(1, n)))
    return batch


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


class _Embedder:
    """Base of the embedding actors: runs `_embed` on the rows without an error, records who did it and how long."""

    def __init__(self) -> None:
        self.name = f"{_node_ip()}:{os.getpid()}"

    def _embed(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started, cpu_started = time.perf_counter(), time.process_time()
        n = len(batch["image_id"])
        errors = list(batch["error"])
        ok = np.array([not e for e in errors], dtype=bool)
        views = batch["pixels"].shape[1] if batch["pixels"].ndim == 5 else 1  # whole image (+ its regions)
        vectors = np.zeros((n, views, EMBEDDING_DIM), np.float32)
        if ok.any():
            pixels = batch["pixels"][ok].reshape(-1, INPUT_SIZE, INPUT_SIZE, 3)
            try:
                vectors[ok] = np.concatenate([self._embed(pixels[i : i + CHUNK])
                                              for i in range(0, len(pixels), CHUNK)]).reshape(-1, views, EMBEDDING_DIM)
            except InvalidInput as exc:  # the encoder refused the input: a per-batch failure, reported per row
                errors = [e or f"embed: {exc}" for e in errors]
        del batch["pixels"]
        if views > 1:
            batch["regions"] = vectors[:, 1:]
        batch.update(embedding=vectors[:, 0], error=np.array(errors, dtype=object),
                     embed_actor=np.array([self.name] * n, dtype=object),
                     embed_s=np.full(n, (time.perf_counter() - started) / max(1, n)),
                     embed_cpu_s=np.full(n, (time.process_time() - cpu_started) / max(1, n)))
        return batch


class OrtEmbedder(_Embedder):
    """The project's in-process encoder (server.embedding.onnx_encoder) on `model_repository/encoder/<version>/
    model.onnx` (the default), one per actor. Threads = the CPUs the actor reserved (a pool must not oversubscribe
    the node's cores); CUDA when the actor holds a GPU and onnxruntime-gpu is installed."""

    def __init__(self, model_path: str, threads: int, use_gpu: bool) -> None:
        super().__init__()
        self.encoder = OnnxEncoder(Path(model_path), threads=threads, gpu=use_gpu)

    def _embed(self, pixels: np.ndarray) -> np.ndarray:
        return self.encoder.run(pixels, batch=len(pixels))


class TritonEmbedder(_Embedder):
    """The gateway's own async Triton client, pinned to the job's model version, on an event loop of its own."""

    def __init__(self, url: str, version: str, key: str | None = None) -> None:
        """`key`: the Triton launcher's key (Triton restricts inference to its holders)."""
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = self.loop.run_until_complete(self._connect(url, version, key))  # the channel binds here

    @staticmethod
    async def _connect(url: str, version: str, key: str | None) -> EncoderClient:
        return EncoderClient(url, version=version, key=key)

    def _embed(self, pixels: np.ndarray) -> np.ndarray:
        return self.loop.run_until_complete(self.client.embed(pixels, timeout_s=120))
