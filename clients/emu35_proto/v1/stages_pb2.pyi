from emu35_proto.v1 import common_pb2 as _common_pb2
from emu35_proto.v1 import api_pb2 as _api_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EncodeRequest(_message.Message):
    __slots__ = ("images", "area")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    area: int
    def __init__(self, images: _Optional[_Iterable[bytes]] = ..., area: _Optional[int] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("grids",)
    GRIDS_FIELD_NUMBER: _ClassVar[int]
    grids: _containers.RepeatedCompositeFieldContainer[_common_pb2.CodeGrid]
    def __init__(self, grids: _Optional[_Iterable[_Union[_common_pb2.CodeGrid, _Mapping]]] = ...) -> None: ...

class GeneratorRequest(_message.Message):
    __slots__ = ("request_id", "task", "cond_ids", "uncond_ids", "full_uncond_ids", "text_sampling", "image_sampling", "guidance", "output_grid", "max_new_tokens", "stop_at_image_end", "seed", "decode_mode")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    COND_IDS_FIELD_NUMBER: _ClassVar[int]
    UNCOND_IDS_FIELD_NUMBER: _ClassVar[int]
    FULL_UNCOND_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_GRID_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_AT_IMAGE_END_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DECODE_MODE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    task: _common_pb2.Task
    cond_ids: _containers.RepeatedScalarFieldContainer[int]
    uncond_ids: _containers.RepeatedScalarFieldContainer[int]
    full_uncond_ids: _containers.RepeatedScalarFieldContainer[int]
    text_sampling: _common_pb2.SamplingParams
    image_sampling: _common_pb2.SamplingParams
    guidance: _common_pb2.Guidance
    output_grid: _common_pb2.ImageGrid
    max_new_tokens: int
    stop_at_image_end: bool
    seed: int
    decode_mode: _api_pb2.DecodeMode
    def __init__(self, request_id: _Optional[str] = ..., task: _Optional[_Union[_common_pb2.Task, str]] = ..., cond_ids: _Optional[_Iterable[int]] = ..., uncond_ids: _Optional[_Iterable[int]] = ..., full_uncond_ids: _Optional[_Iterable[int]] = ..., text_sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., image_sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., guidance: _Optional[_Union[_common_pb2.Guidance, _Mapping]] = ..., output_grid: _Optional[_Union[_common_pb2.ImageGrid, _Mapping]] = ..., max_new_tokens: _Optional[int] = ..., stop_at_image_end: _Optional[bool] = ..., seed: _Optional[int] = ..., decode_mode: _Optional[_Union[_api_pb2.DecodeMode, str]] = ...) -> None: ...

class GeneratorEvent(_message.Message):
    __slots__ = ("text", "image_started", "image_progress", "image_tokens", "finished", "image_index")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_STARTED_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    IMAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    text: _api_pb2.TextDelta
    image_started: _api_pb2.ImageStarted
    image_progress: _api_pb2.ImageProgress
    image_tokens: _common_pb2.CodeGrid
    finished: GeneratorFinished
    image_index: int
    def __init__(self, text: _Optional[_Union[_api_pb2.TextDelta, _Mapping]] = ..., image_started: _Optional[_Union[_api_pb2.ImageStarted, _Mapping]] = ..., image_progress: _Optional[_Union[_api_pb2.ImageProgress, _Mapping]] = ..., image_tokens: _Optional[_Union[_common_pb2.CodeGrid, _Mapping]] = ..., finished: _Optional[_Union[GeneratorFinished, _Mapping]] = ..., image_index: _Optional[int] = ...) -> None: ...

class GeneratorFinished(_message.Message):
    __slots__ = ("reason", "usage", "token_ids", "incomplete_image", "error")
    REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    INCOMPLETE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    reason: _common_pb2.FinishReason
    usage: _common_pb2.Usage
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    incomplete_image: bool
    error: str
    def __init__(self, reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., token_ids: _Optional[_Iterable[int]] = ..., incomplete_image: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("request_id", "tenant", "index", "grid")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    GRID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tenant: str
    index: int
    grid: _common_pb2.CodeGrid
    def __init__(self, request_id: _Optional[str] = ..., tenant: _Optional[str] = ..., index: _Optional[int] = ..., grid: _Optional[_Union[_common_pb2.CodeGrid, _Mapping]] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.ResultRef
    def __init__(self, image: _Optional[_Union[_common_pb2.ResultRef, _Mapping]] = ...) -> None: ...
