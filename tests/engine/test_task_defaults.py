"""Every task runs on its defaults on the tiny checkpoint (issue 10 item 3): the budget of
each task's defaults fits the tiny context (x2i with a 128x96 reference: a 55*74 grid at x2i's
area, 4,160 prompt tokens plus a 4,132-token output image), through the same request
building as ``emu35 generate``; and the whole six-task batch runs through the CLI."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from PIL import Image

from cluster.cli import _open_image, main
from cluster.generate_cmd import _request
from cluster.offline import PromptItem
from services.engine.engine import Engine, EngineConfig
from services.engine.scheduler import SchedulerConfig
from services.model.ibq import VisionTokenizer
from services.model.image_tokens import ImageGrid
from services.model.loader import load_checkpoint
from services.model.templates import TASK_DEFAULTS, Task
from services.model.tiny import write_tiny_checkpoint

TASKS = [t.value for t in Task]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    llm, vq = write_tiny_checkpoint(root, seed=3)
    ref = root / "ref.png"
    Image.new("RGB", (128, 96), "olive").save(ref)
    return llm, vq, ref


def _items(ref) -> list[PromptItem]:
    return [PromptItem(name=t, task=t, prompt="a red fox in the snow",
                       images=[str(ref)] if t == "x2i" else []) for t in TASKS]


def test_every_task_is_admitted_on_its_defaults(tiny):
    llm, vq, ref = tiny
    model, tok = load_checkpoint(llm)
    vision = VisionTokenizer.from_dir(vq)
    context = model.config.max_position_embeddings
    engine = Engine(model, tok, EngineConfig(SchedulerConfig(max_queue_delay_s=None)))
    budgets = {}
    for item in _items(ref):
        req, _ = _request(item, tok, vision, _open_image, context)
        engine.add_request(req)
        budgets[item.task] = (req.max_new_tokens, req.prompt_tokens, req.output_grid)
    budget, prompt, grid = budgets["x2i"]
    assert grid == ImageGrid(55, 74) and prompt + grid.span_length <= context
    assert budget == context - prompt  # the 5,120 default, clamped
    assert budgets["t2i"][0] == TASK_DEFAULTS[Task.T2I].max_new_tokens  # fits unclamped
    for task in ("howto", "story", "explore", "vla"):
        assert budgets[task][0] == context - budgets[task][1]  # 32,768 clamped


@pytest.mark.long
def test_all_six_tasks_run_on_their_defaults_through_generate(tiny, tmp_path):
    """The whole batch, every task on its defaults (long on a CPU: thousands of steps)."""
    llm, vq, ref = tiny
    prompts = tmp_path / "six.json"
    prompts.write_text(json.dumps([
        {"name": t, "task": t, "prompt": "a red fox in the snow",
         **({"images": [str(ref)]} if t == "x2i" else {})} for t in TASKS]))
    out = tmp_path / "out"
    assert main(["generate", "--model", str(llm), "--vision-tokenizer", str(vq),
                 "--prompts", str(prompts), "--out", str(out)]) == 0
    results = json.loads((out / "manifest.json").read_text())["results"]
    assert [r["request_id"] for r in results] == TASKS  # records named by the prompt
    for r in results:
        assert r["finish_reason"] in ("stop", "length"), r
        assert r["usage"]["generated_tokens"] > 0
