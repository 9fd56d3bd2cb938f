"""The in-process encoder: a version's model.onnx (the graph Triton serves) in ONNX Runtime, in this process.

The one in-process implementation, shared by Triton's CPU encoder model (model_repository/encoder/N/model.py), the
batch job's actors, the offline evaluation, the benchmarks and the ONNX export's check: uint8 pixels in, unit
embeddings out, exactly as Triton computes them. Used asynchronously it is a `PixelEncoder` (embedder.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np

from server.core.config import MODEL_REPOSITORY
from server.embedding.contract import INPUT_NAME, MODEL_NAME, OUTPUT_NAME

BATCH = 32


def model_path(version: str | int, repository: Path = MODEL_REPOSITORY, model_name: str = MODEL_NAME) -> Path:
    return repository / model_name / str(version) / "model.onnx"


class OnnxEncoder:
    """`threads`: ONNX Runtime's intra-op threads (0: all cores). Worker threads never spin-wait after a run: on a
    host shared with a gateway or other actors the spinning steals the cores the others need (measured:
    benchmarks/results/e2e.md). `gpu`: CUDA when onnxruntime-gpu is installed and a device is there."""

    def __init__(self, path: Path, threads: int = 0, gpu: bool = False, spin: bool = False,
                 model_version: str | None = None) -> None:
        import onnxruntime as ort

        if not path.exists():
            raise FileNotFoundError(f"no encoder at {path} (make setup exports version 1)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        providers = ["CPUExecutionProvider"]
        if gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.path = path
        self.model_version = model_version or f"{MODEL_NAME}/{path.parent.name}"

    @classmethod
    def of_version(cls, version: str | int, repository: Path = MODEL_REPOSITORY, threads: int = 0) -> OnnxEncoder:
        return cls(model_path(version, repository), threads)

    def run(self, pixels: np.ndarray, batch: int = BATCH, progress: Callable[[int], None] | None = None
            ) -> np.ndarray:
        """uint8 [N, 224, 224, 3] -> float32 [N, dim], `batch` images per run."""
        parts = []
        for start in range(0, len(pixels), batch):
            chunk = np.ascontiguousarray(pixels[start:start + batch])
            parts.append(self.session.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0])
            if progress is not None:
                progress(len(chunk))
        return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)

    async def embed(self, pixels: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        """The `PixelEncoder` call: off the event loop (ONNX Runtime releases the GIL)."""
        return await asyncio.to_thread(self.run, pixels)
