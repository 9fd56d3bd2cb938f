import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Visibility(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VISIBILITY_UNSPECIFIED: _ClassVar[Visibility]
    VISIBILITY_PUBLIC: _ClassVar[Visibility]
    VISIBILITY_PRIVATE: _ClassVar[Visibility]
VISIBILITY_UNSPECIFIED: Visibility
VISIBILITY_PUBLIC: Visibility
VISIBILITY_PRIVATE: Visibility

class CropBox(_message.Message):
    __slots__ = ("x_min", "y_min", "x_max", "y_max")
    X_MIN_FIELD_NUMBER: _ClassVar[int]
    Y_MIN_FIELD_NUMBER: _ClassVar[int]
    X_MAX_FIELD_NUMBER: _ClassVar[int]
    Y_MAX_FIELD_NUMBER: _ClassVar[int]
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    def __init__(self, x_min: _Optional[float] = ..., y_min: _Optional[float] = ..., x_max: _Optional[float] = ..., y_max: _Optional[float] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("image_bytes", "image_id", "crop", "k", "min_score", "include_duplicates", "min_relevance")
    IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    MIN_RELEVANCE_FIELD_NUMBER: _ClassVar[int]
    image_bytes: bytes
    image_id: str
    crop: CropBox
    k: int
    min_score: float
    include_duplicates: bool
    min_relevance: float
    def __init__(self, image_bytes: _Optional[bytes] = ..., image_id: _Optional[str] = ..., crop: _Optional[_Union[CropBox, _Mapping]] = ..., k: _Optional[int] = ..., min_score: _Optional[float] = ..., include_duplicates: _Optional[bool] = ..., min_relevance: _Optional[float] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("image_id", "score", "position", "relevance", "duplicate_of")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    RELEVANCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_OF_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    score: float
    position: int
    relevance: float
    duplicate_of: str
    def __init__(self, image_id: _Optional[str] = ..., score: _Optional[float] = ..., position: _Optional[int] = ..., relevance: _Optional[float] = ..., duplicate_of: _Optional[str] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("results", "model_version", "index_version", "request_id")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    model_version: str
    index_version: int
    request_id: str
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ..., model_version: _Optional[str] = ..., index_version: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class SearchBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[SearchRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[SearchRequest, _Mapping]]] = ...) -> None: ...

class SearchBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[SearchResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[SearchResponse, _Mapping]]] = ...) -> None: ...

class AddImageRequest(_message.Message):
    __slots__ = ("image_id", "image_bytes", "owner_id", "visibility")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    image_bytes: bytes
    owner_id: str
    visibility: Visibility
    def __init__(self, image_id: _Optional[str] = ..., image_bytes: _Optional[bytes] = ..., owner_id: _Optional[str] = ..., visibility: _Optional[_Union[Visibility, str]] = ...) -> None: ...

