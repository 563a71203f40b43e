"""The Gateway over fake stages (the StageClients seam): what the API promises is what it does."""
from __future__ import annotations

import json
import logging
from importlib import metadata
from pathlib import Path

import grpc
import pytest

from emu35_proto.v1 import api_pb2, common_pb2, stages_pb2
from services.engine.scheduler import QueueFull
from services.model.image_tokens import ImageGrid
from services.rpc.convert import generator_request_from_pb
from services.rpc.errors import RETRY_AFTER_KEY, PublicError
from services.rpc.served import ServedModel, model_name

from .bad_inputs import GOOD, encoded, png_header, req
from .conftest import run
from .fake_gateway_stages import MODEL_NAME


def _x2i(*images: bytes, **fields) -> api_pb2.GenerateRequest:
    """x2i with the output size left to the reference rule (the last reference's grid)."""
    return req(common_pb2.X2I, "make it blue", images, **fields)


def _fails(gateway, pb) -> PublicError:
    with pytest.raises(PublicError) as info:
        run(gateway, pb)
    return info.value


def _finished(events) -> api_pb2.Finished:
    assert events[-1].WhichOneof("event") == "finished"
    return events[-1].finished


def _manifest(fin: api_pb2.Finished) -> dict:
    return json.loads(Path(fin.manifest.uri[len("file://"):]).read_text())


# ---- item 1: fields that promise only what is done -------------------------------------------

def test_unset_seed_is_random_and_reported(gateway):
    seeds = []
    for _ in range(3):
        events = run(gateway, req(size=common_pb2.ImageSize(preset="1:1")))
        fin, sent = _finished(events), gateway.stages.requests[-1]
        assert fin.seed == sent.seed == _manifest(fin)["seed"]
        seeds.append(fin.seed)
    assert len(set(seeds)) == 3 and 6666 not in seeds


def test_a_given_seed_is_used(gateway):
    fin = _finished(run(gateway, req(seed=-5)))
    assert fin.seed == -5 and gateway.stages.requests[-1].seed == -5


@pytest.mark.parametrize("mode", [api_pb2.DECODE_MODE_UNSPECIFIED, api_pb2.AUTOREGRESSIVE])
def test_autoregressive_decode_mode_is_served(gateway, mode):
    assert _finished(run(gateway, req(decode_mode=mode))).reason == common_pb2.STOP


@pytest.mark.parametrize("model", ["", MODEL_NAME])
def test_model_empty_or_the_served_name(gateway, model):
    run(gateway, req(model=model))


def test_model_name_comes_from_the_checkpoint(tmp_path):
    named, plain = tmp_path / "a", tmp_path / "Emu3.5-Image"
    named.mkdir()
    plain.mkdir()
    (named / "config.json").write_text(json.dumps({"_name_or_path": "BAAI/Emu3.5"}))
    (plain / "config.json").write_text(json.dumps({"hidden_size": 8}))
    assert (model_name(named), model_name(plain)) == ("BAAI/Emu3.5", "Emu3.5-Image")
    served = [ServedModel.from_checkpoint(plain, 10)]
    assert [(m.name, m.checkpoint, m.vocab_size) for m in served] == [
        ("Emu3.5-Image", str(plain), 10)]


def test_list_models_and_info_say_what_is_served(gateway, monkeypatch):
    assert [m.name for m in gateway.list_models().models] == [MODEL_NAME]
    assert gateway.info().version == metadata.version("emu35-serve")
    monkeypatch.setattr(metadata, "version", lambda name: "9.8.7" if name == "emu35-serve" else "")
    info = gateway.info()
    assert info.version == "9.8.7"  # the installed package's, not a literal
    assert info.context_length == gateway.context_length
    assert set(info.tasks) == {"t2i", "x2i", "howto", "story", "explore", "vla"}


def test_reference_images_on_t2i_are_used(gateway):
    """Spec §4: t2i takes reference images (template C2, after the question); the output
    copies the last reference's grid (§3.4)."""
    fin = _finished(run(gateway, req(images=[encoded(64, 32)], max_new_tokens=4200)))
    sent = gateway.stages.requests[-1]
    assert len(gateway.stages.encoded) == 1
    boi = gateway.tok.special.boi
    assert boi in sent.cond_ids and boi in sent.uncond_ids
    assert (sent.output_grid.h, sent.output_grid.w) == (45, 91)  # about 1024*1024 pixels at 2:1
    assert fin.reason == common_pb2.STOP


