"""Python client of the visual search gateway: typed calls, deadlines, retries on UNAVAILABLE.

    from clients.client import VisualSearchClient
    with VisualSearchClient("127.0.0.1:50051") as vs:
        for hit in vs.search(open("shoe.jpg", "rb").read(), crop=(0.1, 0.2, 0.6, 0.9), k=10).results:
            print(hit.image_id, hit.score)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import grpc

from protos.visual_search.v1 import visual_search_pb2 as pb
from protos.visual_search.v1 import visual_search_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Every RPC of the service is safe to retry on UNAVAILABLE and on RESOURCE_EXHAUSTED (shed by admission control
# before any work): AddImages is idempotent on image_id, deletes and visibility changes are idempotent,
# LogInteractions is left out. Retries stay within the call's deadline, and gRPC's retry throttling stops them
# while most calls fail (tokens: -1 per failure, +0.1 per success, no retries below half), so an overloaded
# gateway is not hit by a retry storm.
_RETRY_POLICY = {
    "maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "2s", "backoffMultiplier": 2.0,
    "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
}
_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "visual_search.v1.VisualSearch", "method": m} for m in (
        "Search", "SearchBatch", "AddImages", "DeleteImages", "SetVisibility", "GetStats")],
    "retryPolicy": _RETRY_POLICY,
}], "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}})


@dataclass(frozen=True)
class NewImage:
    image_id: str
    image_bytes: bytes
    owner_id: str = ""
    private: bool = False


class VisualSearchClient:
    """`root_certificates` (PEM of the gateway's CA) switches to TLS; `token` is sent as a bearer token on every
    call (TLS only); `client_cert`/`client_key` (PEM) for mutual TLS. Without them: a plaintext channel for a
    gateway in insecure-local mode. `retries=False`: every refusal reaches the caller at once (for callers that
    retry on their own terms, or measure the service's own latency)."""

    def __init__(self, target: str, timeout_s: float = 10.0, token: str | None = None,
                 root_certificates: bytes | None = None, client_cert: bytes | None = None,
                 client_key: bytes | None = None, retries: bool = True) -> None:
        self.timeout_s = timeout_s
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", int(retries)),
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.keepalive_time_ms", 30_000),
        ]
        if root_certificates is None:
            if token is not None:
                raise ValueError("a bearer token needs TLS: pass root_certificates")
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates, client_key, client_cert)
            if token is not None:
                credentials = grpc.composite_channel_credentials(credentials,
                                                                 grpc.access_token_call_credentials(token))
            self.channel = grpc.secure_channel(target, credentials, options=options)
        self.stub = pb_grpc.VisualSearchStub(self.channel)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    @staticmethod
    def _crop(crop: tuple[float, float, float, float] | None) -> pb.CropBox | None:
        return pb.CropBox(x_min=crop[0], y_min=crop[1], x_max=crop[2], y_max=crop[3]) if crop else None

    def search(self, image_bytes: bytes, crop: tuple[float, float, float, float] | None = None, k: int = 0,
               min_score: float | None = None, timeout_s: float | None = None) -> pb.SearchResponse:
        request = pb.SearchRequest(image_bytes=image_bytes, crop=self._crop(crop), k=k, min_score=min_score)
        return self.stub.Search(request, timeout=timeout_s or self.timeout_s, wait_for_ready=True)

    def similar(self, image_id: str, k: int = 0, timeout_s: float | None = None) -> pb.SearchResponse:
        return self.stub.Search(pb.SearchRequest(image_id=image_id, k=k), timeout=timeout_s or self.timeout_s,
                                wait_for_ready=True)

    def add_images(self, images: Iterable[NewImage], timeout_s: float | None = 300.0) -> pb.AddImagesResponse:
        def requests() -> Iterator[pb.AddImageRequest]:
            for i in images:
                yield pb.AddImageRequest(
                    image_id=i.image_id, image_bytes=i.image_bytes, owner_id=i.owner_id,
                    visibility=pb.VISIBILITY_PRIVATE if i.private else pb.VISIBILITY_PUBLIC)
        return self.stub.AddImages(requests(), timeout=timeout_s, wait_for_ready=True)

    def delete(self, image_ids: list[str]) -> pb.DeleteImagesResponse:
        return self.stub.DeleteImages(pb.DeleteImagesRequest(image_ids=image_ids), timeout=self.timeout_s)

    def set_visibility(self, image_ids: list[str], private: bool) -> pb.SetVisibilityResponse:
        visibility = pb.VISIBILITY_PRIVATE if private else pb.VISIBILITY_PUBLIC
        return self.stub.SetVisibility(pb.SetVisibilityRequest(image_ids=image_ids, visibility=visibility),
                                       timeout=self.timeout_s)

    def stats(self) -> pb.GetStatsResponse:
        return self.stub.GetStats(pb.GetStatsRequest(), timeout=self.timeout_s, wait_for_ready=True)

    def log_interactions(self, interactions: list[pb.Interaction]) -> pb.LogInteractionsResponse:
        return self.stub.LogInteractions(pb.LogInteractionsRequest(interactions=interactions), timeout=self.timeout_s)

    def switch_model(self, model_version: str) -> pb.SwitchModelResponse:
        return self.stub.SwitchModel(pb.SwitchModelRequest(model_version=model_version), timeout=self.timeout_s)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> VisualSearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
