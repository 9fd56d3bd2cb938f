"""Async client of the Triton encoder: pixels in, unit embeddings out.

Used by the gateway (one image per Search) and the indexer (batches). Triton's dynamic batcher merges
concurrent single-image calls, so callers never need to batch queries themselves.
"""

from __future__ import annotations

import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from server.core.errors import DeadlineExceeded, InvalidInput, Unavailable
from server.embedding.contract import (
    CROP_INPUT_NAME,
    IMAGE_INPUT_NAME,
    IMAGE_MODEL_NAME,
    INPUT_NAME,
    INPUT_SIZE,
    MAX_BATCH_SIZE,
    MODEL_NAME,
    NO_POOLED_REGIONS,
    OUTPUT_NAME,
    REGIONS_OUTPUT_NAME,
    SIGNATURE_OUTPUT_NAME,
    TRITON_GRPC_KEY_HEADER,
    VERSION_PARAMETER,
    WHOLE_IMAGE,
)
from server.embedding.imaging import CropBox


def _translate(exc: InferenceServerException, url: str, invalid_field: str | None = "pixels") -> Exception:
    status = str(exc.status() or "")
    text = exc.message() or str(exc)
    if "DEADLINE_EXCEEDED" in status or "Deadline" in text:
        return DeadlineExceeded("the encoder did not answer within the request deadline")
    if "INVALID_ARGUMENT" in status:
        # The image model's messages name the request field already (`image_bytes: ...`, `crop: ...`).
        return InvalidInput(text if invalid_field is None else f"encoder rejected the input: {text}",
                            field=invalid_field)
    return Unavailable(f"encoder (Triton at {url}) is unavailable: {text}")


def _queue_timeout_us(timeout_s: float | None) -> int | None:
    """The caller's deadline, for Triton's queue policy: a request still queued when it passes is dropped there,
    never decoded or embedded (configs allow the override; the models also skip cancelled requests)."""
    return None if timeout_s is None else max(1, int(timeout_s * 1_000_000))


