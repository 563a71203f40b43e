"""The token budget (services.engine.request.token_budget / with_budget): a task's default is
clamped to the context the prompt leaves; an explicit value over it is an error naming
max_new_tokens; when not even the smallest answer fits, the error names the cause."""
from __future__ import annotations

import pytest

from services.engine.request import (RequestError, default_request, token_budget,
                                     with_budget)
from services.model.image_tokens import ImageGrid
from services.model.templates import TASK_DEFAULTS, Task

T2I_GRID = ImageGrid(55, 73)    # the t2i default preset: 4,077 tokens
REF_GRID = ImageGrid(55, 74)    # a 128x96 reference at x2i's area: 4,132 tokens


@pytest.mark.parametrize("task", [Task.STORY, Task.HOWTO, Task.EXPLORE, Task.VLA])
def test_interleaved_default_is_clamped_to_the_context_left(task):
    assert TASK_DEFAULTS[task].max_new_tokens == 32768
    assert token_budget(task, None, prompt_tokens=27, max_context=9216) == 9216 - 27
    assert token_budget(task, None, prompt_tokens=27, max_context=65536) == 32768


def test_default_under_the_limit_is_kept():
    assert token_budget(Task.T2I, None, 27, 9216, T2I_GRID) == 5120


def test_x2i_default_with_a_reference_is_clamped_but_holds_its_image():
    budget = token_budget(Task.X2I, None, 4160, 9216, REF_GRID, reference_tokens=4132)
    assert budget == 9216 - 4160 and budget >= REF_GRID.span_length


def test_explicit_over_the_limit_names_max_new_tokens():
    with pytest.raises(RequestError, match=r"^max_new_tokens: 9200 exceeds the 9189 tokens"):
        token_budget(Task.STORY, 9200, 27, 9216)
    assert token_budget(Task.STORY, 9189, 27, 9216) == 9189


@pytest.mark.parametrize("value", [0, -3, True, 2.5])
def test_explicit_not_a_positive_integer(value):
    with pytest.raises(RequestError, match="^max_new_tokens: must be a positive integer"):
        token_budget(Task.STORY, value, 27, 9216)


def test_reference_images_that_crowd_out_the_output_are_named():
    # 8,192 context: 4,160 prompt + 4,132 image = 8,292 does not fit; without the
    # reference the prompt would fit, so the images are the cause, not max_new_tokens.
    for requested in (None, 100):
        with pytest.raises(RequestError, match=r"^images: the reference images take 4132"):
            token_budget(Task.X2I, requested, 4160, 8192, REF_GRID, reference_tokens=4132)


def test_an_explicit_size_too_large_is_named():
    with pytest.raises(RequestError, match=r"^size: a 99\*99 image takes 9907 tokens"):
        token_budget(Task.T2I, None, 27, 9216, ImageGrid(99, 99), size_given=True)


def test_a_prompt_that_fills_the_context_is_named():
    with pytest.raises(RequestError, match=r"^prompt: the prompt takes 9216 tokens"):
        token_budget(Task.STORY, None, 9216, 9216)
    with pytest.raises(RequestError, match=r"^prompt: the prompt takes 5200 tokens"):
        token_budget(Task.T2I, 10, 5200, 9216, T2I_GRID)


def test_with_budget_resolves_and_validates_a_request():
    req = default_request("r", "story", [1] * 27, [1] * 14)
    assert req.max_new_tokens == 32768
    out = with_budget(req, None, max_context=9216, vocab_size=100)
    assert out.max_new_tokens == 9189 and out.cond_ids == req.cond_ids
    with pytest.raises(RequestError, match="^max_new_tokens"):
        with_budget(req, 9190, max_context=9216, vocab_size=100)
    with pytest.raises(RequestError, match="^cond_ids: token id 100"):
        with_budget(default_request("r", "story", [100], [1]), None, 9216, 100)


def test_explicit_budget_below_the_output_image_names_size():
    req = default_request("r", "t2i", [1] * 27, [1] * 14, output_grid=T2I_GRID)
    with pytest.raises(RequestError, match=r"^size: a 55\*73 image takes 4077 tokens, more than "
                                           r"max_new_tokens \(100\)"):
        with_budget(req, 100, max_context=9216, vocab_size=100)
