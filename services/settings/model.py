"""The one deploy-time settings model: ``Emu35Settings``. Sources (file, environment, flags)
and their precedence are in sources.py; the field reference is docs/settings.md."""
from __future__ import annotations

import dataclasses
from typing import get_type_hints

from pydantic import Field, create_model, model_validator

from services.rpc.validation import Limits

from .sections import (EngineSettings, ModelSettings, RaySettings, Section, ServerSettings,
                       StagesSettings, StorageSettings)

_LIMIT_TEXT = {
    "max_prompt_chars": "characters of a request's prompt",
    "max_images": "reference images per request",
    "max_image_bytes": "bytes of one reference image",
    "max_image_pixels": "pixels of one reference image (checked from its header)",
}


def _limits_section() -> type[Section]:
    """The gateway's request limits as a section: its fields and defaults are those of
    services.rpc.validation.Limits (defined there once), each a positive number."""
    hints = get_type_hints(Limits)
    spec = {}
    for f in dataclasses.fields(Limits):
        positive = {"gt": 0} if hints[f.name] in (int, float) else {}
        text = _LIMIT_TEXT.get(f.name, f"request limit {f.name} (services/rpc/validation.py)")
        spec[f.name] = (hints[f.name], Field(f.default, description=text, **positive))
    return create_model("LimitsSettings", __base__=Section, **spec)


LimitsSettings = _limits_section()


class Emu35Settings(Section):
    """Everything ``emu35 serve`` (and later the Helm chart) configures."""

    model: ModelSettings
    server: ServerSettings = Field(default_factory=ServerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    stages: StagesSettings = Field(default_factory=StagesSettings)

    @model_validator(mode="after")
    def _tensor_parallel_owns_the_gpus(self):
        if self.engine.tensor_parallel_size > 1 and self.stages.generator.num_gpus:
            raise ValueError("stages.generator.num_gpus: leave unset with "
                             "engine.tensor_parallel_size > 1 (one GPU bundle per rank)")
        return self

    def request_limits(self) -> Limits:
        return Limits(**self.limits.model_dump())
