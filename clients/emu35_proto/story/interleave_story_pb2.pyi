from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNKNOWN: _ClassVar[ImageFormat]
    JPEG: _ClassVar[ImageFormat]
    PNG: _ClassVar[ImageFormat]
    WEBP: _ClassVar[ImageFormat]
    BMP: _ClassVar[ImageFormat]
UNKNOWN: ImageFormat
JPEG: ImageFormat
PNG: ImageFormat
WEBP: ImageFormat
BMP: ImageFormat

class TimeStamp(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: float
    end: float
    def __init__(self, start: _Optional[float] = ..., end: _Optional[float] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("width", "height", "format", "image_data", "image_path")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DATA_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    format: ImageFormat
    image_data: bytes
    image_path: str
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., image_data: _Optional[bytes] = ..., image_path: _Optional[str] = ...) -> None: ...

class ImageMeta(_message.Message):
    __slots__ = ("image_id", "timestamp", "caption", "detail_caption", "features", "scores", "chain_of_thought", "cot_translate", "image", "is_keyframe_status")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_CAPTION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    CHAIN_OF_THOUGHT_FIELD_NUMBER: _ClassVar[int]
    COT_TRANSLATE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IS_KEYFRAME_STATUS_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    timestamp: TimeStamp
    caption: str
    detail_caption: str
    features: _containers.ScalarMap[str, bytes]
    scores: _containers.ScalarMap[str, float]
    chain_of_thought: str
    cot_translate: str
    image: Image
    is_keyframe_status: int
    def __init__(self, image_id: _Optional[str] = ..., timestamp: _Optional[_Union[TimeStamp, _Mapping]] = ..., caption: _Optional[str] = ..., detail_caption: _Optional[str] = ..., features: _Optional[_Mapping[str, bytes]] = ..., scores: _Optional[_Mapping[str, float]] = ..., chain_of_thought: _Optional[str] = ..., cot_translate: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., is_keyframe_status: _Optional[int] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("timestamp", "asr", "caption", "asr_translate", "images")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ASR_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    ASR_TRANSLATE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    timestamp: TimeStamp
    asr: str
    caption: str
    asr_translate: str
    images: _containers.RepeatedCompositeFieldContainer[ImageMeta]
    def __init__(self, timestamp: _Optional[_Union[TimeStamp, _Mapping]] = ..., asr: _Optional[str] = ..., caption: _Optional[str] = ..., asr_translate: _Optional[str] = ..., images: _Optional[_Iterable[_Union[ImageMeta, _Mapping]]] = ...) -> None: ...

class Clip(_message.Message):
    __slots__ = ("clip_id", "timestamp", "story", "caption", "segments")
    CLIP_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    STORY_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    clip_id: str
    timestamp: TimeStamp
    story: str
    caption: str
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    def __init__(self, clip_id: _Optional[str] = ..., timestamp: _Optional[_Union[TimeStamp, _Mapping]] = ..., story: _Optional[str] = ..., caption: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ...) -> None: ...

class Story(_message.Message):
    __slots__ = ("story_id", "clips", "deprecated", "deprecate_reason", "summary", "question", "refined_summary", "question_translate", "summary_translate", "refined_summary_translate", "reference_images")
    STORY_ID_FIELD_NUMBER: _ClassVar[int]
    CLIPS_FIELD_NUMBER: _ClassVar[int]
    DEPRECATED_FIELD_NUMBER: _ClassVar[int]
    DEPRECATE_REASON_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    REFINED_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    QUESTION_TRANSLATE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_TRANSLATE_FIELD_NUMBER: _ClassVar[int]
    REFINED_SUMMARY_TRANSLATE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    story_id: str
    clips: _containers.RepeatedCompositeFieldContainer[Clip]
    deprecated: bool
    deprecate_reason: str
    summary: str
    question: str
    refined_summary: str
    question_translate: str
    summary_translate: str
    refined_summary_translate: str
    reference_images: _containers.RepeatedCompositeFieldContainer[ImageMeta]
    def __init__(self, story_id: _Optional[str] = ..., clips: _Optional[_Iterable[_Union[Clip, _Mapping]]] = ..., deprecated: _Optional[bool] = ..., deprecate_reason: _Optional[str] = ..., summary: _Optional[str] = ..., question: _Optional[str] = ..., refined_summary: _Optional[str] = ..., question_translate: _Optional[str] = ..., summary_translate: _Optional[str] = ..., refined_summary_translate: _Optional[str] = ..., reference_images: _Optional[_Iterable[_Union[ImageMeta, _Mapping]]] = ...) -> None: ...
