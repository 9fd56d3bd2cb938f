"""Triton Python-backend model: runs this version's model.onnx with ONNX Runtime (CPU hosts).

The in-process encoder is the project's one (`server.embedding.onnx_encoder`). GPU hosts serve the TensorRT plan
built from the same ONNX graph instead (configs/gpu.pbtxt).
"""

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from server.embedding.contract import REGIONS_OUTPUT_NAME
from server.embedding.onnx_encoder import OnnxEncoder


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        # Tensor names come from config.pbtxt (the contract; server/embedding/contract.py states the same, and the
        # encoder runs with the contract's names: a test holds the two to each other).
        config = json.loads(args["model_config"])
        self.input_name, self.output_name = config["input"][0]["name"], config["output"][0]["name"]
        # One instance uses all cores: ORT's intra-op parallelism beats two single-threaded instances on a 2-core
        # host (measured in benchmarks/encoder_bench.py). Override with ENCODER_ORT_THREADS. Spinning is off (a
        # host shared with the gateway); ENCODER_ORT_SPIN=1 on a dedicated host.
        self.encoder = OnnxEncoder(path, threads=int(os.environ.get("ENCODER_ORT_THREADS", "0")),
                                   spin=os.environ.get("ENCODER_ORT_SPIN", "0") == "1")

    def execute(self, requests: list) -> list:
        # Dynamic batching hands us several requests: run them as one batch, split the result back.
        batches = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        pixels = np.concatenate(batches)
        # The regions output (a graph that pools them from the same pass) is computed when a request asks for it.
        wants_regions = [REGIONS_OUTPUT_NAME in r.requested_output_names() for r in requests]
        regions = None
        if any(wants_regions) and self.encoder.pooled_regions:
            embeddings, regions = self.encoder.run_with_regions(pixels, batch=len(pixels))
        else:
            embeddings = self.encoder.run(pixels, batch=len(pixels))
        responses, start = [], 0
        for batch, wants in zip(batches, wants_regions, strict=True):
            part = slice(start, start + len(batch))
            start += len(batch)
            outputs = [pb_utils.Tensor(self.output_name, embeddings[part])]
            # A version without the output answers without it: a request that names no outputs asks for all of
            # them (config.pbtxt lists `regions` for every version), and must still get its embedding.
            if wants and regions is not None:
                outputs.append(pb_utils.Tensor(REGIONS_OUTPUT_NAME, regions[part]))
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
