"""Model presets, loading and facts."""

from circuitlab.models.facts import HeadId, ModelFacts, read_facts
from circuitlab.models.loading import ModelSpec, ResolvedSource, convert_gguf, load_hf
from circuitlab.models.presets import PRESETS, Preset, get_preset, register_preset

__all__ = [
    "HeadId",
    "ModelFacts",
    "ModelSpec",
    "PRESETS",
    "Preset",
    "ResolvedSource",
    "convert_gguf",
    "get_preset",
    "load_hf",
    "read_facts",
    "register_preset",
]