class AddImageResult(_message.Message):
    __slots__ = ("image_id", "status", "error_code", "error_message")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[AddImageResult.Status]
        ADDED: _ClassVar[AddImageResult.Status]
        ALREADY_EXISTS: _ClassVar[AddImageResult.Status]
        REJECTED: _ClassVar[AddImageResult.Status]
    STATUS_UNSPECIFIED: AddImageResult.Status
    ADDED: AddImageResult.Status
    ALREADY_EXISTS: AddImageResult.Status
    REJECTED: AddImageResult.Status
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    status: AddImageResult.Status
    error_code: str
    error_message: str
    def __init__(self, image_id: _Optional[str] = ..., status: _Optional[_Union[AddImageResult.Status, str]] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class AddImagesResponse(_message.Message):
    __slots__ = ("results", "index_version")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[AddImageResult]
    index_version: int
    def __init__(self, results: _Optional[_Iterable[_Union[AddImageResult, _Mapping]]] = ..., index_version: _Optional[int] = ...) -> None: ...

class DeleteImagesRequest(_message.Message):
    __slots__ = ("image_ids",)
    IMAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    image_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, image_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteImagesResponse(_message.Message):
    __slots__ = ("deleted_count", "not_found_ids")
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_IDS_FIELD_NUMBER: _ClassVar[int]
    deleted_count: int
    not_found_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted_count: _Optional[int] = ..., not_found_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SetVisibilityRequest(_message.Message):
    __slots__ = ("image_ids", "visibility")
    IMAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    image_ids: _containers.RepeatedScalarFieldContainer[str]
    visibility: Visibility
    def __init__(self, image_ids: _Optional[_Iterable[str]] = ..., visibility: _Optional[_Union[Visibility, str]] = ...) -> None: ...

class SetVisibilityResponse(_message.Message):
    __slots__ = ("updated_count", "not_found_ids")
    UPDATED_COUNT_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_IDS_FIELD_NUMBER: _ClassVar[int]
    updated_count: int
    not_found_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, updated_count: _Optional[int] = ..., not_found_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("image_count", "public_count", "private_count", "deleted_count", "index_type", "index_params", "embedding_dim", "model_version", "index_version", "index_on_gpu", "switching_to_model_version", "switch_reembedded_count", "switch_total_count", "switch_error")
    class IndexParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_COUNT_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    INDEX_TYPE_FIELD_NUMBER: _ClassVar[int]
    INDEX_PARAMS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_ON_GPU_FIELD_NUMBER: _ClassVar[int]
    SWITCHING_TO_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SWITCH_REEMBEDDED_COUNT_FIELD_NUMBER: _ClassVar[int]
    SWITCH_TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    SWITCH_ERROR_FIELD_NUMBER: _ClassVar[int]
    image_count: int
    public_count: int
    private_count: int
    deleted_count: int
    index_type: str
    index_params: _containers.ScalarMap[str, str]
    embedding_dim: int
    model_version: str
    index_version: int
    index_on_gpu: bool
    switching_to_model_version: str
    switch_reembedded_count: int
    switch_total_count: int
    switch_error: str
    def __init__(self, image_count: _Optional[int] = ..., public_count: _Optional[int] = ..., private_count: _Optional[int] = ..., deleted_count: _Optional[int] = ..., index_type: _Optional[str] = ..., index_params: _Optional[_Mapping[str, str]] = ..., embedding_dim: _Optional[int] = ..., model_version: _Optional[str] = ..., index_version: _Optional[int] = ..., index_on_gpu: _Optional[bool] = ..., switching_to_model_version: _Optional[str] = ..., switch_reembedded_count: _Optional[int] = ..., switch_total_count: _Optional[int] = ..., switch_error: _Optional[str] = ...) -> None: ...

class SwitchModelRequest(_message.Message):
    __slots__ = ("model_version",)
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    def __init__(self, model_version: _Optional[str] = ...) -> None: ...

class SwitchModelResponse(_message.Message):
    __slots__ = ("state", "active_model_version")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[SwitchModelResponse.State]
        STARTED: _ClassVar[SwitchModelResponse.State]
        ALREADY_ACTIVE: _ClassVar[SwitchModelResponse.State]
        ALREADY_RUNNING: _ClassVar[SwitchModelResponse.State]
    STATE_UNSPECIFIED: SwitchModelResponse.State
    STARTED: SwitchModelResponse.State
    ALREADY_ACTIVE: SwitchModelResponse.State
    ALREADY_RUNNING: SwitchModelResponse.State
    STATE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    state: SwitchModelResponse.State
    active_model_version: str
    def __init__(self, state: _Optional[_Union[SwitchModelResponse.State, str]] = ..., active_model_version: _Optional[str] = ...) -> None: ...

class Interaction(_message.Message):
    __slots__ = ("request_id", "position", "image_id", "kind", "time")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Interaction.Kind]
        IMPRESSION: _ClassVar[Interaction.Kind]
        CLICK: _ClassVar[Interaction.Kind]
    KIND_UNSPECIFIED: Interaction.Kind
    IMPRESSION: Interaction.Kind
    CLICK: Interaction.Kind
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    position: int
    image_id: str
    kind: Interaction.Kind
    time: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., position: _Optional[int] = ..., image_id: _Optional[str] = ..., kind: _Optional[_Union[Interaction.Kind, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LogInteractionsRequest(_message.Message):
    __slots__ = ("interactions",)
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    interactions: _containers.RepeatedCompositeFieldContainer[Interaction]
    def __init__(self, interactions: _Optional[_Iterable[_Union[Interaction, _Mapping]]] = ...) -> None: ...

class LogInteractionsResponse(_message.Message):
    __slots__ = ("accepted_count",)
    ACCEPTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    accepted_count: int
    def __init__(self, accepted_count: _Optional[int] = ...) -> None: ...

class GetThumbnailRequest(_message.Message):
    __slots__ = ("image_id", "max_side")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_SIDE_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    max_side: int
    def __init__(self, image_id: _Optional[str] = ..., max_side: _Optional[int] = ...) -> None: ...

class GetThumbnailResponse(_message.Message):
    __slots__ = ("jpeg", "width", "height")
    JPEG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    jpeg: bytes
    width: int
    height: int
    def __init__(self, jpeg: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...
