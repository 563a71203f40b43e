"""Emu3.5 prompt templates and per-task defaults (spec §4, §6.1).

There is no chat template: each task has a conditional prompt and an unconditional (CFG
negative) prompt, byte for byte as in the reference configs. The question is inserted as
untrusted text (no special-token recognition, spec §2.5) and reference images as literal id
spans, in BOTH prompts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Mapping, Sequence, Union

from services.model.text_tokenizer import Segment, TextTokenizer, Trusted, UserText

QUESTION_PLACEHOLDER = "{question}"
IMAGE_PLACEHOLDER = "<|IMAGE|>"
MAX_X2I_IMAGES = 3


class Task(str, Enum):
    """Emu3.5 task names; the value is the string used inside the templates."""

    T2I = "t2i"
    X2I = "x2i"
    HOWTO = "howto"  # visual guidance
    STORY = "story"  # visual narrative
    EXPLORE = "explore"  # world exploration
    VLA = "vla"


def parse_task(name: Union[str, Task]) -> Task:
    """Task from its name; ValueError naming the field "task" and the valid names."""
    if isinstance(name, Task):
        return name
    try:
        return Task(str(name).strip().lower())
    except ValueError:
        valid = ", ".join(t.value for t in Task)
        raise ValueError(f"task: {name!r} is not a valid task; expected one of {valid}") from None


# The howto sentence comes from the visual-guidance config, the one the reference runs for
# howto (spec §4 rule 2, §12 item 22); the generic builder lacks it.
HOWTO_SENTENCE = " Please generate a response with interleaved text and images."

_COND_HEAD = "<|extra_203|>You are a helpful assistant for {task} task.{extra} USER: "
_COND_C1 = _COND_HEAD + "{question} ASSISTANT: <|extra_100|>"
_COND_C2 = _COND_HEAD + "{question}<|IMAGE|> ASSISTANT: <|extra_100|>"
# x2i puts the image(s) BEFORE the question.
_COND_C3 = _COND_HEAD + "<|IMAGE|>{question} ASSISTANT: <|extra_100|>"
# Two spaces between "USER:" and "ASSISTANT:" -- the question slot is simply empty.
UNCOND_U1 = "<|extra_203|>You are a helpful assistant. USER:  ASSISTANT: <|extra_100|>"
UNCOND_U2 = "<|extra_203|>You are a helpful assistant. USER: <|IMAGE|> ASSISTANT: <|extra_100|>"


def template_strings(task: Union[str, Task], with_image: bool) -> tuple[str, str]:
    """(conditional, unconditional) template strings, with the ``{question}`` and
    ``<|IMAGE|>`` placeholders exactly as in the reference configs."""
    task = parse_task(task)
    if not with_image:
        cond, uncond = _COND_C1, UNCOND_U1
    elif task is Task.X2I:
        cond, uncond = _COND_C3, UNCOND_U2
    else:
        cond, uncond = _COND_C2, UNCOND_U2
    extra = HOWTO_SENTENCE if task is Task.HOWTO else ""
    # str.replace, not str.format: "{question}" must survive for the caller.
    return cond.replace("{task}", task.value).replace("{extra}", extra), uncond


@dataclass(frozen=True)
class PromptPair:
    """Token ids of the conditional prompt and of the unconditional (CFG negative) prompt."""

    cond: tuple[int, ...]
    uncond: tuple[int, ...]


def build_prompts(
    tok: TextTokenizer,
    task: Union[str, Task],
    question: str,
    image_spans: Sequence[Sequence[int]] = (),
) -> PromptPair:
    """Tokenize both prompts of a task.

    ``question`` is user text (special strings in it stay plain text). ``image_spans`` are
    complete BOI..EOI id spans (see ``image_tokens.image_span_ids``); all of them, in order,
    replace ``<|IMAGE|>`` in both prompts. Without images the no-image templates are used.
    """
    task = parse_task(task)
    if not isinstance(question, str):
        raise TypeError(f"question: expected str, got {type(question).__name__}")
    spans = [list(span) for span in image_spans]
    if task is Task.X2I and len(spans) > MAX_X2I_IMAGES:
        raise ValueError(f"images: x2i accepts at most {MAX_X2I_IMAGES} reference images, "
                         f"got {len(spans)}")
    for index, span in enumerate(spans):
        if not span:
            raise ValueError(f"images: image span {index} is empty")
    image_ids = [i for span in spans for i in span]
    cond, uncond = template_strings(task, with_image=bool(spans))
    return PromptPair(
        cond=tuple(tok.encode_segments(_segments(cond, question, image_ids))),
        uncond=tuple(tok.encode_segments(_segments(uncond, question, image_ids))),
    )


_PLACEHOLDER_RE = re.compile("(" + re.escape(QUESTION_PLACEHOLDER) + "|"
                             + re.escape(IMAGE_PLACEHOLDER) + ")")


def _segments(template: str, question: str, image_ids: list[int]) -> list[Segment]:
    parts: list[Segment] = []
    for piece in _PLACEHOLDER_RE.split(template):
        if piece == QUESTION_PLACEHOLDER:
            parts.append(UserText(question))
        elif piece == IMAGE_PLACEHOLDER:
            parts.append(image_ids)
        elif piece:
            parts.append(Trusted(piece))
    return parts


@dataclass(frozen=True)
class TaskDefaults:
    """Reference sampling defaults of one task (spec §6.1)."""

    cfg_scale: float
    max_new_tokens: int
    image_area: int  # pixel area reference images are resized to (smart_resize)
    text_top_k: int
    text_top_p: float
    text_temperature: float
    image_top_k: int
    image_top_p: float
    image_temperature: float


_STORY = TaskDefaults(3.0, 32768, 518400, 1024, 0.9, 1.0, 10240, 1.0, 1.0)

TASK_DEFAULTS: Mapping[Task, TaskDefaults] = MappingProxyType({
    Task.T2I: TaskDefaults(5.0, 5120, 1048576, 1024, 0.9, 1.0, 5120, 1.0, 1.0),
    Task.X2I: TaskDefaults(3.0, 5120, 1048576, 1024, 0.9, 1.0, 5120, 1.0, 1.0),
    Task.HOWTO: TaskDefaults(3.0, 32768, 518400, 200, 0.8, 0.7, 10240, 1.0, 1.0),
    Task.STORY: _STORY,
    Task.EXPLORE: TaskDefaults(3.0, 32768, 518400, 200, 0.5, 0.7, 5120, 1.0, 1.0),
    # vla has no upstream config; it borrows story's numbers (the generic config.py ones).
    Task.VLA: _STORY,
})
