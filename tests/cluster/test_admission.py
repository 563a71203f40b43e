"""Serve's per-replica caps leave admission to the engine (issue 11 item 5): a call beyond a
replica's max_ongoing_requests waits in Serve's router unseen by the engine, so the caps sit
above the engine's own bound (queue plus batch)."""
from __future__ import annotations

from cluster.placement import StageScaling
from cluster.serve import admission_scaling
from cluster.serve_cmd import stage_scaling
from services.settings import EngineSettings, StagesSettings
from services.stages.settings import StageSettings


def default_scaling() -> dict:
    """The stages' scaling on default settings."""
    return stage_scaling(StagesSettings())


def _stages(max_waiting: int, max_num_seqs: int) -> StageSettings:
    return StageSettings(model="m", vision_tokenizer="v",
                         engine=EngineSettings(max_waiting=max_waiting, max_num_seqs=max_num_seqs))


def test_generator_and_gateway_caps_sit_above_the_engine_bound():
    stages = _stages(256, 64)
    out = admission_scaling(default_scaling(), stages)
    bound = stages.max_waiting + stages.max_num_seqs
    assert out["generator"].max_ongoing_requests > bound
    assert out["gateway"].max_ongoing_requests > out["generator"].max_ongoing_requests
    assert out["encoder"] == default_scaling()["encoder"]  # the others keep their settings


def test_a_larger_configured_cap_is_kept():
    stages = _stages(2, 4)
    scaling = {**default_scaling(), "generator": StageScaling(max_ongoing_requests=5000)}
    assert admission_scaling(scaling, stages)["generator"].max_ongoing_requests == 5000
