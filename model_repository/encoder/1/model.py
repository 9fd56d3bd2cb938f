"""Triton Python-backend model: runs this version's model.onnx with ONNX Runtime (CPU hosts).

GPU hosts serve the TensorRT plan built from the same ONNX graph instead (configs/gpu.pbtxt).
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        # Tensor names come from config.pbtxt (the contract; server/embedding/contract.py states the same).
        config = json.loads(args["model_config"])
        self.input_name, self.output_name = config["input"][0]["name"], config["output"][0]["name"]
        options = ort.SessionOptions()
        # One instance uses all cores: ORT's intra-op parallelism beats two single-threaded instances
        # on a 2-core host (measured in benchmarks/encoder_bench.py). Override with ENCODER_ORT_THREADS.
        options.intra_op_num_threads = int(os.environ.get("ENCODER_ORT_THREADS", "0"))
        # ORT's worker threads spin-wait after each run by default; on a host shared with the gateway that
        # spinning steals the cores the gateway decodes on. Set ENCODER_ORT_SPIN=1 on a dedicated host.
        options.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("ENCODER_ORT_SPIN", "0"))
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list) -> list:
        # Dynamic batching hands us several requests: run them as one batch, split the result back.
        batches = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        embeddings = self.session.run(None, {self.input_name: np.concatenate(batches)})[0]
        responses, start = [], 0
        for batch in batches:
            part = embeddings[start : start + len(batch)]
            start += len(batch)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, part)]))
        return responses
