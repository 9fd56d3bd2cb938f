"""The console's only way into the service: the gateway's public gRPC API, with the signed-in operator's token
on every call (the gateway decides what that token may do), answers turned into JSON for the page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from clients.client import VisualSearchClient
from protos.visual_search.v1 import visual_search_pb2 as pb


class CallFailed(Exception):
    """A gRPC call that did not return OK: its status name and message, shown as they are on the page."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


@dataclass(frozen=True)
class SearchOptions:
    k: int = 0
    include_duplicates: bool = False
    min_score: float | None = None
    min_relevance: float | None = None


def _failed(exc: grpc.RpcError) -> CallFailed:
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    return CallFailed(code.name, details or "")


def _response(response: pb.SearchResponse) -> dict[str, Any]:
    return {"model_version": response.model_version, "index_version": response.index_version,
            "request_id": response.request_id,
            "results": [{"image_id": r.image_id, "score": round(r.score, 4), "position": r.position,
                         "relevance": round(r.relevance, 4) if r.HasField("relevance") else None,
                         "duplicate_of": r.duplicate_of if r.HasField("duplicate_of") else None}
                        for r in response.results]}


class Gateway:
    """One channel to the gateway for every operator; each call carries its caller's token as call metadata."""

    def __init__(self, target: str, root_certificates: bytes | None = None, timeout_s: float = 10.0) -> None:
        self.client = VisualSearchClient(target, timeout_s=timeout_s, root_certificates=root_certificates)
        self.timeout_s = timeout_s

    def _call(self, method: Any, request: Any, token: str | None) -> Any:
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        try:
            return method(request, timeout=self.timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            raise _failed(exc) from exc

    @staticmethod
    def _request(options: SearchOptions, **query: Any) -> pb.SearchRequest:
        return pb.SearchRequest(**query, k=options.k, include_duplicates=options.include_duplicates,
                                min_score=options.min_score, min_relevance=options.min_relevance)

    def search(self, image: bytes, crop: tuple[float, float, float, float] | None, options: SearchOptions,
               token: str | None) -> dict[str, Any]:
        box = pb.CropBox(x_min=crop[0], y_min=crop[1], x_max=crop[2], y_max=crop[3]) if crop else None
        request = self._request(options, image_bytes=image, crop=box)
        return _response(self._call(self.client.stub.Search, request, token))

    def similar(self, image_id: str, options: SearchOptions, token: str | None) -> dict[str, Any]:
        return _response(self._call(self.client.stub.Search, self._request(options, image_id=image_id), token))

    def thumbnail(self, image_id: str, max_side: int, token: str | None) -> bytes:
        request = pb.GetThumbnailRequest(image_id=image_id, max_side=max_side)
        return self._call(self.client.stub.GetThumbnail, request, token).jpeg

    def stats(self, token: str | None) -> dict[str, Any]:
        s = self._call(self.client.stub.GetStats, pb.GetStatsRequest(), token)
        return {"image_count": s.image_count, "public_count": s.public_count, "private_count": s.private_count,
                "deleted_count": s.deleted_count, "index_type": s.index_type, "index_params": dict(s.index_params),
                "embedding_dim": s.embedding_dim, "model_version": s.model_version, "index_version": s.index_version,
                "index_on_gpu": s.index_on_gpu, "switching_to_model_version": s.switching_to_model_version,
                "switch_reembedded_count": s.switch_reembedded_count, "switch_total_count": s.switch_total_count,
                "switch_error": s.switch_error}

    def close(self) -> None:
        self.client.close()
