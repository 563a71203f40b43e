from emu35_proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecodeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECODE_MODE_UNSPECIFIED: _ClassVar[DecodeMode]
    AUTOREGRESSIVE: _ClassVar[DecodeMode]
    DIDA: _ClassVar[DecodeMode]
    FLASHAR: _ClassVar[DecodeMode]
DECODE_MODE_UNSPECIFIED: DecodeMode
AUTOREGRESSIVE: DecodeMode
DIDA: DecodeMode
FLASHAR: DecodeMode

class InputImage(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("task", "prompt", "images", "size", "text_sampling", "image_sampling", "guidance", "decode_mode", "seed", "max_new_tokens", "stop_at_image_end", "request_id", "model")
    TASK_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    TEXT_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    DECODE_MODE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_AT_IMAGE_END_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.Task
    prompt: str
    images: _containers.RepeatedCompositeFieldContainer[InputImage]
    size: _common_pb2.ImageSize
    text_sampling: _common_pb2.SamplingParams
    image_sampling: _common_pb2.SamplingParams
    guidance: _common_pb2.Guidance
    decode_mode: DecodeMode
    seed: int
    max_new_tokens: int
    stop_at_image_end: bool
    request_id: str
    model: str
    def __init__(self, task: _Optional[_Union[_common_pb2.Task, str]] = ..., prompt: _Optional[str] = ..., images: _Optional[_Iterable[_Union[InputImage, _Mapping]]] = ..., size: _Optional[_Union[_common_pb2.ImageSize, _Mapping]] = ..., text_sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., image_sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., guidance: _Optional[_Union[_common_pb2.Guidance, _Mapping]] = ..., decode_mode: _Optional[_Union[DecodeMode, str]] = ..., seed: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., stop_at_image_end: _Optional[bool] = ..., request_id: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("text", "channel")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    text: str
    channel: str
    def __init__(self, text: _Optional[str] = ..., channel: _Optional[str] = ...) -> None: ...

class ImageStarted(_message.Message):
    __slots__ = ("index", "grid")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    GRID_FIELD_NUMBER: _ClassVar[int]
    index: int
    grid: _common_pb2.ImageGrid
    def __init__(self, index: _Optional[int] = ..., grid: _Optional[_Union[_common_pb2.ImageGrid, _Mapping]] = ...) -> None: ...

class ImageProgress(_message.Message):
    __slots__ = ("index", "rows_done", "rows_total")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ROWS_DONE_FIELD_NUMBER: _ClassVar[int]
    ROWS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    index: int
    rows_done: int
    rows_total: int
    def __init__(self, index: _Optional[int] = ..., rows_done: _Optional[int] = ..., rows_total: _Optional[int] = ...) -> None: ...

class ImageReady(_message.Message):
    __slots__ = ("index", "image")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    image: _common_pb2.ResultRef
    def __init__(self, index: _Optional[int] = ..., image: _Optional[_Union[_common_pb2.ResultRef, _Mapping]] = ...) -> None: ...

class Finished(_message.Message):
    __slots__ = ("reason", "usage", "story", "manifest", "incomplete_image", "seed")
    REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    STORY_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    INCOMPLETE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    reason: _common_pb2.FinishReason
    usage: _common_pb2.Usage
    story: _common_pb2.ResultRef
    manifest: _common_pb2.ResultRef
    incomplete_image: bool
    seed: int
    def __init__(self, reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., story: _Optional[_Union[_common_pb2.ResultRef, _Mapping]] = ..., manifest: _Optional[_Union[_common_pb2.ResultRef, _Mapping]] = ..., incomplete_image: _Optional[bool] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("request_id", "text", "image_started", "image_progress", "image_ready", "finished")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_STARTED_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_READY_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: TextDelta
    image_started: ImageStarted
    image_progress: ImageProgress
    image_ready: ImageReady
    finished: Finished
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[_Union[TextDelta, _Mapping]] = ..., image_started: _Optional[_Union[ImageStarted, _Mapping]] = ..., image_progress: _Optional[_Union[ImageProgress, _Mapping]] = ..., image_ready: _Optional[_Union[ImageReady, _Mapping]] = ..., finished: _Optional[_Union[Finished, _Mapping]] = ...) -> None: ...

class EngineLoad(_message.Message):
    __slots__ = ("replicas", "waiting", "running", "kv_blocks_used", "kv_blocks_total", "max_waiting")
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_USED_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MAX_WAITING_FIELD_NUMBER: _ClassVar[int]
    replicas: int
    waiting: int
    running: int
    kv_blocks_used: int
    kv_blocks_total: int
    max_waiting: int
    def __init__(self, replicas: _Optional[int] = ..., waiting: _Optional[int] = ..., running: _Optional[int] = ..., kv_blocks_used: _Optional[int] = ..., kv_blocks_total: _Optional[int] = ..., max_waiting: _Optional[int] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("ready", "stages", "load")
    class StagesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...
    READY_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    stages: _containers.ScalarMap[str, bool]
    load: EngineLoad
    def __init__(self, ready: _Optional[bool] = ..., stages: _Optional[_Mapping[str, bool]] = ..., load: _Optional[_Union[EngineLoad, _Mapping]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("version", "tasks", "max_prompt_chars", "max_images", "max_image_bytes", "context_length", "load")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    version: str
    tasks: _containers.RepeatedScalarFieldContainer[str]
    max_prompt_chars: int
    max_images: int
    max_image_bytes: int
    context_length: int
    load: EngineLoad
    def __init__(self, version: _Optional[str] = ..., tasks: _Optional[_Iterable[str]] = ..., max_prompt_chars: _Optional[int] = ..., max_images: _Optional[int] = ..., max_image_bytes: _Optional[int] = ..., context_length: _Optional[int] = ..., load: _Optional[_Union[EngineLoad, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "checkpoint", "vocab_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    checkpoint: str
    vocab_size: int
    def __init__(self, name: _Optional[str] = ..., checkpoint: _Optional[str] = ..., vocab_size: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
