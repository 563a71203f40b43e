"""What the stages re-check (services/stages/checks.py), the stage wire format
(services/rpc/stage_wire.py) and how stage-call failures reach the gateway (handles.py)."""
from __future__ import annotations

import asyncio
import io

import grpc
import pytest
import torch
from PIL import Image

from emu35_proto.v1 import stages_pb2
from services.model.image_tokens import image_span_ids
from services.model.synthetic_vocab import write_synthetic_tokenizer
from services.model.templates import Task, build_prompts
from services.model.text_tokenizer import TextTokenizer
from services.rpc import stage_wire as wire
from services.rpc.errors import InvalidArgument, Unavailable, status_for
from services.rpc.validation import Limits
from services.stages import checks


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> TextTokenizer:
    path = tmp_path_factory.mktemp("synth")
    write_synthetic_tokenizer(path, num_visual_tokens=100)
    return TextTokenizer.from_dir(path)


@pytest.mark.parametrize("task", list(Task))
def test_every_task_prompt_passes_the_generator_check(tok, task):
    spans = [image_span_ids(tok, torch.arange(6).view(2, 3))] if task is Task.X2I else []
    prompts = build_prompts(tok, task, "a cat", spans)
    for field in ("cond", "uncond"):
        checks.check_prompt_ids(getattr(prompts, field), tok.special, field)


@pytest.mark.parametrize("bad, message", [
    (lambda s, ids: ids + [s.eos], "control token eos"),
    (lambda s, ids: ids + [s.pad], "control token pad"),
    (lambda s, ids: ids + [s.visual_base + 3], "image token at"),
    (lambda s, ids: ids + [s.boi, s.visual_base], "not closed"),
    (lambda s, ids: ids + [s.eoi], "image end at"),
    (lambda s, ids: ids + [s.boi, s.boi], "image start at"),
])
def test_raw_control_ids_are_refused(tok, bad, message):
    ids = list(build_prompts(tok, Task.T2I, "a cat").cond)
    with pytest.raises(InvalidArgument, match=message):
        checks.check_prompt_ids(bad(tok.special, ids), tok.special, "cond_ids")


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("images, area, field", [
    ([_png(4, 4)] * 4, 1024, "images: 4 given"),
    ([b"not an image"], 1024, "images[0]"),
    ([_png(4, 4)], 144_000_000, "area"),
    ([], 1024, "images"),
])
def test_encoder_limits(images, area, field):
    with pytest.raises(InvalidArgument) as exc:
        checks.check_encode(images, area, Limits())
    assert str(exc.value).startswith(field)


@pytest.mark.parametrize("args, field", [
    (("../x", "default", 0, 2, 2, 4, (0, 3)), "request_id"),
    ((".hidden", "default", 0, 2, 2, 4, (0, 3)), "request_id"),
    (("r1", "a/b", 0, 2, 2, 4, (0, 3)), "tenant"),
    (("r1", "default", -1, 2, 2, 4, (0, 3)), "index"),
    (("r1", "default", 0, 300, 2, 600, (0, 3)), "grid"),
    (("r1", "default", 0, 2, 2, 3, (0, 3)), "grid"),
    (("r1", "default", 0, 2, 2, 4, (0, 99)), "codebook"),
])
def test_decoder_checks(args, field):
    with pytest.raises(InvalidArgument, match=field):
        checks.check_decode(*args, num_codes=16)


def test_decoder_key_stays_in_the_request_folder():
    checks.check_key_under("t/r1/images/00.png", "t", "r1")
    for key in ("t/r2/images/00.png", "u/r1/images/00.png", "t/r1/../r2/x.png"):
        with pytest.raises(InvalidArgument):
            checks.check_key_under(key, "t", "r1")


def test_malformed_stage_bytes_are_invalid_argument():
    with pytest.raises(InvalidArgument, match="GeneratorRequest: malformed"):
        wire.generator_request(b"\x0a\xff\xff\xff\xff\x0f")
    ok = stages_pb2.DecodeRequest(request_id="r", index=2)
    assert wire.decode_request(ok.SerializeToString()) == ok


def test_a_stage_status_passes_through_to_the_gateway():
    failure = wire.failure_of(InvalidArgument("images[0]: empty image"))
    assert (failure.code, failure.details) == ("INVALID_ARGUMENT", "images[0]: empty image")
    code, details = status_for(wire.as_rpc_error(failure))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "images[0]: empty image")


def test_ray_errors_become_unavailable_or_a_passed_status():
    from ray import exceptions as ray_errors

    from services.stages.handles import translated

    def raised(exc):
        try:
            with translated("decoder"):
                raise exc
        except BaseException as e:  # noqa: BLE001 - the translation is the subject
            return e

    lost = raised(ray_errors.ActorDiedError())
    assert isinstance(lost, Unavailable) and "decoder" in str(lost) and "Actor" not in str(lost)
    wrapped = ray_errors.RayTaskError("Decode", "Traceback ...", wire.StageFailure(
        "NOT_FOUND", "gone")).as_instanceof_cause()
    assert status_for(raised(wrapped)) == (grpc.StatusCode.NOT_FOUND, "gone")
    assert isinstance(raised(asyncio.CancelledError()), asyncio.CancelledError)


def test_generator_output_grid_bounds():
    from services.model.image_tokens import ImageGrid
    checks.check_output_grid(None)
    checks.check_output_grid(ImageGrid(16, 16))
    for bad in (ImageGrid(300, 4), ImageGrid(4, 100_000)):
        with pytest.raises(InvalidArgument, match="output_grid"):
            checks.check_output_grid(bad)
