"""The gRPC servicer: protos in, domain calls, protos out. Nothing else lives here: errors become status codes
and metrics are taken by the interceptor (server/api/interceptors.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from protos.visual_search.v1 import visual_search_pb2 as pb
from protos.visual_search.v1 import visual_search_pb2_grpc as pb_grpc
from server.api.auth import FEEDBACK, Caller, current_caller
from server.api.status import code_of
from server.core.errors import InvalidInput, PermissionDenied
from server.core.ids import check_image_id, check_image_ids, owner_id_problem
from server.embedding.contract import EMBED_CHUNK, EMBEDDING_DIM
from server.embedding.imaging import CropBox
from server.ingest.add import Indexer, Outcome, Status, Upload
from server.ingest.reindex import ModelSwitcher
from server.query.feedback import Feedback
from server.query.search import Answer, Query, Searcher
from server.query.thumbnails import Thumbnails
from server.runtime.callers import Principal, principal_of
from server.runtime.serving import Live
from server.store.base import Visibility
from server.store.interactions import Interaction

MAX_BATCH_QUERIES = 64
MAX_INTERACTIONS = 1000
_VISIBILITY = {pb.VISIBILITY_UNSPECIFIED: Visibility.PUBLIC, pb.VISIBILITY_PUBLIC: Visibility.PUBLIC,
               pb.VISIBILITY_PRIVATE: Visibility.PRIVATE}
_ADD_STATUS = {Status.ADDED: pb.AddImageResult.ADDED, Status.ALREADY_EXISTS: pb.AddImageResult.ALREADY_EXISTS,
               Status.REJECTED: pb.AddImageResult.REJECTED}


def _query(request: pb.SearchRequest) -> Query:
    kind = request.WhichOneof("query")
    crop = None
    if request.HasField("crop"):
        c = request.crop
        crop = CropBox(c.x_min, c.y_min, c.x_max, c.y_max)
    return Query(
        image_bytes=request.image_bytes if kind == "image_bytes" else None,
        image_id=request.image_id if kind == "image_id" else None,
        crop=crop, k=request.k,
        min_score=request.min_score if request.HasField("min_score") else None,
        min_relevance=request.min_relevance if request.HasField("min_relevance") else None,
        include_duplicates=request.include_duplicates,
    )


def _response(answer: Answer) -> pb.SearchResponse:
    return pb.SearchResponse(
        results=[pb.SearchResult(image_id=h.image_id, score=h.score, position=i, relevance=h.relevance,
                                 duplicate_of=h.duplicate_of) for i, h in enumerate(answer.hits)],
        model_version=answer.model_version, index_version=answer.index_version, request_id=answer.request_id)


def _add_result(image_id: str, outcome: Outcome) -> pb.AddImageResult:
    result = pb.AddImageResult(image_id=image_id, status=_ADD_STATUS[outcome.status])
    if outcome.error is not None:
        result.error_code, result.error_message = code_of(outcome.error).name, outcome.error.message
    return result


def _owner_check(caller: Caller, item: pb.AddImageRequest) -> InvalidInput | PermissionDenied | None:
    """Every image has a valid owner (no '/': namespaces never nest). Writers add only for their owners, and only IDs
    in an owner's namespace (`<owner_id>/...`): so an AddImages answer can never tell a writer whether another
    owner's (private or deleted) ID exists."""
    if (problem := owner_id_problem(item.owner_id)) is not None:
        return InvalidInput(problem, field="owner_id")
    if caller.admin:
        return None
    if not caller.owns(item.owner_id):
        return PermissionDenied(f"this token may write for {sorted(caller.owners)} only", field="owner_id")
    if not item.image_id.startswith(f"{item.owner_id}/"):
        return PermissionDenied(f"must start with '{item.owner_id}/' (the owner's namespace)", field="image_id")
    return None