def test_small_references_are_scaled_up_to_the_task_area(gateway):
    """As the reference does (spec §3.3): a 1x1 image becomes a 64*64 grid at t2i/x2i's area."""
    run(gateway, _x2i(encoded(1, 1), max_new_tokens=5000))
    assert (gateway.stages.requests[-1].output_grid.h,
            gateway.stages.requests[-1].output_grid.w) == (64, 64)


# ---- item 4: cheap checks before any work ---------------------------------------------------

def test_context_budget_is_checked_before_encoding(gateway):
    big = png_header(4096, 4096)  # a header only: encoding it would fail, checking it cannot
    err = _fails(gateway, _x2i(big, big, big))
    assert err.status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.status.message.startswith("images: ") and "64*64" in err.status.message
    assert gateway.stages.encoded == []


def test_the_prompt_is_blamed_when_it_fills_the_context(gateway):
    err = _fails(gateway, req(prompt="雪" * 8000))
    assert err.status.message.startswith("prompt: ")


def test_default_budget_is_lowered_to_the_context_left(gateway):
    run(gateway, req(task=common_pb2.STORY, prompt="a story"))
    sent = gateway.stages.requests[-1]
    assert sent.max_new_tokens == gateway.context_length - len(sent.cond_ids) < 32768


def test_request_id_is_checked_before_any_work(gateway):
    err = _fails(gateway, _x2i(GOOD, request_id=".hidden"))
    assert err.status.message.startswith("request_id: ")
    assert gateway.stages.encoded == []


# ---- item 5: one definition of the guidance defaults ----------------------------------------

@pytest.mark.parametrize("task, scale", [(common_pb2.T2I, 5.0), (common_pb2.X2I, 3.0),
                                         (common_pb2.STORY, 3.0)])
def test_guidance_default_is_the_tasks_cfg_on_both_sides(gateway, task, scale):
    images = [GOOD] if task == common_pb2.X2I else []
    run(gateway, req(task=task, images=images, max_new_tokens=4500))
    sent = gateway.stages.requests[-1]
    assert sent.guidance.scale == scale
    unset = stages_pb2.GeneratorRequest()
    unset.CopyFrom(sent)
    unset.guidance.ClearField("scale")
    assert generator_request_from_pb(unset).guidance.scale == scale


# ---- item 3: statuses ------------------------------------------------------------------------

def test_queue_full_is_resource_exhausted_with_a_retry_hint(gateway):
    full = QueueFull("waiting queue full (2 requests)")
    full.retry_after_s = 2.5
    gateway.stages.fail_generate = full
    status = _fails(gateway, req()).status
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry in 2.5 s" in status.message
    assert dict(status.trailers) == {RETRY_AFTER_KEY: "2500"}


def test_an_internal_error_is_internal_with_an_id_and_no_internals(gateway, caplog):
    gateway.stages.fail_generate = KeyError("/secret/path pid 4242")
    with caplog.at_level(logging.ERROR, logger="services.rpc.errors"):
        status = _fails(gateway, req(request_id="r1")).status
    assert status.code == grpc.StatusCode.INTERNAL
    assert "secret" not in status.message and "KeyError" not in status.message
    error_id = status.message.split("error id ")[1].rstrip(")")
    assert "request r1" in status.message
    assert any(error_id in r.getMessage() and "secret" in r.getMessage() for r in caplog.records)


def test_a_plain_value_error_is_not_blamed_on_the_caller(gateway):
    gateway.stages.fail_generate = ValueError("shape mismatch in layer 3")
    assert _fails(gateway, req()).status.code == grpc.StatusCode.INTERNAL


def test_an_error_finish_is_a_non_ok_status(gateway, caplog):
    gateway.stages.finish_reason = common_pb2.ERROR
    with caplog.at_level(logging.ERROR, logger="services.rpc.errors"):
        status = _fails(gateway, req()).status
    assert status.code == grpc.StatusCode.INTERNAL and "error id" in status.message
    assert any("ended the request with an error" in r.getMessage() for r in caplog.records)


def test_encoder_grid_check_matches_the_plan(gateway):
    """The planned grid of every reference is the encoder's (same smart_resize rule)."""
    for w, h in ((1792, 1184), (768, 496), (432, 768), (30, 1000)):
        run(gateway, _x2i(encoded(w, h), max_new_tokens=5000))
        grid = gateway.stages.requests[-1].output_grid
        assert ImageGrid(grid.h, grid.w).num_visual > 0
