"""Triton Python-backend model: image bytes + crop in, embedding out (decode here, encode by a BLS call).

The preprocessing is the gateway's own (`server.embedding.imaging.prepare_views`), imported, not copied: one
definition of the encoder's input. A request that asks for the `regions` output (indexing) gets the embeddings
of its region views too, from the same decode, in the same encoder call; an encoder version whose graph pools the
regions from the whole image's own pass (training/export_onnx.py: add_region_output) encodes the one view only.
A request that asks for the `signature` output gets the pixel signature of its first view (the image or its crop:
server/embedding/signature.py), computed here from the pixels the encoder sees.
An image that cannot be decoded, or is over a limit, fails only its own request, with INVALID_ARGUMENT and a
message that names the field.
"""

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from server.core.errors import InvalidInput
from server.embedding.contract import MAX_BATCH_SIZE, REGIONS_OUTPUT_NAME, SIGNATURE_OUTPUT_NAME
from server.embedding.imaging import CropBox, Limits, check_header, prepare, prepare_views, region_views
from server.embedding.onnx_encoder import graph_has_pooled_regions
from server.embedding.signature import pixel_signatures


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        # The gateway's settings win when its launcher started this Triton (VSEARCH_* in the environment).
        self.limits = Limits(int(os.environ.get("VSEARCH_MAX_IMAGE_BYTES", params["max_image_bytes"])),
                             int(os.environ.get("VSEARCH_MAX_IMAGE_PIXELS", params["max_image_pixels"])))
        self.encoder = params["encoder_model"]
        self.encoder_dir = Path(args["model_repository"]).parent / self.encoder
        self._pooled: dict[str, bool] = {}
        # GPU hosts (configs/gpu.pbtxt): JPEGs go to the DALI model (nvJPEG); everything else stays on this path.
        self.gpu_preprocess = params.get("preprocess_model", "")

    def pooled_regions(self, version: str) -> bool:
        """Whether this encoder version (newest when "") outputs the regions pooled from the one view's pass."""
        if version not in self._pooled:
            number = version or max((p.name for p in self.encoder_dir.iterdir() if p.name.isdigit()), key=int)
            self._pooled[version] = graph_has_pooled_regions(self.encoder_dir / number / "model.onnx")
        return self._pooled[version]

    def _prepare(self, request: "pb_utils.InferenceRequest", regions: bool) -> np.ndarray:
        """uint8 [V, 224, 224, 3]: the image (or its crop), then with `regions` its region views to encode."""
        data = pb_utils.get_input_tensor_by_name(request, "image_bytes").as_numpy().reshape(-1)
        crop = pb_utils.get_input_tensor_by_name(request, "crop").as_numpy().reshape(-1, 4)
        if len(data) != 1 or len(crop) != 1:
            raise InvalidInput("send one image per request (the server batches requests itself)", field="image_bytes")
        box = None if tuple(crop[0]) == (0.0, 0.0, 1.0, 1.0) else CropBox(*(float(v) for v in crop[0]))
        image = bytes(data[0])
        if regions:  # one decode for every view (the GPU path decodes one view per call)
            return prepare_views(image, region_views(box), self.limits)
        if self.gpu_preprocess and image[:2] == b"\xff\xd8":
            return self._prepare_on_gpu(image, box)[None]
        return prepare(image, box, self.limits)[None]

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

    def _encode(self, pixels: np.ndarray, version: str, pooled: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """One BLS call per MAX_BATCH_SIZE views (indexing requests bring 1 + R views each, or 1 view and the
        pooled regions: `pooled`)."""
        names = ["embedding", REGIONS_OUTPUT_NAME] if pooled else ["embedding"]
        parts: list[list[np.ndarray]] = [[] for _ in names]
        for start in range(0, len(pixels), MAX_BATCH_SIZE):
            embedded = pb_utils.InferenceRequest(
                model_name=self.encoder, model_version=int(version) if version else -1,
                inputs=[pb_utils.Tensor("pixels", pixels[start:start + MAX_BATCH_SIZE])],
                requested_output_names=names).exec()
            if embedded.has_error():
                raise RuntimeError(f"encoder version {version or 'newest'}: {embedded.error().message()}")
            for part, name in zip(parts, names, strict=True):
                part.append(pb_utils.get_output_tensor_by_name(embedded, name).as_numpy())
        whole = np.concatenate(parts[0])
        return whole, (np.concatenate(parts[1]) if pooled else None)

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        by_version: dict[str, list[tuple[int, np.ndarray, bool]]] = {}
        signatures: dict[int, np.ndarray] = {}
        for n, request in enumerate(requests):
            if request.is_cancelled():  # its caller gave up (deadline, disconnect): decode nothing for it
                responses[n] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("cancelled by the caller", pb_utils.TritonError.CANCELLED))
                continue
            regions = REGIONS_OUTPUT_NAME in request.requested_output_names()
            version = str(json.loads(request.parameters() or "{}").get("encoder_version", ""))
            try:
                pooled = regions and self.pooled_regions(version)
            except (OSError, ValueError) as exc:  # no such version (the gateway checks versions before)
                responses[n] = pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"encoder version {version or 'newest'}: {exc}", pb_utils.TritonError.NOT_FOUND))
                continue
            try:
                views = self._prepare(request, regions and not pooled)
            except InvalidInput as exc:
                responses[n] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(exc.message, pb_utils.TritonError.INVALID_ARG))
                continue
            by_version.setdefault(version, []).append((n, views, regions))
            if SIGNATURE_OUTPUT_NAME in request.requested_output_names():
                signatures[n] = pixel_signatures(views[:1])
        for version, items in by_version.items():
            pooled = any(regions for _, _, regions in items) and self.pooled_regions(version)
            try:
                vectors, pooled_rows = self._encode(np.concatenate([views for _, views, _ in items]), version, pooled)
            except RuntimeError as exc:
                for n, _, _ in items:
                    responses[n] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                continue
            start = 0
            for n, views, regions in items:
                rows = vectors[start:start + len(views)]
                outputs = [pb_utils.Tensor("embedding", rows[:1])]
                if regions:
                    region_rows = pooled_rows[start:start + 1] if pooled_rows is not None else rows[None, 1:]
                    outputs.append(pb_utils.Tensor(REGIONS_OUTPUT_NAME, region_rows))
                if n in signatures:
                    outputs.append(pb_utils.Tensor(SIGNATURE_OUTPUT_NAME, signatures[n]))
                start += len(views)
                responses[n] = pb_utils.InferenceResponse(outputs)
        return responses