class VisualSearchServicer(pb_grpc.VisualSearchServicer):
    def __init__(self, searcher: Searcher, indexer: Indexer, switcher: ModelSwitcher, live: Live,
                 feedback: Feedback, thumbnails: Thumbnails, shares: dict[str, float] | None = None) -> None:
        self.searcher, self.indexer, self.switcher, self.thumbnails = searcher, indexer, switcher, thumbnails
        self.live, self.feedback = live, feedback
        self.shares = shares or {}  # admission shares by subject or `role:<role>` (settings.admission_shares)

    def _principal(self) -> Principal:
        """The caller, for admission's fairness: its token's subject and share."""
        caller = current_caller()
        return principal_of(caller.subject, caller.roles, self.shares)

    def _issue(self, query: Query, answer: Answer) -> pb.SearchResponse:
        self.feedback.issue(answer.request_id, current_caller().subject, [h.image_id for h in answer.hits],
                            [h.score for h in answer.hits], answer.model_version, query.image_id)
        return _response(answer)

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        query = _query(request)
        return self._issue(query, await self.searcher.search(query, context.time_remaining(), self._principal()))

    async def SearchBatch(self, request: pb.SearchBatchRequest, context: grpc.aio.ServicerContext
                          ) -> pb.SearchBatchResponse:
        if not 1 <= len(request.requests) <= MAX_BATCH_QUERIES:
            raise InvalidInput(f"needs 1..{MAX_BATCH_QUERIES} queries, got {len(request.requests)}", field="requests")
        queries = [_query(r) for r in request.requests]
        answers = await self.searcher.search_many(queries, context.time_remaining(), self._principal())
        return pb.SearchBatchResponse(responses=[self._issue(q, a) for q, a in zip(queries, answers, strict=True)])

    async def AddImages(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> pb.AddImagesResponse:
        results: list[pb.AddImageResult] = []
        chunk: list[pb.AddImageRequest] = []
        async for item in request_iterator:
            chunk.append(item)
            if len(chunk) == EMBED_CHUNK:
                results += await self._add_chunk(chunk, context.time_remaining())
                chunk = []
        if chunk:
            results += await self._add_chunk(chunk, context.time_remaining())
        return pb.AddImagesResponse(results=results, index_version=await self.indexer.finish())

    async def _add_chunk(self, items: list[pb.AddImageRequest], timeout_s: float | None) -> list[pb.AddImageResult]:
        denied = {id(i): Outcome(Status.REJECTED, e) for i in items if (e := _owner_check(current_caller(), i))}
        known = [i for i in items if i.visibility in _VISIBILITY and id(i) not in denied]
        outcomes = dict(zip((id(i) for i in known), await self.indexer.add(
            [Upload(i.image_id, i.image_bytes, i.owner_id, _VISIBILITY[i.visibility]) for i in known], timeout_s,
            self._principal()), strict=True))
        unknown = Outcome(Status.REJECTED, InvalidInput("unknown value; use VISIBILITY_PUBLIC or VISIBILITY_PRIVATE",
                                                        field="visibility"))
        outcomes.update(denied)
        return [_add_result(i.image_id, outcomes.get(id(i), unknown)) for i in items]

    async def DeleteImages(self, request: pb.DeleteImagesRequest, context: grpc.aio.ServicerContext
                           ) -> pb.DeleteImagesResponse:
        check_image_ids(list(request.image_ids))
        changed = await self.indexer.delete(list(request.image_ids), current_caller().owns)
        return pb.DeleteImagesResponse(deleted_count=changed.count, not_found_ids=changed.not_found)

    async def SetVisibility(self, request: pb.SetVisibilityRequest, context: grpc.aio.ServicerContext
                            ) -> pb.SetVisibilityResponse:
        if request.visibility not in (pb.VISIBILITY_PUBLIC, pb.VISIBILITY_PRIVATE):
            raise InvalidInput("must be VISIBILITY_PUBLIC or VISIBILITY_PRIVATE", field="visibility")
        check_image_ids(list(request.image_ids))
        changed = await self.indexer.set_visibility(list(request.image_ids), _VISIBILITY[request.visibility],
                                                    current_caller().owns)
        return pb.SetVisibilityResponse(updated_count=changed.count, not_found_ids=changed.not_found)

    async def GetStats(self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext) -> pb.GetStatsResponse:
        serving, switch = self.live.serving, self.live.switch
        stats = await asyncio.to_thread(serving.store.stats)  # a server store answers over the network
        counts, params = stats.counts, stats.index_params
        admin = current_caller().admin  # private and deleted counts are for admins only
        return pb.GetStatsResponse(
            image_count=counts.live if admin else counts.public, public_count=counts.public,
            private_count=counts.private if admin else 0, deleted_count=counts.deleted if admin else 0,
            index_type=stats.index_type, index_params=params, embedding_dim=EMBEDDING_DIM,
            model_version=serving.embedder.model_version, index_version=serving.store.version,
            index_on_gpu=params.get("gpu") == "true",
            switching_to_model_version=switch.target if switch else "",
            switch_reembedded_count=switch.done if switch else 0,
            switch_total_count=stats.rows if switch else 0,
            switch_error=self.live.last_switch_error)

    async def GetThumbnail(self, request: pb.GetThumbnailRequest, context: grpc.aio.ServicerContext
                           ) -> pb.GetThumbnailResponse:
        thumbnail = await self.thumbnails.get(request.image_id, request.max_side, context.time_remaining(),
                                              self._principal())
        return pb.GetThumbnailResponse(jpeg=thumbnail.jpeg, width=thumbnail.width, height=thumbnail.height)

    async def SwitchModel(self, request: pb.SwitchModelRequest, context: grpc.aio.ServicerContext
                          ) -> pb.SwitchModelResponse:
        state = await self.switcher.request(request.model_version)
        return pb.SwitchModelResponse(state=pb.SwitchModelResponse.State.Value(state.name),
                                      active_model_version=self.live.serving.embedder.model_version)

    async def LogInteractions(self, request: pb.LogInteractionsRequest, context: grpc.aio.ServicerContext
                              ) -> pb.LogInteractionsResponse:
        if not 1 <= len(request.interactions) <= MAX_INTERACTIONS:
            raise InvalidInput(f"needs 1..{MAX_INTERACTIONS} items, got {len(request.interactions)}",
                               field="interactions")
        items = []
        for n, i in enumerate(request.interactions):
            if i.kind not in (pb.Interaction.IMPRESSION, pb.Interaction.CLICK) or not i.request_id or not i.image_id:
                raise InvalidInput("needs request_id, image_id and kind IMPRESSION or CLICK",
                                   field=f"interactions[{n}]")
            check_image_id(i.image_id, f"interactions[{n}].image_id")
            check_image_id(i.request_id, f"interactions[{n}].request_id")
            when = i.time.ToSeconds() + i.time.nanos / 1e9 if i.HasField("time") else time.time()
            items.append(Interaction(i.request_id, i.position, i.image_id, int(i.kind), when))
        # Only for results this gateway returned to this caller, each at most once (no forged clicks).
        caller = current_caller()
        accepted = await asyncio.to_thread(self.feedback.record, caller.subject, items, caller.may(FEEDBACK))
        return pb.LogInteractionsResponse(accepted_count=accepted)
