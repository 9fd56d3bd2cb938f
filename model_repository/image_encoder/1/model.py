"""Triton Python-backend model: image bytes + crop in, embedding out (decode here, encode by a BLS call).

The preprocessing is the gateway's own (`server.embedding.imaging.prepare`), imported, not copied: one
definition of the encoder's input. An image that cannot be decoded, or is over a limit, fails only its own
request, with INVALID_ARGUMENT and a message that names the field.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from server.core.errors import InvalidInput
from server.embedding.imaging import CropBox, Limits, check_header, prepare


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        # The gateway's settings win when its launcher started this Triton (VSEARCH_* in the environment).
        self.limits = Limits(int(os.environ.get("VSEARCH_MAX_IMAGE_BYTES", params["max_image_bytes"])),
                             int(os.environ.get("VSEARCH_MAX_IMAGE_PIXELS", params["max_image_pixels"])))
        self.encoder = params["encoder_model"]
        # GPU hosts (configs/gpu.pbtxt): JPEGs go to the DALI model (nvJPEG); everything else stays on this path.
        self.gpu_preprocess = params.get("preprocess_model", "")

    def _prepare(self, request: "pb_utils.InferenceRequest") -> np.ndarray:
        data = pb_utils.get_input_tensor_by_name(request, "image_bytes").as_numpy().reshape(-1)
        crop = pb_utils.get_input_tensor_by_name(request, "crop").as_numpy().reshape(-1, 4)
        if len(data) != 1 or len(crop) != 1:
            raise InvalidInput("send one image per request (the server batches requests itself)", field="image_bytes")
        box = None if tuple(crop[0]) == (0.0, 0.0, 1.0, 1.0) else CropBox(*(float(v) for v in crop[0]))
        image = bytes(data[0])
        if self.gpu_preprocess and image[:2] == b"\xff\xd8":
            return self._prepare_on_gpu(image, box)
        return prepare(image, box, self.limits)

    def _prepare_on_gpu(self, image: bytes, box: CropBox | None) -> np.ndarray:
        """The same checks as the CPU path first (limits on the header), then nvJPEG decode + crop + resize."""
        check_header(image, self.limits)
        if box is not None:
            box.validate()
        response = pb_utils.InferenceRequest(
            model_name=self.gpu_preprocess, requested_output_names=["pixels"],
            inputs=[pb_utils.Tensor("image_bytes", np.frombuffer(image, np.uint8)[None]),
                    pb_utils.Tensor("crop", np.array([box.as_tuple() if box else (0.0, 0.0, 1.0, 1.0)], np.float32))],
        ).exec()
        if response.has_error():
            return prepare(image, box, self.limits)  # nvJPEG refused it: the CPU decoder decides (and explains)
        return pb_utils.get_output_tensor_by_name(response, "pixels").as_numpy()[0]

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        by_version: dict[str, list[tuple[int, np.ndarray]]] = {}
        for n, request in enumerate(requests):
            try:
                pixels = self._prepare(request)
            except InvalidInput as exc:
                responses[n] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(exc.message, pb_utils.TritonError.INVALID_ARG))
                continue
            version = json.loads(request.parameters() or "{}").get("encoder_version", "")
            by_version.setdefault(str(version), []).append((n, pixels))
        for version, items in by_version.items():
            embedded = pb_utils.InferenceRequest(
                model_name=self.encoder, model_version=int(version) if version else -1,
                inputs=[pb_utils.Tensor("pixels", np.stack([p for _, p in items]))],
                requested_output_names=["embedding"]).exec()
            if embedded.has_error():
                for n, _ in items:
                    responses[n] = pb_utils.InferenceResponse(error=pb_utils.TritonError(
                        f"encoder version {version or 'newest'}: {embedded.error().message()}"))
                continue
            vectors = pb_utils.get_output_tensor_by_name(embedded, "embedding").as_numpy()
            for (n, _), vector in zip(items, vectors, strict=True):
                responses[n] = pb_utils.InferenceResponse([pb_utils.Tensor("embedding", vector[None])])
        return responses