class EncoderClient:
    """One gRPC channel to Triton; safe to share across coroutines. The channel reconnects by itself.

    `version` pins the model version every call goes to (embeddings of different versions must never mix);
    without it the client pins the newest version Triton serves at the first `refresh_version`.
    """

    def __init__(self, url: str, model_name: str = MODEL_NAME, version: str | None = None,
                 key: str | None = None) -> None:
        """`key`: the header value Triton requires on its restricted protocols (inference included) when the
        launcher started it so; only holders of the key can embed (server/triton/endpoint.py)."""
        self.url = url
        self.model_name = model_name
        self._headers = {TRITON_GRPC_KEY_HEADER: key} if key else None
        # Short reconnect backoff: when Triton restarts, the channel is usable again within ~1 s
        # (gRPC's default backoff grows to 2 minutes, which would keep the gateway UNAVAILABLE for long).
        self._client = triton_aio.InferenceServerClient(url, channel_args=[
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ])
        self._version = version
        self._pools_regions: bool | None = None

    @property
    def version(self) -> str | None:
        return self._version

    @property
    def model_version(self) -> str:
        """`encoder/<version>`: the tag stored with every embedding this client produces."""
        return f"{self.model_name}/{self._version or '?'}"

    async def served_versions(self) -> list[str]:
        """Versions Triton has loaded, oldest first."""
        try:
            meta = await self._client.get_model_metadata(self.model_name, as_json=True)
        except InferenceServerException as exc:
            raise _translate(exc, self.url) from exc
        return sorted(meta["versions"], key=int)

    async def refresh_version(self) -> str:
        """Pin the newest served version unless a version is pinned already."""
        if self._version is None:
            self._version = (await self.served_versions())[-1]
        return self.model_version

    async def is_ready(self) -> bool:
        try:
            return bool(await self._client.is_model_ready(self.model_name, self._version or "")
                        and await self._client.is_model_ready(IMAGE_MODEL_NAME))
        except Exception:
            return False

    async def embed(self, pixels: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        """uint8 [N, 224, 224, 3] -> float32 [N, 1280]. Batches over the model's limit are split."""
        whole = (await self._embed(pixels, [OUTPUT_NAME], timeout_s))[0]
        if whole is None:
            raise Unavailable(f"encoder (Triton at {self.url}) answered without the {OUTPUT_NAME} output")
        return whole

    async def embed_with_regions(self, pixels: np.ndarray, timeout_s: float | None = None
                                 ) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, 224, 224, 3] -> (float32 [N, 1280], float32 [N, R, 1280]): a version that `pools_regions`."""
        whole, regions = await self._embed(pixels, [OUTPUT_NAME, REGIONS_OUTPUT_NAME], timeout_s)
        if regions is None:
            raise ValueError(f"{self.model_version} {NO_POOLED_REGIONS}: embed its region views instead")
        return whole, regions

    async def pools_regions(self) -> bool:
        """Whether the pinned version's graph outputs the regions pooled from the image's own pass, asked once
        (one blank image; config.pbtxt lists the output for every version, only some graphs answer with it)."""
        if self._pools_regions is None:
            regions = (await self._embed(np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.uint8),
                                         [OUTPUT_NAME, REGIONS_OUTPUT_NAME], None))[1]
            self._pools_regions = regions is not None
        return self._pools_regions

    async def _embed(self, pixels: np.ndarray, names: list[str], timeout_s: float | None
                     ) -> list[np.ndarray | None]:
        """Each named output over every batch; None for an output the model did not return."""
        if pixels.dtype != np.uint8:
            raise InvalidInput(f"expected uint8 pixels, got {pixels.dtype}", field="pixels")
        if pixels.ndim != 4 or pixels.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise InvalidInput(f"expected shape [N, {INPUT_SIZE}, {INPUT_SIZE}, 3], got {list(pixels.shape)}",
                               field="pixels")
        parts = [await self._infer(pixels[i : i + MAX_BATCH_SIZE], names, timeout_s)
                 for i in range(0, len(pixels), MAX_BATCH_SIZE)]
        return [None if any(part[n] is None for part in parts) else np.concatenate([part[n] for part in parts])
                for n in range(len(names))]

    async def _infer(self, batch: np.ndarray, names: list[str], timeout_s: float | None
                     ) -> list[np.ndarray | None]:
        if timeout_s is not None and timeout_s <= 0:
            raise DeadlineExceeded("the request deadline passed before the encoder was called")
        tensor = InferInput(INPUT_NAME, list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(batch))
        try:
            result = await self._client.infer(
                self.model_name, [tensor], model_version=self._version or "",
                outputs=[InferRequestedOutput(name) for name in names], client_timeout=timeout_s,
                headers=self._headers, timeout=_queue_timeout_us(timeout_s),
            )
        except InferenceServerException as exc:
            raise _translate(exc, self.url) from exc
        if self._version is None:
            self._version = result.get_response().model_version or None
        return [result.as_numpy(name) for name in names]

    async def embed_image(self, data: bytes, crop: CropBox | None = None, timeout_s: float | None = None,
                          regions: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Encoded image bytes (+ crop) -> (float32 [dim], with `regions` its region views' [R, dim], and the
        int8 pixel signature of the image or crop): decoding (once) and resizing happen inside Triton."""
        if timeout_s is not None and timeout_s <= 0:
            raise DeadlineExceeded("the request deadline passed before the encoder was called")
        if crop is not None:
            crop.validate()
        image = InferInput(IMAGE_INPUT_NAME, [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        box = InferInput(CROP_INPUT_NAME, [1, 4], "FP32")
        box.set_data_from_numpy(np.array([crop.as_tuple() if crop else WHOLE_IMAGE], dtype=np.float32))
        names = [OUTPUT_NAME, SIGNATURE_OUTPUT_NAME] + ([REGIONS_OUTPUT_NAME] if regions else [])
        try:
            result = await self._client.infer(
                IMAGE_MODEL_NAME, [image, box], outputs=[InferRequestedOutput(n) for n in names],
                parameters={VERSION_PARAMETER: self._version} if self._version else None, client_timeout=timeout_s,
                headers=self._headers, timeout=_queue_timeout_us(timeout_s))
        except InferenceServerException as exc:
            raise _translate(exc, self.url, invalid_field=None) from exc
        return (result.as_numpy(OUTPUT_NAME)[0], result.as_numpy(REGIONS_OUTPUT_NAME)[0] if regions else None,
                result.as_numpy(SIGNATURE_OUTPUT_NAME)[0])

    async def close(self) -> None:
        await self._client.close()
