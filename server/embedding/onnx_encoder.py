"""The in-process encoder: a version's model.onnx (the graph Triton serves) in ONNX Runtime, in this process.

The one in-process implementation, shared by Triton's CPU encoder model (model_repository/encoder/N/model.py), the
batch job's actors, the offline evaluation, the benchmarks and the ONNX export's check: uint8 pixels in, unit
embeddings out, exactly as Triton computes them. Used asynchronously it is a `PixelEncoder` (embedder.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from server.core.config import MODEL_REPOSITORY
from server.embedding.contract import INPUT_NAME, MODEL_NAME, NO_POOLED_REGIONS, OUTPUT_NAME, REGIONS_OUTPUT_NAME

if TYPE_CHECKING:
    import onnx

BATCH = 32


def model_path(version: str | int, repository: Path = MODEL_REPOSITORY, model_name: str = MODEL_NAME) -> Path:
    return repository / model_name / str(version) / "model.onnx"


def feature_map_name(model: onnx.ModelProto) -> str:
    """The tensor the embedding averages: the input of the graph's one global average pool (ReduceMean over H, W)."""
    from onnx import helper

    pooled = [n.input[0] for n in model.graph.node if n.op_type == "ReduceMean" and
              list(helper.get_attribute_value(next(a for a in n.attribute if a.name == "axes"))) == [2, 3]]
    if len(pooled) != 1:
        raise ValueError(f"expected one global average pool over the feature map, found {len(pooled)}")
    return pooled[0]


def with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """A copy of `model` that also outputs its intermediate tensor `name` (float32, any shape)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy


def graph_has_pooled_regions(path: Path) -> bool:
    """Whether the graph at `path` outputs REGIONS_OUTPUT_NAME (see `OnnxEncoder.pooled_regions`), read without
    starting a session (Triton's image model asks this once per encoder version)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return REGIONS_OUTPUT_NAME in {output.name for output in graph.output}


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

    @property
    def pooled_regions(self) -> bool:
        """The graph also outputs the region embeddings, pooled from the whole image's own forward pass
        (training/export_onnx.py: add_region_output), so regions cost no encoder pass of their own."""
        return REGIONS_OUTPUT_NAME in {output.name for output in self.session.get_outputs()}

    def run(self, pixels: np.ndarray, batch: int = BATCH, progress: Callable[[int], None] | None = None
            ) -> np.ndarray:
        """uint8 [N, 224, 224, 3] -> float32 [N, dim], `batch` images per run."""
        return self._run([OUTPUT_NAME], pixels, batch, progress)[0]

    def run_with_regions(self, pixels: np.ndarray, batch: int = BATCH,
                         progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, 224, 224, 3] -> (float32 [N, dim], float32 [N, R, dim]): a `pooled_regions` graph only."""
        if not self.pooled_regions:
            raise ValueError(f"{self.model_version} {NO_POOLED_REGIONS}: embed its region views instead")
        whole, regions = self._run([OUTPUT_NAME, REGIONS_OUTPUT_NAME], pixels, batch, progress)
        return whole, regions

    def _run(self, names: list[str], pixels: np.ndarray, batch: int, progress: Callable[[int], None] | None
             ) -> list[np.ndarray]:
        parts: list[list[np.ndarray]] = [[] for _ in names]
        for start in range(0, len(pixels), batch):
            chunk = np.ascontiguousarray(pixels[start:start + batch])
            for part, got in zip(parts, self.session.run(names, {INPUT_NAME: chunk}), strict=True):
                part.append(got)
            if progress is not None:
                progress(len(chunk))
        return [np.concatenate(part) if part else np.empty((0, 0), np.float32) for part in parts]

    async def embed(self, pixels: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        """The `PixelEncoder` call: off the event loop (ONNX Runtime releases the GIL)."""
        return await asyncio.to_thread(self.run, pixels)

    async def pools_regions(self) -> bool:
        return self.pooled_regions

    async def embed_with_regions(self, pixels: np.ndarray, timeout_s: float | None = None
                                 ) -> tuple[np.ndarray, np.ndarray]:
        return await asyncio.to_thread(self.run_with_regions, pixels)
