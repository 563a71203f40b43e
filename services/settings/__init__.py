"""The one deploy-time settings model (DESIGN.md §4, STYLE.md 4).

``Emu35Settings`` (model.py) holds every setting of a deployment in sections (model, server,
storage, engine, limits, ray, stages; sections.py); each default is defined once, there or in
the record a section mirrors (``limits``: services.rpc.validation.Limits). ``emu35 serve``
reads it from ``--config FILE``, the environment (``EMU35_SECTION__FIELD``) and flags, in that
rising order of precedence (sources.py); docs/settings.md lists every field.

Importing this package is light; ``Emu35Settings`` and the sources load on first use (they
import the gateway's ``Limits``, which imports torch).
"""
from __future__ import annotations

from .sections import (DEFAULT_DEVICE, STAGES, EngineSettings, ModelSettings, RaySettings,
                       ServerSettings, StageScalingSettings, StagesSettings, StorageSettings)

__all__ = ["DEFAULT_DEVICE", "STAGES", "EngineSettings", "ModelSettings", "RaySettings",
           "ServerSettings", "StageScalingSettings", "StagesSettings", "StorageSettings"]
