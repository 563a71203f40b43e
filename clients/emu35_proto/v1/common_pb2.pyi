from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    T2I: _ClassVar[Task]
    X2I: _ClassVar[Task]
    HOWTO: _ClassVar[Task]
    STORY: _ClassVar[Task]
    EXPLORE: _ClassVar[Task]
    VLA: _ClassVar[Task]

class GuidanceMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GUIDANCE_MODE_UNSPECIFIED: _ClassVar[GuidanceMode]
    NO_TEXT: _ClassVar[GuidanceMode]
    NO_TEXT_IMG_CFG: _ClassVar[GuidanceMode]
    NONE: _ClassVar[GuidanceMode]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    STOP: _ClassVar[FinishReason]
    LENGTH: _ClassVar[FinishReason]
    ABORTED: _ClassVar[FinishReason]
    ERROR: _ClassVar[FinishReason]
TASK_UNSPECIFIED: Task
T2I: Task
X2I: Task
HOWTO: Task
STORY: Task
EXPLORE: Task
VLA: Task
GUIDANCE_MODE_UNSPECIFIED: GuidanceMode
NO_TEXT: GuidanceMode
NO_TEXT_IMG_CFG: GuidanceMode
NONE: GuidanceMode
FINISH_REASON_UNSPECIFIED: FinishReason
STOP: FinishReason
LENGTH: FinishReason
ABORTED: FinishReason
ERROR: FinishReason

class SamplingParams(_message.Message):
    __slots__ = ("top_k", "top_p", "temperature")
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    top_k: int
    top_p: float
    temperature: float
    def __init__(self, top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., temperature: _Optional[float] = ...) -> None: ...

class Guidance(_message.Message):
    __slots__ = ("mode", "scale", "image_scale")
    MODE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SCALE_FIELD_NUMBER: _ClassVar[int]
    mode: GuidanceMode
    scale: float
    image_scale: float
    def __init__(self, mode: _Optional[_Union[GuidanceMode, str]] = ..., scale: _Optional[float] = ..., image_scale: _Optional[float] = ...) -> None: ...

class ImageSize(_message.Message):
    __slots__ = ("preset", "grid", "auto")
    PRESET_FIELD_NUMBER: _ClassVar[int]
    GRID_FIELD_NUMBER: _ClassVar[int]
    AUTO_FIELD_NUMBER: _ClassVar[int]
    preset: str
    grid: ImageGrid
    auto: bool
    def __init__(self, preset: _Optional[str] = ..., grid: _Optional[_Union[ImageGrid, _Mapping]] = ..., auto: _Optional[bool] = ...) -> None: ...

class ImageGrid(_message.Message):
    __slots__ = ("h", "w")
    H_FIELD_NUMBER: _ClassVar[int]
    W_FIELD_NUMBER: _ClassVar[int]
    h: int
    w: int
    def __init__(self, h: _Optional[int] = ..., w: _Optional[int] = ...) -> None: ...

class CodeGrid(_message.Message):
    __slots__ = ("h", "w", "codes")
    H_FIELD_NUMBER: _ClassVar[int]
    W_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    h: int
    w: int
    codes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, h: _Optional[int] = ..., w: _Optional[int] = ..., codes: _Optional[_Iterable[int]] = ...) -> None: ...

class ResultRef(_message.Message):
    __slots__ = ("uri", "presigned_url", "sha256", "bytes", "width", "height", "content_type")
    URI_FIELD_NUMBER: _ClassVar[int]
    PRESIGNED_URL_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    uri: str
    presigned_url: str
    sha256: str
    bytes: int
    width: int
    height: int
    content_type: str
    def __init__(self, uri: _Optional[str] = ..., presigned_url: _Optional[str] = ..., sha256: _Optional[str] = ..., bytes: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., content_type: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "uncond_prompt_tokens", "cached_prompt_tokens", "generated_tokens", "images", "queue_seconds", "first_token_seconds", "total_seconds")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    UNCOND_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    uncond_prompt_tokens: int
    cached_prompt_tokens: int
    generated_tokens: int
    images: int
    queue_seconds: float
    first_token_seconds: float
    total_seconds: float
    def __init__(self, prompt_tokens: _Optional[int] = ..., uncond_prompt_tokens: _Optional[int] = ..., cached_prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., images: _Optional[int] = ..., queue_seconds: _Optional[float] = ..., first_token_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ...) -> None: ...
